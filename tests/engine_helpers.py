"""Building engine objects without a flow, for unit tests."""

import os
from pathlib import Path

from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
from metaflow_extensions.implicit_checkpoint.engine.session import (
    AttributeSource,
    CheckpointSession,
    TaskIdentity,
)
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore


class State:
    """A stand-in for a step's ``self``: every public attribute counts as assigned."""


class CountingBackend(LocalDirBackend):
    """A local backend that records every read, through either read path: ``reads``
    lists the paths read (``read`` and ``read_into``), ``blob_reads`` counts blob reads."""

    def __init__(self, root):
        super().__init__(root)
        self.blob_reads = 0
        self.reads = []

    def _count(self, path):
        self.reads.append(path)
        if "/blobs/" in path:
            self.blob_reads += 1

    def read_into(self, path, buffer):
        self._count(path)
        return super().read_into(path, buffer)

    def read(self, path):
        self._count(path)
        return super().read(path)


def make_session(store, state, attempt=0, task_id="1", **kwargs) -> CheckpointSession:
    session = CheckpointSession(
        store,
        TaskIdentity("UnitFlow", "1", "train", task_id, attempt),
        AttributeSource(lambda: dict(vars(state))),
        target=state,
        **kwargs,
    )
    session.start()
    return session


def local_store(root: Path, backend_cls=LocalDirBackend) -> CheckpointStore:
    return CheckpointStore(backend_cls(str(root)))


def blob_bytes_on_disk(root: Path) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        if "/blobs" in directory:
            total += sum(os.path.getsize(os.path.join(directory, f)) for f in files)
    return total


def blob_files(root: Path):
    return sorted(
        Path(d) / f for d, _, files in os.walk(root) if "/blobs" in d for f in files
    )
