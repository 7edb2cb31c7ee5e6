"""Timing and memory helpers: medians of repeated runs, fsync, peak resident memory."""

import os
import resource
import statistics
import time
from typing import Callable, List


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


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def isolated_metaflow_env(root) -> dict:
    """This process's environment with Metaflow's home, datastore and metadata under ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    env.update(
        USERNAME=env.get("USERNAME", "bench"),
        METAFLOW_HOME=str(root),
        METAFLOW_DEFAULT_DATASTORE="local",
        METAFLOW_DEFAULT_METADATA="local",
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root),
    )
    return env
