"""Checkpoints on S3, against a real S3 server (moto's, on 127.0.0.1).

Engine level: the S3 backend's round trip of a multi-chunk state (multipart uploads and
ranged reads), existence checks that are batched and remembered, no second full copy in
memory, transient failures retried and a persistent one failing cleanly (through a fault
proxy). Flow level: a flow SIGKILLed and resumed on the S3 datastore through a flaky S3,
read back from a separate process.
"""

import time

import numpy as np
import pytest
import torch

from conftest import REPO, TEST_FLOWS
from engine_helpers import State, make_session
from resume_flow_helpers import task_state
from s3_fault_proxy import FAULTS, FaultProxy
from s3_server import S3World, s3_server, s3_world  # noqa: F401  (fixtures)
from metaflow_extensions.implicit_checkpoint.engine.errors import (
    CheckpointNotFound,
    CheckpointStorageError,
)
from metaflow_extensions.implicit_checkpoint.engine.s3_backend import RetryPolicy, S3Backend
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore

MiB = 1024 * 1024
RESUME_FLOW = TEST_FLOWS / "resume_flow.py"

#: Small parts, so that multipart uploads and ranged reads happen on test-sized blobs.
SMALL_PARTS = 8 * MiB

#: Retries quick enough for tests, and more patient than the proxy's 3 failures in a row.
QUICK_RETRY = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05)


