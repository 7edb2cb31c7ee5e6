"""Lightning with LightningModelCheckpoint, killed right after a save, resumes with
fit(ckpt_path="last") from the restored folder, bit-identical to an uninterrupted run
(Lightning's own files alone are not: they hold no random generator state)."""

import json

import pytest

from conftest import TEST_FLOWS

pytestmark = pytest.mark.flow

pytest.importorskip("lightning")

FLOW = TEST_FLOWS / "lightning_flow.py"

NOTEBOOK = """
import json
from metaflow import Checkpoint, Flow, namespace
namespace(None)
run = Flow("LightningFlow").latest_run
cp = Checkpoint()
out = {"identical": run["join"].task.data.identical}
for task in run["train"]:
    out[task.data.mode] = {
        "saves": [
            [a.metadata, a.attempt, sorted(cp.inspect(a)["files"])]
            for a in cp.list(task=task, name="checkpoint")
        ],
        "resumed_at": task.data.resumed_at,
        "restored": task.data.restored,
        "resave_written": task.data.resave_written,
    }
print(json.dumps(out))
"""


def test_lightning_killed_after_a_save_resumes_bit_identical(world):
    witness = world.root / "killed_at_step_15"
    world.run_flow(FLOW, "--witness", str(witness), timeout=600)
    result = world.python(NOTEBOOK)
    killed, straight = result["killed"], result["straight"]

    assert killed["resumed_at"] == 15
    assert killed["restored"] == json.loads((world.root / "killed_at_step_15.killed.json").read_text())
    # Saved after ModelCheckpoint's own work: the new file, last.ckpt, the old one removed.
    assert [(s[0]["global_step"], s[1], s[2]) for s in killed["saves"]] == [
        (step, 0 if step <= 15 else 1, ["epoch=%d-step=%d.ckpt" % ((step - 1) // 5, step), "last.ckpt"])
        for step in (5, 10, 15, 20, 25, 30)
    ]
    assert all("train_loss" in s[0] and "epoch" in s[0] for s in straight["saves"])
    assert straight["resave_written"] < 4096

    # With the random generators @checkpoint restored the resumed run is the run that
    # never crashed; from Lightning's files alone (generators reseeded) it is not.
    assert result["identical"] == {"killed": True, "files_only": False}
