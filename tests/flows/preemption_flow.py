"""A training loop for spot machines (run by tests/test_preemption_flow.py).

A linear model, SGD with a step LR schedule, and a ``StatefulDataLoader`` with 2 workers
over a shuffled dataset, two epochs of 24 batches; ``if current.checkpoint.due():
current.checkpoint.save()`` after every batch. Each batch writes the task's pid and its
batch count to the ``--progress`` file, so that a test can send SIGTERM to the task at a
batch of its choosing. ``sample_ids`` lists every sample trained on, in order: a resume at
the wrong batch repeats or skips some.

``--every-steps N`` saves every N batches instead of the Young/Daly interval;
``--background`` saves with ``blocking=False``; ``--ballast-mb`` adds a tensor that every
save rewrites (a background save then takes a while to commit); ``--stall-at B``: on the
first attempt, after saving at batch B, wait forever without reaching a save point.
"""

import json
import os
import threading
import time

import torch
from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step
from torchdata.stateful_dataloader import StatefulDataLoader

SAMPLES, BATCH, EPOCHS = 96, 4, 2


class Points(torch.utils.data.Dataset):
    """Sample i: 4 inputs drawn from seed i, the target their weighted sum, and i."""

    def __len__(self):
        return SAMPLES

    def __getitem__(self, index):
        x = torch.randn(4, generator=torch.Generator().manual_seed(index))
        return x, (x * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum(0, keepdim=True), index


class PreemptionFlow(FlowSpec):
    progress = Parameter("progress", default="", help="file the task writes its pid and batch to")
    every_steps = Parameter("every-steps", default=0, type=int)
    background = Parameter("background", default=False, type=bool)
    ballast_mb = Parameter("ballast-mb", default=0, type=int)
    stall_at = Parameter("stall-at", default=0, type=int)
    pause = Parameter("pause", default=0.02, type=float, help="seconds per batch")

    @step
    def start(self):
        self.next(self.train)

    @retry(times=1)
    @checkpoint
    @step
    def train(self):
        torch.set_num_threads(1)
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=10, gamma=0.5)
        self.loader = StatefulDataLoader(
            Points(), batch_size=BATCH, shuffle=True, num_workers=2,
            generator=torch.Generator().manual_seed(7),
        )
        self.ballast = torch.zeros(self.ballast_mb * 2**18)  # float32: MB * 2^18 elements
        self.epoch, self.batch, self.sample_ids = 0, 0, []
        self.resumed_at = None
        if current.checkpoint.is_loaded:
            current.checkpoint.load()
            self.resumed_at = self.batch
            print("resumed at batch %d of epoch %d" % (self.batch, self.epoch))
        while self.epoch < EPOCHS:
            for x, y, ids in self.loader:
                self.optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(self.model(x), y)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                self.sample_ids.extend(ids.tolist())
                self.batch += 1
                self._report()
                time.sleep(self.pause)
                due = (
                    current.checkpoint.due(every_steps=self.every_steps)
                    if self.every_steps else current.checkpoint.due()
                )
                if due:
                    self.ballast += 1
                    current.checkpoint.save(
                        metadata={"batch": self.batch, "loss": loss.item()},
                        blocking=not self.background,
                    )
                    self._report(saved=True)
                    if self.stall_at and self.batch == self.stall_at and current.retry_count == 0:
                        self._report(stalled=True)
                        threading.Event().wait()  # blocked in C: no save point ever again
            self.epoch += 1
        self.weights = b"".join(t.detach().numpy().tobytes() for t in self.model.state_dict().values())
        self.save_interval = current.checkpoint.save_interval.chosen_by
        del self.loader, self.ballast  # not artifacts
        self.next(self.end)

    def _report(self, **events):
        if self.progress:
            record = dict(
                pid=os.getpid(), attempt=current.retry_count, batch=self.batch, time=time.time(), **events
            )
            with open(self.progress, "a") as out:
                out.write(json.dumps(record) + "\n")

    @step
    def end(self):
        pass


if __name__ == "__main__":
    PreemptionFlow()
