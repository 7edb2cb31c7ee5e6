"""Resume fidelity in real flows: classes defined in the flow file, SIGKILL, notebooks.

The flow (tests/flows/user_classes_flow.py) is the pytorch/examples MNIST loop with a
Net, a config dataclass and a helper class in the flow file, Adadelta + StepLR, and an
EMA model updated through ``.data``.
"""

import shutil

import pytest

from conftest import TEST_FLOWS

pytestmark = pytest.mark.flow

FLOW = "user_classes_flow.py"

RUN_RESULT = """
import json
from metaflow import Flow, namespace
namespace(None)
task = Flow("UserClassesFlow")[%r]["train"].task
data = task.data
print(json.dumps({
    "digest": data.final_digest,
    "lr_history": data.lr_history,
    "linked": data.scheduler_linked,
    "kept": getattr(data, "kept_objects", None),
    "isinstance": getattr(data, "isinstance_after_load", None),
    "attempt": task.current_attempt,
}))
"""

# A notebook without the flow file: its classes come from the checkpoint's copies.
NOTEBOOK_LOAD = """
import json, sys
from metaflow import Checkpoint, Flow, namespace
assert not any("flows" in p for p in sys.path)
namespace(None)
cp = Checkpoint()
newest = cp.list(task=Flow("UserClassesFlow")[%r]["train"].task)[-1]
values = cp.load(newest)
model, optimizer, scheduler = values["model"], values["optimizer"], values["scheduler"]
params = list(model.parameters())
print(json.dumps({
    "model_type": type(model).__name__,
    "config_tag": values["config"].tag,
    "helper_mean": values["loss_mean"].mean > 0,
    "scheduler_linked": scheduler.optimizer is optimizer,
    "optimizer_on_model": all(a is b for a, b in zip(optimizer.param_groups[0]["params"], params)),
    "epoch": values["epoch"],
}))
"""

# The same state with allow_pickle=False: the notebook builds the objects (its own Net
# and Config, as users paste or import them), and nothing is unpickled.
SAFE_LOAD = """
import dataclasses, hashlib, json
import torch, torch.nn as nn, torch.nn.functional as F
from metaflow import Checkpoint, Flow, namespace
%s
namespace(None)
cp = Checkpoint()
newest = cp.list(task=Flow("UserClassesFlow")[%r]["train"].task)[-1]
class Holder: pass
holder = Holder()
holder.model = Net()
holder.ema = Net()
holder.optimizer = torch.optim.Adadelta(holder.model.parameters(), lr=1.0)
holder.scheduler = torch.optim.lr_scheduler.StepLR(holder.optimizer, step_size=1, gamma=0.7)
cp.load(newest, fields=["model", "ema", "optimizer", "scheduler", "config", "epoch", "lr_history"],
        flow=holder, allow_pickle=False)
try:
    cp.load(newest, fields=["loss_mean"], allow_pickle=False)
    refused = None
except Exception as ex:
    refused = str(ex)
print(json.dumps({
    "digest": digest_of(holder.model, holder.optimizer, holder.ema),
    "config": [type(holder.config).__name__, holder.config.tag],
    "lr": holder.optimizer.param_groups[0]["lr"],
    "last_epoch": holder.scheduler.last_epoch,
    "refused": refused,
}))
"""


def _flow_source(name):
    return (TEST_FLOWS / name).read_text()


def _definitions():
    """Net, Config and digest_of as a notebook user would paste them."""
    source = _flow_source(FLOW)
    start = source.index("class Net(nn.Module)")
    end = source.index("class UserClassesFlow")
    helpers = source[start:end]
    return helpers


def test_flow_file_classes_resume_bit_identical_after_sigkill(world, tmp_path):
    flow = tmp_path / "flows" / FLOW
    flow.parent.mkdir()
    shutil.copy(TEST_FLOWS / FLOW, flow)
    crashed = world.run_flow(flow, "--crash-at", "2")
    assert "Task is starting (retry)" in crashed.stdout
    crashed_run = world.latest_run_id("UserClassesFlow")
    world.run_flow(flow)
    clean_run = world.latest_run_id("UserClassesFlow")

    resumed = world.python(RUN_RESULT % crashed_run)
    clean = world.python(RUN_RESULT % clean_run)
    assert resumed["attempt"] == 1 and clean["attempt"] == 0
    # The objects the retry built were restored in place, as the flow file's classes.
    assert resumed["kept"] is True
    assert resumed["isinstance"] == [True, True, True, "lr=1"]
    assert resumed["linked"] is True
    # Adadelta + StepLR + EMA through .data: the resumed run is the uninterrupted one.
    assert resumed["lr_history"] == clean["lr_history"]
    assert [round(lr, 12) for lr in clean["lr_history"]] == [round(0.7**k, 12) for k in range(1, 5)]
    assert resumed["digest"] == clean["digest"]

    notebook = world.python(NOTEBOOK_LOAD % crashed_run)
    assert notebook == {
        "model_type": "Net",
        "config_tag": "lr=1",
        "helper_mean": True,
        "scheduler_linked": True,
        "optimizer_on_model": True,
        "epoch": 4,
    }

    safe = world.python(SAFE_LOAD % (_definitions(), crashed_run))
    assert safe["digest"] == clean["digest"]
    assert safe["config"] == ["Config", "lr=1"]
    assert safe["last_epoch"] == 4 and abs(safe["lr"] - 0.7**4) < 1e-12
    assert "self.loss_mean" in safe["refused"] and "allow_pickle=False" in safe["refused"]
