"""The commit fence (issue 21, item 7): a save stopped longer than the lease timeout at
any instant never commits a checkpoint missing a blob.

A real saver process (paused_saver.py) stops itself with SIGSTOP at a named instant of
its save; this process waits until its lease counts as dead (``locks.STALE`` is
shortened here only), runs gc with no grace, then lets the saver go on. Whatever the
instant, every checkpoint committed afterwards loads bit-exact; where gc deleted a blob
the stopped save meant to reference, the fence removed its manifest again and the save
stored the data anew (a blocking save's retry).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from s3_server import s3_server  # noqa: F401  (fixture)
from engine_helpers import State, make_session
from paused_saver import fence_state
from metaflow_extensions.implicit_checkpoint.engine import locks
from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
from metaflow_extensions.implicit_checkpoint.engine.errors import CheckpointStorageError
from metaflow_extensions.implicit_checkpoint.engine.gc import collect_garbage
from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore

HERE = Path(__file__).parent
STALE = 2.0  # the lease timeout gc uses in this process (the saver keeps the real one)
#: Where gc deletes a blob the stopped save checked or wrote: the fence must uncommit.
RACY = ("after-blob-check", "after-blob-write", "before-manifest-write")
SAFE = ("lease-taken", "before-blob-check", "after-manifest-write", "after-fence")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def target(request, tmp_path):
    """``(make a store, the saver's STORE argument)`` on a fresh local folder or S3 root."""
    if request.param == "local":
        root = str(tmp_path / "store")
        os.makedirs(root)
        return (lambda: CheckpointStore(LocalDirBackend(root))), root
    server = request.getfixturevalue("s3_server")
    root = server.new_root()
    return (lambda: CheckpointStore(server.backend(root))), "s3:%s|%s" % (server.endpoint, root)


@pytest.fixture
def short_leases(monkeypatch):
    monkeypatch.setattr(locks, "STALE", STALE)
    monkeypatch.setattr(locks, "RENEW", 0.2)  # gc's own marker stays live


def _old_unreferenced_blob(make_store) -> set:
    """Store the saver's ``old`` array as a blob no manifest references; its digests."""
    state = State()
    state.old = fence_state(State()).old
    session = make_session(make_store(), state, task_id="1")
    artifact = session.save()
    store = make_store()
    key = CheckpointKey.parse(artifact.key)
    blobs = set(store.read_manifest(key).storage.blobs)
    store.delete_manifest(key)
    return blobs


def _run_paused_saver(make_store, spec, point, tmp_path, fence="on", background=False):
    """Start the saver, let it stop at ``point``, gc while it is stopped; its result
    and gc's report. ``background``: the saver's save is a background one."""
    flag = str(tmp_path / ("paused-%s" % point))
    env = dict(
        os.environ,
        FENCE=fence,
        BACKGROUND="1" if background else "0",
        PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent)]),
    )
    saver = subprocess.Popen(
        [sys.executable, str(HERE / "paused_saver.py"), spec, point, flag],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(flag):
            assert saver.poll() is None, "the saver ended before %s: %s" % (point, saver.communicate())
            assert time.monotonic() < deadline, "the saver never reached %s" % point
            time.sleep(0.02)
        time.sleep(STALE + 1.5)  # its lease now counts as dead (S3 times have 1 s steps)
        report = collect_garbage(make_store(), "UnitFlow", grace=0, wait=1)
        assert report.busy == []
        os.kill(saver.pid, signal.SIGCONT)
        out, err = saver.communicate(timeout=120)
    finally:
        if saver.poll() is None:
            os.kill(saver.pid, signal.SIGKILL)
            saver.wait()
    assert saver.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    result["log"] = err
    return result, report


def _committed_and_intact(make_store):
    """Every committed checkpoint of the flow: (key, blob problems, loaded state)."""
    store = make_store()
    found = []
    for key in store.iter_manifests("UnitFlow"):
        manifest = store.read_manifest(key)
        problems = store.blob_problems("UnitFlow", manifest.storage.blobs)
        found.append((str(key), problems))
    return found


@pytest.mark.flow
@pytest.mark.slow
@pytest.mark.parametrize("point", RACY + SAFE)
def test_a_save_stopped_at_any_instant_never_commits_a_checkpoint_missing_a_blob(
    target, point, tmp_path, short_leases
):
    make_store, spec = target
    old_blobs = _old_unreferenced_blob(make_store)
    result, report = _run_paused_saver(make_store, spec, point, tmp_path)

    if result["error"] is not None:
        pytest.fail("the save failed: %s" % result["log"], pytrace=False)
    committed = _committed_and_intact(make_store)
    assert [key for key, _ in committed] == [result["key"]]
    assert all(not problems for _, problems in committed), committed
    if point in RACY:
        # gc took the stopped save for dead and deleted what it had checked or written;
        # the fence found out after the manifest write and uncommitted it.
        assert report.deleted_blobs, "gc deleted nothing: the race was not exercised"
        assert result["uncommits"] == 1
    else:
        assert result["uncommits"] == 0
    if point in ("lease-taken", "before-blob-check"):
        assert old_blobs <= set(report.deleted_blobs)  # the save checked after: it rewrote it

    loaded = State()
    reader = make_session(make_store(), State(), task_id="2", attempt=1)
    (artifact,) = reader.list()
    make_session(make_store(), loaded, task_id="reader", attempt=9).load(artifact)
    expected = fence_state(State())
    for name in ("old", "new", "small"):
        assert np.array_equal(getattr(loaded, name), getattr(expected, name)), name


@pytest.mark.flow
@pytest.mark.slow
@pytest.mark.parametrize("point", RACY)
def test_a_background_save_stopped_where_gc_deletes_its_blobs_is_committed_by_its_retry(
    point, tmp_path, short_leases
):
    """The retry is the background save's too: its staged bytes are still what save()
    saw, so once the fence uncommitted it, it commits again, intact, before wait() returns."""
    root = str(tmp_path / "store")
    os.makedirs(root)
    make_store = lambda: CheckpointStore(LocalDirBackend(root))  # noqa: E731
    _old_unreferenced_blob(make_store)
    result, report = _run_paused_saver(make_store, root, point, tmp_path, background=True)
    assert result["error"] is None, result["log"]
    assert report.deleted_blobs, "gc deleted nothing: the race was not exercised"
    assert result["uncommits"] == 1
    committed = _committed_and_intact(make_store)
    assert committed == [(result["key"], {})]
    loaded = State()
    make_session(make_store(), loaded, task_id="reader", attempt=9).load(result["key"])
    expected = fence_state(State())
    for name in ("old", "new", "small"):
        assert np.array_equal(getattr(loaded, name), getattr(expected, name)), name


@pytest.mark.flow
def test_a_save_stopped_with_a_temp_file_written_fails_or_commits_intact(target, tmp_path, short_leases):
    """Stopped in the middle of a one-pass blob write, the save's temp file is removed by
    gc (the save is taken for dead): the save may fail, but commits nothing damaged."""
    make_store, spec = target
    _old_unreferenced_blob(make_store)
    result, _ = _run_paused_saver(make_store, spec, "temp-written", tmp_path)
    committed = _committed_and_intact(make_store)
    assert all(not problems for _, problems in committed), committed
    if result["error"] is None:
        assert [key for key, _ in committed] == [result["key"]]
    else:
        assert result["error"].startswith("CheckpointStorageError") and committed == []


@pytest.mark.flow
def test_without_the_fence_the_stopped_save_commits_a_damaged_checkpoint(tmp_path, short_leases):
    """The control: the same race with the fence off leaves a committed checkpoint whose
    reused blob is gone, what the next resume skipped as damaged (issue 21, item 7)."""
    root = str(tmp_path / "store")
    os.makedirs(root)

    def make_store():
        return CheckpointStore(LocalDirBackend(root))

    _old_unreferenced_blob(make_store)
    result, report = _run_paused_saver(make_store, root, "after-blob-check", tmp_path, fence="off")
    assert result["error"] is None and result["uncommits"] == 0
    ((key, problems),) = _committed_and_intact(make_store)
    assert key == result["key"] and problems and set(problems) <= set(report.deleted_blobs)


class FailingEpochBackend(LocalDirBackend):
    """A store where the deleter's new epoch cannot be written."""

    def write(self, path, parts, durable, temp_prefix=None):
        if "/locks/epoch/" in path:
            raise CheckpointStorageError("no space left", operation="write", path=path, reason="ENOSPC")
        return super().write(path, parts, durable, temp_prefix)


def test_a_gc_that_cannot_write_the_new_epoch_deletes_nothing(tmp_path):
    """The epoch is written before the first deletion: were it after, a failure to
    write it would leave blobs gone while every process still trusted its checks."""
    root = str(tmp_path)
    state = State()
    state.weights = np.arange(50_000.0)
    store = CheckpointStore(LocalDirBackend(root))
    store.delete_manifest(CheckpointKey.parse(make_session(store, state).save().key))
    blobs = sorted(p for p in Path(root).rglob("*") if p.is_file() and "/blobs/" in str(p))
    assert blobs
    with pytest.raises(CheckpointStorageError, match="no space left"):
        collect_garbage(CheckpointStore(FailingEpochBackend(root)), "UnitFlow", grace=0)
    assert all(p.exists() for p in blobs)


def test_a_save_keeps_its_lease_and_commits_with_one_listing_while_gc_waits(tmp_path):
    """The fence never waits for a deleter that waits for this save: with the save's
    lease still listed, a live deleter marker is no reason to wait (gc has yet to list
    the manifests)."""
    import threading

    root = str(tmp_path)
    state = State()
    state.weights = np.arange(50_000.0)
    saver_store = CheckpointStore(LocalDirBackend(root))
    phases = []
    saver_store.locks.on_phase = phases.append
    session = make_session(saver_store, state)
    gc_store = CheckpointStore(LocalDirBackend(root))
    marked = threading.Event()
    gc_store.locks.on_phase = lambda phase: phase == "deleter-marked" and marked.set()
    reports = []

    real_write = saver_store.backend.write

    def write(path, parts, durable, temp_prefix=None):
        if path.endswith(".manifest"):  # gc marks while this save is about to commit
            collector.start()
            assert marked.wait(timeout=30)
        return real_write(path, parts, durable, temp_prefix)

    saver_store.backend.write = write
    collector = threading.Thread(
        target=lambda: reports.append(collect_garbage(gc_store, "UnitFlow", grace=0, wait=0.2))
    )
    began = time.monotonic()
    artifact = session.save()
    assert time.monotonic() - began < 5
    collector.join(timeout=60)
    assert phases.count("save-fenced") == 1 and "save-fence-waiting-for-deleters" not in phases
    assert reports[0].busy == [] and not reports[0].deleted_blobs
    assert saver_store.blob_problems(
        "UnitFlow", saver_store.read_manifest(CheckpointKey.parse(artifact.key)).storage.blobs
    ) == {}


class RefusingManifestBackend(LocalDirBackend):
    def write(self, path, parts, durable, temp_prefix=None):
        if path.endswith(".manifest"):
            raise CheckpointStorageError(
                "Could not write %s: read-only file system" % path,
                operation="write", path=path, reason="EROFS",
            )
        return super().write(path, parts, durable, temp_prefix)


def test_a_failed_commit_write_is_raised_as_the_backend_named_it(tmp_path):
    state = State()
    state.weights = np.arange(1000.0)
    session = make_session(CheckpointStore(RefusingManifestBackend(str(tmp_path))), state)
    with pytest.raises(CheckpointStorageError) as caught:
        session.save()
    assert caught.value.reason == "EROFS" and caught.value.operation == "write"
    assert str(caught.value).count("read-only file system") == 1
    assert "Could not commit" not in str(caught.value)
