"""The manifest: a checkpoint's description, and its commit record.

``Manifest`` is the typed manifest; on the wire (``to_wire`` / ``from_wire``) it is a
msgpack dict. Its public part is what ``inspect()`` returns (format version, identity,
user metadata, one entry per field with type, codec and size, the parent it resumed
from). ``storage`` (a ``StorageLayout``) says where every byte lives (tensor specs,
blob extents, small payloads inline); that part is internal and never shown. A reader
per format version decodes the wire dict (``from_wire``); keys a version does not know
are kept as written (``extra``) so a newer writer's additions survive a round trip.
On disk the body is framed with a magic, the format version and a BLAKE3 digest, so a
damaged manifest is detected like a damaged blob.
"""

import numbers
from dataclasses import dataclass, field, fields as dataclass_fields, replace
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import blake3
import msgpack

from .errors import CheckpointCorrupted, CheckpointSerializationError, UnknownFormat
from .keys import CheckpointKey, is_valid_name
from .tensors import StorageSpec
from .validation import (
    MAX_DIMS,
    InvalidRecord,
    describe,
    expect_dict,
    expect_digest,
    expect_int,
    expect_list,
    expect_str,
    expect_type,
    fail,
    numpy_itemsize,
    torch_itemsize,
)

FORMAT_VERSION = 2
STORAGE = "storage"

_MAGIC = b"MFIC"
_DIGEST_BYTES = 32
_HEADER_BYTES = len(_MAGIC) + 1 + _DIGEST_BYTES

Extents = List[list]  # [[blob digest, offset, length], ...]


@dataclass
class StorageLayout:
    """Where a checkpoint's bytes are: internal, never shown by ``inspect()``.

    ``tensors`` holds one wire entry per storage (its spec, then its extents);
    ``fields`` maps a field to the storages it uses (and, in format 1, its payload);
    ``graph`` is the object graph inline (bytes) or its extents; ``rng`` the storages of
    the RNG state; ``files`` each file's extents. A gang's global manifest holds only
    ``blobs`` (all parts') and ``blob_fields`` (which node's fields each blob holds).
    """

    blobs: Dict[str, int] = field(default_factory=dict)  # digest -> size
    tensors: List[list] = field(default_factory=list)
    graph: Union[bytes, Extents, None] = None
    fields: Dict[str, dict] = field(default_factory=dict)
    rng: Optional[dict] = None
    files: Optional[Dict[str, Extents]] = None
    blob_fields: Optional[Dict[str, List[str]]] = None

    def to_wire(self) -> Dict[str, Any]:
        if self.blob_fields is not None:
            return {"blobs": self.blobs, "blob_fields": self.blob_fields}
        wire = {
            "blobs": self.blobs,
            "tensors": self.tensors,
            "graph": self.graph,
            "fields": self.fields,
            "rng": self.rng,
        }
        if self.files is not None:
            wire["files"] = self.files
        return wire

    @classmethod
    def from_wire(cls, wire: Dict[str, Any]) -> "StorageLayout":
        return cls(
            blobs=wire.get("blobs", {}),
            tensors=wire.get("tensors", []),
            graph=wire.get("graph"),
            fields=wire.get("fields", {}),
            rng=wire.get("rng"),
            files=wire.get("files"),
            blob_fields=wire.get("blob_fields"),
        )

    @property
    def graph_extents(self) -> Extents:
        """The extents of the object graph; [] when it is inline (or absent)."""
        return self.graph if isinstance(self.graph, list) else []

    def storage_specs(self) -> List[StorageSpec]:
        """Each storage's spec (format 2; checked when the manifest was read)."""
        return [StorageSpec.from_wire(wire) for wire in self.tensors]

    def extents_of(self, index: int) -> Extents:
        """Where storage ``index``'s bytes are: the last item of its wire entry (in both
        formats; checked when the manifest was read)."""
        return self.tensors[index][-1]

    @staticmethod
    def storage_entry(spec: StorageSpec, extents: Sequence[Sequence]) -> list:
        """The wire entry of one storage (format 2): its spec, then its extents."""
        return spec.to_wire() + [[list(e) for e in extents]]

    def check(self, format_version: int) -> None:
        """Raise InvalidRecord unless every value is well formed: digests are digests,
        every extent lies inside its blob, storages are as long as their extents,
        indices are in range. Sizes are claims until a read compares them with the
        blobs themselves (store.py)."""
        blobs = expect_dict(self.blobs, "storage blobs")
        for digest, size in blobs.items():
            expect_digest(digest, "storage blob")
            expect_int(size, "the size of blob %s" % digest)
        if self.blob_fields is not None:  # a gang's global manifest
            for digest, names in expect_dict(self.blob_fields, "storage blob_fields").items():
                expect_digest(digest, "storage blob_fields")
                for name in expect_list(names, "the fields of blob %s" % digest):
                    expect_str(name, "a field of blob %s" % digest)
            return
        tensors = expect_list(self.tensors, "storage tensors")
        for index, wire in enumerate(tensors):
            where = "storage %d" % index
            if format_version == 1:
                _check_v1_tensor(wire, blobs, where)
            else:
                spec = StorageSpec.from_wire(wire, where)
                if len(wire) != 4:
                    fail(where, "has %d items, expected 4 (kind, bytes, device, extents)" % len(wire))
                _check_extents(wire[3], blobs, where, total=spec.nbytes)
        if isinstance(self.graph, list):
            _check_extents(self.graph, blobs, "the object graph")
        elif format_version >= 2 and not isinstance(self.graph, bytes):
            fail("the object graph", "is %s, neither bytes nor extents" % describe(self.graph))
        for name, entry in expect_dict(self.fields, "storage fields").items():
            expect_str(name, "a field name", max_length=1024)
            _check_storage_entry(entry, len(tensors), blobs, "field %r" % name, format_version)
        if self.rng is not None:
            _check_storage_entry(self.rng, len(tensors), blobs, "the RNG state", format_version)
        if self.files is not None:
            for rel, extents in expect_dict(self.files, "storage files").items():
                expect_str(rel, "a file name")
                _check_extents(extents, blobs, "file %r" % rel)


