"""The GPU benchmark of issue 23: CUDA training state saved, staged and restored, side by
side in one run, against torch's own checkpointing and the machine's physical limits.

For each state size (default 1 GB and 10 GB of float32 CUDA tensors, shaped like a model:
8 large tensors hold 90 % of the bytes, 300 small ones the rest), each case runs
``--rounds`` times after an unreported warm-up round, and is reported as median (min to
max):

- ours: ``save()`` (sync, durable: fsync), ``save(blocking=False)`` (the time the step is
  blocked, and until committed), ``load()`` in place into the live CUDA tensors (files
  evicted from the page cache first), with its peak host memory over the process's
  baseline beside the bounce buffer, and its peak added device memory;
- torch: ``dcp.save``, ``dcp.async_save`` with a pinned-memory stager (blocked, and until
  committed), ``dcp.load`` in place, ``torch.save`` (and the fsync after it);
- physical limits: a pinned device-to-host copy of the same bytes, the host-to-device copy
  back, a write of the bytes with fdatasync, a read of them (evicted first).

Then CheckFreq's figure of merit: a small transformer training on the GPU for
``--train-seconds``, without checkpoints and with ``save(blocking=False)`` every
``--save-every`` seconds; the throughput kept, in %. The issue's targets are checked and
printed as PASS/MISS beside the figures.

    python benchmarks/gpu_bench.py [--sizes-gb 1,10] [--rounds 2] [--json out.json]
    python benchmarks/gpu_bench.py --dry-run        # what it would run; runs nothing
    python benchmarks/gpu_bench.py --smoke          # tiny, on CPU without CUDA: the code runs

Needs the package importable (its repository on PYTHONPATH) and, but for --smoke, a CUDA
device. Writes under ``--work`` (default: a temporary folder beside this file), removed
at the end.
"""

import argparse
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

GB = 10**9
MB = 10**6

# Case names, as printed.
D2H = "limit: pinned device-to-host copy"
H2D = "limit: host-to-device copy"
WRITE = "limit: write + fdatasync"
READ = "limit: read (evicted)"
OURS_SYNC = "ours: save()"
OURS_BLOCKED = "ours: save(blocking=False), blocked"
OURS_COMMITTED = "ours: save(blocking=False), until committed"
OURS_LOAD = "ours: load() in place"
OURS_LOAD_HOST = "ours: load() peak host memory over baseline (bytes)"
OURS_LOAD_DEVICE = "ours: load() peak added device memory (bytes)"
DCP_SAVE = "dcp.save"
DCP_BLOCKED = "dcp.async_save (pinned stager), blocked"
DCP_COMMITTED = "dcp.async_save (pinned stager), until committed"
DCP_LOAD = "dcp.load"
TORCH_SAVE = "torch.save"
TORCH_SAVE_FSYNC = "fsync after torch.save"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-gb", default="1,10", help="state sizes in GB, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="reported rounds per case (after a warm-up)")
    parser.add_argument("--train-seconds", type=float, default=65.0, help="each training window")
    parser.add_argument("--save-every", type=float, default=30.0, help="seconds between background saves")
    parser.add_argument("--work", default=None, help="folder for the checkpoints (default: beside this file)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU allowed: checks the code runs")
    args = parser.parse_args(argv)
    args.sizes = [float(s) for s in args.sizes_gb.split(",") if s.strip()]
    if args.smoke:
        args.sizes, args.rounds, args.train_seconds, args.save_every = [0.016], 1, 2.0, 0.5
    return args


# -- the state and its bytes --------------------------------------------------------------


