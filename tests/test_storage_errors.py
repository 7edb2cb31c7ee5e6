"""The storage failing: every public call raises a CheckpointException naming what failed
(a CheckpointStorageError with the operation, the path and the OS's or the service's
reason), never a raw OSError, and nothing committed before is lost.

Local disk: a store on a real read-only mount and on a real full file system (tmpfs; we
run as root, where chmod stops nothing). S3: a server error that persists. And the
backend's regular-file rule: a FIFO, a device or a link at a blob path is "missing",
never read or waited on.
"""

import errno
import logging
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine_helpers import State, make_session
from s3_fault_proxy import FaultProxy
from s3_server import s3_server  # noqa: F401  (fixture)
from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
from metaflow_extensions.implicit_checkpoint.engine.errors import (
    CheckpointCorrupted,
    CheckpointStorageError,
)
from metaflow_extensions.implicit_checkpoint.engine.gc import collect_garbage
from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
from metaflow_extensions.implicit_checkpoint.engine.reading import inspect_checkpoint, list_task
from metaflow_extensions.implicit_checkpoint.engine.s3_backend import RetryPolicy
from metaflow_extensions.implicit_checkpoint.engine.session import TaskIdentity
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore
from metaflow_extensions.implicit_checkpoint.engine.verify import verify_checkpoints

FLOW = "UnitFlow"
QUICK_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)


# -- a real file system that fails ------------------------------------------------------


class Tmpfs:
    """A tmpfs mounted on a folder of the test, made read-only or full on demand."""

    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", str(path)],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            pytest.skip("mounting a tmpfs is not permitted here: %s" % done.stderr.strip())
        self._filler = path / "filler"

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", "remount,%s" % mode, str(self.path)], check=True)

    def fill(self, leave: int = 0) -> None:
        """Fill the file system up, then free ``leave`` bytes of it."""
        with open(self._filler, "wb", buffering=0) as f:
            block = b"\0" * 4096
            try:
                while True:
                    f.write(block)
            except OSError as ex:
                assert ex.errno == errno.ENOSPC
        with open(self._filler, "r+b") as f:
            f.truncate(max(0, os.path.getsize(self._filler) - leave))

    def free(self) -> None:
        self._filler.unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    mounts = []

    def mount(size: str) -> Tmpfs:
        mounts.append(Tmpfs(tmp_path / ("fs%d" % len(mounts)), size))
        return mounts[-1]

    yield mount
    for fs in mounts:
        fs.unmount()


def saved_states(store: CheckpointStore):
    """Two committed checkpoints of task 1: the session, its state, and
    ``[(artifact, the weights it holds)]``."""
    state = State()
    session = make_session(store, state)
    saved = []
    for step in range(2):
        state.weights = np.random.default_rng(step).random(2000)
        state.step = step
        saved.append((session.save(metadata={"step": step}), state.weights.copy()))
    return session, state, saved


def assert_all_load(root: Path, saved) -> None:
    """Every checkpoint of ``saved`` lists and loads bit-identically from a new process's store."""
    store = CheckpointStore(LocalDirBackend(str(root)))
    reader = make_session(store, State(), attempt=1)
    assert [a.key for a in reader.list()] == [a.key for a, _ in saved]
    for artifact, weights in saved:
        loaded = State()
        make_session(CheckpointStore(LocalDirBackend(str(root))), loaded, attempt=1).load(artifact)
        assert loaded.weights.tobytes() == weights.tobytes()


def assert_names_the_store(failure: CheckpointStorageError, operation: str, reason: str, root: Path):
    assert failure.operation == operation, failure
    assert failure.reason == reason, failure
    assert failure.path.startswith(str(root)), failure
    message = str(failure)
    assert "Could not %s %s" % (operation, failure.path) in message and reason in message


