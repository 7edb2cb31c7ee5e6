"""The checkpoint store: content-addressed blobs and committed manifests on a backend.

Layout under the backend root (the flow datastore root)::

    <Flow>/_implicit_checkpoints/blobs/<h[:2]>/<h>              one blob, named by its hash
    <Flow>/_implicit_checkpoints/tasks/<run>/<step>/<task>/<attempt>/<version>.<name>.manifest

Blobs are shared by every checkpoint of a flow, so unchanged data is stored once across
saves, attempts, foreach siblings and runs. A checkpoint exists exactly when its
manifest does; the manifest is written after all of its blobs, and every blob is
verified against its hash when read.
"""

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .backends import StorageBackend
from .errors import (
    CheckpointCorrupted,
    CheckpointException,
    CheckpointNotFound,
    CheckpointStorageError,
)
from .hashing import content_hash
from .keys import CheckpointKey, is_valid_name
from .layout import PlannedBlob
from .manifest import pack_manifest, unpack_manifest
from .parallel import LazyPool

ROOT = "_implicit_checkpoints"

#: A blob this process confirmed (or wrote) less than this many seconds ago is reused
#: without asking the backend; an older confirmation is renewed by touching the blob.
#: Garbage collection never deletes a blob modified within its grace period (longer
#: than this), so a blob a save reuses cannot be collected under it.
TOUCH_INTERVAL = 600.0
_MANIFEST_SUFFIX = ".manifest"


@dataclass
class BlobRead:
    """One blob to read, and where its bytes go: ``(offset in blob, destination view)``."""

    hash: str
    size: int
    targets: List[Tuple[int, memoryview]]
    label: str  # what the bytes belong to, for error messages ("field 'model'")


