"""Save / load / inspect of one torch state dict on local disk: ours, its peers, the hardware.

One call of ``run_round`` times every case once, in a fixed interleaved order (ours, then
each peer, then ours again for the next kind of operation), so that the disk's changing
speed hits ours and the peers within the same minute. Every timed save starts from a quiet
disk (os.sync() first). Round 0 is the warm-up.

Durability of each case (compare like with like):

- ours, default (``fsync``): each blob and the manifest are written to a temporary file,
  fdatasync'ed, renamed into place, and the directory fsync'ed; ``no fsync``: none of it
  (METAFLOW_CHECKPOINT_FSYNC=0).
- ``dcp.save``: see DCP_DURABILITY; ``no fsync``: sync_files=False.
- safetensors ``save_file`` and ``torch.save``: one file, then one fsync of it (``fsync``).
"""

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from safetensors.torch import load_file as safetensors_load_file
from safetensors.torch import save_file as safetensors_save_file

import physical_limit
from measure import Rounds, fsync_path, timed, timed_from_quiet_disk
from states import change_share, state_dict

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from engine_helpers import State, make_session  # noqa: E402

from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend  # noqa: E402
from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey  # noqa: E402
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore  # noqa: E402

INSPECT_PROBE = HERE / "inspect_probe.py"


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def new_session(root: Path, state: dict, durable: bool = True, attempt: int = 0, task_id: str = "1"):
    """A session on a local store at ``root`` whose step holds ``state`` as ``model_state``
    (defaults otherwise: rng=True)."""
    holder = State()
    holder.model_state = state
    store = CheckpointStore(LocalDirBackend(str(root)), durable=durable)
    return make_session(store, holder, attempt=attempt, task_id=task_id)


def stored_blob_files(root: Path, artifact) -> list:
    """The files holding a checkpoint's blobs (RNG state included)."""
    store = CheckpointStore(LocalDirBackend(str(root)))
    key = CheckpointKey.parse(artifact.key)
    manifest = store.read_manifest(key)
    flow = key.flow
    return [store.backend.describe(store.blob_path(flow, digest)) for digest in manifest.storage.blobs]


#: What torch 2.13's FileSystemWriter does (read in torch/distributed/checkpoint/filesystem.py).
DCP_DURABILITY = (
    "dcp.save (FileSystemWriter, default sync_files=True) fsyncs every data file and its .metadata,"
    " then renames .metadata into place, without fsyncing the directory"
)


def _background(session) -> tuple:
    """(seconds the step was blocked, seconds until committed) of one background save."""
    os.sync()
    start = time.perf_counter()
    session.save(blocking=False)
    blocked = time.perf_counter() - start
    session.wait()
    return blocked, time.perf_counter() - start


def _dcp_async(state: dict, path: Path, stager=None) -> tuple:
    """(seconds blocked, seconds until committed) of one dcp.async_save."""
    os.sync()
    start = time.perf_counter()
    future = dcp.async_save(state, checkpoint_id=str(path), async_stager=stager)
    blocked = time.perf_counter() - start
    if not isinstance(future, Future):  # newer torch returns a response holding futures
        future = future.upload_completion
    future.result()
    return blocked, time.perf_counter() - start


