"""Attempt 0 saves, starts a background save, then raises (--mode raise) or dies (--mode kill)."""

import os

import numpy as np
from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step

BIG = 32 * 1024 * 1024  # float64s: 256 MB, so the background save is still writing


class BackgroundFlow(FlowSpec):
    mode = Parameter("mode", default="raise")

    @retry(times=1)
    @checkpoint
    @step
    def start(self):
        if current.retry_count == 0:
            self.n = 1
            self.weights = np.full(1000, 1.0)
            current.checkpoint.save()
            self.n = 2
            self.weights = np.full(BIG, 2.0)
            current.checkpoint.save(blocking=False)
            if self.mode == "kill":
                os._exit(1)
            raise RuntimeError("failing right after a background save")
        resumed = current.checkpoint.load()
        self.report = {
            "n": self.n,
            "resumed_version": resumed.version,
            "intact": bool((self.weights == float(self.n)).all()),
            "listed": [a.version for a in current.checkpoint.list()],
        }
        del self.weights
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BackgroundFlow()
