"""Is a committed checkpoint intact? A cheap check (its blobs exist with the right size)
and a full verification (every blob read and hashed), both naming what is damaged.

A manifest's ``storage`` section says which blobs hold which field: each tensor a field
uses has blob extents, and so may its payload or the shared object graph (see
snapshot.py). That is how a damaged blob is traced back to the fields it holds.
"""

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from .manifest import Manifest
from .store import CheckpointStore

RNG_STATE = "<rng state>"


@dataclass(frozen=True)
class Damage:
    """One damaged blob of a checkpoint, and the fields whose data it holds."""

    blob: str
    problem: str  # "missing", "has 0 bytes, expected 4096", "content does not match its hash"
    fields: Tuple[str, ...]

    def describe(self) -> str:
        fields = ", ".join(repr(f) for f in self.fields) or "no field"
        return "field(s) %s: blob %s %s" % (fields, self.blob, self.problem)

    def to_dict(self) -> dict:
        return {"blob": self.blob, "problem": self.problem, "fields": list(self.fields)}


def fields_by_blob(manifest: Manifest) -> Dict[str, List[str]]:
    """``{blob digest: [field names]}``: which fields (and the RNG state, and the files
    of the task's folder) each blob holds.

    A field's data is its tensors' extents and, where the format has one, its payload's;
    a blob of the shared object graph (when the graph is not inline) holds every field.
    """
    storage = manifest.storage
    if storage.blob_fields is not None:  # a gang checkpoint: gathered from its parts (gang.py)
        return {digest: list(names) for digest, names in storage.blob_fields.items()}
    users: Dict[str, List[str]] = {digest: [] for digest in storage.blobs}

    def note(name: str, extents) -> None:
        for digest in sorted({digest for digest, _, _ in extents}):
            if name not in users.setdefault(digest, []):
                users[digest].append(name)

    def note_entry(name: str, entry: dict) -> None:
        if isinstance(entry.get("payload"), list):
            note(name, entry["payload"])
        for index in entry.get("tensors", ()):
            note(name, storage.extents_of(index))

    fields = storage.fields
    for name, entry in sorted(fields.items()):
        # An alias holds the data of the field it names.
        note_entry(name, fields.get(entry.get("alias_of"), entry))
    if storage.graph_extents:
        for name in sorted(fields):
            note(name, storage.graph_extents)
    if storage.rng:
        note_entry(RNG_STATE, storage.rng)
    for rel, extents in sorted((storage.files or {}).items()):
        note(file_label(rel), extents)
    return users


def file_label(rel: str) -> str:
    """How a file of the task's folder is named among the fields a blob holds."""
    return "<file %s>" % rel


def _damages(manifest: Manifest, problems: Dict[str, str]) -> List[Damage]:
    users = fields_by_blob(manifest)
    return [
        Damage(digest, problems[digest], tuple(users.get(digest, ())))
        for digest in sorted(problems)
        if digest in manifest.storage.blobs
    ]


def check_blobs(store: CheckpointStore, flow: str, manifests: Sequence[Manifest]) -> List[List[Damage]]:
    """Per manifest, its blobs that are missing or of the wrong size (no blob is read)."""
    return _per_manifest(manifests, lambda sizes: store.blob_problems(flow, sizes))


def verify_blobs(store: CheckpointStore, flow: str, manifests: Sequence[Manifest]) -> List[List[Damage]]:
    """Per manifest, its blobs that are missing or whose content does not match their
    hash: every blob is read and hashed once, however many checkpoints share it."""
    return _per_manifest(manifests, lambda sizes: store.verify_blobs(flow, sizes))


def _per_manifest(manifests: Sequence[Manifest], find_problems) -> List[List[Damage]]:
    wanted: Dict[str, int] = {}
    for manifest in manifests:
        wanted.update(manifest.storage.blobs)
    problems = find_problems(wanted)
    return [_damages(manifest, problems) for manifest in manifests]


def describe(key: str, damages: Sequence[Damage]) -> str:
    return "checkpoint %s is damaged: %s" % (key, "; ".join(d.describe() for d in damages))
