"""Crafting hostile checkpoints the way an attacker with write access to the store can.

A committed checkpoint is a framed manifest (magic, format version, BLAKE3 digest of the
body, msgpack body) plus blobs named by their BLAKE3 hash. Anyone who can write the
bucket can read a real manifest, edit its wire dict or its object graph, re-frame it (the
digest only detects accidents, it is not a signature) and write it back. These helpers do
exactly that, without going through the engine's own writers, so a test sees the bytes an
attacker would leave: on a local store (``LocalBucket``) or on the S3 test server
(``S3Bucket``).

``Crafted`` holds one checkpoint's manifest wire dict and its decoded object graph:

    crafted = Crafted.open(bucket, key)
    doc = crafted.graph()                     # {"classes", "nodes" (decoded), "fields", "rng"}
    doc["nodes"][crafted.root("a")][2][0] = "|O"
    crafted.set_graph(doc)                    # inline if small, else a new blob by its hash
    crafted.commit()                          # re-framed, written over the manifest

The module also holds the classes tests save and a subprocess may import (the
``TrainConfig`` dataclass, ``PlainThing``), and small shared tools: ``deep_equal``,
``run_python`` (a fresh interpreter with tests/ on its path), ``AccessWatch`` (an audit
hook recording opens and deletions of watched paths).
"""

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import blake3
import msgpack

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
ROOT = "_implicit_checkpoints"
MAGIC = b"MFIC"
DIGEST_BYTES = 32
HEADER_BYTES = len(MAGIC) + 1 + DIGEST_BYTES
REF_CODE = 1
INLINE_GRAPH_BYTES = 1024


# -- classes saved by the tests (importable by a separate process) -----------------------


@dataclasses.dataclass
class TrainConfig:
    lr: float
    layers: tuple
    name: str = "run"


class PlainThing:
    """Neither a dataclass nor stateful: it can only be stored by pickling it."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return type(other) is PlainThing and other.value == self.value


# -- framing --------------------------------------------------------------------------------


def frame(wire: Dict[str, Any], version: int = 2) -> bytes:
    """A manifest wire dict framed as the store holds it, with a valid digest."""
    body = msgpack.packb(wire, use_bin_type=True)
    return MAGIC + bytes([version]) + blake3.blake3(body).digest() + body


def unframe(data: bytes) -> Dict[str, Any]:
    assert data[: len(MAGIC)] == MAGIC, "not a framed manifest"
    body = data[HEADER_BYTES:]
    assert blake3.blake3(body).digest() == data[len(MAGIC) + 1 : HEADER_BYTES]
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def digest_of(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def manifest_path(key: str) -> str:
    """Where the store keeps the manifest of ``key`` (Flow/run/step/task/attempt/name/version)."""
    flow, run_id, step, task_id, attempt, name, version = key.split("/")
    return "%s/%s/tasks/%s/%s/%s/%s/%08d.%s.manifest" % (
        flow, ROOT, run_id, step, task_id, attempt, int(version), name
    )


def blob_path(flow: str, digest: str) -> str:
    return "%s/%s/blobs/%s/%s" % (flow, ROOT, digest[:2], digest)


def ref(index: int, data: Optional[bytes] = None) -> msgpack.ExtType:
    """A graph reference to node ``index`` (or an extension value with raw ``data``)."""
    return msgpack.ExtType(REF_CODE, index.to_bytes(4, "little") if data is None else data)


def ref_index(value: Any) -> Optional[int]:
    if isinstance(value, msgpack.ExtType) and value.code == REF_CODE and len(value.data) == 4:
        return int.from_bytes(value.data, "little")
    return None


# -- raw access to a store ------------------------------------------------------------------


class LocalBucket:
    """A local store's folder, read and written as plain files."""

    def __init__(self, root):
        self.root = Path(root)

    def full(self, path: str) -> Path:
        return self.root / path

    def read(self, path: str) -> bytes:
        return self.full(path).read_bytes()

    def write(self, path: str, data: bytes) -> None:
        full = self.full(path)
        full.parent.mkdir(parents=True, exist_ok=True)
        # An earlier mutation may have put a folder, FIFO or link at this blob's path
        # (writing through a FIFO would block): an attacker replaces it.
        if full.is_dir() and not full.is_symlink():
            shutil.rmtree(full)
        elif full.is_symlink() or full.exists():
            full.unlink()
        full.write_bytes(data)

    def exists(self, path: str) -> bool:
        return self.full(path).exists()


class S3Bucket:
    """A store root ``s3://bucket/prefix`` on the test server, through boto3 itself."""

    def __init__(self, client, root: str):
        assert root.startswith("s3://")
        self.client = client
        self.bucket, _, prefix = root[len("s3://") :].partition("/")
        self.prefix = prefix.strip("/")

    def _key(self, path: str) -> str:
        return "%s/%s" % (self.prefix, path) if self.prefix else path

    def read(self, path: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(path))["Body"].read()

    def write(self, path: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=data)

    def exists(self, path: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(path))
            return True
        except Exception:  # noqa: BLE001 - a test helper: any failure means absent
            return False


# -- one checkpoint, crafted -----------------------------------------------------------------


