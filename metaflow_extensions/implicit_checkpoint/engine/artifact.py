"""CheckpointArtifact: the immutable handle of one committed checkpoint."""

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

from .errors import CheckpointException
from .keys import CheckpointKey
from .manifest import Manifest


@dataclass(frozen=True)
class CheckpointArtifact:
    """One committed checkpoint.

    Returned by ``current.checkpoint.save()``, ``list()`` and the ``Checkpoint`` client.
    It is immutable: ``metadata`` and ``implicit_manifest`` return fresh copies.

    Attributes
    ----------
    key : str
        Unique key, usable with ``load()`` and ``inspect()`` from anywhere.
    name : str
        The checkpoint name given to ``save()``.
    pathspec : str
        The pathspec of the task that saved it.
    attempt : int
        The attempt that saved it.
    version : int
        Increasing within a task, across attempts.
    created_on : str
        When it was committed (ISO-8601, UTC).
    size : int
        Bytes of field data it holds.
    damage : str or None
        Set by ``list()`` when the checkpoint's stored data is missing or damaged (its
        blobs are checked by size): what is wrong, by field and blob. None otherwise.

    It also reads as a mapping (``artifact["key"]``, ``artifact["metadata"]``,
    ``artifact.get("version_id")``), as metaflow-checkpoint's references do.
    """

    key: str
    name: str
    pathspec: str
    attempt: int
    version: int
    created_on: str
    size: int
    _metadata: Dict[str, Any] = field(repr=False, compare=False)
    _manifest: Dict[str, Any] = field(repr=False, compare=False)
    damage: Optional[str] = field(default=None, compare=False)
    type = "checkpoint"  # metaflow-checkpoint's reference dicts carry it

    @property
    def intact(self) -> bool:
        """False when ``list()`` found the checkpoint's data missing or damaged."""
        return self.damage is None

    @property
    def metadata(self) -> Dict[str, Any]:
        """The user's metadata given to ``save()`` (a copy)."""
        return copy.deepcopy(self._metadata)

    @property
    def implicit_manifest(self) -> Dict[str, Any]:
        """The manifest, as ``inspect()`` returns it (a copy)."""
        return copy.deepcopy(self._manifest)

    @property
    def version_id(self) -> int:
        """The version (metaflow-checkpoint's name for it)."""
        return self.version

    @property
    def latest(self) -> bool:
        """False when saved with ``latest=False``: never chosen as a resume point."""
        return self._manifest.get("latest", True) is not False

    @property
    def storage_format(self) -> str:
        return self._manifest.get("storage_format", "files")

    # -- read as a mapping, as metaflow-checkpoint's dict references are ----------------

    def __getitem__(self, item: str) -> Any:
        if item not in MAPPING_KEYS:
            raise KeyError(item)
        return getattr(self, item)

    def get(self, item: str, default: Any = None) -> Any:
        return self[item] if item in MAPPING_KEYS else default

    def keys(self):
        return list(MAPPING_KEYS)

    def __contains__(self, item: object) -> bool:
        return item in MAPPING_KEYS

    @property
    def flow_name(self) -> str:
        return self.pathspec.split("/")[0]

    @property
    def run_id(self) -> str:
        return self.pathspec.split("/")[1]

    @property
    def step_name(self) -> str:
        return self.pathspec.split("/")[2]

    @property
    def task_id(self) -> str:
        return self.pathspec.split("/")[3]

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "CheckpointArtifact":
        public = manifest.public()
        return cls(
            key=public["key"],
            name=public["name"],
            pathspec=public["pathspec"],
            attempt=public["attempt"],
            version=public["version"],
            created_on=public["created_on"],
            size=public["size"],
            _metadata=public["metadata"],
            _manifest=public,
        )

    def to_dict(self) -> Dict[str, Any]:
        """A plain, JSON-safe dict; ``CheckpointArtifact.from_dict`` reverses it."""
        return {
            "key": self.key,
            "name": self.name,
            "pathspec": self.pathspec,
            "attempt": self.attempt,
            "version": self.version,
            "created_on": self.created_on,
            "size": self.size,
            "metadata": self.metadata,
            "implicit_manifest": self.implicit_manifest,
            "damage": self.damage,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "CheckpointArtifact":
        if not isinstance(data, dict) or "key" not in data:
            raise CheckpointException(
                "CheckpointArtifact.from_dict() needs a dict made by "
                "CheckpointArtifact.to_dict(); got %s." % type(data).__name__
            )
        missing = [
            k for k in ("name", "pathspec", "attempt", "version", "created_on", "size")
            if k not in data
        ]
        if missing:
            raise CheckpointException(
                "CheckpointArtifact.from_dict(): the dict lacks %s." % ", ".join(missing)
            )
        CheckpointKey.parse(data["key"])
        return cls(
            key=data["key"],
            name=data["name"],
            pathspec=data["pathspec"],
            attempt=int(data["attempt"]),
            version=int(data["version"]),
            created_on=data["created_on"],
            size=int(data["size"]),
            _metadata=copy.deepcopy(data.get("metadata") or {}),
            _manifest=copy.deepcopy(data.get("implicit_manifest") or {}),
            damage=data.get("damage"),
        )

    def __repr__(self) -> str:
        return "CheckpointArtifact(key=%r, created_on=%r, size=%d%s)" % (
            self.key,
            self.created_on,
            self.size,
            "" if self.damage is None else ", damaged",
        )


#: What ``artifact["..."]`` reads: our fields, and metaflow-checkpoint's names for them.
MAPPING_KEYS = (
    "key", "name", "pathspec", "attempt", "version", "version_id", "created_on", "size",
    "metadata", "implicit_manifest", "damage", "latest", "storage_format", "type",
)

Reference = Union[CheckpointArtifact, Dict[str, Any], str]


def key_of(reference: Reference) -> CheckpointKey:
    """The key a load/inspect reference points to: an artifact, its to_dict(), or its key."""
    if isinstance(reference, CheckpointKey):
        return reference
    if isinstance(reference, CheckpointArtifact):
        return CheckpointKey.parse(reference.key)
    if isinstance(reference, dict):
        if "key" not in reference:
            raise CheckpointException(
                "A checkpoint reference dict must come from CheckpointArtifact.to_dict() "
                "and hold a 'key'; this one has keys %s." % sorted(reference)
            )
        return CheckpointKey.parse(reference["key"])
    if isinstance(reference, str):
        return CheckpointKey.parse(reference)
    raise CheckpointException(
        "A checkpoint reference is a CheckpointArtifact, its to_dict(), or its key "
        "string; got %s." % type(reference).__name__
    )