class CheckpointStore:
    """Reads and writes checkpoints of any flow on one storage backend."""

    def __init__(
        self,
        backend: StorageBackend,
        durable: bool = True,
        workers: int = 4,
        touch_interval: float = TOUCH_INTERVAL,
    ):
        self.backend = backend
        self.touch_interval = touch_interval
        self.durable = durable
        self._pool = LazyPool(workers, "checkpoint-io")
        self._lock = threading.Lock()
        # digest -> time.monotonic() when this process last wrote or touched that blob.
        self._known_blobs: Dict[str, float] = {}
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
    def latest_dir(flow: str, step: str, foreach_indices: Sequence[int]) -> str:
        """Where each run's newest checkpoint of one step (and foreach index) is noted."""
        branch = "-".join(str(i) for i in foreach_indices) or "_"
        return "%s/%s/latest/%s/%s" % (flow, ROOT, step, branch)

    @staticmethod
    def task_dir(flow: str, run_id: str, step: str, task_id: str) -> str:
        return "%s/%s/tasks/%s/%s/%s" % (flow, ROOT, run_id, step, task_id)

    @classmethod
    def manifest_path(cls, key: CheckpointKey) -> str:
        return "%s/%d/%08d.%s%s" % (
            cls.task_dir(key.flow, key.run_id, key.step, key.task_id),
            key.attempt,
            key.version,
            key.name,
            _MANIFEST_SUFFIX,
        )

    # -- blobs -----------------------------------------------------------------------

    def put_blobs(self, flow: str, blobs: Sequence[PlannedBlob]) -> Tuple[List[str], int]:
        """Hash and store ``blobs`` (skipping ones that exist); return hashes, bytes written.

        A chunk that probably changed since the previous save (or is new) is hashed
        and written in one pass. The others are hashed first; those this process has not
        seen are checked for existence in one batched call, and only missing ones are
        written. The guess only picks the faster path: both store the same bytes.
        """
        blobs = list(blobs)
        one_pass = [self._probably_changed(blob) for blob in blobs]
        checked = [i for i, fast in enumerate(one_pass) if not fast]
        digests: List[Optional[str]] = [None] * len(blobs)
        for i, digest in zip(checked, self._pool.map(lambda i: content_hash(blobs[i].parts), checked)):
            digests[i] = digest
        self._confirm_existing(flow, {digests[i] for i in checked})

        claimed = set()

        def write(i: int) -> Tuple[str, bool]:
            blob = blobs[i]
            if one_pass[i]:
                digest, written = self.backend.write_hashed(
                    blob.parts,
                    self.durable,
                    lambda d: self.blob_path(flow, d),
                    self._blob_dir(flow),
                    self._young_enough,
                )
            else:
                digest = digests[i]
                with self._lock:
                    if self._is_fresh(digest) or digest in claimed:
                        return digest, False
                    claimed.add(digest)  # a twin blob of this save is written once
                self.backend.write(self.blob_path(flow, digest), blob.parts, self.durable)
                written = True
            with self._lock:
                self._known_blobs[digest] = time.monotonic()
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

    @property
    def _young_enough(self) -> float:
        # A blob modified within half the interval needs no renewing: it stays younger
        # than 1.5 intervals while this process trusts it, well inside gc's grace.
        return self.touch_interval / 2

    def _is_fresh(self, digest: str) -> bool:
        known = self._known_blobs.get(digest)
        return known is not None and time.monotonic() - known < self.touch_interval

    def _confirm_existing(self, flow: str, digests: set) -> None:
        """Touch, in one batched call, the blobs this process has not confirmed lately.

        Touching both checks that a blob exists and renews its modification time, so a
        concurrent gc keeps it for the save about to reference it.
        """
        with self._lock:
            stale = sorted(d for d in digests if not self._is_fresh(d))
        if not stale:
            return
        paths = [self.blob_path(flow, digest) for digest in stale]
        found = self._guarded(flow, lambda: self.backend.touch(paths, self._young_enough))
        now = time.monotonic()
        with self._lock:
            self._known_blobs.update((d, now) for d, ok in zip(stale, found) if ok)

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

    # -- manifests -------------------------------------------------------------------

    def commit(self, key: CheckpointKey, manifest: dict) -> None:
        """Write the manifest: from this moment the checkpoint exists."""
        path = self.manifest_path(key)
        try:
            self.backend.write(path, [pack_manifest(manifest)], self.durable)
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

    def find_latest_before(
        self,
        flow: str,
        step: str,
        foreach_indices: Sequence[int],
        before: float,
        exclude_run: str,
        accept_run: Callable[[str], bool],
    ) -> Optional[CheckpointKey]:
        """The newest committed checkpoint of ``step`` / ``foreach_indices`` in another
        run, created before ``before`` (epoch seconds), in a run ``accept_run`` accepts."""
        notes = [
            (entry.mtime, entry.path.rsplit("/", 1)[-1])
            for entry in self.backend.walk_files(self.latest_dir(flow, step, foreach_indices))
        ]
        best, best_time = None, float("-inf")
        for noted_at, run_id in sorted(notes, reverse=True):
            if noted_at < best_time:
                break  # this run's newest checkpoint is older than the best one found
            if run_id == exclude_run or run_id.startswith(".") or not accept_run(run_id):
                continue
            found = self._newest_of_run_before(flow, run_id, step, foreach_indices, before)
            if found is not None and found[1] > best_time:
                best, best_time = found
        return best

    def _newest_of_run_before(self, flow, run_id, step, foreach_indices, before):
        try:
            noted = CheckpointKey.parse(
                self.backend.read(
                    "%s/%s" % (self.latest_dir(flow, step, foreach_indices), run_id)
                ).decode()
            )
        except (FileNotFoundError, UnicodeDecodeError, CheckpointException):
            return None
        keys = self.list_keys(flow, run_id, step, noted.task_id)
        for key in reversed(keys):
            try:
                manifest = self.read_manifest(key)
            except CheckpointCorrupted:
                continue
            created = datetime.fromisoformat(manifest["created_on"]).timestamp()
            same_branch = list(manifest.get("foreach_indices") or []) == list(foreach_indices)
            if created < before and same_branch:
                return key, created
        return None
