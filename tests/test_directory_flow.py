"""current.checkpoint.directory through a real crash (SIGKILL) and retry, and in a notebook."""

import json

import pytest

from conftest import TEST_FLOWS

pytestmark = pytest.mark.flow

FLOW = TEST_FLOWS / "folder_flow.py"

NOTEBOOK = """
import json, os, sys
sys.path.insert(0, %(flows)r)
from folder_listing import listing
from metaflow import Checkpoint, Flow, namespace
namespace(None)
task = Flow("FolderFlow").latest_run["train"].task
arts = Checkpoint().list(task=task, name="checkpoint")
cp = Checkpoint(directory=%(folder)r)
out = {"inspected": {rel: info["size"] for rel, info in cp.inspect(arts[-1])["files"].items()}}
cp.load(arts[-1])
out["newest"] = listing(cp.directory)
cp.load(arts[0])                        # an older one over it: the deleted file is back
out["oldest"] = listing(cp.directory)
cp.load(arts[-1], fields=["epoch"])     # only a field: the folder is left alone
out["after_field_load"] = listing(cp.directory)
occupied = os.path.join(%(folder)r, "..", "occupied")
os.makedirs(occupied)
open(os.path.join(occupied, "mine.txt"), "w").close()
try:
    Checkpoint(directory=occupied).load(arts[-1])
except Exception as ex:
    out["refused"] = [type(ex).__name__, str(ex), os.listdir(occupied)]
out["restored"] = task.data.restored
out["empty_at_start"] = task.data.empty_at_start
out["resumed_from"] = task.data.resumed_from
out["newest_key"] = arts[-1].key
print(json.dumps(out))
"""


def test_folder_round_trips_through_a_kill_the_retry_and_a_notebook(world):
    witness = world.root / "witness.json"
    proc = world.run_flow(FLOW, "--witness", str(witness))
    assert "Task is starting (retry)" in proc.stdout
    seen = json.loads(witness.read_text())
    result = world.python(NOTEBOOK % {"flows": str(TEST_FLOWS), "folder": str(world.root / "notebook")})

    # The retry started with an empty folder and load() put the newest save back, exactly:
    # bytes, modes, modification times (folders' too), the link, the empty folder; the
    # deleted file stayed deleted; the rewrite right after the background save is not in it.
    assert result["empty_at_start"] is True
    assert result["resumed_from"] == result["newest_key"]
    assert result["restored"] == seen["save2"]
    assert "gone.txt" not in seen["save2"] and "gone.txt" in seen["save1"]
    assert seen["save2"]["weights.bin"]["size"] == 50 * 1024 * 1024
    assert seen["save2"]["notes/deep/b.txt"]["mode"] == 0o400
    assert seen["save2"]["link"] == {"kind": "link", "target": "notes/a.txt", "mtime_ns": seen["save2"]["link"]["mtime_ns"]}
    assert seen["save2"]["empty"]["kind"] == "dir"

    # A notebook: inspect lists the files without reading them; load fills the folder.
    assert result["inspected"] == {
        rel: (entry["size"] if entry["kind"] == "file" else 0)
        for rel, entry in seen["save2"].items()
        if entry["kind"] != "dir"
    }
    assert result["newest"] == seen["save2"]
    assert result["oldest"] == seen["save1"]
    assert result["after_field_load"] == seen["save1"]
    # A folder with files the client did not put there is never replaced.
    name, message, left = result["refused"]
    assert name == "CheckpointException" and "not empty" in message and left == ["mine.txt"]

    # The terminal shows the files too.
    shown = world.command(FLOW, "checkpoint", "inspect", result["newest_key"]).stdout
    assert "Files       4 in current.checkpoint.directory, 50.0 MiB" in shown
    assert "weights.bin" in shown and "50.0 MiB" in shown and "-> notes/a.txt" in shown

    # Re-saving the unchanged folder writes (almost) nothing: the 50 MB are not written again.
    assert seen["resave"]["bytes_referenced"] > 50 * 1024 * 1024
    assert seen["resave"]["bytes_written"] < 4096, seen["resave"]
    print("unchanged re-save of the folder:", seen["resave"])
