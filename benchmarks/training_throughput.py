"""Training throughput kept while checkpointing (CheckFreq's figure of merit), on CPU.

A training loop of an MLP (3 layers of 4096 x 4096 float32: 192 MiB of weights, 384 MiB
with SGD's momentum buffers) runs for a fixed window in each variant: no checkpoints; ours
(``save(blocking=False)`` of the model and optimizer every ``interval`` seconds, defaults
otherwise: rng=True, fsync); ``dcp.async_save`` of their state dicts at the same interval
(each waits for the previous one to commit, as ours does). The loop uses one torch thread,
leaving the other core to the savers. Variants run interleaved within each round; the
figure is steps per second of a variant over steps per second without checkpoints in the
same round, in %.

    python training_throughput.py [WINDOW_SECONDS] [ROUNDS]
"""

import shutil
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from measure import Rounds

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from engine_helpers import State, local_store, make_session  # noqa: E402

WIDTH = 4096
LAYERS = 3
BATCH = 8
TRAIN_THREADS = 1

NONE, OURS, DCP = "no checkpoints", "ours: save(blocking=False)", "dcp.async_save"


def build():
    torch.manual_seed(0)
    layers = []
    for _ in range(LAYERS):
        layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    return model, optimizer


def saved_state_bytes(model) -> int:
    """Bytes of the model's parameters and SGD's momentum buffers (one per parameter,
    there from the first step on)."""
    return 2 * sum(p.numel() * p.element_size() for p in model.parameters())


class _DcpSaver:
    def __init__(self, root: Path, model, optimizer):
        self.root, self.model, self.optimizer = root, model, optimizer
        self.pending = None
        self.count = 0

    def save(self):
        self.wait()
        self.count += 1
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        result = dcp.async_save(state, checkpoint_id=str(self.root / ("step-%d" % self.count)))
        self.pending = result if isinstance(result, Future) else result.upload_completion

    def wait(self):
        if self.pending is not None:
            self.pending.result()
            self.pending = None


def _steps_per_second(model, optimizer, window: float, interval: float, save, wait) -> float:
    inputs = torch.randn(BATCH, WIDTH)
    targets = torch.randn(BATCH, WIDTH)
    steps = 0
    start = time.perf_counter()
    next_save = start + interval
    while True:
        now = time.perf_counter()
        if now - start >= window:
            break
        if save is not None and now >= next_save:
            save()
            next_save = now + interval
        optimizer.zero_grad(set_to_none=False)
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        steps += 1
    rate = steps / (time.perf_counter() - start)
    if wait is not None:
        wait()  # the last save commits outside the window, like the end of a task
    return rate


def run(workdir: Path, window: float, interval: float, rounds: int) -> Rounds:
    torch.set_num_threads(TRAIN_THREADS)
    model, optimizer = build()
    samples = Rounds()
    for _ in range(rounds + 1):
        root = workdir / "training"
        shutil.rmtree(root, ignore_errors=True)
        holder = State()
        holder.model, holder.optimizer = model, optimizer
        session = make_session(local_store(root / "ours"), holder)
        dcp_saver = _DcpSaver(root / "dcp", model, optimizer)
        rate = {
            NONE: _steps_per_second(model, optimizer, window, interval, None, None),
            OURS: _steps_per_second(
                model, optimizer, window, interval, lambda: session.save(blocking=False), session.wait
            ),
            DCP: _steps_per_second(model, optimizer, window, interval, dcp_saver.save, dcp_saver.wait),
        }
        session.finish()
        samples.add("checkpoints per window: ours", len(session.list()))
        samples.add("checkpoints per window: dcp.async_save", dcp_saver.count)
        for name, value in rate.items():
            samples.add("steps per second: %s" % name, value)
        for name in (OURS, DCP):
            samples.add("throughput kept: %s" % name, 100.0 * rate[name] / rate[NONE])
        shutil.rmtree(root, ignore_errors=True)
        samples.next_round()
    return samples


if __name__ == "__main__":
    import json
    import tempfile

    window = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    with tempfile.TemporaryDirectory(dir=str(HERE), prefix="work-") as tmp:
        result = run(Path(tmp), window, window / 5, rounds)
    print(json.dumps({case: result.figure(case).to_json() for case in result.cases()}, indent=1))
