"""The Hugging Face Trainer, killed right after a save, resumes from the restored folder
and ends bit-identical to an uninterrupted run."""

import json

import pytest

from conftest import TEST_FLOWS

pytestmark = pytest.mark.flow

pytest.importorskip("transformers")

FLOW = TEST_FLOWS / "hf_trainer_flow.py"

NOTEBOOK = """
import json
from metaflow import Checkpoint, Flow, namespace
namespace(None)
run = Flow("HFTrainerFlow").latest_run
cp = Checkpoint()
out = {}
for task in run["train"]:
    saves = []
    for art in cp.list(task=task, name="checkpoint"):
        files = cp.inspect(art)["files"]
        step = art.metadata["global_step"]
        newest = sum(i["size"] for rel, i in files.items() if rel.startswith("checkpoint-%d/" % step))
        saves.append([step, art.metadata, art.attempt, art.implicit_manifest["bytes_written"], newest])
    out[task.data.mode] = {
        "saves": saves,
        "resumed_at": task.data.resumed_at,
        "restored": task.data.restored,
        "resave_written": task.data.resave_written,
    }
out["identical"] = run["join"].task.data.identical
print(json.dumps(out))
"""


def test_trainer_killed_after_a_save_resumes_bit_identical(world):
    witness = world.root / "killed_at_step_15.json"
    world.run_flow(FLOW, "--witness", str(witness), timeout=600)
    result = world.python(NOTEBOOK)
    killed, straight = result["killed"], result["straight"]

    # The retry found checkpoint-5..15 as they were on disk when attempt 0 died (bytes,
    # modes, modification times) and went on from step 15.
    assert killed["resumed_at"] == 15
    assert killed["restored"] == json.loads(witness.read_text())
    assert sorted(r.split("/")[0] for r in killed["restored"] if "/" not in r) == [
        "checkpoint-10", "checkpoint-15", "checkpoint-5",
    ]
    assert [(s[0], s[2]) for s in killed["saves"]] == [
        (5, 0), (10, 0), (15, 0), (20, 1), (25, 1), (30, 1),
    ]
    # The card's counter and the logged metrics are in every save's metadata.
    assert all({"global_step", "epoch", "loss"} <= set(s[1]) for s in straight["saves"])

    # Each save writes the Trainer's new checkpoint-N folder, not the older ones again;
    # re-saving the unchanged folder writes almost nothing. The two branches train the
    # same bytes and share the blob store, so whichever saves a checkpoint-N first
    # writes it: together they write it at least once.
    killed_written = {s[0]: s[3] for s in killed["saves"]}
    for step, _, _, written, newest in straight["saves"][1:]:
        assert written < newest * 1.1 + 65536, (step, written, newest)
        assert killed_written[step] < newest * 1.1 + 65536, (step, killed_written[step], newest)
        assert written + killed_written[step] >= newest, (step, written, killed_written[step], newest)
    assert straight["resave_written"] < 4096
    assert killed["resave_written"] < 4096

    # Bit-identical to the branch that was never killed (compared in the join step).
    assert result["identical"] and all(result["identical"].values()), result["identical"]
