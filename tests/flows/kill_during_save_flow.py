"""Attempt 0 is SIGKILLed from a timer thread while it saves large checkpoints back to back."""

import os
import signal
import threading

import numpy as np
from metaflow import FlowSpec, checkpoint, current, retry, step


def payload(i):
    return np.random.default_rng(i).random(6 * 1024 * 1024 // 8 * 4)  # 24 MB


class KillDuringSaveFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @retry(times=1)
    @checkpoint
    @step
    def train(self):
        if current.retry_count == 0:
            self.i = 0
            timer = threading.Timer(1.5, os.kill, args=(os.getpid(), signal.SIGKILL))
            timer.start()
            while True:
                self.i += 1
                self.data = payload(self.i)
                current.checkpoint.save(metadata={"i": self.i})
        report = {"resumed": current.checkpoint.is_loaded}
        if current.checkpoint.is_loaded:
            art = current.checkpoint.load()
            report["resumed_attempt"] = art.attempt
            report["resumed_i"] = self.i
            report["intact"] = bool(np.array_equal(self.data, payload(self.i)))
            report["newest_listed_i"] = current.checkpoint.list(attempt=0)[-1].metadata["i"]
        self.report = report
        del self.data
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    KillDuringSaveFlow()
