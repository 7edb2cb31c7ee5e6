"""Fuzzing the trust boundary (issue 21): real checkpoints, mutated as someone with write
access to the store could, never make a public call do anything but succeed or raise a
CheckpointException.

Two real checkpoints are saved first: a training state with a task folder (Linear + Adam +
StepLR, a numpy array, a dataclass, nested containers, odd scalars, the RNG state; its
graph lives in a blob) and a small state whose graph is inline in the manifest. Each
example (hypothesis draws it) restores the pristine store, applies one to four mutations
(manifest keys and types, digests, sizes, extents, storage specs, dtypes, shapes,
strides, offsets, node kinds, references, class references, nesting depth, cycles, the
task folder's file specs, blob bytes, the manifest's framing; tests/hostile.py re-frames
the manifest so its digest passes), then calls inspect, list, resume selection, the
session's load(allow_pickle=False) with a task folder, the notebook client's
load(allow_pickle=False), and verify (with or without --repair). Every call must return or
raise a CheckpointException; and the example fails on:

- another exception type (the type, the call and the mutations are reported);
- a crash (the loop runs in a subprocess: its death fails the test, naming the example);
- a hang (a per-example alarm);
- an import (an audit hook records modules imported during the calls);
- a file opened outside the store, the task folder (and its staging beside it) for
  writing, any access to the sentinel files beside the store, a changed sentinel, a
  file left outside, code run by a crafted pickle, a folder changed by a failed load;
- peak memory growing more than 500 MB in one example (the blobs hold a few KB);
- a no-op mutation (re-framing, re-encoding the graph inline or in a blob) whose load
  fails or returns other values.

All failures are collected, grouped and printed at the end (no shrinking: each example is
already a short list of mutations, printed in full). `pytest -s` shows the number of
examples and seconds. Run it longer by hand:

    FUZZ_EXAMPLES=20000 USERNAME=tester .venv/bin/python -m pytest -s -q tests/test_fuzz_trust.py

(FUZZ_SEED=<int> replays a run: the seed is printed.)
"""

import copy
import json
import os
import pickle
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import pytest

pytestmark = [pytest.mark.flow, pytest.mark.slow]

pytest.importorskip("hypothesis", reason="the fuzz test needs hypothesis (the [test] extra)")

HERE = Path(__file__).resolve().parent
DEFAULT_EXAMPLES = 250  # about 30 s on the 2-core test VM, start-up included
PER_EXAMPLE_SECONDS = 20


def test_fuzzed_checkpoints_only_ever_load_or_raise_a_checkpoint_exception(tmp_path):
    examples = int(os.environ.get("FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(2**32)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAFLOW_", "AWS_"))}
    env["USERNAME"] = env.get("USERNAME") or "tester"
    env["PYTHONPATH"] = os.pathsep.join(([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []) + [str(HERE)])
    env["PYTHONFAULTHANDLER"] = "1"
    started = time.time()
    limit = 120 + examples * PER_EXAMPLE_SECONDS
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__)), str(tmp_path / "work"), str(examples), str(seed)],
            env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, timeout=limit,
        )
    except subprocess.TimeoutExpired:
        current = _read(tmp_path / "work" / "current.json")
        pytest.fail("the fuzz loop hung past %d s (seed %d); the example running: %s" % (limit, seed, current))
    seconds = time.time() - started
    print("\n".join(line for line in proc.stdout.splitlines() if not line.startswith("SUMMARY "))[-20000:])
    summary = None
    for line in proc.stdout.splitlines():
        if line.startswith("SUMMARY "):
            summary = json.loads(line[len("SUMMARY ") :])
    if proc.returncode < 0 or summary is None:
        current = _read(tmp_path / "work" / "current.json")
        pytest.fail(
            "the fuzz process died (status %s, seed %d) during example:\n%s\n--- stderr ---\n%s"
            % (proc.returncode, seed, current, proc.stderr[-8000:])
        )
    print("fuzz: %d examples in %.1f s (seed %d)" % (summary["examples"], seconds, seed))
    assert summary["examples"] > 0
    assert summary["failures"] == 0, "%d of %d fuzzed examples broke the contract (seed %d):\n%s" % (
        summary["failures"], summary["examples"], seed, summary["report"])


def _read(path):
    try:
        return Path(path).read_text()
    except OSError:
        return "(unknown)"


# ================================================================================================
# The fuzz loop (runs in its own process: `python test_fuzz_trust.py WORK EXAMPLES SEED`)
# ================================================================================================


class Hang(BaseException):
    """Raised by the per-example alarm (a BaseException: no `except Exception` hides it)."""


class Audit:
    """Modules imported and files touched while armed (one audit hook for the process).

    Paths are resolved as the call resolves them: relative to its ``dir_fd`` (read back
    from /proc/self/fd) or to the working directory; a path given as a file descriptor is
    its file. ``open`` events carry no ``dir_fd``: a relative path there is skipped (the
    end-of-example checks catch a file made in the working directory)."""

    #: event -> (indices of the path arguments, index of the dir_fd of each, or None)
    MUTATING = {
        "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
        "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),),
        "os.symlink": ((1, 2),), "os.link": ((1, 3),), "os.rename": ((0, 2), (1, 3)),
        "os.truncate": ((0, None),), "shutil.rmtree": ((0, 1),), "shutil.move": ((0, None), (1, None)),
        "shutil.copyfile": ((1, None),),
    }

    def __init__(self, allowed, watched):
        self.allowed = [str(p).rstrip("/") + "/" for p in allowed]
        self.watched = [str(p).rstrip("/") + "/" for p in watched]
        self.armed = False
        self.imports = []
        self.touched = []
        sys.addaudithook(self._hook)

    def _inside(self, path, roots):
        return any(path + "/" == r or path.startswith(r) for r in roots)

    @staticmethod
    def _resolve(raw, dir_fd, relative_ok=True):
        try:
            if isinstance(raw, int):
                return os.readlink("/proc/self/fd/%d" % raw)
            path = os.fsdecode(raw)
            if os.path.isabs(path):
                return os.path.normpath(path)
            if isinstance(dir_fd, int):
                return os.path.normpath(os.path.join(os.readlink("/proc/self/fd/%d" % dir_fd), path))
            return os.path.abspath(path) if relative_ok else None
        except Exception:  # noqa: BLE001 - never fail inside an audit hook
            return None

    def _hook(self, event, args):
        if not self.armed:
            return
        if event == "import":
            if args[0] not in sys.modules:
                self.imports.append(args[0])
            return
        if event == "open":
            raw, mode, flags = (tuple(args) + (None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)))
            if isinstance(raw, int):
                return  # an fd already open (os.fdopen): its open was seen
            self._check(event, self._resolve(raw, None, relative_ok=False), writing)
            return
        for path_at, fd_at in self.MUTATING.get(event, ()):
            if path_at < len(args):
                dir_fd = args[fd_at] if fd_at is not None and fd_at < len(args) else None
                self._check(event, self._resolve(args[path_at], dir_fd), True)

    def _check(self, event, path, writing):
        if path is None:
            return
        if self._inside(path, self.watched) or (writing and not self._inside(path, self.allowed)):
            self.touched.append((event, path))


