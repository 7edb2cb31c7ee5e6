"""Run the benchmark suite and write benchmarks/RESULTS.md.

    make bench                          # everything, as reported
    python benchmarks/run.py --quick    # 100 MB only, fewer repeats (a smoke run)
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import local_io  # noqa: E402
import peer_metaflow_checkpoint  # noqa: E402
import peer_s3  # noqa: E402
import s3_io  # noqa: E402
import task_overhead  # noqa: E402

MB = 1024 * 1024
GB = 1024 * MB


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return "%s, %d cores, Python %s, %s" % (cpu, os.cpu_count(), platform.python_version(), platform.system())


def memory(work: Path, size: int, mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(HERE / "memory_probe.py"), str(work), str(size), mode],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


class Report:
    def __init__(self):
        self.lines = []
        self.targets = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def target(self, what: str, measured: str, met: bool) -> None:
        self.targets.append("| %s | %s | %s |" % (what, measured, "met" if met else "**missed**"))


def build_report(results: dict, args) -> str:
    r = Report()
    io, peer = results["io"], results["peer"]
    sizes = sorted(io)
    label = {s: "%d MB" % round(io[s]["bytes"] / MB) for s in sizes}
    r.add(
        "# Benchmark results",
        "",
        "Command: `make bench` (`python benchmarks/run.py%s`), run on %s."
        % (" --quick" if args.quick else "", time.strftime("%Y-%m-%d")),
        "Machine: %s; local ext4 disk. Each figure is the median of %d rounds after a warm-up"
        " round; every round starts from an empty store, and every timed save from a quiet"
        " disk (os.sync() first)." % (machine(), args.repeats),
        "State: a torch state dict of float32 tensors, 8 large ones (90 % of the bytes) and 300"
        " small ones. \"10 % changed\" rewrites every tenth tensor in place.",
        "",
        "## Seconds, local disk",
        "",
        "| case | " + " | ".join(label[s] for s in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    )
    for case in io[sizes[0]]["cases"]:
        r.add("| %s | " % case + " | ".join("%.4f" % io[s]["cases"][case] for s in sizes) + " |")
    r.add(
        "| metaflow-checkpoint: torch.save + its save() | "
        + " | ".join("%.4f" % peer[s]["save"] for s in sizes) + " |",
        "| metaflow-checkpoint: its load() + torch.load | "
        + " | ".join("%.4f" % peer[s]["load"] for s in sizes) + " |",
        "",
        "metaflow-checkpoint 0.2.14 runs in its own virtualenv (it also registers `@checkpoint`),"
        " on the local datastore, with its card off; its local save copies files without fsync.",
        "",
    )
    for s in sizes:
        c, w = io[s]["cases"], io[s]["written"]
        r.add(
            "Bytes written by a re-save of the unchanged %s state: %d (sync), %d (background)."
            % (label[s], w["sync re-save, unchanged"], w["background re-save, unchanged"])
        )
    r.add("", "## Ratios (peer time / our time: above 1 means we are faster)", "")
    for s in sizes:
        c = io[s]["cases"]
        ours = c["ours sync save (fsync)"]
        r.add(
            "- %s sync save vs safetensors save_file, both with fsync: **%.2fx**; both without: **%.2fx**"
            % (label[s], c["safetensors save_file (fsync)"] / ours,
               c["safetensors save_file (no fsync)"] / c["ours sync save (no fsync)"]),
            "- %s sync save vs torch.save, both with fsync: **%.2fx**" % (label[s], c["torch.save (fsync)"] / ours),
            "- %s sync save vs torch.save + metaflow-checkpoint's save(), both without fsync: **%.2fx**;"
            " ours with fsync: **%.2fx**"
            % (label[s], peer[s]["save"] / c["ours sync save (no fsync)"], peer[s]["save"] / ours),
            "- %s load vs torch.load: ours takes **%.2f** of its time; vs metaflow-checkpoint's load: **%.2fx**"
            % (label[s], c["ours load"] / c["torch.load"], peer[s]["load"] / c["ours load"]),
        )
    s3, peer_s3_results = results["s3"], results["peer_s3"]
    r.add(
        "",
        "## Seconds, S3 (moto server on 127.0.0.1, in its own process)",
        "",
        "%d rounds after a warm-up. moto keeps objects in memory and reads a whole object for"
        " every ranged GET, so absolute figures say little about AWS; the ratios compare two"
        " clients of the same server." % args.s3_repeats,
        "",
        "| case | " + " | ".join(label[s] for s in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    )
    for case in s3[sizes[0]]["cases"]:
        r.add("| %s | " % case + " | ".join("%.4f" % s3[s]["cases"][case] for s in sizes) + " |")
    r.add(
        "| metaflow-checkpoint: torch.save + its save() | "
        + " | ".join("%.4f" % peer_s3_results[s]["save"] for s in sizes) + " |",
        "| metaflow-checkpoint: its load() + torch.load | "
        + " | ".join("%.4f" % peer_s3_results[s]["load"] for s in sizes) + " |",
        "",
    )
    for s in sizes:
        c = s3[s]["cases"]
        r.add(
            "- %s on S3: save **%.2fx** faster than torch.save + metaflow-checkpoint's save(); load **%.2fx**"
            " faster than its load() + torch.load"
            % (label[s], peer_s3_results[s]["save"] / c["ours save (s3)"],
               peer_s3_results[s]["load"] / c["ours load (s3)"]),
        )

    big = max(sizes)
    c, w = io[big]["cases"], io[big]["written"]
    mem = results["memory"]
    r.add(
        "",
        "## Memory (%s state, fresh process)" % label[big],
        "",
        "- sync save: peak resident memory %.2f x the state size (the state itself included)"
        % (mem["sync"]["peak"] / mem["sync"]["bytes"]),
        "- background save: %.2f x (the state plus its staging copy)" % (mem["background"]["peak"] / mem["background"]["bytes"]),
        "",
        "## Per task and tiny states",
        "",
        "- @checkpoint on a task that saves nothing adds **%.3f s** with `card=False`, and **%.3f s**"
        " with its card (Metaflow renders a card in a subprocess at task end, and waits for it)."
        " Two-step flow, %d runs of each variant, interleaved; medians per run: %s."
        % (results["overhead"]["per_task"]["checkpoint, card off"],
           results["overhead"]["per_task"]["checkpoint"], args.pairs,
           ", ".join("%s %.3f s" % kv for kv in results["overhead"]["runs"].items())),
        "- tiny states (three fields, fsync on): **%.0f** saves per second" % results["tiny_rate"],
        "",
    )
    r.target("background save of %s blocks <= 0.15 s (steady state: all tensors changed)" % label[big],
             "%.3f s (first save, buffer allocated: %.3f s)" % (c["ours background save, all changed: blocking"], c["ours background save, first: blocking"]),
             c["ours background save, all changed: blocking"] <= 0.15)
    r.target("background re-save with nothing changed blocks <= 0.02 s",
             "%.4f s" % c["ours background re-save, unchanged: blocking"],
             c["ours background re-save, unchanged: blocking"] <= 0.02)
    r.target("re-save with nothing changed writes < 0.1 % of the state",
             "%.4f %%" % (100.0 * w["background re-save, unchanged"] / io[big]["bytes"]),
             w["background re-save, unchanged"] < 0.001 * io[big]["bytes"])
    st = c["safetensors save_file (fsync)"] / c["ours sync save (fsync)"]
    r.target("sync save >= 1.2x faster than safetensors save_file (both fsync)", "%.2fx" % st, st >= 1.2)
    pe = peer[big]["save"] / c["ours sync save (no fsync)"]
    r.target(
        "sync save >= 3x faster than torch.save + metaflow-checkpoint save() (both without fsync;"
        " ours with fsync: %.2fx)" % (peer[big]["save"] / c["ours sync save (fsync)"]),
        "%.2fx" % pe,
        pe >= 3,
    )
    lo = c["ours load"] / c["torch.load"]
    r.target("load within 1.1x of torch.load", "%.2f of torch.load's time" % lo, lo <= 1.1)
    r.target("inspect of a %s checkpoint < 20 ms" % label[big], "%.2f ms" % (1000 * c["ours inspect"]), c["ours inspect"] < 0.02)
    r.target("tiny-state saves >= 1000 per second", "%.0f/s" % results["tiny_rate"], results["tiny_rate"] >= 1000)
    added = results["overhead"]["per_task"]
    r.target("@checkpoint adds < 0.05 s to a task (card off / card on)",
             "%.3f s / %.3f s" % (added["checkpoint, card off"], added["checkpoint"]),
             added["checkpoint, card off"] < 0.05)
    ms, mb = mem["sync"]["peak"] / mem["sync"]["bytes"], mem["background"]["peak"] / mem["background"]["bytes"]
    r.target("peak memory, sync save <= state size + 10 %", "%.2fx" % ms, ms <= 1.10)
    r.target("peak memory, background save <= 2x state size + 10 %", "%.2fx" % mb, mb <= 2.10)
    header = r.lines[: r.lines.index("## Seconds, local disk")]
    return "\n".join(
        header
        + ["## Targets", "", "| target | measured | |", "|---|---|---|"]
        + r.targets
        + [""]
        + r.lines[len(header):]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 MB only, fewer repeats")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    args.repeats = 2 if args.quick else 5
    args.pairs = 3 if args.quick else 10
    args.s3_repeats = 1 if args.quick else 2
    sizes = [100 * MB] if args.quick else [100 * MB, GB]
    os.environ.setdefault("USERNAME", "bench")

    results = {"io": {}, "peer": {}}
    with tempfile.TemporaryDirectory(dir=str(HERE), prefix="work-") as tmp:
        work = Path(tmp)
        for size in sizes:
            print("local I/O, %d MB ..." % (size // MB), flush=True)
            results["io"][size] = local_io.run(work, size, args.repeats)
            print("metaflow-checkpoint, %d MB ..." % (size // MB), flush=True)
            results["peer"][size] = peer_metaflow_checkpoint.measure(work, size, args.repeats)
        results["s3"], results["peer_s3"] = {}, {}
        for size in sizes:
            print("S3, %d MB ..." % (size // MB), flush=True)
            results["s3"][size] = s3_io.run(work, size, args.s3_repeats)
            print("metaflow-checkpoint on S3, %d MB ..." % (size // MB), flush=True)
            results["peer_s3"][size] = peer_s3.measure(work, size, args.s3_repeats)
        print("memory ...", flush=True)
        results["memory"] = {mode: memory(work, max(sizes), mode) for mode in ("sync", "background")}
        print("@checkpoint task overhead ...", flush=True)
        results["overhead"] = task_overhead.decorator_overhead(work, args.pairs)
        print("tiny saves ...", flush=True)
        results["tiny_rate"] = task_overhead.tiny_saves_per_second(work, 300 if args.quick else 2000)
    text = build_report(results, args)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
