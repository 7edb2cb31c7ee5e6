"""Fields to a committed checkpoint, and back: the save and load pipelines.

Save, in two halves so the second can run in the background:
``prepare_save`` encodes every field (codecs) and captures the bytes of the tensors that
changed (referenced live, or copied into a staging area); ``commit_save`` cuts them into
blobs (layout), writes the blobs that do not exist yet (store) and commits the manifest,
written last. Unchanged torch tensors (change_tracking) point at blobs already stored.
Load: read the manifest → read and verify the blobs the wanted fields need → decode.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional

from .change_tracking import ChangeTracker, Location, Observation, fingerprint, observe
from .codecs import EncodedField, TensorTable, decode_field, encode_field, plain_preview
from .errors import CheckpointException
from .keys import CheckpointKey
from .layout import SMALL_BYTES, plan_blobs
from .manifest import FORMAT_VERSION, STORAGE, utc_now_iso
from .staging import StagingArea
from .store import BlobRead, CheckpointStore
from .tensors import RawTensor, TensorSpec, is_tensor_like, to_raw

#: Payloads up to this size live inside the manifest instead of a blob of their own.
INLINE_BYTES = 1024
ALIAS = "alias"
RNG_FIELD = "<rng state>"

# Immutable values can be equal objects by accident (small ints are shared by Python);
# only mutable objects that two fields name are stored as an alias.
_NEVER_ALIASED = (type(None), bool, int, float, complex, str, bytes)


@dataclass
class PreparedSave:
    """A save whose state is captured (encoded, changed tensors copied or referenced),
    ready to be hashed, written and committed, now or in the background."""

    key: CheckpointKey
    manifest: dict  # all but the storage locations and bytes_written
    table: TensorTable
    encoded: Dict[str, EncodedField]
    rng: Optional[EncodedField]
    changed: Dict[int, memoryview]  # tensor index -> its bytes (live view or staged copy)
    reused: Dict[int, Location]  # tensor index -> where its unchanged bytes already are
    verify: List[int]  # reused tensors to re-hash before trusting them
    observations: Dict[int, Observation]
    staged: bool  # changed bytes are copies: the caller may go on mutating its tensors
    keepalive: List[Any] = field(default_factory=list)


def prepare_save(
    key: CheckpointKey,
    fields: Mapping[str, Any],
    metadata: Dict[str, Any],
    parent: Optional[str] = None,
    rng_state: Optional[Dict[str, Any]] = None,
    extra: Optional[Dict[str, Any]] = None,
    tracker: Optional[ChangeTracker] = None,
    staging: Optional[StagingArea] = None,
) -> PreparedSave:
    """Capture the state of ``fields`` now. With ``staging`` (and the changed bytes within
    its budget), changed tensors are copied into it, so the caller may go on mutating
    them; otherwise their live memory is referenced until ``commit_save``."""
    table = TensorTable()
    encoded: Dict[str, EncodedField] = {}
    aliases: Dict[str, str] = {}
    owner_by_id: Dict[int, str] = {}
    for name, value in fields.items():
        if not isinstance(value, _NEVER_ALIASED) and id(value) in owner_by_id:
            aliases[name] = owner_by_id[id(value)]
            continue
        owner_by_id[id(value)] = name
        encoded[name] = encode_field(name, value, table, key.step)
    rng_encoded = encode_field(RNG_FIELD, rng_state, table, key.step) if rng_state else None

    observations, reused, verify, changed_indices = {}, {}, [], []
    for index, (obj, spec) in enumerate(zip(table.objects, table.specs)):
        seen = observe(obj, spec) if tracker is not None else None
        if seen is not None:
            observations[index] = seen
        known = tracker.unchanged(obj, seen) if seen is not None else None
        if known is None:
            changed_indices.append(index)
            continue
        reused[index] = known[0]
        if known[1]:
            verify.append(index)
    keepalive = []
    changed_bytes = sum(table.specs[i].nbytes for i in changed_indices)
    staged = staging is not None and staging.fits(changed_bytes)
    if staged:
        views = staging.stage(
            [table.objects[i] for i in changed_indices],
            [table.specs[i].nbytes for i in changed_indices],
        )
        changed = dict(zip(changed_indices, views))
    else:
        changed = {}
        for index in changed_indices:
            changed[index], holder = to_raw(table.objects[index])
            keepalive.append(holder)

    public_fields = {name: _describe_field(enc, table.specs, fields[name]) for name, enc in encoded.items()}
    for name, target in aliases.items():
        public_fields[name] = dict(public_fields[target], codec=ALIAS, alias_of=target)
    manifest = {
        "format_version": FORMAT_VERSION,
        "key": str(key),
        "name": key.name,
        "flow": key.flow,
        "run_id": key.run_id,
        "step": key.step,
        "task_id": key.task_id,
        "pathspec": key.pathspec,
        "attempt": key.attempt,
        "version": key.version,
        "created_on": utc_now_iso(),
        "metadata": metadata,
        "fields": public_fields,
        "parent": parent,
        "rng": sorted(rng_state) if rng_state else None,
        "size": _field_data_size(encoded, table.specs),
        STORAGE: {"fields": {name: {"alias_of": target} for name, target in aliases.items()}},
    }
    manifest.update(extra or {})
    return PreparedSave(
        key, manifest, table, encoded, rng_encoded, changed, reused, verify, observations, staged, keepalive
    )


def commit_save(
    store: CheckpointStore, prepared: PreparedSave, tracker: Optional[ChangeTracker] = None
) -> dict:
    """Hash and write what is not stored yet, commit the manifest, update the tracker."""
    table, changed, reused = prepared.table, dict(prepared.changed), dict(prepared.reused)
    _verify_reused(prepared, changed, reused, tracker)

    # Every buffer to store: changed tensors first, then payloads too big to inline.
    order = sorted(changed)
    buffers: List[memoryview] = [changed[i] for i in order]
    sources = [(id(table.objects[i]), getattr(table.objects[i], "_version", None)) for i in order]
    payload_buffer: Dict[str, int] = {}
    for name, enc in _with_rng(prepared.encoded, prepared.rng):
        if len(enc.payload) > INLINE_BYTES:
            payload_buffer[name] = len(buffers)
            buffers.append(memoryview(enc.payload))
            sources.append(None)
    blobs, extents = plan_blobs(buffers, sources)
    hashes, bytes_written = store.put_blobs(prepared.key.flow, blobs)
    blob_sizes = {digest: blob.size for digest, blob in zip(hashes, blobs)}

    def located(buffer_index: int) -> list:
        return [[hashes[b], offset, length] for b, offset, length in extents[buffer_index]]

    locations: Dict[int, Location] = dict(reused)
    for position, index in enumerate(order):
        where = located(position)
        locations[index] = Location(
            tuple(map(tuple, where)),
            tuple((digest, blob_sizes[digest]) for digest, _, _ in where),
            _fingerprint_of_written(where, changed[index]),
        )
    for location in reused.values():
        blob_sizes.update(location.blob_sizes)

    def stored_payload(name: str, enc: EncodedField) -> dict:
        payload = located(payload_buffer[name]) if name in payload_buffer else enc.payload
        return {"codec": enc.codec, "payload": payload, "tensors": sorted(enc.tensors)}

    manifest = dict(prepared.manifest)
    storage = manifest[STORAGE] = {
        "blobs": blob_sizes,
        "tensors": [
            spec.to_wire() + [[list(e) for e in locations[i].extents]]
            for i, spec in enumerate(table.specs)
        ],
        "fields": dict(prepared.manifest[STORAGE]["fields"]),
        "rng": stored_payload(RNG_FIELD, prepared.rng) if prepared.rng else None,
    }
    for name, enc in prepared.encoded.items():
        storage["fields"][name] = stored_payload(name, enc)
    manifest["bytes_written"] = bytes_written
    # Blob bytes this checkpoint uses (RNG state included); written <= referenced, and
    # the difference is what dedup saved.
    manifest["bytes_referenced"] = sum(
        length for location in locations.values() for _, _, length in location.extents
    ) + sum(length for position in payload_buffer.values() for _, _, length in located(position))
    store.commit(prepared.key, manifest)

    if tracker is not None and tracker.enabled:
        for index, seen in prepared.observations.items():
            verified = index not in prepared.reused or index in prepared.verify
            tracker.remember(table.objects[index], seen, locations[index], verified)
        tracker.keep_only(table.objects)
    return manifest


def _verify_reused(prepared: PreparedSave, changed: dict, reused: dict, tracker) -> None:
    """Re-hash the reused tensors due for it; store the live bytes of any that changed
    behind torch's version counter (and stop trusting the counter)."""
    for index in prepared.verify:
        obj = prepared.table.objects[index]
        if observe(obj, prepared.table.specs[index]) != prepared.observations[index]:
            continue  # written to since the save began: its old bytes stand
        data, holder = to_raw(obj)
        if fingerprint(data) != reused[index].fingerprint:
            prepared.keepalive.append(holder)
            changed[index] = data
            del reused[index]
            tracker.disable(
                "a %s in checkpoint %s changed without torch noticing (written through "
                ".data or a numpy view?); its current bytes are saved"
                % (prepared.table.specs[index].describe(), prepared.key)
            )