def largest_blob(root: Path, artifact) -> Path:
    """The file of the largest blob ``artifact`` references (the one holding its weights)."""
    manifest = CheckpointStore(LocalDirBackend(str(root))).read_manifest(CheckpointKey.parse(artifact.key))
    digest = max(manifest.storage.blobs, key=manifest.storage.blobs.get)
    return root / CheckpointStore.blob_path(FLOW, digest)


def temp_files(root: Path):
    return [p for p in root.rglob(".tmp-*")]


def hand_down_task(monkeypatch, root: Path, task_id: str) -> None:
    """Make this process a worker of task ``task_id`` (as a step hands it down)."""
    from metaflow_extensions.implicit_checkpoint.plugins.task_handoff import (
        TASK_ENV,
        HandedTask,
        hand_down,
    )

    monkeypatch.setenv(TASK_ENV, "")
    hand_down(HandedTask(TaskIdentity(FLOW, "1", "train", task_id, 0), "fresh", "local", str(root)))


def test_a_read_only_store_fails_writes_by_name_and_serves_reads(tmpfs, monkeypatch):
    fs = tmpfs("16m")
    root = fs.path
    session, state, saved = saved_states(CheckpointStore(LocalDirBackend(str(root))))
    # A checkpoint whose only blob gets damaged: verify --repair has something to do.
    doomed_state = State()
    doomed_state.weights = np.random.default_rng(99).random(3000)
    doomed = make_session(CheckpointStore(LocalDirBackend(str(root))), doomed_state, task_id="9").save()
    blob = largest_blob(root, doomed)
    blob.write_bytes(b"\1" * blob.stat().st_size)
    fs.remount("ro")

    from metaflow import Checkpoint

    # Writes fail, each naming the operation, the path and the reason.
    state.weights = state.weights + 1
    with pytest.raises(CheckpointStorageError) as failure:
        session.save()
    assert_names_the_store(failure.value, "write", "Read-only file system", root)
    assert "locks/saves" in failure.value.path and "read-only" in str(failure.value)
    with pytest.raises(CheckpointStorageError) as failure:
        session.save(blocking=False)
        session.wait()
    assert_names_the_store(failure.value, "write", "Read-only file system", root)
    hand_down_task(monkeypatch, root, "1")
    with pytest.raises(CheckpointStorageError) as failure:
        Checkpoint().save({"weights": np.zeros(10)})
    assert_names_the_store(failure.value, "write", "Read-only file system", root)
    with pytest.raises(CheckpointStorageError) as failure:
        collect_garbage(CheckpointStore(LocalDirBackend(str(root))), FLOW, grace=0)
    assert_names_the_store(failure.value, "write", "Read-only file system", root)
    assert "locks/deleters" in failure.value.path
    keys = [CheckpointKey.parse(a.key) for a, _ in saved] + [CheckpointKey.parse(doomed.key)]
    with pytest.raises(CheckpointStorageError) as failure:
        verify_checkpoints(CheckpointStore(LocalDirBackend(str(root))), FLOW, keys, repair=True)
    assert_names_the_store(failure.value, "write", "Read-only file system", root)

    # Reads need no write: they work, and see exactly what was committed.
    store = CheckpointStore(LocalDirBackend(str(root)))
    assert [a.key for a in list_task(store, FLOW, "1", "train", "1")] == [a.key for a, _ in saved]
    assert inspect_checkpoint(store, saved[0][0].key)["metadata"] == {"step": 0}
    assert Checkpoint().load(saved[1][0].key)["weights"].tobytes() == saved[1][1].tobytes()
    report = verify_checkpoints(store, FLOW, keys)
    assert [v.intact for v in report.checkpoints] == [True, True, False]
    dry = collect_garbage(store, FLOW, dry_run=True, grace=0)
    assert dry.manifests == 3 and dry.deleted_blobs == []
    assert_all_load(root, saved)

    # Read-write again: all there, bit-identical, and saving works.
    fs.remount("rw")
    assert_all_load(root, saved)
    assert temp_files(root) == []
    saved.append((session.save(), state.weights.copy()))
    assert_all_load(root, saved)


