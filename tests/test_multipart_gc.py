"""gc aborts the multipart uploads that saves killed mid-blob leave open on S3 (their parts
are kept, and billed, until someone aborts them), on the S3 test server: older than the
grace and owned by no live save, under the deleter's lock."""

import threading
import time

import numpy as np
import pytest

from engine_helpers import State, make_session
from s3_server import s3_server  # noqa: F401  (fixture)
from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
from metaflow_extensions.implicit_checkpoint.engine.gc import collect_garbage
from metaflow_extensions.implicit_checkpoint.engine.s3_backend import S3Backend
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore

MiB = 1024 * 1024
BLOB = "UnitFlow/_implicit_checkpoints/blobs/ab/ab" + "0" * 62


def killed_upload(server, root: str, path: str = BLOB) -> str:
    """Begin a multipart upload of ``path`` under ``root`` and send a part, as a save does
    before it is SIGKILLed; return its upload id."""
    client = server.client()
    key = "%s/%s" % (root[len("s3://%s/" % server.bucket) :], path)
    upload = client.create_multipart_upload(Bucket=server.bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=server.bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1024)
    return upload


def open_uploads(server, root: str) -> list:
    prefix = root[len("s3://%s/" % server.bucket) :] + "/"
    found = server.client().list_multipart_uploads(Bucket=server.bucket, Prefix=prefix)
    return sorted(u["UploadId"] for u in found.get("Uploads", []))


@pytest.mark.s3
def test_gc_aborts_abandoned_uploads_older_than_the_grace_and_only_its_flows(s3_server):
    root = s3_server.new_root()
    store = CheckpointStore(s3_server.backend(root))
    state = State()
    state.weights = np.arange(1000.0)
    make_session(store, state).save()
    abandoned = killed_upload(s3_server, root)
    other_flow = killed_upload(s3_server, root, "OtherFlow/_implicit_checkpoints/blobs/cd/cd" + "1" * 62)
    assert open_uploads(s3_server, root) == sorted([abandoned, other_flow])

    # Younger than the grace (on the server's clock, which gives the upload's age): kept.
    (pending,) = [u for u in store.backend.list_uploads("UnitFlow") if u.upload_id == abandoned]
    age = time.time() - pending.initiated
    kept = collect_garbage(store, "UnitFlow", grace=age + 3600)
    assert kept.aborted_uploads == 0 and kept.to_dict()["aborted_uploads"] == 0
    assert open_uploads(s3_server, root) == sorted([abandoned, other_flow])

    dry = collect_garbage(store, "UnitFlow", dry_run=True, grace=0)
    assert dry.aborted_uploads == 1
    assert open_uploads(s3_server, root) == sorted([abandoned, other_flow])

    report = collect_garbage(store, "UnitFlow", grace=0)
    assert report.aborted_uploads == 1 and report.to_dict()["aborted_uploads"] == 1
    assert open_uploads(s3_server, root) == [other_flow]  # another flow's store is not ours
    assert collect_garbage(store, "UnitFlow", grace=0).aborted_uploads == 0

    loaded = State()
    make_session(CheckpointStore(s3_server.backend(root)), loaded, attempt=1).load()
    assert loaded.weights.tobytes() == state.weights.tobytes()


class HeldUploadBackend(S3Backend):
    """Its first upload part waits for ``release``: a save in the middle of a large blob."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.uploading = threading.Event()
        self.release = threading.Event()

    def _upload_part(self, path, key, upload_id, parts, number, size):
        if number == 1 and not self.release.is_set():
            self.uploading.set()
            assert self.release.wait(timeout=60)
        return super()._upload_part(path, key, upload_id, parts, number, size)


@pytest.mark.s3
def test_gc_never_aborts_the_upload_of_a_live_save(s3_server):
    root = s3_server.new_root()
    backend = HeldUploadBackend(s3_server.client(), root, part_bytes=5 * MiB)
    state = State()
    state.weights = np.random.default_rng(3).random(6 * MiB // 8)  # one blob, two parts
    session = make_session(CheckpointStore(backend), state)
    saving = threading.Thread(target=session.save)
    saving.start()
    try:
        assert backend.uploading.wait(timeout=30)
        assert len(open_uploads(s3_server, root)) == 1
        report = collect_garbage(CheckpointStore(s3_server.backend(root)), "UnitFlow", grace=0, wait=1)
        assert report.busy and report.aborted_uploads == 0  # the save's lease kept gc out
        assert len(open_uploads(s3_server, root)) == 1
    finally:
        backend.release.set()
        saving.join(timeout=60)
    assert open_uploads(s3_server, root) == []  # completed
    loaded = State()
    make_session(CheckpointStore(s3_server.backend(root)), loaded, attempt=1).load()
    assert loaded.weights.tobytes() == state.weights.tobytes()


class PagedClient:
    """Answers list_multipart_uploads in pages of one, as S3 does past 1000 uploads."""

    def __init__(self, keys):
        self.keys = keys
        self.calls = []

    def list_multipart_uploads(self, **args):
        self.calls.append(args)
        start = self.keys.index(args["KeyMarker"]) + 1 if "KeyMarker" in args else 0
        key = self.keys[start]
        page = {"Uploads": [{"Key": key, "UploadId": "id-" + key, "Initiated": _an_hour_ago()}]}
        if start + 1 < len(self.keys):
            page.update(IsTruncated=True, NextKeyMarker=key, NextUploadIdMarker="id-" + key)
        return page


def _an_hour_ago():
    from datetime import datetime, timedelta, timezone

    return datetime.now(timezone.utc) - timedelta(hours=1)


def test_upload_listing_reads_every_page_and_other_backends_have_none(tmp_path):
    keys = ["pre/UnitFlow/_implicit_checkpoints/blobs/%02d" % i for i in range(3)]
    client = PagedClient(keys)
    uploads = S3Backend(client, "s3://bucket/pre").list_uploads("UnitFlow/_implicit_checkpoints")
    assert [u.path for u in uploads] == [k[len("pre/") :] for k in keys]
    assert [u.upload_id for u in uploads] == ["id-" + k for k in keys]
    assert all(abs(time.time() - 3600 - u.initiated) < 60 for u in uploads)
    assert [c.get("KeyMarker") for c in client.calls] == [None, keys[0], keys[1]]
    assert all(c["Prefix"] == "pre/UnitFlow/_implicit_checkpoints/" for c in client.calls)

    local = LocalDirBackend(str(tmp_path))
    assert local.list_uploads("UnitFlow/_implicit_checkpoints") == []
    local.abort_uploads([])
    assert collect_garbage(CheckpointStore(local), "UnitFlow", grace=0).aborted_uploads == 0
