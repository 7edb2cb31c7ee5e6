"""Storage backends: the small interface the store writes through, and its two implementations.

Paths are '/'-separated and relative to the backend's root. The store only ever builds
paths from validated parts (see keys.py), never from raw user input.

A backend's public methods are the trust boundary (``StorageBackend``): each runs the
backend's implementation inside one guard, which turns any OS, service or network
failure into a ``CheckpointStorageError`` naming the operation, the path and the reason,
and saying what to do. A missing file on ``read`` / ``read_into`` stays a
``FileNotFoundError``: to the store it means "missing".

- ``LocalDirBackend``: a plain directory. Atomic writes (temp file + rename), optional
  fsync, reads straight into the caller's buffer, of regular files inside the root only.

S3 has its own (s3_backend.py); Azure and GCS go through Metaflow's storage layer
(plugins/metaflow_storage.py), so the engine itself never imports Metaflow.
"""

import ctypes
import errno
import io
import os
import stat
import sys
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from .errors import CheckpointException, CheckpointStorageError
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


def _datasync_path(path: str) -> None:
    """fdatasync the file at ``path`` (written and closed by this process)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _datasync(fd)
    finally:
        os.close(fd)


#: What ``stat_many`` says of a file that exists when its size is not known cheaply.
UNKNOWN_SIZE = -1

#: Prefix of files being written; readers never see them, gc sweeps stale ones.
TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative to the backend root
    size: int
    mtime: float  # seconds since the epoch


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload begun and neither completed nor aborted (S3): a save killed
    in the middle of a large blob leaves one, and the storage keeps its parts."""

    path: str  # the object it would have created, relative to the backend root
    upload_id: str
    initiated: float  # seconds since the epoch, on the storage's clock


@dataclass(frozen=True)
class FailureText:
    """One storage failure in words (see ``StorageBackend._explain``)."""

    reason: str  # the OS's or the service's words
    advice: str  # what to do about it
    path: Optional[str] = None  # the path that failed, when the error knows it better than the call


#: How a message says each operation of the boundary: "Could not <phrase> <path>: ...".
OPERATIONS = {
    "write": "write",
    "read": "read",
    "check": "check",
    "list": "list",
    "delete": "delete",
    "touch": "renew the modification time of",
    "list uploads": "list the unfinished uploads under",
    "abort uploads": "abort the unfinished upload of",
}

_PERMISSION_ADVICE = (
    "Permission denied: give this user access to the datastore's directory, or point the "
    "datastore at one it can write."
)
#: What to do about an OS error, by errno.
_OS_ADVICE = {
    errno.ENOSPC: "The file system is full: free space on it (or point the datastore at a "
    "larger one) and try again.",
    errno.EDQUOT: "The disk quota is used up: free space or raise the quota, and try again.",
    errno.EROFS: "The file system is mounted read-only: remount it read-write, or point the "
    "datastore at a writable one.",
    errno.EACCES: _PERMISSION_ADVICE,
    errno.EPERM: _PERMISSION_ADVICE,
    errno.EIO: "The device reported an I/O error: check the disk (the kernel log names it).",
}
DEFAULT_ADVICE = "Check that the datastore is reachable and writable, then try again."


