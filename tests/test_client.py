"""`from metaflow import Checkpoint` in a separate Python process acting as the notebook."""

import pytest

pytestmark = pytest.mark.flow


def test_notebook_lists_inspects_and_loads(resumed_run):
    # The session's shared run: killed after save 3 of 5, resumed by attempt 1.
    result = resumed_run.world.python(
        """
        import json
        import numpy as np
        from metaflow import Checkpoint, CheckpointArtifact, Flow, namespace
        from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend

        reads = []
        original = LocalDirBackend.read_into
        def counting(self, path, buffer):
            reads.append(path)
            return original(self, path, buffer)
        LocalDirBackend.read_into = counting

        namespace(None)
        run = Flow("ResumeFlow")[%r]
        task = run["train"].task
        cp = Checkpoint()
        arts = cp.list(task=task.pathspec)
        out = {
            "task_versions": [a.version for a in arts],
            "by_object": [a.version for a in cp.list(task=task)],
            "run_versions": [a.version for a in cp.list(run=run.pathspec)],
            "odd": [a.version for a in cp.list(task=task, name="odd")],
            "attempt1": [a.version for a in cp.list(task=task, attempt=1)],
        }
        newest = arts[-1]
        reads.clear()
        manifest = cp.inspect(newest)
        out["inspect_reads"] = len(reads)
        out["inspect_fields"] = sorted(manifest["fields"])
        out["inspect_same"] = manifest == newest.implicit_manifest == cp.inspect(newest.key)
        reads.clear()
        only = cp.load(newest.to_dict(), fields=["weights"])
        out["only_keys"] = sorted(only)
        out["only_reads"] = len(reads)
        out["weights_sum"] = float(only["weights"].sum())
        everything = cp.load(newest.key)
        out["all_keys"] = sorted(everything)

        class Notebook:
            pass
        target = Notebook()
        artifact = cp.load(newest, flow=target)
        out["flow_obj"] = [type(artifact).__name__, target.count, float(target.weights.sum())]
        print(json.dumps(out))
        """
        % resumed_run.run_id
    )
    assert result["task_versions"] == [1, 2, 3, 4, 5]
    assert result["by_object"] == [1, 2, 3, 4, 5]
    assert result["run_versions"] == [1, 2, 3, 4, 5]
    assert result["odd"] == [1, 3, 5]
    assert result["attempt1"] == [4, 5]
    assert result["inspect_reads"] == 0
    assert result["inspect_fields"] == ["attempts_seen", "count", "resumed_from", "weights"]
    assert result["inspect_same"] is True
    assert result["only_keys"] == ["weights"]
    assert result["only_reads"] == 1  # the weights' blob (the object graph is inline)
    assert result["weights_sum"] == 5000
    assert result["all_keys"] == ["attempts_seen", "count", "resumed_from", "weights"]
    assert result["flow_obj"] == ["CheckpointArtifact", 5, 5000.0]


def test_notebook_errors_name_what_is_wrong(resumed_run):
    errors = resumed_run.world.python(
        """
        import json
        from metaflow import Checkpoint, CheckpointException, Flow, namespace
        namespace(None)
        cp = Checkpoint()
        run = Flow("ResumeFlow")[%r]
        art = cp.list(task=run["train"].task)[0]
        out = {}
        cases = {
            "unknown_key": lambda: cp.load(art.key[:-1] + "99"),
            "malformed_key": lambda: cp.inspect("ResumeFlow/1/train"),
            "missing_task": lambda: cp.list(task="ResumeFlow/%%s/train/999" %% run.id),
            "missing_run": lambda: cp.list(run="ResumeFlow/123456789"),
            "bad_pathspec": lambda: cp.list(task="ResumeFlow/train"),
            "missing_field": lambda: cp.load(art, fields=["weights", "no_such_field"]),
            "task_and_run": lambda: cp.list(task=run["train"].task, run=run),
        }
        for label, call in cases.items():
            try:
                call()
                out[label] = None
            except CheckpointException as ex:
                out[label] = "%%s: %%s" %% (type(ex).__name__, ex)
        print(json.dumps(out))
        """
        % resumed_run.run_id
    )
    assert errors["unknown_key"].startswith("CheckpointNotFound") and "/99" in errors["unknown_key"]
    assert "not a checkpoint key" in errors["malformed_key"]
    assert errors["missing_task"].startswith("CheckpointNotFound")
    assert "train/999 does not exist" in errors["missing_task"]
    assert "ResumeFlow/123456789 does not exist" in errors["missing_run"]
    assert "not a task pathspec" in errors["bad_pathspec"]
    assert "'no_such_field'" in errors["missing_field"] and "weights" in errors["missing_field"]
    assert "exactly one of" in errors["task_and_run"]


def test_other_users_runs_need_the_namespace(resumed_run):
    # The shared run is user tester's; bob looks at it from his notebook.
    world = resumed_run.world
    world.env["USERNAME"] = "bob"
    seen = world.python(
        """
        import json
        from metaflow import Checkpoint, CheckpointException, namespace
        pathspec = %r
        namespace("user:bob")
        try:
            Checkpoint().list(task=pathspec)
            in_bob = "listed"
        except CheckpointException as ex:
            in_bob = str(ex)
        namespace("user:tester")
        print(json.dumps([in_bob, len(Checkpoint().list(task=pathspec))]))
        """
        % resumed_run.task_pathspec
    )
    assert "not in the current namespace" in seen[0] and "namespace(None)" in seen[0]
    assert seen[1] == 5
