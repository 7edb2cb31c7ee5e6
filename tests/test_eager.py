"""load_policy="eager": a new run resumes from the newest checkpoint of an earlier run."""

import pytest

pytestmark = pytest.mark.flow


FLOW = '''
import os
from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step


class EagerFlow(FlowSpec):
    crash_after = Parameter("crash-after", default=0, type=int)

    @retry(times=1)
    @checkpoint(load_policy="{policy}")
    @step
    def start(self):
        self.count = 0
        self.runs = []
        self.resumed_from = None
        if current.checkpoint.is_loaded:
            self.resumed_from = current.checkpoint.load().key
        while self.count < 5:
            self.count += 1
            self.runs.append(current.run_id)
            current.checkpoint.save(metadata={{"count": self.count}})
            if self.crash_after and self.count >= self.crash_after:
                os._exit(1)  # every attempt of this run dies
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    EagerFlow()
'''

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


def test_eager_resumes_from_earlier_run_and_fresh_starts_clean(world, write_flow):
    eager_then_fresh(world, write_flow)


def eager_then_fresh(world, write_flow):
    eager = write_flow(FLOW.format(policy="eager"), "eager_flow.py")
    fresh = write_flow(FLOW.format(policy="fresh"), "fresh_flow.py")

    # Run 1: killed after 3 saves; its retry resumes (count 3), saves once more, dies again.
    failed = world.run_flow(eager, "--crash-after", "3", check=False)
    assert failed.returncode != 0
    run1 = world.latest_run_id("EagerFlow")
    run1_newest = newest_key(world, run1)
    assert run1_newest.endswith("/start/1/1/checkpoint/4")

    # A newer run of another user is not in this user's namespace: eager must ignore it.
    other = dict(world.env, USERNAME="someone_else")
    world.env, saved_env = other, world.env
    world.run_flow(fresh, "--crash-after", "5", check=False)
    world.env = saved_env

    # Run 2, eager: no checkpoint of its own, so it resumes from run 1's newest.
    world.run_flow(eager)
    run2 = world.latest_run_id("EagerFlow")
    result = world.python(RESULT % run2)
    assert result["resumed_from"] == run1_newest
    assert result["count"] == 5
    assert result["runs"] == [run1] * 4 + [run2]
    # The lineage records the cross-run edge.
    assert result["parents"] == [run1_newest]

    # Run 3, fresh: starts clean even though earlier runs have checkpoints.
    world.run_flow(fresh)
    run3 = world.latest_run_id("EagerFlow")
    result = world.python(RESULT % run3)
    assert result["resumed_from"] is None
    assert result["runs"] == [run3] * 5
    assert result["parents"] == [None] * 5
