"""Garbage collection: delete blobs no committed manifest references.

Invariant: a blob referenced by a committed manifest, or by a save in progress, is
never deleted. Saves hold a lease from before their first blob check until after their
commit; gc deletes only under the deleter's lock, which it gets once no lease is held
and which makes new saves wait (locks.py). Under that lock gc lists the committed
manifests again, so every save that could reference a blob has either committed (its
manifest is read) or not yet looked at any blob (it will check, and rewrite, what it
needs). The listing before the lock only finds candidates and reads manifests ahead,
to keep the time saves wait short.

A save paused so long that gc took its lease for dead may commit after gc listed the
manifests; its commit fence (store.commit, locks.Locks.fence) finds its lease removed,
waits for gc to finish, and uncommits if a blob it references is gone. For that, gc
removes the dead leases and writes the new epoch (store.deleting) before it lists the
manifests under the lock.

Under the lock gc also aborts the unfinished multipart uploads (S3) older than the
grace: a save killed in the middle of a large blob leaves one, whose parts the storage
keeps (and bills) forever. No save holds a lease then, so none of them is a live save's.
"""

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Set

from . import store_paths as paths
from .backends import TEMP_PREFIX, PendingUpload
from .gang_files import GangFiles
from .errors import CheckpointCorrupted, CheckpointException, CheckpointNotFound
from .locks import STALE, StoreBusy
from .store import CheckpointStore
from .notices import warn

#: Blobs and temp files younger than this are never collected (seconds). The lock
#: alone keeps saves safe; the grace also covers writers of older versions of this
#: package, which took no leases but touched the blobs they reused.
DEFAULT_GRACE = 3600.0
#: How long gc waits for saves in progress to finish before giving up (seconds).
DEFAULT_WAIT = 120.0


@dataclass
class GcReport:
    flow: str
    dry_run: bool
    manifests: int = 0
    referenced_blobs: int = 0
    unreferenced_blobs: int = 0
    deleted_blobs: List[str] = field(default_factory=list)
    deleted_bytes: int = 0
    kept_young_blobs: int = 0
    deleted_temp_files: int = 0
    aborted_uploads: int = 0  # unfinished multipart uploads (S3) of saves that died
    damaged_manifests: List[str] = field(default_factory=list)
    busy: List[str] = field(default_factory=list)  # leases gc gave up waiting for

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def collect_garbage(
    store: CheckpointStore,
    flow: str,
    dry_run: bool = False,
    grace: float = DEFAULT_GRACE,
    wait: float = DEFAULT_WAIT,
    on_phase: Callable[[str], None] = lambda phase: None,
) -> GcReport:
    """Delete (or with ``dry_run`` only report) the unreferenced blobs of ``flow``.

    ``on_phase`` is a test hook, called with "manifests-listed" (twice),
    "candidates-listed", "locked" and "deleting" as gc reaches those points.
    """
    if not grace >= 0:
        raise CheckpointException(
            "gc grace period must be 0 seconds or more; got %r. It keeps unreferenced "
            "blobs and temp files younger than this." % (grace,)
        )
    cutoff = time.time() - grace
    report = GcReport(flow=flow, dry_run=dry_run)
    candidates = {entry.path.rsplit("/", 1)[-1]: entry for entry in store.iter_blobs(flow)}
    references: Dict[str, Set[str]] = {}  # manifest key -> the blobs it references
    _read_references(store, flow, references, report, on_phase)
    temp_files = _stale_temp_files(store, flow, cutoff)
    on_phase("candidates-listed")
    if dry_run:
        _choose(candidates, references, cutoff, report)
        report.aborted_uploads = len(_abandoned_uploads(store, flow, cutoff))
        return report
    try:
        with store.deleting(flow, wait):
            on_phase("locked")
            # The committed manifests now: every save that may reference a blob is among them.
            _read_references(store, flow, references, report, on_phase)
            doomed = _choose(candidates, references, cutoff, report)
            on_phase("deleting")
            if doomed:
                store.delete_blobs(flow, doomed)
            # Parts of gang saves that never committed: no manifest references them.
            temp_files += GangFiles(store).files_without_commit(flow, set(references), cutoff)
            store.delete_temp_files(flow, temp_files)
            report.deleted_temp_files = len(temp_files)
            uploads = _abandoned_uploads(store, flow, cutoff)
            store.backend.abort_uploads(uploads)
            report.aborted_uploads = len(uploads)
    except StoreBusy as ex:
        report.busy = ex.leases
        report.deleted_blobs, report.deleted_bytes = [], 0
        warn("checkpoint gc: %s" % ex)
    return report