def test_a_full_disk_fails_saves_by_name_and_loses_nothing(tmpfs, monkeypatch):
    fs = tmpfs("256k")
    root = fs.path
    session, state, saved = saved_states(CheckpointStore(LocalDirBackend(str(root))))
    state.weights = np.random.default_rng(7).random(20_000)  # 160 KB: more than is left

    # Full to the last byte: not even a save's lease fits.
    fs.fill()
    with pytest.raises(CheckpointStorageError) as failure:
        session.save()
    assert_names_the_store(failure.value, "write", "No space left on device", root)
    assert "locks/saves" in failure.value.path and "full" in str(failure.value)
    with pytest.raises(CheckpointStorageError) as failure:
        collect_garbage(CheckpointStore(LocalDirBackend(str(root))), FLOW, grace=0)
    assert_names_the_store(failure.value, "write", "No space left on device", root)

    # Room for the lease, not for the data: the blob write fails, its temp file is gone.
    fs.free()
    fs.fill(leave=16 * 1024)
    for blocking in (True, False):
        with pytest.raises(CheckpointStorageError) as failure:
            session.save(blocking=blocking)
            session.wait()
        assert failure.value.operation == "write" and failure.value.reason == "No space left on device"
        assert re.search("/_implicit_checkpoints/(blobs|tmp)/", failure.value.path), failure.value
    hand_down_task(monkeypatch, root, "1")
    from metaflow import Checkpoint

    with pytest.raises(CheckpointStorageError) as failure:
        Checkpoint().save({"weights": state.weights})
    assert failure.value.reason == "No space left on device"
    assert temp_files(root) == []
    assert not list((root / FLOW / "_implicit_checkpoints" / "locks" / "saves").iterdir())

    # Reads work on a full disk; nothing partial was committed.
    assert_all_load(root, saved)
    assert Checkpoint().load(saved[0][0].key)["weights"].tobytes() == saved[0][1].tobytes()

    fs.free()
    saved.append((session.save(), state.weights.copy()))
    assert_all_load(root, saved)


# -- the boundary itself ------------------------------------------------------------------


class FailingBackend(LocalDirBackend):
    """Its implementation raises ``error`` as a disk might: deleting a path containing
    ``where``, or listing under such a path after the first file."""

    def __init__(self, root, where, error):
        super().__init__(root)
        self.where = where
        self.error = error

    def _delete(self, paths):
        if any(self.where in p for p in paths):
            raise self.error
        super()._delete(paths)

    def _walk_files(self, prefix):
        for number, entry in enumerate(super()._walk_files(prefix)):
            if number and self.where in prefix:
                raise self.error
            yield entry


def test_failures_are_worded_once_at_the_boundary_and_missing_reads_stay_missing(tmp_path):
    eio = OSError(errno.EIO, os.strerror(errno.EIO))
    backend = FailingBackend(str(tmp_path), "x", eio)
    with pytest.raises(CheckpointStorageError) as failure:
        backend.delete(["a/x", "a/y", "a/z"])
    assert failure.value.operation == "delete" and failure.value.reason == "Input/output error"
    assert str(failure.value).startswith(
        "Could not delete %s (and 2 more): Input/output error. The device reported an I/O error"
        % backend.describe("a/x")
    )
    assert failure.value.__cause__ is eio  # wrapped once, straight from the OS's error
    for name in ("one", "two"):
        backend.write("x/%s" % name, [b"1"], durable=False)
    walked = []
    with pytest.raises(CheckpointStorageError) as failure:
        walked.extend(backend.walk_files("x"))
    assert len(walked) == 1 and failure.value.operation == "list"
    assert failure.value.path == backend.describe("x")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(CheckpointStorageError) as failure:  # a file where a folder must be
        backend.write("file/below", [b"x"], durable=False)
    assert failure.value.operation == "write" and failure.value.path == backend.describe("file/below")
    # Missing is an answer, not a failure: reads raise FileNotFoundError, the others say so.
    with pytest.raises(FileNotFoundError):
        backend.read("nowhere")
    with pytest.raises(FileNotFoundError):
        backend.read_into("file/below", memoryview(bytearray(1)))
    assert backend.stat_many(["nowhere", "file", "file/below"]) == [None, 1, None]
    assert backend.list_dir("file/below") == [] and list(backend.walk_files("nowhere")) == []
    # A bug is not a storage failure: it keeps its own type and traceback.
    backend.error = ValueError("a bug")
    with pytest.raises(ValueError):
        backend.delete(["x"])


