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
from .keys import CheckpointKey, is_valid_flow, is_valid_name
from .layout import PlannedBlob
from .locks import STALE, Locks, Marker, marker_owner
from .manifest import Manifest, pack_manifest, unpack_manifest
from .parallel import LazyPool
from .validation import describe, is_digest

ROOT = "_implicit_checkpoints"
#: Blob problems that are no damage of the blob itself: repair never deletes for them.
MISSING, MISDESCRIBED = "missing", "misdescribed"
#: Above this many blobs to check, one listing of every blob beats a check per blob.
LISTING_THRESHOLD = 256
_MANIFEST_SUFFIX = ".manifest"
_GANG_SUFFIX = ".gang"
_ENDED_SUFFIX = ".ended"
#: A node's part of a gang checkpoint, and the file a node that gave up leaves beside them.
PART_SUFFIX, ABORT = ".part", "abort"


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
        self._manifest_cache: Dict[str, Manifest] = {}
        self._damaged: Dict[str, set] = {}  # flow -> blobs a read found altered (rewritten by saves)
        self._noted = set()  # per-run notes this process has written

    # -- paths -----------------------------------------------------------------------

    @staticmethod
    def blob_path(flow: str, digest: str) -> str:
        """Where blob ``digest`` lives. Paths into the store are built only from checked
        parts: a digest from a manifest that is no digest never becomes a path."""
        if not is_digest(digest) or not is_valid_flow(flow):
            raise CheckpointCorrupted(
                "%s is not a blob of flow %s (a blob is named by 64 lowercase hex digits); "
                "the manifest naming it was altered or damaged." % (describe(digest), describe(flow))
            )
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
        between its blob checks and its commit meanwhile. Raises locks.StoreBusy.

        The new deletion epoch is written before the block runs, so before any blob is
        deleted: were it written after, a failure to write it would leave blobs gone
        that processes (and the commit fence of a paused save) still trust."""
        with self.locks.deleting(self._locks_dir(flow), self._temp_root(flow), wait) as marker:
            self.locks.new_epoch(self._locks_dir(flow))  # fails: nothing is deleted
            self._deleters[flow] = marker
            try:
                yield
            finally:
                del self._deleters[flow]

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

    def put_blobs(
        self, flow: str, blobs: Sequence[PlannedBlob], one_pass: Sequence[bool]
    ) -> Tuple[List[str], List[bool]]:
        """Hash and store ``blobs`` (skipping ones stored intact); return their hashes and,
        per blob, whether it was written.

        A blob marked ``one_pass`` (it probably changed) is hashed and written in one
        pass. The others are hashed first; those not checked in this deletion epoch are
        checked (present, right size) in one batched call, and only missing or damaged
        ones are written. Both paths store the same bytes.
        """
        blobs = list(blobs)
        checked_set = self._checked(flow)
        temp_prefix = self._temp_prefix(flow)
        checked = [i for i, fast in enumerate(one_pass) if not fast]
        digests: List[Optional[str]] = [None] * len(blobs)
        for i, digest in zip(checked, self._pool.map(lambda i: content_hash(blobs[i].parts), checked)):
            digests[i] = digest
        self._check_sizes(flow, {digests[i]: blobs[i].size for i in checked})

        claimed = set()

        damaged = self._damaged.setdefault(flow, set())

        def write(i: int) -> Tuple[str, bool]:
            blob = blobs[i]
            if one_pass[i]:
                digest, written = self.backend.write_hashed(
                    blob.parts, self.durable, lambda d: self.blob_path(flow, d), temp_prefix
                )
                if not written and digest in damaged:  # the stored one was altered: replace it
                    self.backend.write(self.blob_path(flow, digest), blob.parts, self.durable, temp_prefix)
                    written = True
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
                damaged.discard(digest)
            return digest, written

        results = self._guarded(flow, lambda: self._pool.map(write, range(len(blobs))))
        return [digest for digest, _ in results], [written for _, written in results]

    def _check_sizes(self, flow: str, sizes: Dict[str, int]) -> Dict[str, str]:
        """Check, in one batched call, the blobs not checked yet in this deletion epoch;
        remember the intact ones and return ``{digest: problem}`` for the others. A blob
        found altered by a read is never taken as intact again by its size."""
        checked_set = self._checked(flow)
        damaged = self._damaged.setdefault(flow, set())
        with self._lock:
            unknown = {d: size for d, size in sizes.items() if d not in checked_set}
        problems = self.blob_problems(flow, unknown)
        with self._lock:
            problems.update({d: "failed its integrity check when read" for d in unknown if d in damaged})
            checked_set.update(d for d in unknown if d not in problems)
        return problems

    def forget_damaged(self, flow: str, digest: str) -> None:
        """A read found blob ``digest`` altered: this process's saves write it again
        instead of reusing it (content addressing puts the right bytes back)."""
        checked = self._checked(flow)
        with self._lock:
            checked.discard(digest)
            self._damaged.setdefault(flow, set()).add(digest)

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
                problems[digest] = MISSING
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
                self.forget_damaged(flow, request.hash)
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
        ``{digest: problem}`` for those missing, altered, or described with another size.

        A problem starting with ``MISSING`` or ``MISDESCRIBED`` is no damage of the blob
        (its bytes hash to its name; the manifest that lists it is wrong): repair must
        never delete such a blob. Each blob is read at its real size (one batched
        stat first), never at the size a manifest claims."""
        digests = sorted(sizes)
        real = dict(zip(digests, self._guarded(
            flow, lambda: self.backend.stat_many([self.blob_path(flow, d) for d in digests])
        )))

        def verify(digest: str) -> Optional[str]:
            claimed, size = sizes[digest], real[digest]
            if size is None:
                return MISSING
            length = claimed if size == UNKNOWN_SIZE else size
            buffer = memoryview(bytearray(length + 1))  # one byte more shows a longer blob
            try:
                n = self.backend.read_into(self.blob_path(flow, digest), buffer)
            except FileNotFoundError:
                return MISSING
            if content_hash([buffer[:n]]) != digest:
                return "content does not match its hash (altered)"
            if n != claimed:
                return "%s: the blob is intact (%d bytes), but the manifest says %d" % (MISDESCRIBED, n, claimed)
            return None

        found = self._guarded(flow, lambda: self._pool.map(verify, digests))
        return {digest: problem for digest, problem in zip(digests, found) if problem}

    def claimed_size_problems(self, flow: str, sizes: Dict[str, int]) -> Dict[str, str]:
        """Before a load allocates memory for ``sizes`` (digest -> size its manifest
        claims): ``{digest: problem}`` for blobs not stored with that size (one batched
        stat of the blobs not checked yet in this deletion epoch), so a crafted manifest
        cannot make a load allocate far beyond the bytes that are there."""
        return self._check_sizes(flow, sizes)

    # -- manifests -------------------------------------------------------------------

    def commit(self, key: CheckpointKey, manifest: Manifest) -> None:
        """Write the manifest: from this moment the checkpoint exists.

        Every blob it references must have been written or checked under this save's
        lease; those that were not (blobs reused from an earlier save without a look)
        are checked now, and a missing or damaged one fails the save.

        After the write, the commit is fenced (``_fence``): a save paused longer than
        the lease timeout anywhere before it never leaves a checkpoint missing a blob.
        """
        self._write_manifest(key, manifest, self.manifest_path(key))
        self._manifest_cache[str(key)] = manifest
        self._fence(key, manifest)

    def commit_part(self, key: CheckpointKey, node: int, manifest: Manifest) -> None:
        """Write one node's part of gang checkpoint ``key`` (gang.py), checked as a commit
        is; the checkpoint exists only once node 0 commits the global manifest."""
        self._write_manifest(key, manifest, "%s/%d%s" % (self.parts_dir(key), node, PART_SUFFIX))

    def _write_manifest(self, key: CheckpointKey, manifest: Manifest, path: str) -> None:
        lease = getattr(self._lease, "current", None)
        problems = self._check_sizes(key.flow, manifest.storage.blobs)
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
        try:
            self.backend.write(path, [pack_manifest(manifest)], self.durable, self._temp_prefix(key.flow))
        except CheckpointStorageError:
            raise  # the backend boundary named the operation, path and reason already
        except Exception as ex:
            raise CheckpointStorageError(
                "Could not commit checkpoint %s to %s: %s"
                % (key, self.backend.describe(path), ex)
            ) from ex

    def _fence(self, key: CheckpointKey, manifest: Manifest) -> None:
        """After the manifest write: make sure no deleter missed it and deleted one of
        its blobs (locks.Locks.fence). One listing of the locks dir when the save's
        lease still stands; otherwise wait for the deleters to finish, check every blob
        (one batched stat), and with one missing uncommit: remove the manifest (no load
        could have used it: a blob is missing) and raise ReusedBlobDamaged, which the
        next save (and a blocking save's retry) answers by storing every tensor anew."""
        lease = getattr(self._lease, "current", None)
        if lease is None:
            return
        locks_dir = self._locks_dir(key.flow)
        try:
            server_now = self.locks.fence(locks_dir, lease)
            if server_now is None:
                return
            self.locks.wait_for_deleters(locks_dir, lease, server_now)
            with self._lock:  # deleted blobs may be among those this process checked
                self._checked_blobs[key.flow] = (None, set())
            problems = self.blob_problems(key.flow, manifest.storage.blobs)
        except CheckpointStorageError as ex:
            self._uncommit(key)
            raise CheckpointStorageError(
                "Checkpoint %s was not committed: after writing its manifest, the check "
                "that no gc deleted its data meanwhile failed: %s" % (key, ex),
                operation=ex.operation, path=ex.path, reason=ex.reason,
            ) from ex
        if problems:
            self._uncommit(key)
            raise ReusedBlobDamaged(
                "Checkpoint %s was not committed: the save was stopped longer than the "
                "lease timeout (%.0f s) before its manifest was written, and gc took it "
                "for dead and deleted data it references: %s. Its manifest was removed "
                "again; save again (unchanged tensors are then stored anew)."
                % (
                    key,
                    STALE,
                    "; ".join(
                        "blob %s %s" % (self.backend.describe(self.blob_path(key.flow, d)), p)
                        for d, p in sorted(problems.items())
                    ),
                ),
                key=str(key),
            )

    def _uncommit(self, key: CheckpointKey) -> None:
        """Remove a manifest the fence refused; if that fails too, say so (a resume
        skips it: its blobs are checked before it is chosen)."""
        from .notices import warn

        try:
            self.delete_manifest(key)
        except CheckpointStorageError as ex:
            warn(
                "checkpoint: could not remove the manifest of %s, which references deleted "
                "data (resume skips it as damaged; `checkpoint verify` lists it): %s" % (key, ex)
            )

    def manifest_exists(self, key: CheckpointKey) -> bool:
        return str(key) in self._manifest_cache or self.backend.stat_many([self.manifest_path(key)])[0] is not None

    def read_manifest(self, key: CheckpointKey) -> Manifest:
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
        """Committed checkpoint keys of one task, oldest (lowest version) first. A node
        of a gang (other than node 0) has the gang's: those of its control task."""
        task_dir = self.task_dir(flow, run_id, step, task_id)
        entries = self.backend.list_dir(task_dir)
        if not entries:
            control = self.gang_pointer(flow, run_id, step, task_id)
            if control is not None:  # a gang node: its checkpoints are the gang's
                return self.list_keys(flow, run_id, step, control, attempt)
        if attempt is None:
            attempts = sorted(int(name) for name, is_dir in entries if is_dir and name.isdigit())
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
        """Remove a checkpoint: its manifest first (that uncommits it), then any gang parts."""
        self.backend.delete([self.manifest_path(key)])
        self._manifest_cache.pop(str(key), None)
        parts = self.parts_dir(key)
        self.backend.delete(["%s/%s" % (parts, name) for name, is_dir in self.backend.list_dir(parts) if not is_dir])

    # -- gangs (gang.py) ---------------------------------------------------------------

    @classmethod
    def parts_dir(cls, key: CheckpointKey) -> str:
        """Where the nodes of a gang write their parts of checkpoint ``key``."""
        return "%s/%d/parts/%08d.%s" % (
            cls.task_dir(key.flow, key.run_id, key.step, key.task_id), key.attempt, key.version, key.name
        )

    @classmethod
    def _nodes_dir(cls, flow: str, run_id: str, step: str, control_task_id: str, attempt: int) -> str:
        return "%s/%d/nodes" % (cls.task_dir(flow, run_id, step, control_task_id), attempt)

    @classmethod
    def _gang_pointer_path(cls, flow: str, run_id: str, step: str, task_id: str) -> str:
        # Beside the task directories, not one of them: a run's listing skips it.
        return cls.task_dir(flow, run_id, step, task_id) + _GANG_SUFFIX

    def gang_files_without_commit(self, flow: str, committed: set, cutoff: float) -> List[str]:
        """Parts (and abort notes) of gang saves that never committed (a node died), last
        modified before ``cutoff``: ``committed`` holds the keys of the committed
        checkpoints (text), read under the deleter's lock."""
        tasks = self._tasks_dir(flow)
        found = []
        for entry in self.backend.walk_files(tasks):
            parts = entry.path[len(tasks) + 1 :].split("/")
            if len(parts) != 7 or parts[4] != "parts" or not parts[3].isdigit():
                continue
            version, _, name = parts[5].partition(".")
            if not version.isdigit() or not is_valid_name(name) or entry.mtime >= cutoff:
                continue
            try:
                key = CheckpointKey(flow, parts[0], parts[1], parts[2], int(parts[3]), name, int(version))
            except CheckpointException:
                continue
            if str(key) not in committed:
                found.append(entry.path)
        return found

    def read_part(self, key: CheckpointKey, node: int) -> Manifest:
        path = "%s/%d%s" % (self.parts_dir(key), node, PART_SUFFIX)
        label = "%s (node %d's part)" % (key, node)
        cached = self._manifest_cache.get(label)
        if cached is not None:
            return cached
        try:
            part = unpack_manifest(self.backend.read(path), label)
        except FileNotFoundError:
            raise CheckpointNotFound(
                "Checkpoint %s has no part of node %d (looked for %s)."
                % (key, node, self.backend.describe(path))
            )
        self._manifest_cache[label] = part
        return part

    def gang_parts(self, key: CheckpointKey) -> set:
        """The nodes whose part of ``key`` is written, and ``ABORT`` if a node gave up."""
        found = set()
        for name, is_dir in self.backend.list_dir(self.parts_dir(key)):
            if is_dir:
                continue
            if name.startswith(ABORT):
                found.add(ABORT)
            elif name.endswith(PART_SUFFIX) and name[: -len(PART_SUFFIX)].isdigit():
                found.add(int(name[: -len(PART_SUFFIX)]))
        return found

    def abort_gang_save(self, key: CheckpointKey, node: int, reason: str) -> None:
        """Tell the other nodes that ``node`` gave up on checkpoint ``key``."""
        try:
            self.backend.write(
                "%s/%s.%d" % (self.parts_dir(key), ABORT, node), [reason.encode()], durable=False
            )
        except Exception:
            pass  # the others find out from this node's marker, or their timeout

    def abort_reason(self, key: CheckpointKey) -> str:
        parts = self.parts_dir(key)
        for name, is_dir in sorted(self.backend.list_dir(parts)):
            if not is_dir and name.startswith(ABORT):
                try:
                    return self.backend.read("%s/%s" % (parts, name)).decode(errors="replace")
                except FileNotFoundError:
                    continue
        return "no reason given"

    def hold_node_marker(
        self, flow: str, run_id: str, step: str, control_task_id: str, attempt: int, node: int
    ) -> Marker:
        """The marker that tells a gang's other nodes this node's task is alive."""
        path = "%s/%d" % (self._nodes_dir(flow, run_id, step, control_task_id, attempt), node)
        return self.locks.hold(path, "node %d" % node)

    def end_node_marker(self, marker: Marker) -> None:
        """At the end of a node's task: its marker is replaced by one saying it ended."""
        self.backend.write(marker.path + _ENDED_SUFFIX, [b""], durable=False)
        self.locks.release(marker)

    def node_markers(self, key: CheckpointKey, num_nodes: int) -> Tuple[Dict[int, StoredFile], set]:
        """The markers of the gang saving ``key``: those of live nodes, by node, and the
        nodes whose task ended."""
        top = self._nodes_dir(key.flow, key.run_id, key.step, key.task_id, key.attempt)
        live, ended = {}, set()
        for entry in self.backend.walk_files(top):
            name = entry.path.rsplit("/", 1)[-1]
            node, _, suffix = name.partition(".")
            if node.isdigit() and int(node) < num_nodes:
                if not suffix:
                    live[int(node)] = entry
                elif "." + suffix == _ENDED_SUFFIX:
                    ended.add(int(node))
        return live, ended

    def node_marker_owner(self, path: str) -> Optional[Tuple[str, int]]:
        """``(host, pid)`` of the process holding a node marker, or None."""
        try:
            return marker_owner(self.backend.read(path).decode(errors="replace"))
        except FileNotFoundError:
            return None

    def write_gang_pointer(self, flow: str, run_id: str, step: str, task_id: str, gang) -> None:
        """Note that task ``task_id`` is node ``gang.node_index`` of the gang whose
        checkpoints are kept under its control task."""
        text = "%s %d %d" % (gang.control_task_id, gang.node_index, gang.num_nodes)
        self.backend.write(self._gang_pointer_path(flow, run_id, step, task_id), [text.encode()], durable=False)

    def gang_pointer(self, flow: str, run_id: str, step: str, task_id: str) -> Optional[str]:
        """The control task of the gang ``task_id`` is a node of, or None."""
        try:
            text = self.backend.read(self._gang_pointer_path(flow, run_id, step, task_id)).decode()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        control = text.split()[0] if text.split() else None
        return control if control != task_id else None

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
