"""The headline benchmark (`make bench`): ours against the sound limit, in under 20 minutes.

    make bench                                    # writes benchmarks/RESULTS.md and .json
    python benchmarks/headline.py --quick         # 64 MB, 2 rounds: a smoke run
    python benchmarks/headline.py --baseline /tmp/base --output /tmp/compare.md
    python benchmarks/headline.py --full          # then the rest (run.py: peers, S3, ...)

Every round runs ``headline_round.py`` in a fresh process per checkout: this one, and with
``--baseline TREE`` another checkout's tree (``git archive COMMIT | tar -x -C TREE``, or a
``git worktree``), whose package alone that process imports (``HEADLINE_TREE``, with
``--baseline-python`` for a venv of its own). The checkouts take turns within each round,
their order swapped every round, so the machine's changing speed hits both alike; every
ratio pairs samples of one round. Round 0 is a warm-up, recorded and never reported.

The load average is recorded at the start and the end, and the CPU time other processes
took during the run is measured (/proc/stat, less this run's own): when the machine was
busy, no target is called met or missed ("machine busy: rerun").
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from measure import Figure, Rounds, machine, plain, ratio, seconds  # noqa: E402

MB = 1024 * 1024
#: The state size the targets are set for.
TARGET_SIZE_MB = 1024
#: Busy: a 1-minute load average above this before the run starts (it counts the last
#: minute's work, this run's own setup included, hence above one core), ...
BUSY_LOAD_AT_START = 1.5
#: ... or other processes using, on average, more than this share of one core meanwhile.
BUSY_OTHER_CORES = 0.15

FIRST_TOUCH = "limit: first touch of fresh memory"
READ_HASH = "limit: page-cache read + hash, one pass"
READ_HASH_TOUCH = "limit: page-cache read + hash + first touch"


@dataclass(frozen=True)
class Row:
    """One headline row: ours against its sound limit, and the target on their ratio."""

    label: str
    ours: str
    limit: str
    at_most: Optional[float]  # target: ours / limit at most this (None: reported only)


ROWS = [
    Row("load in place into a built model", "ours: load in place into a built model", READ_HASH, 1.3),
    Row("load into new tensors (a notebook)", "ours: load into new tensors", READ_HASH_TOUCH, 1.3),
    Row("sync save, first (all bytes)", "ours: sync save, first (all bytes)",
        "limit: hash all + write all + fdatasync", None),
    Row("sync re-save, 10 % changed", "ours: sync re-save, 10% changed",
        "limit: hash all + write 10% changed + fdatasync", 1.3),
    Row("a step's first background save ever (no earlier one to size a buffer by), blocked",
        "ours: the task's first background save, blocked",
        "limit: memcpy of all bytes", 1.5),
    Row("a resumed task's first background save, blocked", "ours: a resumed task's first background save, blocked",
        "limit: memcpy of all bytes", 1.5),
    Row("the next run's first background save (its step saved in the background before), blocked",
        "ours: the next run's first background save, blocked", "limit: memcpy of all bytes", 1.5),
    Row("background save, all changed, blocked", "ours: background save, all changed, blocked",
        "limit: memcpy of all bytes", 1.2),
    Row("background re-save, 10 % changed, blocked", "ours: background re-save, 10% changed, blocked",
        "limit: memcpy of all bytes", 1.2),
]
TINY = "ours: tiny state, saves per second, defaults"
TINY_TARGET = 300.0
RATES = {TINY, "ours: tiny state, saves per second, rng=False"}
PEER_PAIRS = [
    ("sync save, first / dcp.save (both fsync)", "ours: sync save, first (all bytes)", "dcp.save (fsync)"),
    ("load in place / dcp.load into a built state dict", "ours: load in place into a built model",
     "dcp.load into a built state dict"),
    ("first background save, blocked / dcp.async_save's first", "ours: the task's first background save, blocked",
     "dcp.async_save, first, blocked"),
]


# -- the machine -------------------------------------------------------------------------


def load_average() -> Tuple[float, float, float]:
    with open("/proc/loadavg") as f:
        one, five, fifteen = f.read().split()[:3]
    return float(one), float(five), float(fifteen)


def cpu_seconds_of_all() -> float:
    """CPU seconds every process of the machine spent so far (user, system, irq, steal)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_seconds_of_this_run() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class Quietness:
    """How busy the machine was around and during the run."""

    def __init__(self):
        self.load_at_start = load_average()
        self._all_at_start = cpu_seconds_of_all()
        self._ours_at_start = cpu_seconds_of_this_run()
        self._started = time.perf_counter()
        self.load_at_end: Optional[Tuple[float, float, float]] = None
        self.other_cores = 0.0

    def stop(self) -> None:
        self.load_at_end = load_average()
        wall = time.perf_counter() - self._started
        others = (cpu_seconds_of_all() - self._all_at_start) - (cpu_seconds_of_this_run() - self._ours_at_start)
        self.other_cores = max(0.0, others) / wall

    @property
    def busy(self) -> bool:
        return self.load_at_start[0] > BUSY_LOAD_AT_START or self.other_cores > BUSY_OTHER_CORES

    def describe(self) -> str:
        return (
            "Load average (1, 5, 15 min) at the start: %s; at the end: %s (this run's own work included)."
            " Other processes used %.2f cores on average during the run. %s"
            % (" ".join("%.2f" % v for v in self.load_at_start), " ".join("%.2f" % v for v in self.load_at_end),
               self.other_cores,
               "**Machine busy: rerun** (no target is judged)." if self.busy else "The machine was quiet.")
        )