def device_state(total_bytes: int, device: str) -> dict:
    """float32 tensors on ``device`` shaped like benchmarks/states.py's (8 large ones
    holding 90 % of the bytes, 300 small ones the rest), made there (no host copy)."""
    import torch

    from states import LARGE_SHARE, LARGE_TENSORS, SMALL_TENSORS

    generator = torch.Generator(device=device).manual_seed(0)
    large = int(total_bytes * LARGE_SHARE / 4 / LARGE_TENSORS)
    small = int(total_bytes * (1 - LARGE_SHARE) / 4 / SMALL_TENSORS)
    state = {}
    for i in range(LARGE_TENSORS):
        state["layers.%d.weight" % i] = torch.randn(large, generator=generator, device=device)
    for i in range(SMALL_TENSORS):
        state["norms.%d.bias" % i] = torch.randn(small, generator=generator, device=device)
    return state


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def evict(root: Path) -> None:
    """Drop ``root``'s files from the page cache (written back first): the next read
    comes from the disk, as after a restart."""
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def reset_peak_rss() -> None:
    """Make VmHWM (peak resident memory) start again from the current resident size."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak then counts from the process start


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def touch_every_byte(state: dict) -> None:
    """The step's update: every byte changes, so no save dedups against the last."""
    for tensor in state.values():
        tensor.mul_(-1.0)


# -- the cases ----------------------------------------------------------------------------


class Bench:
    def __init__(self, work: Path, state: dict, samples):
        import torch

        self.torch = torch
        self.work = work
        self.state = state
        self.samples = samples
        self.nbytes = sum(t.numel() * t.element_size() for t in state.values())
        self.cuda = torch.cuda.is_available()
        self.host = torch.empty(self.nbytes, dtype=torch.uint8, pin_memory=self.cuda).fill_(1)

    def timed(self, case: str, action: Callable[[], object], quiet_disk: bool = False) -> float:
        from measure import timed, timed_from_quiet_disk

        synchronize()
        seconds = (timed_from_quiet_disk if quiet_disk else timed)(lambda: (action(), synchronize()))
        self.samples.add(case, seconds)
        return seconds

    def limits(self) -> None:
        from physical_limit import read_into, write_with_fdatasync

        tensors = list(self.state.values())
        if self.cuda:
            self.timed(D2H, lambda: self._copy(tensors, to_host=True))
            self.timed(H2D, lambda: self._copy(tensors, to_host=False))
        path = fresh(self.work / "limit") / "bytes"
        self.timed(WRITE, lambda: write_with_fdatasync(str(path), [self.host]), quiet_disk=True)
        evict(path.parent)
        self.timed(READ, lambda: read_into(self.host, [str(path)]))
        shutil.rmtree(path.parent)

    def _copy(self, tensors, to_host: bool) -> None:
        offset = 0
        for tensor in tensors:
            flat = tensor.view(-1).view(self.torch.uint8)
            host = self.host[offset : offset + flat.numel()]
            if to_host:
                host.copy_(flat, non_blocking=True)
            else:
                flat.copy_(host, non_blocking=True)
            offset += flat.numel()

    def ours(self) -> None:
        from engine_session import State, local_session

        from metaflow_extensions.implicit_checkpoint.engine.session import SessionOptions

        holder = State()
        holder.state = self.state
        root = fresh(self.work / "ours-sync")
        saver = local_session(root, holder)
        artifact = None

        def save():
            nonlocal artifact
            artifact = saver.save()

        self.timed(OURS_SYNC, save, quiet_disk=True)
        saver.finish()

        # The load: into the live tensors, from the disk.
        evict(root)
        loader = local_session(root, holder, attempt=1, rng=False)
        reset_peak_rss()
        baseline = peak_rss()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
            device_before = self.torch.cuda.memory_allocated()
        self.timed(OURS_LOAD, lambda: loader.load(artifact))
        self.samples.add(OURS_LOAD_HOST, peak_rss() - baseline)
        if self.cuda:
            self.samples.add(OURS_LOAD_DEVICE, self.torch.cuda.max_memory_allocated() - device_before)
        loader.finish()
        shutil.rmtree(root)

        # Background: a warm-up save first (the staging buffer is made once per session),
        # with a staging budget that holds the whole state (the default, 8 GiB, would save
        # the 10 GB state synchronously).
        root = fresh(self.work / "ours-background")
        background = local_session(root, holder, options=SessionOptions(staging_bytes=2 * self.nbytes))
        background.save(blocking=False)
        background.wait()
        touch_every_byte(self.state)
        os.sync()
        start = time.perf_counter()
        background.save(blocking=False)
        self.samples.add(OURS_BLOCKED, time.perf_counter() - start)
        touch_every_byte(self.state)  # the next step runs while the save commits
        background.wait()
        self.samples.add(OURS_COMMITTED, time.perf_counter() - start)
        background.finish()
        shutil.rmtree(root)

    def dcp(self) -> None:
        import torch.distributed.checkpoint as dcp

        no_dist = {"no_dist": True} if "no_dist" in inspect.signature(dcp.save).parameters else {}
        state = {"state": self.state}
        root = fresh(self.work / "dcp")
        self.timed(DCP_SAVE, lambda: dcp.save(state, checkpoint_id=str(root / "sync"), **no_dist), quiet_disk=True)
        evict(root)
        self.timed(DCP_LOAD, lambda: dcp.load(state, checkpoint_id=str(root / "sync"), **no_dist))

        options = dict(no_dist)
        if "async_stager" in inspect.signature(dcp.async_save).parameters:
            options["async_stager"] = pinned_stager(self.cuda)
        os.sync()
        start = time.perf_counter()
        response = dcp.async_save(state, checkpoint_id=str(root / "async"), **options)
        staged = getattr(response, "staging_completion", None)
        if staged is not None:
            staged.result()  # the state may change only once it is staged
        self.samples.add(DCP_BLOCKED, time.perf_counter() - start)
        touch_every_byte(self.state)
        getattr(response, "upload_completion", response).result()
        self.samples.add(DCP_COMMITTED, time.perf_counter() - start)
        shutil.rmtree(root)

    def torch_save(self) -> None:
        from measure import fsync_path

        path = fresh(self.work / "torch") / "state.pt"
        self.timed(TORCH_SAVE, lambda: self.torch.save(self.state, str(path)), quiet_disk=True)
        self.timed(TORCH_SAVE_FSYNC, lambda: fsync_path(str(path)))
        shutil.rmtree(path.parent)


