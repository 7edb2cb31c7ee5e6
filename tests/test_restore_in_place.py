"""A retry that rebuilds its model, optimizer, LR scheduler and GradScaler, then calls
load(): every one of them is restored in place. The objects built before load() are the
ones the step holds after it, their state is the state saved, and the scheduler still
drives the live optimizer. Checked from a separate process, through the public API."""

import pytest
from conftest import TEST_FLOWS

pytestmark = pytest.mark.flow

FLOW = TEST_FLOWS / "in_place_flow.py"

RESULT = """
import json
from metaflow import Flow, namespace
namespace(None)
task = Flow("InPlaceFlow").latest_run["start"].task
names = ("same_objects", "scheduler_state_matches", "scaler_state_matches", "scale", "lr",
         "saved_lr", "weight_matches", "momentum_matches", "scheduler_drives_live_optimizer")
result = {name: getattr(task.data, name) for name in names}
result["saved_scale"] = task.data.saved_scaler["scale"]
result["attempt"] = task.current_attempt
print(json.dumps(result))
"""


def test_scheduler_and_grad_scaler_are_restored_in_place(world):
    world.run_flow(FLOW)
    result = world.python(RESULT)
    assert result["attempt"] == 1
    assert result["same_objects"] == {"model": True, "optimizer": True, "scheduler": True, "scaler": True}
    assert result["scheduler_state_matches"] and result["scaler_state_matches"]
    assert result["scale"] == result["saved_scale"] != 2.0 ** 10  # the scaler grew while training
    assert result["lr"] == result["saved_lr"] == 0.1 * 0.5 ** 2
    assert result["weight_matches"] and result["momentum_matches"]
    assert result["scheduler_drives_live_optimizer"]
