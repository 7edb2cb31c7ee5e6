"""Training throughput kept while checkpointing (CheckFreq's figure of merit), on CPU.

A training loop of an MLP (``layers`` layers of 4096 x 4096 float32, SGD with momentum: 64
MiB of weights and 64 MiB of momentum buffers per layer, so 8 layers save 1 GiB) runs for
a fixed window in each variant: no checkpoints; ours (``save(blocking=False)`` of the model
and optimizer, defaults otherwise: rng=True, fsync); ``dcp.async_save`` of their state
dicts; the sound limit (``_SoundLimitSaver``: a memcpy the loop waits for, then one thread
hashing and writing the copy with fdatasync). All save at ``interval``, 2 x ``interval``, ...
from the window's start, for as long as the window lasts (a 120 s window, every 30 s: at 30,
60 and 90 s); each saver waits for its previous save before the next, and its last save
commits after the window. Only the steps of the window count. The loop uses one torch thread, leaving the other core to the
savers. Variants run interleaved within each round, after a warm-up round; the figure is
steps per second of a variant over steps per second without checkpoints in the same
round, in %.

    python benchmarks/training_throughput.py                 # the issue's case: 1 GiB saved
        # every 30 s, 120 s windows, 2 rounds after the warm-up (about 25 minutes)
    python benchmarks/training_throughput.py --window 6 --interval 2 --rounds 1 --layers 1 \
        --saves 1 --horizon 1   # a smoke run
    python benchmarks/training_throughput.py --per-save-only   # what each save costs the
        # loop, save by save: 6 saves of each saver (about 4 minutes)
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import List, Optional, Protocol, Tuple

import torch
import torch.distributed.checkpoint as dcp

import physical_limit
from measure import Figure, Rounds, plain

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from engine_helpers import State, local_store, make_session  # noqa: E402

MB = 1024 * 1024
WIDTH = 4096
BATCH = 8
TRAIN_THREADS = 1
DEFAULT_LAYERS = 8
DEFAULT_WINDOW = 120.0
DEFAULT_INTERVAL = 30.0
DEFAULT_ROUNDS = 2
DEFAULT_SAVES = 6
#: Seconds the loop trains after a save before it waits for it: longer than a commit.
DEFAULT_HORIZON = 10.0
#: Steps timed before and after each save, for the loop's speed without one.
REFERENCE_STEPS = 4

NONE, OURS, DCP = "no checkpoints", "ours: save(blocking=False)", "dcp.async_save"
LIMIT = "sound limit: memcpy, then hash + write + fdatasync on a thread"


def build(layers: int) -> Tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The MLP of ``layers`` linear layers of ``WIDTH`` x ``WIDTH`` (ReLU between them) and
    its SGD optimizer with momentum, on the current default device.

    Parameters
    ----------
    layers : int
        Linear layers of the MLP.

    Returns
    -------
    tuple of (torch.nn.Module, torch.optim.Optimizer)
    """
    torch.manual_seed(0)
    modules = []
    for _ in range(layers):
        modules += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU()]
    model = torch.nn.Sequential(*modules[:-1])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    return model, optimizer


def saved_state_bytes(layers: int) -> int:
    """Bytes of the model's parameters and SGD's momentum buffers (one per parameter,
    there from the first step on): what each save writes.

    Parameters
    ----------
    layers : int
        Linear layers of the MLP.

    Returns
    -------
    int
    """
    with torch.device("meta"):  # counts the parameters without allocating them
        model, _ = build(layers)
    return 2 * sum(p.numel() * p.element_size() for p in model.parameters())


class _Saver(Protocol):
    def save(self) -> None: ...

    def wait(self) -> None: ...


class _OursSaver:
    def __init__(self, session):
        self.session = session

    def save(self) -> None:
        self.session.save(blocking=False)

    def wait(self) -> None:
        self.session.wait()


