"""Save / load of a torch state dict on S3 (a moto server on 127.0.0.1): ours, boto3 moving
the same objects, and metaflow-checkpoint.

What each figure measures, plainly:

- Every round starts each client on a server of its own, fresh and empty (moto in a
  process of its own, so it does not share the caller's GIL), and every timed save runs
  after one untimed warm-up save of the same state on that server: at the timed save,
  each server holds one earlier copy of the state. Equal server state for ours and the
  peer.
- "boto3, same objects": plain ``put_object`` / ``get_object`` of objects with exactly the
  sizes and count of the blobs our save wrote, from and into memory, with as many threads
  as our store uses. Equal object sizes: the figure says what our client adds over
  moving those bytes as those requests.
- metaflow-checkpoint stores one torch.save file and reads it back with Metaflow's S3
  client, which downloads a large object in ranged parts; moto reads the whole object for
  every ranged GET, so its load figure measures moto, and no load ratio is reported.
"""

import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import peer_metaflow_checkpoint
from measure import Rounds, timed
from states import change_share, state_dict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from engine_helpers import State, make_session  # noqa: E402
from s3_server import BUCKET, FAKE_CREDENTIALS, REGION, metaflow_s3_env, moto_server_process, s3_client  # noqa: E402

from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey  # noqa: E402
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore  # noqa: E402
from metaflow_extensions.implicit_checkpoint.plugins.store_binding import (  # noqa: E402
    S3_BLOB_WORKERS,
    s3_backend,
)


def _store(endpoint: str, root: str) -> CheckpointStore:
    return CheckpointStore(s3_backend(root, client_params={"endpoint_url": endpoint}), workers=S3_BLOB_WORKERS)


def _ours(rounds: Rounds, endpoint: str, state: dict) -> list:
    """Our cases on the server at ``endpoint``; returns the sizes of the blobs of the first save."""
    add = rounds.add
    holder = State()
    holder.model_state = state
    make_session(_store(endpoint, "s3://%s/warm-up" % BUCKET), holder, task_id="warm-up").save()
    root = "s3://%s/ours-%s" % (BUCKET, uuid.uuid4().hex[:8])
    session = make_session(_store(endpoint, root), holder)
    add("ours save", timed(session.save))
    first = session.list()[-1]
    add("ours re-save, unchanged", timed(session.save))
    change_share(state, 0.1, seed=rounds.round)
    add("ours re-save, 10% changed", timed(session.save))
    artifact = session.save()
    reader = make_session(_store(endpoint, root), State(), attempt=1)
    add("ours load", timed(lambda: reader.load(artifact)))
    # A resumed attempt saving the state it loaded: nothing to upload, but every blob is
    # confirmed (and its age renewed for gc) once.
    resumed = make_session(_store(endpoint, root), holder, attempt=2)
    add("ours re-save, unchanged, new process", timed(resumed.save))
    manifest = _store(endpoint, root).read_manifest(CheckpointKey.parse(first.key))
    return list(manifest.storage.blobs.values())


def _same_objects(rounds: Rounds, endpoint: str, sizes: list) -> None:
    """boto3 PUTs then GETs objects of ``sizes`` (bytes from memory), S3_BLOB_WORKERS at a time."""
    client = s3_client(endpoint)
    payload = os.urandom(max(sizes))
    prefix = "boto3-%s/" % uuid.uuid4().hex[:8]
    keys = [prefix + str(i) for i in range(len(sizes))]
    with ThreadPoolExecutor(S3_BLOB_WORKERS) as pool:

        def put_all():
            list(pool.map(lambda k, n: client.put_object(Bucket=BUCKET, Key=k, Body=payload[:n]), keys, sizes))

        def get_all():
            list(pool.map(lambda k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read(), keys))

        # Like ours: one warm-up copy on the server first.
        list(pool.map(lambda k, n: client.put_object(Bucket=BUCKET, Key="warm-up/" + k, Body=payload[:n]), keys, sizes))
        rounds.add("boto3, same objects: put_object of each", timed(put_all))
        rounds.add("boto3, same objects: get_object of each", timed(get_all))


def _peer(rounds: Rounds, workdir: Path, size_bytes: int) -> None:
    with moto_server_process() as endpoint:
        env = metaflow_s3_env(endpoint, "s3://%s/peer" % BUCKET)
        measured = peer_metaflow_checkpoint.measure(workdir, size_bytes, 1, env_overrides=env)
    rounds.add("metaflow-checkpoint: torch.save + its save()", measured["save"][0])
    rounds.add("metaflow-checkpoint: its load() + torch.load", measured["load"][0])


def run_round(rounds: Rounds, workdir: Path, state: dict, size_bytes: int) -> int:
    """One round: ours, boto3 with the same objects, metaflow-checkpoint, each on a fresh
    server. Returns the number of objects our first save wrote."""
    os.environ.update(FAKE_CREDENTIALS, AWS_DEFAULT_REGION=REGION)
    with moto_server_process() as endpoint:
        sizes = _ours(rounds, endpoint, state)
    with moto_server_process() as endpoint:
        _same_objects(rounds, endpoint, sizes)
    _peer(rounds, workdir, size_bytes)
    return len(sizes)


if __name__ == "__main__":
    import json

    size = int(float(sys.argv[1]) * 1024 * 1024) if len(sys.argv) > 1 else 100 * 1024 * 1024
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rounds = Rounds()
    state = state_dict(size)
    for _ in range(count + 1):
        run_round(rounds, Path("."), state, size)
        rounds.next_round()
    print(json.dumps(rounds.to_json(), indent=1))
