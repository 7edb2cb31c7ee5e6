"""Saves every fraction of a second until the test says stop, so the test can look at
the live card mid-run. A user's own card sits on the same step and must keep working.

--go-file: the step stops saving once this file exists (at most --max-saves saves).
"""

import os
import time

from metaflow import FlowSpec, Parameter, card, checkpoint, current, step
from metaflow.cards import Markdown


class CardLiveFlow(FlowSpec):
    go_file = Parameter("go-file", required=True)
    max_saves = Parameter("max-saves", default=600, type=int)

    @card(type="blank", id="notes")
    @checkpoint
    @step
    def start(self):
        current.card["notes"].append(Markdown("user notes stay on their own card"))
        self.step_count = 0
        while not os.path.exists(self.go_file) and self.step_count < self.max_saves:
            self.step_count += 1
            current.checkpoint.save(metadata={"loss": 1.0 / self.step_count})
            time.sleep(0.2)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CardLiveFlow()
