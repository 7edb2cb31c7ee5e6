"""A worker process of worker_saves_flow.py: resumes its own state, trains, saves after
every epoch; with STOP_AFTER > 0 it stops after that epoch.

    python checkpoint_worker.py RANK EPOCHS STOP_AFTER
"""

import json
import sys

import torch

from metaflow import Checkpoint

rank, epochs, stop_after = map(int, sys.argv[1:4])
name = "worker%d" % rank
cp = Checkpoint()  # the task comes from the step that started this process
mine = cp.list(name=name)
if mine:
    state = cp.load(mine[-1])
else:
    state = {"weights": torch.full((1000,), float(rank)), "epoch": 0}
while state["epoch"] < epochs:
    epoch = state["epoch"]
    generator = torch.Generator().manual_seed(100 * rank + epoch)
    state["weights"] = state["weights"] * 0.5 + torch.randn(1000, generator=generator)
    state["epoch"] = epoch + 1
    saved = cp.save(state, name=name, metadata={"epoch": state["epoch"]})
    print(json.dumps({"rank": rank, "saved": saved.key}))
    if state["epoch"] == stop_after:
        break
