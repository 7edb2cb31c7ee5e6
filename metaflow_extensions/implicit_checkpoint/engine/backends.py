"""Storage backends: the small interface the store writes through, and its two implementations.

Paths are '/'-separated and relative to the backend's root. The store only ever builds
paths from validated parts (see keys.py), never from raw user input.

- ``LocalDirBackend``: a plain directory. Atomic writes (temp file + rename), optional
  fsync, reads straight into the caller's buffer.

S3 has its own (s3_backend.py); Azure and GCS go through Metaflow's storage layer
(plugins/metaflow_storage.py), so the engine itself never imports Metaflow.
"""

import ctypes
import io
import os
import sys
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from .hashing import content_hash, new_hasher

#: Local writes go in blocks of this size: hashed while cache-hot, written back early.
_WRITE_BLOCK = 4 * 1024 * 1024


def _load_sync_file_range():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing this range of the file to disk now.

    The final fdatasync then waits for little, and the disk works while the next
    blocks are being written (sync_file_range on Linux; a no-op elsewhere).
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


_datasync = getattr(os, "fdatasync", os.fsync)


#: What ``stat_many`` says of a file that exists when its size is not known cheaply.
UNKNOWN_SIZE = -1

#: Prefix of files being written; readers never see them, gc sweeps stale ones.
TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative to the backend root
    size: int
    mtime: float  # seconds since the epoch


class StorageBackend(ABC):
    """What the checkpoint store needs from a storage system."""

    #: Short name shown in messages ("local", "s3", ...).
    TYPE = "abstract"

    #: Whether gc and retention can delete here (and so saves take leases, see locks.py).
    can_delete = True

    @abstractmethod
    def write(
        self, path: str, parts: Sequence, durable: bool, temp_prefix: Optional[str] = None
    ) -> None:
        """Store the concatenation of ``parts`` (bytes-like) at ``path``, all or nothing.

        Backends that write through a temp file name it ``temp_prefix`` + a random part
        when given (so the temp files of an abandoned save can be found and removed),
        else put it next to ``path``.
        """

    def write_hashed(
        self,
        parts: Sequence,
        durable: bool,
        path_for_digest: Callable[[str], str],
        temp_prefix: str,
    ) -> Tuple[str, bool]:
        """Store ``parts`` under the path named by their content hash; return ``(digest, written)``.

        An existing blob of the right size is kept; a missing or damaged one (wrong size)
        is written. Backends that can write before knowing the name override this to hash
        and write in one pass; this default hashes first.
        """
        digest = content_hash(parts)
        path = path_for_digest(digest)
        size = sum(memoryview(p).nbytes for p in parts)
        if self.stat_many([path])[0] in (size, UNKNOWN_SIZE):
            return digest, False
        self.write(path, parts, durable, temp_prefix)
        return digest, True

    @abstractmethod
    def read_into(self, path: str, buffer: memoryview) -> int:
        """Fill ``buffer`` from the start of ``path``; return the number of bytes read.

        Raises FileNotFoundError when ``path`` does not exist.
        """

    @abstractmethod
    def read(self, path: str) -> bytes:
        """The whole content of ``path``; FileNotFoundError when it does not exist."""

    @abstractmethod
    def exists_many(self, paths: Sequence[str]) -> List[bool]:
        """For each path, whether it exists."""

    @abstractmethod
    def stat_many(self, paths: Sequence[str]) -> List[Optional[int]]:
        """For each path, its size in bytes, or None when it does not exist
        (``UNKNOWN_SIZE`` when it exists but the backend cannot tell its size cheaply)."""

    @abstractmethod
    def list_dir(self, path: str) -> List[Tuple[str, bool]]:
        """The entries directly under ``path`` as ``(name, is_dir)``; [] when absent."""

    @abstractmethod
    def delete(self, paths: Iterable[str]) -> None:
        """Remove the given files; missing ones are ignored."""

    @abstractmethod
    def walk_files(self, prefix: str) -> Iterator[StoredFile]:
        """Every file under ``prefix``, at any depth (temp files included)."""

    @abstractmethod
    def touch(self, paths: Sequence[str], older_than: float = 0.0) -> List[bool]:
        """Renew the modification time of each file last modified more than
        ``older_than`` seconds ago; return, per file, whether it exists."""

    def describe(self, path: str = "") -> str:
        """A human-readable location, for messages."""
        return path


