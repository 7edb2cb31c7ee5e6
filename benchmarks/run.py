"""Run the benchmark suite and write benchmarks/RESULTS.md.

    make bench                      # everything, as reported
    python benchmarks/run.py --quick   # fewer repeats, 100 MB only (a smoke run)
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import local_io  # noqa: E402
import task_overhead  # noqa: E402

MB = 1024 * 1024


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return "%s, %d cores, Python %s, %s" % (cpu, os.cpu_count(), platform.python_version(), platform.system())


def ratio(peer: float, ours: float) -> str:
    return "%.2fx" % (peer / ours) if ours > 0 else "n/a"


def report(io_results: dict, overhead: dict, tiny_rate: float, args) -> str:
    sizes = sorted(io_results)
    lines = [
        "# Benchmark results",
        "",
        "Command: `make bench` (`python benchmarks/run.py%s`), %s." % (" --quick" if args.quick else "", time.strftime("%Y-%m-%d")),
        "Machine: %s. Local disk (ext4). Each figure is the median of %d runs after a warm-up run;"
        " every save starts from an empty store." % (machine(), args.repeats),
        "",
        "## Save, load and inspect of a torch state dict on local disk",
        "",
        "8 large float32 tensors (90 % of the bytes) and 300 small ones. Seconds.",
        "",
        "| case | " + " | ".join("%d MB" % (io_results[s]["bytes"] // MB) for s in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    cases = list(io_results[sizes[0]]["cases"])
    for case in cases:
        lines.append(
            "| %s | " % case
            + " | ".join("%.4f" % io_results[s]["cases"][case] for s in sizes)
            + " |"
        )
    lines += ["", "### Ratios (peer time / our time; above 1 means we are faster)", ""]
    for s in sizes:
        c = io_results[s]["cases"]
        label = "%d MB" % (io_results[s]["bytes"] // MB)
        lines += [
            "- %s sync save vs safetensors save_file, both with fsync: **%s**" % (label, ratio(c["safetensors save_file (fsync)"], c["ours save (fsync)"])),
            "- %s sync save vs safetensors save_file, both without fsync: **%s**" % (label, ratio(c["safetensors save_file (no fsync)"], c["ours save (no fsync)"])),
            "- %s sync save vs torch.save, both with fsync: **%s**" % (label, ratio(c["torch.save (fsync)"], c["ours save (fsync)"])),
            "- %s load vs torch.load: **%s** (our load takes %.2f of torch.load's time)" % (label, ratio(c["torch.load"], c["ours load"]), c["ours load"] / c["torch.load"]),
            "- %s re-save unchanged: %.1f %% of the first save's time" % (label, 100 * c["ours re-save unchanged (fsync)"] / c["ours save (fsync)"]),
            "- %s inspect: %.2f ms" % (label, 1000 * c["ours inspect"]),
        ]
    lines += [
        "",
        "## Per-task cost of @checkpoint",
        "",
        "A two-step flow that saves nothing, run %d times plain and %d times with"
        " `--with checkpoint` (interleaved)." % (args.pairs, args.pairs),
        "",
        "- plain run: %.3f s, with @checkpoint on both steps: %.3f s" % (overhead["plain_run"], overhead["checkpoint_run"]),
        "- added per task: **%.3f s**" % overhead["per_task"],
        "",
        "## Tiny states",
        "",
        "- saves per second of a three-field state (fsync on): **%.0f**" % tiny_rate,
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 MB only, fewer repeats")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    args.repeats = 2 if args.quick else 5
    args.pairs = 3 if args.quick else 10
    sizes = [100 * MB] if args.quick else [100 * MB, 1024 * MB]
    os.environ.setdefault("USERNAME", "bench")

    with tempfile.TemporaryDirectory(dir=str(HERE), prefix="work-") as tmp:
        work = Path(tmp)
        io_results = {}
        for size in sizes:
            print("local I/O, %d MB ..." % (size // MB), flush=True)
            io_results[size] = local_io.run(work, size, args.repeats)
        print("@checkpoint task overhead ...", flush=True)
        overhead = task_overhead.decorator_overhead(work, args.pairs)
        print("tiny saves ...", flush=True)
        tiny_rate = task_overhead.tiny_saves_per_second(work, 300 if args.quick else 2000)
    text = report(io_results, overhead, tiny_rate, args)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