def _fingerprint_of_written(extents: list, data: memoryview) -> tuple:
    if len(data) >= SMALL_BYTES:
        return tuple(digest for digest, _, _ in extents)  # one whole blob per chunk
    return fingerprint(data)


def _field_data_size(encoded: Dict[str, EncodedField], specs: List[TensorSpec]) -> int:
    """Bytes of field data, each shared tensor counted once, RNG state not counted."""
    tensors = set().union(*(enc.tensors for enc in encoded.values())) if encoded else set()
    return sum(len(enc.payload) for enc in encoded.values()) + sum(
        specs[i].nbytes for i in tensors
    )


def _with_rng(encoded: Dict[str, EncodedField], rng: Optional[EncodedField]):
    yield from encoded.items()
    if rng is not None:
        yield RNG_FIELD, rng


def _describe_field(enc: EncodedField, specs: List[TensorSpec], value: Any) -> dict:
    entry = {
        "type": enc.type,
        "codec": enc.codec,
        "size": len(enc.payload) + sum(specs[i].nbytes for i in enc.tensors),
    }
    if enc.tensors:
        entry["tensors"] = len(enc.tensors)
    if is_tensor_like(value):
        (only,) = enc.tensors
        entry["dtype"] = str(value.dtype).replace("torch.", "")
        entry["shape"] = list(specs[only].shape)
    show, preview = plain_preview(value)
    if show:
        entry["value"] = preview
    return entry