def test_a_committed_save_is_not_failed_by_a_lease_the_storage_will_not_remove(tmp_path, caplog):
    backend = FailingBackend(str(tmp_path), "/locks/saves/", OSError(errno.EROFS, os.strerror(errno.EROFS)))
    state = State()
    state.weights = np.arange(1000.0)
    with caplog.at_level(logging.WARNING):
        artifact = make_session(CheckpointStore(backend), state).save()
    assert "could not remove the marker" in caplog.text and "Read-only file system" in caplog.text
    assert_all_load(tmp_path, [(artifact, state.weights)])


def test_a_lease_renewal_that_fails_is_retried_and_stops_the_holder_in_time(tmp_path, monkeypatch):
    from metaflow_extensions.implicit_checkpoint.engine import locks

    class NoTouch(LocalDirBackend):
        def _touch(self, paths):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(locks, "RENEW", 0.05)
    lock_set = locks.Locks(NoTouch(str(tmp_path)))
    marker = lock_set.hold("locks/nodes/0", "node 0")
    time.sleep(0.3)  # the renewer fails a few times and goes on
    assert lock_set._renewer.is_alive()
    marker.renewed -= locks.STALE  # as if it had failed for that long
    with pytest.raises(CheckpointStorageError, match="could not be renewed") as failure:
        marker.check("Saving")
    assert failure.value.operation == "touch"
    lock_set.release(marker)


# -- local reads: regular files inside the store only ---------------------------------------


def one_blob_checkpoint(root: Path):
    state = State()
    state.weights = np.random.default_rng(5).random(4000)
    artifact = make_session(CheckpointStore(LocalDirBackend(str(root))), state).save()
    return artifact, largest_blob(root, artifact)


def load_within(root: Path, artifact, seconds: float = 10):
    """Load ``artifact`` in a thread; the error it raised (it must end in time)."""
    outcome = {}

    def load():
        try:
            make_session(CheckpointStore(LocalDirBackend(str(root))), State(), attempt=1).load(artifact)
        except BaseException as ex:  # noqa: B902 - handed to the test
            outcome["error"] = ex

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the load blocked"
    return outcome.get("error")


def test_a_fifo_at_a_blob_path_is_missing_and_never_waited_on(tmp_path):
    artifact, blob = one_blob_checkpoint(tmp_path)
    blob.unlink()
    os.mkfifo(blob)
    backend = LocalDirBackend(str(tmp_path))
    relative = str(blob.relative_to(tmp_path))
    started = time.monotonic()
    with pytest.raises(FileNotFoundError, match="not a regular file inside the store"):
        backend.read_into(relative, memoryview(bytearray(10)))
    with pytest.raises(FileNotFoundError, match="not a regular file inside the store"):
        backend.read(relative)
    assert time.monotonic() - started < 2
    assert backend.stat_many([relative]) == [None]
    error = load_within(tmp_path, artifact)
    assert isinstance(error, CheckpointCorrupted) and "missing" in str(error)
    report = verify_checkpoints(CheckpointStore(backend), FLOW, [CheckpointKey.parse(artifact.key)])
    assert [d.problem for d in report.checkpoints[0].damages] == ["missing"]


