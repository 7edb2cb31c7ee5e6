"""metaflow-torchrun's @torchrun under @checkpoint: a 2-node gang, each node running torchrun
with one process; rank 0 checkpoints the DDP model through Checkpoint() (tests/flows/
torchrun_worker.py), and every rank resumes from it after rank 1 dies in attempt 0.

metaflow-torchrun 0.2.2 does not run locally as shipped: its task_pre_step skips
ParallelDecorator's (which sets the input_paths a local gang needs), patched below; and its
own rendezvous store refuses the local datastore, so this flow runs on S3.

    TORCHRUN_TEST_PORT=29533 python torchrun_decorator_flow.py run --crash-after 2
"""

import os
import tempfile

from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step, torchrun
from metaflow.plugins.parallel_decorator import ParallelDecorator
from metaflow_extensions.torchrun.plugins.torchrun_libs.torchrun_decorator import TorchrunDecoratorParallel

_own_task_pre_step = TorchrunDecoratorParallel.task_pre_step


def _task_pre_step(self, *args, **kwargs):
    ParallelDecorator.task_pre_step(self, *args, **kwargs)
    _own_task_pre_step(self, *args, **kwargs)


TorchrunDecoratorParallel.task_pre_step = _task_pre_step

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchrun_worker.py")


class TorchrunDecoratorFlow(FlowSpec):
    epochs = Parameter("epochs", default=4, type=int)
    crash_after = Parameter("crash-after", default=0, type=int)

    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @retry(times=1)
    @checkpoint
    @torchrun(master_port=os.environ.get("TORCHRUN_TEST_PORT", "29533"))
    @step
    def train(self):
        crash = self.crash_after if current.retry_count == 0 else 0
        out = os.path.join(tempfile.mkdtemp(), "final.pt")
        current.torch.run(
            entrypoint=WORKER, entrypoint_args=[str(self.epochs), str(crash), out], nproc_per_node=1
        )
        self.node = current.parallel.node_index
        import torch  # here: the flow's other tasks (and the runtime) need not import it

        self.final = torch.load(out) if self.node == 0 else None  # rank 0 runs on node 0
        self.saved = [(a.metadata["epoch"], a.attempt) for a in current.checkpoint.list(name="ddp")]
        self.next(self.join)

    @step
    def join(self, inputs):
        self.final = next(i.final for i in inputs if i.node == 0)
        self.saved = {i.node: i.saved for i in inputs}
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TorchrunDecoratorFlow()