@dataclass
class Manifest:
    """One checkpoint's manifest. ``storage`` is None until the save is committed."""

    key: str
    name: str
    flow: str
    run_id: str
    step: str
    task_id: str
    pathspec: str
    attempt: int
    version: int
    created_on: str
    metadata: Dict[str, Any]
    fields: Dict[str, dict]  # field -> its public entry (type, codec, size, ...)
    parent: Optional[str] = None
    rng: Optional[List[str]] = None  # the generators captured
    size: int = 0  # bytes of field data
    foreach_indices: List[int] = field(default_factory=list)
    latest: bool = True  # False: never chosen as a resume point
    storage_format: str = "files"
    bytes_written: int = 0
    bytes_referenced: int = 0
    files: Optional[Dict[str, dict]] = None  # the task folder's files, when saved with one
    directories: Optional[Dict[str, dict]] = None  # every folder, empty ones too: mode, mtime
    gang: Optional[Dict[str, Any]] = None  # a gang's global manifest: its parts
    save_record: Optional[Dict[str, Any]] = None  # its cost and why: save_schedule.SaveRecord
    storage: Optional[StorageLayout] = None
    format_version: int = FORMAT_VERSION
    extra: Dict[str, Any] = field(default_factory=dict)  # wire keys this version does not know

    @property
    def has_folder(self) -> bool:
        """Whether it (or a gang node's part) holds a snapshot of a task's folder."""
        return self.files is not None

    def public(self) -> Dict[str, Any]:
        """The manifest as ``inspect()`` shows it: everything but the storage layout."""
        wire = dict(self.extra)
        for name in _PUBLIC_KEYS:
            value = getattr(self, name)
            if value is not None or name not in _OMITTED_WHEN_NONE:
                wire[name] = value
        return wire

    def to_wire(self) -> Dict[str, Any]:
        wire = self.public()
        if self.storage is not None:
            wire[STORAGE] = self.storage.to_wire()
        return wire

    @classmethod
    def from_wire(cls, wire: Dict[str, Any], key: str = "") -> "Manifest":
        """Decode a wire dict with the reader of its format version."""
        version = wire.get("format_version", 1)
        reader = _READERS.get(version) if type(version) is int else None
        if reader is None:
            raise UnknownFormat(
                "Checkpoint %s has format version %s, which this metaflow-implicit-checkpoint "
                "cannot read (it reads %s). Upgrade the package if a newer one wrote it."
                % (key, describe(version), ", ".join(map(str, sorted(_READERS)))),
                key=key,
            )
        return reader(wire)

    def with_storage(self, storage: StorageLayout, **changes: Any) -> "Manifest":
        return replace(self, storage=storage, **changes)


