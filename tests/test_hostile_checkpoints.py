"""The trust boundary (issue 21): a checkpoint someone else made, or a store something
broke, is never trusted.

Every test starts from a real checkpoint, edits what an attacker with write access to the
store can edit (the manifest's wire dict, its object graph, blobs, files beside them),
re-frames the manifest so its digest passes (tests/hostile.py), and asserts the contract of
docs/API.md: ``load(allow_pickle=False)`` (the session's and the notebook client's) either
returns the saved values or raises a ``CheckpointException`` (``CheckpointCorrupted`` where
the data is invalid) whose message names the checkpoint and the field or manifest part at
fault. It never crashes the process, hangs, imports a module, runs code of a class,
allocates far beyond the stored bytes, or touches a file outside the store.

Cases that could kill or hang the test process (object dtypes, FIFOs, huge claims, module
imports) run in a subprocess; a crash there is a failed test.
"""

import dataclasses
import logging
import os

import msgpack
import numpy as np
import pytest
import torch

import hostile
from engine_helpers import State, local_store, make_session
from hostile import (
    LOAD_OUTCOME,
    AccessWatch,
    Crafted,
    LocalBucket,
    S3Bucket,
    blob_path,
    deep_equal,
    digest_of,
    in_thread,
    ref,
    ref_index,
    run_python,
)
from s3_server import s3_server  # noqa: F401  (fixture)
from metaflow_extensions.implicit_checkpoint.engine.errors import (
    CheckpointCorrupted,
    CheckpointException,
)
from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore
from metaflow_extensions.implicit_checkpoint.engine.verify import verify_checkpoints
from metaflow_extensions.implicit_checkpoint.toplevel.checkpoint_client import Checkpoint

LOGGER = "metaflow_extensions.implicit_checkpoint"
LOAD_TIMEOUT = 60  # seconds: an in-process load still running after this hangs
ABSENT_DIGEST = "f" * 64  # well formed, and no blob of that name exists


# -- the checkpoint every test starts from ------------------------------------------------------


class Base:
    """A committed checkpoint of a small state, on a local store under ``tmp/outer/store``
    (deep enough that a path escaping the store lands inside ``tmp``).

    Fields: ``weights`` (a float64 numpy array, 32 bytes), ``bias`` (a float32 tensor,
    32 bytes), ``history`` (nested containers), ``scale`` (a numpy scalar), ``config`` (a
    dataclass of an imported module). ``pristine`` is a second, untouched checkpoint of
    the same state (same blobs) to warm a process up with.
    """

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.root = tmp_path / "outer" / "store"
        self.state = State()
        self.state.weights = np.arange(4.0)
        self.state.bias = torch.arange(8.0)
        self.state.history = [1, (2, 3), {"x": {4}}, [5.5, "six"]]
        self.state.scale = np.float32(2.5)
        self.state.config = hostile.TrainConfig(0.1, (1, 2))
        session = make_session(local_store(self.root), self.state, rng=False)
        self.pristine = session.save(name="pristine").key
        self.key = session.save().key
        self.bucket = LocalBucket(self.root)
        self.values = {
            name: getattr(self.state, name) for name in ("weights", "bias", "history", "scale", "config")
        }

    def crafted(self) -> Crafted:
        return Crafted.open(self.bucket, self.key)


@pytest.fixture
def base(tmp_path):
    return Base(tmp_path)


def session_load(root, key, **kwargs):
    """Load ``key`` with a new session of another task (so its start has nothing to
    resume): the values set on its target."""
    loaded = State()
    make_session(local_store(root), loaded, task_id="reader", rng=False).load(key, allow_pickle=False, **kwargs)
    return dict(vars(loaded))


def client_load(root, key, **kwargs):
    return Checkpoint(datastore="local", root=str(root)).load(key, allow_pickle=False, **kwargs)


LOADERS = {"session": session_load, "client": client_load}


def outcomes(root, key):
    """{loader: ("ok", values) or ("raised", exception)}; a hang fails the test."""
    found = {}
    for via, load in LOADERS.items():
        status, value = in_thread(lambda: load(root, key), LOAD_TIMEOUT)
        assert status != "hung", "%s load of %s still running after %d s" % (via, key, LOAD_TIMEOUT)
        found[via] = (status, value)
    return found


def assert_names(message: str, key: str, field, parts) -> None:
    """The message names the checkpoint, the field (when the fault is in one) and,
    through one of ``parts``, what is wrong."""
    low = message.lower()
    assert key in message, "the error does not name the checkpoint %s: %s" % (key, message)
    if field is not None:  # API.md, Errors: CheckpointCorrupted "names the field and key"
        assert field in message, "the error does not name the field %r: %s" % (field, message)
    assert any(p.lower() in low for p in parts), "the error names none of %s: %s" % (parts, message)


