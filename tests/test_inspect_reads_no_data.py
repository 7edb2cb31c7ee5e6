"""inspect() reads a checkpoint's manifest and nothing else, from a fresh client that has
cached nothing: every read path is counted (``read`` and ``read_into`` locally, every
GET on S3), and the session that inspects is a different process's view of the store."""

import torch
import pytest

from engine_helpers import CountingBackend, State, local_store, make_session
from s3_server import s3_server  # noqa: F401  (fixture)
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore


def saved_state():
    state = State()
    state.model_state = {"w": torch.randn(512, 1024), "b": torch.randn(1024)}
    state.history = list(range(1000))
    state.note = "inspect me"
    return state


def test_inspect_on_local_disk_reads_only_the_manifest(tmp_path):
    artifact = make_session(local_store(tmp_path), saved_state()).save()

    backend = CountingBackend(str(tmp_path))
    inspector = make_session(CheckpointStore(backend), State(), task_id="inspector")
    manifest = inspector.inspect(artifact.key)

    assert sorted(manifest["fields"]) == ["history", "model_state", "note"]
    assert backend.blob_reads == 0
    assert len(backend.reads) == 1 and backend.reads[0].endswith(".manifest"), backend.reads

    # The counter sees blob reads when there are some: load reads them.
    make_session(CheckpointStore(backend), State(), task_id="loader").load(artifact.key)
    assert backend.blob_reads > 0


@pytest.mark.s3
def test_inspect_on_s3_gets_only_the_manifest(s3_server):
    root = s3_server.new_root()
    artifact = make_session(CheckpointStore(s3_server.backend(root)), saved_state()).save()

    backend, requests = s3_server.logged_backend(root)
    inspector = make_session(CheckpointStore(backend), State(), task_id="inspector")
    requests.reset()
    manifest = inspector.inspect(artifact.key)

    assert sorted(manifest["fields"]) == ["history", "model_state", "note"]
    gets = [key for operation, key in requests.calls if operation == "GetObject"]
    assert len(gets) == 1 and gets[0].endswith(".manifest"), requests.calls
    assert requests.on_keys_with("/blobs/") == 0