def test_links_and_devices_at_blob_paths_are_missing(tmp_path):
    store_root = tmp_path / "store"
    store_root.mkdir()
    artifact, blob = one_blob_checkpoint(store_root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / blob.name).write_bytes(blob.read_bytes())  # the right bytes, but not in the store
    backend = LocalDirBackend(str(store_root))
    relative = str(blob.relative_to(store_root))

    blob.unlink()
    blob.symlink_to(outside / blob.name)  # a link, even to the right bytes
    with pytest.raises(FileNotFoundError, match="not a regular file inside the store"):
        backend.read(relative)
    assert isinstance(load_within(store_root, artifact), CheckpointCorrupted)

    blob.unlink()
    os.mknod(blob, 0o600 | 0o020000, os.makedev(1, 5))  # /dev/zero's device: endless zeros
    with pytest.raises(FileNotFoundError, match="not a regular file inside the store"):
        backend.read_into(relative, memoryview(bytearray(10)))

    # A folder of the store linked elsewhere: its files are outside the store.
    folder = blob.parent
    blob.unlink()
    folder.rename(tmp_path / "moved")
    folder.symlink_to(tmp_path / "moved")
    (tmp_path / "moved" / blob.name).write_bytes((outside / blob.name).read_bytes())
    with pytest.raises(FileNotFoundError, match="not a regular file inside the store"):
        LocalDirBackend(str(store_root)).read(relative)
    assert isinstance(load_within(store_root, artifact), CheckpointCorrupted)

    # Put back as a regular file inside the store, it loads.
    folder.unlink()
    (tmp_path / "moved").rename(folder)
    assert load_within(store_root, artifact) is None


# -- S3: a server error that persists ---------------------------------------------------------


@pytest.mark.s3
def test_s3_errors_that_persist_name_the_operation_and_the_key(s3_server):
    root = s3_server.new_root()
    host = s3_server.endpoint.split("://")[1]
    with FaultProxy(host, share=0.0) as proxy:

        def store():
            return CheckpointStore(s3_server.backend(root, endpoint=proxy.endpoint, retry=QUICK_RETRY))

        session, _, saved = saved_states(store())
        key = CheckpointKey.parse(saved[0][0].key)
        proxy.configure(1.0, faults=("500",), max_consecutive=None)
        prefix = "s3://%s/" % s3_server.bucket

        def failure_of(call, operation):
            with pytest.raises(CheckpointStorageError) as failure:
                call()
            error = failure.value
            assert error.operation in ((operation,) if isinstance(operation, str) else operation), error
            assert error.path.startswith(prefix + root[len(prefix):]) and error.path in str(error)
            # a HEAD's error has no body, so S3's code reads "Internal Server Error" there
            assert "failed 3 times in a row" in error.reason
            assert "InternalError" in error.reason or "Internal Server Error" in error.reason
            assert s3_server.endpoint not in str(error) and proxy.endpoint not in str(error)
            return error

        saving = failure_of(session.save, "write")
        assert "/locks/saves/" in saving.path  # its lease, the first thing a save writes
        failure_of(lambda: make_session(store(), State(), attempt=1), "list")
        reading = failure_of(lambda: inspect_checkpoint(store(), key), "read")
        assert reading.path == store().backend.describe(CheckpointStore.manifest_path(key))
        failure_of(lambda: list_task(store(), FLOW, "1", "train", "1"), "list")
        failure_of(lambda: collect_garbage(store(), FLOW, grace=0), "list")
        # verify asks each blob's real size (a manifest's claim is not trusted), then reads it
        failure_of(lambda: verify_checkpoints(store(), FLOW, [key]), ("check", "read"))

        # The manifest is read, then S3 fails: the blob read names the blob.
        proxy.configure(0.0)
        reader = make_session(store(), State(), attempt=1)
        proxy.configure(1.0, faults=("500",), max_consecutive=None, only="/blobs/")
        # (a load first checks the blobs' real sizes against the manifest's claims)
        blob_read = failure_of(lambda: reader.load(saved[0][0]), ("check", "read"))
        assert "/blobs/" in blob_read.path

        proxy.configure(0.0)
        for artifact, weights in saved:
            loaded = State()
            make_session(store(), loaded, attempt=1).load(artifact)
            assert loaded.weights.tobytes() == weights.tobytes()