def assert_refused(root, key, field, parts, kind=CheckpointCorrupted):
    """Both loaders raise ``kind`` naming ``field`` and the part; returns the messages."""
    messages = []
    for via, (status, value) in outcomes(root, key).items():
        assert status == "raised", "%s load of a crafted checkpoint returned %r" % (via, value)
        assert isinstance(value, kind), "%s load raised %s, not a %s: %s" % (
            via, type(value).__name__, kind.__name__, value)
        assert_names(str(value), key, field, parts)
        messages.append(str(value))
    return messages


# -- 1. allow_pickle=False is memory-safe -------------------------------------------------------

#: The two ways a user loads, as the subprocess scripts below define them.
LOADER_SOURCE = """def session_load(key):
    loaded = State()
    make_session(local_store(ROOT), loaded, task_id="reader", rng=False).load(key, allow_pickle=False)
    return dict(vars(loaded))

def client_load(key):
    return Checkpoint(datastore="local", root=ROOT).load(key, allow_pickle=False)
"""

SUBPROCESS_LOAD = LOAD_OUTCOME + """
import sys, time
import numpy, torch
import hostile  # the config's module: a safe load uses only classes already imported
from engine_helpers import State, local_store, make_session
from metaflow_extensions.implicit_checkpoint.toplevel.checkpoint_client import Checkpoint
ROOT, KEY, PRISTINE = %(root)r, %(key)r, %(pristine)r

%(loaders)s
# Warm up: every module a normal load needs is imported before the crafted load.
session_load(PRISTINE)
client_load(PRISTINE)
"""


def subprocess_script(base, body: str) -> str:
    return SUBPROCESS_LOAD % {"root": str(base.root), "key": base.key, "pristine": base.pristine, "loaders": LOADER_SOURCE} + body


def assert_subprocess_refused(base, result, field, parts):
    assert not result.timed_out and result.returncode == 0 and result.result is not None, result.describe()
    for via, outcome in result.result["loads"].items():
        assert outcome["outcome"] == "raised", "%s load returned %s" % (via, outcome.get("value"))
        assert "CheckpointCorrupted" in outcome["mro"], "%s load raised %s: %s" % (
            via, outcome["type"], outcome["message"])
        assert_names(outcome["message"], base.key, field, parts)


LOAD_BOTH = """
report({"loads": {"session": outcome_of(lambda: session_load(KEY)),
                  "client": outcome_of(lambda: client_load(KEY))}})
"""


def _object_array(crafted, doc):
    doc["nodes"][crafted.root("weights", doc)][2][0] = "|O"  # 4 "pointers": 0.0, 1.0, 2.0, 3.0
    return "weights"


def _structured_with_object(crafted, doc):
    view = doc["nodes"][crafted.root("weights", doc)][2]
    view[0], view[1], view[2] = "i8,O", [2], [16]  # 2 records of 16 bytes: the same 32 bytes
    return "weights"


def _object_scalar(crafted, doc):
    node = doc["nodes"][crafted.root("scale", doc)]
    node[1], node[2] = "|O", b"\x41" * 8
    return "scale"


def _structured_object_scalar(crafted, doc):
    node = doc["nodes"][crafted.root("scale", doc)]
    node[1], node[2] = "i8,O", b"\x41" * 16
    return "scale"


@pytest.mark.flow
@pytest.mark.parametrize(
    "craft",
    [_object_array, _structured_with_object, _object_scalar, _structured_object_scalar],
    ids=["object-array", "structured-with-object-field", "object-npscalar", "structured-object-npscalar"],
)
def test_object_dtypes_over_stored_bytes_are_refused_without_a_crash(base, craft):
    crafted = base.crafted()
    doc = crafted.graph()
    field = craft(crafted, doc)
    crafted.set_graph(doc)
    crafted.commit()
    result = run_python(subprocess_script(base, LOAD_BOTH), timeout=120)
    assert_subprocess_refused(base, result, field, ("dtype", "object", "|O"))


@pytest.mark.parametrize("dtype", ["float8_x", "complex32x", "Tensor", "nn", "", "int"])
def test_an_unknown_torch_dtype_is_corrupted_data_not_a_value_error(base, dtype):
    crafted = base.crafted()
    doc = crafted.graph()
    doc["nodes"][crafted.root("bias", doc)][2][0] = dtype
    crafted.set_graph(doc)
    crafted.commit()
    assert_refused(base.root, base.key, "bias", ("dtype",))


@pytest.mark.parametrize("dtype, data", [("<U1", b"\xff\xff\xff\xff"), (">U2", b"\x00\x00\x00A\x00\x11\x00\x00")])
def test_a_text_scalar_beyond_unicode_is_corrupted_data_not_a_system_error(base, dtype, data):
    # numpy raises SystemError making a str of a code point above U+10FFFF (the fuzzer
    # found it, seed 3204929168).
    crafted = base.crafted()
    doc = crafted.graph()
    node = doc["nodes"][crafted.root("scale", doc)]
    node[1], node[2] = dtype, data
    crafted.set_graph(doc)
    crafted.commit()
    assert_refused(base.root, base.key, "scale", ("U+10FFFF",))


