"""A step that launches two worker processes which checkpoint through Checkpoint().

    python worker_saves_flow.py run --crash-after 2   # the step fails after epoch 2 once

The workers run side by side for the whole training, as torchrun's do: each resumes
its own newest checkpoint and saves after every epoch.
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
        stop_after = self.crash_after if current.retry_count == 0 else 0
        workers = [
            subprocess.Popen([sys.executable, WORKER, str(rank), str(self.epochs), str(stop_after)])
            for rank in (0, 1)
        ]
        if any(worker.wait() != 0 for worker in workers):
            raise RuntimeError("a worker failed")
        if stop_after:
            raise RuntimeError("the step dies after epoch %d" % stop_after)
        self.seen_by_step = sorted({a.name for a in current.checkpoint.list()})
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    WorkerSavesFlow()