# -- measuring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkout:
    """A tree whose package a round imports, and the Python that runs it."""

    label: str
    tree: Path
    python: str


def run_round(checkout: Checkout, work: Path, size_mb: int, seed: int, peers: bool) -> dict:
    # Metaflow (which the package imports) scans only the tree for extensions, not the
    # editable install of another checkout.
    env = dict(os.environ, HEADLINE_TREE=str(checkout.tree), METAFLOW_EXTENSIONS_SEARCH_DIRS=str(checkout.tree))
    env.setdefault("USERNAME", "bench")
    command = [checkout.python, str(HERE / "headline_round.py"), str(work), str(size_mb), str(seed)]
    out = subprocess.run(
        command + (["--peers"] if peers else []), env=env, check=True, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    ).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    package = Path(figures.pop("package")).resolve()
    if checkout.tree.resolve() not in package.parents:
        raise SystemExit("%s: the round imported the package from %s, not from %s (is it installed"
                         " there non-editable?)" % (checkout.label, package, checkout.tree))
    return figures


def measure(checkouts: List[Checkout], args, log) -> Dict[str, Rounds]:
    rounds = {c.label: Rounds() for c in checkouts}
    work = Path(args.workdir)
    for r in range(args.rounds + 1):
        order = checkouts if r % 2 == 0 else checkouts[::-1]
        for checkout in order:
            log("round %d of %d (0 = warm-up): %s ..." % (r, args.rounds, checkout.label))
            figures = run_round(checkout, work / "round", args.size_mb, 1000 + r, peers=checkout is checkouts[0])
            samples = rounds[checkout.label]
            for case, value in figures.items():
                samples.add(case, value)
            samples.add(READ_HASH_TOUCH, figures[READ_HASH] + figures[FIRST_TOUCH])
        for samples in rounds.values():
            samples.next_round()
    return rounds


# -- reporting ---------------------------------------------------------------------------


def verdict(figure: Figure, met, not_judged: Optional[str]) -> str:
    """met / missed, or why the target is not judged (a busy machine, another size)."""
    if not_judged:
        return not_judged
    if met(figure.median):
        return "met" if all(met(v) for v in figure.samples) else "met by the median, not in every round"
    return "**missed**"


def table(header: Tuple[str, ...], rows: List[Tuple[str, ...]]) -> List[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(row) + " |" for row in rows] + [""])