#: Optional keys written only when set, as the formats always have.
_OMITTED_WHEN_NONE = {"files", "directories", "gang", "save_record"}
#: The wire keys of a manifest's public part, one per typed field.
_PUBLIC_KEYS = tuple(
    spec.name for spec in dataclass_fields(Manifest) if spec.name not in ("extra", "storage")
)


def _from_wire_v2(wire: Dict[str, Any]) -> Manifest:
    values = {name: wire[name] for name in _PUBLIC_KEYS if name in wire}
    storage = wire.get(STORAGE)
    if storage is not None:
        expect_dict(storage, "the manifest's storage layout")
    return Manifest(
        storage=StorageLayout.from_wire(storage) if storage is not None else None,
        extra={k: v for k, v in wire.items() if k not in values and k != STORAGE},
        **values,
    )


def _from_wire_v1(wire: Dict[str, Any]) -> Manifest:
    """Format 1 (0.1.0): the same identity and public keys; its storage layout has
    per-field payloads and whole-buffer tensor specs (format_v1.py reads them)."""
    manifest = _from_wire_v2(wire)
    manifest.format_version = 1
    return manifest


_READERS: Dict[int, Callable[[Dict[str, Any]], Manifest]] = {1: _from_wire_v1, 2: _from_wire_v2}


def _check_extents(wire: Any, blobs: Dict[str, int], where: str, total: Optional[int] = None) -> None:
    length_sum = 0
    for i, extent in enumerate(expect_list(wire, where + " extents")):
        here = "%s extent %d" % (where, i)
        digest, offset, length = expect_list(extent, here, length=3)
        expect_digest(digest, here + " blob")
        if digest not in blobs:
            fail(here, "names blob %s, which the manifest's blob list lacks" % digest)
        expect_int(offset, here + " offset")
        expect_int(length, here + " length")
        if offset + length > blobs[digest]:
            fail(here, "reaches byte %d of blob %s, which has %d" % (offset + length, digest, blobs[digest]))
        length_sum += length
    if total is not None and length_sum != total:
        fail(where, "claims %d bytes, but its extents hold %d" % (total, length_sum))


def _check_storage_entry(entry: Any, storages: int, blobs: Dict[str, int], where: str, format_version: int) -> None:
    expect_dict(entry, where)
    for index in expect_list(entry.get("tensors", []), where + " storages"):
        expect_int(index, where + " storage index", 0, storages - 1)
    if format_version == 1:
        payload = entry.get("payload")
        if isinstance(payload, list):
            _check_extents(payload, blobs, where + " payload")
        elif not isinstance(payload, (bytes, type(None))):
            fail(where + " payload", "is %s, neither bytes nor extents" % describe(payload))
        if "alias_of" in entry:
            expect_str(entry["alias_of"], where + " alias_of", max_length=1024)


def _check_v1_tensor(wire: Any, blobs: Dict[str, int], where: str) -> None:
    """Format 1's whole-buffer spec: [kind, dtype, shape, bytes, device, parameter,
    requires_grad, extents] of a contiguous tensor or array."""
    kind, dtype, shape, nbytes, device, parameter, requires_grad, extents = expect_list(wire, where, length=8)
    itemsize = torch_itemsize(dtype, where + " dtype") if kind == "torch" else numpy_itemsize(dtype, where + " dtype")
    StorageSpec.from_wire([kind, nbytes, device], where)
    elements = 1
    for n in expect_list(shape, where + " shape", max_length=MAX_DIMS):
        expect_int(n, where + " shape")
        elements *= n
    if elements * itemsize > nbytes:
        fail(where, "holds %d elements of %d bytes in %d bytes" % (elements, itemsize, nbytes))
    expect_type(parameter, (bool,), where + " parameter")
    expect_type(requires_grad, (bool,), where + " requires_grad")
    _check_extents(extents, blobs, where, total=nbytes)


