"""save(blocking=False), wait(), change tracking and the staging budget, without a flow."""

import threading

import numpy as np
import pytest
import torch

from engine_helpers import State, local_store, make_session
from metaflow_extensions.implicit_checkpoint.engine import hashing
from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
from metaflow_extensions.implicit_checkpoint.engine.change_tracking import VERIFY_EVERY
from metaflow_extensions.implicit_checkpoint.engine.errors import CheckpointStorageError
from metaflow_extensions.implicit_checkpoint.engine.session import SessionOptions
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore


class GatedBackend(LocalDirBackend):
    """Blob writes wait for a gate; optionally they fail."""

    def __init__(self, root):
        super().__init__(root)
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def _hold(self):
        assert self.gate.wait(timeout=30)
        if self.fail:
            raise OSError("disk on fire")

    def write(self, path, parts, durable, temp_prefix=None):
        if "/blobs/" in path:
            self._hold()
        return super().write(path, parts, durable, temp_prefix)

    def write_hashed(self, parts, durable, path_for_digest, temp_prefix):
        self._hold()
        return super().write_hashed(parts, durable, path_for_digest, temp_prefix)


def test_background_saves_commit_in_order_and_only_then_are_listed(tmp_path):
    backend = GatedBackend(str(tmp_path))
    state = State()
    state.weights = torch.zeros(1024, 1024)
    session = make_session(CheckpointStore(backend), state)
    session.save()
    backend.gate.clear()
    state.weights.add_(1)
    pending = session.save(blocking=False, metadata={"n": 2})
    assert pending.version == 2
    state.weights.sub_(1)  # the step goes on; the staged copy is what gets saved
    assert [a.version for a in session.list()] == [1]  # not committed yet
    backend.gate.set()
    session.wait()
    assert [a.version for a in session.list()] == [1, 2]
    for n in range(3, 6):
        state.weights.fill_(n)
        session.save(blocking=False, metadata={"n": n})
    session.finish()
    listed = session.list()
    assert [a.version for a in listed] == [1, 2, 3, 4, 5]
    assert [a.metadata.get("n") for a in listed] == [None, 2, 3, 4, 5]
    loaded = State()
    reader = make_session(local_store(tmp_path), loaded, attempt=1)
    for artifact, expected in zip(listed[1:], (1.0, 3.0, 4.0, 5.0)):
        reader.load(artifact)
        assert torch.equal(loaded.weights, torch.full((1024, 1024), expected))


def test_background_failure_is_raised_by_next_save_wait_or_finish(tmp_path):
    backend = GatedBackend(str(tmp_path))
    state = State()
    state.weights = torch.randn(512, 512)
    session = make_session(CheckpointStore(backend), state)
    good = session.save()
    backend.fail = True
    state.weights.add_(1)
    session.save(blocking=False)  # returns: the failure happens in the background
    with pytest.raises(CheckpointStorageError, match="disk on fire"):
        session.save()
    state.weights.add_(1)
    session.save(blocking=False)
    with pytest.raises(CheckpointStorageError):
        session.wait()
    state.weights.add_(1)
    session.save(blocking=False)
    with pytest.raises(CheckpointStorageError):
        session.finish()
    # Nothing partial is listed and the last good checkpoint loads.
    assert [a.key for a in session.list()] == [good.key]
    loaded = State()
    make_session(local_store(tmp_path), loaded, attempt=1).load()
    assert loaded.weights.shape == (512, 512)


