"""The live checkpoint card while a step saves: Metaflow's runtime card processes start at
most once per refresh interval (5 s), however often the step saves, and save() never waits
for one of them, even one that hangs.

The flow file watches its own card processes: Metaflow starts them as
``python flow.py ... card create ... --mode MODE``, so the code at the top of the file runs
in each of them first. There it logs the mode, and for the live card's modes either exits
at once (CARD_EXIT) or waits for a release file (CARD_RELEASE) the step writes only after
its last save.
"""

from pathlib import Path

import pytest

pytestmark = pytest.mark.flow

FLOW = '''
import os
import sys
import time

if "card" in sys.argv and "create" in sys.argv and "--mode" in sys.argv:
    MODE = sys.argv[sys.argv.index("--mode") + 1]
    if MODE != "render":  # the live card's processes; the final card renders as usual
        with open(os.environ["CARD_LOG"], "a") as log:
            log.write("start %s\\n" % MODE)
        if os.environ.get("CARD_RELEASE"):
            deadline = time.time() + 90
            while not os.path.exists(os.environ["CARD_RELEASE"]) and time.time() < deadline:
                time.sleep(0.05)
            with open(os.environ["CARD_LOG"], "a") as log:
                log.write("released\\n" if os.path.exists(os.environ["CARD_RELEASE"]) else "timed out\\n")
        os._exit(0)

from metaflow import FlowSpec, checkpoint, current, step  # noqa: E402

SAVING_SECONDS = 7


class LiveRefreshFlow(FlowSpec):
    @checkpoint
    @step
    def start(self):
        self.saves = 0
        started = time.time()
        while time.time() - started < SAVING_SECONDS:
            self.saves += 1
            current.checkpoint.save(metadata={"save": self.saves})
            time.sleep(0.05)
        self.elapsed = time.time() - started
        with open(os.environ["CARD_LOG"]) as log:
            self.started_during_saves = sum(1 for line in log if line.startswith("start"))
        if os.environ.get("CARD_RELEASE"):
            open(os.environ["CARD_RELEASE"], "w").close()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LiveRefreshFlow()
'''

RESULT = """
import json
from metaflow import Flow, namespace
namespace(None)
task = Flow("LiveRefreshFlow").latest_run["start"].task
print(json.dumps([task.data.saves, task.data.elapsed, task.data.started_during_saves]))
"""


def test_card_processes_start_at_most_once_per_refresh_interval(world, write_flow, tmp_path):
    log = tmp_path / "card.log"
    world.env["CARD_LOG"] = str(log)
    world.run_flow(write_flow(FLOW, "live_refresh_flow.py"))
    saves, elapsed, started = world.python(RESULT)
    assert saves >= 20  # far more saves than refreshes allowed
    # Refreshes at the first save and then no sooner than 5 s after the previous one.
    assert 2 <= started <= 1 + elapsed // 5, (saves, elapsed, started, log.read_text())


def test_save_never_waits_for_a_card_process(world, write_flow, tmp_path):
    log, release = tmp_path / "card.log", tmp_path / "release"
    world.env.update(CARD_LOG=str(log), CARD_RELEASE=str(release))
    world.run_flow(write_flow(FLOW, "live_refresh_flow.py"))
    saves, elapsed, started = world.python(RESULT)
    lines = Path(log).read_text().splitlines()
    # A card process was hanging while the step saved on, more than 20 times; it was
    # released by the step after its last save (or ended with the task: the final card is
    # rendered in the task, and Metaflow ends a live card process still running then).
    assert started >= 1 and saves >= 20
    assert "timed out" not in lines, lines