# -- 2. allow_pickle=False imports nothing and runs no code of a class ----------------------------

IMPORT_PROBE = LOAD_OUTCOME + """
import sys
import numpy, torch
import hostile  # the config's module: a safe load uses only classes already imported
from engine_helpers import State, local_store, make_session
from metaflow_extensions.implicit_checkpoint.toplevel.checkpoint_client import Checkpoint
ROOT, KEY, PRISTINE = %(root)r, %(key)r, %(pristine)r
TARGETS = %(targets)r

%(loaders)s
session_load(PRISTINE)
client_load(PRISTINE)
before = set(sys.modules)
loads = {"session": outcome_of(lambda: session_load(KEY)), "client": outcome_of(lambda: client_load(KEY))}
after = set(sys.modules)
report({"loads": loads, "targets_before": sorted(t for t in TARGETS if t in before),
        "new_modules": sorted(after - before)})
"""

LAZY_MODULES = [
    (("torch.onnx", "X"), ["torch.onnx"]),
    (("torch", "onnx.X"), ["torch.onnx"]),
    (("numpy.testing", "X"), ["numpy.testing"]),
    (("numpy", "testing.X"), ["numpy.testing"]),
    (("numpy.f2py", "X"), ["numpy.f2py"]),
    (("numpy", "f2py.X"), ["numpy.f2py"]),
    (("torch._dynamo", "X"), ["torch._dynamo"]),
    (("torch", "_dynamo.X"), ["torch._dynamo"]),
]


def assert_imports_nothing(base, result, targets, field):
    assert not result.timed_out and result.returncode == 0 and result.result is not None, result.describe()
    report = result.result
    assert report["targets_before"] == [], "precondition: %s already imported" % report["targets_before"]
    imported = [m for m in report["new_modules"] if any(m == t or m.startswith(t + ".") for t in targets)]
    assert not imported, "a load with allow_pickle=False imported %s" % imported
    foreign = [m for m in report["new_modules"] if m.split(".")[0] in ("torch", "numpy")]
    assert not foreign, "a load with allow_pickle=False imported %s" % foreign
    for via, outcome in report["loads"].items():
        assert outcome["outcome"] == "raised", "%s load returned %s" % (via, outcome.get("value"))
        assert "CheckpointException" in outcome["mro"], "%s load raised %s: %s" % (
            via, outcome["type"], outcome["message"])
        assert_names(outcome["message"], base.key, field, ("class", "dtype", "import", "module"))


@pytest.mark.flow
@pytest.mark.parametrize(
    "class_ref, targets", LAZY_MODULES, ids=[".".join(c) for c, _ in LAZY_MODULES]
)
def test_a_class_reference_never_imports_a_module(base, class_ref, targets):
    crafted = base.crafted()
    doc = crafted.graph()
    node = doc["nodes"][crafted.root("config", doc)]
    assert node[0] == "dataclass"
    doc["classes"][node[1]] = [class_ref[0], class_ref[1], None]
    crafted.set_graph(doc)
    crafted.commit()
    script = IMPORT_PROBE % {"root": str(base.root), "key": base.key, "pristine": base.pristine, "targets": targets, "loaders": LOADER_SOURCE}
    assert_imports_nothing(base, run_python(script), targets, "config")


@pytest.mark.flow
@pytest.mark.parametrize("dtype, targets", [("onnx", ["torch.onnx"]), ("_dynamo", ["torch._dynamo"])])
def test_a_tensor_dtype_never_imports_a_module(base, dtype, targets):
    crafted = base.crafted()
    doc = crafted.graph()
    doc["nodes"][crafted.root("bias", doc)][2][0] = dtype  # getattr(torch, dtype) imports it
    crafted.set_graph(doc)
    crafted.commit()
    script = IMPORT_PROBE % {"root": str(base.root), "key": base.key, "pristine": base.pristine, "targets": targets, "loaders": LOADER_SOURCE}
    assert_imports_nothing(base, run_python(script), targets, "bias")


SETTER_RAN = []  # paths the setter of Guarded wrote


@dataclasses.dataclass
class Guarded:
    """A user dataclass whose property setter has a side effect (writes a file)."""

    value: int = 0

    @property
    def target(self):
        return None

    @target.setter
    def target(self, path):
        SETTER_RAN.append(path)
        with open(path, "w") as f:
            f.write("the setter ran during a safe load")


