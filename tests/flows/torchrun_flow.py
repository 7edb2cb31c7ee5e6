"""A step that runs torch's own launcher: `torchrun --nproc-per-node 2 torchrun_worker.py`.

    python torchrun_flow.py run --crash-after 2   # rank 1 dies after epoch 2 in attempt 0
"""

import os
import subprocess
import sys
import tempfile


from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchrun_worker.py")


class TorchrunFlow(FlowSpec):
    epochs = Parameter("epochs", default=4, type=int)
    crash_after = Parameter("crash-after", default=0, type=int)

    @step
    def start(self):
        self.next(self.train)

    @retry(times=1)
    @checkpoint
    @step
    def train(self):
        crash = self.crash_after if current.retry_count == 0 else 0
        with tempfile.TemporaryDirectory() as scratch:
            out = os.path.join(scratch, "final.pt")
            subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc-per-node", "2", WORKER, str(self.epochs), str(crash), out],
                check=True,
            )
            import torch  # here: the flow's other tasks (and the runtime) need not import it

            self.final = torch.load(out)
        self.saved = [(a.metadata["epoch"], a.attempt) for a in current.checkpoint.list(name="ddp")]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TorchrunFlow()
