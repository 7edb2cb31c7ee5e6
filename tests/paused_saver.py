"""A saver that stops itself (SIGSTOP) at one named instant of a save (test_lease_fence.py).

Usage: python paused_saver.py STORE POINT FLAG_FILE
STORE is a local folder or ``s3:ENDPOINT|s3://bucket/prefix``. At the first time the save
reaches POINT, the process writes FLAG_FILE and stops itself; the test runs gc, then
sends SIGCONT. The instants are backend calls, seen through a wrapper of this process's
own backend (nothing in the package changes):

    lease-taken            after the listing that took the save's lease
    before-blob-check      before the first blob is checked (stat) or hashed-and-written
    after-blob-check       after a blob was found stored (reused, not written)
    after-blob-write       after a blob was written
    temp-written           inside a one-pass blob write: its temp file is written, and
                           about to be published (or dropped, the blob being stored)
    before-manifest-write  before the manifest write (every check done)
    after-manifest-write   after the manifest write, before the commit fence
    after-fence            after the commit fence's listing

FENCE=off disables the commit fence (the control: what the fence prevents).
Prints one JSON line: the final checkpoint's key, how many manifests the save removed
again (the fence's uncommits), and the error of a save that failed.
"""

import json
import os
import signal
import sys
import threading
import traceback

import numpy as np

from engine_helpers import State, make_session
from metaflow_extensions.implicit_checkpoint.engine import locks
from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore


def fence_state(state: State) -> State:
    """The state the paused saver saves: ``old`` is also in the store, unreferenced."""
    state.old = np.arange(300_000.0)  # its blob is stored already: the save reuses it
    state.new = np.random.default_rng(7).random(100_000)  # a blob the save writes
    state.small = np.arange(10.0) + 0.5  # a packed blob: checked by a stat first
    return state


def make_backend(spec: str):
    if not spec.startswith("s3:"):
        return LocalDirBackend(spec)
    import boto3

    from metaflow_extensions.implicit_checkpoint.engine.s3_backend import S3Backend, client_config

    endpoint, root = spec[len("s3:") :].split("|")
    client = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client("s3", endpoint_url=endpoint, config=client_config(None, 4))
    return S3Backend(client, root)


def pausing(backend, point: str, flag: str) -> dict:
    """Wrap ``backend``'s calls so the process stops at ``point``; count manifest deletes."""
    fired, counts = [], {"uncommits": 0}

    def stop(name: str) -> None:
        if name == point and not fired:
            fired.append(name)
            with open(flag + ".tmp", "w") as out:
                out.write(name)
            os.rename(flag + ".tmp", flag)
            # To this thread: it stops on the spot (a signal to the process may be taken
            # by another thread a moment later, while this one goes on).
            signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)

    walk_files, stat_many, write, write_hashed, delete = (
        backend.walk_files, backend.stat_many, backend.write, backend.write_hashed, backend.delete
    )
    locks_walks = []

    def walk(prefix):
        found = list(walk_files(prefix))
        if prefix.endswith("/locks"):
            locks_walks.append(prefix)
            stop("lease-taken" if len(locks_walks) == 1 else "after-fence")
        return iter(found)

    inside = []  # write_hashed's own stat (its temp file is written): "temp-written"

    def stat(paths):
        if inside:
            stop("temp-written")
            return stat_many(paths)
        blobs = any("/blobs/" in p for p in paths)
        if blobs:
            stop("before-blob-check")
        sizes = stat_many(paths)
        if blobs and any(size is not None for size in sizes):
            stop("after-blob-check")
        return sizes

    def write_one(path, parts, durable, temp_prefix=None):
        manifest = path.endswith(".manifest")
        if manifest:
            stop("before-manifest-write")
        result = write(path, parts, durable, temp_prefix)
        if "/blobs/" in path:
            stop("after-blob-write")
        if manifest:
            stop("after-manifest-write")
        return result

    def write_by_hash(parts, durable, path_for_digest, temp_prefix):
        stop("before-blob-check")
        inside.append(1)
        try:
            digest, written = write_hashed(parts, durable, path_for_digest, temp_prefix)
        finally:
            inside.pop()
        stop("after-blob-write" if written else "after-blob-check")
        return digest, written

    def delete_some(paths):
        paths = list(paths)
        counts["uncommits"] += sum(1 for p in paths if p.endswith(".manifest"))
        return delete(paths)

    backend.walk_files, backend.stat_many, backend.write = walk, stat, write_one
    backend.write_hashed, backend.delete = write_by_hash, delete_some
    return counts


def main():
    spec, point, flag = sys.argv[1:4]
    if os.environ.get("FENCE") == "off":
        locks.Locks.fence = lambda self, locks_dir, lease: None
    backend = make_backend(spec)
    counts = pausing(backend, point, flag)
    # One worker: the blobs are checked and written one after another, so each instant
    # is reached with nothing else in flight.
    store = CheckpointStore(backend, workers=1)
    session = make_session(store, fence_state(State()), task_id="2")
    result = {"key": None, "error": None}
    try:
        if os.environ.get("BACKGROUND") == "1":  # committed by the background thread
            result["key"] = session.save(blocking=False).key
            session.wait()
        else:
            result["key"] = session.save().key
    except Exception as ex:  # reported to the test, which decides
        result["error"] = "%s: %s" % (type(ex).__name__, ex)
        traceback.print_exc()
    result.update(counts)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