def fuzz_main(work, examples, seed):
    import numpy as np
    import torch
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    import hostile
    from engine_helpers import State, local_store
    from metaflow_extensions.implicit_checkpoint.engine.errors import CheckpointException
    from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
    from metaflow_extensions.implicit_checkpoint.engine.session import (
        AttributeSource,
        CheckpointSession,
        TaskIdentity,
    )
    from metaflow_extensions.implicit_checkpoint.engine.verify import verify_checkpoints
    from metaflow_extensions.implicit_checkpoint.toplevel.checkpoint_client import Checkpoint

    import logging

    logging.getLogger("metaflow_extensions.implicit_checkpoint").setLevel(logging.CRITICAL)
    work = Path(work)
    if work.exists():
        shutil.rmtree(work)
    cwd = work / "cwd"  # stays empty: a relative path written would land here
    cwd.mkdir(parents=True)
    os.chdir(cwd)
    store_root = work / "store"
    task_root = work / "task"  # the task folder and its staging, and client folders
    folder = task_root / "folder"
    outside = work / "outside"
    for d in (store_root, folder, outside):
        d.mkdir(parents=True)

    # -- the real checkpoints ---------------------------------------------------------------

    def session(task_id, state, attempt=0, directory=None, rng=True):
        s = CheckpointSession(
            local_store(store_root),
            TaskIdentity("UnitFlow", "1", "train", task_id, attempt),
            AttributeSource(lambda: dict(vars(state))),
            target=state,
            directory=str(directory) if directory is not None else None,
            rng=rng,
        )
        s.start()
        return s

    (folder / "notes.txt").write_text("hello")
    (folder / "sub").mkdir()
    (folder / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 12)
    (folder / "sub" / "empty").mkdir()
    os.symlink("notes.txt", folder / "link")
    os.chmod(folder / "notes.txt", 0o640)

    torch.manual_seed(0)
    train = State()
    train.model = torch.nn.Linear(4, 3)
    train.optimizer = torch.optim.Adam(train.model.parameters(), lr=0.01)
    train.scheduler = torch.optim.lr_scheduler.StepLR(train.optimizer, step_size=2)
    train.model(torch.randn(2, 4)).sum().backward()
    train.optimizer.step()
    train.scheduler.step()
    train.features = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]  # a strided view
    train.config = hostile.TrainConfig(0.01, (4, 3), "fuzz")
    train.history = OrderedDict(loss=[0.5, 0.25], extra={"k": (1, 2, frozenset({3}))}, s={4, 5})
    train.odds = [bytearray(b"ab"), 2**70, 1 + 2j, np.int16(-3), np.float64(0.5), None, b"raw"]
    train.epoch = 3
    train_key = session("1", train, directory=folder).save().key

    small = State()
    small.x = np.arange(4.0)
    small.t = torch.arange(8.0)
    small.n = [1, (2, 3), {"k": {4}}]
    small.s = np.float32(2.5)
    small.cfg = hostile.TrainConfig(0.1, (1,))
    small_key = session("2", small, rng=False).save().key

    bases = {}
    for name, key in (("train", train_key), ("small", small_key)):
        crafted = hostile.Crafted.open(hostile.LocalBucket(store_root), key)
        bases[name] = (key, crafted.wire, crafted.graph_bytes())
    assert not hostile.Crafted.open(hostile.LocalBucket(store_root), train_key).graph_inline
    assert hostile.Crafted.open(hostile.LocalBucket(store_root), small_key).graph_inline

    # Sentinels beside the store, of the sizes the blobs have (so size checks pass), and
    # digests that lead to them from the blob folder.
    blob_sizes = sorted({n for _, w, _ in bases.values() for n in w["storage"]["blobs"].values()})
    sentinels = {}
    for size in blob_sizes[:6] + [5, 32]:
        path = outside / ("s%d" % size)
        path.write_bytes((b"sentinel-%d-" % size * (size // 8 + 2))[:size])
        sentinels[str(path)] = path.read_bytes()
    blob_dir = store_root / "UnitFlow" / "_implicit_checkpoints" / "blobs"
    traversals = []
    for path in sentinels:
        rel = os.path.relpath(path, blob_dir / "xx")
        traversals.append(rel)  # blobs/<rel[:2]>/<rel>: rel[:2] is "..", one level up
        traversals.append("../" + rel)
    traversals.append("../../../../../../../../etc/passwd")
    pwned = outside / "pwned"  # a crafted pickle that runs writes it

    # Special files in the blob folder, named as digests (made again after every reset:
    # copying a FIFO would block).
    fifo_digest, dir_digest, link_digest = "ab" + "1" * 62, "cd" + "2" * 62, "ef" + "3" * 62
    special_digests = [fifo_digest, dir_digest, link_digest, "0" * 64]

    def make_specials():
        for digest in (fifo_digest, dir_digest, link_digest):
            (blob_dir / digest[:2]).mkdir(parents=True, exist_ok=True)
        os.mkfifo(blob_dir / fifo_digest[:2] / fifo_digest)
        (blob_dir / dir_digest[:2] / dir_digest).mkdir()
        os.symlink(next(iter(sentinels)), blob_dir / link_digest[:2] / link_digest)

    pristine_store = work / "pristine-store"
    shutil.copytree(store_root, pristine_store, symlinks=True)
    pristine_folder = work / "pristine-folder"
    shutil.copytree(folder, pristine_folder, symlinks=True)

    def listing(root):
        out = {}
        for d, dirs, files in os.walk(root):
            for name in dirs + files:
                p = os.path.join(d, name)
                st_ = os.lstat(p)
                if os.path.islink(p):
                    out[os.path.relpath(p, root)] = ("link", os.readlink(p))
                elif os.path.isdir(p):
                    out[os.path.relpath(p, root)] = ("dir", st_.st_mode)
                else:
                    with open(p, "rb") as f:
                        out[os.path.relpath(p, root)] = ("file", st_.st_mode, f.read())
        return out

    folder_listing = listing(folder)

    # -- the calls --------------------------------------------------------------------------

    client_dirs = [0]

    def reader(directory=None):
        return session("reader", State(), directory=directory, rng=False)

    def load_session(key):
        target = State()
        s = CheckpointSession(
            local_store(store_root),
            TaskIdentity("UnitFlow", "1", "train", "reader", 0),
            AttributeSource(lambda: {}),
            target=target,
            directory=str(folder),
            rng=False,
        )
        s.start()
        s.load(key, allow_pickle=False)
        return dict(vars(target))

    def load_client(key):
        client_dirs[0] += 1
        directory = task_root / ("client-%d" % client_dirs[0])
        values = Checkpoint(datastore="local", root=str(store_root), directory=str(directory)).load(
            key, allow_pickle=False
        )
        shutil.rmtree(directory, ignore_errors=True)
        return values

    def calls(key, task_id, repair):
        parsed = CheckpointKey.parse(key)
        return [
            ("inspect", lambda: reader().inspect(key)),
            ("list", lambda: reader().list(task="UnitFlow/1/train/%s" % task_id)),
            ("resume", lambda: session(task_id, State(), attempt=1, rng=False).loaded),
            ("load", lambda: load_session(key)),
            ("client_load", lambda: load_client(key)),
            ("verify", lambda: verify_checkpoints(local_store(store_root), "UnitFlow", [parsed], repair=repair).to_dict()),
        ]

    # Baselines: what the pristine checkpoints load as (warms every module up, too). A
    # pristine checkpoint refused is a failure of its own; the fuzz goes on without
    # comparing that base's no-op examples.
    setup_failures = []

    def pristine_failure(base, call, detail):
        setup_failures.append({"kind": "pristine checkpoint: %s" % detail.split(":")[0], "call": call,
                               "detail": detail, "base": base, "steps": ["none: the checkpoint as saved"]})

    baseline = {}
    for name, (key, _, _) in bases.items():
        got = {}
        for call_name, call in calls(key, key.split("/")[3], False):
            try:
                got[call_name] = call()
            except Exception as e:  # noqa: BLE001 - reported as a failure, the fuzz goes on
                pristine_failure(name, call_name, "%s: %s" % (type(e).__name__, e))
        baseline[name] = (got.get("load"), got.get("client_load"))
    expected_small = {k: getattr(small, k) for k in vars(small)}
    for value, call_name in zip(baseline["small"], ("load", "client_load")):
        if value is not None and not (sorted(value) == sorted(expected_small) and all(
                hostile.deep_equal(value[k], expected_small[k]) for k in expected_small)):
            pristine_failure("small", call_name, "other values: %r" % (value,))
            baseline["small"] = (None, None)
    for value, call_name in zip(baseline["train"], ("load", "client_load")):
        if value is not None and not isinstance(value.get("model"), dict):
            pristine_failure("train", call_name, "the model is a %s, not its state dict" % type(value.get("model")))
    shutil.rmtree(folder)
    shutil.copytree(pristine_folder, folder, symlinks=True)
    make_specials()

    audit = Audit(allowed=[store_root, task_root], watched=[outside])
    vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (vm + 6 * 1024**3, resource.RLIM_INFINITY))

    # -- strategies -------------------------------------------------------------------------

    INT_EDGES = [0, 1, -1, 2, 3, 4, 7, 8, 12, 16, 31, 32, 33, 255, 256, 4095, 2**31 - 1, 2**31,
                 2**32, 2**53, 2**62, 2**63 - 1, -(2**63), 2**64 - 1, 10**12, -(10**12)]
    ints = st.one_of(st.sampled_from(INT_EDGES), st.integers(-(2**63), 2**64 - 1), st.integers(-64, 64))
    scalars = st.one_of(
        ints, st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=12),
        st.binary(max_size=12), st.sampled_from(["../../evil", "", ".", "/", "a/b", "\x00", "é" * 3]),
    )
    anything = st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
        max_leaves=8,
    )
    DTYPES = ["|O", "O", "object", "<V8", "|V8", "V16", "i8,O", "f8,f8", "<M8[ns]", "<m8[s]", "U4", "<U1",
              "S4", "|b1", "?", "<f2", ">f8", "<c16", "float8_x", "float8_e4m3fn", "bfloat16", "complex32",
              "qint8", "quint4x2", "onnx", "_dynamo", "testing", "nn", "Tensor", "float64", "float32", "int64",
              "uint8", "bool", "<f8", "<f4", "<i8", "|u1", "int4", "uint64", "", " f8", "f8 ", "Ö"]
    dtypes = st.one_of(st.sampled_from(DTYPES), st.text(max_size=10))
    KINDS = ["tensor", "ndarray", "list", "tuple", "set", "frozenset", "dict", "odict", "bytearray", "int",
             "complex", "npscalar", "stateful", "dataclass", "pickled", "Tensor", "", "module"]
    CLASS_REFS = [
        ["torch.onnx", "X", None], ["torch", "onnx.X", None], ["numpy.testing", "X", None],
        ["numpy", "testing.X", None], ["numpy.f2py", "X", None], ["numpy", "f2py.X", None],
        ["torch._dynamo", "X", None], ["torch", "_dynamo.X", None], ["os", "system", None],
        ["builtins", "eval", None], ["subprocess", "Popen", None], ["collections", "OrderedDict", None],
        ["hostile", "TrainConfig", None], ["hostile", "PlainThing", None],
        ["torch.nn.modules.linear", "Linear", None], ["torch.optim.adam", "Adam", None],
        ["hostile", "TrainConfig", b"\x80\x04N."], ["__main__", "X", b"garbage"], ["", "", None],
        ["hostile", "TrainConfig.__init__.__globals__", None], ["hostile", "os.system", None],
    ]
    class_refs = st.one_of(st.sampled_from(CLASS_REFS), anything)
    FILE_NAMES = ["../x", "/abs", "a/../../b", "", ".", "..", "sub/../..", "sub//c", "a\x00b", "sub",
                  "notes.txt/inner", "sub/empty/deeper/f", "x" * 300, "link/through"]
    SYMLINKS = ["../../outside/s5", "/etc/passwd", sorted(sentinels)[0], "a" * 5000, "", ".", "sub", "link",
                "notes.txt", "../folder/notes.txt"]
    MODES = [0o6777, 0o7777, 0o4755, 0o2755, 0o1777, 0o777, 0o644, 0, -1, 2**40, 0o170000 | 0o644]

    class Evil:
        def __reduce__(self):
            return (open, (str(pwned), "w"))

    evil_pickle = pickle.dumps(Evil())

    # -- mutations --------------------------------------------------------------------------

    class Example:
        def __init__(self, base):
            key, wire, graph_bytes = bases[base]
            self.graph_bytes = graph_bytes  # the real graph: never read through a mutated manifest
            self.base = base
            self.key = key
            self.crafted = hostile.Crafted(hostile.LocalBucket(store_root), key, copy.deepcopy(wire))
            self.doc = None
            self.raw_nodes = {}
            self.graph_raw = None
            self.manifest_raw = None
            self.noop = True
            self.steps = []

        @property
        def storage(self):
            s = self.crafted.wire.get("storage")
            return s if isinstance(s, dict) else None

        def graph(self):
            if self.doc is None:
                self.doc = hostile.decode_graph(self.graph_bytes)
            return self.doc

        def note(self, text, noop=False):
            self.steps.append(text)
            if not noop:
                self.noop = False

    def pick(data, items, label):
        items = list(items)
        if not items:
            return None
        return items[data.draw(st.integers(0, len(items) - 1), label=label)]

    def digest_spots(ex):
        """(container, key) pairs holding a digest."""
        spots = []
        s = ex.storage
        if not s:
            return spots
        for section in ("tensors",):
            for spec in s.get(section) or []:
                if isinstance(spec, list) and len(spec) == 4 and isinstance(spec[3], list):
                    spots += [(e, 0) for e in spec[3] if isinstance(e, list) and e]
        if isinstance(s.get("graph"), list):
            spots += [(e, 0) for e in s["graph"] if isinstance(e, list) and e]
        for extents in (s.get("files") or {}).values():
            spots += [(e, 0) for e in extents if isinstance(e, list) and e]
        return spots

    def m_digest(ex, data):
        spots = digest_spots(ex)
        blobs = ex.storage.get("blobs") if ex.storage else None
        choice = data.draw(st.sampled_from(["extent", "blob_key", "both"]), label="digest where")
        value = data.draw(st.one_of(
            st.sampled_from(traversals + special_digests),
            st.sampled_from(["A" * 64, "g" * 64, "0" * 63, "0" * 65, "", "..", "ab/../../x", "/etc/passwd"]),
            st.tuples(
                st.sampled_from(sorted(d for d in blobs if isinstance(d, str)) if isinstance(blobs, dict) and blobs else ["0" * 64]),
                st.integers(0, 5),
            ).map(lambda t: [t[0], t[0].upper(), t[0][:-1], t[0] + "0", " " + t[0], t[0][:2] + "/" + t[0]][t[1]]),
            st.text(max_size=70), st.integers(-1, 2**64 - 1), st.none(), st.binary(max_size=40),
        ), label="digest")
        spot = pick(data, spots, "digest spot")
        old = spot[0][0] if spot else None
        if choice in ("extent", "both") and spot:
            spot[0][0] = value
        if choice in ("blob_key", "both") and isinstance(blobs, dict) and blobs:
            victim = old if old in blobs and choice == "both" else pick(data, sorted(blobs, key=str), "blob key")
            size = blobs.pop(victim)
            try:
                blobs[value] = size
            except TypeError:
                blobs[str(value)] = size
        ex.note("digest %s: %r -> %r" % (choice, old, value))

    def m_size(ex, data):
        blobs = ex.storage.get("blobs") if ex.storage else None
        if not isinstance(blobs, dict) or not blobs:
            return
        digest = pick(data, sorted(blobs, key=str), "blob")
        blobs[digest] = data.draw(st.one_of(ints, scalars), label="size")
        ex.note("blob size %s -> %r" % (digest, blobs[digest]))

    def m_extent(ex, data):
        spots = digest_spots(ex)
        spot = pick(data, spots, "extent")
        if spot is None:
            return
        extent = spot[0]
        how = data.draw(st.sampled_from(["offset", "length", "arity", "replace"]), label="extent how")
        if how == "offset" and len(extent) > 1:
            extent[1] = data.draw(ints, label="offset")
        elif how == "length" and len(extent) > 2:
            extent[2] = data.draw(ints, label="length")
        elif how == "arity":
            extent.append(data.draw(scalars)) if data.draw(st.booleans()) else extent.pop()
        else:
            extent[:] = data.draw(st.lists(scalars, max_size=4), label="extent")
        ex.note("extent %s -> %r" % (how, extent))

    def m_claim(ex, data):
        """A storage, the graph or a file claims far more bytes than its blob holds, with
        every claim in the manifest consistent (extent, blob size, storage size): only
        the blob itself can tell."""
        s = ex.storage
        if not s or not isinstance(s.get("blobs"), dict):
            return
        claim = data.draw(st.sampled_from([2**31, 2 * 10**9, 10**12, 2**40, 2**62]), label="claim")
        where = data.draw(st.sampled_from(["graph", "tensor", "file"]), label="claim where")
        if where == "graph" and isinstance(s.get("graph"), list) and s["graph"]:
            extent = s["graph"][0]
        elif where == "tensor" and s.get("tensors"):
            spec = pick(data, s["tensors"], "storage")
            spec[1] = claim
            extent = spec[3][0]
        elif where == "file" and isinstance(s.get("files"), dict) and s["files"]:
            name = pick(data, sorted(s["files"]), "file")
            extent = s["files"][name][0]
            files = ex.crafted.wire.get("files") or {}
            if isinstance(files.get(name), dict):
                files[name]["size"] = claim
        else:
            return
        extent[1], extent[2] = 0, claim
        s["blobs"][extent[0]] = claim
        ex.note("%s claims %d bytes of blob %s" % (where, claim, extent[0]))

    def m_storage_spec(ex, data):
        tensors = ex.storage.get("tensors") if ex.storage else None
        spec = pick(data, [t for t in tensors or [] if isinstance(t, list)], "storage")
        if spec is None:
            return
        slot = data.draw(st.integers(0, max(len(spec) - 1, 0)), label="spec slot")
        values = {0: st.sampled_from(["torch", "numpy", "onnx", "cuda", ""]), 1: ints,
                  2: st.sampled_from(["cpu", "cuda:0", "cuda:99", "meta", "mps", "../x", "", "xla"])}
        value = data.draw(st.one_of(values.get(slot, scalars), scalars), label="spec value")
        if spec:
            spec[slot] = value
        ex.note("storage spec[%d] -> %r" % (slot, value))

    PUBLIC = ["flow", "name", "run_id", "step", "task_id", "key", "attempt", "version", "format_version",
              "fields", "latest", "size", "files", "directories", "parent", "rng", "storage_format",
              "foreach_indices", "gang", "pathspec", "created_on", "metadata", "storage"]

    def m_public(ex, data):
        name = data.draw(st.sampled_from(PUBLIC), label="public key")
        if data.draw(st.booleans(), label="delete"):
            ex.crafted.wire.pop(name, None)
            ex.note("manifest %r deleted" % name)
        else:
            value = data.draw(st.one_of(anything, st.sampled_from(["../../evil", "UnitFlow/../x", 3, 1, {}, []])))
            ex.crafted.wire[name] = value
            ex.note("manifest %r -> %r" % (name, value))

    STORAGE_KEYS = ["blobs", "tensors", "graph", "fields", "rng", "files", "blob_fields"]

    def m_storage_key(ex, data):
        if ex.storage is None:
            return
        name = data.draw(st.sampled_from(STORAGE_KEYS), label="storage key")
        how = data.draw(st.sampled_from(["delete", "replace", "field_index"]), label="how")
        if how == "field_index" and isinstance(ex.storage.get("fields"), dict) and ex.storage["fields"]:
            field = pick(data, sorted(ex.storage["fields"]), "field")
            entry = ex.storage["fields"][field]
            entry["tensors"] = data.draw(st.one_of(st.lists(ints, max_size=3), scalars), label="indices")
            ex.note("storage fields[%r].tensors -> %r" % (field, entry["tensors"]))
        elif how == "delete":
            ex.storage.pop(name, None)
            ex.note("storage %r deleted" % name)
        else:
            ex.storage[name] = data.draw(anything, label="storage value")
            ex.note("storage %r -> %r" % (name, ex.storage[name]))

    def m_file_spec(ex, data):
        files = ex.crafted.wire.get("files")
        if not isinstance(files, dict) or not files:
            return
        name = pick(data, sorted(files), "file")
        spec = files[name]
        how = data.draw(st.sampled_from(["mode", "size", "symlink", "mtime", "drop", "rename", "add",
                                         "dir_mode", "dir_name", "extents_drop"]), label="file how")
        if how == "mode" and isinstance(spec, dict):
            spec["mode"] = data.draw(st.one_of(st.sampled_from(MODES), scalars))
        elif how == "size" and isinstance(spec, dict):
            spec["size"] = data.draw(st.one_of(st.sampled_from([10**12, -1, 0, 1, 4, 6]), ints))
        elif how == "symlink" and isinstance(spec, dict):
            spec["symlink"] = data.draw(st.one_of(st.sampled_from(SYMLINKS), scalars))
        elif how == "mtime" and isinstance(spec, dict):
            spec["mtime_ns"] = data.draw(st.one_of(st.sampled_from([-1, 2**63 - 1, 0, 1e30, float("nan")]), scalars))
        elif how == "drop" and isinstance(spec, dict) and spec:
            spec.pop(pick(data, sorted(spec), "spec key"))
        elif how == "rename":
            new = data.draw(st.one_of(st.sampled_from(FILE_NAMES), st.text(max_size=20)), label="new name")
            files[new] = files.pop(name)
            s = ex.storage or {}
            if isinstance(s.get("files"), dict) and name in s["files"] and data.draw(st.booleans()):
                s["files"][new] = s["files"].pop(name)
            name = "%s -> %r" % (name, new)
        elif how == "add":
            new = data.draw(st.sampled_from(FILE_NAMES + ["sub/empty", "newdir"]), label="added")
            files[new] = copy.deepcopy(spec)
            s = ex.storage or {}
            if isinstance(s.get("files"), dict) and name in s["files"]:
                s["files"][new] = copy.deepcopy(s["files"][name])
            name = "added %r like %s" % (new, name)
        elif how in ("dir_mode", "dir_name"):
            dirs = ex.crafted.wire.get("directories")
            if isinstance(dirs, dict) and dirs:
                d = pick(data, sorted(dirs), "dir")
                if how == "dir_mode" and isinstance(dirs[d], dict):
                    dirs[d]["mode"] = data.draw(st.one_of(st.sampled_from(MODES + [0o000, 0o200]), scalars))
                else:
                    dirs[data.draw(st.sampled_from(FILE_NAMES + ["notes.txt", "link"]))] = dirs.pop(d)
                name = "directory %s" % d
        elif how == "extents_drop":
            s = ex.storage or {}
            if isinstance(s.get("files"), dict):
                s["files"].pop(name, None)
        ex.note("file %s: %s" % (name, how))

    def nodes_of(doc, kinds):
        return [i for i, n in enumerate(doc["nodes"]) if isinstance(n, list) and n and n[0] in kinds]

    def m_dtype(ex, data):
        doc = ex.graph()
        i = pick(data, nodes_of(doc, ("tensor", "ndarray", "npscalar")), "node")
        if i is None:
            return
        node = doc["nodes"][i]
        value = data.draw(dtypes, label="dtype")
        if node[0] == "npscalar":
            node[1] = value
        else:
            node[2][0] = value
        ex.note("node %d (%s) dtype -> %r" % (i, node[0], value))

    def m_view(ex, data):
        doc = ex.graph()
        i = pick(data, nodes_of(doc, ("tensor", "ndarray")), "node")
        if i is None:
            return
        view = doc["nodes"][i][2]
        slot = data.draw(st.sampled_from([1, 2, 3]), label="view slot")
        if slot == 3:
            value = data.draw(st.one_of(ints, scalars), label="offset")
        else:
            value = data.draw(st.one_of(
                st.lists(ints, max_size=6), st.lists(st.integers(0, 3), min_size=30, max_size=70), scalars,
            ), label="dims")
        view[slot] = value
        ex.note("node %d view[%d] -> %r" % (i, slot, value if not isinstance(value, list) or len(value) < 10 else "%d dims" % len(value)))

    def m_tensor_flags(ex, data):
        doc = ex.graph()
        i = pick(data, nodes_of(doc, ("tensor", "ndarray")), "node")
        if i is None:
            return
        node = doc["nodes"][i]
        if node[0] == "tensor" and data.draw(st.booleans(), label="grad on integers"):
            node[2][0] = data.draw(st.sampled_from(["int32", "int64", "bool", "uint8"]))
            node[4] = True  # torch refuses requires_grad on them
            ex.note("node %d: requires_grad on %s" % (i, node[2][0]))
            return
        slot = data.draw(st.integers(3, 5), label="flag slot")
        value = data.draw(st.one_of(st.booleans(), scalars, st.lists(st.sampled_from(["conj", "neg", "x"]), max_size=3)))
        if slot < len(node):
            node[slot] = value
        else:
            node.append(value)
        ex.note("node %d item %d -> %r" % (i, slot, value))

    def m_node_kind(ex, data):
        doc = ex.graph()
        i = pick(data, range(len(doc["nodes"])), "node")
        if i is None:
            return
        how = data.draw(st.sampled_from(["kind", "replace", "truncate", "extend"]), label="how")
        node = doc["nodes"][i]
        if how == "kind" and isinstance(node, list) and node:
            node[0] = data.draw(st.one_of(st.sampled_from(KINDS), st.text(max_size=8)))
        elif how == "replace":
            doc["nodes"][i] = data.draw(anything)
        elif how == "truncate" and isinstance(node, list) and node:
            del node[data.draw(st.integers(0, len(node) - 1)):]
        elif isinstance(node, list):
            node.extend(data.draw(st.lists(scalars, min_size=1, max_size=3)))
        ex.note("node %d %s -> %r" % (i, how, doc["nodes"][i] if len(repr(doc["nodes"][i])) < 200 else "..."))

    def ref_spots(doc):
        spots = [(doc["fields"], k) for k in doc["fields"]]
        if doc.get("rng") is not None:
            spots.append((doc, "rng"))
        for node in doc["nodes"]:
            if isinstance(node, list) and len(node) > 1 and node[0] in ("list", "tuple", "set", "frozenset"):
                spots += [(node[1], j) for j in range(len(node[1]))]
            if isinstance(node, list) and len(node) > 1 and node[0] in ("dict", "odict"):
                for pair in node[1]:
                    spots += [(pair, 0), (pair, 1)]
            if isinstance(node, list) and len(node) > 2 and node[0] == "dataclass":
                spots += [(attr, 1) for attr in node[2] if isinstance(attr, list) and len(attr) == 2]
            if isinstance(node, list) and len(node) > 2 and node[0] == "stateful":
                spots.append((node, 2))
        return spots

    def m_ref(ex, data):
        doc = ex.graph()
        spot = pick(data, ref_spots(doc), "ref spot")
        if spot is None:
            return
        n = len(doc["nodes"])
        value = data.draw(st.one_of(
            st.sampled_from([n, n + 1, 2**32 - 1, 10**6]).map(hostile.ref),
            st.integers(0, max(n - 1, 0)).map(hostile.ref),
            st.binary(max_size=9).map(lambda b: hostile.ref(0, data=b)),
            st.tuples(st.integers(-128, 127), st.binary(max_size=5)).map(lambda t: __import__("msgpack").ExtType(*t)),
            scalars,
        ), label="ref")
        container, k = spot
        container[k] = value
        ex.note("ref %r -> %r" % (k, value))

    def m_class(ex, data):
        doc = ex.graph()
        if not doc["classes"]:
            return
        i = data.draw(st.integers(0, len(doc["classes"]) - 1), label="class")
        doc["classes"][i] = data.draw(class_refs, label="class ref")
        ex.note("class %d -> %r" % (i, doc["classes"][i]))

    def m_class_index(ex, data):
        doc = ex.graph()
        i = pick(data, nodes_of(doc, ("stateful", "dataclass", "pickled")), "node")
        if i is None:
            return
        doc["nodes"][i][1] = data.draw(st.one_of(ints, scalars), label="class index")
        ex.note("node %d class index -> %r" % (i, doc["nodes"][i][1]))

    def m_depth(ex, data):
        doc = ex.graph()
        spot = pick(data, ref_spots(doc), "attach")
        if spot is None:
            return
        depth = data.draw(st.sampled_from([2, 50, 600, 1200, 5000, 100_000]), label="depth")
        kind = data.draw(st.sampled_from(["list", "tuple", "dict", "set", "frozenset", "odict"]), label="kind")
        cyclic = data.draw(st.booleans(), label="cycle")
        first = len(doc["nodes"])
        for j in range(depth):
            nxt = hostile.ref(first + j + 1) if j < depth - 1 else (hostile.ref(first) if cyclic else None)
            if kind in ("dict", "odict"):
                node = [kind, [["k", nxt]]] + ([None] if kind == "odict" else [])
            else:
                node = [kind, [nxt]]
            doc["nodes"].append(node)
        container, k = spot
        container[k] = hostile.ref(first)
        ex.note("chain of %d %s nodes%s at %r" % (depth, kind, " (cycle)" if cyclic else "", k))

    def m_payload(ex, data):
        doc = ex.graph()
        kinds = ("bytearray", "int", "complex", "npscalar", "odict", "stateful", "dataclass", "pickled")
        i = pick(data, nodes_of(doc, kinds), "node")
        if i is None:
            return
        node = doc["nodes"][i]
        kind = node[0]
        if kind == "int":
            node[1] = data.draw(st.one_of(st.sampled_from(["9" * 5000, "abc", "", "-", "0x10", " 1", "1_0"]), scalars))
        elif kind == "npscalar":
            node[2] = data.draw(st.one_of(st.binary(max_size=20), scalars))
        elif kind == "dataclass":
            attr = data.draw(st.sampled_from(["__class__", "__dict__", "__init__", "lr", "x", 3, None, ""]))
            node[2].append([attr, data.draw(scalars)])
        elif kind == "stateful":
            node[3] = data.draw(st.one_of(st.just(evil_pickle), st.binary(max_size=20), scalars))
        elif kind == "pickled":
            node[2] = evil_pickle
        else:
            slot = data.draw(st.integers(1, max(len(node) - 1, 1)))
            if slot < len(node):
                node[slot] = data.draw(anything)
        ex.note("node %d (%s) payload -> %r" % (i, kind, node if len(repr(node)) < 200 else "..."))

    def m_pickled_node(ex, data):
        """A new node that only unpickling builds, with a payload that writes a file."""
        doc = ex.graph()
        spot = pick(data, ref_spots(doc), "attach")
        if spot is None:
            return
        doc["classes"].append(["hostile", "PlainThing", None])
        doc["nodes"].append(["pickled", len(doc["classes"]) - 1, evil_pickle])
        spot[0][spot[1]] = hostile.ref(len(doc["nodes"]) - 1)
        ex.note("a pickled node with a payload that writes a file, at %r" % (spot[1],))

    def m_raw_node(ex, data):
        doc = ex.graph()
        i = pick(data, range(len(doc["nodes"])), "node")
        if i is None:
            return
        packed = __import__("msgpack").packb(doc["nodes"][i], use_bin_type=True)
        raw = data.draw(st.one_of(
            st.binary(max_size=30),
            st.just(b"\x92\xa4list\x91" + b"\x91" * 100_000 + b"\x90"),
            st.integers(0, max(len(packed) - 1, 0)).map(lambda n: packed[:n]),
            st.just(packed + b"\x00"),
        ), label="raw node")
        ex.raw_nodes[i] = raw
        ex.note("node %d bytes -> %r" % (i, raw[:40]))

    def m_graph_raw(ex, data):
        if ex.storage is None:
            return
        document = ex.graph_bytes
        raw = data.draw(st.one_of(
            st.binary(max_size=64),
            st.integers(0, len(document) - 1).map(lambda n: document[:n]),
            st.just(b"\x91" * 100_000 + b"\xc0"),
            st.just(__import__("msgpack").packb([1, 2, 3])),
            st.just(__import__("msgpack").packb({"classes": [], "nodes": [], "fields": {}, "rng": None})),
        ), label="graph bytes")
        ex.graph_raw = raw
        ex.note("graph document -> %d bytes %r" % (len(raw), raw[:20]))

    def m_blob_bytes(ex, data):
        s = ex.storage
        blobs = s.get("blobs") if s else None
        if not isinstance(blobs, dict) or not blobs:
            return
        digest = pick(data, sorted(d for d in blobs if isinstance(d, str) and len(d) == 64), "blob")
        if digest is None:
            return
        path = store_root / hostile.blob_path("UnitFlow", digest)
        if not path.is_file():
            return
        how = data.draw(st.sampled_from(["flip", "truncate", "extend", "delete", "dir", "fifo", "symlink"]))
        content = path.read_bytes()
        path.unlink()
        if how == "flip" and content:
            at = data.draw(st.integers(0, len(content) - 1))
            path.write_bytes(content[:at] + bytes([content[at] ^ 0xFF]) + content[at + 1 :])
        elif how == "truncate":
            path.write_bytes(content[: data.draw(st.integers(0, max(len(content) - 1, 0)))])
        elif how == "extend":
            path.write_bytes(content + b"\x00" * data.draw(st.integers(1, 100)))
        elif how == "dir":
            path.mkdir()
        elif how == "fifo":
            os.mkfifo(path)
        elif how == "symlink":
            os.symlink(data.draw(st.sampled_from(sorted(sentinels))), path)
        ex.note("blob %s: %s" % (digest, how))

    def m_frame(ex, data):
        body = __import__("msgpack").packb(ex.crafted.wire, use_bin_type=True)
        framed = hostile.frame(ex.crafted.wire)
        how = data.draw(st.sampled_from(["magic", "version", "digest", "truncate", "empty", "not_msgpack",
                                         "not_dict", "deep"]))
        if how == "magic":
            raw = b"XXXX" + framed[4:]
        elif how == "version":
            raw = hostile.frame(ex.crafted.wire, version=data.draw(st.sampled_from([0, 1, 3, 255])))
        elif how == "digest":
            raw = framed[:10] + bytes([framed[10] ^ 1]) + framed[11:]
        elif how == "truncate":
            raw = framed[: data.draw(st.integers(0, len(framed) - 1))]
        elif how == "empty":
            raw = b""
        else:
            new_body = {"not_msgpack": b"\xc1\xc1", "not_dict": __import__("msgpack").packb([1, 2]),
                        "deep": b"\x91" * 100_000 + b"\xc0"}[how]
            import blake3
            raw = hostile.MAGIC + bytes([2]) + blake3.blake3(new_body).digest() + new_body
        del body
        ex.manifest_raw = raw
        ex.note("manifest framing: %s" % how)

    def m_noop(ex, data):
        how = data.draw(st.sampled_from(["reframe", "reencode_graph", "reorder"]))
        if how == "reorder":
            ex.crafted.wire = dict(reversed(list(ex.crafted.wire.items())))
        elif how == "reencode_graph" and ex.storage is not None:
            ex.graph()  # decoded and encoded again, where a save would put it
        ex.note("no-op: %s" % how, noop=True)

    MUTATIONS = [m_digest, m_size, m_claim, m_extent, m_storage_spec, m_public, m_storage_key, m_file_spec, m_dtype,
                 m_view, m_tensor_flags, m_node_kind, m_ref, m_class, m_class_index, m_depth, m_payload,
                 m_pickled_node, m_raw_node, m_graph_raw, m_blob_bytes, m_frame, m_noop]

    # -- one example ------------------------------------------------------------------------

    failures = list(setup_failures)
    stats = {"examples": 0, "calls": 0, "raised": 0, "ok": 0}
    by_call = {}  # call -> [returned, raised a CheckpointException]
    by_mutation = {}  # mutation -> [applied, skipped]
    current = work / "current.json"

    def reset():
        shutil.rmtree(store_root)
        shutil.copytree(pristine_store, store_root, symlinks=True)
        make_specials()
        for p in list(task_root.iterdir()):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        shutil.copytree(pristine_folder, folder, symlinks=True)
        if pwned.exists():
            pwned.unlink()

    def fail(ex, kind, call, detail):
        failures.append({"kind": kind, "call": call, "detail": detail[:600], "base": ex.base, "steps": ex.steps})

    def on_alarm(signum, frame):
        raise Hang()

    signal.signal(signal.SIGALRM, on_alarm)

    def run_example(data):
        reset()
        ex = Example(data.draw(st.sampled_from(sorted(bases)), label="base"))
        for _ in range(data.draw(st.integers(1, 4), label="mutations")):
            mutation = data.draw(st.sampled_from(MUTATIONS), label="mutation")
            counts = by_mutation.setdefault(mutation.__name__, [0, 0])
            steps = len(ex.steps)
            try:
                mutation(ex, data)
            except (KeyError, IndexError, TypeError, AttributeError, ValueError, OSError):
                ex.note("%s (skipped: does not apply after the previous ones)" % mutation.__name__, noop=True)
            counts[0 if len(ex.steps) > steps and "skipped" not in ex.steps[-1] else 1] += 1
        # write the crafted checkpoint back
        try:
            if ex.graph_raw is not None:
                ex.crafted.set_graph_bytes(ex.graph_raw)
            elif ex.doc is not None or ex.raw_nodes:
                ex.crafted.set_graph(ex.graph(), raw_nodes=ex.raw_nodes)
            ex.crafted.commit(raw=ex.manifest_raw)
        except (TypeError, ValueError, OverflowError, AttributeError, KeyError) as e:
            ex.note("could not write the mutation (%s); the manifest is written as msgpack allows" % e, noop=False)
            ex.crafted.commit(raw=ex.manifest_raw or b"MFIC\x02" + b"\x00" * 32)
        repair = data.draw(st.booleans(), label="repair")
        current.write_text(json.dumps({"base": ex.base, "steps": ex.steps, "repair": repair}, default=repr))
        stats["examples"] += 1
        task_id = ex.key.split("/")[3]
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for name, call in calls(ex.key, task_id, repair):
            before_folder = listing(folder) if name == "load" else None
            audit.imports, audit.touched = [], []
            stats["calls"] += 1
            audit.armed = True
            signal.setitimer(signal.ITIMER_REAL, PER_EXAMPLE_SECONDS)
            outcome, value = None, None
            try:
                value = call()
                outcome = "ok"
            except Hang:
                outcome = "hang"
            except CheckpointException as e:
                outcome, value = "raised", e
            except BaseException as e:  # noqa: B902 - every other type breaks the contract
                outcome, value = "other", e
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                audit.armed = False
            if outcome == "hang":
                fail(ex, "hang", name, "still running after %d s" % PER_EXAMPLE_SECONDS)
                finish(hung=True)
            if outcome == "other":
                fail(ex, "raised %s" % type(value).__name__, name, "%s: %s" % (type(value).__name__, value))
            if outcome in ("raised", "ok"):
                stats[outcome] += 1
                by_call.setdefault(name, [0, 0])[outcome == "raised"] += 1
            if outcome == "ok" and name in ("load", "client_load"):
                try:  # what Metaflow does with the values at the end of a step
                    pickle.dumps(value)
                except Exception:  # noqa: BLE001 - unpicklable is not the point; touching is
                    pass
                repr(value)
                if ex.noop:
                    expected = baseline[ex.base][0 if name == "load" else 1]
                    if expected is not None and not hostile.deep_equal(value, expected):
                        fail(ex, "no-op changed the values", name, repr(value)[:400])
            if outcome == "raised" and ex.noop and name in ("load", "client_load", "inspect"):
                fail(ex, "no-op refused", name, str(value))
            if outcome == "raised" and name == "load" and listing(folder) != before_folder:
                fail(ex, "failed load changed the folder", name, str(value)[:300])
            if audit.imports:
                fail(ex, "import", name, "imported %s" % sorted(set(audit.imports))[:10])
            if audit.touched:
                fail(ex, "file touched outside", name, repr(audit.touched[:5]))
        for path, content in sentinels.items():
            if not os.path.exists(path) or Path(path).read_bytes() != content:
                fail(ex, "sentinel changed", "-", path)
        if pwned.exists():
            fail(ex, "a crafted pickle ran", "-", str(pwned))
        strays = sorted(set(os.listdir(outside)) - {os.path.basename(p) for p in sentinels} - {"pwned"})
        if strays:
            fail(ex, "file created outside", "-", repr(strays))
            for s in strays:
                p = outside / s
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        if os.listdir(cwd):
            fail(ex, "file created in the working directory", "-", repr(os.listdir(cwd)))
            for name in os.listdir(cwd):
                p = cwd / name
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        leftovers = [p for p in os.listdir(task_root) if p != "folder" and not p.startswith("client-")]
        if leftovers:
            fail(ex, "staging left beside the folder", "load", repr(leftovers))
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        if grown > 500:
            fail(ex, "memory", "-", "peak RSS grew %.0f MB" % grown)

    started = time.time()

    def finish(hung=False):
        seconds = time.time() - started
        groups = OrderedDict()
        for f in failures:
            groups.setdefault((f["kind"], f["call"]), []).append(f)
        lines = []
        for (kind, call), items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            lines.append("%4d x %s in %s" % (len(items), kind, call))
            for f in items[:2]:
                lines.append("       %s; base %s; mutations: %s" % (f["detail"][:300], f["base"], " | ".join(map(str, f["steps"]))[:600]))
        report = "\n".join(lines)
        print("fuzz: %d examples, %d calls (%d returned, %d raised a CheckpointException), %d failures, %.1f s%s"
              % (stats["examples"], stats["calls"], stats["ok"], stats["raised"], len(failures), seconds,
                 " (stopped: a call hung)" if hung else ""))
        print("calls (returned, raised a CheckpointException): %s" % json.dumps(by_call))
        print("mutations (applied, not applicable): %s" % json.dumps(by_mutation))
        print(report)
        print("SUMMARY " + json.dumps({"examples": stats["examples"], "failures": len(failures),
                                       "seconds": seconds, "report": report}), flush=True)
        sys.stdout.flush()
        os._exit(1 if failures else 0)  # threads stuck in a hung call must not keep us alive

    fuzz = settings(
        max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
        suppress_health_check=list(HealthCheck), print_blob=False,
    )(given(st.data())(run_example))
    fuzz = hypothesis_seed(seed)(fuzz)
    fuzz()
    finish()


if __name__ == "__main__":
    fuzz_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
