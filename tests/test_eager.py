"""load_policy="eager": a new run resumes from the newest checkpoint of an earlier run."""

import pytest
from conftest import TEST_FLOWS

pytestmark = pytest.mark.flow

FLOW = TEST_FLOWS / "eager_flow.py"

RESULT = """
import json
from metaflow import Checkpoint, Flow, namespace
namespace(None)
run = Flow("EagerFlow")[%r]
task = run["start"].task
arts = Checkpoint().list(task=task)
print(json.dumps({"resumed_from": task.data.resumed_from, "runs": task.data.runs,
                  "count": task.data.count, "parents": [a.implicit_manifest["parent"] for a in arts]}))
"""


def newest_key(world, run_id):
    return world.python(
        """
        import json
        from metaflow import Checkpoint, namespace
        namespace(None)
        print(json.dumps(Checkpoint().list(task="EagerFlow/%s/start/1")[-1].key))
        """
        % run_id
    )


def with_policy(env: dict, policy: str) -> dict:
    """``env`` with the flow's load_policy set to ``policy``."""
    return dict(env, EAGER_FLOW_LOAD_POLICY=policy)


def test_eager_resumes_from_earlier_run_and_fresh_starts_clean(world):
    eager_then_fresh(world)


def eager_then_fresh(world):
    # Run 1: killed after 3 saves; its retry resumes (count 3), saves once more, dies again.
    world.env = with_policy(world.env, "eager")
    failed = world.run_flow(FLOW, "--crash-after", "3", check=False)
    assert failed.returncode != 0
    run1 = world.latest_run_id("EagerFlow")
    run1_newest = newest_key(world, run1)
    assert run1_newest.endswith("/start/1/1/checkpoint/4")

    # A newer run of another user is not in this user's namespace: eager must ignore it.
    other = with_policy(dict(world.env, USERNAME="someone_else"), "fresh")
    world.env, saved_env = other, world.env
    world.run_flow(FLOW, "--crash-after", "5", check=False)
    world.env = saved_env

    # Run 2, eager: no checkpoint of its own, so it resumes from run 1's newest.
    world.run_flow(FLOW)
    run2 = world.latest_run_id("EagerFlow")
    result = world.python(RESULT % run2)
    assert result["resumed_from"] == run1_newest
    assert result["count"] == 5
    assert result["runs"] == [run1] * 4 + [run2]
    # The lineage records the cross-run edge.
    assert result["parents"] == [run1_newest]

    # Run 3, fresh: starts clean even though earlier runs have checkpoints.
    world.env = with_policy(world.env, "fresh")
    world.run_flow(FLOW)
    run3 = world.latest_run_id("EagerFlow")
    result = world.python(RESULT % run3)
    assert result["resumed_from"] is None
    assert result["runs"] == [run3] * 5
    assert result["parents"] == [None] * 5
