"""`checkpoint verify`: read and hash every blob checkpoints reference; report each
checkpoint intact or damaged; with ``repair``, delete the damaged blobs so the next save
of the same content writes them again."""

from dataclasses import dataclass, field
from typing import List, Sequence

from .errors import CheckpointCorrupted, CheckpointNotFound
from .gc import DEFAULT_WAIT
from .integrity import Damage, verify_blobs
from .keys import CheckpointKey
from .locks import StoreBusy
from .store import MISDESCRIBED, MISSING, CheckpointStore
from .notices import warn


@dataclass
class Verdict:
    """One checkpoint: intact, or what is damaged (``manifest_problem``: its manifest)."""

    key: str
    damages: List[Damage] = field(default_factory=list)
    manifest_problem: str = ""

    @property
    def intact(self) -> bool:
        return not self.damages and not self.manifest_problem

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "intact": self.intact,
            "damages": [d.to_dict() for d in self.damages],
            "manifest_problem": self.manifest_problem or None,
        }


@dataclass
class VerifyReport:
    checkpoints: List[Verdict] = field(default_factory=list)
    blobs_read: int = 0
    bytes_read: int = 0
    repaired_blobs: List[str] = field(default_factory=list)  # deleted, to be written again
    busy: List[str] = field(default_factory=list)  # saves --repair gave up waiting for

    @property
    def damaged(self) -> List[Verdict]:
        return [v for v in self.checkpoints if not v.intact]

    def to_dict(self) -> dict:
        return {
            "checkpoints": [v.to_dict() for v in self.checkpoints],
            "intact": sum(v.intact for v in self.checkpoints),
            "damaged": len(self.damaged),
            "blobs_read": self.blobs_read,
            "bytes_read": self.bytes_read,
            "repaired_blobs": self.repaired_blobs,
            "busy": self.busy,
        }


def verify_checkpoints(
    store: CheckpointStore,
    flow: str,
    keys: Sequence[CheckpointKey],
    repair: bool = False,
    wait: float = DEFAULT_WAIT,
) -> VerifyReport:
    """Verify the checkpoints ``keys`` of ``flow`` (every blob read once and hashed)."""
    report = VerifyReport()
    manifests, verdicts = [], []
    for key in keys:
        verdict = Verdict(str(key))
        try:
            manifests.append(store.read_manifest(key))
            verdicts.append(verdict)
        except CheckpointNotFound:
            continue  # removed by retention since the listing
        except CheckpointCorrupted as ex:
            verdict.manifest_problem = str(ex)
        report.checkpoints.append(verdict)
    sizes = {}
    for manifest in manifests:
        sizes.update(manifest.storage.blobs)
    report.blobs_read, report.bytes_read = len(sizes), sum(sizes.values())
    for verdict, damages in zip(verdicts, verify_blobs(store, flow, manifests)):
        verdict.damages = damages
    damaged = sorted({d.blob: sizes[d.blob] for v in verdicts for d in v.damages if _repairable(d.problem)})
    if repair and damaged:
        try:
            with store.deleting(flow, wait):
                # A save may have rewritten a damaged blob since: delete only what still is.
                still = store.verify_blobs(flow, {d: sizes[d] for d in damaged})
                doomed = sorted(d for d, problem in still.items() if _repairable(problem))
                store.delete_blobs(flow, doomed)
                report.repaired_blobs = doomed
        except StoreBusy as ex:
            report.busy = ex.leases
            warn("checkpoint verify --repair: %s" % ex)
    return report


def _repairable(problem: str) -> bool:
    """A blob whose bytes do not hash to its name is damaged and may go; a missing one
    has nothing to delete, and one a manifest misdescribes is intact."""
    return not problem.startswith((MISSING, MISDESCRIBED))
