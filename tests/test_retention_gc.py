"""Retention after each commit, then gc: the right checkpoints stay and still load bit-exact."""

import os
import random
import threading
import time

import numpy as np
import pytest

from conftest import TEST_FLOWS
from s3_server import s3_server, s3_world  # noqa: F401  (fixtures)
from engine_helpers import State, blob_bytes_on_disk, local_store, make_session
from metaflow_extensions.implicit_checkpoint.engine.errors import CheckpointException
from metaflow_extensions.implicit_checkpoint.engine.gc import DEFAULT_GRACE, collect_garbage
from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
from metaflow_extensions.implicit_checkpoint.engine.retention import RetentionPolicy
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore

FLOW = TEST_FLOWS / "retention_flow.py"
AN_HOUR_AND_MORE = DEFAULT_GRACE + 60


def age_files(root, seconds):
    """Make every file under root look ``seconds`` old (as if time had passed)."""
    past = time.time() - seconds
    for directory, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(directory, name), (past, past))


@pytest.mark.flow
def test_keep_last_and_keep_best_then_gc(world):
    world.run_flow(FLOW)
    kept = world.python(
        """
        import json
        from metaflow import Checkpoint, Flow, namespace
        namespace(None)
        task = Flow("RetentionFlow").latest_run["start"].task
        print(json.dumps([[a.name, a.metadata.get("save")] for a in Checkpoint().list(task=task)]))
        """
    )
    # keep_last=3 keeps saves 18-20, keep_best=2 keeps 11 (0.1) and 4 (0.11); "other" is
    # a separate name with a single checkpoint.
    assert kept == [["checkpoint", 4], ["checkpoint", 11], ["checkpoint", 18],
                    ["checkpoint", 19], ["checkpoint", 20], ["other", None]]

    flow_dir = world.datastore_root / "RetentionFlow"
    before = blob_bytes_on_disk(flow_dir)
    age_files(flow_dir, AN_HOUR_AND_MORE)
    dry = world.command(FLOW, "checkpoint", "gc", "--dry-run").stdout
    # Each of the 15 removed checkpoints leaves one blob of its own: its weights (its
    # object graph, under 4 KiB, was inline in its manifest).
    assert "Would delete 15 unreferenced blob(s)" in dry
    assert blob_bytes_on_disk(flow_dir) == before
    out = world.command(FLOW, "checkpoint", "gc").stdout
    assert "Deleted 15 unreferenced blob(s)" in out
    freed = before - blob_bytes_on_disk(flow_dir)
    assert freed >= 15 * 512 * 1024

    # Every remaining checkpoint still loads, bit-exact.
    checked = world.python(
        """
        import json, sys
        import numpy as np
        sys.path.insert(0, %r)
        from retention_flow import weights_for
        from metaflow import Checkpoint, Flow, namespace
        namespace(None)
        cp = Checkpoint()
        task = Flow("RetentionFlow").latest_run["start"].task
        ok = []
        for art in cp.list(task=task, name="checkpoint"):
            values = cp.load(art)
            ok.append(bool(np.array_equal(values["weights"], weights_for(values["save_number"]))))
        print(json.dumps(ok))
        """
        % str(TEST_FLOWS)
    )
    assert checked == [True] * 5


@pytest.mark.flow
@pytest.mark.s3
def test_retention_and_gc_on_s3(s3_world):
    """S3 keeps its own modification times, so gc runs here with a 2 s grace after
    waiting that long."""
    s3_world.run_flow(FLOW)
    kept = s3_world.python(
        """
        import json
        from metaflow import Checkpoint, Flow, namespace
        namespace(None)
        task = Flow("RetentionFlow").latest_run["start"].task
        print(json.dumps([a.metadata.get("save") for a in Checkpoint().list(task=task, name="checkpoint")]))
        """
    )
    assert kept == [4, 11, 18, 19, 20]
    before = [k for k in s3_world.checkpoint_keys() if "/blobs/" in k]
    time.sleep(2.5)
    report = s3_world.python(
        """
        import json
        from metaflow_extensions.implicit_checkpoint.engine.gc import collect_garbage
        from metaflow_extensions.implicit_checkpoint.plugins.store_binding import store_from_config
        store = store_from_config()
        print(json.dumps(collect_garbage(store, "RetentionFlow", grace=2.0).to_dict()))
        """
    )
    after = [k for k in s3_world.checkpoint_keys() if "/blobs/" in k]
    assert len(report["deleted_blobs"]) == 15  # per removed checkpoint: its weights
    assert len(before) - len(after) == 15 and report["deleted_bytes"] >= 15 * 512 * 1024
    checked = s3_world.python(
        """
        import json, sys
        import numpy as np
        sys.path.insert(0, %r)
        from retention_flow import weights_for
        from metaflow import Checkpoint, Flow, namespace
        namespace(None)
        cp = Checkpoint()
        task = Flow("RetentionFlow").latest_run["start"].task
        print(json.dumps([bool(np.array_equal(cp.load(a)["weights"], weights_for(a.metadata["save"])))
                          for a in cp.list(task=task, name="checkpoint")]))
        """
        % str(TEST_FLOWS)
    )
    assert checked == [True] * 5