def run_case(case: Callable[[], None]) -> None:
    """Run one group of cases; a failure (a torch without some dcp API, a full disk) is
    printed and the others still run: the GPU machine is at hand once."""
    try:
        case()
    except Exception as ex:  # noqa: BLE001 - reported, the run goes on
        print("  %s failed: %s: %s" % (case.__name__, type(ex).__name__, ex), flush=True)


def pinned_stager(pinned: bool):
    """dcp's stager with pinned memory (with CUDA), staging before async_save returns (so
    "blocked" is the copy, as ours)."""
    from torch.distributed.checkpoint import staging

    options = staging.StagingOptions(
        use_pinned_memory=pinned, use_shared_memory=False, use_async_staging=False, use_non_blocking_copy=pinned
    )
    return staging.DefaultStager(options)


# -- training throughput --------------------------------------------------------------------


def training_throughput(work: Path, seconds: float, every: float, device: str) -> Dict[str, float]:
    """Steps per second of a small transformer without checkpoints and with a background
    save every ``every`` seconds; the share kept, in %."""
    import torch

    from engine_session import State, local_session

    torch.manual_seed(0)
    width, layers, batch, sequence = (1024, 8, 16, 256) if device == "cuda" else (64, 2, 4, 16)
    layer = torch.nn.TransformerEncoderLayer(width, 16 if device == "cuda" else 4, 4 * width, batch_first=True)
    holder = State()
    holder.model = torch.nn.TransformerEncoder(layer, layers).to(device)
    holder.optimizer = torch.optim.AdamW(holder.model.parameters(), lr=1e-4)
    inputs = torch.randn(batch, sequence, width, device=device)

    def step():
        holder.optimizer.zero_grad(set_to_none=False)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = holder.model(inputs).float().pow(2).mean()
        loss.backward()
        holder.optimizer.step()

    def steps_per_second(save: Optional[Callable[[], object]]) -> float:
        steps, start = 0, time.perf_counter()
        next_save = start + every / 2  # saves at the middle of each interval: window/every of them
        while time.perf_counter() - start < seconds:
            if save is not None and time.perf_counter() >= next_save:
                save()
                next_save += every
            step()
            steps += 1
            if steps % 10 == 0:
                synchronize()  # the host may not run ahead of the device by more than this
        synchronize()
        return steps / (time.perf_counter() - start)

    warm_until = time.perf_counter() + min(5.0, seconds / 4)
    while time.perf_counter() < warm_until:
        step()  # warm-up: cuBLAS handles and autotuning, AdamW's state, clocks
    synchronize()
    root = fresh(work / "training")
    session = local_session(root, holder)
    session.save(blocking=False)  # the staging buffer is made once, before the window
    session.wait()
    without = steps_per_second(None)
    with_saves = steps_per_second(lambda: session.save(blocking=False))
    session.finish()
    saves = len(session.list()) - 1
    shutil.rmtree(root)
    state_bytes = sum(t.numel() * t.element_size() for t in holder.model.state_dict().values()) * 3
    return {
        "steps per second, no checkpoints": without,
        "steps per second, save(blocking=False) every %.3g s" % every: with_saves,
        "throughput kept (%)": 100.0 * with_saves / without,
        "saves in the window": saves,
        "state saved (bytes, model and AdamW)": state_bytes,
    }


