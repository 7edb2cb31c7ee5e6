"""Saving torch tensors to S3 and loading them back holds no second full copy in memory.

tracemalloc does not see torch's allocator, so this measures the process's resident set:
its peak (VmHWM, reset just before each operation) above what it held with the state
built. The S3 server (moto) runs in the test process, so the notebook process that saves
and loads holds only the client's memory."""

import pytest

from conftest import REPO
from s3_server import s3_server, s3_world  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.s3, pytest.mark.flow]

STATE_MIB = 192

MEASURE = """
import json, sys
import torch
sys.path.insert(0, %r)
from engine_helpers import State, make_session
from metaflow_extensions.implicit_checkpoint.plugins.store_binding import store_from_config


def status_bytes(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


generator = torch.Generator().manual_seed(0)
state = State()
state.model_state = {"layer%%d" %% i: torch.randn(%d * 2**20 // 4 // 4, generator=generator) for i in range(4)}
state_bytes = sum(t.numel() * t.element_size() for t in state.model_state.values())
session = make_session(store_from_config(), state)
session.save()  # warms the client up (connections, thread pools)
with torch.no_grad():
    for t in state.model_state.values():
        t.add_(1)  # every tensor changed: the next save uploads them all
held = status_bytes("VmRSS")
reset_peak()
artifact = session.save()
save_extra = status_bytes("VmHWM") - held

loaded = State()
reader = make_session(store_from_config(), loaded, attempt=1)
held = status_bytes("VmRSS")
reset_peak()
reader.load(artifact)
load_extra = status_bytes("VmHWM") - held
same = all(torch.equal(loaded.model_state[k], state.model_state[k]) for k in state.model_state)
print(json.dumps({"state": state_bytes, "save_extra": save_extra, "load_extra": load_extra,
                  "written": artifact.implicit_manifest["bytes_written"], "same": same}))
"""


def test_s3_save_and_load_of_torch_tensors_hold_no_second_full_copy(s3_world):
    result = s3_world.python(MEASURE % (str(REPO / "tests"), STATE_MIB), timeout=300)
    state = result["state"]
    assert result["same"]
    assert result["written"] >= state  # the save did upload every tensor
    # A save streams the tensors' own memory: far less than a copy of the state.
    assert result["save_extra"] < 0.25 * state, result
    # A load needs the loaded tensors themselves, and nothing close to a second copy.
    assert result["load_extra"] < 1.25 * state, result