class StorageBackend(ABC):
    """What the checkpoint store needs from a storage system.

    The public methods are the trust boundary: each runs the backend's implementation
    (the same name with a leading ``_``) inside ``_boundary``, so whatever the OS, the
    service or the network raises leaves as a ``CheckpointStorageError`` naming the
    operation, the path and the reason. Only ``read`` and ``read_into`` let a
    ``FileNotFoundError`` through: it means "missing" to the store. Implementations
    raise what their system raises and leave the wording to ``_explain``.
    """

    #: Short name shown in messages ("local", "s3", ...).
    TYPE = "abstract"

    #: Whether gc and retention can delete here (and so saves take leases, see locks.py).
    can_delete = True

    #: Whether writes run on the calling thread alone, starting no thread (a thread
    #: started by one at a lowered CPU priority would keep it: Linux threads inherit their
    #: creator's). Only such a backend's background writes run at the lowest priority.
    writes_on_calling_thread = False

    #: The exceptions, besides OSError, that mean the storage failed (not a bug of ours).
    SERVICE_ERRORS: Tuple[type, ...] = ()

    # -- the boundary ----------------------------------------------------------------

    def write(
        self, path: str, parts: Sequence, durable: bool, temp_prefix: Optional[str] = None
    ) -> None:
        """Store the concatenation of ``parts`` (bytes-like) at ``path``, all or nothing.

        Backends that write through a temp file name it ``temp_prefix`` + a random part
        when given (so the temp files of an abandoned save can be found and removed),
        else put it next to ``path``.
        """
        with self._boundary("write", path):
            self._write(path, parts, durable, temp_prefix)

    def write_hashed(
        self,
        parts: Sequence,
        durable: bool,
        path_for_digest: Callable[[str], str],
        temp_prefix: str,
    ) -> Tuple[str, bool]:
        """Store ``parts`` under the path named by their content hash; return ``(digest, written)``.

        An existing blob of the right size is kept; a missing or damaged one (wrong size)
        is written.
        """
        with self._boundary("write", temp_prefix):
            return self._write_hashed(parts, durable, path_for_digest, temp_prefix)

    def read_into(self, path: str, buffer: memoryview) -> int:
        """Fill ``buffer`` from the start of ``path``; return the number of bytes read.

        Raises FileNotFoundError when ``path`` does not exist.
        """
        with self._boundary("read", path, missing_passes=True):
            return self._read_into(path, buffer)

    def read(self, path: str) -> bytes:
        """The whole content of ``path``; FileNotFoundError when it does not exist."""
        with self._boundary("read", path, missing_passes=True):
            return self._read(path)

    def stat_many(self, paths: Sequence[str]) -> List[Optional[int]]:
        """For each path, its size in bytes, or None when it does not exist
        (``UNKNOWN_SIZE`` when it exists but the backend cannot tell its size cheaply)."""
        with self._boundary("check", paths):
            return self._stat_many(paths)

    def list_dir(self, path: str) -> List[Tuple[str, bool]]:
        """The entries directly under ``path`` as ``(name, is_dir)``; [] when absent."""
        with self._boundary("list", path):
            return self._list_dir(path)

    def delete(self, paths: Iterable[str]) -> None:
        """Remove the given files; missing ones are ignored."""
        paths = list(paths)
        with self._boundary("delete", paths):
            self._delete(paths)

    def walk_files(self, prefix: str) -> Iterator[StoredFile]:
        """Every file under ``prefix``, at any depth (temp files included)."""
        with self._boundary("list", prefix):
            yield from self._walk_files(prefix)

    def touch(self, paths: Sequence[str]) -> List[bool]:
        """Renew the modification time of each file; return, per file, whether it exists."""
        with self._boundary("touch", paths):
            return self._touch(paths)

    def list_uploads(self, prefix: str) -> List[PendingUpload]:
        """The unfinished multipart uploads of objects under ``prefix`` ([] on a storage
        without them)."""
        with self._boundary("list uploads", prefix):
            return self._list_uploads(prefix)

    def abort_uploads(self, uploads: Sequence[PendingUpload]) -> None:
        """Abort these uploads, dropping their parts; ones already gone are ignored."""
        with self._boundary("abort uploads", [u.path for u in uploads]):
            self._abort_uploads(uploads)

    def describe(self, path: str = "") -> str:
        """A human-readable location, for messages."""
        return path

    @contextmanager
    def _boundary(
        self, operation: str, paths: Union[str, Sequence[str]], missing_passes: bool = False
    ) -> Iterator[None]:
        """Where every failure of the storage becomes a CheckpointStorageError (see the
        class). ``paths`` is what the operation worked on; ``missing_passes``: a
        FileNotFoundError is the answer ("missing"), not a failure."""
        try:
            yield
        except Exception as ex:
            if isinstance(ex, CheckpointException):
                raise  # already worded (a nested call, or a rule of the backend)
            if missing_passes and isinstance(ex, FileNotFoundError):
                raise
            if not isinstance(ex, (OSError,) + self.SERVICE_ERRORS):
                raise  # a bug, not the storage: its own traceback says more
            raise self._failure(operation, paths, ex) from ex

    def _failure(
        self, operation: str, paths: Union[str, Sequence[str]], error: Exception
    ) -> CheckpointStorageError:
        text = self._explain(error)
        paths = [paths] if isinstance(paths, str) else list(paths)
        if text.path is not None:
            where, others = self.describe(text.path), ""
        else:
            where = self.describe(paths[0] if paths else "")
            others = " (and %d more)" % (len(paths) - 1) if len(paths) > 1 else ""
        return CheckpointStorageError(
            "Could not %s %s%s: %s. %s"
            % (OPERATIONS[operation], where, others, text.reason.rstrip("."), text.advice),
            operation=operation,
            path=where,
            reason=text.reason,
        )

    def _explain(self, error: Exception) -> FailureText:
        """The reason for ``error`` and what to do about it. Backends word their
        service's errors by overriding this; the OS's are worded here."""
        if isinstance(error, OSError) and error.strerror:
            return FailureText(error.strerror, _OS_ADVICE.get(error.errno, DEFAULT_ADVICE))
        return FailureText("%s: %s" % (type(error).__name__, error), DEFAULT_ADVICE)

    # -- what each backend implements -------------------------------------------------

    @abstractmethod
    def _write(self, path: str, parts: Sequence, durable: bool, temp_prefix: Optional[str]) -> None:
        """``write``'s implementation."""

    def _write_hashed(
        self,
        parts: Sequence,
        durable: bool,
        path_for_digest: Callable[[str], str],
        temp_prefix: str,
    ) -> Tuple[str, bool]:
        """``write_hashed``: this default hashes first; backends that can write before
        knowing the name override it to hash and write in one pass."""
        digest = content_hash(parts)
        path = path_for_digest(digest)
        size = sum(memoryview(p).nbytes for p in parts)
        if self.stat_many([path])[0] in (size, UNKNOWN_SIZE):
            return digest, False
        self.write(path, parts, durable, temp_prefix)
        return digest, True

    @abstractmethod
    def _read_into(self, path: str, buffer: memoryview) -> int:
        """``read_into``'s implementation."""

    @abstractmethod
    def _read(self, path: str) -> bytes:
        """``read``'s implementation."""

    @abstractmethod
    def _stat_many(self, paths: Sequence[str]) -> List[Optional[int]]:
        """``stat_many``'s implementation."""

    @abstractmethod
    def _list_dir(self, path: str) -> List[Tuple[str, bool]]:
        """``list_dir``'s implementation."""

    @abstractmethod
    def _delete(self, paths: List[str]) -> None:
        """``delete``'s implementation."""

    @abstractmethod
    def _walk_files(self, prefix: str) -> Iterator[StoredFile]:
        """``walk_files``'s implementation."""

    @abstractmethod
    def _touch(self, paths: Sequence[str]) -> List[bool]:
        """``touch``'s implementation."""

    def _list_uploads(self, prefix: str) -> List[PendingUpload]:
        """``list_uploads``: a storage without multipart uploads has none."""
        return []

    def _abort_uploads(self, uploads: Sequence[PendingUpload]) -> None:
        """``abort_uploads``: a storage without multipart uploads has none to abort."""


