"""Loading an opened checkpoint: the one path ``current.checkpoint.load()`` (the session)
and ``Checkpoint().load()`` (the notebook client) share.

Call sequence: ``reading.open_checkpoint`` (the manifest, and a gang node's part), then
``load_checkpoint(store, opened, LoadRequest(...))``. What differs between the callers is
in the request: a step loads every field onto itself with its RNG state and its folder; a
notebook may read some fields only, into a fresh dict or onto an object of its own.
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from .artifact import CheckpointArtifact
from .reading import OpenedCheckpoint
from .snapshot import load_snapshot
from .store import CheckpointStore


@dataclass(frozen=True)
class LoadRequest:
    """What a load reads, and where it puts it.

    ``fields``: the fields to read (None: all). ``target``: the object to set them on,
    restoring the stateful objects it holds in place (None: the values are returned
    only). ``allow_pickle=False`` never unpickles. ``with_rng``: also return the RNG
    state. ``folder``: where the checkpoint's files go; ``files``: whether to put them
    there (None: when every field is loaded). ``map_location``: the device of tensors no
    live tensor receives (tensors.DevicePlacement).
    """

    fields: Optional[Sequence[str]] = None
    target: Any = None
    allow_pickle: bool = True
    with_rng: bool = False
    folder: Optional[str] = None
    files: Optional[bool] = None
    map_location: Any = None

    def restores_files(self, opened: OpenedCheckpoint) -> bool:
        """Whether loading ``opened`` puts files in ``folder`` (a checkpoint saved without
        a folder, by a worker process, leaves it alone)."""
        wanted = self.files if self.files is not None else self.fields is None
        return self.folder is not None and wanted and opened.part.has_folder


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What a load read: the values by field, and the RNG state (with ``with_rng``)."""

    opened: OpenedCheckpoint
    values: Dict[str, Any]
    rng_state: Optional[Dict[str, Any]]

    @property
    def artifact(self) -> CheckpointArtifact:
        return CheckpointArtifact.from_manifest(self.opened.manifest)


def load_checkpoint(store: CheckpointStore, opened: OpenedCheckpoint, request: LoadRequest) -> LoadedCheckpoint:
    """Read, verify and build ``opened``'s fields as ``request`` says, all or nothing (see
    snapshot.load_snapshot)."""
    values, rng_state = load_snapshot(
        store,
        opened.part,
        request.fields,
        target=request.target,
        allow_pickle=request.allow_pickle,
        with_rng=request.with_rng,
        folder=request.folder if request.restores_files(opened) else None,
        map_location=request.map_location,
    )
    return LoadedCheckpoint(opened, values, rng_state)