#: The types of a manifest's public values, as stored (None allowed where the field's
#: default is None).
_PUBLIC_TYPES = {
    "key": (str,), "name": (str,), "flow": (str,), "run_id": (str,), "step": (str,),
    "task_id": (str,), "pathspec": (str,), "attempt": (int,), "version": (int,),
    "created_on": (str,), "metadata": (dict,), "fields": (dict,), "parent": (str, type(None)),
    "rng": (list, type(None)), "size": (int,), "foreach_indices": (list,), "latest": (bool,),
    "storage_format": (str,), "bytes_written": (int,), "bytes_referenced": (int,),
    "files": (dict, type(None)), "directories": (dict, type(None)), "gang": (dict, type(None)),
    "save_record": (dict, type(None)), "format_version": (int,),
}


def check_manifest(manifest: Manifest) -> None:
    """Raise InvalidRecord unless ``manifest`` (as read) is well formed."""
    for name, types in _PUBLIC_TYPES.items():
        expect_type(getattr(manifest, name), types, "the manifest's %r" % name)
    if not is_valid_name(manifest.name):
        fail("the manifest's 'name'", "is %s, not a checkpoint name" % describe(manifest.name))
    try:  # the key's own rules: no part can hold a path separator

        CheckpointKey(manifest.flow, manifest.run_id, manifest.step, manifest.task_id,
                      manifest.attempt, manifest.name, manifest.version)
    except Exception as ex:
        fail("the manifest's identity", "is invalid (%s)" % ex)
    for name in ("attempt", "version", "size", "bytes_written", "bytes_referenced"):
        expect_int(getattr(manifest, name), "the manifest's %r" % name)
    for i, index in enumerate(manifest.foreach_indices):
        expect_int(index, "the manifest's foreach index %d" % i)
    for name, entry in manifest.fields.items():
        expect_str(name, "a field name", max_length=1024)
        expect_dict(entry, "the public entry of field %r" % name)
    if manifest.gang is not None:
        expect_int(manifest.gang.get("num_nodes"), "the gang's 'num_nodes'", 1, 1 << 20)
    if manifest.storage is None:  # every stored manifest is a committed one
        fail("the manifest", "has no storage layout")
    manifest.storage.check(manifest.format_version)


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def pack_manifest(manifest: Manifest) -> bytes:
    body = msgpack.packb(manifest.to_wire(), use_bin_type=True)
    return _MAGIC + bytes([FORMAT_VERSION]) + blake3.blake3(body).digest() + body


def unpack_manifest(data: bytes, key: str) -> Manifest:
    """Decode and verify a stored manifest; CheckpointCorrupted if it is damaged."""
    if len(data) < _HEADER_BYTES or data[: len(_MAGIC)] != _MAGIC:
        raise CheckpointCorrupted(
            "The manifest of checkpoint %s is not a checkpoint manifest (bad header)." % key,
            key=key,
        )
    version = data[len(_MAGIC)]
    if version > FORMAT_VERSION:
        raise UnknownFormat(
            "Checkpoint %s has format version %d; this metaflow-implicit-checkpoint reads "
            "up to %d. Upgrade the package to read it." % (key, version, FORMAT_VERSION),
            key=key,
        )
    digest, body = data[len(_MAGIC) + 1 : _HEADER_BYTES], data[_HEADER_BYTES:]
    if blake3.blake3(body).digest() != digest:
        raise CheckpointCorrupted(
            "The manifest of checkpoint %s failed its integrity check." % key, key=key
        )
    try:
        wire = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as ex:  # msgpack's own errors: the digest matched, so it was written so
        raise CheckpointCorrupted(
            "The manifest of checkpoint %s is not valid msgpack (%s: %s); it was altered "
            "or damaged." % (key, type(ex).__name__, ex),
            key=key,
        ) from None
    if not isinstance(wire, dict):
        raise CheckpointCorrupted("The manifest of checkpoint %s is not a manifest (a %s)." % (key, type(wire).__name__), key=key)
    try:
        manifest = Manifest.from_wire(wire, key)
        check_manifest(manifest)
    except InvalidRecord as ex:
        raise CheckpointCorrupted(
            "The manifest of checkpoint %s is invalid: %s. It was altered or damaged; "
            "load an earlier checkpoint." % (key, ex),
            key=key,
        ) from None
    except TypeError as ex:  # a key the manifest type does not take, or one missing
        raise CheckpointCorrupted(
            "The manifest of checkpoint %s is invalid: %s. It was altered or damaged; "
            "load an earlier checkpoint." % (key, ex),
            key=key,
        ) from None
    return manifest


