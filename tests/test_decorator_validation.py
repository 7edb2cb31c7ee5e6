"""Bad @checkpoint arguments fail in step_init, before any task runs."""

import re

import pytest

FLOW = """
from metaflow import FlowSpec, checkpoint, step

class BadArgsFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @checkpoint({args})
    @step
    def train(self):
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == "__main__":
    BadArgsFlow()
"""


@pytest.mark.flow
@pytest.mark.parametrize(
    "args, expected",
    [
        ('include=["a"], exclude=["b"]', ["mutually exclusive", "include", "exclude"]),
        ('load_policy="lazy"', ["load_policy", "'lazy'", "'fresh', 'eager', 'none'"]),
        ("keep_last=-1", ["keep_last", "-1", "positive"]),
        ("keep_best=-2", ["keep_best", "positive"]),
        ("keep_best=2", ["keep_best", "best_metric"]),
        ('best_mode="lowest"', ["best_mode", "'lowest'", "'min'"]),
        ('include="*", rng="maybe"', ["rng", "'maybe'"]),
        ("include=[3]", ["include", "list of attribute names"]),
        ('include=["my-model"]', ["include", "'my-model'", "not a valid attribute name"]),
        ('exclude=["_cache", "opt.state"]', ["exclude", "'opt.state'", "not a valid attribute name"]),
        ('include=["_private"]', ["'_private'", "private attributes (a leading _) are never captured"]),
    ],
)
def test_bad_arguments_fail_before_any_task(world, write_flow, args, expected):
    proc = world.run_flow(write_flow(FLOW.format(args=args)), check=False)
    assert proc.returncode != 0
    assert "Task is starting" not in proc.stdout
    # Metaflow prints *name* in bold, i.e. without the asterisks.
    assert re.search(r"step \*?train\*?", proc.stdout), proc.stdout
    for text in expected:
        assert text in proc.stdout, proc.stdout


@pytest.mark.flow
def test_good_arguments_run(world, write_flow):
    args = 'exclude=["tmp_*"], load_policy="none", keep_last=2, keep_best=1, best_metric="loss", best_mode="max", rng=False, card=False'
    world.run_flow(write_flow(FLOW.format(args=args)))


def test_eager_and_retention_need_a_datastore_that_lists_by_age():
    """Azure / GCS datastores: checked in step_init (a real decorator, a datastore of
    that type), so the run fails before any task."""
    from types import SimpleNamespace

    from metaflow_extensions.implicit_checkpoint.engine.errors import CheckpointConfigError
    from metaflow_extensions.implicit_checkpoint.plugins.checkpoint_decorator import (
        CheckpointDecorator,
    )

    azure = SimpleNamespace(TYPE="azure")
    for attributes in ({"load_policy": "eager"}, {"keep_last": 2}):
        deco = CheckpointDecorator(attributes=dict(attributes, card=False))
        with pytest.raises(CheckpointConfigError, match="'azure' datastore"):
            deco.step_init(None, None, "train", [], None, azure, None)
    CheckpointDecorator(attributes={"card": False}).step_init(None, None, "train", [], None, azure, None)
