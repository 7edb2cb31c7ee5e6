"""The checkpoint store: content-addressed blobs and committed manifests on a backend.

Layout under the backend root (the flow datastore root)::

    <Flow>/_implicit_checkpoints/blobs/<h[:2]>/<h>              one blob, named by its hash
    <Flow>/_implicit_checkpoints/tasks/<run>/<step>/<task>/<attempt>/<version>.<name>.manifest
    <Flow>/_implicit_checkpoints/locks/...                      save leases, gc (locks.py)
    <Flow>/_implicit_checkpoints/tmp/.tmp-<lease>.<random>      temp files of a save in progress

Blobs are shared by every checkpoint of a flow, so unchanged data is stored once across
saves, attempts, foreach siblings and runs. A checkpoint exists exactly when its
manifest does; the manifest is written after all of its blobs, and every blob is
verified against its hash when read.
"""

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from .backends import TEMP_PREFIX, UNKNOWN_SIZE, StorageBackend, StoredFile
from .errors import (
    CheckpointCorrupted,
    CheckpointException,
    CheckpointNotFound,
    CheckpointStorageError,
)
from .hashing import content_hash
from .keys import CheckpointKey, is_valid_name
from .layout import PlannedBlob
from .locks import STALE, Locks, Marker
from .manifest import STORAGE, pack_manifest, unpack_manifest
from .parallel import LazyPool

ROOT = "_implicit_checkpoints"
#: Above this many blobs to check, one listing of every blob beats a check per blob.
LISTING_THRESHOLD = 256
_MANIFEST_SUFFIX = ".manifest"


class ReusedBlobDamaged(CheckpointCorrupted):
    """A blob a save reused without writing it is missing or damaged: nothing was committed."""


@dataclass
class BlobRead:
    """One blob to read, and where its bytes go: ``(offset in blob, destination view)``."""

    hash: str
    size: int
    targets: List[Tuple[int, memoryview]]
    label: str  # what the bytes belong to, for error messages ("field 'model'")


