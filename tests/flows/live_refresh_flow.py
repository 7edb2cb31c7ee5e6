"""A step that saves for 7 s while the file logs the live card processes Metaflow starts
(CARD_LOG), and holds them until the step's last save (CARD_RELEASE): see
tests/test_live_card_refresh.py."""

import os
import sys
import time

if "card" in sys.argv and "create" in sys.argv and "--mode" in sys.argv:
    MODE = sys.argv[sys.argv.index("--mode") + 1]
    if MODE != "render":  # the live card's processes; the final card renders as usual
        with open(os.environ["CARD_LOG"], "a") as log:
            log.write("start %s\n" % MODE)
        if os.environ.get("CARD_RELEASE"):
            deadline = time.time() + 90
            while not os.path.exists(os.environ["CARD_RELEASE"]) and time.time() < deadline:
                time.sleep(0.05)
            with open(os.environ["CARD_LOG"], "a") as log:
                log.write("released\n" if os.path.exists(os.environ["CARD_RELEASE"]) else "timed out\n")
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
