"""Checks for values read back from the store: every one is input, validated before use.

A checkpoint's manifest and object graph are read from a store that others may write
to (a shared bucket), or that something damaged. The readers (manifest.py for the
manifest and its storage layout, graph_format.py for the object graph) check every
value they take from it with the helpers here and raise ``InvalidRecord`` naming
what is wrong; they turn it into ``CheckpointCorrupted`` naming the checkpoint.

Nothing here imports torch or numpy: dtypes are checked against allow-lists of
names, and their item sizes come from those lists, so a crafted dtype never reaches
``getattr(torch, ...)`` (whose lazy ``__getattr__`` imports submodules) or
``numpy.dtype`` (which would build object arrays over stored bytes).
"""

import re
import sys
from array import array
from typing import Any, Dict, Optional, Sequence, Tuple

#: The largest size, offset or count a record may hold (no real checkpoint is near it).
MAX_SIZE = 2**62
#: Dimensions of a tensor or array (numpy's own limit is 64).
MAX_DIMS = 64
#: How deeply a value may nest (containers in containers, graph references); pickle's
#: own limit is about 1000.
MAX_DEPTH = 1000

_DIGEST = re.compile(r"[0-9a-f]{64}\Z")

#: torch dtype name (as stored: ``str(dtype)`` without "torch.") -> bytes per element.
TORCH_DTYPES: Dict[str, int] = {
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "complex32": 4,
    "complex64": 8,
    "complex128": 16,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
}

# numpy dtype strings (``dtype.str``) of plain values: booleans, integers, floats,
# complex numbers, fixed-size bytes/unicode/void, datetimes and timedeltas. Never
# object ("O") and never structured (a structured dtype's str is "|V<n>" too, but it is
# only ever built from this string, which has no fields).
_NUMPY_DTYPE = re.compile(
    r"(?P<order>[<>|=])(?:(?P<kind>[biufc])(?P<size>\d{1,2})|(?P<flex>[SUV])(?P<count>\d{1,10})"
    r"|(?P<time>[mM])8(?:\[(?:\d{1,6})?(?:Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as|generic)\])?)\Z"
)
_NUMERIC_SIZES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8, 16), "c": (8, 16, 32)}


class InvalidRecord(Exception):
    """A value read from the store is not what its place allows. ``str()`` says what
    and where; the reader adds which checkpoint."""


def fail(where: str, problem: str) -> None:
    raise InvalidRecord("%s %s" % (where, problem))


def describe(value: Any) -> str:
    """A short, safe rendering of an untrusted value for an error message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def expect_type(value: Any, types: tuple, where: str) -> Any:
    # bool is an int in Python; a count or size never is a bool.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        fail(where, "is %s, expected %s" % (describe(value), " or ".join(t.__name__ for t in types)))
    return value


def expect_int(value: Any, where: str, low: int = 0, high: int = MAX_SIZE) -> int:
    expect_type(value, (int,), where)
    if not low <= value <= high:
        fail(where, "is %d, outside %d..%d" % (value, low, high))
    return value


def expect_str(value: Any, where: str, max_length: int = 4096) -> str:
    expect_type(value, (str,), where)
    if len(value) > max_length:
        fail(where, "is a string of %d characters (at most %d)" % (len(value), max_length))
    return value


def expect_list(value: Any, where: str, length: Optional[int] = None, max_length: int = MAX_SIZE) -> list:
    expect_type(value, (list, tuple), where)
    if length is not None and len(value) != length:
        fail(where, "has %d items, expected %d" % (len(value), length))
    if len(value) > max_length:
        fail(where, "has %d items (at most %d)" % (len(value), max_length))
    return list(value)


def expect_dict(value: Any, where: str) -> dict:
    return expect_type(value, (dict,), where)


def is_digest(value: Any) -> bool:
    """A blob's name: 64 lowercase hex digits (BLAKE3), nothing else."""
    return isinstance(value, str) and _DIGEST.match(value) is not None


def expect_digest(value: Any, where: str) -> str:
    if not is_digest(value):
        fail(where, "is %s, not a blob digest (64 lowercase hex digits)" % describe(value))
    return value


def torch_itemsize(dtype: Any, where: str) -> int:
    """Bytes per element of an allowed torch dtype name."""
    size = TORCH_DTYPES.get(dtype) if isinstance(dtype, str) else None
    if size is None:
        fail(where, "is %s, not a torch dtype a checkpoint may hold" % describe(dtype))
    return size


def numpy_itemsize(dtype: Any, where: str) -> int:
    """Bytes per element of an allowed numpy dtype string (``dtype.str``)."""
    match = _NUMPY_DTYPE.match(dtype) if isinstance(dtype, str) else None
    if match is None:
        fail(where, "is %s, not a plain numpy dtype (object and structured dtypes are "
             "never stored)" % describe(dtype))
    if match.group("kind"):
        size = int(match.group("size"))
        if size not in _NUMERIC_SIZES[match.group("kind")]:
            fail(where, "is %s, not a numpy dtype" % describe(dtype))
        return size
    if match.group("flex"):
        count = int(match.group("count"))
        size = count * 4 if match.group("flex") == "U" else count
        if size > MAX_SIZE:
            fail(where, "is %s, a dtype too large" % describe(dtype))
        return size
    return 8


#: The largest Unicode code point: numpy refuses (SystemError) to make a str of more.
MAX_CODE_POINT = 0x10FFFF


def check_numpy_scalar_text(dtype: str, data: bytes, where: str) -> None:
    """A ``U`` (text) scalar's bytes must be code points numpy can make a str of; other
    dtypes take any bytes."""
    match = _NUMPY_DTYPE.match(dtype)
    if match is None or match.group("flex") != "U" or not data:
        return
    units = array("I" if array("I").itemsize == 4 else "L")
    units.frombytes(data)
    if (dtype[0] == ">") != (sys.byteorder == "big"):
        units.byteswap()
    if max(units) > MAX_CODE_POINT:
        fail(where, "holds a character beyond U+10FFFF, not text a %s scalar can hold" % dtype)


def check_dims(shape: Any, strides: Any, where: str) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    shape = expect_list(shape, where + " shape", max_length=MAX_DIMS)
    strides = expect_list(strides, where + " strides", length=len(shape))
    return (
        tuple(expect_int(n, "%s shape[%d]" % (where, i)) for i, n in enumerate(shape)),
        tuple(expect_int(s, "%s strides[%d]" % (where, i), -MAX_SIZE, MAX_SIZE) for i, s in enumerate(strides)),
    )


def check_view_bounds(
    shape: Sequence[int], strides: Sequence[int], offset: int, itemsize: int, unit: int, nbytes: int, where: str
) -> None:
    """Raise unless every element of the view lies inside a buffer of ``nbytes``.

    ``strides`` and ``offset`` count ``unit`` bytes (torch: an element; numpy: 1)."""
    if offset < 0:
        fail(where, "starts at offset %d, before its storage" % offset)
    if any(n == 0 for n in shape):
        if offset * unit > nbytes:
            fail(where, "starts at byte %d of a %d-byte storage" % (offset * unit, nbytes))
        return
    low = offset + sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    high = offset + sum(max(0, (n - 1) * s) for n, s in zip(shape, strides))
    if low < 0 or high * unit + itemsize > nbytes:
        fail(
            where,
            "(shape %s, strides %s, offset %d) reaches bytes %d..%d of a %d-byte storage"
            % (list(shape), list(strides), offset, low * unit, high * unit + itemsize, nbytes),
        )
