"""Worker subprocesses of a step checkpoint through Checkpoint() with no arguments."""

import torch
import pytest

from conftest import TEST_FLOWS

pytestmark = pytest.mark.flow

FLOW = TEST_FLOWS / "worker_saves_flow.py"

RESULT = """
import json
import torch
from metaflow import Checkpoint, Flow, namespace
namespace(None)
task = Flow("WorkerSavesFlow")[%r]["train"].task
cp = Checkpoint()
out = {"seen_by_step": task.data.seen_by_step}
for rank in (0, 1):
    arts = cp.list(task=task, name="worker%%d" %% rank)
    newest = cp.load(arts[-1])
    out["worker%%d" %% rank] = {
        "epochs": [a.metadata["epoch"] for a in arts],
        "attempts": [a.attempt for a in arts],
        "weights": newest["weights"].tolist(),
    }
print(json.dumps(out))
"""


def expected_weights(rank, epochs=4):
    weights = torch.full((1000,), float(rank))
    for epoch in range(epochs):
        generator = torch.Generator().manual_seed(100 * rank + epoch)
        weights = weights * 0.5 + torch.randn(1000, generator=generator)
    return weights


def test_workers_save_list_and_resume_their_own_checkpoints(world):
    proc = world.run_flow(FLOW, "--crash-after", "2")
    assert "the step dies after epoch 2" in proc.stdout
    result = world.python(RESULT % world.latest_run_id("WorkerSavesFlow"))
    # The step sees its workers' checkpoints as its own task's.
    assert result["seen_by_step"] == ["worker0", "worker1"]
    for rank in (0, 1):
        worker = result["worker%d" % rank]
        # Epochs 1-2 by attempt 0's workers; the retry's workers went on from there.
        assert worker["epochs"] == [1, 2, 3, 4]
        assert worker["attempts"] == [0, 0, 1, 1]
        assert torch.equal(torch.tensor(worker["weights"]), expected_weights(rank))
