"""Metaflow's own datastore storage (``flow_datastore._storage_impl``) as a checkpoint
storage backend: for the datastores without a backend of ours (Azure, GCS), so they run
the same store code. That object is private Metaflow API, reached through
metaflow_internals.py."""

import errno
import os
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple

from ..engine.backends import (
    TEMP_PREFIX,
    UNKNOWN_SIZE,
    FailureText,
    LocalDirBackend,
    PartsReader,
    StorageBackend,
    StoredFile,
)
from ..engine.errors import CheckpointException


class MetaflowStorageBackend(StorageBackend):
    """Metaflow's datastore storage, wrapped. Paths are relative to its ``datastore_root``."""

    #: Azure's, Google's and Metaflow's own exceptions all mean the storage failed; the
    #: boundary (backends.py) words them.
    SERVICE_ERRORS = (Exception,)

    def __init__(self, storage_impl):
        self._storage = storage_impl
        self.TYPE = storage_impl.TYPE

    def describe(self, path: str = "") -> str:
        return self._storage.full_uri(path) if path else self._storage.datastore_root

    @property
    def can_delete(self) -> bool:
        return self.TYPE == "local"

    def _explain(self, error: Exception) -> FailureText:
        text = super()._explain(error)
        if isinstance(error, OSError):
            return text
        return FailureText(
            text.reason,
            "Check the %s datastore's configuration, credentials and network (Metaflow's "
            "settings for it), then try again." % self.TYPE,
        )

    def _write(
        self, path: str, parts: Sequence, durable: bool, temp_prefix: Optional[str] = None
    ) -> None:
        # Metaflow's storages write whole objects atomically (temp file + rename
        # locally, a single PUT on object stores).
        self._storage.save_bytes([(path, PartsReader(parts))], overwrite=True, len_hint=1)

    @contextmanager
    def _downloaded(self, path: str) -> Iterator[Tuple[LocalDirBackend, str]]:
        """``path`` as a local file (Metaflow downloads it to a temp folder), as
        ``(a local backend on its folder, its name)``; FileNotFoundError when missing."""
        with self._storage.load_bytes([path]) as loaded:
            for _, local_path, _ in loaded:
                if local_path is not None:
                    yield LocalDirBackend(os.path.dirname(local_path)), os.path.basename(local_path)
                    return
        raise FileNotFoundError(errno.ENOENT, "no such object", self.describe(path))

    def _read_into(self, path: str, buffer: memoryview) -> int:
        with self._downloaded(path) as (local, name):
            return local.read_into(name, buffer)

    def _read(self, path: str) -> bytes:
        with self._downloaded(path) as (local, name):
            return local.read(name)

    def _is_file(self, paths: Sequence[str]) -> List[bool]:
        if not paths:
            return []
        return [bool(x) for x in self._storage.is_file(list(paths))]

    def _stat_many(self, paths: Sequence[str]) -> List[Optional[int]]:
        if self.TYPE == "local":
            return self._local().stat_many(paths)
        # Metaflow's storage layer tells existence, not size, without a download.
        return [UNKNOWN_SIZE if found else None for found in self._is_file(paths)]

    def _list_dir(self, path: str) -> List[Tuple[str, bool]]:
        prefix = path.rstrip("/")
        entries = []
        for result in self._storage.list_content([prefix]):
            name = result.path.rstrip("/").rsplit("/", 1)[-1]
            if not name.startswith(TEMP_PREFIX):
                entries.append((name, not result.is_file))
        return entries

    def _local(self) -> LocalDirBackend:
        """The same files through the local-directory backend (local datastore only)."""
        return LocalDirBackend(self._storage.datastore_root)

    def _unsupported(self, operation: str) -> CheckpointException:
        return CheckpointException(
            "%s checkpoint files is not supported on the %r datastore yet: Metaflow's "
            "storage layer offers no delete and no modification times there. Saving, "
            "resuming, listing and loading work; gc, retention and load_policy='eager' "
            "need the local or the s3 datastore." % (operation, self.TYPE)
        )

    def _delete(self, paths: List[str]) -> None:
        if self.TYPE != "local":
            raise self._unsupported("Deleting")
        self._local().delete(paths)

    def _walk_files(self, prefix: str) -> Iterator[StoredFile]:
        if self.TYPE != "local":
            raise self._unsupported("Listing the modification times of")
        return self._local().walk_files(prefix)

    def _touch(self, paths: Sequence[str]) -> List[bool]:
        if self.TYPE == "local":
            return self._local().touch(paths)
        # Metaflow's storage layer cannot set a modification time: writing the object
        # again renews it (a download and an upload, through temp files).
        found = self._is_file(paths)
        for i, path in enumerate(paths):
            if not found[i]:
                continue
            try:
                with self._downloaded(path) as (local, name), open(local.describe(name), "rb") as f:
                    self._storage.save_bytes([(path, f)], overwrite=True, len_hint=1)
            except FileNotFoundError:  # deleted meanwhile
                found[i] = False
        return found
