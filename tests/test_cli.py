"""`python flow.py checkpoint list|inspect|status|gc` on real runs."""

import json
import time

from conftest import TEST_FLOWS

STATUS_FLOW = TEST_FLOWS / "status_flow.py"
RESUME_FLOW = TEST_FLOWS / "resume_flow.py"


def test_status_of_completed_failed_and_running_steps(world, tmp_path):
    run = world.start_run(STATUS_FLOW, "--signals", str(tmp_path))
    try:
        deadline = time.time() + 120
        steps = {}
        while time.time() < deadline:
            proc = world.command(STATUS_FLOW, "checkpoint", "status", "--json", check=False)
            if proc.returncode == 0:
                report = json.loads(proc.stdout[proc.stdout.index("{"):])
                steps = {s["step"]: s for s in report["steps"]}
                if steps.get("broken", {}).get("status") == "failed" and steps["busy"]["checkpoints"]:
                    break
            time.sleep(0.5)
        assert steps["done"]["status"] == "completed"
        assert steps["broken"]["status"] == "failed"
        assert steps["busy"]["status"] == "in_progress"
        for name, loss in (("done", 0.5), ("broken", 0.9), ("busy", 0.7)):
            assert steps[name]["attempts"] == 1 and steps[name]["checkpoints"] == 1
            assert steps[name]["newest"]["metadata"] == {"loss": loss}
            assert steps[name]["bytes_written"] > 0

        table = world.command(STATUS_FLOW, "checkpoint", "status").stdout
        for line_start, state in (("done", "completed"), ("broken", "failed"), ("busy", "in_progress")):
            (line,) = [ln for ln in table.splitlines() if ln.startswith(line_start + " ")]
            assert state in line
    finally:
        (tmp_path / "release").write_text("go")
        out, _ = run.communicate(timeout=120)
    assert run.returncode != 0 and "broken" in out


def test_list_inspect_and_gc_commands(world):
    world.run_flow(RESUME_FLOW, "--crash", "exception", "--crash-after", "2", "--saves", "3")
    listing = world.command(RESUME_FLOW, "checkpoint", "list", "--json").stdout
    artifacts = json.loads(listing[listing.index("["):])
    assert [a["version"] for a in artifacts] == [1, 2, 3]
    assert [a["attempt"] for a in artifacts] == [0, 0, 1]
    table = world.command(RESUME_FLOW, "checkpoint", "list").stdout
    assert all(a["key"] in table for a in artifacts)

    key = artifacts[-1]["key"]
    shown = world.command(RESUME_FLOW, "checkpoint", "inspect", key).stdout
    assert key in shown and "weights" in shown and "float64 [1000]" in shown
    assert "from %s" % artifacts[1]["key"] in shown
    as_json = world.command(RESUME_FLOW, "checkpoint", "inspect", key, "--json").stdout
    assert json.loads(as_json[as_json.index("{"):])["fields"]["count"]["value"] == 3

    missing = world.command(RESUME_FLOW, "checkpoint", "inspect", key[:-1] + "9", check=False)
    assert missing.returncode != 0 and "No committed checkpoint" in missing.stdout
    malformed = world.command(RESUME_FLOW, "checkpoint", "inspect", "nonsense", check=False)
    assert malformed.returncode != 0 and "not a checkpoint key" in malformed.stdout

    dry = world.command(RESUME_FLOW, "checkpoint", "gc", "--dry-run").stdout
    assert "Would delete 0 unreferenced blob(s)" in dry
    negative = world.command(RESUME_FLOW, "checkpoint", "gc", "--grace-seconds", "-5", check=False)
    assert negative.returncode != 0 and "0 seconds or more" in negative.stdout

    unknown_run = world.command(RESUME_FLOW, "checkpoint", "list", "--run-id", "424242", check=False)
    assert unknown_run.returncode != 0 and "does not exist" in unknown_run.stdout
