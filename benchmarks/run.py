"""The rest of the benchmarks (peers, S3, memory, gang, training throughput, task overhead):
`make bench-full` runs it after the headline (headline.py), into benchmarks/RESULTS-full.md
(and the raw samples, RESULTS-full.json).

    make bench-full                     # the headline, then everything here (about 75 minutes
                                        # on this 2-core VM, 25 of them training throughput)
    python benchmarks/run.py --quick    # small states, 2 rounds: a smoke run of every case

Every figure is the median and range (min-max) of its rounds after a warm-up round; ours
and the peers run interleaved within each round, and every ratio is computed round by
round (ours and the peer of the same round) before taking its median and range.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import local_io  # noqa: E402
import peer_metaflow_checkpoint  # noqa: E402
import s3_io  # noqa: E402
import task_overhead  # noqa: E402
import training_throughput  # noqa: E402
from measure import Figure, Rounds, machine, plain, ratio, seconds  # noqa: E402
from states import nbytes, state_dict  # noqa: E402

MB = 1024 * 1024


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def probe(script: str, *args) -> dict:
    """Run a measuring script of this folder in a fresh process; its JSON output."""
    out = subprocess.run(
        [sys.executable, str(HERE / script), *map(str, args)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return json.loads(out[out.index("{"):])


# -- measuring ------------------------------------------------------------------------------


def measure_all(args, work: Path, log: Callable[[str], None]) -> dict:
    results = {"load_before": load_average()}
    state = state_dict(args.size)
    results["bytes"] = nbytes(state)

    def metaflow_checkpoint_local(rounds: Rounds) -> None:
        measured = peer_metaflow_checkpoint.measure(work, args.size, 1)
        rounds.add("metaflow-checkpoint: torch.save + its save() (no fsync)", measured["save"][0])
        rounds.add("metaflow-checkpoint: its load() + torch.load", measured["load"][0])

    local = Rounds()
    for r in range(args.rounds + 1):
        log("local disk, round %d of %d (0 = warm-up) ..." % (r, args.rounds))
        results["written"] = local_io.run_round(local, work, state, metaflow_checkpoint_local)
        local.next_round()
    results["local"] = local
    del state

    log("memory ...")
    results["memory"] = {
        mode: probe("memory_probe.py", work, args.size, mode) for mode in ("sync", "background")
    }
    results["memory"]["resume"] = probe("resume_memory_probe.py", work / "resume", args.resume_size)
    log("what sound change detection costs ...")
    results["soundness"] = probe("soundness_cost.py", args.size // MB, args.rounds)
    log("a 2-node gang's global commit ...")
    results["gang"] = probe("gang_commit.py", args.gang_mb, args.rounds)

    s3 = Rounds()
    s3_state = state_dict(args.s3_size)
    results["s3_bytes"] = nbytes(s3_state)
    for r in range(args.rounds + 1):
        log("S3, round %d of %d ..." % (r, args.rounds))
        results["s3_objects"] = s3_io.run_round(s3, work, s3_state, args.s3_size)
        s3.next_round()
    results["s3"] = s3
    del s3_state

    log("training throughput ...")
    results["training"] = training_throughput.run(
        work, args.train_window, args.train_interval, args.train_rounds, args.train_layers
    )
    results["training_state_bytes"] = training_throughput.saved_state_bytes(args.train_layers)
    results["training_lost"] = training_throughput.run_seconds_lost_per_save(
        args.train_saves, args.train_horizon, args.train_layers, work
    )

    log("@checkpoint task overhead ...")
    results["overhead"] = task_overhead.decorator_overhead(work, args.overhead_rounds)
    log("tiny saves ...")
    results["tiny"] = task_overhead.tiny_saves_per_second(work, args.tiny_saves, args.rounds)
    results["load_after"] = load_average()
    return results


# -- reporting ------------------------------------------------------------------------------


class Report:
    def __init__(self):
        self.lines: List[str] = []
        self.targets: List[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def target(self, what: str, figure: Figure, shown: str, met: Callable[[float], bool]) -> None:
        if met(figure.median):
            verdict = "met" if all(met(v) for v in figure.samples) else "met by the median, not in every round"
        else:
            verdict = "**missed**"
        self.targets.append("| %s | %s | %s |" % (what, shown, verdict))

    def table(self, rows: List[Tuple[str, ...]], header: Tuple[str, ...]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        self.add(*("| " + " | ".join(row) + " |" for row in rows))
        self.add("")


def ratio_rows(rounds: Rounds, pairs: List[Tuple[str, str, str]]) -> List[Tuple[str, ...]]:
    """Rows of (what, ours, peer, ours / peer) for the pairs present."""
    rows = []
    for label, ours, peer in pairs:
        if ours in rounds and peer in rounds:
            rows.append((label, seconds(rounds.figure(ours)), "%s: %s" % (peer, seconds(rounds.figure(peer))),
                         ratio(rounds.ratio(ours, peer))))
    return rows


DCP_PAIRS = [
    ("sync save, fsync", "ours sync save (fsync)", "dcp.save (fsync)"),
    ("sync save, no fsync", "ours sync save (no fsync)", "dcp.save (no fsync)"),
    ("background save, first of the process: blocking", "ours background save, first: blocking",
     "dcp.async_save, first: blocking"),
    ("background save, first: until committed", "ours background save, first: until committed",
     "dcp.async_save, first: until committed"),
    ("background save, all changed, again: blocking", "ours background save, all changed: blocking",
     "dcp.async_save, again: blocking"),
    ("background save, all changed, again: until committed", "ours background save, all changed: until committed",
     "dcp.async_save, again: until committed"),
    ("background save, again, vs DCP with a cached staging copy: blocking",
     "ours background save, all changed: blocking", "dcp.async_save, staging cached, again: blocking"),
    ("background save, again, vs DCP with a cached staging copy: until committed",
     "ours background save, all changed: until committed", "dcp.async_save, staging cached, again: until committed"),
    ("load (ours: new tensors; DCP: in place)", "ours load", "dcp.load into a preallocated state dict"),
]

LIMIT_PAIRS = [
    ("sync save, fsync: all bytes", "ours sync save (fsync)", "limit: write all bytes + fdatasync"),
    ("sync re-save, 10% changed", "ours sync re-save, 10% changed", "limit: write 10% changed bytes + fdatasync"),
    ("background save, all changed: blocking", "ours background save, all changed: blocking",
     "limit: memcpy of all bytes"),
    ("background re-save, 10% changed: blocking", "ours background re-save, 10% changed: blocking",
     "limit: memcpy of 10% changed bytes"),
    ("load", "ours load", "limit: read the stored bytes from page cache"),
]

OTHER_PAIRS = [
    ("sync save, fsync", "ours sync save (fsync)", "safetensors save_file (fsync)"),
    ("sync save, no fsync", "ours sync save (no fsync)", "safetensors save_file (no fsync)"),
    ("sync save, fsync", "ours sync save (fsync)", "torch.save (fsync)"),
    ("sync save, no fsync", "ours sync save (no fsync)", "torch.save (no fsync)"),
    ("sync save, both no fsync", "ours sync save (no fsync)", "metaflow-checkpoint: torch.save + its save() (no fsync)"),
    ("sync save, ours fsync, theirs not", "ours sync save (fsync)",
     "metaflow-checkpoint: torch.save + its save() (no fsync)"),
    ("load", "ours load", "torch.load"),
    ("load", "ours load", "safetensors load_file"),
    ("load", "ours load", "metaflow-checkpoint: its load() + torch.load"),
]


def gang_section(r: Report, gang: dict) -> None:
    r.add("## A 2-node gang's global commit (%d MB of per-rank state per node, %d rounds)"
          % (gang["mb_per_node"], gang["rounds"]), "",
          "Two processes stand for the nodes of a @parallel gang on this machine, sharing one local"
          " store; every tensor changed before each save, fsync on. Each round both start together and"
          " save as the gang's nodes (their parts, then node 0's global commit) and, in alternating"
          " order, each as a task of its own. The gang figure is the slower node's time; the overhead"
          " is that minus the slower node's solo save of the same round. benchmarks/gang_commit.py.", "")
    r.table([("%s: %s" % (case, label), "%.3f (%.3f to %.3f)" % (f["median"], f["min"], f["max"]))
             for case, figures in gang["cases"].items() for label, f in figures.items()],
            ("case (seconds, or ratio)", "median (min to max)"))


def build_report(results: dict, args, elapsed: float) -> str:
    r = Report()
    local, s3 = results["local"], results["s3"]
    size_label = "%d MB" % round(results["bytes"] / MB)
    r.add(
        "# Benchmark results",
        "",
        "Command: `make bench-full` (`python benchmarks/run.py%s`), run on %s (UTC); the whole run took %.0f min."
        % (" --quick" if args.quick else "", time.strftime("%Y-%m-%d %H:%M", time.gmtime()), elapsed / 60),
        "Machine: %s; local ext4 disk on a VM (its throughput swings between 0.5 and 4 GB/s)."
        " Load average (1, 5, 15 min) at the start: %s; at the end: %s (other work ran on the machine)."
        % (machine(), results["load_before"], results["load_after"]),
        "",
        "Method: %d rounds after a warm-up round. Within a round, ours and every peer run one after the"
        " other (ours, then each peer, then ours for the next operation), so the disk's changing speed"
        " hits both within the same minute; each timed save starts from a quiet disk (os.sync() first)."
        " All but metaflow-checkpoint run in this one process, on the same state."
        " Every figure is **median (min-max)** over the rounds; every ratio is computed within each round"
        " and then summarized the same way. Ours runs with its defaults (rng=True, fsync, card on);"
        " other settings are extra rows." % args.rounds,
        "State: a %s torch state dict of float32 tensors, 8 large ones (90 %% of the bytes) and 300 small"
        " ones, in this process. \"10 %% changed\" rewrites every tenth tensor in place; \"all changed\""
        " rewrites every tensor." % size_label,
        "",
        "Durability: ours fdatasyncs each blob and the manifest, renames each into place and fsyncs the"
        " directory; %s; safetensors and torch.save rows fsync their one file. \"no fsync\" rows do none"
        " of it. Ratios below are **ours / peer** (below 1: ours takes less time)." % local_io.DCP_DURABILITY,
        "",
    )
    header_end = len(r.lines)

    r.add("## Against torch.distributed.checkpoint (DCP), same state, same process", "",
          "DCP runs without a process group (single process), with FileSystemWriter/Reader on the same"
          " disk; `dcp.async_save` by default stages a new CPU copy on every call; a `DefaultStager` kept"
          " across calls (\"cached staging copy\") keeps it, like our staging buffer.", "")
    r.table(ratio_rows(local, DCP_PAIRS), ("", "ours", "DCP", "ours / DCP"))

    r.add("## Against the physical limit", "",
          "The same bytes moved by the simplest code that can move them: the changed bytes written to"
          " one file with fdatasync (dd-style, same filesystem, one stream), a memcpy of the changed"
          " bytes into a preallocated buffer, a read of our stored files from the page cache into a"
          " preallocated buffer. Ours / limit is the figure we compete on.", "")
    r.table(ratio_rows(local, LIMIT_PAIRS), ("", "ours", "limit", "ours / limit"))

    r.add("## Against safetensors, torch.save and metaflow-checkpoint", "",
          "metaflow-checkpoint 0.2.14 runs in its own virtualenv (it also registers `@checkpoint`), on"
          " the local datastore, card off; its local save copies files without fsync. Its run (a"
          " flow with one untimed and one timed save and load) is part of each round. safetensors `load_file`"
          " maps the file: its tensors' bytes are read on first touch, after the timer stops.", "")
    r.table(ratio_rows(local, OTHER_PAIRS), ("", "ours", "peer", "ours / peer"))

    r.add("## All local cases, seconds", "")
    r.table([(case, seconds(local.figure(case), 4)) for case in local.cases()], ("case", "median (min-max)"))
    w = results["written"]
    r.add("Bytes written by a re-save of the unchanged %s state: %d (sync), %d (background)."
          % (size_label, w["sync re-save, unchanged"], w["background re-save, unchanged"]), "")

    t = results["training"]
    r.add("## Training throughput with checkpoints", "",
          training_throughput.describe(args.train_layers, args.train_window, args.train_interval,
                                       args.train_rounds), "")
    r.table(training_throughput.rows(t), ("case", "median (min-max)"))
    r.add(training_throughput.describe_lost(args.train_layers, args.train_saves, args.train_horizon), "")
    r.table(training_throughput.lost_rows(results["training_lost"], args.train_interval), ("case", "median (min-max)"))

    r.add("## S3 (moto server on 127.0.0.1)", "",
          "State: %d MB, smaller than on local disk to keep the run short (metaflow-checkpoint's load of"
          " a 1 GB state took 85 s on moto). Ours wrote %d objects per save. What the figures measure:"
          % (round(results["s3_bytes"] / MB), results["s3_objects"]), "",
          "- Equal server state: in every round each client gets a fresh moto server of its own (in its"
          " own process), and each timed save follows one untimed save of the same state on that server.",
          "- Equal object sizes: \"boto3, same objects\" is plain `put_object` / `get_object` of objects"
          " with exactly the sizes and count of the blobs our save wrote, from and into memory, %d"
          " requests at a time like our store: what our client adds over moving those bytes in those"
          " requests." % s3_io.S3_BLOB_WORKERS,
          "- metaflow-checkpoint stores one torch.save file and reads it back with Metaflow's S3 client,"
          " which downloads a large object in ranged parts; moto reads the whole object for each ranged"
          " GET, so its load figure measures moto, and no load ratio against it is reported.", "")
    r.table([(case, seconds(s3.figure(case), 4)) for case in s3.cases()], ("case", "median (min-max)"))
    r.table(
        [(label, ratio(s3.ratio(a, b))) for label, a, b in (
            ("ours save / boto3 put_object of the same objects", "ours save", "boto3, same objects: put_object of each"),
            ("ours load / boto3 get_object of the same objects", "ours load", "boto3, same objects: get_object of each"),
            ("ours save / metaflow-checkpoint's torch.save + save()", "ours save",
             "metaflow-checkpoint: torch.save + its save()"),
        )],
        ("ratio", "median (min-max)"),
    )

    mem = results["memory"]
    ms, mb = mem["sync"]["peak"] / mem["sync"]["bytes"], mem["background"]["peak"] / mem["background"]["bytes"]
    resume = mem["resume"]
    mr = resume["peak"] / resume["bytes"]
    r.add("## Memory (%s state, fresh process, one run each)" % size_label, "",
          "- sync save: peak resident memory %.2f x the state size (the state itself included)" % ms,
          "- background save: %.2f x (the state plus its staging copy)" % mb,
          "- resume into a live model of %s (a retry that built its model, then load()): peak %.3f x"
          " the model (benchmarks/resume_memory_probe.py)" % ("%d MB" % round(resume["bytes"] / MB), mr), "")
    r.add("## What sound change detection costs (%s state, %d rounds)" % (size_label, args.rounds), "",
          "Default: every save hashes (sync) or copies (background) every tensor, so a checkpoint"
          " holds the bytes live at save(). Opt-in METAFLOW_CHECKPOINT_TRACK_CHANGES=1 trusts torch's"
          " version counters (unsound for writes through .data). benchmarks/soundness_cost.py.", "")
    r.table([(case, "%.4g (%.4g to %.4g)" % (f["median"], f["min"], f["max"]))
             for case, f in results["soundness"].items()], ("case (seconds, bytes or ratio)", "median (min to max)"))

    gang_section(r, results["gang"])

    o, tiny = results["overhead"], results["tiny"]
    r.add("## Per task and tiny states", "",
          "Two-step flow (start -> end) saving nothing; each round runs the three variants one after the"
          " other; \"added per task\" is (variant - plain) / 2 within a round. Metaflow renders a card in a"
          " subprocess at task end and waits for it. Tiny state: three fields, fsync on, %d saves per"
          " sample." % args.tiny_saves, "")
    r.table([(case, seconds(o.figure(case))) for case in o.cases()]
            + [(case, plain(tiny.figure(case), "%.0f", "/s")) for case in tiny.cases()],
            ("case", "median (min-max)"))

    # -- targets, judged on defaults ---------------------------------------------------------
    big = results["bytes"]
    f = local.figure("ours background save, all changed: blocking")
    r.target("background save of %s blocks <= 0.15 s (all tensors changed, staging buffer allocated)"
             % size_label, f, seconds(f), lambda v: v <= 0.15)
    f = local.figure("ours background re-save, unchanged: blocking")
    r.target("background re-save with nothing changed blocks <= 0.02 s", f, seconds(f, 4), lambda v: v <= 0.02)
    share = Figure([100.0 * w["background re-save, unchanged"] / big])
    r.target("re-save with nothing changed writes < 0.1 % of the state", share, "%.4f %%" % share.median,
             lambda v: v < 0.1)
    f = local.ratio("ours sync save (fsync)", "safetensors save_file (fsync)")
    r.target("sync save >= 1.2x faster than safetensors save_file, both fsync (ours / theirs <= 0.83)",
             f, ratio(f), lambda v: v <= 1 / 1.2)
    f = local.ratio("ours sync save (no fsync)", "metaflow-checkpoint: torch.save + its save() (no fsync)")
    r.target("sync save >= 3x faster than torch.save + metaflow-checkpoint save(), both no fsync"
             " (ours / theirs <= 0.33)", f, ratio(f), lambda v: v <= 1 / 3)
    f = local.ratio("ours load", "torch.load")
    r.target("load within 1.1x of torch.load (ours / theirs <= 1.1)", f, ratio(f), lambda v: v <= 1.1)
    f = local.figure("ours inspect, fresh process")
    r.target("inspect of a %s checkpoint < 20 ms, fresh process and store (cached: %s)"
             % (size_label, seconds(local.figure("ours inspect, cached"), 5)), f, seconds(f, 5), lambda v: v < 0.02)
    f = tiny.figure("tiny saves per second (defaults: rng=True)")
    r.target("tiny-state saves >= 1000 per second (defaults: rng=True)", f, plain(f, "%.0f", "/s"),
             lambda v: v >= 1000)
    f = o.figure("added per task: checkpoint (defaults: card on)")
    r.target("@checkpoint adds < 0.05 s to a task (defaults: card on; card=False: %s)"
             % seconds(o.figure("added per task: checkpoint, card=False")), f, seconds(f), lambda v: v < 0.05)
    lost = results["training_lost"]
    kept = {name: training_throughput.kept_at(lost, name, args.train_interval)
            for name in (training_throughput.OURS, training_throughput.DCP)}
    f = kept[training_throughput.OURS]
    r.target("a training loop saving %d MiB in the background every %.0f s keeps >= 97 %% of its"
             " throughput (from the seconds lost per save; dcp.async_save: %s; %.0f s windows: %s)"
             % (round(results["training_state_bytes"] / MB), args.train_interval,
                plain(kept[training_throughput.DCP], "%.1f", " %"), args.train_window,
                plain(t.figure("throughput kept: %s" % training_throughput.OURS), "%.1f", " %")),
             f, plain(f, "%.1f", " %"), lambda v: v >= 97.0)
    r.target("peak memory, sync save <= state size + 10 %", Figure([ms]), "%.2fx" % ms, lambda v: v <= 1.10)
    r.target("peak memory, background save <= 2x state size + 10 %", Figure([mb]), "%.2fx" % mb, lambda v: v <= 2.10)
    r.target("peak memory, resume into a live model <= 1.1x the model", Figure([mr]), "%.3fx" % mr, lambda v: v <= 1.10)

    return "\n".join(
        r.lines[:header_end]
        + ["## Targets (judged on defaults)", "", "| target | measured: median (min-max) | |", "|---|---|---|"]
        + r.targets
        + [""]
        + r.lines[header_end:]
    )


def raw_samples(results: dict) -> dict:
    return {k: (v.to_json() if isinstance(v, Rounds) else v) for k, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small states, 2 rounds: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds after the warm-up (default 5; --quick: 2)")
    parser.add_argument("--output", default=str(HERE / "RESULTS-full.md"))
    tt = training_throughput
    parser.add_argument("--train-window", type=float, help="seconds each training-throughput variant"
                        " trains (default %.0f; --quick: 6)" % tt.DEFAULT_WINDOW)
    parser.add_argument("--train-interval", type=float, help="seconds between the training loop's saves"
                        " (default %.0f; --quick: 2)" % tt.DEFAULT_INTERVAL)
    parser.add_argument("--train-rounds", type=int, help="training-throughput rounds after the warm-up"
                        " (default %d; --quick: --rounds)" % tt.DEFAULT_ROUNDS)
    parser.add_argument("--train-saves", type=int, help="saves of each saver in the per-save training"
                        " measurement (default %d; --quick: 1)" % tt.DEFAULT_SAVES)
    parser.add_argument("--train-horizon", type=float, help="seconds the loop trains after each of those"
                        " saves (default %.0f; --quick: 1)" % tt.DEFAULT_HORIZON)
    parser.add_argument("--train-layers", type=int, help="layers of the training loop's MLP (default %d:"
                        " %d MiB saved; --quick: 3)"
                        % (tt.DEFAULT_LAYERS, round(tt.saved_state_bytes(tt.DEFAULT_LAYERS) / MB)))
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.size = (100 if args.quick else 1024) * MB
    args.s3_size = (50 if args.quick else 128) * MB
    args.resume_size = (256 if args.quick else 2048) * MB
    args.train_window = args.train_window or (6.0 if args.quick else tt.DEFAULT_WINDOW)
    args.train_interval = args.train_interval or (2.0 if args.quick else tt.DEFAULT_INTERVAL)
    args.train_rounds = args.train_rounds or (args.rounds if args.quick else tt.DEFAULT_ROUNDS)
    args.train_layers = args.train_layers or (3 if args.quick else tt.DEFAULT_LAYERS)
    args.train_saves = args.train_saves or (1 if args.quick else tt.DEFAULT_SAVES)
    args.train_horizon = args.train_horizon or (1.0 if args.quick else tt.DEFAULT_HORIZON)
    if not 0 < args.train_interval < args.train_window:
        parser.error("--train-interval must be shorter than --train-window, for at least one save in it")
    args.overhead_rounds = args.rounds
    args.tiny_saves = 300 if args.quick else 2000
    args.gang_mb = 50 if args.quick else 500
    os.environ.setdefault("USERNAME", "bench")

    started = time.perf_counter()

    def log(message: str) -> None:
        print("[%5.0f s] %s" % (time.perf_counter() - started, message), flush=True)

    with tempfile.TemporaryDirectory(dir=str(HERE), prefix="work-") as tmp:
        results = measure_all(args, Path(tmp), log)
    text = build_report(results, args, time.perf_counter() - started)
    Path(args.output).write_text(text + "\n")
    Path(args.output).with_suffix(".json").write_text(json.dumps(raw_samples(results), indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
