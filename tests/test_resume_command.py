"""Metaflow's `resume`: a step that failed on every attempt continues from the origin run."""

import pytest

from conftest import TEST_FLOWS

pytestmark = pytest.mark.flow

RESULTS = """
import json, sys
sys.path.insert(0, %r)
from resume_command_flow import EPOCHS, digest_of, new_training, train_one_epoch
from metaflow import Checkpoint, Flow, namespace
namespace(None)

# The reference: the same training, never failing, never resuming, outside Metaflow.
data, target, model, optimizer = new_training()
for _ in range(EPOCHS):
    train_one_epoch(data, target, model, optimizer)
out = {"reference": digest_of(model)}
for flow_name, run_id in %r:
    task = Flow(flow_name)[run_id]["train"].task
    newest = Checkpoint().list(task=task)[-1]
    out[flow_name] = {
        "digest": task.data.digest,
        "started_at": task.data.started_at,
        "resumed_from": getattr(task.data, "resumed_from", None),
        "parent": Checkpoint().inspect(newest)["parent"],
    }
print(json.dumps(out))
"""


def _variant(write_flow, flow_name, decorator):
    source = (TEST_FLOWS / "resume_command_flow.py").read_text()
    source = source.replace("ResumeCommandFlow", flow_name).replace("@checkpoint\n", decorator + "\n")
    return write_flow(source, "%s.py" % flow_name.lower())


def test_resume_continues_a_step_that_failed_on_every_attempt(world, write_flow):
    # The default policy and eager (a flow of its own, so eager sees only its own runs).
    # On local disk only: the origin run's task is found through the per-run notes that
    # test_engine.py's eager test lists on S3 too.
    policies = [("FreshResumeFlow", "@checkpoint"), ("EagerResumeFlow", '@checkpoint(load_policy="eager")')]
    runs = []
    for flow_name, decorator in policies:
        flow = _variant(write_flow, flow_name, decorator)
        clean_env, world.env = world.env, dict(world.env, FAIL_AT_EPOCH="3")
        failed = world.run_flow(flow, check=False)
        world.env = clean_env
        assert failed.returncode != 0 and "a bug at epoch 3" in failed.stdout
        origin = world.latest_run_id(flow_name)

        world.command(flow, "resume")  # the bug is fixed: FAIL_AT_EPOCH is gone
        resumed = world.latest_run_id(flow_name)
        assert resumed != origin
        runs.append((flow_name, origin, resumed))

    results = world.python(RESULTS % (str(TEST_FLOWS), [(name, resumed) for name, _, resumed in runs]))
    for flow_name, origin, _ in runs:
        after_resume = results[flow_name]
        # The re-executed step went on from epoch 3 of the origin run's task...
        assert after_resume["started_at"] == 3, flow_name
        assert after_resume["resumed_from"].startswith("%s/%s/train/" % (flow_name, origin))
        assert after_resume["resumed_from"].endswith("/checkpoint/3")
        # ...the lineage records the cross-run parent...
        assert after_resume["parent"] == after_resume["resumed_from"]
        # ...and it ended where a run that never failed ends.
        assert after_resume["digest"] == results["reference"], flow_name
