"""A task's folder (``current.checkpoint.directory``) ⇄ file specs, and back onto disk.

Save: ``scan_folder`` walks the folder without following symbolic links and lists its
files, symbolic links and folders (relative '/'-separated paths, sizes, modes,
modification times); ``FileEntry.capture`` reads one file's bytes, checking with
``fstat`` before and after that nothing wrote it meanwhile. Every save reads every
file: the bytes committed are exactly the bytes on disk at ``save()``, whoever wrote
them and however (a stat cache would miss writes through a shared memory map, which do
not always update a file's times). The bytes are then stored like tensor bytes
(layout.py, store.py): content-addressed, so an unchanged file is hashed but never
written again.

Load: ``FolderRestore`` first writes every file of the checkpoint, verified, into a
staging folder beside the target (nothing in the target changes if a blob is missing
or damaged), then makes the target exactly the saved folder: entries the checkpoint
does not have are removed, files are moved into place (copies, never links into the
store), and modes and modification times are set, folders' last (Hugging Face rotates
``checkpoint-*`` folders by modification time).
"""

import mmap
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import CheckpointCorrupted, CheckpointException
from .host_memory import populated_buffer
from .notices import warn

#: Staging folders of a restore in progress sit beside the target: ``.<name>.restoring-*``.
RESTORING_MARK = ".restoring-"
#: A restore writes at most this many bytes of files per batch of reads.
_RESTORE_BATCH_BYTES = 1024**3
#: Files at least this large are read into a populated mapping rather than a bytearray.
_POPULATE_BYTES = 1024 * 1024
#: A file that changes while it is read is read again, at most this many times.
_READ_ATTEMPTS = 3

#: What a read of extents gets: ``(extents, destination view, label)`` requests.
ReadExtents = Callable[[List[tuple]], None]