class _SoundLimitSaver:
    """The work a sound background save cannot skip, by the simplest code: ``save()``
    copies every tensor into a buffer written once already (the step waits for that), then
    one thread hashes and writes the copy to one file with fdatasync."""

    def __init__(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.path, self.model, self.optimizer = path, model, optimizer
        path.parent.mkdir(parents=True, exist_ok=True)
        self.buffer: Optional[torch.Tensor] = None
        self.pending: Optional[threading.Thread] = None

    def _tensors(self) -> List[torch.Tensor]:
        momentum = [self.optimizer.state[p]["momentum_buffer"] for p in self.model.parameters()]
        return list(self.model.parameters()) + momentum

    def save(self) -> None:
        self.wait()
        tensors = self._tensors()
        if self.buffer is None:
            self.buffer = physical_limit.buffer_for(tensors)
        physical_limit.copy_into(self.buffer, tensors)
        self.pending = threading.Thread(
            target=physical_limit.hash_and_write_with_fdatasync, args=(str(self.path), self.buffer)
        )
        self.pending.start()

    def wait(self) -> None:
        if self.pending is not None:
            self.pending.join()
            self.pending = None


class _DcpSaver:
    def __init__(self, root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.root, self.model, self.optimizer = root, model, optimizer
        self.pending = None
        self.count = 0

    def save(self) -> None:
        self.wait()
        self.count += 1
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        result = dcp.async_save(state, checkpoint_id=str(self.root / ("step-%d" % self.count)))
        self.pending = result if isinstance(result, Future) else result.upload_completion

    def wait(self) -> None:
        if self.pending is not None:
            self.pending.result()
            self.pending = None


def _steps_per_second(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, window: float, interval: float,
    saver: Optional[_Saver],
) -> float:
    inputs = torch.randn(BATCH, WIDTH)
    targets = torch.randn(BATCH, WIDTH)
    # Start from a quiet disk, so that no window pays for the writeback of the one before.
    os.sync()
    steps = saves = 0
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= window:
            break
        if saver is not None and elapsed >= (saves + 1) * interval:
            saver.save()
            saves += 1
        _training_step(model, optimizer, inputs, targets)
        steps += 1
    if saver is not None:
        saver.wait()  # the last save commits outside the window, like the end of a task
    return steps / elapsed


def run(
    workdir: Path, window: float, interval: float, rounds: int, layers: int = DEFAULT_LAYERS
) -> Rounds:
    """Steps per second of each variant and the throughput each saver keeps, per round.

    Parameters
    ----------
    workdir : Path
        Where the checkpoints go (removed after each round).
    window : float
        Seconds each variant trains.
    interval : float
        Seconds between saves, the first one ``interval`` after the window starts.
    rounds : int
        Rounds after the warm-up round.
    layers : int, default DEFAULT_LAYERS
        Linear layers of the MLP (``saved_state_bytes``: what each save writes).

    Returns
    -------
    Rounds
    """
    torch.set_num_threads(TRAIN_THREADS)
    model, optimizer = build(layers)
    samples = Rounds()
    for _ in range(rounds + 1):
        root = workdir / "training"
        shutil.rmtree(root, ignore_errors=True)
        holder = State()
        holder.model, holder.optimizer = model, optimizer
        session = make_session(local_store(root / "ours"), holder)
        dcp_saver = _DcpSaver(root / "dcp", model, optimizer)
        rate = {
            NONE: _steps_per_second(model, optimizer, window, interval, None),
            OURS: _steps_per_second(model, optimizer, window, interval, _OursSaver(session)),
            DCP: _steps_per_second(model, optimizer, window, interval, dcp_saver),
            LIMIT: _steps_per_second(
                model, optimizer, window, interval, _SoundLimitSaver(root / "limit.bin", model, optimizer)
            ),
        }
        session.finish()
        samples.add("checkpoints per window: ours", len(session.list()))
        samples.add("checkpoints per window: dcp.async_save", dcp_saver.count)
        for name, value in rate.items():
            samples.add("steps per second: %s" % name, value)
        for name in (OURS, DCP, LIMIT):
            samples.add("throughput kept: %s" % name, 100.0 * rate[name] / rate[NONE])
        shutil.rmtree(root, ignore_errors=True)
        samples.next_round()
    return samples


def _training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs, targets) -> float:
    """One step of the loop; its seconds."""
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=False)
    torch.nn.functional.mse_loss(model(inputs), targets).backward()
    optimizer.step()
    return time.perf_counter() - start