def cold_inspect_seconds(root: Path, key: str) -> float:
    """Seconds of inspect() in a fresh process, on a fresh store (nothing cached)."""
    out = subprocess.run(
        [sys.executable, str(INSPECT_PROBE), str(root), key],
        check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


def run_round(
    rounds: Rounds,
    workdir: Path,
    state: dict,
    peer_round: Optional[Callable[[Rounds], None]] = None,
) -> dict:
    """Time every local case once into ``rounds``; return byte counts of this round."""
    add = rounds.add
    seed = 1000 * rounds.round
    work = fresh_dir(workdir / "io")
    st_file, pt_file = str(work / "state.safetensors"), str(work / "state.pt")
    tensors = list(state.values())

    # -- first saves of the whole state, at two durabilities --------------------------------
    sessions = {}
    for durable, tag in ((True, "fsync"), (False, "no fsync")):
        dcp_dir = work / ("dcp-" + tag.replace(" ", "-"))

        def st_save():
            safetensors_save_file(state, st_file)
            if durable:
                fsync_path(st_file)

        def pt_save():
            torch.save(state, pt_file)
            if durable:
                fsync_path(pt_file)

        def dcp_save():
            dcp.save(state, storage_writer=dcp.FileSystemWriter(str(dcp_dir), sync_files=durable))

        sessions[tag] = new_session(work / ("ours-" + tag.replace(" ", "-")), state, durable)
        add("ours sync save (%s)" % tag, timed_from_quiet_disk(sessions[tag].save))
        add("dcp.save (%s)" % tag, timed_from_quiet_disk(dcp_save))
        add("safetensors save_file (%s)" % tag, timed_from_quiet_disk(st_save))
        add("torch.save (%s)" % tag, timed_from_quiet_disk(pt_save))
    limit_file = str(work / "limit.bin")
    add("limit: write all bytes + fdatasync",
        timed_from_quiet_disk(lambda: physical_limit.write_with_fdatasync(limit_file, tensors)))
    os.remove(limit_file)

    # -- re-saves (sync, fsync) ------------------------------------------------------------
    session = sessions["fsync"]
    add("ours sync re-save, unchanged", timed_from_quiet_disk(session.save))
    written = {"sync re-save, unchanged": session.list()[-1].implicit_manifest["bytes_written"]}
    changed = [state[name] for name in change_share(state, 0.1, seed=seed)]
    add("ours sync re-save, 10% changed", timed_from_quiet_disk(session.save))
    add("limit: write 10% changed bytes + fdatasync",
        timed_from_quiet_disk(lambda: physical_limit.write_with_fdatasync(limit_file, changed)))
    os.remove(limit_file)
    artifact = session.list()[-1]

    # -- background saves: ours, then dcp.async_save ----------------------------------------
    background = new_session(fresh_dir(work / "background"), state)
    blocked, total = _background(background)
    add("ours background save, first: blocking", blocked)
    add("ours background save, first: until committed", total)
    blocked, total = _dcp_async(state, work / "dcp-async-0")
    add("dcp.async_save, first: blocking", blocked)
    add("dcp.async_save, first: until committed", total)
    change_share(state, 1.0, seed=seed + 1)
    blocked, total = _background(background)
    add("ours background save, all changed: blocking", blocked)
    add("ours background save, all changed: until committed", total)
    blocked, total = _dcp_async(state, work / "dcp-async-1")
    add("dcp.async_save, again: blocking", blocked)
    add("dcp.async_save, again: until committed", total)
    # A stager kept across calls keeps its CPU copy (FileSystemWriter's own
    # cache_staged_state_dict needs pinned memory, hence an accelerator).
    stager = DefaultStager(StagingOptions(False, False, False, False))
    _dcp_async(state, work / "dcp-async-cached-0", stager)  # allocates its staging copy
    blocked, total = _dcp_async(state, work / "dcp-async-cached-1", stager)
    stager.close()
    add("dcp.async_save, staging cached, again: blocking", blocked)
    add("dcp.async_save, staging cached, again: until committed", total)
    copy_buffer = physical_limit.buffer_for(tensors)
    add("limit: memcpy of all bytes", timed(lambda: physical_limit.copy_into(copy_buffer, tensors)))
    blocked, _ = _background(background)
    add("ours background re-save, unchanged: blocking", blocked)
    written["background re-save, unchanged"] = background.list()[-1].implicit_manifest["bytes_written"]
    changed = [state[name] for name in change_share(state, 0.1, seed=seed + 2)]
    blocked, _ = _background(background)
    add("ours background re-save, 10% changed: blocking", blocked)
    add("limit: memcpy of 10% changed bytes", timed(lambda: physical_limit.copy_into(copy_buffer, changed)))
    background.finish()
    del copy_buffer

    # -- loads (every file was just written: all read from the page cache) -------------------
    reader = new_session(work / "ours-fsync", {}, attempt=1)
    add("ours load", timed(lambda: reader.load(artifact)))
    del reader
    preallocated = {name: torch.empty_like(t) for name, t in state.items()}
    add("dcp.load into a preallocated state dict",
        timed(lambda: dcp.load(preallocated, checkpoint_id=str(work / "dcp-fsync"))))
    del preallocated
    add("torch.load", timed(lambda: torch.load(pt_file)))
    add("safetensors load_file", timed(lambda: safetensors_load_file(st_file)))
    blob_files = stored_blob_files(work / "ours-fsync", artifact)
    read_buffer = torch.empty(sum(os.path.getsize(p) for p in blob_files), dtype=torch.uint8)
    physical_limit.read_into(read_buffer, blob_files)  # in the page cache for sure, buffer written
    add("limit: read the stored bytes from page cache",
        timed(lambda: physical_limit.read_into(read_buffer, blob_files)))
    del read_buffer

    # -- inspect: on the session that saved (manifest cached), and from a fresh process ---
    add("ours inspect, cached", timed(lambda: session.inspect(artifact.key)))
    add("ours inspect, fresh process", cold_inspect_seconds(work / "ours-fsync", artifact.key))

    if peer_round is not None:
        peer_round(rounds)
    shutil.rmtree(work, ignore_errors=True)
    return written
