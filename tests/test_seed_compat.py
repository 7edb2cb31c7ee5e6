"""Coming from metaflow-checkpoint: the seed PR's own test flow and PyTorch example run on
this package, and the seed's API names work (latest=, storage_format=, info,
task_identifier, full_namespace=, mapping-style artifacts, Checkpoint.inspect on the class)."""

import pytest
import torch

from conftest import TEST_FLOWS
from engine_helpers import State, local_store, make_session
from metaflow_extensions.implicit_checkpoint.engine.errors import CheckpointException

SEED = TEST_FLOWS / "seed"


@pytest.mark.flow
def test_the_seed_prs_test_flow_passes(world):
    proc = world.run_flow(SEED / "test_implicit_checkpoint_flow.py")
    for scenario in range(1, 6):
        assert "--- scenario %d PASSED ---" % scenario in proc.stdout
    assert "=== All implicit checkpoint scenarios PASSED ===" in proc.stdout
    run_id = world.latest_run_id("ImplicitCheckpointTestFlow")
    # The seed's Checkpoint.inspect(ref) is called on the class.
    seen = world.python(
        """
        import json
        from metaflow import Checkpoint, Flow, namespace
        namespace(None)
        task = Flow("ImplicitCheckpointTestFlow")[%r]["inspect_checkpoint"].task
        ref = Checkpoint().list(task=task)[-1]
        print(json.dumps({"fields": sorted(Checkpoint.inspect(ref)["fields"]), "name": ref["name"]}))
        """
        % run_id
    )
    assert seen == {"fields": ["epoch", "loss"], "name": "inspect_me"}


@pytest.mark.flow
def test_the_seed_prs_pytorch_example_resumes_after_its_random_failures(world):
    # Python's random seeded at start: with seed 3 the example's 20 % failure draw
    # fails attempt 0 once, mid-training, and the retry completes.
    world.env["PYTHONPATH"] = str(SEED / "seeded_random")
    world.env["SEED_RANDOM"] = "3"
    proc = world.run_flow(SEED / "example_pytorch_training.py", "--epochs", "6")
    assert "simulated failure at epoch" in proc.stdout
    assert "[@checkpoint] Resuming from checkpoint" in proc.stdout
    assert "=== Checkpoints saved (" in proc.stdout and "across 2 attempt(s)" in proc.stdout
    assert "=== Training complete ===" in proc.stdout


def test_latest_false_is_never_the_resume_point(tmp_path):
    state = State()
    session = make_session(local_store(tmp_path), state)
    state.epoch = 1
    session.save(name="latest")
    state.epoch = 2
    side = session.save(name="probe", latest=False, storage_format="tar")
    assert side["latest"] is False and side["storage_format"] == "tar"
    retry = make_session(local_store(tmp_path), State(), attempt=1)
    assert retry.info.name == "latest" and retry.loaded.version == 1
    assert [a["version_id"] for a in retry.list()] == [1, 2]  # both listed
    with pytest.raises(CheckpointException, match="storage_format='zip'"):
        session.save(storage_format="zip")


def test_an_artifact_reads_as_the_seeds_reference_dict(tmp_path):
    state = State()
    state.weights = torch.ones(3)
    artifact = make_session(local_store(tmp_path), state).save(metadata={"loss": 0.5})
    assert artifact["key"] == artifact.key and artifact["metadata"] == {"loss": 0.5}
    assert artifact["version_id"] == artifact.version == 1 and artifact["type"] == "checkpoint"
    assert artifact.get("url") is None and "key" in artifact
    assert artifact["implicit_manifest"]["fields"]["weights"]["filename"] == "weights.tensors"
    with pytest.raises(KeyError):
        artifact["url"]


FULL_NAMESPACE_FLOW = TEST_FLOWS / "across_runs_flow.py"


@pytest.mark.flow
def test_list_full_namespace_spans_this_steps_runs(world):
    flow = FULL_NAMESPACE_FLOW
    world.run_flow(flow)
    world.run_flow(flow)
    other_user = dict(world.env, USERNAME="someone-else")
    env, world.env = world.env, other_user
    world.run_flow(flow)  # another namespace: not listed by the runs of user:tester
    world.env = env
    world.run_flow(flow)
    seen = world.python(
        """
        import json
        from metaflow import Flow, namespace
        namespace(None)
        runs = list(Flow("AcrossRunsFlow"))  # newest first
        data = [r["train"].task.data for r in runs]
        print(json.dumps({"mine": [d.mine for d in data], "everywhere": [d.everywhere for d in data],
                          "ids": sorted({d.identifier for d in data})}))
        """
    )
    newest, other, second, first = seen["everywhere"]
    mine = [keys[0] for keys in seen["mine"]]
    assert newest == [mine[3], mine[2], mine[0]]  # oldest first; another user's run is not there
    assert first == [mine[3]]
    assert len(seen["ids"]) == 1 and len(seen["ids"][0]) == 12