def test_retention_never_removes_resume_point_or_newest(tmp_path):
    store = local_store(tmp_path)
    state = State()
    first = make_session(store, state)
    for state.n in range(1, 4):
        first.save(metadata={"loss": 1.0 / state.n})
    resumed = make_session(
        local_store(tmp_path), State(), attempt=1, retention=RetentionPolicy(keep_last=1)
    )
    resumed.load()  # resumes from version 3
    for n in range(4, 7):
        resumed.save(metadata={"loss": 9.0})
    assert [a.version for a in resumed.list()] == [3, 6]


def test_policy_ranking():
    from metaflow_extensions.implicit_checkpoint.engine.artifact import CheckpointArtifact

    def art(version, loss):
        return CheckpointArtifact("F/1/s/2/0/c/%d" % version, "c", "F/1/s/2", 0, version, "", 0,
                                  {} if loss is None else {"acc": loss}, {})

    arts = [art(1, 0.5), art(2, None), art(3, float("nan")), art(4, 0.9), art(5, 0.9), art(6, 0.1)]
    best_max = RetentionPolicy(keep_best=2, best_metric="acc", best_mode="max")
    assert [a.version for a in best_max.best(arts)] == [5, 4, 1, 6]
    removed = best_max.to_remove(arts, protected=set())
    assert [a.version for a in removed] == [1, 2, 3]
    assert RetentionPolicy().to_remove(arts, set()) == []


def test_gc_keeps_young_blobs_and_blobs_a_save_reuses(tmp_path):
    store = local_store(tmp_path)
    state = State()
    state.weights = np.arange(300_000.0)
    session = make_session(store, state)
    old = session.save()
    store.delete_manifest(CheckpointKey.parse(old.key))

    # A young unreferenced blob is kept; an old one would go.
    report = collect_garbage(local_store(tmp_path), "UnitFlow", dry_run=True)
    assert report.unreferenced_blobs == report.kept_young_blobs >= 1
    age_files(tmp_path, AN_HOUR_AND_MORE)
    report = collect_garbage(local_store(tmp_path), "UnitFlow", dry_run=True)
    assert report.unreferenced_blobs == len(report.deleted_blobs) >= 1

    # A new process saves the same data: it reuses the old blob, so gc keeps it.
    again = make_session(local_store(tmp_path), state, task_id="2").save()
    report = collect_garbage(local_store(tmp_path), "UnitFlow")
    assert report.deleted_blobs == []
    loaded = State()
    make_session(local_store(tmp_path), loaded, attempt=1, task_id="2").load(again)
    assert np.array_equal(loaded.weights, state.weights)

    with pytest.raises(CheckpointException, match="0 seconds or more"):
        collect_garbage(local_store(tmp_path), "UnitFlow", grace=-1)


@pytest.mark.slow
def test_gc_running_during_saves_never_breaks_a_checkpoint(tmp_path):
    """Saves whose values recur (so blobs are reused), retention removing old manifests,
    and gc collecting in a loop, all at once, with a 0.3 s
    grace: every committed checkpoint still loads."""
    grace = 0.3
    state = State()
    session = make_session(
        CheckpointStore(LocalDirBackend(str(tmp_path))),
        state,
        retention=RetentionPolicy(keep_last=2),
    )
    stop = threading.Event()
    deleted = []
    pause = random.Random(3)

    def collector():
        gc_store = CheckpointStore(LocalDirBackend(str(tmp_path)))
        while not stop.is_set():
            deleted.extend(collect_garbage(gc_store, "UnitFlow", grace=grace).deleted_blobs)

    thread = threading.Thread(target=collector)
    thread.start()
    try:
        for i in range(60):
            state.i = i
            state.weights = np.full(200_000, float(i % 6))  # values recur: blobs get reused
            session.save()
            time.sleep(pause.uniform(0.02, 0.09))  # reuse ages straddle the grace
    finally:
        stop.set()
        thread.join()
    assert deleted, "gc never collected anything: the test did not exercise the race"
    reader = make_session(local_store(tmp_path), State(), attempt=1)
    assert len(reader.list()) == 2
    for artifact in reader.list():
        loaded = State()
        make_session(local_store(tmp_path), loaded, attempt=1).load(artifact)
        assert np.array_equal(loaded.weights, np.full(200_000, float(loaded.i % 6)))