@pytest.mark.parametrize("attribute", ["target", "__class__", "__dict__"])
def test_a_dataclass_node_never_runs_a_setter_and_refuses_a_non_field_name(tmp_path, attribute):
    root = tmp_path / "store"
    state = State()
    state.guard = Guarded(7)
    key = make_session(local_store(root), state, rng=False).save().key
    crafted = Crafted.open(LocalBucket(root), key)
    doc = crafted.graph()
    node = doc["nodes"][crafted.root("guard", doc)]
    assert node[0] == "dataclass" and node[2] == [["value", 7]]
    written = tmp_path / "setter-wrote-this"
    value = {"target": str(written), "__class__": "builtins.int", "__dict__": "not a dict"}[attribute]
    node[2].append([attribute, value])
    crafted.set_graph(doc)
    crafted.commit()

    # A name the class uses, not a declared field: refused (the class may have changed
    # since the save, so this need not be corrupted data, only never set).
    messages = assert_refused(root, key, "guard", (attribute,), kind=CheckpointException)
    assert not written.exists() and SETTER_RAN == [], "a property setter ran during a safe load"
    assert all(attribute in m for m in messages)


# -- 3. digests are never path parts ------------------------------------------------------------


TRAVERSAL = "../../../x"


@pytest.mark.parametrize("where", ["blobs", "extents"])
def test_a_digest_that_escapes_the_store_is_never_opened_or_deleted(base, where, caplog):
    crafted = base.crafted()
    sentinel = os.path.normpath(os.path.join(base.root, blob_path(crafted.flow, TRAVERSAL)))
    assert not sentinel.startswith(str(base.root)), sentinel  # outside the store
    content = b"not a blob, someone's file 1234"[:32].ljust(32, b"!")
    with open(sentinel, "wb") as f:
        f.write(content)  # the size the manifest claims: only a read can tell
    crafted.storage["blobs"][TRAVERSAL] = 32
    if where == "extents":
        crafted.storage["tensors"][crafted.storage_of("bias")][3] = [[TRAVERSAL, 0, 32]]
    crafted.commit()
    key = CheckpointKey.parse(base.key)

    messages = []
    with AccessWatch([sentinel]) as watch:
        if where == "extents":
            messages += assert_refused(base.root, base.key, None, ("digest", "blob"))
        else:  # a listed blob no field uses: a load may ignore it, or refuse the manifest
            for via, (status, value) in outcomes(base.root, base.key).items():
                if status == "ok":
                    assert deep_equal(value["bias"], base.values["bias"]), via
                else:
                    assert isinstance(value, CheckpointCorrupted), "%s: %r" % (via, value)
                    messages.append(str(value))
        for repair in (False, True):
            status, value = in_thread(
                lambda: verify_checkpoints(local_store(base.root), "UnitFlow", [key], repair=repair),
                LOAD_TIMEOUT,
            )
            assert status != "hung"
            if status == "raised":
                assert isinstance(value, CheckpointException), repr(value)
                messages.append(str(value))
            else:
                (verdict,) = value.checkpoints
                assert not verdict.intact, "verify calls a crafted checkpoint intact"
                messages.append(repr(value.to_dict()))
        retry = in_thread(lambda: make_session(local_store(base.root), State(), attempt=1, rng=False), LOAD_TIMEOUT)
        assert retry[0] == "ok", "resume selection over a crafted checkpoint: %r" % (retry,)

    assert watch.events == [], "the engine touched a file outside the store: %s" % watch.events
    with open(sentinel, "rb") as f:
        assert f.read() == content, "the file outside the store was changed"
    for text in messages + [caplog.text]:
        assert sentinel not in text, "an error shows the full path outside the store: %s" % text


@pytest.mark.flow
def test_a_digest_naming_a_fifo_fails_promptly(base):
    crafted = base.crafted()
    fifo_digest = "ab" + "c" * 62
    fifo = crafted.blob_file(fifo_digest)
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    crafted.storage["blobs"][fifo_digest] = 32
    crafted.storage["tensors"][crafted.storage_of("bias")][3] = [[fifo_digest, 0, 32]]
    crafted.commit()
    script = subprocess_script(base, """
from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
from metaflow_extensions.implicit_checkpoint.engine.verify import verify_checkpoints
started = time.time()
loads = {"session": outcome_of(lambda: session_load(KEY)), "client": outcome_of(lambda: client_load(KEY))}
def verify(repair):
    report_ = verify_checkpoints(local_store(ROOT), "UnitFlow", [CheckpointKey.parse(KEY)], repair=repair)
    return [v.intact for v in report_.checkpoints]
verified = {"verify": outcome_of(lambda: verify(False)), "repair": outcome_of(lambda: verify(True))}
report({"loads": loads, "verified": verified, "seconds": time.time() - started})
""")
    result = run_python(script, timeout=20 + 15)  # 20 s for the crafted calls, the rest to start
    assert not result.timed_out, "a load of a blob that is a FIFO hangs:\n" + result.describe()
    assert_subprocess_refused(base, result, None, ("blob", "regular", "fifo", "pipe", "not a file"))
    for what, outcome in result.result["verified"].items():
        if outcome["outcome"] == "raised":
            assert "CheckpointException" in outcome["mro"], "%s raised %s" % (what, outcome["type"])
        else:
            assert outcome["value"] == "[False]", "%s calls the checkpoint intact" % what
    assert result.result["seconds"] < 20


