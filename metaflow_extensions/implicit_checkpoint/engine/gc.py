"""Garbage collection: delete blobs no committed manifest references.

Safe while other tasks save: a blob modified after ``now - grace`` is never deleted,
and saves renew the modification time of every blob they reuse unless they did so
within their touch interval (store.TOUCH_INTERVAL, shorter than the grace), so a blob
written or reused by a save in progress is never collected. Temp files left by killed writers are removed after the grace too.
"""

import sys
import time
from dataclasses import dataclass, field
from typing import List

from .backends import TEMP_PREFIX
from .errors import CheckpointCorrupted, CheckpointException
from .manifest import STORAGE, unpack_manifest
from .store import ROOT, CheckpointStore

#: Blobs and temp files younger than this are never collected (seconds).
DEFAULT_GRACE = 3600.0


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
    damaged_manifests: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def collect_garbage(
    store: CheckpointStore, flow: str, dry_run: bool = False, grace: float = DEFAULT_GRACE
) -> GcReport:
    """Delete (or with ``dry_run`` only report) the unreferenced blobs of ``flow``.

    ``grace`` must be at least the stores' touch interval: a running save may reuse a
    blob it confirmed that long ago without touching it again.
    """
    if grace < store.touch_interval:
        raise CheckpointException(
            "gc grace period %.0f s is too short: saves in progress may reuse blobs they "
            "confirmed up to %.0f s ago, so gc must keep blobs at least that young. "
            "Use a grace of %.0f s or more."
            % (grace, store.touch_interval, store.touch_interval)
        )
    started = time.time()
    cutoff = started - grace
    report = GcReport(flow=flow, dry_run=dry_run)
    backend = store.backend
    root = "%s/%s" % (flow, ROOT)

    referenced = set()
    for entry in backend.walk_files(root + "/tasks"):
        name = entry.path.rsplit("/", 1)[-1]
        if name.startswith(TEMP_PREFIX) or not name.endswith(".manifest"):
            continue
        try:
            manifest = unpack_manifest(backend.read(entry.path), entry.path)
        except FileNotFoundError:
            continue  # removed by retention meanwhile
        except CheckpointCorrupted:
            # Its references are unknown: collect nothing it might need.
            report.damaged_manifests.append(entry.path)
            continue
        report.manifests += 1
        referenced.update(manifest[STORAGE]["blobs"])
    report.referenced_blobs = len(referenced)
    if report.damaged_manifests:
        print(
            "checkpoint gc: %d damaged manifest(s) found; no blob is deleted this time:\n  %s"
            % (len(report.damaged_manifests), "\n  ".join(report.damaged_manifests)),
            file=sys.stderr,
        )

    doomed, temp_files = [], []
    for entry in backend.walk_files(root + "/blobs"):
        name = entry.path.rsplit("/", 1)[-1]
        if name.startswith(TEMP_PREFIX):
            if entry.mtime < cutoff:
                temp_files.append(entry.path)
            continue
        if name in referenced:
            continue
        report.unreferenced_blobs += 1
        if entry.mtime >= cutoff:
            report.kept_young_blobs += 1
            continue
        doomed.append(entry)
    for entry in backend.walk_files(root + "/tasks"):
        if entry.path.rsplit("/", 1)[-1].startswith(TEMP_PREFIX) and entry.mtime < cutoff:
            temp_files.append(entry.path)

    if report.damaged_manifests:
        doomed = []
    elif doomed:
        # A save may have touched a doomed blob since the listing: look once more.
        still_old = {
            entry.path
            for entry in backend.walk_files(root + "/blobs")
            if entry.mtime < cutoff
        }
        doomed = [entry for entry in doomed if entry.path in still_old]
    report.deleted_blobs = [entry.path.rsplit("/", 1)[-1] for entry in doomed]
    report.deleted_bytes = sum(entry.size for entry in doomed)
    report.deleted_temp_files = len(temp_files)
    if not dry_run:
        backend.delete([entry.path for entry in doomed] + temp_files)
    return report