class CountingBlake3:
    """Stands in for the blake3 module in engine/hashing.py and counts hashed bytes."""

    def __init__(self, real):
        self._real = real
        self.bytes = 0

    def blake3(self, *args, **kwargs):
        counter, hasher = self, self._real.blake3(*args, **kwargs)

        class Counting:
            def update(self, data):
                counter.bytes += memoryview(data).nbytes
                return hasher.update(data)

            def hexdigest(self):
                return hasher.hexdigest()

        return Counting()

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_opt_in_tracking_neither_copies_nor_hashes_unchanged_tensors(tmp_path, monkeypatch, caplog):
    state = State()
    state.model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Linear(512, 512))
    # A staging budget far below the weights: had the background save below needed to
    # copy them, it would have said so and saved synchronously.
    options = SessionOptions(track_changes=True, staging_bytes=20000)
    session = make_session(local_store(tmp_path), state, options=options)
    session.save()
    counter = CountingBlake3(hashing.blake3)
    monkeypatch.setattr(hashing, "blake3", counter)
    weight_bytes = 512 * 512 * 4

    second = session.save(blocking=False)
    session.wait()
    assert counter.bytes < 20_000  # the pickled skeleton and the RNG state, no weights
    assert "saved synchronously" not in caplog.text  # nothing big was copied either
    with torch.no_grad():
        state.model[0].weight.add_(1)
    counter.bytes = 0
    third = session.save()
    assert weight_bytes <= counter.bytes < weight_bytes + 20_000  # just the changed weight
    assert weight_bytes <= third.implicit_manifest["bytes_written"] < weight_bytes + 20_000
    assert second.version == 2


def test_opt_in_tracking_catches_writes_behind_the_version_counter(tmp_path, caplog):
    state = State()
    state.weights = torch.zeros(256, 1024)  # 1 MiB: a chunked tensor
    session = make_session(local_store(tmp_path), state, options=SessionOptions(track_changes=True))
    session.save()
    state.weights.data.add_(7)  # does not bump weights._version
    for _ in range(VERIFY_EVERY):
        session.save()
    assert "changed without torch noticing" in caplog.text
    loaded = State()
    make_session(local_store(tmp_path), loaded, attempt=1).load()
    assert torch.equal(loaded.weights, torch.full((256, 1024), 7.0))
    # From then on every save hashes everything: a later .data write is saved at once.
    state.weights.data.add_(1)
    session.save()
    make_session(local_store(tmp_path), loaded, attempt=1).load()
    assert torch.equal(loaded.weights, torch.full((256, 1024), 8.0))


def test_by_default_every_save_holds_the_live_bytes(tmp_path):
    state = State()
    state.weights = torch.zeros(8)
    session = make_session(local_store(tmp_path), state)
    session.save()
    state.weights.data.add_(3)
    session.save()
    loaded = State()
    make_session(local_store(tmp_path), loaded, attempt=1).load()
    assert torch.equal(loaded.weights, torch.full((8,), 3.0))


def test_over_the_staging_budget_saves_synchronously(tmp_path, caplog):
    state = State()
    state.weights = np.ones(10_000)
    session = make_session(local_store(tmp_path), state, options=SessionOptions(staging_bytes=1000))
    artifact = session.save(blocking=False)
    assert "staging budget" in caplog.text
    assert [a.key for a in session.list()] == [artifact.key]  # already committed


def test_background_save_of_numpy_and_views(tmp_path):
    state = State()
    state.array = np.arange(100_000.0)
    state.view = torch.arange(40.0).reshape(5, 8).t()  # non-contiguous
    session = make_session(local_store(tmp_path), state)
    session.save(blocking=False)
    state.array += 1  # after staging: must not leak into the checkpoint
    session.finish()
    loaded = State()
    make_session(local_store(tmp_path), loaded, attempt=1).load()
    assert np.array_equal(loaded.array, np.arange(100_000.0))
    assert torch.equal(loaded.view, torch.arange(40.0).reshape(5, 8).t())


def _report(world):
    return world.python(
        """
        import json
        from metaflow import Flow, namespace
        namespace(None)
        print(json.dumps(Flow("BackgroundFlow").latest_run["start"].task.data.report))
        """
    )


@pytest.mark.flow
def test_step_raising_right_after_a_background_save_still_commits_it(world):
    from conftest import TEST_FLOWS

    world.run_flow(TEST_FLOWS / "background_flow.py", "--mode", "raise")
    report = _report(world)
    assert report == {"n": 2, "resumed_version": 2, "intact": True, "listed": [1, 2]}


@pytest.mark.flow
def test_hard_kill_during_a_background_save_leaves_the_previous_checkpoint(world):
    from conftest import TEST_FLOWS

    world.run_flow(TEST_FLOWS / "background_flow.py", "--mode", "kill")
    report = _report(world)
    assert report["intact"] is True
    # Killed while writing: the background checkpoint is either whole or absent.
    assert report["listed"] in ([1], [1, 2])
    assert report["resumed_version"] == report["listed"][-1] == report["n"]