def test_a_manifest_flow_field_that_escapes_the_store_is_refused(base):
    crafted = base.crafted()
    # Where "../../evil" would lead: a full copy of the checkpoint's blobs there, so a
    # load that followed the manifest's flow would succeed by reading outside the store.
    evil = os.path.normpath(os.path.join(base.root, "../../evil"))
    assert not evil.startswith(str(base.root))
    for digest in crafted.storage["blobs"]:
        target = os.path.join(base.root, blob_path("../../evil", digest))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(crafted.read_blob(digest))
    crafted.wire["flow"] = "../../evil"
    crafted.commit()
    with AccessWatch([evil]) as watch:
        assert_refused(base.root, base.key, None, ("flow",))
    assert watch.events == [], "the load read outside the store: %s" % watch.events[:3]


# -- 5. crafted shapes, strides, sizes, graphs ----------------------------------------------------

BOUNDS = ("shape", "stride", "offset", "bound", "outside", "storage", "elements", "bytes", "view")
GRAPH = ("graph", "node")
CYCLE = ("cycle", "itself", "each other", "refer")
DEPTH = ("deep", "depth", "nest", "level")


def _view(crafted, doc, field):
    return doc["nodes"][crafted.root(field, doc)][2]


def huge_tensor(c, doc):
    v = _view(c, doc, "bias")
    v[1], v[2] = [10**12], [1]
    return "bias", BOUNDS


def huge_array(c, doc):
    v = _view(c, doc, "weights")
    v[1], v[2] = [10**12], [8]
    return "weights", BOUNDS


def huge_overflowing_tensor(c, doc):
    v = _view(c, doc, "bias")
    v[1], v[2] = [2**62, 2**62], [2**62, 1]  # products overflow 64 bits
    return "bias", BOUNDS


def negative_stride_tensor(c, doc):
    v = _view(c, doc, "bias")
    v[2], v[3] = [-1], 7
    return "bias", BOUNDS


def negative_offset_tensor(c, doc):
    _view(c, doc, "bias")[3] = -1
    return "bias", BOUNDS


def negative_stride_array(c, doc):
    _view(c, doc, "weights")[2] = [-8]  # from byte 0 backwards: before the storage
    return "weights", BOUNDS


def negative_offset_array(c, doc):
    _view(c, doc, "weights")[3] = -8
    return "weights", BOUNDS


def negative_shape(c, doc):
    _view(c, doc, "bias")[1] = [-8]
    return "bias", BOUNDS


def deep_chain(c, doc):
    """history[3] -> a chain of 100 000 lists, each holding the next."""
    count = 100_000
    first = len(doc["nodes"])
    doc["nodes"].extend(["list", [ref(first + i + 1)]] for i in range(count - 1))
    doc["nodes"].append(["list", []])
    doc["nodes"][c.root("history", doc)][1][3] = ref(first)
    return "history", DEPTH


def tuple_cycle(c, doc):
    root = c.root("history", doc)
    doc["nodes"][root] = ["tuple", [1, ref(root)]]
    return "history", CYCLE


def tuple_list_cycle(c, doc):
    root = c.root("history", doc)
    inner = len(doc["nodes"])
    doc["nodes"].append(["list", [ref(root)]])
    doc["nodes"][root] = ["tuple", [ref(inner)]]  # t = ([t],): a save refuses to make it
    return "history", CYCLE


def set_cycle(c, doc):
    root = c.root("history", doc)
    doc["nodes"][root] = ["set", [ref(root)]]
    return "history", CYCLE + ("hash", "set")


def frozenset_cycle(c, doc):
    root = c.root("history", doc)
    doc["nodes"][root] = ["frozenset", [ref(root)]]
    return "history", CYCLE


def node_index_out_of_range(c, doc):
    doc["nodes"][c.root("history", doc)][1][0] = ref(10**6)
    return "history", ("index", "range", "node")


def root_out_of_range(c, doc):
    doc["fields"]["history"] = ref(2**32 - 1)
    return "history", ("index", "range", "node")


def short_ref(c, doc):
    doc["nodes"][c.root("history", doc)][1][0] = ref(0, data=b"\x01\x00\x00")  # 3 bytes
    return "history", ("reference", "ref", "extension", "bytes")