# -- the report -----------------------------------------------------------------------------


def targets(samples) -> List[str]:
    """The issue's targets, checked on the medians (PASS/MISS), with the figures used."""
    def median(case: str) -> Optional[float]:
        figure = reported(samples, case)
        return figure.median if figure is not None else None

    def check(label: str, value: Optional[float], limit: Optional[float], better=lambda v, l: v <= l) -> str:
        if value is None or limit is None:
            return "n/a   %s (not measured here)" % label
        return "%s  %s: %.3f vs %.3f" % ("PASS" if better(value, limit) else "MISS", label, value, limit)

    from metaflow_extensions.implicit_checkpoint.engine.device_load import DEFAULT_BOUNCE_BYTES

    lines = []
    d2h, write, read, h2d = median(D2H), median(WRITE), median(READ), median(H2D)
    lines.append(check("background save blocked <= 1.2 x pinned D2H copy (s)", median(OURS_BLOCKED), d2h and 1.2 * d2h))
    lines.append(check("sync save <= 1.2 x (D2H + write + fdatasync) (s)", median(OURS_SYNC), d2h and write and 1.2 * (d2h + write)))
    lines.append(check("sync save faster than dcp.save (s)", median(OURS_SYNC), median(DCP_SAVE), lambda v, l: v < l))
    lines.append(check("load <= 1.2 x (read + H2D) (s)", median(OURS_LOAD), h2d and read and 1.2 * (read + h2d)))
    lines.append(check("load faster than dcp.load (s)", median(OURS_LOAD), median(DCP_LOAD), lambda v, l: v < l))
    host = median(OURS_LOAD_HOST)
    lines.append(check("load peak host memory over baseline <= 1.1 x bounce buffer (bytes)", host, 1.1 * DEFAULT_BOUNCE_BYTES if h2d else None))
    return lines


def reported(samples, case: str):
    """The figure of ``case``, or None when no reported round has a sample of it (it
    failed, or ran in the warm-up only)."""
    if case not in samples:
        return None
    try:
        return samples.figure(case)
    except ValueError:
        return None


