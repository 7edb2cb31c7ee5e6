"""A 2-node @parallel gang training a DDP model with torch.distributed (gloo, CPU).

Every node holds the DDP-replicated model, its optimizer and scheduler, and a shard of
its own (a per-rank tensor, with an EMA of it written through ``.data``); every node
saves at the end of each epoch.

    python gang_flow.py run                                  # uninterrupted
    python gang_flow.py run --kill-node 1 --kill-after 3     # node 1 SIGKILLed after the epoch-3 save
    python gang_flow.py run --kill-node 1 --kill-during 4    # node 1 SIGKILLed during its epoch-4 save
"""

import hashlib
import json
import os
import signal
import threading
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from metaflow import FlowSpec, Parameter, checkpoint, current, parallel, retry, step


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, x):
        return self.body(x)


def kill_when_saving(pid_tag: str, temp_dir: str) -> None:
    """SIGKILL this process as soon as one of its save's temp files exists."""

    def watch():
        while True:
            try:
                names = os.listdir(temp_dir)
            except FileNotFoundError:
                names = []
            if any(pid_tag in name for name in names):
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def bytes_digest(tensor):
    return hashlib.sha256(tensor.numpy().tobytes()).hexdigest()


class GangFlow(FlowSpec):
    epochs = Parameter("epochs", default=5, type=int)
    kill_node = Parameter("kill-node", default=-1, type=int)
    kill_after = Parameter("kill-after", default=0, type=int)
    kill_during = Parameter("kill-during", default=0, type=int)
    shard_mb = Parameter("shard-mb", default=1, type=int)
    background = Parameter("background", default=False, type=bool)

    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @retry(times=2)
    @checkpoint
    @parallel
    @step
    def train(self):
        rank = current.parallel.node_index
        attempt = current.retry_count
        rendezvous = os.path.join(
            os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"], "gloo-%s-%d" % (current.run_id, attempt)
        )
        dist.init_process_group(
            "gloo", init_method="file://" + rendezvous, rank=rank,
            world_size=current.parallel.num_nodes, timeout=timedelta(seconds=60),
        )
        torch.manual_seed(0)  # the same initial weights on every node
        self.model = DistributedDataParallel(Regressor())
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=2, gamma=0.5)
        torch.manual_seed(1000 + rank)  # each node's own data and shard
        self.shard = torch.randn(self.shard_mb * 2**18)  # shard_mb MB of float32
        self.shard_ema = self.shard.clone()
        self.epoch = 0
        self.resumed_from = None
        if current.checkpoint.is_loaded:
            self.resumed_from = current.checkpoint.load().key
            print("node %d resumed after epoch %d from %s" % (rank, self.epoch, self.resumed_from))
        while self.epoch < self.epochs:
            for _ in range(4):
                x = torch.randn(64, 16)
                y = x.sum(dim=1, keepdim=True)
                self.optimizer.zero_grad()
                loss = nn.functional.mse_loss(self.model(x), y)
                loss.backward()  # gradients all-reduced across the gang
                self.optimizer.step()
            self.scheduler.step()
            self.shard.mul_(0.5).add_(torch.randn_like(self.shard))
            self.shard_ema.data.mul_(0.9).add_(self.shard, alpha=0.1)
            self.epoch += 1
            dying = attempt == 0 and rank == self.kill_node
            if dying and self.epoch == self.kill_during:
                temp_dir = os.path.join(
                    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"], ".metaflow", "GangFlow",
                    "_implicit_checkpoints", "tmp",
                )
                kill_when_saving("+%d+" % os.getpid(), temp_dir)
            current.checkpoint.save(
                metadata={"epoch": self.epoch, "loss": loss.item()}, blocking=not self.background
            )
            if dying and self.epoch == self.kill_after:
                current.checkpoint.wait()
                os.kill(os.getpid(), signal.SIGKILL)
        current.checkpoint.wait()
        dist.destroy_process_group()
        self.rank = rank
        self.final = {
            "weights": [p.detach().clone() for p in self.model.parameters()],
            "momentum": [self.optimizer.state[p]["momentum_buffer"].clone() for p in self.model.parameters()],
            "lr": self.scheduler.get_last_lr(),
            # Digests, not the shards: Metaflow's artifacts are gzipped pickles, slow for 64 MB.
            "shard": bytes_digest(self.shard),
            "shard_ema": bytes_digest(self.shard_ema),
            "rng": torch.randn(3),
        }
        self.listed = [(a.key, a.metadata["epoch"], a.attempt) for a in current.checkpoint.list()]
        del self.model, self.optimizer, self.scheduler, self.shard, self.shard_ema
        self.next(self.join)

    @step
    def join(self, inputs):
        self.finals = {inp.rank: inp.final for inp in inputs}
        self.resumed = {inp.rank: inp.resumed_from for inp in inputs}
        self.listed = {inp.rank: inp.listed for inp in inputs}
        self.next(self.end)

    @step
    def end(self):
        print(json.dumps({"resumed": self.resumed}))


if __name__ == "__main__":
    GangFlow()