def unknown_ext_code(c, doc):
    doc["nodes"][c.root("history", doc)][1][0] = msgpack.ExtType(7, b"\x00\x00\x00\x00")
    return "history", ("reference", "ref", "extension", "ext", "type")


def class_index_out_of_range(c, doc):
    doc["nodes"][c.root("config", doc)][1] = 99
    return "config", ("class",)


def unhashable_dict_key(c, doc):
    node = doc["nodes"][c.root("history", doc)]
    inner = ref_index(node[1][2])  # {"x": {4}}: its key becomes a list
    doc["nodes"][inner][1][0][0] = ref(c.root("history", doc))
    return "history", ("key", "hash")


def huge_int_text(c, doc):
    doc["nodes"][c.root("history", doc)][1][0] = ref(len(doc["nodes"]))
    doc["nodes"].append(["int", "9" * 100_000])  # int() refuses > 4300 digits: ValueError
    return "history", ("int", "digits", "number")


def grad_on_integers(c, doc):
    node = doc["nodes"][c.root("bias", doc)]
    node[2][0], node[2][1] = "int32", [8]
    node[4] = True  # requires_grad on an integer tensor: torch's RuntimeError
    return "bias", ("grad", "dtype")


GRAPH_CASES = [
    huge_tensor, huge_array, huge_overflowing_tensor, negative_stride_tensor, negative_offset_tensor,
    negative_stride_array, negative_offset_array, negative_shape, deep_chain, tuple_cycle,
    tuple_list_cycle, set_cycle, frozenset_cycle, node_index_out_of_range, root_out_of_range,
    short_ref, unknown_ext_code, class_index_out_of_range, unhashable_dict_key, huge_int_text,
    grad_on_integers,
]


@pytest.mark.parametrize("craft", GRAPH_CASES, ids=[f.__name__ for f in GRAPH_CASES])
def test_a_crafted_graph_is_corrupted_data_naming_the_field(base, craft):
    crafted = base.crafted()
    doc = crafted.graph()
    field, parts = craft(crafted, doc)
    crafted.set_graph(doc)
    crafted.commit()
    assert_refused(base.root, base.key, field, parts)


def test_a_graph_node_nested_100k_deep_in_msgpack_is_corrupted_data(base):
    crafted = base.crafted()
    doc = crafted.graph()
    root = crafted.root("history", doc)
    # ["list", [[[[... 100 000 levels ...]]]]]: no packer makes it, msgpack's unpacker overflows
    deep = b"\x92\xa4list\x91" + b"\x91" * 100_000 + b"\x90"
    crafted.set_graph(doc, raw_nodes={root: deep})
    crafted.commit()
    assert_refused(base.root, base.key, "history", DEPTH + GRAPH)


def test_a_graph_document_nested_100k_deep_is_corrupted_data(base):
    crafted = base.crafted()
    doc = crafted.graph()
    doc["fields"]["history"] = "PLACEHOLDER_xyz"
    document = hostile.encode_graph(doc).replace(b"\xafPLACEHOLDER_xyz", b"\x91" * 100_000 + b"\xc0")
    crafted.set_graph_bytes(document)
    crafted.commit()
    assert_refused(base.root, base.key, None, DEPTH + GRAPH)


def test_graph_bytes_that_are_not_msgpack_are_corrupted_data(base):
    crafted = base.crafted()
    crafted.set_graph_bytes(b"\xc1" + os.urandom(64))
    crafted.commit()
    assert_refused(base.root, base.key, None, GRAPH)


def test_a_storage_claiming_a_terabyte_over_a_32_byte_blob_is_corrupted_data(base):
    crafted = base.crafted()
    crafted.storage["tensors"][crafted.storage_of("bias")][1] = 10**12  # extents still hold 32
    crafted.commit()
    assert_refused(base.root, base.key, None, ("bytes", "storage", "extent", "size"))


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "unlisted"])
def test_an_extent_whose_blob_is_missing_is_corrupted_data_naming_the_field(base, listed):
    crafted = base.crafted()
    if listed:
        crafted.storage["blobs"][ABSENT_DIGEST] = 32
    crafted.storage["tensors"][crafted.storage_of("bias")][3] = [[ABSENT_DIGEST, 0, 32]]
    crafted.commit()
    if listed:
        assert_refused(base.root, base.key, "bias", ("missing", "not found", "absent", ABSENT_DIGEST))
    else:
        assert_refused(base.root, base.key, None, ("blob", ABSENT_DIGEST))


MEMORY_PROBE = """
import resource
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
before = rss_mb()
loads = {"session": outcome_of(lambda: session_load(KEY)), "client": outcome_of(lambda: client_load(KEY))}
report({"loads": loads, "growth_mb": rss_mb() - before})
"""


