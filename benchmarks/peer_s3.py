"""metaflow-checkpoint's save and load of the benchmark state on a local moto S3 server."""

import sys
from pathlib import Path

import peer_metaflow_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from s3_server import BUCKET, metaflow_s3_env, moto_server_process  # noqa: E402


def measure(workdir: Path, size_bytes: int, repeats: int) -> dict:
    """Like peer_metaflow_checkpoint.measure, with the peer flow's datastore on S3."""
    with moto_server_process() as endpoint:
        env = metaflow_s3_env(endpoint, "s3://%s/peer" % BUCKET)
        return peer_metaflow_checkpoint.measure(workdir, size_bytes, repeats, env_overrides=env)
