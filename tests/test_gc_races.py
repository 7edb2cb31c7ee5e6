"""gc against saves, at the exact points where a timing-based gc lost committed data.

Each test stops gc (or a save) at a critical point with a hook, lets the other side
act, and then checks every committed checkpoint still loads bit-exact.
"""

import os
import threading
import time

import numpy as np
import pytest
import torch

from s3_server import any_store, s3_server  # noqa: F401  (fixtures)
from engine_helpers import State, local_store, make_session
from metaflow_extensions.implicit_checkpoint.engine import locks
from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
from metaflow_extensions.implicit_checkpoint.engine.gc import collect_garbage
from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
from metaflow_extensions.implicit_checkpoint.engine.retention import RetentionPolicy
from metaflow_extensions.implicit_checkpoint.engine.session import SessionOptions
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore

TWO_HOURS = 7200


def age_files(root, seconds):
    past = time.time() - seconds
    for directory, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(directory, name), (past, past))


def blobs_of(store, artifact) -> set:
    return set(store.read_manifest(CheckpointKey.parse(artifact.key)).storage.blobs)


def load_state(any_store, artifact) -> State:
    loaded = State()
    make_session(any_store(), loaded, attempt=9, task_id="reader").load(artifact)
    return loaded


def test_gc_that_listed_before_a_commit_keeps_the_frozen_blob_it_reuses(any_store):
    """Hole 1: a frozen tensor's blob is reused without being written again; gc lists,
    then the task commits N+1 and retention removes N (the only manifest gc had read
    that references the frozen blob). gc must still see N+1."""
    torch.manual_seed(0)
    state = State()
    state.frozen = torch.randn(256, 1024)  # unchanged by every save: change tracking reuses it
    state.head = torch.zeros(1024)
    store = any_store()
    session = make_session(
        store, state, retention=RetentionPolicy(keep_last=1), options=SessionOptions(track_changes=True)
    )
    first_blobs = blobs_of(store, session.save())

    committed = []

    def at(phase):
        if phase == "manifests-listed" and not committed:  # listed N, has not read it
            state.head += 1
            committed.append(session.save())  # reuses the frozen blob; retention removes `first`

    # No grace at all: the lock alone must keep the frozen blob.
    report = collect_garbage(any_store(), "UnitFlow", grace=0, on_phase=at)
    (second,) = committed
    assert [a.key for a in session.list()] == [second.key]
    assert first_blobs - blobs_of(store, second), "the test needs a blob only N had"
    assert not blobs_of(store, second) & set(report.deleted_blobs)
    assert report.deleted_blobs, "gc deleted nothing: the race was not exercised"
    loaded = load_state(any_store, second)
    assert torch.equal(loaded.frozen, state.frozen) and torch.equal(loaded.head, state.head)


def test_a_save_reusing_a_blob_gc_is_deleting_waits_and_stores_it_again(any_store):
    """Hole 2: gc has decided to delete an unreferenced old blob when a save of the same
    content checks it. The save waits for gc's delete, then finds the blob gone and
    writes it again."""
    state = State()
    state.weights = np.arange(300_000.0)
    old = make_session(any_store(), state).save()
    any_store().delete_manifest(CheckpointKey.parse(old.key))

    saver_store = any_store()
    waiting = threading.Event()
    saver_store.locks.on_phase = lambda phase: phase == "save-waiting-for-deleter" and waiting.set()
    saver = make_session(saver_store, state, task_id="2")
    saved, threads = [], []

    def at(phase):
        if phase == "locked":
            thread = threading.Thread(target=lambda: saved.append(saver.save()))
            thread.start()
            threads.append(thread)
            assert waiting.wait(timeout=30)  # the save waits for gc rather than racing it

    report = collect_garbage(any_store(), "UnitFlow", grace=0, on_phase=at)
    threads[0].join(timeout=60)
    assert set(report.deleted_blobs) == blobs_of(saver_store, saved[0])
    assert saved[0].implicit_manifest["bytes_written"] > 0  # it stored the blob again
    assert np.array_equal(load_state(any_store, saved[0]).weights, state.weights)