def _claims_2gb_graph(crafted):
    digest = crafted.write_blob(os.urandom(32))
    crafted.storage["blobs"][digest] = 2 * 10**9  # the claim; the blob holds 32 bytes
    crafted.storage["graph"] = [[digest, 0, 2 * 10**9]]
    return None, ("graph", "blob", "bytes", "size")


def _claims_1tb_storage(crafted):
    digest = crafted.write_blob(os.urandom(32))
    crafted.storage["blobs"][digest] = 10**12
    spec = crafted.storage["tensors"][crafted.storage_of("bias")]
    spec[1], spec[3] = 10**12, [[digest, 0, 10**12]]
    return "bias", ("blob", "bytes", "size")


@pytest.mark.flow
@pytest.mark.parametrize("craft", [_claims_2gb_graph, _claims_1tb_storage], ids=["graph-2GB", "storage-1TB"])
def test_claimed_sizes_far_beyond_the_blob_allocate_nothing(base, craft):
    crafted = base.crafted()
    field, parts = craft(crafted)
    crafted.commit()
    result = run_python(subprocess_script(base, MEMORY_PROBE), timeout=180)
    assert_subprocess_refused(base, result, field, parts)
    assert result.result["growth_mb"] < 200, "peak RSS grew %.0f MB reading a 32-byte blob" % result.result["growth_mb"]


# -- 8. detected damage is never reused, and never stops a resume ---------------------------------


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store_kind(request, tmp_path):
    """(make_store, bucket): fresh stores (each a process's view) on one root, and raw
    access to its bytes; local, then on the S3 test server."""
    if request.param == "local":
        root = tmp_path / "store"
        return (lambda: local_store(root)), LocalBucket(root)
    server = request.getfixturevalue("s3_server")
    root = server.new_root()
    return (lambda: CheckpointStore(server.backend(root))), S3Bucket(server.client(), root)


def test_an_altered_blob_of_the_resume_point_falls_back_and_is_rewritten_by_the_next_save(store_kind, caplog):
    make_store, bucket = store_kind
    first_weights = np.arange(100_000.0)
    state = State()
    state.weights = first_weights.copy()
    state.step = 1
    session = make_session(make_store(), state, rng=False)
    v1 = session.save()
    state.weights = first_weights + 1
    state.step = 2
    v2 = session.save()
    new_blobs = set(Crafted.open(bucket, v2.key).storage["blobs"]) - set(Crafted.open(bucket, v1.key).storage["blobs"])
    sized = {d: n for d, n in Crafted.open(bucket, v2.key).storage["blobs"].items() if d in new_blobs}
    (digest,) = [d for d, n in sized.items() if n == 100_000 * 8]
    path = blob_path("UnitFlow", digest)
    data = bytearray(bucket.read(path))
    data[1000:1008] = bytes(b ^ 0xFF for b in data[1000:1008])  # same size, other bytes
    bucket.write(path, bytes(data))

    caplog.set_level(logging.WARNING, logger=LOGGER)
    resumed = State()
    retry = make_session(make_store(), resumed, attempt=1, rng=False)
    status, artifact = in_thread(retry.load, LOAD_TIMEOUT)
    assert status == "ok", "the retry's load raised instead of falling back: %s: %s" % (
        type(artifact).__name__, artifact)
    assert artifact.key == v1.key, "resumed from %s, not the newest intact checkpoint" % artifact.key
    assert np.array_equal(resumed.weights, first_weights) and resumed.step == 1
    assert v2.key in caplog.text or digest in caplog.text, "no warning names the damaged checkpoint"

    # The damage is known now: a save of the same content writes the blob again.
    resumed.weights = first_weights + 1
    resumed.step = 2
    v3 = retry.save()
    assert digest_of(bucket.read(path)) == digest, "the damaged blob was reused, not rewritten"
    loaded = State()
    make_session(make_store(), loaded, task_id="reader", rng=False).load(v3.key)
    assert np.array_equal(loaded.weights, first_weights + 1)


def test_repair_never_deletes_an_intact_blob_that_a_hostile_manifest_misdescribes(base):
    """Another checkpoint's manifest claims a wrong size for a blob both use: the blob
    hashes to its name, so it is not damaged and `verify --repair` must keep it."""
    crafted = base.crafted()
    (digest,) = crafted.field_blobs("bias")
    crafted.storage["blobs"][digest] += 1
    crafted.commit()
    blob = crafted.blob_file(digest)
    keys = [CheckpointKey.parse(base.key)]
    status, value = in_thread(lambda: verify_checkpoints(local_store(base.root), "UnitFlow", keys, repair=True), LOAD_TIMEOUT)
    assert status == "ok" or isinstance(value, CheckpointException), repr(value)
    assert blob.exists(), "verify --repair deleted an intact blob a crafted manifest misdescribed"
    assert deep_equal(session_load(base.root, base.pristine)["bias"], base.values["bias"])


# -- 10. fidelity leftovers -------------------------------------------------------------------------


