"""A torchrun worker of torchrun_flow.py: DDP over gloo; rank 0 saves the DDP model and
its optimizer through Checkpoint() after every epoch, and every rank resumes from it.

    python -m torch.distributed.run --standalone --nproc-per-node 2 torchrun_worker.py \
        EPOCHS CRASH_AFTER OUT
"""

import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from metaflow import Checkpoint


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.layers(x)


class Live:
    """What this worker has built, for Checkpoint().load(flow=...) to restore in place."""


epochs, crash_after, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
live = Live()
live.model = DistributedDataParallel(Net())
live.optimizer = torch.optim.Adam(live.model.parameters(), lr=0.01)
live.epoch = 0
cp = Checkpoint()  # the task comes from the step that started torchrun
if cp.list(name="ddp"):
    model, optimizer = live.model, live.optimizer
    cp.load(flow=live)  # this attempt's resume point, restored into the live objects
    assert live.model is model and live.optimizer is optimizer
    print("rank %d resumed after epoch %d" % (rank, live.epoch), flush=True)
while live.epoch < epochs:
    generator = torch.Generator().manual_seed(100 * rank + live.epoch)
    for _ in range(5):
        x = torch.randn(32, 10, generator=generator)
        live.optimizer.zero_grad()
        loss = nn.functional.mse_loss(live.model(x), x.sum(dim=1, keepdim=True))
        loss.backward()
        live.optimizer.step()
    live.epoch += 1
    if rank == 0:  # whoever saves, saves: as with torch.save on rank 0
        cp.save(
            {"model": live.model, "optimizer": live.optimizer, "epoch": live.epoch},
            name="ddp",
            metadata={"epoch": live.epoch, "loss": loss.item()},
        )
    dist.barrier()
    if live.epoch == crash_after and rank == 1:
        raise RuntimeError("rank 1 dies after epoch %d" % live.epoch)
if rank == 0:
    torch.save({"model": live.model.module.state_dict(), "optimizer": live.optimizer.state_dict()}, out)
dist.destroy_process_group()
