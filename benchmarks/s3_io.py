"""Save / load of torch state dicts on S3: ours, and boto3 moving the same bytes as one object.

The S3 server is moto's, on 127.0.0.1, in a process of its own (started and stopped
here), so the server does not share this process's GIL. Our store gets its client the
way a flow does (plugins/store_binding.s3_backend: Metaflow's client provider and
configuration, with the endpoint pointing at the server). Every case is repeated on a fresh
prefix; medians are reported. The reference rows are one plain PUT and one plain GET of
the state's torch.save bytes (from and to memory): what the server needs to move those
bytes in a single request. (s3transfer's ranged parallel download is no reference on
moto: moto reads the whole object for every range request, so a 1 GB download in 8 MB
ranges took 90 s here.)
"""

import io
import os
import sys
import uuid
from pathlib import Path

import torch

from measure import median_of, timed
from states import change_share, nbytes, state_dict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from engine_helpers import State, make_session  # noqa: E402
from s3_server import BUCKET, FAKE_CREDENTIALS, REGION, moto_server_process, s3_client  # noqa: E402

from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore  # noqa: E402
from metaflow_extensions.implicit_checkpoint.plugins.store_binding import (  # noqa: E402
    S3_BLOB_WORKERS,
    s3_backend,
)


def run(workdir: Path, size_bytes: int, repeats: int) -> dict:
    """Return ``{"bytes": state size, "cases": {case: median seconds}}`` for one size.

    Starts (and stops) its own moto server; ``workdir`` is unused (the state lives in
    memory and on the server) and accepted for the same signature as local_io.run.
    """
    state = state_dict(size_bytes)
    samples = {}

    def add(case, seconds):
        samples.setdefault(case, []).append(seconds)

    with moto_server_process() as endpoint:
        os.environ.update(FAKE_CREDENTIALS, AWS_DEFAULT_REGION=REGION)
        client = s3_client(endpoint)
        for rep in range(repeats + 1):  # the first round warms up and is dropped
            root = "s3://%s/bench-%s" % (BUCKET, uuid.uuid4().hex[:8])

            def new_store() -> CheckpointStore:
                backend = s3_backend(root, client_params={"endpoint_url": endpoint})
                return CheckpointStore(backend, workers=S3_BLOB_WORKERS)

            holder = State()
            holder.model_state = state
            session = make_session(new_store(), holder, task_id=str(rep))
            add("ours save (s3)", timed(session.save))
            add("ours re-save unchanged (s3)", timed(session.save))
            change_share(state, 0.1, seed=rep)
            add("ours re-save 10% changed (s3)", timed(session.save))
            artifact = session.save()
            reader = make_session(new_store(), State(), attempt=1, task_id=str(rep))
            add("ours load (s3)", timed(lambda: reader.load(artifact)))
            # A resumed attempt saving the state it loaded: nothing to upload, but every
            # blob is confirmed (and its age renewed for gc) once.
            resumed = make_session(new_store(), holder, attempt=2, task_id=str(rep))
            add("ours re-save unchanged, new process (s3)", timed(resumed.save))

            serialized = io.BytesIO()
            torch.save(state, serialized)
            key = root[len("s3://%s/" % BUCKET) :] + "/reference.pt"

            def put():
                serialized.seek(0)
                client.put_object(Bucket=BUCKET, Key=key, Body=serialized)

            add("boto3 put_object of torch.save bytes", timed(put))
            add(
                "boto3 get_object of those bytes",
                timed(lambda: client.get_object(Bucket=BUCKET, Key=key)["Body"].read()),
            )
            _empty(client, root)
    return {"bytes": nbytes(state), "cases": {case: median_of(v[1:]) for case, v in samples.items()}}


def _empty(client, root: str) -> None:
    """Delete everything under ``root`` so the server does not accumulate gigabytes."""
    prefix = root[len("s3://%s/" % BUCKET) :] + "/"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        objects = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if objects:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": objects, "Quiet": True})


if __name__ == "__main__":
    import json

    size = int(float(sys.argv[1]) * 1024 * 1024) if len(sys.argv) > 1 else 100 * 1024 * 1024
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    print(json.dumps(run(Path("."), size, repeats), indent=2))
