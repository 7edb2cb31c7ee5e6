"""The manifest: a checkpoint's description, and its commit record.

A manifest is a msgpack dict. Its public part is what ``inspect()`` returns (format
version, identity, user metadata, one entry per field with type, codec and size, the
parent it resumed from). Under ``"storage"`` it also holds where every byte lives
(tensor specs, blob extents, small payloads inline); that part is internal and never
shown. On disk the body is framed with a magic, the format version and a BLAKE3 digest,
so a damaged manifest is detected like a damaged blob.
"""

import numbers
from datetime import datetime, timezone
from typing import Any, Dict

import blake3
import msgpack

from .errors import CheckpointCorrupted, CheckpointSerializationError

FORMAT_VERSION = 2
STORAGE = "storage"

_MAGIC = b"MFIC"
_DIGEST_BYTES = 32
_HEADER_BYTES = len(_MAGIC) + 1 + _DIGEST_BYTES


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def pack_manifest(manifest: Dict[str, Any]) -> bytes:
    body = msgpack.packb(manifest, use_bin_type=True)
    return _MAGIC + bytes([FORMAT_VERSION]) + blake3.blake3(body).digest() + body


def unpack_manifest(data: bytes, key: str) -> Dict[str, Any]:
    """Decode and verify a stored manifest; CheckpointCorrupted if it is damaged."""
    if len(data) < _HEADER_BYTES or data[: len(_MAGIC)] != _MAGIC:
        raise CheckpointCorrupted(
            "The manifest of checkpoint %s is not a checkpoint manifest (bad header)." % key,
            key=key,
        )
    version = data[len(_MAGIC)]
    if version > FORMAT_VERSION:
        raise CheckpointCorrupted(
            "Checkpoint %s has format version %d; this metaflow-implicit-checkpoint reads "
            "up to %d. Upgrade the package to read it." % (key, version, FORMAT_VERSION),
            key=key,
        )
    digest, body = data[len(_MAGIC) + 1 : _HEADER_BYTES], data[_HEADER_BYTES:]
    if blake3.blake3(body).digest() != digest:
        raise CheckpointCorrupted(
            "The manifest of checkpoint %s failed its integrity check." % key, key=key
        )
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def public_view(manifest: Dict[str, Any]) -> Dict[str, Any]:
    """The manifest as ``inspect()`` shows it: everything but the storage layout."""
    return {k: v for k, v in manifest.items() if k != STORAGE}


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

    def fail(path: str, problem: str) -> None:
        raise CheckpointSerializationError(
            "save(metadata=...)%s: %s %s" % (where, path, problem)
        )

    def plain(value: Any, path: str, depth: int, open_containers: set) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if _is_numpy_bool(value):
            return bool(value)
        if isinstance(value, numbers.Integral):
            number = int(value)
            if not _MIN_INT <= number <= _MAX_INT:
                fail(
                    path,
                    "is the int %d, outside the 64-bit range metadata can hold (-2**63 to "
                    "2**64-1). Store it as a str, or a float if precision does not matter."
                    % number,
                )
            return number
        if isinstance(value, numbers.Real):
            return float(value)
        if isinstance(value, (list, tuple, dict)):
            if id(value) in open_containers:
                fail(path, "contains itself (a reference cycle); metadata must be a tree.")
            if depth >= MAX_METADATA_DEPTH:
                fail(
                    path,
                    "is nested more than %d levels deep; flatten the metadata."
                    % MAX_METADATA_DEPTH,
                )
            open_containers.add(id(value))
            try:
                if isinstance(value, dict):
                    out = {}
                    for k, v in value.items():
                        if not isinstance(k, str):
                            fail(
                                "key %r under %s" % (k, path),
                                "is a %s; metadata keys must be strings." % type(k).__name__,
                            )
                        out[k] = plain(v, "%s[%r]" % (path, k), depth + 1, open_containers)
                    return out
                return [
                    plain(v, "%s[%d]" % (path, i), depth + 1, open_containers)
                    for i, v in enumerate(value)
                ]
            finally:
                open_containers.discard(id(value))
        hint = ""
        if hasattr(value, "item") and callable(value.item):
            hint = " (a one-element tensor or array? pass value.item())"
        fail(
            path,
            "is a %s.%s, which cannot be stored as checkpoint metadata%s. Metadata holds "
            "plain values: None, bool, int, float, str, and lists and str-keyed dicts of them."
            % (type(value).__module__, type(value).__qualname__, hint),
        )

    return plain(metadata, "metadata", 0, set())

