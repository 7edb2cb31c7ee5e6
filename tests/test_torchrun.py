"""torch's own launcher inside a @checkpoint step: its workers checkpoint through
Checkpoint() (the task is handed down through the environment), rank 0 saves a DDP model
and its optimizer, and after a crash every rank resumes from it, bit-identical. Also under
metaflow-torchrun's @torchrun: a 2-node gang running torchrun on each node."""

import os
import socket
import sys

import pytest

from conftest import TEST_FLOWS
from s3_server import s3_server, s3_world  # noqa: F401  (fixtures)

pytestmark = pytest.mark.flow

FLOW = TEST_FLOWS / "torchrun_flow.py"

COMPARE = """
import json, torch
from metaflow import Flow, namespace
namespace(None)
runs = {r.id: r for r in Flow("TorchrunFlow")}
crashed, clean = runs[%r]["train"].task.data, runs[%r]["train"].task.data

def same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b

print(json.dumps({
    "model": same(crashed.final["model"], clean.final["model"]),
    "optimizer": same(crashed.final["optimizer"], clean.final["optimizer"]),
    "saved": crashed.saved,
}))
"""


def test_torchrun_workers_resume_after_a_crash_bit_identical(world):
    # On S3: the @torchrun test below, whose ranks do the same through a gang.
    world.run_flow(FLOW)
    clean = world.latest_run_id("TorchrunFlow")
    proc = world.run_flow(FLOW, "--crash-after", "2")
    assert "rank 1 dies after epoch 2" in proc.stdout
    assert "rank 0 resumed after epoch 2" in proc.stdout
    assert "rank 1 resumed after epoch 2" in proc.stdout
    crashed = world.latest_run_id("TorchrunFlow")
    result = world.python(COMPARE % (crashed, clean))
    assert result["model"] and result["optimizer"]
    assert result["saved"] == [[1, 0], [2, 0], [3, 1], [4, 1]]


DECORATOR_FLOW = TEST_FLOWS / "torchrun_decorator_flow.py"

DECORATOR_RESULT = """
import json, torch
from metaflow import Flow, namespace
namespace(None)
join = Flow("TorchrunDecoratorFlow")[%r]["join"].task.data
print(json.dumps({"saved": join.saved, "final_keys": sorted(join.final["model"])}))
"""


@pytest.mark.s3
def test_metaflow_torchrun_gang_ranks_resume_from_rank_0s_checkpoint(s3_world):
    """metaflow-torchrun 0.2.2 runs locally only with one patch and on S3 (see the flow's
    docstring); where it runs, its ranks checkpoint like any worker of a step."""
    world = s3_world
    world.env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + world.env.get("PATH", "")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        world.env["TORCHRUN_TEST_PORT"] = str(probe.getsockname()[1])
    proc = world.run_flow(DECORATOR_FLOW, "--crash-after", "2")
    assert "rank 1 dies after epoch 2" in proc.stdout
    assert "rank 0 resumed after epoch 2" in proc.stdout and "rank 1 resumed after epoch 2" in proc.stdout
    result = world.python(DECORATOR_RESULT % world.latest_run_id("TorchrunDecoratorFlow"))
    # Both nodes see rank 0's checkpoints: two by attempt 0, two by the retry.
    assert result["saved"] == {"0": [[1, 0], [2, 0], [3, 1], [4, 1]], "1": [[1, 0], [2, 0], [3, 1], [4, 1]]}
    assert result["final_keys"] == ["layers.0.bias", "layers.0.weight", "layers.2.bias", "layers.2.weight"]