def read_snapshot(
    store: CheckpointStore, manifest: dict, fields: Optional[Iterable[str]] = None
) -> Dict[str, Any]:
    """Load the fields of a committed checkpoint (all, or only ``fields``), verified."""
    storage = manifest[STORAGE]
    stored = storage["fields"]
    wanted = list(stored) if fields is None else list(fields)
    missing = [name for name in wanted if name not in stored]
    if missing:
        raise CheckpointException(
            "Checkpoint %s has no field(s) %s. Its fields are: %s."
            % (manifest["key"], ", ".join(map(repr, missing)), ", ".join(sorted(stored)) or "none")
        )
    owners = {name: stored[name].get("alias_of", name) for name in wanted}
    decoded = _decode(store, manifest, {owner: stored[owner] for owner in set(owners.values())})
    return {name: decoded[owner] for name, owner in owners.items()}


def read_rng_state(store: CheckpointStore, manifest: dict) -> Optional[Dict[str, Any]]:
    entry = manifest[STORAGE].get("rng")
    if not entry:
        return None
    return _decode(store, manifest, {RNG_FIELD: entry})[RNG_FIELD]


def _decode(store: CheckpointStore, manifest: dict, entries: Dict[str, dict]) -> Dict[str, Any]:
    storage = manifest[STORAGE]
    key = manifest["key"]
    tensor_wires = storage["tensors"]
    blob_sizes = storage["blobs"]
    reads: Dict[str, BlobRead] = {}

    def want(extents: list, destination: memoryview, label: str) -> None:
        position = 0
        for digest, offset, length in extents:
            request = reads.get(digest)
            if request is None:
                request = reads[digest] = BlobRead(digest, blob_sizes[digest], [], label)
            request.targets.append((offset, destination[position : position + length]))
            position += length

    first_user = {}
    for name, entry in entries.items():
        for index in entry["tensors"]:
            first_user.setdefault(index, name)
    raw_tensors = {}
    for index, name in first_user.items():
        wire = tensor_wires[index]
        raw = RawTensor(TensorSpec.from_wire(wire[:-1]))
        raw_tensors[index] = raw
        want(wire[-1], raw.buffer, "field %r" % name)
    payloads = {}
    for name, entry in entries.items():
        payload = entry["payload"]
        if isinstance(payload, list):
            buffer = bytearray(sum(length for _, _, length in payload))
            want(payload, memoryview(buffer), "field %r" % name)
            payloads[name] = buffer
        else:
            payloads[name] = payload

    store.read_blobs(manifest["flow"], list(reads.values()), key)
    tensors = {index: raw.finish() for index, raw in raw_tensors.items()}
    values = {}
    for name, entry in entries.items():
        try:
            values[name] = decode_field(entry["codec"], bytes(payloads[name]), tensors)
        except Exception as ex:
            raise CheckpointException(
                "Checkpoint %s: field %r could not be decoded (%s: %s). If it is a "
                "pickled object, its class must be importable where you load it."
                % (key, name, type(ex).__name__, ex)
            ) from ex
    return values