def figures_json(samples) -> Dict[str, dict]:
    found = {case: reported(samples, case) for case in samples.cases()}
    return {case: figure.to_json() for case, figure in found.items() if figure is not None}


def report(size_gb: float, device: str, samples) -> List[str]:
    from measure import seconds

    lines = ["", "== %.3g GB %s state ==" % (size_gb, "CUDA" if device == "cuda" else "CPU (smoke)")]
    for case in samples.cases():
        figure = reported(samples, case)
        if figure is None:
            lines.append("  %-55s not measured (see the failure above)" % case)
        elif "(bytes)" in case:
            lines.append("  %-55s %.0f MB (%.0f to %.0f)" % (case, figure.median / MB, figure.low / MB, figure.high / MB))
        else:
            lines.append("  %-55s %s" % (case, seconds(figure)))
    lines += ["  targets:"] + ["    " + line for line in targets(samples)]
    return lines


def run_training(work: Path, args: argparse.Namespace, device: str) -> Dict[str, float]:
    print("\n== training throughput (CheckFreq's figure of merit) ==")
    try:
        training = training_throughput(work, args.train_seconds, args.save_every, device)
    except Exception as ex:  # noqa: BLE001 - reported, the run goes on
        print("  failed: %s: %s" % (type(ex).__name__, ex), flush=True)
        return {}
    for name, value in training.items():
        print("  %-55s %.2f" % (name, value))
    kept = training["throughput kept (%)"]
    print("  targets:\n    %s  throughput kept >= 99 %%: %.2f %%" % ("PASS" if kept >= 99.0 else "MISS", kept), flush=True)
    return training


def plan(args) -> List[str]:
    return [
        "gpu_bench plan:",
        "  sizes (GB): %s; %d reported round(s) per case after one warm-up" % (args.sizes, args.rounds),
        "  cases: " + "; ".join([D2H, H2D, WRITE, READ, OURS_SYNC, OURS_BLOCKED, OURS_COMMITTED, OURS_LOAD,
                                 DCP_SAVE, DCP_BLOCKED, DCP_COMMITTED, DCP_LOAD, TORCH_SAVE, TORCH_SAVE_FSYNC]),
        "  training: a transformer for %.0f s without checkpoints, %.0f s with save(blocking=False) every %.3g s"
        % (args.train_seconds, args.train_seconds, args.save_every),
        "  work folder: %s" % (args.work or "a temporary folder in benchmarks/"),
    ]


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        print("\n".join(plan(args)))
        return 0
    import torch

    from measure import Rounds

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("gpu_bench: no CUDA device here; run with --smoke to check the code on CPU, --dry-run for the plan.")
        return 2
    device = "cuda" if cuda else "cpu"
    print("\n".join(plan(args)))
    print("device: %s; torch %s" % (torch.cuda.get_device_name(0) if cuda else "CPU (smoke)", torch.__version__))
    results: Dict[str, dict] = {}
    work_parent = Path(args.work) if args.work else HERE
    work_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=str(work_parent), prefix="work-gpu-") as tmp:
        work = Path(tmp)
        # The training figure right after the smallest state: a run cut short by a time
        # limit still has it.
        sizes = sorted(args.sizes)
        for number, size_gb in enumerate(sizes):
            if number == 1:
                results["training"] = run_training(work, args, device)
            state = device_state(int(size_gb * GB), device)
            samples = Rounds()
            bench = Bench(work, state, samples)
            for _ in range(args.rounds + 1):
                for case in (bench.limits, bench.ours, bench.dcp, bench.torch_save):
                    run_case(case)
                samples.next_round()
            print("\n".join(report(size_gb, device, samples)), flush=True)
            results["%.3g GB" % size_gb] = figures_json(samples)
            del state, bench
            if cuda:
                torch.cuda.empty_cache()
        if "training" not in results:
            results["training"] = run_training(work, args, device)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print("figures written to %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
