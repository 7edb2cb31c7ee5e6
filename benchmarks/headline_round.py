"""One round of the headline cases, for the checkout whose package this process imports.

    HEADLINE_TREE=TREE python benchmarks/headline_round.py WORKDIR SIZE_MB SEED [--peers]

``headline.py`` runs this script once per round and checkout, with ``HEADLINE_TREE``
naming the checkout's tree (the only one it imports the package from), so two versions
of the package are measured by the same harness, on
the same machine, in the same minutes. It prints one JSON object: the seconds (or rates)
of every case, and the file the package was imported from (the proof of which tree ran).

The cases, in this order, each timed save after os.sync():

- a background session (one task) of a step whose code saves in the background: it trains
  RETRY_TRAINS_FOR seconds, then its first ``save(blocking=False)`` (the step's first ever:
  its staging buffer followed the state from the task's start), one after every tensor changed, one after 10 % changed;
  then a retry of that task: it loads the newest checkpoint in place, trains for
  RETRY_TRAINS_FOR seconds (a sleep) and saves in the background (its first); then the
  same task in the next run (nothing to resume from): it builds its state, trains as
  long and saves in the background (its first);
- a synchronous session: its first save (all bytes), a re-save after 10 % changed;
- loads of the synchronous session's newest checkpoint, from the page cache: in place into
  a built model (tensors of the same shapes), and into new tensors (an empty holder);
- tiny states (three fields), saves per second, with defaults and with rng=False;
- the sound limits of the same bytes (physical_limit.py), measured in this round, each the
  fastest of LIMIT_TRIES tries (ours is timed once);
- with ``--peers``: dcp.save, dcp.async_save and dcp.load of the same state.
"""

import inspect
import json
import os
import shutil
import sys
import time
from concurrent.futures import Future
from pathlib import Path

HERE = Path(__file__).resolve().parent
TREE_ENV = "HEADLINE_TREE"


def _import_only_from(tree: str) -> None:
    """Drop from sys.path every other directory holding this package
    (an editable install of another checkout), so the package, and Metaflow's scan for
    extensions, see ``tree``'s alone."""
    sys.path[:] = [
        entry for entry in sys.path
        if os.path.realpath(entry or ".") == os.path.realpath(tree)
        or not os.path.isdir(os.path.join(entry or ".", "metaflow_extensions", "implicit_checkpoint"))
    ]
    sys.path.insert(0, tree)


if os.environ.get(TREE_ENV):
    _import_only_from(os.environ[TREE_ENV])
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import physical_limit  # noqa: E402
from measure import timed, timed_from_quiet_disk  # noqa: E402
from states import change_share, nbytes, state_dict  # noqa: E402

from metaflow_extensions.implicit_checkpoint import engine as engine_package  # noqa: E402
from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend  # noqa: E402
from metaflow_extensions.implicit_checkpoint.engine.session import (  # noqa: E402
    AttributeSource,
    CheckpointSession,
    TaskIdentity,
)
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore  # noqa: E402

TINY_SAVES = 300
#: Each sound limit is timed this many times in a round, the fastest kept.
LIMIT_TRIES = 2
#: Seconds a resumed task trains between its load and its first save.
RETRY_TRAINS_FOR = 1.0


class Holder:
    """Stands in for a step's ``self``: every attribute counts as assigned."""


def session_on(root: Path, holder: Holder, attempt: int = 0, run_id: str = "1", **kwargs) -> CheckpointSession:
    session = CheckpointSession(
        CheckpointStore(LocalDirBackend(str(root))),
        TaskIdentity("HeadlineFlow", run_id, "train", "1", attempt),
        AttributeSource(lambda: dict(vars(holder))),
        target=holder,
        **kwargs,
    )
    session.start()
    return session


def saves_in_background_hint() -> dict:
    """The session argument a step saving in the background gets, where the checkout has it
    (a baseline from before it saves as it did then)."""
    accepted = inspect.signature(CheckpointSession.__init__).parameters
    return {"saves_in_background": True} if "saves_in_background" in accepted else {}


def best_of(timer, action, tries: int = LIMIT_TRIES) -> float:
    """The fastest of ``tries`` timings of ``action``: a limit is what the machine can do."""
    return min(timer(action) for _ in range(tries))


def blob_files(root: Path) -> list:
    return sorted(
        os.path.join(d, f) for d, _, files in os.walk(root) if "/blobs" in d for f in files
    )


def background_blocked(session: CheckpointSession) -> float:
    os.sync()
    start = time.perf_counter()
    session.save(blocking=False)
    blocked = time.perf_counter() - start
    session.wait()
    return blocked