#: msgpack stores ints from -2**63 to 2**64-1.
_MIN_INT, _MAX_INT = -(2**63), 2**64 - 1
MAX_METADATA_DEPTH = 32


def _is_numpy_bool(value: Any) -> bool:
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    return kind == "b" and getattr(value, "shape", None) == () and type(value).__module__ == "numpy"


def normalize_metadata(metadata: Any, step: str = None) -> Dict[str, Any]:
    """Check user metadata is JSON-like and return a plain copy of it.

    Numbers of other types (numpy scalars, Decimal-free numbers.Real) become int/float;
    anything else is rejected with the path of the offending value.
    """
    where = " in step *%s*" % step if step else ""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise CheckpointSerializationError(
            "save(metadata=...)%s must be a dict of plain values, not %s."
            % (where, type(metadata).__name__)
        )
    return _PlainMetadata(where).copy(metadata, "metadata", 0)


class _PlainMetadata:
    """One walk over user metadata: a plain copy, or an error naming the value's path."""

    def __init__(self, where: str):
        self._where = where
        self._open = set()  # ids of the containers being copied: a cycle comes back to one

    def copy(self, value: Any, path: str, depth: int) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if _is_numpy_bool(value):
            return bool(value)
        if isinstance(value, numbers.Integral):
            return self._int(int(value), path)
        if isinstance(value, numbers.Real):
            return float(value)
        if isinstance(value, (list, tuple, dict)):
            return self._container(value, path, depth)
        hint = ""
        if hasattr(value, "item") and callable(value.item):
            hint = " (a one-element tensor or array? pass value.item())"
        self._fail(
            path,
            "is a %s.%s, which cannot be stored as checkpoint metadata%s. Metadata holds "
            "plain values: None, bool, int, float, str, and lists and str-keyed dicts of them."
            % (type(value).__module__, type(value).__qualname__, hint),
        )

    def _int(self, number: int, path: str) -> int:
        if not _MIN_INT <= number <= _MAX_INT:
            self._fail(
                path,
                "is the int %d, outside the 64-bit range metadata can hold (-2**63 to "
                "2**64-1). Store it as a str, or a float if precision does not matter."
                % number,
            )
        return number

    def _container(self, value: Any, path: str, depth: int) -> Any:
        if id(value) in self._open:
            self._fail(path, "contains itself (a reference cycle); metadata must be a tree.")
        if depth >= MAX_METADATA_DEPTH:
            self._fail(
                path, "is nested more than %d levels deep; flatten the metadata." % MAX_METADATA_DEPTH
            )
        self._open.add(id(value))
        try:
            if not isinstance(value, dict):
                return [self.copy(v, "%s[%d]" % (path, i), depth + 1) for i, v in enumerate(value)]
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    self._fail(
                        "key %r under %s" % (k, path),
                        "is a %s; metadata keys must be strings." % type(k).__name__,
                    )
                out[k] = self.copy(v, "%s[%r]" % (path, k), depth + 1)
            return out
        finally:
            self._open.discard(id(value))

    def _fail(self, path: str, problem: str) -> None:
        raise CheckpointSerializationError("save(metadata=...)%s: %s %s" % (self._where, path, problem))

