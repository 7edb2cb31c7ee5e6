"""A thread pool made on first use, for the I/O and copies that release the GIL."""

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Sequence, TypeVar

T = TypeVar("T")


class LazyPool:
    """``map`` runs one item inline, several on up to ``workers`` threads."""

    def __init__(self, workers: int, name: str):
        self._workers = workers
        self._name = name
        self._pool = None
        self._lock = threading.Lock()

    def map(self, fn: Callable[..., T], items: Sequence) -> List[T]:
        items = list(items)
        if len(items) <= 1:
            return [fn(item) for item in items]
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=self._name)
        return list(self._pool.map(fn, items))