@dataclass
class FileEntry:
    """One file or symbolic link of a scanned folder."""

    rel: str  # '/'-separated path relative to the folder
    path: str  # absolute path
    size: int = 0
    mode: int = 0o644
    mtime_ns: int = 0
    symlink: Optional[str] = None  # the link's target, for a symbolic link

    @property
    def group(self) -> str:
        """The folder the entry is in (its files are packed together, see layout.py)."""
        return self.rel.rpartition("/")[0]

    def capture(self, into: Optional[memoryview] = None) -> Optional[memoryview]:
        """Read the file's bytes (into ``into``, which holds ``size`` bytes, or a new
        buffer); None if it was removed since the scan. Size, mode and modification time
        are updated to what was read. A file still being written after a few tries is
        kept as read, with a warning."""
        view = None
        for _ in range(_READ_ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                return None
            except OSError as ex:
                raise CheckpointException(
                    "save() could not read %s in current.checkpoint.directory (%s): %s. "
                    "Make it readable, or move it out of the folder." % (self.rel, self.path, ex)
                ) from ex
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    raise CheckpointException(
                        "%s in current.checkpoint.directory changed from a file to something "
                        "else while save() read the folder; save once it is written." % self.rel
                    )
                if into is not None:
                    view = memoryview(into).cast("B")
                elif before.st_size >= _POPULATE_BYTES:
                    view = memoryview(populated_buffer(before.st_size))[: before.st_size]
                else:
                    view = memoryview(bytearray(before.st_size))
                n = _read_fully(fd, view)
                grew = n == len(view) and os.read(fd, 1) != b""
                after = os.fstat(fd)
            finally:
                os.close(fd)
            self.size, self.mode, self.mtime_ns = n, stat.S_IMODE(after.st_mode), after.st_mtime_ns
            if not grew and n == after.st_size and _same_version(before, after):
                return view[:n]
        warn(
            "@checkpoint: %s in current.checkpoint.directory kept changing while save() read "
            "it (something is still writing it); the checkpoint holds the %d bytes read, "
            "which may mix old and new content." % (self.rel, self.size)
        )
        return view[: self.size]

    def public(self) -> dict:
        """What the manifest (and ``inspect()``) shows of the entry."""
        if self.symlink is not None:
            return {"symlink": self.symlink, "size": 0, "mtime_ns": self.mtime_ns}
        return {"size": self.size, "mode": self.mode, "mtime_ns": self.mtime_ns}


@dataclass
class FolderScan:
    """A folder's entries at one moment: files and links (each folder's own first, in
    name order, then its subfolders'), and the folders with their mode and mtime."""

    root: str
    entries: List[FileEntry] = field(default_factory=list)
    folders: Dict[str, dict] = field(default_factory=dict)

    @property
    def files(self) -> List[FileEntry]:
        """The regular files: the entries with bytes to store."""
        return [e for e in self.entries if e.symlink is None]


def scan_folder(root: str) -> FolderScan:
    """List the folder ``root`` (a missing folder is an empty one)."""
    scan = FolderScan(root)
    if os.path.isdir(root):
        _walk(root, "", scan)
    return scan


def _walk(directory: str, rel_dir: str, scan: FolderScan) -> None:
    with os.scandir(directory) as listing:
        entries = sorted(listing, key=lambda e: e.name)
    subfolders = []
    for entry in entries:
        rel = entry.name if not rel_dir else rel_dir + "/" + entry.name
        _check_encodable(rel, scan.root)
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while listing
        if stat.S_ISLNK(info.st_mode):
            scan.entries.append(
                FileEntry(rel, entry.path, mtime_ns=info.st_mtime_ns, symlink=os.readlink(entry.path))
            )
        elif stat.S_ISDIR(info.st_mode):
            scan.folders[rel] = {"mode": stat.S_IMODE(info.st_mode), "mtime_ns": info.st_mtime_ns}
            subfolders.append((entry.path, rel))
        elif stat.S_ISREG(info.st_mode):
            scan.entries.append(
                FileEntry(rel, entry.path, info.st_size, stat.S_IMODE(info.st_mode), info.st_mtime_ns)
            )
        else:
            raise CheckpointException(
                "save() cannot checkpoint %s in current.checkpoint.directory (%s): it is "
                "a %s. Only files, folders and symbolic links are saved; move it out of "
                "the folder." % (rel, entry.path, _kind(info.st_mode))
            )
    for path, rel in subfolders:
        _walk(path, rel, scan)


def capture_files(entries: Sequence[FileEntry]) -> List[Tuple[FileEntry, memoryview]]:
    """Read every file of ``entries`` into memory of its own (a synchronous save);
    files removed since the scan are left out."""
    captured = []
    for entry in entries:
        data = entry.capture()
        if data is not None:
            captured.append((entry, data))
    return captured


# -- restore -------------------------------------------------------------------------------


class FolderRestore:
    """Puts a checkpoint's folder onto disk at ``root``: ``stage`` (read and verify every
    file into a staging folder beside it), then ``apply`` (or ``discard``)."""

    def __init__(self, root: str, files: Dict[str, dict], folders: Dict[str, dict], extents: Dict[str, list], key: str):
        _check_tree(files, folders, key)
        self.root = os.path.abspath(root)
        self._files = files
        self._folders = folders
        self._extents = extents
        self._key = key
        self._staging: Optional[str] = None
        self._staged: Dict[str, str] = {}  # rel -> its staged copy

    def stage(self, read: ReadExtents) -> None:
        """Write every file and link of the checkpoint into the staging folder, each
        file's bytes verified by ``read``. On failure nothing is left behind."""
        parent = os.path.dirname(self.root)
        os.makedirs(parent, exist_ok=True)
        self._staging = tempfile.mkdtemp(prefix="." + os.path.basename(self.root) + RESTORING_MARK, dir=parent)
        try:
            if os.path.isdir(self.root) and os.stat(self.root).st_dev != os.stat(self._staging).st_dev:
                raise CheckpointException(
                    "Cannot restore checkpoint %s into %s: it is a mount point, and its files "
                    "are staged beside it (on another file system) before they are moved in. "
                    "Restore into a folder inside it." % (self._key, self.root)
                )
            batch, batch_bytes = [], 0
            for number, (rel, spec) in enumerate(sorted(self._files.items())):
                staged = os.path.join(self._staging, str(number))
                self._staged[rel] = staged
                if "symlink" in spec:
                    os.symlink(spec["symlink"], staged)
                    continue
                batch.append((rel, spec, staged))
                batch_bytes += spec["size"]
                if batch_bytes >= _RESTORE_BATCH_BYTES:
                    self._stage_files(batch, read)
                    batch, batch_bytes = [], 0
            self._stage_files(batch, read)
        except BaseException:
            self.discard()
            raise

    def _stage_files(self, batch: list, read: ReadExtents) -> None:
        requests, maps = [], []
        try:
            for rel, spec, staged in batch:
                with open(staged, "w+b") as f:
                    size = spec["size"]
                    if size:
                        f.truncate(size)
                        maps.append(mmap.mmap(f.fileno(), size))
                        requests.append((self._extents[rel], memoryview(maps[-1]), "file %r" % rel))
            if requests:
                read(requests)
        finally:
            del requests
            for mapping in maps:
                try:
                    mapping.close()
                except BufferError:
                    pass  # a view of it is still referenced (a traceback): closed when collected
        for rel, spec, staged in batch:
            os.chmod(staged, spec["mode"])
            os.utime(staged, ns=(spec["mtime_ns"], spec["mtime_ns"]))

    def apply(self) -> None:
        """Make ``root`` exactly the checkpoint's folder."""
        try:
            os.makedirs(self.root, exist_ok=True)
            os.chmod(self.root, stat.S_IMODE(os.stat(self.root).st_mode) | stat.S_IRWXU)
            _remove_unsaved(self.root, "", self._files, self._folders)
            for rel in sorted(self._folders, key=lambda r: r.count("/")):
                path = os.path.join(self.root, *rel.split("/"))
                if not os.path.isdir(path):  # kept folders were made writable above
                    os.mkdir(path)
            for rel, staged in self._staged.items():
                target = os.path.join(self.root, *rel.split("/"))
                os.replace(staged, target)
                spec = self._files[rel]
                if "symlink" in spec:
                    os.utime(target, ns=(spec["mtime_ns"], spec["mtime_ns"]), follow_symlinks=False)
            # Deepest first: placing a folder's content changes its modification time.
            for rel in sorted(self._folders, key=lambda r: -r.count("/")):
                path = os.path.join(self.root, *rel.split("/"))
                spec = self._folders[rel]
                os.chmod(path, spec["mode"])
                os.utime(path, ns=(spec["mtime_ns"], spec["mtime_ns"]))
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the staging folder (and whatever is still in it)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def _remove_unsaved(directory: str, rel_dir: str, files: Dict[str, dict], folders: Dict[str, dict]) -> None:
    """Remove what is under ``directory`` and not in the checkpoint as the same kind."""
    with os.scandir(directory) as listing:
        entries = list(listing)
    for entry in entries:
        rel = entry.name if not rel_dir else rel_dir + "/" + entry.name
        is_dir = entry.is_dir(follow_symlinks=False)
        if is_dir and rel in folders:
            os.chmod(entry.path, stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode) | stat.S_IRWXU)
            _remove_unsaved(entry.path, rel, files, folders)
        elif is_dir:
            shutil.rmtree(entry.path, onerror=_make_writable_and_retry)
        elif rel not in files or ("symlink" in files[rel]) != entry.is_symlink():
            os.unlink(entry.path)


