"""A flow whose newest checkpoint lost its data resumes from the one before; `checkpoint
verify` reports damage by field and blob; --repair and a new save of the same content
make the checkpoint loadable again."""

import os

import pytest

from conftest import TEST_FLOWS

pytestmark = pytest.mark.flow

FLOW = TEST_FLOWS / "damaged_blob_flow.py"

NOTEBOOK = """
import json, sys
import numpy as np
sys.path.insert(0, %r)
from damaged_blob_flow import weights_for
from metaflow import Checkpoint, namespace
namespace(None)
cp = Checkpoint()
arts = cp.list(run="DamagedBlobFlow/%s")
out = []
for a in arts:
    row = {"key": a.key, "intact": a.intact, "damage": a.damage}
    if a.intact:
        row["exact"] = bool(np.array_equal(cp.load(a)["weights"], weights_for(a.metadata["count"])))
    out.append(row)
print(json.dumps(out))
"""


def checkpoints(world, run_id):
    return world.python(NOTEBOOK % (str(TEST_FLOWS), run_id))


def test_damaged_newest_checkpoint_resume_verify_and_repair(world):
    proc = world.run_flow(FLOW, "--damage", "True")
    run_id = world.latest_run_id("DamagedBlobFlow")
    # The retry passed over the damaged checkpoint, naming it, and resumed from the one before.
    assert "Not resuming from it" in proc.stdout and "'weights'" in proc.stdout
    resumed = world.python(
        """
        import json
        from metaflow import Task, namespace
        namespace(None)
        print(json.dumps(Task("DamagedBlobFlow/%s/start/1").data.resumed_from))
        """
        % run_id
    )
    assert resumed.endswith("/start/1/0/checkpoint/2")
    # The retry saved the same weights again: the emptied blob was rewritten, not trusted.
    rows = checkpoints(world, run_id)
    assert len(rows) == 4 and all(r["intact"] and r["exact"] for r in rows)
    ok = world.command(FLOW, "checkpoint", "verify", "--run-id", run_id).stdout
    assert "4 checkpoint(s)" in ok and "DAMAGED" not in ok

    # Alter the bytes (same size) of the newest weights: only verify, which reads, sees it.
    newest = rows[-1]["key"]
    digest = world.python(
        """
        import json
        from metaflow_extensions.implicit_checkpoint.engine.integrity import fields_by_blob
        from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
        from metaflow_extensions.implicit_checkpoint.plugins.store_binding import store_from_config
        manifest = store_from_config().read_manifest(CheckpointKey.parse(%r))
        print(json.dumps([d for d, f in fields_by_blob(manifest).items() if f == ["weights"]][0]))
        """
        % newest
    )
    blob = world.datastore_root / "DamagedBlobFlow" / "_implicit_checkpoints" / "blobs" / digest[:2] / digest
    with open(blob, "r+b") as f:
        f.seek(4096)
        f.write(b"\x01" * 64)
    bad = world.command(FLOW, "checkpoint", "verify", "--run-id", run_id, check=False)
    assert bad.returncode != 0
    assert "DAMAGED" in bad.stdout and digest in bad.stdout and "weights" in bad.stdout
    assert os.path.exists(blob)  # verify alone deletes nothing
    from_notebook = world.python(
        """
        import json
        from metaflow import Checkpoint, namespace
        namespace(None)
        print(json.dumps(Checkpoint().verify(run="DamagedBlobFlow/%s")))
        """
        % run_id
    )
    # Both checkpoints of count 3 (the damaged attempt's and the retry's) share that blob.
    assert from_notebook["intact"] == 2 and from_notebook["damaged"] == 2
    damaged = [c for c in from_notebook["checkpoints"] if not c["intact"]]
    assert [c["key"] for c in damaged] == [rows[2]["key"], newest]
    assert all(
        c["damages"] == [{"blob": digest, "problem": "content does not match its hash (altered)",
                          "fields": ["weights"]}]
        for c in damaged
    )

    repaired = world.command(FLOW, "checkpoint", "verify", "--run-id", run_id, "--repair", check=False)
    assert "Deleted 1 damaged blob(s)" in repaired.stdout and not os.path.exists(blob)
    listed = world.command(FLOW, "checkpoint", "list", "--run-id", run_id).stdout
    assert "DAMAGED" in listed  # the blob is missing now, and list says so
    status = world.command(FLOW, "checkpoint", "status", "--run-id", run_id).stdout
    assert "%s (DAMAGED)" % newest in status

    # A new run saves the same content: the blob is written again, the old checkpoint loads.
    world.run_flow(FLOW)
    assert all(r["intact"] and r["exact"] for r in checkpoints(world, run_id))
    assert "DAMAGED" not in world.command(FLOW, "checkpoint", "verify", "--run-id", run_id).stdout
