"""The live checkpoint card while a step saves: Metaflow's runtime card processes start at
most once per refresh interval (5 s), however often the step saves, and save() never waits
for one of them, even one that hangs.

The flow file (tests/flows/live_refresh_flow.py) watches its own card processes: Metaflow starts them as
``python flow.py ... card create ... --mode MODE``, so the code at the top of the file runs
in each of them first. There it logs the mode, and for the live card's modes either exits
at once (CARD_EXIT) or waits for a release file (CARD_RELEASE) the step writes only after
its last save.
"""

from pathlib import Path

import pytest
from conftest import TEST_FLOWS

pytestmark = pytest.mark.flow

FLOW = TEST_FLOWS / "live_refresh_flow.py"

RESULT = """
import json
from metaflow import Flow, namespace
namespace(None)
task = Flow("LiveRefreshFlow").latest_run["start"].task
print(json.dumps([task.data.saves, task.data.elapsed, task.data.started_during_saves]))
"""


def test_card_processes_start_at_most_once_per_refresh_interval(world, tmp_path):
    log = tmp_path / "card.log"
    world.env["CARD_LOG"] = str(log)
    world.run_flow(FLOW)
    saves, elapsed, started = world.python(RESULT)
    assert saves >= 20  # far more saves than refreshes allowed
    # Refreshes at the first save and then no sooner than 5 s after the previous one.
    assert 2 <= started <= 1 + elapsed // 5, (saves, elapsed, started, log.read_text())


def test_save_never_waits_for_a_card_process(world, tmp_path):
    log, release = tmp_path / "card.log", tmp_path / "release"
    world.env.update(CARD_LOG=str(log), CARD_RELEASE=str(release))
    world.run_flow(FLOW)
    saves, elapsed, started = world.python(RESULT)
    lines = Path(log).read_text().splitlines()
    # A card process was hanging while the step saved on, more than 20 times; it was
    # released by the step after its last save (or ended with the task: the final card is
    # rendered in the task, and Metaflow ends a live card process still running then).
    assert started >= 1 and saves >= 20
    assert "timed out" not in lines, lines
