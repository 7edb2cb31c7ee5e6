"""Notes across runs: which task of each run committed its newest checkpoint of a step.

One small file per run, step and foreach index, so concurrent runs never overwrite each
other's note: it names the task, and its modification time is the task's latest commit
(written once per process, touched after that). A note is only a hint: readers
(reading.py, lineage.py) list the task it names and verify its manifests.
"""

from typing import List, Optional, Sequence, Tuple

from . import store_paths as paths
from .backends import StorageBackend
from .errors import CheckpointException
from .keys import CheckpointKey


class LatestNotes:
    """The per-run notes of one store."""

    def __init__(self, backend: StorageBackend):
        self._backend = backend
        self._written = set()  # notes this process has written: touched from then on

    def record(self, key: CheckpointKey, foreach_indices: Sequence[int]) -> None:
        """Note that ``key``'s task (in its run) committed a checkpoint of this step and
        foreach index just now."""
        path = self._path(key.flow, key.step, foreach_indices, key.run_id)
        if path in self._written:
            self._backend.touch([path])
        else:
            self._backend.write(path, [str(key).encode()], durable=False)
            self._written.add(path)

    def runs(self, flow: str, step: str, foreach_indices: Sequence[int]) -> List[Tuple[float, str]]:
        """``(noted at, run id)`` of every run that noted a commit of this step and branch."""
        return [
            (entry.mtime, entry.path.rsplit("/", 1)[-1])
            for entry in self._backend.walk_files(paths.latest_dir(flow, step, foreach_indices))
            if not entry.path.rsplit("/", 1)[-1].startswith(".")
        ]

    def read(
        self, flow: str, step: str, foreach_indices: Sequence[int], run_id: str
    ) -> Optional[CheckpointKey]:
        """The key a run's note names, or None when it is gone or unreadable."""
        try:
            text = self._backend.read(self._path(flow, step, foreach_indices, run_id)).decode()
            return CheckpointKey.parse(text)
        except (FileNotFoundError, UnicodeDecodeError, CheckpointException):
            return None

    @staticmethod
    def _path(flow: str, step: str, foreach_indices: Sequence[int], run_id: str) -> str:
        return "%s/%s" % (paths.latest_dir(flow, step, foreach_indices), run_id)