def shown(samples: Rounds, case: str) -> str:
    f = samples.figure(case)
    return plain(f, "%.0f", "/s") if case in RATES else seconds(f)


def headline_rows(samples: Rounds, not_judged: Optional[str]) -> List[Tuple[str, ...]]:
    rows = []
    for row in ROWS:
        ratio_figure = samples.ratio(row.ours, row.limit)
        target = "-" if row.at_most is None else "<= %.1f: %s" % (
            row.at_most, verdict(ratio_figure, lambda v, t=row.at_most: v <= t, not_judged))
        limit = "%s %s" % (row.limit[len("limit: "):], shown(samples, row.limit))
        rows.append((row.label, shown(samples, row.ours), limit, ratio(ratio_figure), target))
    tiny = samples.figure(TINY)
    rows.append(("tiny state (3 fields), saves per second, defaults", shown(samples, TINY), "-", "-",
                 ">= %.0f/s: %s" % (TINY_TARGET, verdict(tiny, lambda v: v >= TINY_TARGET, not_judged))))
    rng_off = shown(samples, "ours: tiny state, saves per second, rng=False")
    rows.append(("tiny state, saves per second, rng=False", rng_off, "-", "-", "-"))
    return rows


def cross_ratio(this: Rounds, other: Rounds, case: str) -> Figure:
    """``case`` of this checkout over the other's, round by round."""
    a, b = this.to_json()[case]["samples"], other.to_json()[case]["samples"]
    return Figure([x / y for x, y in zip(a, b)])


def comparison_rows(this: Rounds, other: Rounds) -> List[Tuple[str, ...]]:
    cases = [row.ours for row in ROWS] + sorted(RATES) + [c for c in this.cases() if c.startswith("limit: ")]
    return [(case, shown(this, case), shown(other, case), ratio(cross_ratio(this, other, case)))
            for case in cases if case in other]