def random_array(nbytes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**62, nbytes // 8, dtype=np.int64)


def blob_keys(keys):
    return [k for k in keys if "/_implicit_checkpoints/blobs/" in k]


# -- engine level ---------------------------------------------------------------------


@pytest.mark.s3
def test_large_multi_chunk_state_round_trips_bit_exact(s3_server):
    root = s3_server.new_root()
    writer_backend, writes = s3_server.logged_backend(root, part_bytes=SMALL_PARTS)
    state = State()
    state.big = random_array(80 * MiB, seed=1)  # two chunks: 64 MiB and 16 MiB
    state.model_state = {"w": torch.randn(300, 1000), "b": torch.randn(7).to(torch.bfloat16)}
    state.small = [random_array(64 * 1024, seed=s) for s in range(20)]  # packed together
    state.config = {"lr": 0.1, "name": "run"}
    artifact = make_session(CheckpointStore(writer_backend), state).save()

    assert writes["CompleteMultipartUpload"] == 2
    assert writes["UploadPart"] == 8 + 2
    keys = s3_server.keys(root)
    assert any(k.startswith("UnitFlow/_implicit_checkpoints/tasks/") for k in keys)
    assert len(blob_keys(keys)) >= 3

    reader_backend, reads = s3_server.logged_backend(root, part_bytes=SMALL_PARTS)
    loaded = State()
    reader = make_session(CheckpointStore(reader_backend), loaded, attempt=1)
    assert reader.loaded.key == artifact.key
    reader.load()
    assert loaded.big.tobytes() == state.big.tobytes()
    assert all(torch.equal(loaded.model_state[k], state.model_state[k]) for k in state.model_state)
    assert loaded.model_state["b"].dtype == torch.bfloat16
    assert all(np.array_equal(a, b) for a, b in zip(loaded.small, state.small))
    assert loaded.config == state.config
    assert reads["GetObject"] >= 8 + 2  # the chunks came back as parallel byte ranges


@pytest.mark.s3
def test_existence_checks_are_batched_and_remembered(s3_server):
    root = s3_server.new_root()
    state = State()
    state.layers = [random_array(3 * MiB, seed=s) for s in range(4)]  # one blob each
    state.norms = [random_array(32 * 1024, seed=10 + s) for s in range(40)]  # packed
    make_session(CheckpointStore(s3_server.backend(root)), state, task_id="1").save()
    stored_blobs = len(blob_keys(s3_server.keys(root)))

    # A new process saving the same state (a sibling task, a resumed attempt): every
    # blob is checked once (a HEAD: present, right size), none is uploaded again.
    backend, log = s3_server.logged_backend(root)
    session = make_session(CheckpointStore(backend), state, task_id="2")
    log.reset()
    session.save()
    assert log.on_keys_with("/blobs/", "HeadObject") == stored_blobs
    assert log.on_keys_with("/blobs/", "CopyObject") == 0
    assert log.on_keys_with("/blobs/", "PutObject") + log.on_keys_with("/blobs/", "UploadPart") == 0

    # Saving again: the process remembers what it wrote and checked (until gc deletes
    # anything); no request touches a blob at all.
    log.reset()
    session.save()
    assert log.on_keys_with("/blobs/") == 0

    # One changed layer: exactly one blob goes up.
    state.layers[2] = random_array(3 * MiB, seed=99)
    log.reset()
    session.save()
    assert log.on_keys_with("/blobs/", "PutObject") == 1
    assert len(blob_keys(s3_server.keys(root))) == stored_blobs + 1


@pytest.mark.s3
@pytest.mark.flow
def test_saving_and_loading_hold_no_second_full_copy(s3_world):
    """tracemalloc sees every buffer Python or numpy allocates: a joined copy of the
    state for an upload, or a staging copy of a download, would show in the peaks."""
    result = s3_world.python(
        """
        import json, sys, tracemalloc
        import numpy as np
        sys.path.insert(0, %r)
        from engine_helpers import State, make_session
        from metaflow_extensions.implicit_checkpoint.plugins.store_binding import store_from_config

        state = State()
        state.weights = np.random.default_rng(0).standard_normal(192 * 2**20 // 8)
        session = make_session(store_from_config(), state)
        tracemalloc.start()
        artifact = session.save()
        save_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

        loaded = State()
        reader = make_session(store_from_config(), loaded, attempt=1)
        tracemalloc.start()
        reader.load(artifact)
        load_peak = tracemalloc.get_traced_memory()[1]
        print(json.dumps({
            "size": state.weights.nbytes, "save_peak": save_peak, "load_peak": load_peak,
            "equal": loaded.weights.tobytes() == state.weights.tobytes(),
            "backend": type(store_from_config().backend).__name__,
        }))
        """
        % str(REPO / "tests")
    )
    assert result["backend"] == "S3Backend" and result["equal"]
    size = result["size"]
    # Saving: only request-sized buffers; loading: the loaded array itself, once.
    assert result["save_peak"] < size / 8, result
    assert result["load_peak"] < size * 1.15, result


@pytest.mark.s3
def test_transient_failures_are_retried_and_loads_are_intact(s3_server):
    root = s3_server.new_root()
    host = s3_server.endpoint.split("://")[1]
    with FaultProxy(host, share=0.3, max_consecutive=3, seed=5) as proxy:

        def store():
            backend = s3_server.backend(
                root, endpoint=proxy.endpoint, retry=QUICK_RETRY, part_bytes=SMALL_PARTS
            )
            return CheckpointStore(backend)

        state = State()
        state.big = random_array(20 * MiB, seed=2)  # three parts
        state.small = [random_array(100 * 1024, seed=s) for s in range(30)]
        state.step = 0
        session = make_session(store(), state)
        saved = []
        for step in range(3):
            state.step = step
            state.big[step * 1000 : (step + 1) * 1000] = step
            saved.append((session.save(), state.big.copy()))

        reader = make_session(store(), State(), attempt=1)
        assert [a.key for a in reader.list()] == [a.key for a, _ in saved]
        for artifact, big in saved:
            loaded = State()
            make_session(store(), loaded, attempt=1).load(artifact)
            assert loaded.big.tobytes() == big.tobytes()
            assert loaded.step == artifact.version - 1
            assert all(np.array_equal(a, b) for a, b in zip(loaded.small, state.small))

    # Every kind of failure happened, and was survived.
    assert all(proxy.failures[kind] > 0 for kind in FAULTS), proxy.failures
    assert proxy.failed > 0.15 * proxy.requests


@pytest.mark.s3
def test_persistent_failure_fails_the_save_and_keeps_the_last_checkpoint(s3_server):
    root = s3_server.new_root()
    host = s3_server.endpoint.split("://")[1]
    with FaultProxy(host, share=0.0) as proxy:
        backend = s3_server.backend(root, endpoint=proxy.endpoint, retry=QUICK_RETRY)
        state = State()
        state.weights = random_array(4 * MiB, seed=3)
        session = make_session(CheckpointStore(backend), state)
        good = session.save()
        good_weights = state.weights.copy()

        # S3 is down: no request reaches it (a "cut" would let some through).
        proxy.configure(1.0, faults=("500", "503", "drop"), max_consecutive=None)
        state.weights = random_array(4 * MiB, seed=4)
        with pytest.raises(CheckpointStorageError) as failure:
            session.save()
        message = str(failure.value)
        assert s3_server.endpoint not in message  # named by its S3 URL, not the proxy
        assert "s3://%s/" % s3_server.bucket in message and "failed 5 times" in message

        # Listing while S3 is down fails loudly too; it never says "no checkpoints".
        with pytest.raises(CheckpointStorageError, match="listing"):
            make_session(CheckpointStore(backend), State(), attempt=1)

        proxy.configure(0.0)  # S3 is back
        loaded = State()
        reader = make_session(CheckpointStore(s3_server.backend(root)), loaded, attempt=1)
        assert [a.key for a in reader.list()] == [good.key]
        assert reader.loaded.key == good.key
        reader.load()
        assert loaded.weights.tobytes() == good_weights.tobytes()
        manifests = [k for k in s3_server.keys(root) if k.endswith(".manifest")]
        assert len(manifests) == 1


@pytest.mark.s3
def test_backend_listing_touch_and_delete(s3_server):
    root = s3_server.new_root()
    backend = s3_server.backend(root)
    backend.write("a/b/one", [b"12345"], durable=True)
    backend.write("a/two", [memoryview(b"ab"), b"", bytearray(b"cd")], durable=True)
    backend.write("a/.tmp-partial", [b"x"], durable=True)
    assert sorted(backend.list_dir("a")) == [("b", True), ("two", False)]
    assert backend.list_dir("missing") == []
    assert backend.read("a/two") == b"abcd"
    walked = {f.path: f for f in backend.walk_files("a")}
    assert sorted(walked) == ["a/.tmp-partial", "a/b/one", "a/two"]
    assert walked["a/b/one"].size == 5

    time.sleep(1.1)  # S3 keeps modification times in whole seconds
    before_touch = time.time()
    assert backend.touch(["a/b/one", "a/none"]) == [True, False]
    touched = {f.path: f for f in backend.walk_files("a")}
    assert touched["a/b/one"].mtime >= int(before_touch) > walked["a/b/one"].mtime
    assert touched["a/two"].mtime == walked["a/two"].mtime
    assert backend.read("a/b/one") == b"12345"

    assert backend.stat_many(["a/two", "a/none", "a/b/one"]) == [4, None, 5]
    backend.delete(["a/two", "a/none"])
    assert backend.stat_many(["a/two", "a/b/one"]) == [None, 5]
    with pytest.raises(FileNotFoundError):
        backend.read("a/two")
    short = bytearray(10)
    assert backend.read_into("a/b/one", memoryview(short)) == 5  # the object is shorter


@pytest.mark.s3
def test_misconfiguration_is_named(s3_server):
    with pytest.raises(CheckpointStorageError, match="METAFLOW_DATASTORE_SYSROOT_S3"):
        S3Backend(s3_server.client(), "my-bucket/prefix")
    missing_bucket = s3_server.backend("s3://no-such-bucket/metaflow", retry=QUICK_RETRY)
    with pytest.raises(CheckpointStorageError, match="bucket does not exist.*METAFLOW_DATASTORE_SYSROOT_S3"):
        make_session(CheckpointStore(missing_bucket), State(), attempt=1)
    session = make_session(CheckpointStore(s3_server.backend(s3_server.new_root())), State())
    with pytest.raises(CheckpointNotFound):
        session.load("UnitFlow/1/train/1/0/checkpoint/1")


# -- flows on the S3 datastore ----------------------------------------------------------


def notebook_view(world, run_id):
    """list / inspect / load(fields) / load(flow=obj) from a separate process."""
    return world.python(
        """
        import json
        from metaflow import Checkpoint, namespace
        from metaflow_extensions.implicit_checkpoint.plugins.store_binding import store_from_config
        namespace(None)
        cp = Checkpoint()  # built on store_from_config(), like the store below
        newest = cp.list(task="ResumeFlow/%s/train/2")[-1]
        manifest = cp.inspect(newest)
        class Holder: pass
        holder = Holder()
        artifact = cp.load(newest.key, flow=holder)
        print(json.dumps({
            "store": type(store_from_config().backend).__name__,
            "fields": {k: v["size"] for k, v in manifest["fields"].items()},
            "weights_sum": float(cp.load(newest, fields=["weights"])["weights"].sum()),
            "holder_count": holder.count,
            "artifact_key": artifact.key == newest.key,
        }))
        """
        % run_id
    )


@pytest.mark.s3
@pytest.mark.flow
def test_flow_killed_and_resumed_through_a_flaky_s3(s3_server, tmp_path):
    """A real flow on the S3 datastore, SIGKILLed after 3 saves, while a quarter of the
    checkpoint requests fail; the retry resumes, and a notebook reads it all back."""
    host = s3_server.endpoint.split("://")[1]
    # Only checkpoint requests fail: Metaflow's own artifact I/O has its own retries,
    # with pauses of seconds, and is not what is tested here.
    with FaultProxy(host, share=0.25, max_consecutive=3, only="_implicit_checkpoints", seed=7) as proxy:
        root = tmp_path / "mf"
        root.mkdir()
        world = S3World(root, s3_server, endpoint=proxy.endpoint)
        proc = world.run_flow(RESUME_FLOW, "--crash", "kill", "--crash-after", "3", "--saves", "5")
        assert "Task is starting (retry)" in proc.stdout
        run_id = world.latest_run_id("ResumeFlow")
        state = task_state(world, run_id)
        assert state["count"] == 5 and state["weights_sum"] == 5000
        assert state["attempts_seen"] == [0, 0, 0, 1, 1]
        assert state["resumed_from"].endswith("/train/2/0/odd/3")
        assert [row[:3] for row in state["all"]] == [
            [1, 0, "odd"], [2, 0, "even"], [3, 0, "odd"], [4, 1, "even"], [5, 1, "odd"],
        ]
        assert state["newest_values"] == {"count": 5, "attempts_seen": [0, 0, 0, 1, 1]}
        view = notebook_view(world, run_id)
    assert proxy.failed > 0, proxy.failures

    # The checkpoints are in S3, under the flow's datastore root, and only there.
    manifests = [k for k in world.checkpoint_keys() if k.endswith(".manifest")]
    assert len(manifests) == 5
    assert all(k.startswith("ResumeFlow/_implicit_checkpoints/tasks/%s/train/2/" % run_id) for k in manifests)
    assert not list(world.root.rglob("_implicit_checkpoints"))
    assert view["store"] == "S3Backend"
    assert sorted(view["fields"]) == ["attempts_seen", "count", "resumed_from", "weights"]
    assert view["fields"]["weights"] >= 1000 * 8
    assert view["weights_sum"] == 5000 and view["holder_count"] == 5 and view["artifact_key"]


# -- Azure / GCS: the generic path through Metaflow's storage layer -----------------------


def test_datastores_without_their_own_backend_save_resume_and_touch(tmp_path):
    """Azure and GCS go through Metaflow's storage API (MetaflowStorageBackend); here that
    same code runs on Metaflow's local storage, posing as a datastore it has no shortcut for."""
    from metaflow.plugins.datastores.local_storage import LocalStorage

    from metaflow_extensions.implicit_checkpoint.plugins.metaflow_storage import MetaflowStorageBackend
    from metaflow_extensions.implicit_checkpoint.engine.errors import CheckpointException

    class OtherStorage(LocalStorage):
        TYPE = "other"

    def store():
        return CheckpointStore(MetaflowStorageBackend(OtherStorage(str(tmp_path))))

    state = State()
    state.big = random_array(5 * MiB, seed=6)
    state.small = [random_array(10 * 1024, seed=s) for s in range(10)]
    first = make_session(store(), state).save()
    # A new process re-saving the same state: the blobs exist and are renewed, not lost.
    second = make_session(store(), state, task_id="2").save()
    assert second.key != first.key
    loaded = State()
    reader = make_session(store(), loaded, attempt=1)
    assert reader.loaded.key == first.key
    reader.load()
    assert loaded.big.tobytes() == state.big.tobytes()

    backend = store().backend
    blob = next(p for p in tmp_path.rglob("*") if p.is_file() and "/blobs/" in str(p))
    relative = str(blob.relative_to(tmp_path))
    before = blob.stat().st_mtime_ns
    time.sleep(0.01)
    assert backend.touch([relative, "nowhere/blob"]) == [True, False]
    assert blob.stat().st_mtime_ns > before
    with pytest.raises(CheckpointException, match="not supported on the 'other' datastore"):
        backend.delete([relative])
    with pytest.raises(CheckpointException, match="gc, retention and load_policy='eager'"):
        list(backend.walk_files("UnitFlow"))