class PausingBackend(LocalDirBackend):
    """Holds every manifest write until released: a save stops between its blob checks
    and its commit."""

    def __init__(self, root):
        super().__init__(root)
        self.reached_commit = threading.Event()
        self.release = threading.Event()

    def write(self, path, parts, durable, temp_prefix=None):
        if path.endswith(".manifest"):
            self.reached_commit.set()
            assert self.release.wait(timeout=60)
        return super().write(path, parts, durable, temp_prefix)


def _paused_save_of_an_old_blob(tmp_path):
    state = State()
    state.weights = np.arange(300_000.0)
    old = make_session(local_store(tmp_path), state).save()
    local_store(tmp_path).delete_manifest(CheckpointKey.parse(old.key))
    age_files(tmp_path, TWO_HOURS)  # an old blob that nothing references
    backend = PausingBackend(str(tmp_path))
    saver = make_session(CheckpointStore(backend), state, task_id="2")
    thread = threading.Thread(target=saver.save)
    thread.start()
    assert backend.reached_commit.wait(timeout=30)  # it checked the blob, will reference it
    return state, saver, backend, thread


def test_gc_gives_up_rather_than_delete_under_a_save_in_progress(tmp_path):
    state, saver, backend, thread = _paused_save_of_an_old_blob(tmp_path)
    report = collect_garbage(local_store(tmp_path), "UnitFlow", grace=1, wait=0)
    backend.release.set()
    thread.join()
    assert report.deleted_blobs == [] and len(report.busy) == 1
    assert np.array_equal(load_state(lambda: local_store(tmp_path), saver.list()[-1]).weights, state.weights)


def test_gc_waits_for_a_save_in_progress_then_keeps_what_it_committed(tmp_path):
    state, saver, backend, thread = _paused_save_of_an_old_blob(tmp_path)
    gc_store = local_store(tmp_path)
    waiting = threading.Event()
    gc_store.locks.on_phase = lambda phase: phase == "deleter-waiting-for-saves" and waiting.set()
    reports = []
    collector = threading.Thread(
        target=lambda: reports.append(collect_garbage(gc_store, "UnitFlow", grace=1, wait=60))
    )
    collector.start()
    assert waiting.wait(timeout=30)  # gc sees the lease and waits for it
    backend.release.set()
    thread.join()
    collector.join()
    assert reports[0].deleted_blobs == [] and reports[0].busy == []
    assert np.array_equal(load_state(lambda: local_store(tmp_path), saver.list()[-1]).weights, state.weights)


def test_a_dead_save_lease_does_not_block_gc_forever(tmp_path, monkeypatch):
    """A lease not renewed for STALE seconds belongs to a dead process: gc removes it
    (with the save's temp files) and proceeds."""
    store = local_store(tmp_path)
    lease_dir = tmp_path / "UnitFlow" / "_implicit_checkpoints" / "locks" / "saves"
    lease_dir.mkdir(parents=True)
    dead = lease_dir / "7+train+1+0+4242+abc"
    dead.write_text("killed")
    temp = tmp_path / "UnitFlow" / "_implicit_checkpoints" / "tmp" / (".tmp-%s.half-written" % dead.name)
    temp.parent.mkdir(parents=True)
    temp.write_bytes(b"x" * 1000)
    past = time.time() - locks.STALE - 60
    os.utime(dead, (past, past))
    report = collect_garbage(store, "UnitFlow", grace=1, wait=0)
    assert report.busy == []
    assert not dead.exists() and not temp.exists()


