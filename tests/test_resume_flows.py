"""Real flows that crash mid-step and resume on the retry (exception, os._exit, SIGKILL)."""

import pytest

from conftest import RESUMED_RUN_ARGS, TEST_FLOWS
from resume_flow_helpers import task_state

pytestmark = pytest.mark.flow

FLOW = TEST_FLOWS / "resume_flow.py"


@pytest.mark.parametrize("crash", ["exception", "exit", "kill"])
def test_crash_then_resume(request, crash):
    args = ("--crash", crash, "--crash-after", "3", "--saves", "5")
    if args == RESUMED_RUN_ARGS:  # the SIGKILL: the session's shared run
        shared = request.getfixturevalue("resumed_run")
        world, output, run_id = shared.world, shared.output, shared.run_id
    else:
        world = request.getfixturevalue("world")
        output = world.run_flow(FLOW, *args).stdout
        run_id = world.latest_run_id("ResumeFlow")
    assert "Task is starting (retry)" in output
    state = task_state(world, run_id)

    # The retry went on from the 3rd save: saves 4 and 5 were made by attempt 1.
    assert state["count"] == 5
    assert state["attempts_seen"] == [0, 0, 0, 1, 1]
    assert state["weights_sum"] == 5000
    assert state["resumed_from"].endswith("/train/2/0/odd/3")
    # The load is noted in the attempt's Metaflow metadata (the card reads it).
    assert state["loaded_metadata"] == [None, state["resumed_from"]]

    # list(): across attempts, oldest first; per attempt; per name.
    assert [row[:3] for row in state["all"]] == [
        [1, 0, "odd"], [2, 0, "even"], [3, 0, "odd"], [4, 1, "even"], [5, 1, "odd"],
    ]
    assert [row[0] for row in state["attempt0"]] == [1, 2, 3]
    assert [row[0] for row in state["attempt1"]] == [4, 5]
    assert [row[0] for row in state["even"]] == [2, 4]
    assert state["all"][3][3] == {"count": 4, "attempt": 1}
    assert state["newest_values"] == {"count": 5, "attempts_seen": [0, 0, 0, 1, 1]}


def test_no_crash_means_no_resume(world):
    world.run_flow(FLOW, "--crash", "none", "--saves", "2")
    state = task_state(world, world.latest_run_id("ResumeFlow"))
    assert state["resumed_from"] is None
    assert state["attempts_seen"] == [0, 0]
    assert state["attempt1"] == []


def test_load_policy_none_does_not_resume(world, write_flow):
    source = (TEST_FLOWS / "resume_flow.py").read_text().replace(
        "@checkpoint\n", "@checkpoint(load_policy=\"none\")\n"
    )
    flow = write_flow(source)
    world.run_flow(flow, "--crash", "exception", "--crash-after", "2", "--saves", "3")
    state = task_state(world, world.latest_run_id("ResumeFlow"))
    # Attempt 1 started from scratch: all three saves are its own.
    assert state["resumed_from"] is None
    assert state["attempts_seen"] == [1, 1, 1]
    assert [row[:2] for row in state["all"]] == [[1, 0], [2, 0], [3, 1], [4, 1], [5, 1]]