def _seconds_lost_to_one_save(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, saver: _Saver, horizon: float
) -> float:
    """What one save costs the loop: the seconds its steps take from the save to
    ``horizon`` later (and the wait for the save after that, if it is still pending), over
    what as many steps took just before and just after (the median of REFERENCE_STEPS each)."""
    inputs, targets = torch.randn(BATCH, WIDTH), torch.randn(BATCH, WIDTH)
    os.sync()
    before = [_training_step(model, optimizer, inputs, targets) for _ in range(REFERENCE_STEPS)]
    start = time.perf_counter()
    saver.save()
    steps = 0
    while time.perf_counter() - start < horizon:
        _training_step(model, optimizer, inputs, targets)
        steps += 1
    saver.wait()
    spent = time.perf_counter() - start
    after = [_training_step(model, optimizer, inputs, targets) for _ in range(REFERENCE_STEPS)]
    return spent - steps * statistics.median(before + after)


def run_seconds_lost_per_save(
    saves: int, horizon: float = DEFAULT_HORIZON, layers: int = DEFAULT_LAYERS, workdir: Optional[Path] = None
) -> Rounds:
    """Seconds of training each saver's save costs the loop, measured save by save.

    A window's steps per second (``run``) drift on a VM by more than a save costs; this
    measures each save against the steps right around it instead. The savers take turns,
    one save each per round (ours, ``dcp.async_save``, the sound limit), on one loop.

    Parameters
    ----------
    saves : int
        Saves of each saver, after a warm-up save of each (ours maps its staging buffer
        then, as a task's first background save does; the others make their buffers).
    horizon : float, default DEFAULT_HORIZON
        Seconds the loop trains after each save before it waits for the save.
    layers : int, default DEFAULT_LAYERS
        Linear layers of the MLP (``saved_state_bytes``: what each save writes).
    workdir : Path, optional
        Where the checkpoints go (a temporary folder by default).

    Returns
    -------
    Rounds
        ``seconds lost per save: <saver>``, one sample per save.
    """
    torch.set_num_threads(TRAIN_THREADS)
    model, optimizer = build(layers)
    _training_step(model, optimizer, torch.randn(BATCH, WIDTH), torch.randn(BATCH, WIDTH))  # momentum buffers
    samples = Rounds()
    with tempfile.TemporaryDirectory(dir=str(workdir or HERE), prefix="work-") as tmp:
        root = Path(tmp)
        holder = State()
        holder.model, holder.optimizer = model, optimizer
        session = make_session(local_store(root / "ours"), holder)
        savers = {
            OURS: _OursSaver(session),
            DCP: _DcpSaver(root / "dcp", model, optimizer),
            LIMIT: _SoundLimitSaver(root / "limit.bin", model, optimizer),
        }
        for _ in range(saves + 1):  # round 0, the warm-up, is not reported
            for name, saver in savers.items():
                lost = _seconds_lost_to_one_save(model, optimizer, saver, horizon)
                samples.add("seconds lost per save: %s" % name, lost)
            samples.next_round()
        session.finish()
    return samples


def kept_at(samples: Rounds, saver: str, interval: float) -> Figure:
    """The throughput, in %, ``saver`` keeps at one save every ``interval`` seconds, from
    ``run_seconds_lost_per_save``'s samples: 1 - lost / interval, save by save."""
    lost = samples.figure("seconds lost per save: %s" % saver)
    return Figure([100.0 * (1.0 - v / interval) for v in lost.samples])


def lost_rows(samples: Rounds, interval: float) -> List[Tuple[str, str]]:
    """(case, median (min to max)) of ``run_seconds_lost_per_save``'s samples, and the
    throughput each saver keeps at one save every ``interval`` seconds that follows."""
    rows = []
    for name in (OURS, DCP, LIMIT):
        lost = samples.figure("seconds lost per save: %s" % name)
        rows.append(("seconds lost per save: %s" % name, plain(lost, "%.3f", " s")))
        rows.append(("throughput kept at one save every %.0f s: %s" % (interval, name),
                     plain(kept_at(samples, name, interval), "%.1f", " %")))
    return rows