def test_a_new_attempt_removes_the_temp_files_of_the_one_before(tmp_path):
    """A save killed mid-write leaves its lease and temp files; the task's next attempt
    removes them at its first save, without waiting for gc."""
    root = tmp_path / "UnitFlow" / "_implicit_checkpoints"
    (root / "locks" / "saves").mkdir(parents=True)
    killed = "1+train+1+0+4242+abc"
    (root / "locks" / "saves" / killed).write_text("killed")
    (root / "tmp").mkdir(parents=True)
    (root / "tmp" / (".tmp-%s.partial" % killed)).write_bytes(b"x" * 4096)
    other_task = "1+train+2+0+4343+def"  # another task's save, maybe still running
    (root / "locks" / "saves" / other_task).write_text("running")

    state = State()
    state.weights = np.arange(1000.0)
    make_session(local_store(tmp_path), state, attempt=1).save()
    assert os.listdir(root / "tmp") == []
    assert sorted(os.listdir(root / "locks" / "saves")) == [other_task]


@pytest.mark.parametrize("repeat", range(3))
def test_saves_never_leave_leases_or_temp_files(tmp_path, repeat):
    state = State()
    state.weights = np.random.default_rng(repeat).random(200_000)
    session = make_session(local_store(tmp_path), state, retention=RetentionPolicy(keep_last=1))
    for _ in range(3):
        state.weights += 1
        session.save()
    root = tmp_path / "UnitFlow" / "_implicit_checkpoints"
    assert os.listdir(root / "locks" / "saves") == []
    assert os.listdir(root / "tmp") == []


class VanishingBackend(LocalDirBackend):
    """Removes chosen manifests just before they are read: retention in another process
    running between a listing and the reads that follow it."""

    def __init__(self, root, vanishing):
        super().__init__(root)
        self.vanishing = set(vanishing)

    def read(self, path):
        if path in self.vanishing:
            os.remove(self.describe(path))
        return super().read(path)


def test_listing_and_eager_resume_tolerate_manifests_removed_meanwhile(tmp_path):
    from metaflow_extensions.implicit_checkpoint.engine.session import (
        AttributeSource,
        CheckpointSession,
        TaskIdentity,
    )
    from metaflow_extensions.implicit_checkpoint.engine.reading import list_run

    state = State()
    writer = make_session(local_store(tmp_path), state)
    saved = []
    for n in range(3):
        state.n = n
        saved.append(writer.save())
    paths = [CheckpointStore.manifest_path(CheckpointKey.parse(a.key)) for a in saved]

    store = CheckpointStore(VanishingBackend(str(tmp_path), [paths[1]]))
    assert [a.key for a in make_session(store, State(), attempt=1).list()] == [saved[0].key, saved[2].key]
    store = CheckpointStore(VanishingBackend(str(tmp_path), [paths[2]]))
    assert [a.key for a in list_run(store, "UnitFlow", "1")] == [saved[0].key]

    # Eager resume in another run: the newest checkpoint vanishes as it is read.
    state.n = 3
    newest = writer.save()
    store = CheckpointStore(
        VanishingBackend(str(tmp_path), [CheckpointStore.manifest_path(CheckpointKey.parse(newest.key))])
    )
    eager = CheckpointSession(
        store, TaskIdentity("UnitFlow", "2", "train", "1", 0), AttributeSource(lambda: {}),
        target=State(), load_policy="eager",
    )
    assert eager.start().key == saved[0].key


def test_gc_removes_old_temp_files_but_not_a_lease_being_written(tmp_path):
    root = tmp_path / "UnitFlow" / "_implicit_checkpoints"
    for folder in ("blobs/ab", "tmp", "locks/saves"):
        (root / folder).mkdir(parents=True)
    old_blob_temp = root / "blobs" / "ab" / ".tmp-killed"
    old_save_temp = root / "tmp" / ".tmp-1+train+1+0+7+abc.def"
    lease_being_written = root / "locks" / "saves" / ".tmp-lease"
    for path in (old_blob_temp, old_save_temp, lease_being_written):
        path.write_bytes(b"x")
    age_files(root, 60)  # older than the grace, younger than a dead lease
    report = collect_garbage(local_store(tmp_path), "UnitFlow", grace=1)
    assert report.deleted_temp_files == 2
    assert not old_blob_temp.exists() and not old_save_temp.exists()
    assert lease_being_written.exists()
