"""Crash the first attempt of `train` after some saves, resume on the retry.

--crash: exception | exit (os._exit) | kill (SIGKILL) | none
"""

import os
import signal

import numpy as np
from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step


class ResumeFlow(FlowSpec):
    crash = Parameter("crash", default="exception")
    crash_after = Parameter("crash-after", default=3, type=int)
    saves = Parameter("saves", default=5, type=int)

    @step
    def start(self):
        self.from_start = np.arange(5)
        self.next(self.train)

    @retry(times=2)
    @checkpoint
    @step
    def train(self):
        self.weights = np.zeros(1000)
        self.count = 0
        self.attempts_seen = []
        self.resumed_from = None
        if current.checkpoint.is_loaded:
            self.resumed_from = current.checkpoint.load().key
        while self.count < self.saves:
            self.count += 1
            self.weights = self.weights + 1
            self.attempts_seen.append(current.retry_count)
            current.checkpoint.save(
                name="even" if self.count % 2 == 0 else "odd",
                metadata={"count": self.count, "attempt": current.retry_count},
            )
            if current.retry_count == 0 and self.count == self.crash_after:
                if self.crash == "exception":
                    raise RuntimeError("simulated failure after save %d" % self.count)
                if self.crash == "exit":
                    os._exit(1)
                if self.crash == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
        self.next(self.end)

    @step
    def end(self):
        assert self.weights.sum() == 1000 * self.saves


if __name__ == "__main__":
    ResumeFlow()