def decode_graph(document: bytes) -> Dict[str, Any]:
    doc = msgpack.unpackb(document, raw=False, strict_map_key=False)
    doc["nodes"] = [msgpack.unpackb(n, raw=False, strict_map_key=False) for n in doc["nodes"]]
    return doc


def encode_graph(doc: Dict[str, Any], raw_nodes: Optional[Dict[int, bytes]] = None) -> bytes:
    """The graph document as stored; ``raw_nodes`` replaces the packed bytes of some nodes
    (bytes no msgpack packer would make, e.g. nesting 100 000 deep)."""
    raw_nodes = raw_nodes or {}
    nodes = [
        raw_nodes[i] if i in raw_nodes else msgpack.packb(node, use_bin_type=True)
        for i, node in enumerate(doc["nodes"])
    ]
    for i in sorted(raw_nodes):
        if i >= len(nodes):
            nodes.append(raw_nodes[i])
    packed = dict(doc)
    packed["nodes"] = nodes
    return msgpack.packb(packed, use_bin_type=True)


class Crafted:
    """One committed checkpoint's manifest (``wire``), editable and written back framed."""

    def __init__(self, bucket, key: str, wire: Dict[str, Any]):
        self.bucket = bucket
        self.key = key
        self.wire = wire
        self.flow = key.split("/")[0]

    @classmethod
    def open(cls, bucket, key: str) -> "Crafted":
        key = str(key)
        return cls(bucket, key, unframe(bucket.read(manifest_path(key))))

    @property
    def storage(self) -> Dict[str, Any]:
        return self.wire["storage"]

    @property
    def path(self) -> str:
        return manifest_path(self.key)

    def commit(self, raw: Optional[bytes] = None) -> None:
        """Write the (edited) manifest over the committed one, framed with a valid digest."""
        self.bucket.write(self.path, frame(self.wire) if raw is None else raw)

    # blobs

    def read_blob(self, digest: str) -> bytes:
        return self.bucket.read(blob_path(self.flow, digest))

    def write_blob(self, data: bytes) -> str:
        """Store ``data`` as a blob named by its hash, listed in the manifest's blobs."""
        digest = digest_of(data)
        self.bucket.write(blob_path(self.flow, digest), data)
        self.storage["blobs"][digest] = len(data)
        return digest

    def blob_file(self, digest: str) -> Path:
        return self.bucket.full(blob_path(self.flow, digest))

    # the object graph

    def graph_bytes(self) -> bytes:
        where = self.storage["graph"]
        if isinstance(where, (bytes, bytearray)):
            return bytes(where)
        return b"".join(self.read_blob(d)[o : o + n] for d, o, n in where)

    @property
    def graph_inline(self) -> bool:
        return isinstance(self.storage["graph"], (bytes, bytearray))

    def graph(self) -> Dict[str, Any]:
        return decode_graph(self.graph_bytes())

    def set_graph_bytes(self, document: bytes, inline: Optional[bool] = None) -> None:
        """Put a graph document in the manifest: inline when small (as a save does), else
        in a new blob named by its hash."""
        if inline is None:
            inline = len(document) <= INLINE_GRAPH_BYTES
        if inline:
            self.storage["graph"] = document
        else:
            digest = self.write_blob(document)
            self.storage["graph"] = [[digest, 0, len(document)]]

    def set_graph(self, doc: Dict[str, Any], inline: Optional[bool] = None, raw_nodes=None) -> None:
        self.set_graph_bytes(encode_graph(doc, raw_nodes), inline)

    def root(self, field: str, doc: Optional[Dict[str, Any]] = None) -> int:
        """The node index of a field's root in the graph."""
        doc = doc if doc is not None else self.graph()
        index = ref_index(doc["fields"][field])
        assert index is not None, "field %r is stored inline" % field
        return index

    def storage_of(self, field: str) -> int:
        """The (only) storage index a tensor/array field uses."""
        (index,) = self.storage["fields"][field]["tensors"]
        return index

    def field_blobs(self, field: str) -> List[str]:
        return sorted(
            {e[0] for s in self.storage["fields"][field]["tensors"] for e in self.storage["tensors"][s][3]}
        )

    def copy_wire(self) -> Dict[str, Any]:
        return copy.deepcopy(self.wire)


# -- comparing values -------------------------------------------------------------------------