class LocalDirBackend(StorageBackend):
    """A directory on a local file system.

    Reads open only regular files inside the root: a FIFO, a device, a socket, a
    symbolic link, or a file reached through a linked folder that leads out of the
    root is reported missing (FileNotFoundError), never read or waited on.
    """

    TYPE = "local"
    writes_on_calling_thread = True

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self._made_dirs = set()
        self._real_root: Optional[str] = None
        self._dirs_inside = set()  # folders whose real path is known to be inside the root

    def _ensure_dir(self, directory: str) -> None:
        # Remembered, so a save does not re-check its directories on every file.
        if directory not in self._made_dirs:
            os.makedirs(directory, exist_ok=True)
            self._made_dirs.add(directory)

    def _full(self, path: str) -> str:
        return os.path.join(self.root, *path.split("/"))

    def describe(self, path: str = "") -> str:
        return self._full(path)

    def _write(
        self, path: str, parts: Sequence, durable: bool, temp_prefix: Optional[str] = None
    ) -> None:
        full = self._full(path)
        self._ensure_dir(os.path.dirname(full))
        temp = self._full(temp_prefix) if temp_prefix else os.path.join(os.path.dirname(full), TEMP_PREFIX)
        self._publish(self._write_temp(temp, parts, durable), full, durable)

    def _write_hashed(
        self,
        parts: Sequence,
        durable: bool,
        path_for_digest: Callable[[str], str],
        temp_prefix: str,
    ) -> Tuple[str, bool]:
        # One pass over the data: each block is hashed and written while it is still
        # in the CPU cache; the content-addressed name is known only at the end.
        # The temporary file is flushed to disk only once it is known to be needed: a
        # blob stored already (an unchanged pack) costs no fdatasync.
        hasher = new_hasher()
        tmp = self._write_temp(self._full(temp_prefix), parts, durable, hasher, sync=False)
        try:
            digest = hasher.hexdigest()
            path = path_for_digest(digest)
            if self.stat_many([path])[0] == os.path.getsize(tmp):
                os.unlink(tmp)
                return digest, False
            # Missing, or damaged (wrong size): ours has the right bytes, it replaces it.
            if durable:
                _datasync_path(tmp)
            full = self._full(path)
            self._ensure_dir(os.path.dirname(full))
            self._publish(tmp, full, durable)
            return digest, True
        except BaseException:
            _remove_quietly(tmp)
            raise

    def _write_temp(self, prefix: str, parts: Sequence, durable: bool, hasher=None, sync: bool = True) -> str:
        """Write ``parts`` to a new file named ``prefix`` + a random part; return its path.
        ``durable``: its writeback is started block by block, and, with ``sync``, waited
        for (fdatasync) before it is closed."""
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
            if durable and sync:
                _datasync(fd)
        except BaseException:
            os.close(fd)
            _remove_quietly(tmp)
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

    def _open_regular(self, path: str) -> io.FileIO:
        """``path`` opened for reading, if it is a regular file inside the root; else
        FileNotFoundError. Opening never blocks (a FIFO without a writer would) and
        never follows a link at the last step; the folder is checked to lie inside
        the root (a linked folder could lead anywhere)."""
        full = self._full(path)
        try:
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as ex:
            # ELOOP: a symbolic link; ENXIO: a socket; ENOTDIR: a file where a folder is.
            if ex.errno in (errno.ELOOP, errno.ENXIO, errno.ENOTDIR):
                raise _not_a_stored_file(full) from ex
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode) or not self._inside_root(os.path.dirname(full)):
                raise _not_a_stored_file(full)
            os.set_blocking(fd, True)
            return io.FileIO(fd, "rb", closefd=True)
        except BaseException:
            os.close(fd)
            raise

    def _inside_root(self, directory: str) -> bool:
        """Whether ``directory``'s real path (links resolved) lies inside the root's;
        remembered per folder, since a store reads many files of few folders."""
        if directory in self._dirs_inside:
            return True
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        real = os.path.realpath(directory)
        if os.path.commonpath([real, self._real_root]) != self._real_root:
            return False
        self._dirs_inside.add(directory)
        return True

    def _read_into(self, path: str, buffer: memoryview) -> int:
        with self._open_regular(path) as f:
            view = memoryview(buffer).cast("B")
            total = 0
            while total < len(view):
                n = f.readinto(view[total:])
                if not n:
                    break
                total += n
            return total

    def _read(self, path: str) -> bytes:
        with self._open_regular(path) as f:
            return f.readall()

    def _stat_many(self, paths: Sequence[str]) -> List[Optional[int]]:
        sizes = []
        for path in paths:
            try:
                info = os.stat(self._full(path))
            except (FileNotFoundError, NotADirectoryError):
                sizes.append(None)
                continue
            # A FIFO or a device is no stored file (reads say so too).
            sizes.append(info.st_size if stat.S_ISREG(info.st_mode) else None)
        return sizes

    def _list_dir(self, path: str) -> List[Tuple[str, bool]]:
        try:
            with os.scandir(self._full(path)) as entries:
                return [
                    (e.name, e.is_dir())
                    for e in entries
                    if not e.name.startswith(TEMP_PREFIX)
                ]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _delete(self, paths: List[str]) -> None:
        for path in paths:
            try:
                os.remove(self._full(path))
            except FileNotFoundError:
                pass

    def _walk_files(self, prefix: str) -> Iterator[StoredFile]:
        top = self._full(prefix)
        # os.walk skips folders it cannot read unless told: a listing that silently
        # misses files (leases, manifests) would mislead gc.
        for directory, _, files in os.walk(top, onerror=_raise_unless_missing):
            relative = os.path.relpath(directory, self.root).replace(os.sep, "/")
            for name in files:
                try:
                    info = os.stat(os.path.join(directory, name))
                except FileNotFoundError:
                    continue
                yield StoredFile("%s/%s" % (relative, name), info.st_size, info.st_mtime)

    def _touch(self, paths: Sequence[str]) -> List[bool]:
        found = []
        for path in paths:
            try:
                os.utime(self._full(path))  # as cheap as checking the age first
                found.append(True)
            except FileNotFoundError:
                found.append(False)
        return found


def _not_a_stored_file(full: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "not a regular file inside the store", full)


def _raise_unless_missing(error: OSError) -> None:
    if not isinstance(error, (FileNotFoundError, NotADirectoryError)):
        raise error


def _remove_quietly(path: str) -> None:
    """Remove a temp file of a write that failed; the write's error is the news."""
    try:
        os.unlink(path)
    except OSError:
        pass


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
