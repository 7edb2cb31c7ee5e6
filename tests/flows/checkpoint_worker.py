"""A worker process of worker_saves_flow.py: resumes its own state, trains an epoch, saves.

    python checkpoint_worker.py RANK EPOCH
"""

import json
import sys

import torch

from metaflow import Checkpoint

rank, epoch = int(sys.argv[1]), int(sys.argv[2])
name = "worker%d" % rank
cp = Checkpoint()  # the task comes from the step that started this process
mine = cp.list(name=name)
if mine:
    state = cp.load(mine[-1])
else:
    state = {"weights": torch.full((1000,), float(rank)), "epoch": 0}
if state["epoch"] > epoch:
    sys.exit(0)  # a retry replaying an epoch this worker already saved
generator = torch.Generator().manual_seed(100 * rank + epoch)
state["weights"] = state["weights"] * 0.5 + torch.randn(1000, generator=generator)
state["epoch"] = epoch + 1
saved = cp.save(state, name=name, metadata={"epoch": state["epoch"]})
print(json.dumps({"rank": rank, "saved": saved.key}))