def _abandoned_uploads(store: CheckpointStore, flow: str, cutoff: float) -> List[PendingUpload]:
    """The unfinished uploads in ``flow``'s store begun before ``cutoff`` (epoch seconds,
    compared with the storage's clock as blob ages are). ``cutoff`` is at the latest
    gc's start, before it took the lock: under the lock no save holds a lease, so an
    upload begun before then belongs to a save that ended or died."""
    return [u for u in store.backend.list_uploads(paths.flow_root(flow)) if u.initiated < cutoff]


def _stale_temp_files(store: CheckpointStore, flow: str, cutoff: float) -> List[str]:
    """Temp files of unfinished writes in ``flow``'s store modified before ``cutoff``
    (epoch seconds). A save writes its lease without holding one, so temp files
    among the locks count only once as old as a dead lease."""
    found = []
    locks_cutoff = min(cutoff, time.time() - STALE)
    for top, before in (
        (paths.blobs_dir(flow), cutoff),
        (paths.tasks_dir(flow), cutoff),
        (paths.locks_dir(flow), locks_cutoff),
    ):
        found.extend(
            entry.path
            for entry in store.backend.walk_files(top)
            if entry.path.rsplit("/", 1)[-1].startswith(TEMP_PREFIX) and entry.mtime < before
        )
    # tmp/ holds only the temp files of saves, each under its lease.
    found.extend(e.path for e in store.backend.walk_files(paths.temp_root(flow)) if e.mtime < cutoff)
    return found


def _read_references(store, flow, references: Dict[str, Set[str]], report: GcReport, on_phase) -> None:
    """Bring ``references`` up to date with the manifests committed now (each manifest
    is read once: they never change)."""
    listed = {str(key): key for key in store.iter_manifests(flow)}
    on_phase("manifests-listed")
    for text in [k for k in references if k not in listed]:
        del references[text]  # removed by retention
    report.damaged_manifests = []
    for text, key in listed.items():
        if text in references:
            continue
        try:
            references[text] = set(store.read_manifest(key).storage.blobs)
        except CheckpointNotFound:
            continue  # removed by retention meanwhile
        except CheckpointCorrupted:
            # Its references are unknown: collect nothing it might need.
            report.damaged_manifests.append(store.backend.describe(store.manifest_path(key)))


def _choose(candidates, references, cutoff: float, report: GcReport) -> List[str]:
    referenced = set().union(*references.values()) if references else set()
    report.manifests = len(references)
    report.referenced_blobs = len(referenced)
    unreferenced = [entry for digest, entry in candidates.items() if digest not in referenced]
    report.unreferenced_blobs = len(unreferenced)
    old = [entry for entry in unreferenced if entry.mtime < cutoff]
    report.kept_young_blobs = len(unreferenced) - len(old)
    if report.damaged_manifests:
        warn(
            "checkpoint gc: %d damaged manifest(s) found; no blob is deleted this time:\n  %s"
            % (len(report.damaged_manifests), "\n  ".join(report.damaged_manifests))
        )
        old = []
    report.deleted_blobs = [entry.path.rsplit("/", 1)[-1] for entry in old]
    report.deleted_bytes = sum(entry.size for entry in old)
    return report.deleted_blobs
