"""Thread pools made on first use, for the I/O and copies that release the GIL, and the
lowest CPU priority a background save's threads run at."""

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Sequence, Tuple, TypeVar

T = TypeVar("T")

#: The nice value of the threads that hash and write a background save's blobs: the
#: lowest priority, so the save takes the CPU the training loop leaves idle instead of
#: competing with it for a core. A loop that waits for the save (its next ``save()``,
#: ``wait()``, the end of the task) leaves it every core.
BACKGROUND_NICE = 19


def yield_cpu_to_others(nice: int = BACKGROUND_NICE) -> None:
    """Lower the calling thread's CPU priority to ``nice`` (never raise it). Linux sets a
    priority per thread; elsewhere, or where the OS refuses, nothing changes."""
    if not sys.platform.startswith("linux"):
        return
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, max(nice, os.getpriority(os.PRIO_PROCESS, thread)))
    except OSError:
        pass


class LazyPool:
    """``map`` runs one item inline (but in a pool with a ``nice``), several on up to
    ``workers`` threads.

    Parameters
    ----------
    workers : int
        Threads at most.
    name : str
        Their names' prefix.
    nice : int, default 0
        Above 0, each thread lowers its CPU priority to this nice value when it starts
        (``yield_cpu_to_others``): a pool for a background save's work.
    """

    def __init__(self, workers: int, name: str, nice: int = 0):
        self._workers = workers
        self._name = name
        self._nice = nice
        self._pool = None
        self._lock = threading.Lock()

    def map(self, fn: Callable[..., T], items: Sequence) -> List[T]:
        items = list(items)
        if len(items) <= 1 and self._nice <= 0:  # a lowered pool's work never runs inline
            return [fn(item) for item in items]
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        self._workers,
                        thread_name_prefix=self._name,
                        initializer=yield_cpu_to_others if self._nice > 0 else None,
                        initargs=(self._nice,) if self._nice > 0 else (),
                    )
        return list(self._pool.map(fn, items))


_SHARED: Dict[Tuple[int, str, int], LazyPool] = {}
_SHARED_LOCK = threading.Lock()


def shared_pool(workers: int, name: str, nice: int = 0) -> LazyPool:
    """The process's one ``LazyPool(workers, name, nice)``, made on first use: every store
    of the process shares it. (A pool per store left its threads behind in every store that
    ever saved in the background, and a later load in place in the same process ran 1.6x
    slower.) Keyed by ``workers`` too, so a store made with one worker still does its work
    one item after another."""
    with _SHARED_LOCK:
        pool = _SHARED.get((workers, name, nice))
        if pool is None:
            pool = _SHARED[(workers, name, nice)] = LazyPool(workers, name, nice)
        return pool
