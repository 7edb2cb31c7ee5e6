"""Reading checkpoints: the one entry point the session, the notebook client, the CLI
and the card use to list a task's or a run's checkpoints, show a manifest, and open a
checkpoint to load (its manifest and, for a gang, the part of the node that loads)."""

from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .artifact import CheckpointArtifact, Reference, key_of
from .errors import CheckpointCorrupted, CheckpointException, CheckpointNotFound
from .gang import part_to_load
from .integrity import check_blobs, describe as describe_damage
from .keys import CheckpointKey, validate_name
from .manifest import Manifest
from .notices import warn
from .store import CheckpointStore


@dataclass(frozen=True)
class OpenedCheckpoint:
    """A checkpoint about to be loaded: its key, its manifest, and the manifest whose
    fields load (the checkpoint's own, or a gang node's part of it)."""

    key: CheckpointKey
    manifest: Manifest
    part: Manifest


def open_checkpoint(store: CheckpointStore, reference: Reference, node: Optional[int] = None) -> OpenedCheckpoint:
    """Read a checkpoint's manifest (and, for a gang checkpoint, node ``node``'s part:
    None is node 0) to load it with ``snapshot.load_snapshot(store, opened.part, ...)``."""
    key = key_of(reference)
    manifest = store.read_manifest(key)
    return OpenedCheckpoint(key, manifest, part_to_load(store, manifest, node))


def inspect_checkpoint(store: CheckpointStore, reference: Reference) -> Dict[str, Any]:
    """A checkpoint's manifest as ``inspect()`` shows it; no field data is read."""
    return store.read_manifest(key_of(reference)).public()


def list_step_across_runs(
    store: CheckpointStore,
    flow: str,
    step: str,
    foreach_indices: Sequence[int],
    own_task: Tuple[str, str],
    accept_run: Callable[[str], bool],
    name: Optional[str] = None,
    attempt: Optional[int] = None,
) -> List[CheckpointArtifact]:
    """Checkpoints of ``step`` at ``foreach_indices`` in every run ``accept_run`` accepts,
    and of ``own_task`` (``(run_id, task_id)``), oldest first."""
    tasks = {own_task}
    for _, run_id in store.notes.runs(flow, step, foreach_indices):
        if run_id != own_task[0] and accept_run(run_id):
            noted = store.notes.read(flow, step, foreach_indices, run_id)
            if noted is not None:
                tasks.add((run_id, noted.task_id))
    found = []
    for run_id, task_id in tasks:
        found.extend(
            a for a in list_task(store, flow, run_id, step, task_id, name, attempt)
            if a.implicit_manifest.get("foreach_indices", []) == list(foreach_indices)
        )
    return sorted(found, key=lambda a: a.created_on)


def list_task(
    store: CheckpointStore,
    flow: str,
    run_id: str,
    step: str,
    task_id: str,
    name: Optional[str] = None,
    attempt: Optional[int] = None,
) -> List[CheckpointArtifact]:
    """Committed checkpoints of one task, oldest first, skipping damaged manifests and
    ones removed while listing; those whose blobs are missing or damaged (checked by
    size) carry a ``damage`` description."""
    if name is not None:
        validate_name(name, step)
    if attempt is not None and (not isinstance(attempt, int) or attempt < 0):
        raise CheckpointException("list(attempt=...) must be an int >= 0; got %r." % (attempt,))
    keys = store.list_keys(flow, run_id, step, task_id, attempt)
    manifests = [read_listed_manifest(store, key) for key in keys if name is None or key.name == name]
    manifests = [manifest for manifest in manifests if manifest is not None]
    artifacts = []
    for manifest, damages in zip(manifests, check_blobs(store, flow, manifests)):
        artifact = CheckpointArtifact.from_manifest(manifest)
        if damages:
            artifact = replace(artifact, damage=describe_damage(artifact.key, damages))
        artifacts.append(artifact)
    return artifacts


def list_run(
    store: CheckpointStore,
    flow: str,
    run_id: str,
    name: Optional[str] = None,
    attempt: Optional[int] = None,
) -> List[CheckpointArtifact]:
    """Committed checkpoints of every task of a run, oldest first."""
    found = []
    for step, task_id in store.list_run_tasks(flow, run_id):
        found.extend(list_task(store, flow, run_id, step, task_id, name, attempt))
    return sorted(found, key=lambda a: a.created_on)


def read_listed_manifest(store: CheckpointStore, key: CheckpointKey) -> Optional[Manifest]:
    """The manifest of a listed checkpoint; None if it was removed since the listing
    (retention), or is damaged (with a warning)."""
    try:
        return store.read_manifest(key)
    except CheckpointNotFound:
        return None
    except CheckpointCorrupted as ex:
        warn("@checkpoint: skipping damaged checkpoint: %s" % ex)
        return None