def save_and_load(tmp_path, fields, into=None, **load_kwargs):
    saved = State()
    for name, value in fields.items():
        setattr(saved, name, value)
    artifact = make_session(local_store(tmp_path), saved, rng=False).save()
    loaded = into if into is not None else State()
    make_session(local_store(tmp_path), loaded, attempt=1, rng=False).load(artifact, **load_kwargs)
    return loaded


def test_a_conjugate_view_keeps_its_conj_bit_and_values(tmp_path):
    x = torch.randn(5, dtype=torch.complex64)
    saved = x.conj()
    assert saved.is_conj()
    for allow_pickle in (True, False):
        loaded = save_and_load(tmp_path / str(allow_pickle), {"z": saved}, allow_pickle=allow_pickle).z
        assert loaded.is_conj(), "the conj bit was lost"
        assert torch.equal(loaded.resolve_conj(), saved.resolve_conj())


def test_an_uninitialized_lazy_linear_round_trips_or_fails_clearly_at_save(tmp_path):
    lazy = torch.nn.LazyLinear(3)
    state = State()
    state.lazy = lazy
    try:
        artifact = make_session(local_store(tmp_path), state, rng=False).save()
    except CheckpointException as ex:
        assert "lazy" in str(ex)
        return
    for live in (False, True):
        loaded = State()
        if live:
            loaded.lazy = torch.nn.LazyLinear(3)
        make_session(local_store(tmp_path), loaded, attempt=1, rng=False).load(artifact)
        assert isinstance(loaded.lazy, torch.nn.LazyLinear)
        assert isinstance(loaded.lazy.weight, torch.nn.parameter.UninitializedParameter)
        assert loaded.lazy(torch.ones(2, 4)).shape == (2, 3)  # it still initializes


def test_a_list_nested_600_deep_round_trips(tmp_path):
    nested = []
    inner = nested
    for i in range(600):
        inner.append(i)
        inner.append([])
        inner = inner[-1]
    loaded = save_and_load(tmp_path, {"deep": nested}).deep
    assert loaded == nested


# -- 11. a safe load of a training state without live objects ---------------------------------------


@pytest.mark.flow
def test_a_notebook_loads_a_training_state_safely_without_live_objects(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    for _ in range(3):
        model(torch.randn(8, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
    state = State()
    state.model, state.optimizer, state.scheduler = model, optimizer, scheduler
    state.epoch = 3
    state.config = hostile.TrainConfig(0.01, (4, 3), "notebook")
    state.odd = hostile.PlainThing(5)  # only pickling stores it
    root = tmp_path / "store"
    key = make_session(local_store(root), state, rng=False).save().key
    reference = tmp_path / "reference.pt"
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        reference,
    )
    result = run_python(
        LOAD_OUTCOME
        + """
        import torch
        import hostile  # the config's module, imported as a notebook would
        from hostile import deep_equal
        from metaflow_extensions.implicit_checkpoint.toplevel.checkpoint_client import Checkpoint
        reference = torch.load(%(reference)r, weights_only=True)
        cp = Checkpoint(datastore="local", root=%(root)r)
        out = {}
        try:
            values = cp.load(%(key)r, fields=["model", "optimizer", "scheduler", "epoch", "config"],
                             allow_pickle=False)
            out["types"] = {k: type(v).__name__ for k, v in values.items()}
            out["dicts"] = {k: isinstance(values[k], dict) for k in ("model", "optimizer", "scheduler")}
            out["equal"] = {k: deep_equal(dict(values[k]), dict(reference[k])) for k in reference}
            out["epoch"] = values["epoch"]
            out["config"] = values["config"] == hostile.TrainConfig(0.01, (4, 3), "notebook")
        except Exception as ex:
            out["safe_error"] = "%%s: %%s" %% (type(ex).__name__, ex)
        out["all"] = outcome_of(lambda: cp.load(%(key)r, allow_pickle=False))
        report(out)
        """.replace("\n        ", "\n")
        % {"reference": str(reference), "root": str(root), "key": key}
    )
    assert result.returncode == 0 and result.result is not None, result.describe()
    out = result.result
    assert "safe_error" not in out, out.get("safe_error")
    assert out["dicts"] == {"model": True, "optimizer": True, "scheduler": True}, out["types"]
    assert out["equal"] == {"model": True, "optimizer": True, "scheduler": True}
    assert out["epoch"] == 3 and out["config"] is True
    refused = out["all"]
    assert refused["outcome"] == "raised" and "CheckpointException" in refused["mro"], refused
    assert "odd" in refused["message"] and "allow_pickle" in refused["message"], refused["message"]
    for name in ("self.model", "'model'", "self.optimizer", "self.scheduler"):
        assert name not in refused["message"], "the refusal names %s: %s" % (name, refused["message"])