def deep_equal(a: Any, b: Any) -> bool:
    """Equal values and types, tensors and arrays compared exactly (dtype, shape, bytes)."""
    torch = sys.modules.get("torch")
    np = sys.modules.get("numpy")
    if torch is not None and isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a.resolve_conj().resolve_neg(), b.resolve_conj().resolve_neg())
        )
    if np is not None and isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and list(a.keys()) == list(b.keys())
            and all(deep_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(deep_equal(x, y) for x, y in zip(a, b))
        )
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and deep_equal(vars(a), vars(b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN
    return type(a) is type(b) and a == b


# -- a fresh interpreter ----------------------------------------------------------------------


def python_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAFLOW_", "AWS_"))}
    env["USERNAME"] = env.get("USERNAME") or "tester"
    # The package itself comes from the installation (or a PYTHONPATH the caller set).
    env["PYTHONPATH"] = os.pathsep.join(([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []) + [str(TESTS)])
    env["PYTHONFAULTHANDLER"] = "1"
    env.update(extra or {})
    return env


class PythonResult:
    def __init__(self, proc: subprocess.CompletedProcess, timed_out: bool):
        self.returncode = proc.returncode
        self.stdout = proc.stdout or ""
        self.stderr = proc.stderr or ""
        self.timed_out = timed_out
        self.result = None
        for line in reversed(self.stdout.strip().splitlines()):
            if line.startswith("RESULT "):
                self.result = json.loads(line[len("RESULT ") :])
                break

    def describe(self) -> str:
        how = "timed out" if self.timed_out else "exit status %s" % self.returncode
        if self.returncode is not None and self.returncode < 0:
            how += " (killed by signal %d: a crash)" % -self.returncode
        return "%s\n--- stdout ---\n%s\n--- stderr ---\n%s" % (how, self.stdout[-4000:], self.stderr[-6000:])


def run_python(code: str, timeout: float = 120, env: Optional[Dict[str, str]] = None, cwd=None) -> PythonResult:
    """Run ``code`` in a fresh interpreter (tests/ and the repo on its path). The code
    reports by printing ``RESULT <json>`` (``report(obj)`` is predefined); a crash
    (negative status) or a timeout is visible in the result, never in this process."""
    prelude = textwrap.dedent(
        """
        import json as _json
        def report(obj):
            print("RESULT " + _json.dumps(obj), flush=True)
        """
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", prelude + textwrap.dedent(code)],
            env=python_env(env),
            cwd=cwd or str(TESTS),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
        return PythonResult(proc, False)
    except subprocess.TimeoutExpired as ex:
        fake = subprocess.CompletedProcess(ex.cmd, None, _text(ex.stdout), _text(ex.stderr))
        return PythonResult(fake, True)


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


#: What a crafted load in a subprocess reports: {"outcome": "ok"|"raised", "type", "mro",
#: "message"}. ``LOAD_OUTCOME`` is code to paste in a subprocess script; it defines
#: ``outcome_of(action)``, which also touches a returned value the way Metaflow does at
#: the end of a step (pickle, repr), so a value over invalid memory crashes there.
LOAD_OUTCOME = """
import pickle as _pickle
def outcome_of(action):
    try:
        value = action()
    except BaseException as ex:
        return {"outcome": "raised", "type": type(ex).__name__,
                "mro": [c.__name__ for c in type(ex).__mro__], "message": str(ex)}
    try:
        _pickle.dumps(value)
    except Exception:
        pass
    repr(value)
    return {"outcome": "ok", "value": repr(value)[:2000]}
"""


def in_thread(action, timeout: float):
    """Run ``action`` in a daemon thread; return ("ok", value), ("raised", exception) or
    ("hung", None) if it is still running after ``timeout`` seconds."""
    outcome: Dict[str, Any] = {}

    def run():
        try:
            outcome["value"] = action()
        except BaseException as ex:  # noqa: B902 - handed to the test
            outcome["error"] = ex

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return "hung", None
    if "error" in outcome:
        return "raised", outcome["error"]
    return "ok", outcome["value"]


# -- watching file access ---------------------------------------------------------------------

_MUTATING_EVENTS = {
    "os.remove", "os.rename", "os.rmdir", "os.truncate", "os.chmod", "os.chown",
    "os.utime", "os.symlink", "os.link", "os.mkdir", "shutil.rmtree", "shutil.move",
}
_WATCHES: List["AccessWatch"] = []
_HOOKED = False


def _paths_of(event: str, args: tuple) -> Iterable[str]:
    for arg in args[:2] if event in ("os.rename", "os.symlink", "os.link", "shutil.move") else args[:1]:
        if isinstance(arg, (str, bytes, os.PathLike)):
            try:
                yield os.path.abspath(os.fsdecode(arg))
            except Exception:  # noqa: BLE001 - never fail inside an audit hook
                pass


def _audit(event: str, args: tuple) -> None:
    if not _WATCHES or (event != "open" and event not in _MUTATING_EVENTS):
        return
    for path in _paths_of(event, args):
        for watch in list(_WATCHES):
            watch._saw(event, path, args)


class AccessWatch:
    """Records (event, path) for every open, removal, rename or other change of a file
    under ``paths`` while active (``with AccessWatch([...]) as watch:``). One audit hook
    is installed per process (hooks cannot be removed); it does nothing when no watch is
    active."""

    def __init__(self, paths: Iterable[os.PathLike]):
        self.paths = [os.path.abspath(os.fspath(p)) for p in paths]
        self.events: List[tuple] = []

    def _saw(self, event: str, path: str, args: tuple) -> None:
        for watched in self.paths:
            if path == watched or path.startswith(watched.rstrip("/") + "/"):
                self.events.append((event, path))

    def __enter__(self) -> "AccessWatch":
        global _HOOKED
        if not _HOOKED:
            sys.addaudithook(_audit)
            _HOOKED = True
        _WATCHES.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _WATCHES.remove(self)