def describe_lost(layers: int, saves: int, horizon: float) -> str:
    """What ``run_seconds_lost_per_save`` with these settings measures, in words."""
    return (
        "The same loop and savers, one save at a time: the seconds the loop's steps take from a"
        " save to %.0f s later (plus the wait for the save, if it is still pending then), less what"
        " as many steps took right around it (the median of %d steps before and %d after); the"
        " savers take turns, %d saves each after a warm-up one. \"Throughput kept\" follows: 1 -"
        " lost / interval." % (horizon, REFERENCE_STEPS, REFERENCE_STEPS, saves)
    )


def describe(layers: int, window: float, interval: float, rounds: int) -> str:
    """What ``run`` with these settings measures, in words, for a report.

    Parameters
    ----------
    layers, window, interval, rounds
        As for ``run``.

    Returns
    -------
    str
    """
    return (
        "A CPU training loop (an MLP of %d layers of %d x %d float32, SGD with momentum: %d MiB of"
        " state saved) runs a %.0f s window per variant: no checkpoints; ours, `save(blocking=False)`"
        " of the model and optimizer every %.0f s from the window's start (defaults: rng=True,"
        " fsync); `dcp.async_save` of their state dicts at the same times; and the sound limit, the"
        " work a sound background save cannot skip by the simplest code (a memcpy of every tensor"
        " into a buffer written already, which the loop waits for, then one thread hashing and"
        " writing the copy to one file with fdatasync). Each saver waits for its"
        " previous save before the next; the last one commits after the window. The loop runs on one"
        " torch thread, leaving the other core to the savers. %d rounds after a warm-up round; the"
        " variants run one after the other within each round, each from a quiet disk (os.sync());"
        " \"throughput kept\" is a variant's steps per second over those without checkpoints in the"
        " same round, in %%."
        % (layers, WIDTH, WIDTH, round(saved_state_bytes(layers) / MB), window, interval, rounds)
    )


def rows(samples: Rounds) -> List[Tuple[str, str]]:
    """(case, median (min to max)) of every case of ``run``'s samples.

    Parameters
    ----------
    samples : Rounds
        What ``run`` returned.

    Returns
    -------
    list of (str, str)
    """
    def shown(case: str) -> str:
        if case.startswith("throughput kept"):
            return plain(samples.figure(case), "%.1f", " %")
        if case.startswith("checkpoints"):
            return plain(samples.figure(case), "%.0f")
        return plain(samples.figure(case), "%.3f", "/s")

    return [(case, shown(case)) for case in samples.cases()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=DEFAULT_WINDOW, help="seconds each variant trains")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between saves")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds after the warm-up round")
    parser.add_argument("--layers", type=int, default=DEFAULT_LAYERS,
                        help="layers of the MLP; each saves 128 MiB (weights and momentum)")
    parser.add_argument("--saves", type=int, default=DEFAULT_SAVES,
                        help="saves of each saver in the per-save measurement (0: none)")
    parser.add_argument("--horizon", type=float, default=DEFAULT_HORIZON,
                        help="seconds the loop trains after a save, in the per-save measurement")
    parser.add_argument("--per-save-only", action="store_true", help="skip the windows (run)")
    args = parser.parse_args()
    if not 0 < args.interval < args.window:
        parser.error("the interval must be shorter than the window, for at least one save in it")
    if not args.per_save_only:
        with tempfile.TemporaryDirectory(dir=str(HERE), prefix="work-") as tmp:
            samples = run(Path(tmp), args.window, args.interval, args.rounds, args.layers)
        print(describe(args.layers, args.window, args.interval, args.rounds))
        print()
        _print_rows(rows(samples))
    if args.saves:
        lost = run_seconds_lost_per_save(args.saves, args.horizon, args.layers)
        print()
        print(describe_lost(args.layers, args.saves, args.horizon))
        print()
        _print_rows(lost_rows(lost, args.interval))


def _print_rows(table: List[Tuple[str, str]]) -> None:
    width = max(len(case) for case, _ in table)
    for case, shown in table:
        print("%-*s  %s" % (width, case, shown))


if __name__ == "__main__":
    main()
