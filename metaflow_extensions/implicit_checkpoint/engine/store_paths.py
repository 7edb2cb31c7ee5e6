"""Where everything lives in the checkpoint store, and how a path is read back.

Layout under the backend root (the flow datastore root)::

    <Flow>/_implicit_checkpoints/blobs/<h[:2]>/<h>              one blob, named by its hash
    <Flow>/_implicit_checkpoints/tasks/<run>/<step>/<task>/<attempt>/<version>.<name>.manifest
    <Flow>/_implicit_checkpoints/tasks/<run>/<step>/<task>/<attempt>/parts/<version>.<name>/<node>.part
    <Flow>/_implicit_checkpoints/tasks/<run>/<step>/<task>/<attempt>/nodes/<node>[.ended]
    <Flow>/_implicit_checkpoints/tasks/<run>/<step>/<task>.gang  a gang node's control task
    <Flow>/_implicit_checkpoints/latest/<step>/<branch>/<run>    a run's newest commit (a hint)
    <Flow>/_implicit_checkpoints/locks/...                      save leases, gc (locks.py)
    <Flow>/_implicit_checkpoints/tmp/.tmp-<lease>.<random>      temp files of a save in progress

Every path is built here and only here, from checked parts; every path the store lists
is parsed back by ``parse_task_file`` (or ``manifest_key`` for one listed file name).
"""

from dataclasses import dataclass
from typing import Optional, Sequence

from .errors import CheckpointCorrupted, CheckpointException
from .keys import CheckpointKey, is_valid_flow, is_valid_name
from .validation import describe, is_digest

ROOT = "_implicit_checkpoints"
MANIFEST_SUFFIX = ".manifest"
#: A node's part of a gang checkpoint, and the note a node that gave up leaves beside them.
PART_SUFFIX, ABORT = ".part", "abort"
GANG_SUFFIX = ".gang"
ENDED_SUFFIX = ".ended"
#: What a file under tasks/ is (TaskFile.kind).
MANIFEST, PART = "manifest", "part"


def blob_path(flow: str, digest: str) -> str:
    """Where blob ``digest`` lives. A digest from a manifest that is no digest never
    becomes a path."""
    if not is_digest(digest) or not is_valid_flow(flow):
        raise CheckpointCorrupted(
            "%s is not a blob of flow %s (a blob is named by 64 lowercase hex digits); "
            "the manifest naming it was altered or damaged." % (describe(digest), describe(flow))
        )
    return "%s/blobs/%s/%s" % (flow_root(flow), digest[:2], digest)


def flow_root(flow: str) -> str:
    """Everything of ``flow``'s checkpoints lies under this."""
    return "%s/%s" % (flow, ROOT)


def blobs_dir(flow: str) -> str:
    return flow_root(flow) + "/blobs"


def tasks_dir(flow: str) -> str:
    return flow_root(flow) + "/tasks"


def locks_dir(flow: str) -> str:
    return flow_root(flow) + "/locks"


def temp_root(flow: str) -> str:
    return flow_root(flow) + "/tmp"


def latest_dir(flow: str, step: str, foreach_indices: Sequence[int]) -> str:
    """Where each run's newest checkpoint of one step (and foreach index) is noted."""
    branch = "-".join(str(i) for i in foreach_indices) or "_"
    return "%s/latest/%s/%s" % (flow_root(flow), step, branch)


def run_dir(flow: str, run_id: str) -> str:
    return "%s/%s" % (tasks_dir(flow), run_id)


def task_dir(flow: str, run_id: str, step: str, task_id: str) -> str:
    return "%s/%s/%s" % (run_dir(flow, run_id), step, task_id)


def attempt_dir(flow: str, run_id: str, step: str, task_id: str, attempt: int) -> str:
    return "%s/%d" % (task_dir(flow, run_id, step, task_id), attempt)


def manifest_path(key: CheckpointKey) -> str:
    return "%s/%08d.%s%s" % (
        attempt_dir(key.flow, key.run_id, key.step, key.task_id, key.attempt),
        key.version,
        key.name,
        MANIFEST_SUFFIX,
    )


def parts_dir(key: CheckpointKey) -> str:
    """Where the nodes of a gang write their parts of checkpoint ``key``."""
    return "%s/parts/%08d.%s" % (
        attempt_dir(key.flow, key.run_id, key.step, key.task_id, key.attempt), key.version, key.name
    )


def part_path(key: CheckpointKey, node: int) -> str:
    return "%s/%d%s" % (parts_dir(key), node, PART_SUFFIX)


def abort_path(key: CheckpointKey, node: int) -> str:
    return "%s/%s.%d" % (parts_dir(key), ABORT, node)


def part_node(name: str) -> Optional[int]:
    """The node whose part a file in a parts folder is, or None."""
    stem = name[: -len(PART_SUFFIX)] if name.endswith(PART_SUFFIX) else ""
    return int(stem) if stem.isdigit() else None


def nodes_dir(flow: str, run_id: str, step: str, control_task_id: str, attempt: int) -> str:
    return attempt_dir(flow, run_id, step, control_task_id, attempt) + "/nodes"


def gang_pointer_path(flow: str, run_id: str, step: str, task_id: str) -> str:
    # Beside the task directories, not one of them: a run's listing skips it.
    return task_dir(flow, run_id, step, task_id) + GANG_SUFFIX


def manifest_key(
    flow: str, run_id: str, step: str, task_id: str, attempt: int, filename: str
) -> Optional[CheckpointKey]:
    """The key of the manifest named ``filename`` in an attempt's folder, or None when
    the file is no manifest (a temp file, a folder's name)."""
    if not filename.endswith(MANIFEST_SUFFIX):
        return None
    return _key(flow, run_id, step, task_id, attempt, filename[: -len(MANIFEST_SUFFIX)])


def _key(flow, run_id, step, task_id, attempt, stem) -> Optional[CheckpointKey]:
    version, _, name = stem.partition(".")
    if not version.isdigit() or not is_valid_name(name):
        return None
    return CheckpointKey(flow, run_id, step, task_id, attempt, name, int(version))


@dataclass(frozen=True)
class TaskFile:
    """A file under ``tasks/`` read back from its path: a committed manifest
    (``kind == MANIFEST``) or a file in the parts folder of a gang save (``PART``)."""

    kind: str
    key: CheckpointKey


def parse_task_file(flow: str, path: str) -> Optional[TaskFile]:
    """What the file at ``path`` (as listed under ``tasks_dir(flow)``) is, or None for
    anything else: a temp file, a node marker, ids the key rules reject."""
    top = tasks_dir(flow) + "/"
    if not path.startswith(top):
        return None
    parts = path[len(top) :].split("/")
    if len(parts) < 5 or not parts[3].isdigit():
        return None
    run_id, step, task_id, attempt = parts[0], parts[1], parts[2], int(parts[3])
    try:
        if len(parts) == 5:
            key = manifest_key(flow, run_id, step, task_id, attempt, parts[4])
            return TaskFile(MANIFEST, key) if key is not None else None
        if len(parts) == 7 and parts[4] == "parts":
            key = _key(flow, run_id, step, task_id, attempt, parts[5])
            return TaskFile(PART, key) if key is not None else None
    except CheckpointException:
        return None  # a run or task id the key rules reject: not ours
    return None
