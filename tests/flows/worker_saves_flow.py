"""A step that launches two worker processes which checkpoint through Checkpoint().

    python worker_saves_flow.py run --crash-after 2   # the step fails after epoch 2 once
"""

import os
import subprocess
import sys

from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoint_worker.py")


class WorkerSavesFlow(FlowSpec):
    epochs = Parameter("epochs", default=4, type=int)
    crash_after = Parameter("crash-after", default=0, type=int)

    @step
    def start(self):
        self.next(self.train)

    @retry(times=1)
    @checkpoint
    @step
    def train(self):
        for epoch in range(self.epochs):
            for rank in (0, 1):  # two workers, each its own process, like torchrun's
                subprocess.run([sys.executable, WORKER, str(rank), str(epoch)], check=True)
            if epoch + 1 == self.crash_after and current.retry_count == 0:
                raise RuntimeError("the step dies after epoch %d" % (epoch + 1))
        self.seen_by_step = sorted({a.name for a in current.checkpoint.list()})
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    WorkerSavesFlow()