class CheckpointStore:
    """Reads and writes checkpoints of any flow on one storage backend.

    Every save runs under a lease (``save_lease``): blobs are checked, written and
    referenced, and the manifest committed, only while it is held, and gc deletes only
    while no lease is held (locks.py). A blob is reused only once checked in the current
    deletion epoch: present with the right size.
    """

    def __init__(self, backend: StorageBackend, durable: bool = True, workers: int = 4):
        self.backend = backend
        self.durable = durable
        self.locks = Locks(backend)
        self._pool = LazyPool(workers, "checkpoint-io")
        self._lock = threading.Lock()
        # Blobs this process wrote or checked (present, right size) since the last
        # deletion it knows of; per flow: (deletion epoch, digests).
        self._checked_blobs: Dict[str, Tuple[Optional[frozenset], set]] = {}
        self._lease = threading.local()
        self._deleters: Dict[str, Marker] = {}  # flow -> the deleter marker held on it
        # Per chunk slot of the previous save: (source version, was it already stored?)
        self._previous_slots: Dict[tuple, Tuple[Optional[int], bool]] = {}
        self._manifest_cache: Dict[str, dict] = {}
        self._noted = set()  # per-run notes this process has written

    # -- paths -----------------------------------------------------------------------

    @staticmethod
    def blob_path(flow: str, digest: str) -> str:
        return "%s/%s/blobs/%s/%s" % (flow, ROOT, digest[:2], digest)

    @staticmethod
    def _blob_dir(flow: str) -> str:
        return "%s/%s/blobs" % (flow, ROOT)

    @staticmethod
    def _tasks_dir(flow: str) -> str:
        return "%s/%s/tasks" % (flow, ROOT)

    @staticmethod
    def _locks_dir(flow: str) -> str:
        return "%s/%s/locks" % (flow, ROOT)

    @staticmethod
    def _temp_root(flow: str) -> str:
        return "%s/%s/tmp" % (flow, ROOT)

    @staticmethod
    def latest_dir(flow: str, step: str, foreach_indices: Sequence[int]) -> str:
        """Where each run's newest checkpoint of one step (and foreach index) is noted."""
        branch = "-".join(str(i) for i in foreach_indices) or "_"
        return "%s/%s/latest/%s/%s" % (flow, ROOT, step, branch)

    @classmethod
    def task_dir(cls, flow: str, run_id: str, step: str, task_id: str) -> str:
        return "%s/%s/%s/%s" % (cls._tasks_dir(flow), run_id, step, task_id)

    @classmethod
    def manifest_path(cls, key: CheckpointKey) -> str:
        return "%s/%d/%08d.%s%s" % (
            cls.task_dir(key.flow, key.run_id, key.step, key.task_id),
            key.attempt,
            key.version,
            key.name,
            _MANIFEST_SUFFIX,
        )

    # -- leases ----------------------------------------------------------------------

    @contextmanager
    def save_lease(self, key: CheckpointKey) -> Iterator[None]:
        """Hold the lease a save needs from its first blob check until its commit."""
        owner = "+".join((key.run_id, key.step, key.task_id))
        with self.locks.lease(
            self._locks_dir(key.flow), self._temp_root(key.flow), owner, key.attempt
        ) as lease:
            if lease is not None:
                with self._lock:
                    epoch, _ = self._checked_blobs.get(key.flow, (None, set()))
                    if epoch != lease.epoch:  # blobs were deleted since: check again
                        self._checked_blobs[key.flow] = (lease.epoch, set())
            self._lease.current = lease
            try:
                yield
            finally:
                self._lease.current = None

    @contextmanager
    def deleting(self, flow: str, wait: float) -> Iterator[None]:
        """Hold the deleter's lock on ``flow``'s blobs (gc, verify --repair): no save is
        between its blob checks and its commit meanwhile. Raises locks.StoreBusy."""
        with self.locks.deleting(self._locks_dir(flow), self._temp_root(flow), wait) as marker:
            self._deleters[flow] = marker
            try:
                yield
            finally:
                del self._deleters[flow]
                if marker.deleted:  # processes drop what they checked before this
                    self.locks.new_epoch(self._locks_dir(flow))

    def _temp_prefix(self, flow: str) -> str:
        """How this save's temp files are named: after its lease, when it holds one."""
        lease = getattr(self._lease, "current", None)
        if lease is not None:
            return lease.temp_prefix
        return "%s/%s" % (self._temp_root(flow), TEMP_PREFIX)

    def _checked(self, flow: str) -> set:
        with self._lock:
            return self._checked_blobs.setdefault(flow, (None, set()))[1]

    # -- blobs -----------------------------------------------------------------------

    def put_blobs(self, flow: str, blobs: Sequence[PlannedBlob]) -> Tuple[List[str], int]:
        """Hash and store ``blobs`` (skipping ones stored intact); return hashes, bytes written.

        A chunk that probably changed since the previous save (or is new) is hashed
        and written in one pass. The others are hashed first; those not checked in this
        deletion epoch are checked (present, right size) in one batched call, and only
        missing or damaged ones are written. The guess only picks the faster path: both
        store the same bytes.
        """
        blobs = list(blobs)
        checked_set = self._checked(flow)
        temp_prefix = self._temp_prefix(flow)
        one_pass = [self._probably_changed(blob) for blob in blobs]
        checked = [i for i, fast in enumerate(one_pass) if not fast]
        digests: List[Optional[str]] = [None] * len(blobs)
        for i, digest in zip(checked, self._pool.map(lambda i: content_hash(blobs[i].parts), checked)):
            digests[i] = digest
        self._check_sizes(flow, {digests[i]: blobs[i].size for i in checked})

        claimed = set()

        def write(i: int) -> Tuple[str, bool]:
            blob = blobs[i]
            if one_pass[i]:
                digest, written = self.backend.write_hashed(
                    blob.parts, self.durable, lambda d: self.blob_path(flow, d), temp_prefix
                )
            else:
                digest = digests[i]
                with self._lock:
                    if digest in checked_set or digest in claimed:
                        return digest, False
                    claimed.add(digest)  # a twin blob of this save is written once
                self.backend.write(self.blob_path(flow, digest), blob.parts, self.durable, temp_prefix)
                written = True
            with self._lock:
                checked_set.add(digest)
            return digest, written

        results = self._guarded(flow, lambda: self._pool.map(write, range(len(blobs))))
        self._previous_slots = {
            blob.slot: (blob.version, not written)
            for blob, (_, written) in zip(blobs, results)
            if blob.slot is not None
        }
        return (
            [digest for digest, _ in results],
            sum(blob.size for blob, (_, written) in zip(blobs, results) if written),
        )

    def _check_sizes(self, flow: str, sizes: Dict[str, int]) -> Dict[str, str]:
        """Check, in one batched call, the blobs not checked yet in this deletion epoch;
        remember the intact ones and return ``{digest: problem}`` for the others."""
        checked_set = self._checked(flow)
        with self._lock:
            unknown = {d: size for d, size in sizes.items() if d not in checked_set}
        problems = self.blob_problems(flow, unknown)
        with self._lock:
            checked_set.update(d for d in unknown if d not in problems)
        return problems

    def blob_problems(self, flow: str, sizes: Dict[str, int]) -> Dict[str, str]:
        """``{digest: problem}`` for the blobs of ``sizes`` (digest -> expected size) that
        are missing or have the wrong size. No blob is read: one batched check, or, for
        more than ``LISTING_THRESHOLD`` blobs, one listing of the flow's blobs."""
        digests = sorted(sizes)
        if not digests:
            return {}
        if len(digests) > LISTING_THRESHOLD:
            listed = {e.path.rsplit("/", 1)[-1]: e.size for e in self.iter_blobs(flow)}
            found = [listed.get(digest) for digest in digests]
        else:
            found = self._guarded(
                flow, lambda: self.backend.stat_many([self.blob_path(flow, d) for d in digests])
            )
        problems = {}
        for digest, size in zip(digests, found):
            if size is None:
                problems[digest] = "missing"
            elif size not in (sizes[digest], UNKNOWN_SIZE):
                problems[digest] = "has %d bytes, expected %d" % (size, sizes[digest])
        return problems

    def _guarded(self, flow: str, action):
        try:
            return action()
        except CheckpointStorageError:
            raise
        except Exception as ex:
            raise CheckpointStorageError(
                "Could not store checkpoint data in %s: %s: %s"
                % (self.backend.describe(self._blob_dir(flow)), type(ex).__name__, ex)
            ) from ex

    def _probably_changed(self, blob: PlannedBlob) -> bool:
        if blob.slot is None:
            return False
        previous = self._previous_slots.get(blob.slot)
        if previous is None:
            return True
        version, was_unchanged = previous
        if blob.version is not None and version is not None:
            return blob.version != version
        return not was_unchanged

    def read_blobs(self, flow: str, reads: Sequence[BlobRead], key: str) -> None:
        """Read each blob into its targets, verifying its hash. Raises CheckpointCorrupted."""

        def read(request: BlobRead) -> None:
            path = self.blob_path(flow, request.hash)
            whole = (
                len(request.targets) == 1
                and request.targets[0][0] == 0
                and len(request.targets[0][1]) == request.size
            )
            buffer = request.targets[0][1] if whole else memoryview(bytearray(request.size))
            try:
                n = self.backend.read_into(path, buffer)
            except FileNotFoundError:
                raise CheckpointCorrupted(
                    "Checkpoint %s: the data of %s is missing (blob %s not found at %s)."
                    % (key, request.label, request.hash, self.backend.describe(path)),
                    key=key,
                    field=request.label,
                )
            if n != request.size or content_hash([buffer]) != request.hash:
                raise CheckpointCorrupted(
                    "Checkpoint %s: the data of %s failed its integrity check (blob %s "
                    "at %s has %d bytes, expected %d, or different content). The stored "
                    "bytes were altered; load an earlier checkpoint."
                    % (
                        key,
                        request.label,
                        request.hash,
                        self.backend.describe(path),
                        n,
                        request.size,
                    ),
                    key=key,
                    field=request.label,
                )
            if not whole:
                for offset, target in request.targets:
                    target[:] = buffer[offset : offset + len(target)]

        self._pool.map(read, list(reads))

    def verify_blobs(self, flow: str, sizes: Dict[str, int]) -> Dict[str, str]:
        """Read and hash every blob of ``sizes`` (digest -> expected size); return
        ``{digest: problem}`` for those missing, of the wrong size, or altered."""

        def verify(digest: str) -> Optional[str]:
            path = self.blob_path(flow, digest)
            size = sizes[digest]
            buffer = memoryview(bytearray(size + 1))  # one byte more shows a longer blob
            try:
                n = self.backend.read_into(path, buffer)
            except FileNotFoundError:
                return "missing"
            if n != size:
                return "has %s bytes, expected %d" % ("more" if n > size else n, size)
            if content_hash([buffer[:n]]) != digest:
                return "content does not match its hash (altered)"
            return None

        digests = sorted(sizes)
        found = self._guarded(flow, lambda: self._pool.map(verify, digests))
        return {digest: problem for digest, problem in zip(digests, found) if problem}

    # -- manifests -------------------------------------------------------------------

    def commit(self, key: CheckpointKey, manifest: dict) -> None:
        """Write the manifest: from this moment the checkpoint exists.

        Every blob it references must have been written or checked under this save's
        lease; those that were not (blobs reused from an earlier save without a look)
        are checked now, and a missing or damaged one fails the save.
        """
        lease = getattr(self._lease, "current", None)
        problems = self._check_sizes(key.flow, manifest[STORAGE]["blobs"])
        if problems:
            raise ReusedBlobDamaged(
                "Checkpoint %s was not committed: %s. These hold unchanged tensors the save "
                "reused from an earlier checkpoint, whose stored bytes are gone or damaged "
                "(deleted by hand, or by verify --repair). Save again: unchanged tensors "
                "are then stored anew."
                % (
                    key,
                    "; ".join(
                        "blob %s %s" % (self.backend.describe(self.blob_path(key.flow, d)), p)
                        for d, p in sorted(problems.items())
                    ),
                ),
                key=str(key),
            )
        if lease is not None:
            lease.marker.check("Saving checkpoint %s" % key)
        path = self.manifest_path(key)
        try:
            self.backend.write(path, [pack_manifest(manifest)], self.durable, self._temp_prefix(key.flow))
        except Exception as ex:
            raise CheckpointStorageError(
                "Could not commit checkpoint %s to %s: %s"
                % (key, self.backend.describe(path), ex)
            ) from ex
        self._manifest_cache[str(key)] = manifest

    def read_manifest(self, key: CheckpointKey) -> dict:
        text = str(key)
        cached = self._manifest_cache.get(text)
        if cached is not None:
            return cached
        path = self.manifest_path(key)
        try:
            data = self.backend.read(path)
        except FileNotFoundError:
            raise CheckpointNotFound(
                "No committed checkpoint %s (looked for %s)."
                % (text, self.backend.describe(path))
            )
        manifest = unpack_manifest(data, text)
        self._manifest_cache[text] = manifest
        return manifest

    def list_keys(
        self, flow: str, run_id: str, step: str, task_id: str, attempt: Optional[int] = None
    ) -> List[CheckpointKey]:
        """Committed checkpoint keys of one task, oldest (lowest version) first."""
        task_dir = self.task_dir(flow, run_id, step, task_id)
        if attempt is None:
            attempts = sorted(
                int(name) for name, is_dir in self.backend.list_dir(task_dir)
                if is_dir and name.isdigit()
            )
        else:
            attempts = [attempt]
        keys = []
        for number in attempts:
            for name, is_dir in self.backend.list_dir("%s/%d" % (task_dir, number)):
                key = self._key_from_filename(flow, run_id, step, task_id, number, name)
                if not is_dir and key is not None:
                    keys.append(key)
        return sorted(keys, key=lambda k: (k.version, k.attempt, k.name))

    def list_run_tasks(self, flow: str, run_id: str) -> List[Tuple[str, str]]:
        """``(step, task_id)`` of every task of a run that has checkpoint records."""
        run_dir = "%s/%s/tasks/%s" % (flow, ROOT, run_id)
        tasks = []
        for step, step_is_dir in self.backend.list_dir(run_dir):
            if step_is_dir:
                for task_id, is_dir in self.backend.list_dir("%s/%s" % (run_dir, step)):
                    if is_dir:
                        tasks.append((step, task_id))
        return sorted(tasks)

    @staticmethod
    def _key_from_filename(flow, run_id, step, task_id, attempt, filename):
        if not filename.endswith(_MANIFEST_SUFFIX):
            return None
        version, _, name = filename[: -len(_MANIFEST_SUFFIX)].partition(".")
        if not version.isdigit() or not is_valid_name(name):
            return None
        return CheckpointKey(flow, run_id, step, task_id, attempt, name, int(version))

    def iter_manifests(self, flow: str) -> Iterator[CheckpointKey]:
        """The key of every committed checkpoint of ``flow`` (one recursive listing)."""
        tasks = self._tasks_dir(flow)
        for entry in self.backend.walk_files(tasks):
            parts = entry.path[len(tasks) + 1 :].split("/")
            if len(parts) == 5 and parts[3].isdigit():
                try:
                    key = self._key_from_filename(flow, *parts[:3], int(parts[3]), parts[4])
                except CheckpointException:
                    continue  # a run or task id the key rules reject: not ours
                if key is not None:
                    yield key

    def iter_blobs(self, flow: str) -> Iterator[StoredFile]:
        """Every stored blob of ``flow`` (its path ends with its digest), temp files excluded."""
        for entry in self.backend.walk_files(self._blob_dir(flow)):
            if not entry.path.rsplit("/", 1)[-1].startswith(TEMP_PREFIX):
                yield entry

    def stale_temp_files(self, flow: str, cutoff: float) -> List[str]:
        """Temp files of unfinished writes in ``flow``'s store modified before ``cutoff``
        (epoch seconds). A save writes its lease without holding one, so temp files
        among the locks count only once as old as a dead lease."""
        found = []
        locks_cutoff = min(cutoff, time.time() - STALE)
        for top, before in (
            (self._blob_dir(flow), cutoff),
            (self._tasks_dir(flow), cutoff),
            (self._locks_dir(flow), locks_cutoff),
        ):
            found.extend(
                entry.path
                for entry in self.backend.walk_files(top)
                if entry.path.rsplit("/", 1)[-1].startswith(TEMP_PREFIX) and entry.mtime < before
            )
        # tmp/ holds only the temp files of saves, each under its lease.
        found.extend(e.path for e in self.backend.walk_files(self._temp_root(flow)) if e.mtime < cutoff)
        return found

    def delete_temp_files(self, flow: str, paths: Sequence[str]) -> None:
        """Delete temp files found by ``stale_temp_files``; only under ``deleting(flow)``."""
        if flow not in self._deleters:
            raise CheckpointException(
                "Temp files of %s can only be deleted under CheckpointStore.deleting()." % flow
            )
        self.backend.delete(paths)

    def delete_blobs(self, flow: str, digests: Sequence[str]) -> None:
        """Delete blobs; only under ``deleting(flow)``, since a save may be about to use them."""
        marker = self._deleters.get(flow)
        if marker is None:
            raise CheckpointException(
                "Blobs of %s can only be deleted under CheckpointStore.deleting()." % flow
            )
        marker.check("Deleting blobs of %s" % flow)
        marker.deleted = True
        self.backend.delete([self.blob_path(flow, d) for d in digests])
        checked = self._checked(flow)
        with self._lock:
            checked.difference_update(digests)

    def delete_manifest(self, key: CheckpointKey) -> None:
        self.backend.delete([self.manifest_path(key)])
        self._manifest_cache.pop(str(key), None)

    # -- across runs -----------------------------------------------------------------

    def note_latest(self, key: CheckpointKey, foreach_indices: Sequence[int]) -> None:
        """Note that ``key``'s task (in its run) committed a checkpoint of this step and
        foreach index just now.

        One small file per run, so concurrent runs never overwrite each other's note: it
        names the task, and its modification time is the task's latest commit (written
        once per process, touched after that). It is only a hint: readers list the task
        and verify its manifests.
        """
        path = "%s/%s" % (self.latest_dir(key.flow, key.step, foreach_indices), key.run_id)
        if path in self._noted:
            self.backend.touch([path])
        else:
            self.backend.write(path, [str(key).encode()], durable=False)
            self._noted.add(path)

    def latest_notes(self, flow: str, step: str, foreach_indices: Sequence[int]) -> List[Tuple[float, str]]:
        """``(noted at, run id)`` of every run that noted a commit of this step and branch."""
        return [
            (entry.mtime, entry.path.rsplit("/", 1)[-1])
            for entry in self.backend.walk_files(self.latest_dir(flow, step, foreach_indices))
            if not entry.path.rsplit("/", 1)[-1].startswith(".")
        ]

    def read_latest_note(
        self, flow: str, step: str, foreach_indices: Sequence[int], run_id: str
    ) -> Optional[CheckpointKey]:
        """The key a run's note names, or None when it is gone or unreadable."""
        try:
            return CheckpointKey.parse(
                self.backend.read(
                    "%s/%s" % (self.latest_dir(flow, step, foreach_indices), run_id)
                ).decode()
            )
        except (FileNotFoundError, UnicodeDecodeError, CheckpointException):
            return None
