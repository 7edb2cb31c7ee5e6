"""Timing and memory helpers: rounds of samples, medians with ranges, fsync, resident memory."""

import os
import platform
import resource
import statistics
import time
from typing import Callable, Dict, List, Optional


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_from_quiet_disk(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes after every dirty page of the system reached the disk, so a
    save does not pay for the writeback of whatever ran before it."""
    os.sync()
    return timed(fn)


def median_of(samples: List[float]) -> float:
    return statistics.median(samples)


class Figure:
    """Median and range (min-max) of the samples of one figure, one sample per round."""

    def __init__(self, samples: List[float]):
        if not samples:
            raise ValueError("a figure needs at least one sample")
        self.samples = list(samples)
        self.median = statistics.median(self.samples)
        self.low = min(self.samples)
        self.high = max(self.samples)

    def to_json(self) -> dict:
        return {"median": self.median, "min": self.low, "max": self.high, "samples": self.samples}


class Rounds:
    """Samples of many cases, one per case and round, so ratios pair samples of one round.

    Round 0 is the warm-up: recorded, never reported.
    """

    def __init__(self):
        self.round = 0
        self._samples: Dict[str, Dict[int, float]] = {}

    def next_round(self) -> None:
        self.round += 1

    def add(self, case: str, value: float) -> None:
        self._samples.setdefault(case, {})[self.round] = value

    def cases(self) -> List[str]:
        return list(self._samples)

    def __contains__(self, case: str) -> bool:
        return case in self._samples

    def figure(self, case: str) -> Figure:
        return Figure([v for r, v in sorted(self._samples[case].items()) if r > 0])

    def ratio(self, numerator: str, denominator: str) -> Figure:
        """``numerator / denominator`` computed round by round (rounds with both samples)."""
        top, bottom = self._samples[numerator], self._samples[denominator]
        return Figure([top[r] / bottom[r] for r in sorted(top) if r > 0 and r in bottom])

    def to_json(self) -> dict:
        return {case: self.figure(case).to_json() for case in self._samples}


def plain(f: Figure, fmt: str = "%.0f", unit: str = "") -> str:
    """``1316/s (1200 to 1400)``: a figure's median and range (min to max)."""
    return (fmt + "%s (" + fmt + " to " + fmt + ")") % (f.median, unit, f.low, f.high)


def seconds(f: Figure, digits: int = 3) -> str:
    """``0.457 s (0.431 to 0.502)``: a figure's median and range, in seconds."""
    return plain(f, "%%.%df" % digits, " s")


def ratio(f: Figure, digits: int = 2) -> str:
    """``0.42 (0.38 to 0.45)``: a ratio's median and range."""
    return plain(f, "%%.%df" % digits)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def isolated_metaflow_env(root, extra: Optional[dict] = None) -> dict:
    """This process's environment with Metaflow's home, datastore and metadata under ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    env.update(
        USERNAME=env.get("USERNAME", "bench"),
        METAFLOW_HOME=str(root),
        METAFLOW_DEFAULT_DATASTORE="local",
        METAFLOW_DEFAULT_METADATA="local",
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root),
    )
    env.update(extra or {})
    return env


def machine() -> str:
    """The machine a report was measured on, in one line."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return "%s, %d cores, %.0f GB RAM, Python %s, torch %s, %s %s" % (
        cpu, os.cpu_count(), memory, platform.python_version(), torch.__version__,
        platform.system(), platform.release())
