"""Retention: which checkpoints of one name to remove after a commit.

Removing a checkpoint removes its manifest only; the blobs it alone referenced are
freed later by garbage collection (gc.py), which is safe while other tasks save.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Set

from .artifact import CheckpointArtifact


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep the newest ``keep_last`` and the best ``keep_best`` (by ``best_metric``)."""

    keep_last: Optional[int] = None
    keep_best: Optional[int] = None
    best_metric: Optional[str] = None
    best_mode: str = "min"

    @property
    def active(self) -> bool:
        return self.keep_last is not None or self.keep_best is not None

    def to_remove(
        self, artifacts: Sequence[CheckpointArtifact], protected: Set[str]
    ) -> List[CheckpointArtifact]:
        """Of one name's checkpoints (oldest first), those the policy no longer keeps.

        The newest one and the ``protected`` keys (the checkpoint the task resumed
        from) are always kept.
        """
        if not self.active or not artifacts:
            return []
        keep = set(protected) | {artifacts[-1].key}
        if self.keep_last is not None:
            keep.update(a.key for a in artifacts[-self.keep_last :])
        if self.keep_best is not None:
            keep.update(a.key for a in self.best(artifacts)[: self.keep_best])
        return [a for a in artifacts if a.key not in keep]

    def best(self, artifacts: Sequence[CheckpointArtifact]) -> List[CheckpointArtifact]:
        """Checkpoints with a finite ``best_metric``, best first (newer first on ties)."""
        scored = []
        for artifact in artifacts:
            value = artifact.metadata.get(self.best_metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                scored.append((value if self.best_mode == "min" else -value, -artifact.version, artifact))
        return [artifact for _, _, artifact in sorted(scored, key=lambda s: s[:2])]