def _make_writable_and_retry(function, path, _):
    os.chmod(os.path.dirname(path), stat.S_IRWXU)
    function(path)


def make_empty_folder(path: str) -> None:
    """Create ``path`` as an empty folder, removing whatever was there."""
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, onerror=_make_writable_and_retry)
        else:
            os.unlink(path)
    os.makedirs(path)


# -- checks ------------------------------------------------------------------------------


def _check_encodable(rel: str, root: str) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointException(
            "save() cannot checkpoint %r in current.checkpoint.directory (%s): its name is "
            "not valid UTF-8. Rename it." % (rel, root)
        )


def _check_tree(files: Dict[str, dict], folders: Dict[str, dict], key: str) -> None:
    """Every path is relative, clean, and inside a folder the checkpoint lists (never
    under a symbolic link): a damaged or hostile manifest cannot write outside."""
    for rel in list(files) + list(folders):
        parts = rel.split("/")
        parent = rel.rpartition("/")[0]
        if (
            not rel
            or "\x00" in rel
            or any(part in ("", ".", "..") for part in parts)
            or (parent and parent not in folders)
        ):
            raise CheckpointCorrupted(
                "Checkpoint %s lists the file or folder %r, which is not a clean path inside "
                "its folder; its folder cannot be restored." % (key, rel),
                key=key,
            )


def _same_version(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino) == (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
        after.st_ino,
    )


def _read_fully(fd: int, view: memoryview) -> int:
    total = 0
    while total < len(view):
        n = os.readv(fd, [view[total:]])
        if not n:
            break
        total += n
    return total


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "named pipe"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"