def measure_round(work: Path, size: int, seed: int, peers: bool) -> dict:
    figures = {}
    state = state_dict(size, seed=seed)
    tensors = list(state.values())

    # -- background saves, one session ------------------------------------------------
    holder = Holder()
    holder.model_state = state
    # A step whose code saves in the background (the decorator reads it from its source):
    # the task starts, builds its state, trains a moment and saves (its first ever).
    background = session_on(work / "background", holder, **saves_in_background_hint())
    time.sleep(RETRY_TRAINS_FOR)
    figures["ours: the task's first background save, blocked"] = background_blocked(background)
    change_share(state, 1.0, seed=seed + 1)
    figures["ours: background save, all changed, blocked"] = background_blocked(background)
    change_share(state, 0.1, seed=seed + 2)
    figures["ours: background re-save, 10% changed, blocked"] = background_blocked(background)
    background.finish()
    del background
    # A retry: it loads the checkpoint above in place, trains a moment, saves in the background.
    retry_holder = Holder()
    retry_holder.model_state = {name: torch.ones_like(t) for name, t in state.items()}
    retry = session_on(work / "background", retry_holder, attempt=1)
    retry.load()
    time.sleep(RETRY_TRAINS_FOR)
    change_share(retry_holder.model_state, 1.0, seed=seed + 4)
    figures["ours: a resumed task's first background save, blocked"] = background_blocked(retry)
    retry.finish()
    del retry, retry_holder
    # The next run of the flow: its task has nothing to resume from (load_policy="fresh"),
    # builds its model, trains a moment and saves in the background (its first).
    next_holder = Holder()
    next_holder.model_state = {name: torch.ones_like(t) for name, t in state.items()}
    next_run = session_on(work / "background", next_holder, run_id="2")
    time.sleep(RETRY_TRAINS_FOR)
    change_share(next_holder.model_state, 1.0, seed=seed + 5)
    figures["ours: the next run's first background save, blocked"] = background_blocked(next_run)
    next_run.finish()
    del next_run, next_holder
    shutil.rmtree(work / "background", ignore_errors=True)

    # -- synchronous saves, one session -----------------------------------------------
    synchronous = session_on(work / "sync", holder)
    figures["ours: sync save, first (all bytes)"] = timed_from_quiet_disk(synchronous.save)
    changed = [state[name] for name in change_share(state, 0.1, seed=seed + 3)]
    figures["ours: sync re-save, 10% changed"] = timed_from_quiet_disk(synchronous.save)
    newest = synchronous.list()[-1].key
    synchronous.finish()
    del synchronous

    limit_file = str(work / "limit.bin")
    figures["limit: hash all + write all + fdatasync"] = best_of(
        timed_from_quiet_disk,
        lambda: (physical_limit.hash_all(tensors), physical_limit.write_with_fdatasync(limit_file, tensors)),
    )
    figures["limit: hash all + write 10% changed + fdatasync"] = best_of(
        timed_from_quiet_disk,
        lambda: (physical_limit.hash_all(tensors), physical_limit.write_with_fdatasync(limit_file, changed)),
    )
    os.remove(limit_file)
    figures["limit: BLAKE3 of all bytes, all cores"] = best_of(timed, lambda: physical_limit.hash_all(tensors))
    copy_buffer = physical_limit.buffer_for(tensors)
    figures["limit: memcpy of all bytes"] = best_of(timed, lambda: physical_limit.copy_into(copy_buffer, tensors))
    copy_buffer = None  # freed before the loads

    # -- loads of the newest synchronous checkpoint (all in the page cache) -------------
    built = Holder()
    built.model_state = {name: torch.ones_like(t) for name, t in state.items()}
    reader = session_on(work / "sync", built, attempt=1)
    figures["ours: load in place into a built model"] = timed(lambda: reader.load(newest))
    reader = built = None
    fresh = Holder()
    reader = session_on(work / "sync", fresh, attempt=1)
    figures["ours: load into new tensors"] = timed(lambda: reader.load(newest))
    reader = fresh = None
    stored = blob_files(work / "sync")
    read_buffer = torch.empty(sum(os.path.getsize(p) for p in stored), dtype=torch.uint8).fill_(1)
    physical_limit.read_into(read_buffer, stored)  # in the page cache for sure
    figures["limit: page-cache read + hash, one pass"] = best_of(
        timed, lambda: physical_limit.read_and_hash(read_buffer, stored)
    )
    figures["limit: first touch of fresh memory"] = best_of(timed, lambda: physical_limit.first_touch(read_buffer.numel()))
    read_buffer = None

    # -- tiny states --------------------------------------------------------------------
    for case, kwargs in (("defaults", {}), ("rng=False", {"rng": False})):
        root = work / ("tiny-" + case)
        tiny = Holder()
        tiny.epoch, tiny.loss, tiny.history = 0, 1.0, [0.5, 0.25]
        session = session_on(root, tiny, **kwargs)
        start = time.perf_counter()
        for i in range(TINY_SAVES):
            tiny.epoch = i
            session.save(metadata={"step": i})
        figures["ours: tiny state, saves per second, %s" % case] = TINY_SAVES / (time.perf_counter() - start)
        session.finish()
        shutil.rmtree(root, ignore_errors=True)

    if peers:
        figures.update(peer_figures(work, state))
    shutil.rmtree(work / "sync", ignore_errors=True)
    figures["bytes"] = nbytes(state)
    return figures


def peer_figures(work: Path, state: dict) -> dict:
    """dcp.save (fsync), the blocking part of a first dcp.async_save, dcp.load in place."""
    import torch.distributed.checkpoint as dcp

    figures = {}
    figures["dcp.save (fsync)"] = timed_from_quiet_disk(lambda: dcp.save(state, checkpoint_id=str(work / "dcp")))
    os.sync()
    start = time.perf_counter()
    future = dcp.async_save(state, checkpoint_id=str(work / "dcp-async"))
    figures["dcp.async_save, first, blocked"] = time.perf_counter() - start
    if not isinstance(future, Future):  # newer torch returns a response holding futures
        future = future.upload_completion
    future.result()
    preallocated = {name: torch.ones_like(t) for name, t in state.items()}
    figures["dcp.load into a built state dict"] = timed(
        lambda: dcp.load(preallocated, checkpoint_id=str(work / "dcp"))
    )
    shutil.rmtree(work / "dcp", ignore_errors=True)
    shutil.rmtree(work / "dcp-async", ignore_errors=True)
    return figures


def main() -> None:
    work, size_mb, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        figures = measure_round(work, size_mb * 1024 * 1024, seed, "--peers" in sys.argv[4:])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures["package"] = os.path.dirname(engine_package.__file__)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
