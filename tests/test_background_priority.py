"""A background save's work runs at the lowest CPU priority, so it takes only the CPU the
training loop leaves idle; a synchronous save's work, and the step's own thread, keep
theirs. Linux sets a priority per thread; elsewhere priorities are left alone."""

import os
import sys
import threading

import pytest
import torch

from engine_helpers import State, local_store, make_session
from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
from metaflow_extensions.implicit_checkpoint.engine.parallel import BACKGROUND_NICE

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")


def own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class PriorityRecordingBackend(LocalDirBackend):
    """A local backend that records the nice value of each thread writing a blob."""

    def __init__(self, root):
        super().__init__(root)
        self.writers = []

    def _record(self, path: str) -> None:
        if "/blobs/" in path:
            self.writers.append((threading.current_thread().name, own_nice()))

    def _write_hashed(self, parts, durable, path_for_digest, temp_prefix):
        self._record("/blobs/")
        return super()._write_hashed(parts, durable, path_for_digest, temp_prefix)

    def _write(self, path, parts, durable, temp_prefix=None):
        self._record(path)
        return super()._write(path, parts, durable, temp_prefix)


def test_background_blobs_are_written_at_the_lowest_priority_and_sync_ones_at_the_steps(tmp_path):
    state = State()
    state.layers = [torch.randn(512 * 1024) for _ in range(4)]  # 2 MiB each: a blob each
    state.head = torch.randn(16)  # packed with the RNG state's, its graph inline
    store = local_store(tmp_path, PriorityRecordingBackend)
    session = make_session(store, state)
    step_nice = own_nice()
    assert step_nice < BACKGROUND_NICE

    session.save()
    sync_writers, store.backend.writers = store.backend.writers, []
    for layer in state.layers:
        layer.add_(1.0)
    session.save(blocking=False)
    session.wait()
    background_writers, store.backend.writers = store.backend.writers, []
    for layer in state.layers:
        layer.add_(1.0)
    session.save()  # after a background save, a sync one's threads still have the step's priority
    sync_again_writers = store.backend.writers
    session.finish()

    assert len(sync_writers) >= 4 and len(background_writers) >= 4
    assert {nice for _, nice in sync_writers + sync_again_writers} == {step_nice}, sync_again_writers
    assert {nice for _, nice in background_writers} == {BACKGROUND_NICE}, background_writers
    assert all(name.startswith("checkpoint-io-background") for name, _ in background_writers)
    assert own_nice() == step_nice  # the step's thread keeps its priority

    loaded = State()
    loaded.layers = [torch.zeros(512 * 1024) for _ in range(4)]
    reader = make_session(local_store(tmp_path), loaded, attempt=1)
    reader.load()
    for saved, restored in zip(state.layers, loaded.layers):
        assert torch.equal(saved, restored)
    reader.finish()


def test_a_thread_s_priority_is_only_ever_lowered():
    # A thread may only lower its priority: one started at nice 19 stays there, and one
    # asked for less than it has is left as it is.
    from metaflow_extensions.implicit_checkpoint.engine.parallel import yield_cpu_to_others

    seen = []

    def worker():
        yield_cpu_to_others(BACKGROUND_NICE)
        yield_cpu_to_others(5)
        seen.append(own_nice())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [BACKGROUND_NICE]
