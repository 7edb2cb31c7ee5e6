"""A real S3-compatible server on 127.0.0.1 (moto's), and Metaflow worlds that keep their
datastore in it.

Fixtures (import them into a test module to use them):

- ``s3_server``: one moto server for the session, with a bucket; stopped at the end.
- ``s3_world``: a MetaflowWorld whose datastore is S3 on that server, under a prefix
  of its own (metadata stays local, in the world's directory).
"""

import logging
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional

import boto3
import pytest
from moto.server import ThreadedMotoServer

from conftest import MetaflowWorld
from metaflow_extensions.implicit_checkpoint.engine.s3_backend import S3Backend, client_config

BUCKET = "checkpoint-tests"
REGION = "us-east-1"

#: Credentials moto accepts; never real ones.
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def s3_client(endpoint: str, connections: int = 16):
    """A boto3 S3 client for ``endpoint``, configured like the checkpoint backend's."""
    return boto3.session.Session(
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    ).client("s3", endpoint_url=endpoint, config=client_config(None, connections))


def create_bucket(endpoint: str, bucket: str = BUCKET) -> None:
    s3_client(endpoint).create_bucket(Bucket=bucket)


def metaflow_s3_env(endpoint: str, root: str) -> Dict[str, str]:
    """The environment that points Metaflow (and so the checkpoint store) at ``root``
    (``s3://bucket/prefix``) on the server at ``endpoint``."""
    return {
        **FAKE_CREDENTIALS,
        "AWS_DEFAULT_REGION": REGION,
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_DATASTORE_SYSROOT_S3": root,
        "METAFLOW_S3_ENDPOINT_URL": endpoint,
    }


class S3Server:
    """moto's S3 server on 127.0.0.1 (a free port), with one bucket."""

    def __init__(self, bucket: str = BUCKET):
        self.bucket = bucket
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)

    def start(self) -> "S3Server":
        # One log line per request otherwise.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = "http://%s:%d" % (host, port)
        create_bucket(self.endpoint, self.bucket)
        return self

    def stop(self) -> None:
        self._server.stop()

    def new_root(self) -> str:
        """A fresh ``s3://bucket/prefix`` no other test uses."""
        return "s3://%s/%s" % (self.bucket, uuid.uuid4().hex[:12])

    def client(self, endpoint: Optional[str] = None):
        return s3_client(endpoint or self.endpoint)

    def backend(self, root: str, endpoint: Optional[str] = None, **options) -> S3Backend:
        """The checkpoint S3 backend on ``root``, reached through ``endpoint`` (default:
        the server itself; pass a fault proxy's endpoint to go through it). ``options``
        go to S3Backend (retry, part_bytes, ...)."""
        return S3Backend(self.client(endpoint), root, **options)

    def logged_backend(self, root: str, endpoint: Optional[str] = None, **options):
        """Like ``backend``, and the RequestLog of the client it uses: ``(backend, log)``."""
        client = self.client(endpoint)
        return S3Backend(client, root, **options), RequestLog(client)

    def keys(self, root: str) -> list:
        """Every object key under ``root``, relative to it."""
        prefix = root[len("s3://%s/" % self.bucket) :].rstrip("/") + "/"
        keys = []
        for page in self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            keys.extend(obj["Key"][len(prefix) :] for obj in page.get("Contents", []))
        return keys


class S3World(MetaflowWorld):
    """A MetaflowWorld whose datastore lives on the S3 server (metadata stays local)."""

    def __init__(self, root: Path, server: S3Server, endpoint: Optional[str] = None):
        super().__init__(root)
        self.server = server
        self.s3_root = server.new_root()
        self.env.update(metaflow_s3_env(endpoint or server.endpoint, self.s3_root))

    def checkpoint_keys(self) -> list:
        """The keys of every checkpoint object of this world (relative to its root)."""
        return [k for k in self.server.keys(self.s3_root) if "/_implicit_checkpoints/" in k]


class RequestLog:
    """The S3 API calls a boto3 client makes: ``log["PutObject"]`` counts them, ``calls``
    lists ``(operation, key)`` in order."""

    def __init__(self, client):
        self.calls = []
        client.meta.events.register("before-parameter-build.s3.*", self._record)

    def _record(self, params, model, **_):
        self.calls.append((model.name, params.get("Key", "")))

    def reset(self) -> None:
        self.calls = []

    def __getitem__(self, operation: str) -> int:
        return sum(1 for name, _ in self.calls if name == operation)

    def on_keys_with(self, text: str, operation: Optional[str] = None) -> int:
        """How many calls (of ``operation``, or any) named a key containing ``text``."""
        return sum(
            1 for name, key in self.calls if text in key and operation in (None, name)
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def s3_world(tmp_path, s3_server) -> S3World:
    root = tmp_path / "mf"
    root.mkdir()
    return S3World(root, s3_server)


_SERVER_PROCESS = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the parent closes it
server.stop()
"""


@contextmanager
def moto_server_process(bucket: str = BUCKET) -> Iterator[str]:
    """A moto server in a process of its own (so it does not share the caller's GIL,
    as the benchmarks need); yields its endpoint, with ``bucket`` created."""
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVER_PROCESS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        endpoint = "http://127.0.0.1:%d" % int(process.stdout.readline())
        create_bucket(endpoint, bucket)
        yield endpoint
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def any_world(request):
    """The test runs twice: on the local datastore, and on the S3 server's."""
    return request.getfixturevalue("world" if request.param == "local" else "s3_world")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def any_store(request, tmp_path):
    """Makes stores (each a process's view) on one fresh root: a local folder, then a
    root on the S3 server. Engine tests of what S3's listing and overwrite rules could
    break run on both."""
    from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
    from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore

    if request.param == "local":
        return lambda: CheckpointStore(LocalDirBackend(str(tmp_path)))
    server = request.getfixturevalue("s3_server")
    root = server.new_root()
    return lambda: CheckpointStore(server.backend(root))