class LocalDirBackend(StorageBackend):
    """A directory on a local file system."""

    TYPE = "local"

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self._made_dirs = set()

    def _ensure_dir(self, directory: str) -> None:
        # Remembered, so a save does not re-check its directories on every file.
        if directory not in self._made_dirs:
            os.makedirs(directory, exist_ok=True)
            self._made_dirs.add(directory)

    def _full(self, path: str) -> str:
        return os.path.join(self.root, *path.split("/"))

    def describe(self, path: str = "") -> str:
        return self._full(path)

    def write(
        self, path: str, parts: Sequence, durable: bool, temp_prefix: Optional[str] = None
    ) -> None:
        full = self._full(path)
        self._ensure_dir(os.path.dirname(full))
        temp = self._full(temp_prefix) if temp_prefix else os.path.join(os.path.dirname(full), TEMP_PREFIX)
        self._publish(self._write_temp(temp, parts, durable), full, durable)

    def write_hashed(
        self,
        parts: Sequence,
        durable: bool,
        path_for_digest: Callable[[str], str],
        temp_prefix: str,
    ) -> Tuple[str, bool]:
        # One pass over the data: each block is hashed and written while it is still
        # in the CPU cache; the content-addressed name is known only at the end.
        hasher = new_hasher()
        tmp = self._write_temp(self._full(temp_prefix), parts, durable, hasher)
        digest = hasher.hexdigest()
        path = path_for_digest(digest)
        if self.stat_many([path])[0] == os.path.getsize(tmp):
            os.unlink(tmp)
            return digest, False
        # Missing, or damaged (wrong size): ours has the right bytes, it replaces it.
        full = self._full(path)
        self._ensure_dir(os.path.dirname(full))
        self._publish(tmp, full, durable)
        return digest, True

    def _write_temp(self, prefix: str, parts: Sequence, durable: bool, hasher=None) -> str:
        """Write ``parts`` to a new file named ``prefix`` + a random part; return its path."""
        tmp = prefix + uuid.uuid4().hex
        self._ensure_dir(os.path.dirname(tmp))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:  # the directory was removed since it was made
            os.makedirs(os.path.dirname(tmp), exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            offset = 0
            for part in parts:
                view = memoryview(part).cast("B")
                for start in range(0, len(view), _WRITE_BLOCK):
                    block = view[start : start + _WRITE_BLOCK]
                    if hasher is not None:
                        hasher.update(block)
                    block_offset = offset
                    while block:
                        written = os.write(fd, block)
                        block = block[written:]
                        offset += written
                    if durable and offset - block_offset == _WRITE_BLOCK:
                        _start_writeback(fd, block_offset, _WRITE_BLOCK)
            if durable:
                _datasync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    @staticmethod
    def _publish(tmp: str, full: str, durable: bool) -> None:
        os.replace(tmp, full)
        if durable:
            # Makes the rename itself durable.
            dir_fd = os.open(os.path.dirname(full), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def read_into(self, path: str, buffer: memoryview) -> int:
        with open(self._full(path), "rb", buffering=0) as f:
            view = memoryview(buffer).cast("B")
            total = 0
            while total < len(view):
                n = f.readinto(view[total:])
                if not n:
                    break
                total += n
            return total

    def read(self, path: str) -> bytes:
        with open(self._full(path), "rb") as f:
            return f.read()

    def exists_many(self, paths: Sequence[str]) -> List[bool]:
        return [os.path.exists(self._full(p)) for p in paths]

    def stat_many(self, paths: Sequence[str]) -> List[Optional[int]]:
        sizes = []
        for path in paths:
            try:
                sizes.append(os.stat(self._full(path)).st_size)
            except (FileNotFoundError, NotADirectoryError):
                sizes.append(None)
        return sizes

    def list_dir(self, path: str) -> List[Tuple[str, bool]]:
        try:
            with os.scandir(self._full(path)) as entries:
                return [
                    (e.name, e.is_dir())
                    for e in entries
                    if not e.name.startswith(TEMP_PREFIX)
                ]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, paths: Iterable[str]) -> None:
        for path in paths:
            try:
                os.remove(self._full(path))
            except FileNotFoundError:
                pass

    def walk_files(self, prefix: str) -> Iterator[StoredFile]:
        top = self._full(prefix)
        for directory, _, files in os.walk(top):
            relative = os.path.relpath(directory, self.root).replace(os.sep, "/")
            for name in files:
                try:
                    info = os.stat(os.path.join(directory, name))
                except FileNotFoundError:
                    continue
                yield StoredFile("%s/%s" % (relative, name), info.st_size, info.st_mtime)

    def touch(self, paths: Sequence[str], older_than: float = 0.0) -> List[bool]:
        found = []
        for path in paths:
            try:
                os.utime(self._full(path))  # as cheap as checking the age first
                found.append(True)
            except FileNotFoundError:
                found.append(False)
        return found


class PartsReader(io.RawIOBase):
    """A seekable read-only file over a sequence of buffers: uploads stream straight
    from them without joining them, and an SDK can rewind the body to sign or resend it."""

    def __init__(self, parts: Sequence):
        self._parts = [memoryview(p).cast("B") for p in parts]
        self._size = sum(len(p) for p in self._parts)
        self._position = 0
        self._index = 0  # the part holding self._position
        self._offset = 0  # self._position within that part

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position %d" % (base + offset))
        self._position = base + offset
        self._index, self._offset = 0, self._position
        while self._index < len(self._parts) and self._offset >= len(self._parts[self._index]):
            self._offset -= len(self._parts[self._index])
            self._index += 1
        return self._position

    def readinto(self, buffer) -> int:
        out = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(out) and self._index < len(self._parts):
            part = self._parts[self._index]
            n = min(len(part) - self._offset, len(out) - filled)
            out[filled : filled + n] = part[self._offset : self._offset + n]
            filled += n
            self._offset += n
            if self._offset == len(part):
                self._index += 1
                self._offset = 0
        self._position += filled
        return filled
