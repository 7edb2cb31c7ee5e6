"""Fields to a committed checkpoint, and back: the save and load pipelines.

Save: encode every field (codecs) → cut payloads and tensor bytes into blobs (layout) →
write the blobs that do not exist yet (store) → commit the manifest (written last).
Load: read the manifest → read and verify the blobs the wanted fields need → decode.
"""

from typing import Any, Dict, Iterable, List, Mapping, Optional

from .codecs import EncodedField, TensorTable, decode_field, encode_field, plain_preview
from .errors import CheckpointException
from .keys import CheckpointKey
from .layout import plan_blobs
from .manifest import FORMAT_VERSION, STORAGE, utc_now_iso
from .store import BlobRead, CheckpointStore
from .tensors import RawTensor, TensorSpec, is_tensor_like

#: Payloads up to this size live inside the manifest instead of a blob of their own.
INLINE_BYTES = 1024
ALIAS = "alias"
RNG_FIELD = "<rng state>"

# Immutable values can be equal objects by accident (small ints are shared by Python);
# only mutable objects that two fields name are stored as an alias.
_NEVER_ALIASED = (type(None), bool, int, float, complex, str, bytes)


def write_snapshot(
    store: CheckpointStore,
    key: CheckpointKey,
    fields: Mapping[str, Any],
    metadata: Dict[str, Any],
    parent: Optional[str] = None,
    rng_state: Optional[Dict[str, Any]] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> dict:
    """Encode, store and commit ``fields``; return the committed manifest."""
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

    # Every buffer to store: tensor bytes first, then payloads too big to inline.
    buffers: List[memoryview] = list(table.data)
    sources: List[Optional[tuple]] = list(table.sources)
    payload_buffer: Dict[str, int] = {}
    for name, enc in _with_rng(encoded, rng_encoded):
        if len(enc.payload) > INLINE_BYTES:
            payload_buffer[name] = len(buffers)
            buffers.append(memoryview(enc.payload))
            sources.append(None)
    blobs, extents = plan_blobs(buffers, sources)
    hashes, bytes_written = store.put_blobs(key.flow, blobs)

    def located(buffer_index: int) -> list:
        return [[hashes[b], offset, length] for b, offset, length in extents[buffer_index]]

    def stored_payload(name: str, enc: EncodedField) -> dict:
        payload = located(payload_buffer[name]) if name in payload_buffer else enc.payload
        return {"codec": enc.codec, "payload": payload, "tensors": sorted(enc.tensors)}

    public_fields = {}
    storage_fields = {}
    for name, enc in encoded.items():
        public_fields[name] = _describe_field(enc, table.specs, fields[name])
        storage_fields[name] = stored_payload(name, enc)
    for name, target in aliases.items():
        public_fields[name] = dict(public_fields[target], codec=ALIAS, alias_of=target)
        storage_fields[name] = {"alias_of": target}

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
        "bytes_written": bytes_written,
        STORAGE: {
            "blobs": {digest: blob.size for digest, blob in zip(hashes, blobs)},
            "tensors": [
                spec.to_wire() + [located(i)] for i, spec in enumerate(table.specs)
            ],
            "fields": storage_fields,
            "rng": stored_payload(RNG_FIELD, rng_encoded) if rng_encoded else None,
        },
    }
    manifest.update(extra or {})
    store.commit(key, manifest)
    return manifest


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
