"""The example training flow: killed at epoch k and resumed, it ends bit-identical."""

import pytest

from conftest import EXAMPLE_FLOWS

pytestmark = pytest.mark.flow

FLOW = EXAMPLE_FLOWS / "train_resume.py"

FINAL_STATE = """
import json, hashlib
from metaflow import Checkpoint, Flow, namespace
namespace(None)
run = Flow("TrainResumeFlow")[%r]
cp = Checkpoint()
newest = cp.list(task=run["train"].task)[-1]
values = cp.load(newest, fields=["model", "optimizer", "epoch", "losses"])
digest = hashlib.sha256()
for name, tensor in sorted(values["model"].state_dict().items()):
    digest.update(name.encode()); digest.update(tensor.numpy().tobytes())
for state in values["optimizer"].state_dict()["state"].values():
    digest.update(state["momentum_buffer"].numpy().tobytes())
print(json.dumps({"digest": digest.hexdigest(), "epoch": values["epoch"],
                  "losses": values["losses"], "attempt": newest.attempt}))
"""


# Background saves; the example's synchronous default, crashed and resumed, is what
# test_newcomer.py's demo test runs.
@pytest.mark.parametrize("background", ["True"])
def test_killed_and_resumed_run_matches_uninterrupted_run(world, background):
    crashed = world.run_flow(FLOW, "--epochs", "6", "--crash-at", "3", "--background", background)
    assert "Simulating a hard crash" in crashed.stdout
    assert "continuing at epoch 4 of 6" in crashed.stdout
    crashed_run = world.latest_run_id("TrainResumeFlow")
    world.run_flow(FLOW, "--epochs", "6", "--background", background)
    clean_run = world.latest_run_id("TrainResumeFlow")

    resumed = world.python(FINAL_STATE % crashed_run)
    uninterrupted = world.python(FINAL_STATE % clean_run)
    assert resumed["attempt"] == 1 and uninterrupted["attempt"] == 0
    assert resumed["epoch"] == uninterrupted["epoch"] == 6
    assert resumed["losses"] == uninterrupted["losses"]
    assert resumed["digest"] == uninterrupted["digest"]
