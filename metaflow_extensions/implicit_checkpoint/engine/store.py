"""The checkpoint store: content-addressed blobs and committed manifests on a backend.

Blobs are shared by every checkpoint of a flow, so unchanged data is stored once across
saves, attempts, foreach siblings and runs. A checkpoint exists exactly when its
manifest does; the manifest is written after all of its blobs, and every blob is
verified against its hash when read. Where each file lives is store_paths'; the files
only gang saves write are gang_files'; the notes across runs are latest_notes'.
"""

import threading
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
from . import store_paths as paths
from .keys import CheckpointKey
from .gang_files import read_gang_pointer
from .latest_notes import LatestNotes
from .layout import PlannedBlob
from .locks import STALE, Locks, Marker
from .manifest import Manifest, pack_manifest, unpack_manifest
from .parallel import BACKGROUND_NICE, LazyPool, shared_pool

#: Blob problems that are no damage of the blob itself: repair never deletes for them.
MISSING, MISDESCRIBED = "missing", "misdescribed"
#: Above this many blobs to check, one listing of every blob beats a check per blob.
LISTING_THRESHOLD = 256


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
        self._background_pool = shared_pool(workers, "checkpoint-io-background", BACKGROUND_NICE)
        self._lock = threading.Lock()
        # Blobs this process wrote or checked (present, right size) since the last
        # deletion it knows of; per flow: (deletion epoch, digests).
        self._checked_blobs: Dict[str, Tuple[Optional[frozenset], set]] = {}
        self._lease = threading.local()
        self._deleters: Dict[str, Marker] = {}  # flow -> the deleter marker held on it
        self._manifest_cache: Dict[str, Manifest] = {}
        self._damaged: Dict[str, set] = {}  # flow -> blobs a read found altered (rewritten by saves)
        self.notes = LatestNotes(backend)

    #: Where a blob and a manifest live (store_paths): kept here for callers holding a store.
    blob_path = staticmethod(paths.blob_path)
    manifest_path = staticmethod(paths.manifest_path)

    # -- leases ----------------------------------------------------------------------

    @contextmanager
    def save_lease(self, key: CheckpointKey) -> Iterator[None]:
        """Hold the lease a save needs from its first blob check until its commit."""
        owner = "+".join((key.run_id, key.step, key.task_id))
        with self.locks.lease(
            paths.locks_dir(key.flow), paths.temp_root(key.flow), owner, key.attempt
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
        with self.locks.deleting(paths.locks_dir(flow), paths.temp_root(flow), wait) as marker:
            self.locks.new_epoch(paths.locks_dir(flow))  # fails: nothing is deleted
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
        return "%s/%s" % (paths.temp_root(flow), TEMP_PREFIX)

    def _checked(self, flow: str) -> set:
        with self._lock:
            return self._checked_blobs.setdefault(flow, (None, set()))[1]

    # -- blobs -----------------------------------------------------------------------

    def put_blobs(
        self, flow: str, blobs: Sequence[PlannedBlob], one_pass: Sequence[bool], background: bool = False
    ) -> Tuple[List[str], List[bool]]:
        """Hash and store ``blobs`` (skipping ones stored intact); return their hashes and,
        per blob, whether it was written.

        A blob marked ``one_pass`` (it probably changed) is hashed and written in one
        pass. The others are hashed first; those not checked in this deletion epoch are
        checked (present, right size) in one batched call, and only missing or damaged
        ones are written. Both paths store the same bytes. ``background``: a save the step
        does not wait for; on a backend that ``writes_on_calling_thread`` its blobs are
        hashed and written on threads at the lowest CPU priority, each on one core, so
        they take only the CPU the training loop leaves idle.
        """
        blobs = list(blobs)
        checked_set = self._checked(flow)
        temp_prefix = self._temp_prefix(flow)
        checked = [i for i, fast in enumerate(one_pass) if not fast]
        digests: List[Optional[str]] = [None] * len(blobs)
        yielding = background and self.backend.writes_on_calling_thread
        pool = self._background_pool if yielding else self._pool
        hashed = pool.map(lambda i: content_hash(blobs[i].parts, all_cores=not yielding), checked)
        for i, digest in zip(checked, hashed):
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

        results = self._guarded(flow, lambda: pool.map(write, range(len(blobs))))
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
                % (self.backend.describe(paths.blobs_dir(flow)), type(ex).__name__, ex)
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
        self.write_checked_manifest(key, manifest, paths.manifest_path(key))
        self._manifest_cache[str(key)] = manifest
        self._fence(key, manifest)

    def write_checked_manifest(self, key: CheckpointKey, manifest: Manifest, path: str) -> None:
        """Write ``manifest`` of checkpoint ``key`` at ``path`` once every blob it
        references is known intact (written or checked under this save's lease, else
        checked now: ReusedBlobDamaged). A commit (``commit``) and a gang node's part
        (gang_files) are both written so."""
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
        locks_dir = paths.locks_dir(key.flow)
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
        return self.read_manifest_file(
            paths.manifest_path(key), str(key), "No committed checkpoint %s" % key
        )

    def read_manifest_file(self, path: str, label: str, missing: str) -> Manifest:
        """The manifest at ``path`` (cached by ``label``, which names it in errors);
        CheckpointNotFound, starting with ``missing``, when there is none."""
        cached = self._manifest_cache.get(label)
        if cached is not None:
            return cached
        try:
            data = self.backend.read(path)
        except FileNotFoundError:
            raise CheckpointNotFound("%s (looked for %s)." % (missing, self.backend.describe(path)))
        manifest = unpack_manifest(data, label)
        self._manifest_cache[label] = manifest
        return manifest

    def list_keys(
        self, flow: str, run_id: str, step: str, task_id: str, attempt: Optional[int] = None
    ) -> List[CheckpointKey]:
        """Committed checkpoint keys of one task, oldest (lowest version) first. A node
        of a gang (other than node 0) has the gang's: those of its control task."""
        entries = self.backend.list_dir(paths.task_dir(flow, run_id, step, task_id))
        if not entries:
            control = read_gang_pointer(self.backend, flow, run_id, step, task_id)
            if control is not None:  # a gang node: its checkpoints are the gang's
                return self.list_keys(flow, run_id, step, control, attempt)
        if attempt is None:
            attempts = sorted(int(name) for name, is_dir in entries if is_dir and name.isdigit())
        else:
            attempts = [attempt]
        keys = []
        for number in attempts:
            folder = paths.attempt_dir(flow, run_id, step, task_id, number)
            for name, is_dir in self.backend.list_dir(folder):
                key = paths.manifest_key(flow, run_id, step, task_id, number, name)
                if not is_dir and key is not None:
                    keys.append(key)
        return sorted(keys, key=lambda k: (k.version, k.attempt, k.name))

    def list_run_tasks(self, flow: str, run_id: str) -> List[Tuple[str, str]]:
        """``(step, task_id)`` of every task of a run that has checkpoint records."""
        run_dir = paths.run_dir(flow, run_id)
        tasks = []
        for step, step_is_dir in self.backend.list_dir(run_dir):
            if step_is_dir:
                for task_id, is_dir in self.backend.list_dir("%s/%s" % (run_dir, step)):
                    if is_dir:
                        tasks.append((step, task_id))
        return sorted(tasks)

    def iter_manifests(self, flow: str) -> Iterator[CheckpointKey]:
        """The key of every committed checkpoint of ``flow`` (one recursive listing)."""
        for entry in self.backend.walk_files(paths.tasks_dir(flow)):
            listed = paths.parse_task_file(flow, entry.path)
            if listed is not None and listed.kind == paths.MANIFEST:
                yield listed.key

    def iter_blobs(self, flow: str) -> Iterator[StoredFile]:
        """Every stored blob of ``flow`` (its path ends with its digest), temp files excluded."""
        for entry in self.backend.walk_files(paths.blobs_dir(flow)):
            if not entry.path.rsplit("/", 1)[-1].startswith(TEMP_PREFIX):
                yield entry

    def delete_temp_files(self, flow: str, paths: Sequence[str]) -> None:
        """Delete temp files of unfinished writes (gc finds them); only under ``deleting(flow)``."""
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
        parts = paths.parts_dir(key)
        self.backend.delete(["%s/%s" % (parts, name) for name, is_dir in self.backend.list_dir(parts) if not is_dir])
