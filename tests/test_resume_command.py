"""Metaflow's `resume`: a step that failed on every attempt continues from the origin run."""

import pytest

from conftest import TEST_FLOWS

RESULT = """
import json
from metaflow import Checkpoint, Flow, namespace
namespace(None)
run = Flow("ResumeCommandFlow")[%r]
task = run["train"].task
newest = Checkpoint().list(task=task)[-1]
print(json.dumps({
    "digest": task.data.digest,
    "started_at": task.data.started_at,
    "resumed_from": getattr(task.data, "resumed_from", None),
    "parent": Checkpoint().inspect(newest)["parent"],
}))
"""


@pytest.mark.parametrize("policy", ["fresh", "eager"])
def test_resume_continues_a_step_that_failed_on_every_attempt(world, write_flow, policy):
    source = (TEST_FLOWS / "resume_command_flow.py").read_text()
    flow = write_flow(source.replace("@checkpoint\n", "@checkpoint(load_policy=%r)\n" % policy))
    failing = dict(world.env, FAIL_AT_EPOCH="3")
    world.env, clean_env = failing, world.env
    failed = world.run_flow(flow, check=False)
    world.env = clean_env
    assert failed.returncode != 0 and "a bug at epoch 3" in failed.stdout
    origin = world.latest_run_id("ResumeCommandFlow")

    world.command(flow, "resume")
    resumed = world.latest_run_id("ResumeCommandFlow")
    assert resumed != origin
    world.run_flow(flow)
    clean = world.latest_run_id("ResumeCommandFlow")

    after_resume = world.python(RESULT % resumed)
    uninterrupted = world.python(RESULT % clean)
    # The re-executed step went on from epoch 3 of the origin run's task...
    assert after_resume["started_at"] == 3
    assert after_resume["resumed_from"].startswith("ResumeCommandFlow/%s/train/" % origin)
    assert after_resume["resumed_from"].endswith("/checkpoint/3")
    # ...the lineage records the cross-run parent...
    assert after_resume["parent"] == after_resume["resumed_from"]
    # ...and ended where a run that never failed ends.
    assert uninterrupted["started_at"] == 0
    assert after_resume["digest"] == uninterrupted["digest"]
