"""Bad @checkpoint arguments fail in step_init, before any task runs."""

import json
import re

import pytest
from conftest import TEST_FLOWS

FLOW = TEST_FLOWS / "bad_args_flow.py"


def run_with(world, checkpoint_args: dict, check: bool):
    """BadArgsFlow, its train step decorated with ``@checkpoint(**checkpoint_args)``."""
    world.env["CHECKPOINT_ARGS"] = json.dumps(checkpoint_args)
    return world.run_flow(FLOW, check=check)


def as_arguments(checkpoint_args: dict) -> str:
    """The arguments as written in the decorator: include=["a"], exclude=["b"]."""
    return ", ".join("%s=%s" % (name, json.dumps(value)) for name, value in checkpoint_args.items())


@pytest.mark.flow
@pytest.mark.parametrize(
    "args, expected",
    [
        ({"include": ["a"], "exclude": ["b"]}, ["mutually exclusive", "include", "exclude"]),
        ({"load_policy": "lazy"}, ["load_policy", "'lazy'", "'fresh', 'eager', 'none'"]),
        ({"keep_last": -1}, ["keep_last", "-1", "positive"]),
        ({"keep_best": -2}, ["keep_best", "positive"]),
        ({"keep_best": 2}, ["keep_best", "best_metric"]),
        ({"best_mode": "lowest"}, ["best_mode", "'lowest'", "'min'"]),
        ({"include": "*", "rng": "maybe"}, ["rng", "'maybe'"]),
        ({"include": [3]}, ["include", "list of attribute names"]),
        ({"include": ["my-model"]}, ["include", "'my-model'", "not a valid attribute name"]),
        ({"exclude": ["_cache", "opt.state"]}, ["exclude", "'opt.state'", "not a valid attribute name"]),
        ({"include": ["_private"]}, ["'_private'", "private attributes (a leading _) are never captured"]),
    ],
    ids=lambda value: as_arguments(value) if isinstance(value, dict) else None,
)
def test_bad_arguments_fail_before_any_task(world, args, expected):
    proc = run_with(world, args, check=False)
    assert proc.returncode != 0
    assert "Task is starting" not in proc.stdout
    # Metaflow prints *name* in bold, i.e. without the asterisks.
    assert re.search(r"step \*?train\*?", proc.stdout), proc.stdout
    for text in expected:
        assert text in proc.stdout, proc.stdout


@pytest.mark.flow
def test_good_arguments_run(world):
    args = {"exclude": ["tmp_*"], "load_policy": "none", "keep_last": 2, "keep_best": 1,
            "best_metric": "loss", "best_mode": "max", "rng": False, "card": False}
    run_with(world, args, check=True)


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
