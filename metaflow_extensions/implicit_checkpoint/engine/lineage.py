"""The lineage of a checkpoint: the chain of checkpoints it descends from, and the
checkpoint of another run a task resumes from eagerly.

Every manifest records ``parent``: the key of the checkpoint its attempt had loaded
when it saved (None when the attempt started fresh). Following parents key by key
gives the chain a resumed task descends from, across the attempts of a task and, with
eager resume, across runs. A parent may be gone (removed by retention or gc) or
damaged; the walk then ends at it and says why, instead of failing.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, List, Optional, Sequence

from .errors import CheckpointCorrupted, CheckpointException, CheckpointNotFound
from .keys import CheckpointKey
from .store import CheckpointStore

#: Longest chain followed; a run resumed more often than this shows its newest links.
MAX_LINKS = 100


@dataclass(frozen=True)
class LineageLink:
    """One checkpoint of a lineage chain.

    ``manifest`` is its public manifest, or None when it could not be read; ``problem``
    then says why (the chain goes no further back than such a link).
    """

    key: str
    manifest: Optional[dict] = None
    problem: Optional[str] = None

    @property
    def readable(self) -> bool:
        return self.manifest is not None


def lineage(
    store: CheckpointStore, key: Optional[str], limit: int = MAX_LINKS
) -> List[LineageLink]:
    """The chain that ends at checkpoint ``key``: oldest ancestor first, ``key`` last.

    [] when ``key`` is None. Stops cleanly at a missing, damaged or malformed parent
    (that link is included, with its ``problem``), at a repeated key, and after
    ``limit`` links.
    """
    chain: List[LineageLink] = []
    seen = set()
    current = key
    while current is not None and len(chain) < limit:
        if current in seen:
            chain.append(LineageLink(current, problem="already in this chain (a cycle)"))
            break
        seen.add(current)
        link = _read_link(store, current)
        chain.append(link)
        if not link.readable:
            break
        current = link.manifest.get("parent")
    chain.reverse()
    return chain


def _read_link(store: CheckpointStore, key: str) -> LineageLink:
    try:
        manifest = store.read_manifest(CheckpointKey.parse(key))
    except CheckpointNotFound:
        return LineageLink(key, problem="no longer stored (removed by retention or gc)")
    except CheckpointCorrupted as ex:
        return LineageLink(key, problem="unreadable: %s" % ex)
    except CheckpointException as ex:
        return LineageLink(key, problem="not readable: %s" % ex)
    except Exception as ex:  # storage errors: the chain shows it rather than failing
        return LineageLink(key, problem="could not be read: %s: %s" % (type(ex).__name__, ex))
    return LineageLink(key, manifest=manifest.public())


def find_origin_resume_point(
    store: CheckpointStore,
    flow: str,
    origin_run_id: str,
    step: str,
    foreach_indices: Sequence[int],
    usable: Callable[[CheckpointKey, dict], bool],
) -> Optional[dict]:
    """The manifest of the newest usable checkpoint of the origin run's same task.

    Metaflow's ``resume`` re-executes a step as a new task of a new run; its origin task
    is the origin run's task of the same step and foreach index, and counts as an
    earlier attempt of it.
    """
    best, best_time = None, float("-inf")
    for task_step, task_id in store.list_run_tasks(flow, origin_run_id):
        if task_step != step:
            continue
        for key in reversed(store.list_keys(flow, origin_run_id, step, task_id)):
            try:
                manifest = store.read_manifest(key)
            except (CheckpointCorrupted, CheckpointNotFound):
                continue
            if list(manifest.foreach_indices) != list(foreach_indices):
                break  # another branch of the foreach: all of this task's are
            if usable(key, manifest):
                created = datetime.fromisoformat(manifest.created_on).timestamp()
                if created > best_time:
                    best, best_time = manifest, created
                break
    return best


def find_eager_resume_point(
    store: CheckpointStore,
    flow: str,
    step: str,
    foreach_indices: Sequence[int],
    before: float,
    exclude_run: str,
    accept_run: Callable[[str], bool],
    usable: Callable[[CheckpointKey, dict], bool],
) -> Optional[dict]:
    """The manifest of the newest committed checkpoint of ``step`` / ``foreach_indices``
    in another run, created before ``before`` (epoch seconds), in a run ``accept_run``
    accepts, that ``usable`` accepts (e.g. intact).

    Each run notes which task committed its newest checkpoint of a step (latest_notes.py);
    runs are visited newest note first, and a run whose note is older than the best
    checkpoint found cannot hold a newer one.
    """
    best, best_time = None, float("-inf")
    for noted_at, run_id in sorted(store.notes.runs(flow, step, foreach_indices), reverse=True):
        if noted_at < best_time:
            break
        if run_id == exclude_run or not accept_run(run_id):
            continue
        found = _newest_of_run_before(store, flow, run_id, step, foreach_indices, before, usable)
        if found is not None and found[1] > best_time:
            best, best_time = found
    return best


def _newest_of_run_before(store, flow, run_id, step, foreach_indices, before, usable):
    noted = store.notes.read(flow, step, foreach_indices, run_id)
    if noted is None:
        return None
    for key in reversed(store.list_keys(flow, run_id, step, noted.task_id)):
        try:
            manifest = store.read_manifest(key)
        except (CheckpointCorrupted, CheckpointNotFound):
            continue  # damaged, or removed by retention since the listing
        created = datetime.fromisoformat(manifest.created_on).timestamp()
        same_branch = list(manifest.foreach_indices) == list(foreach_indices)
        if created < before and same_branch and usable(key, manifest):
            return manifest, created
    return None