def build_report(
    rounds: Dict[str, Rounds], checkouts: List[Checkout], quiet: Quietness, args, elapsed: float
) -> str:
    main = rounds[checkouts[0].label]
    lines = [
        "# Benchmark results: the headline",
        "",
        "Command: `%s`, run on %s (UTC); the whole run took %.1f min."
        % (args.command, time.strftime("%Y-%m-%d %H:%M", time.gmtime()), elapsed / 60),
        "Machine: %s; local ext4 disk on a VM." % machine(),
        quiet.describe(),
        "",
        "Method: %d rounds after a warm-up round, each in a fresh process per checkout"
        " (benchmarks/headline_round.py); figures are **median (min-max)** over the rounds, every"
        " ratio computed within a round first. State: a %d MB torch state dict (8 large float32"
        " tensors holding 90 %% of the bytes, 300 small ones), one checkpoint session per kind of"
        " save (as in one task), defaults (rng=True, fsync). Each timed save starts after os.sync();"
        " loads read from the page cache." % (args.rounds, round(main.figure("bytes").median / MB)),
        "",
        "**The sound limit** is the work a checkpoint holding exactly the live bytes cannot skip, done"
        " by the simplest fast code (benchmarks/physical_limit.py): BLAKE3 of every byte on every core"
        " (the blake3 package's max_threads), a memcpy of all bytes into a buffer already written (a"
        " background save cannot know what changed without reading it all), the changed bytes written"
        " to one file with fdatasync, a page-cache read and hash of the stored bytes in one pass (a thread per"
        " core, the files shared out among them), and,"
        " for new tensors, a first touch of as much fresh memory (torch.empty + fill); each the fastest"
        " of two tries in its round (ours is timed once).",
        "",
        "## Ours against the sound limit (%s)" % checkouts[0].label,
        "",
    ]
    not_judged = None
    if quiet.busy:
        not_judged = "machine busy: rerun"
    elif args.size_mb != TARGET_SIZE_MB:
        not_judged = "not judged (the targets are for %d MB)" % TARGET_SIZE_MB
    lines += table(("", "ours", "sound limit", "ours / limit", "target"), headline_rows(main, not_judged))
    lines += ["Parts of the sound limit, alone: BLAKE3 of all bytes on all cores %s; memcpy %s; first touch %s."
              % (shown(main, "limit: BLAKE3 of all bytes, all cores"), shown(main, "limit: memcpy of all bytes"),
                 shown(main, FIRST_TOUCH)), ""]
    if all(b in main for _, _, b in PEER_PAIRS):
        lines += ["## Against torch.distributed.checkpoint, same rounds", "",
                  "DCP in one process (no process group), FileSystemWriter/Reader on the same disk"
                  " (it fsyncs its files); its first async_save stages a new copy.", ""]
        lines += table(("", "ours", "DCP", "ours / DCP"), [
            (label, shown(main, a), shown(main, b), ratio(main.ratio(a, b))) for label, a, b in PEER_PAIRS])
    for other in checkouts[1:]:
        lines += ["## %s against %s, side by side" % (checkouts[0].label, other.label), "",
                  "Both measured in every round, in alternating order; the last column is %s / %s within"
                  " each round (below 1: %s takes less time; for saves per second, above 1 is faster)."
                  % (checkouts[0].label, other.label, checkouts[0].label), ""]
        lines += table(
            ("case", checkouts[0].label, other.label, "ratio"), comparison_rows(main, rounds[other.label])
        )
    lines += ["The rest of the benchmarks (peers, S3, memory, training throughput, task overhead):"
              " `make bench-full`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 MB, 2 rounds: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds after the warm-up (default 5; --quick: 2)")
    parser.add_argument("--size-mb", type=int, help="state size in MB (default 1024; --quick: 64)")
    parser.add_argument("--label", default="this checkout", help="this checkout's name in the tables")
    parser.add_argument("--baseline", help="another checkout's tree, measured side by side")
    parser.add_argument("--baseline-label", help="its name in the tables (default: the path)")
    parser.add_argument("--baseline-python", default=sys.executable, help="the Python that runs it")
    parser.add_argument("--output", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--workdir", default=str(HERE / "work-headline"))
    parser.add_argument("--full", action="store_true", help="then run the rest (run.py) into RESULTS-full.md")
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.size_mb = args.size_mb or (64 if args.quick else 1024)
    args.command = "python benchmarks/headline.py " + " ".join(sys.argv[1:])
    checkouts = [Checkout(args.label, REPO, sys.executable)]
    if args.baseline:
        tree = Path(args.baseline).resolve()
        if not (tree / "metaflow_extensions" / "implicit_checkpoint" / "engine").is_dir():
            raise SystemExit("--baseline %s: no metaflow_extensions/implicit_checkpoint/engine there; give"
                             " the root of a checkout (git archive COMMIT | tar -x -C DIR)." % tree)
        checkouts.append(Checkout(args.baseline_label or str(tree), tree, args.baseline_python))
    started = time.perf_counter()

    def log(message: str) -> None:
        print("[%5.0f s] %s" % (time.perf_counter() - started, message), flush=True)

    quiet = Quietness()
    rounds = measure(checkouts, args, log)
    quiet.stop()
    text = build_report(rounds, checkouts, quiet, args, time.perf_counter() - started)
    output = Path(args.output)
    output.write_text(text + "\n")
    raw = {"load_at_start": quiet.load_at_start, "load_at_end": quiet.load_at_end,
           "other_cores": quiet.other_cores, "busy": quiet.busy,
           "checkouts": {c.label: {"tree": str(c.tree), "cases": rounds[c.label].to_json()} for c in checkouts}}
    output.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    print(text)
    if args.full:
        log("the rest: run.py ...")
        rest = [sys.executable, str(HERE / "run.py"), "--output", str(HERE / "RESULTS-full.md")]
        subprocess.run(rest, check=True)


if __name__ == "__main__":
    main()
