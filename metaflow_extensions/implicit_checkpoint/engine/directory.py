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

A checkpoint's description of its folder comes from the store, where anyone with write
access could have re-framed it, so ``parse_folder`` checks all of it before anything
on disk changes: clean paths of one kind each, inside folders it lists; modes of
permission bits (setuid, setgid and sticky are never restored, nor saved); sizes equal
to their extents, which lie inside listed blobs; links that cannot lead outside the
folder. An OS failure of the restore's own writes is a CheckpointStorageError.
"""

import mmap
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .errors import CheckpointCorrupted, CheckpointException, CheckpointStorageError
from .host_memory import populated_buffer
from .layout import CHUNK_BYTES, PACK_BYTES
from .notices import warn
from .validation import is_digest

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

#: The mode bits saved and restored: permissions. Setuid, setgid and sticky bits are
#: never set by a restore (tasks often run as root; a checkpoint must not grant more).
PERMISSION_BITS = 0o777
#: What ``stat.S_IMODE`` can return; a mode with other bits is not a mode.
_MODE_BITS = 0o7777
_MIN_NS, _MAX_NS = -(2**63), 2**63 - 1
#: Linux's limits on a name and a path (NAME_MAX, PATH_MAX less its NUL), in bytes.
_NAME_MAX_BYTES, _PATH_MAX_BYTES = 255, 4095
#: The largest blob layout.py makes (a chunk; packs are smaller): none of a file's bytes
#: come from a larger one, so a hostile blob size cannot make a read allocate more.
_MAX_FILE_BLOB_BYTES = max(CHUNK_BYTES, PACK_BYTES)


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
            self.size, self.mode, self.mtime_ns = n, _permissions(after.st_mode), after.st_mtime_ns
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
    """List the folder ``root`` (a missing folder is an empty one). A symbolic link that
    leads outside it cannot be saved, since a restore refuses to recreate one."""
    scan = FolderScan(root)
    if os.path.isdir(root):
        _walk(root, "", scan)
    links = {e.rel: e.symlink for e in scan.entries if e.symlink is not None}
    for rel, target in links.items():
        problem = link_leaves_folder(rel, target, links)
        if problem:
            raise CheckpointException(
                "save() cannot checkpoint the symbolic link %s in current.checkpoint.directory "
                "(%s -> %s): its target %s, and a restore never recreates a link leading out "
                "of the folder (writes through it would land outside). Make it a link inside "
                "the folder, or copy what it points to into the folder."
                % (rel, os.path.join(root, rel), target, problem)
            )
    return scan


def _permissions(st_mode: int) -> int:
    return stat.S_IMODE(st_mode) & PERMISSION_BITS


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
            scan.folders[rel] = {"mode": _permissions(info.st_mode), "mtime_ns": info.st_mtime_ns}
            subfolders.append((entry.path, rel))
        elif stat.S_ISREG(info.st_mode):
            scan.entries.append(
                FileEntry(rel, entry.path, info.st_size, _permissions(info.st_mode), info.st_mtime_ns)
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


@dataclass(frozen=True)
class SavedEntry:
    """A file, symbolic link or folder of a checkpoint's folder, validated for a restore
    (``parse_folder``): what is put on disk."""

    mode: int = 0  # as recorded; only its permission bits are restored
    mtime_ns: int = 0
    size: int = 0
    extents: Tuple[Tuple[str, int, int], ...] = ()  # (blob digest, offset, length)
    symlink: Optional[str] = None  # the link's target, for a symbolic link

    @property
    def permissions(self) -> int:
        """The mode a restore sets: permission bits, never setuid, setgid or sticky."""
        return self.mode & PERMISSION_BITS


class FolderRestore:
    """Puts a checkpoint's folder onto disk at ``root``: ``stage`` (read and verify every
    file into a staging folder beside it), then ``apply`` (or ``discard``).

    The checkpoint's description of its folder is validated first (``parse_folder``):
    an invalid one raises CheckpointCorrupted here, before anything on disk changes.
    ``blob_sizes`` is the checkpoint's blob list (digest -> size), which every file's
    extents must lie within.
    """

    def __init__(
        self,
        root: str,
        files: Dict[str, dict],
        folders: Dict[str, dict],
        extents: Dict[str, list],
        key: str,
        blob_sizes: Optional[Mapping[str, int]] = None,
    ):
        self.root = os.path.abspath(root)
        self._key = key
        self._files, self._folders = parse_folder(
            self.root, files, folders, extents, blob_sizes if blob_sizes is not None else {}, key
        )
        self._staging: Optional[str] = None
        self._staged: Dict[str, str] = {}  # rel -> its staged copy

    def stage(self, read: ReadExtents) -> None:
        """Write every file and link of the checkpoint into the staging folder, each
        file's bytes verified by ``read``. On failure nothing is left behind; a failure
        to write there is a CheckpointStorageError."""
        try:
            with self._writing(changing=False):
                self._staging = self._make_staging()
                self._check_room()
            batch, batch_bytes = [], 0
            for number, (rel, entry) in enumerate(sorted(self._files.items())):
                staged = os.path.join(self._staging, str(number))
                self._staged[rel] = staged
                if entry.symlink is not None:
                    with self._writing(changing=False):
                        os.symlink(entry.symlink, staged)
                    continue
                batch.append((rel, entry, staged))
                batch_bytes += entry.size
                if batch_bytes >= _RESTORE_BATCH_BYTES:
                    self._stage_files(batch, read)
                    batch, batch_bytes = [], 0
            self._stage_files(batch, read)
        except BaseException:
            self.discard()
            raise

    def _make_staging(self) -> str:
        parent = os.path.dirname(self.root)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix="." + os.path.basename(self.root) + RESTORING_MARK, dir=parent)
        if os.path.isdir(self.root) and os.stat(self.root).st_dev != os.stat(staging).st_dev:
            shutil.rmtree(staging, ignore_errors=True)
            raise CheckpointException(
                "Cannot restore checkpoint %s into %s: it is a mount point, and its files "
                "are staged beside it (on another file system) before they are moved in. "
                "Restore into a folder inside it." % (self._key, self.root)
            )
        return staging

    def _check_room(self) -> None:
        """Refuse, before writing, a folder the staging file system cannot hold (files
        are written through memory maps: a full disk would kill the process instead)."""
        nbytes = sum(entry.size for entry in self._files.values())
        free_bytes, free_inodes = _free_space(self._staging)
        if free_bytes is not None and nbytes > free_bytes:
            problem = "its files need %d bytes and %d are free" % (nbytes, free_bytes)
        elif free_inodes is not None and len(self._files) > free_inodes:
            problem = "it has %d files and links and %d inodes are free" % (len(self._files), free_inodes)
        else:
            return
        raise CheckpointStorageError(
            "Checkpoint %s cannot be restored into %s: %s on that file system. The folder "
            "was not changed; free space there and load again." % (self._key, self.root, problem),
            operation="write",
            path=self._staging,
            reason="no space left on device: " + problem,
        )

    def _stage_files(self, batch: list, read: ReadExtents) -> None:
        requests, maps = [], []
        try:
            with self._writing(changing=False):
                for rel, entry, staged in batch:
                    with open(staged, "w+b") as f:
                        if entry.size:
                            f.truncate(entry.size)
                            maps.append(mmap.mmap(f.fileno(), entry.size))
                            requests.append((entry.extents, memoryview(maps[-1]), "file %r" % rel))
            if requests:
                read(requests)
        finally:
            del requests
            for mapping in maps:
                try:
                    mapping.close()
                except BufferError:
                    pass  # a view of it is still referenced (a traceback): closed when collected
        with self._writing(changing=False):
            for rel, entry, staged in batch:
                os.chmod(staged, entry.permissions)
                os.utime(staged, ns=(entry.mtime_ns, entry.mtime_ns))

    def apply(self) -> None:
        """Make ``root`` exactly the checkpoint's folder."""
        try:
            with self._writing(changing=True):
                self._apply()
        finally:
            self.discard()
        _warn_special_bits(self._key, {**self._files, **self._folders})

    def _apply(self) -> None:
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
            entry = self._files[rel]
            if entry.symlink is not None:
                os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
        # Deepest first: placing a folder's content changes its modification time.
        for rel in sorted(self._folders, key=lambda r: -r.count("/")):
            path = os.path.join(self.root, *rel.split("/"))
            entry = self._folders[rel]
            os.chmod(path, entry.permissions)
            os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))

    def discard(self) -> None:
        """Remove the staging folder (and whatever is still in it)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    @contextmanager
    def _writing(self, changing: bool) -> Iterator[None]:
        """Turn an OS failure of the restore's own writes (into the staging folder, or,
        ``changing``, into the target) into a CheckpointStorageError."""
        try:
            yield
        except OSError as ex:
            path = str(ex.filename if ex.filename is not None else self.root)
            reason = ex.strerror or str(ex)
            if changing:
                what = (
                    "part way, moving its files into place (%s: %s). The folder holds part of "
                    "the checkpoint's files; load it again once that is fixed" % (path, reason)
                )
            else:
                what = (
                    "writing its files into a staging folder beside it (%s: %s). The folder "
                    "was not changed; fix that and load again" % (path, reason)
                )
            raise CheckpointStorageError(
                "Checkpoint %s: restoring its folder into %s failed %s." % (self._key, self.root, what),
                operation="write",
                path=path,
                reason=reason,
            ) from ex


def _free_space(path: str) -> Tuple[Optional[int], Optional[int]]:
    """Bytes and inodes free for this process on ``path``'s file system; None for what
    the file system does not report (btrfs counts no inodes, some FUSE ones no blocks)."""
    if not hasattr(os, "statvfs"):
        return None, None
    info = os.statvfs(path)
    privileged = hasattr(os, "geteuid") and os.geteuid() == 0  # root may use the reserve
    blocks = info.f_bfree if privileged else info.f_bavail
    inodes = info.f_ffree if privileged else info.f_favail
    return (
        blocks * info.f_frsize if info.f_blocks else None,
        inodes if info.f_files else None,
    )


def _warn_special_bits(key: str, entries: Mapping[str, SavedEntry]) -> None:
    special = sorted(rel for rel, entry in entries.items() if entry.mode & ~PERMISSION_BITS)
    if special:
        warn(
            "@checkpoint: checkpoint %s recorded setuid, setgid or sticky bits on %d "
            "file(s) or folder(s) (%s: %s); they were restored with their permission bits "
            "only, as a restore never sets those."
            % (key, len(special), special[0], oct(entries[special[0]].mode))
        )


def _remove_unsaved(
    directory: str, rel_dir: str, files: Mapping[str, SavedEntry], folders: Mapping[str, SavedEntry]
) -> None:
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
        elif rel not in files or (files[rel].symlink is not None) != entry.is_symlink():
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


class _Invalid(Exception):
    """One thing wrong with a checkpoint's description of its folder: ``problem`` says
    what, ``field`` names the entry (``file 'a/b'``)."""

    def __init__(self, problem: str, field: str):
        super().__init__(problem)
        self.problem, self.field = problem, field


def parse_folder(
    root: str,
    files: Any,
    folders: Any,
    extents: Any,
    blob_sizes: Any,
    key: str,
) -> Tuple[Dict[str, SavedEntry], Dict[str, SavedEntry]]:
    """Validate a checkpoint's ``files`` and ``directories`` sections (and its files'
    extents, within ``blob_sizes``) for a restore into ``root``; return the files and
    links, and the folders, as ``SavedEntry``.

    Everything is read from the store, so anything may be wrong: paths must be clean,
    inside folders the checkpoint lists (never under a link) and of one kind only;
    modes permission, setuid, setgid and sticky bits only (the last three are not
    restored); times 64-bit nanoseconds; a file's size exactly the bytes of its
    extents, each within a listed blob; a link's target relative and inside the folder.

    Raises
    ------
    CheckpointCorrupted
        Naming the checkpoint, the entry and what is wrong with it.
    """
    try:
        files, folders = _section(files, "files"), _section(folders, "directories", empty_if_none=True)
        extents = _section(extents, "the files' extents", empty_if_none=not files)
        blob_sizes = _section(blob_sizes, "the blob list", empty_if_none=True)
        _check_paths(root, files, folders)
        parsed_folders = {rel: _parse_folder_entry(rel, spec) for rel, spec in folders.items()}
        parsed_files = {
            rel: _parse_file(rel, spec, extents.get(rel), blob_sizes) for rel, spec in files.items()
        }
        links = {rel: entry.symlink for rel, entry in parsed_files.items() if entry.symlink is not None}
        for rel, target in links.items():
            problem = link_leaves_folder(rel, target, links)
            if problem:
                raise _Invalid("the symbolic link %r points to %r, which %s" % (rel, target, problem), _label(rel))
    except _Invalid as ex:
        raise CheckpointCorrupted(
            "Checkpoint %s cannot be restored: the checkpoint's description of its files is "
            "invalid: %s; it was altered or damaged; load an earlier checkpoint. Its folder "
            "was not changed." % (key, ex.problem),
            key=key,
            field=ex.field,
        ) from None
    return parsed_files, parsed_folders


def _section(value: Any, name: str, empty_if_none: bool = False) -> dict:
    if value is None and empty_if_none:
        return {}
    if not isinstance(value, dict):
        raise _Invalid("%s is a %s, not a map" % (name, type(value).__name__), name)
    return value


def _label(rel: Any, kind: str = "file") -> str:
    return "%s %r" % (kind, rel)


def _check_paths(root: str, files: dict, folders: dict) -> None:
    """Every path is relative, clean, and inside a folder the checkpoint lists (never
    under a symbolic link), and names one entry: a damaged or hostile manifest cannot
    write outside the folder, nor fail half way through a restore."""
    room = _PATH_MAX_BYTES - len(os.fsencode(root)) - 1
    for rel in list(files) + list(folders):
        parent = rel.rpartition("/")[0] if isinstance(rel, str) else ""
        if not _is_clean(rel, room) or (parent and parent not in folders):
            raise _Invalid("%r is not a clean path inside its folder" % (rel,), _label(rel))
        if rel in files and rel in folders:
            spec = files[rel]
            kind = "symbolic link" if isinstance(spec, dict) and "symlink" in spec else "file"
            raise _Invalid("%r is both a %s and a folder" % (rel, kind), _label(rel))


def _is_clean(rel: Any, room: int) -> bool:
    encoded = _utf8(rel) if isinstance(rel, str) and "\x00" not in rel else None
    if not encoded:
        return False
    parts = encoded.split(b"/")
    return len(encoded) <= room and all(
        part not in (b"", b".", b"..") and len(part) <= _NAME_MAX_BYTES for part in parts
    )


def _parse_folder_entry(rel: str, spec: Any) -> SavedEntry:
    label = _label(rel, "folder")
    spec = _spec(spec, label)
    return SavedEntry(mode=_mode(spec, label), mtime_ns=_mtime(spec, label))


def _parse_file(rel: str, spec: Any, extents: Any, blob_sizes: dict) -> SavedEntry:
    label = _label(rel)
    spec = _spec(spec, label)
    mtime_ns = _mtime(spec, label)
    if "symlink" in spec:
        target = spec["symlink"]
        encoded = _utf8(target) if isinstance(target, str) and "\x00" not in target else None
        if not encoded or len(encoded) > _PATH_MAX_BYTES:
            raise _Invalid("the symbolic link %r has the target %r, not a path" % (rel, target), label)
        if spec.get("size", 0) != 0 or extents:
            raise _Invalid("the symbolic link %r has content (a size or extents)" % rel, label)
        return SavedEntry(mtime_ns=mtime_ns, symlink=target)
    size = spec.get("size")
    if not _is_count(size):
        raise _Invalid("the file %r has the size %r, not a byte count" % (rel, size), label)
    parsed = _parse_extents(rel, extents, blob_sizes)
    stored = sum(length for _, _, length in parsed)
    if stored != size:
        raise _Invalid(
            "the file %r has the size %d, but its extents hold %d bytes" % (rel, size, stored), label
        )
    return SavedEntry(mode=_mode(spec, label), mtime_ns=mtime_ns, size=size, extents=parsed)


def _parse_extents(rel: str, extents: Any, blob_sizes: dict) -> Tuple[Tuple[str, int, int], ...]:
    """A file's extents: well-formed ``[digest, offset, length]``, each inside a blob the
    checkpoint lists, no larger than a save makes (so a read allocates no more)."""
    label = _label(rel)
    if not isinstance(extents, (list, tuple)):
        raise _Invalid("the file %r has no list of extents (where its bytes are), but %r" % (rel, extents), label)
    parsed = []
    for extent in extents:
        if not (
            isinstance(extent, (list, tuple))
            and len(extent) == 3
            and is_digest(extent[0])
            and _is_count(extent[1])
            and _is_count(extent[2])
        ):
            raise _Invalid(
                "the file %r has the extent %r, not [blob digest, offset, length] with a "
                "BLAKE3 hex digest and non-negative integers" % (rel, extent),
                label,
            )
        digest, offset, length = extent
        blob_size = blob_sizes.get(digest)
        if not _is_count(blob_size) or blob_size > _MAX_FILE_BLOB_BYTES:
            raise _Invalid(
                "the file %r is read from blob %s, which the checkpoint lists with the size %r "
                "(a blob of a file has at most %d bytes)" % (rel, digest, blob_size, _MAX_FILE_BLOB_BYTES),
                label,
            )
        if offset + length > blob_size:
            raise _Invalid(
                "the file %r is read from bytes %d to %d of blob %s, which has %d bytes"
                % (rel, offset, offset + length, digest, blob_size),
                label,
            )
        parsed.append((digest, offset, length))
    return tuple(parsed)


def _spec(spec: Any, label: str) -> dict:
    if not isinstance(spec, dict):
        raise _Invalid("the %s is described by a %s, not a map" % (label, type(spec).__name__), label)
    return spec


def _mode(spec: dict, label: str) -> int:
    mode = spec.get("mode")
    if not _is_count(mode) or mode & ~_MODE_BITS:
        raise _Invalid(
            "the %s has the mode %s, not permission bits"
            % (label, oct(mode) if _is_count(mode) else repr(mode)),
            label,
        )
    return mode


def _mtime(spec: dict, label: str) -> int:
    mtime_ns = spec.get("mtime_ns")
    if not _is_int(mtime_ns) or not _MIN_NS <= mtime_ns <= _MAX_NS:
        raise _Invalid(
            "the %s has the modification time %r, not a 64-bit count of nanoseconds" % (label, mtime_ns),
            label,
        )
    return mtime_ns


def _utf8(text: str) -> Optional[bytes]:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_int(value) and value >= 0


def link_leaves_folder(rel: str, target: str, links: Mapping[str, str]) -> Optional[str]:
    """Why following the symbolic link ``rel`` (to ``target``; ``links`` are the folder's
    links) could lead outside the folder, or None if it cannot.

    The target is read from the link's folder, one name at a time: it must be relative,
    never climb above the folder, and never climb back out of a link (``link/..`` climbs
    from wherever that link leads, not from where it is). Then, if every link of the
    folder passes, no path inside the folder resolves outside it, whatever the links
    point to (nothing is listed under a link).
    """
    if target.startswith("/"):
        return "is absolute"
    here = rel.split("/")[:-1]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            here.append(part)
        elif not here:
            return "climbs above the folder"
        elif "/".join(here) in links:
            return "climbs back out of the symbolic link %r" % "/".join(here)
        else:
            here.pop()
    return None


def _check_encodable(rel: str, root: str) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointException(
            "save() cannot checkpoint %r in current.checkpoint.directory (%s): its name is "
            "not valid UTF-8. Rename it." % (rel, root)
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
