"""What Metaflow's metadata says about a task's attempts: how each ended, what it loaded.

A task records ``attempt_ok`` (True / False) for an attempt when the attempt ends
normally or with an exception. An attempt killed hard (os._exit, SIGKILL, out of
memory, a reclaimed machine) records nothing: it is "killed" once a later attempt has
started, and indistinguishable from "running" while it is the newest.

When a step loads a checkpoint, @checkpoint records its key as the attempt's
``checkpoint-loaded`` metadata, so "resumed from" is known even for an attempt that
loaded and then saved nothing.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional

SUCCEEDED = "succeeded"
FAILED = "failed"
KILLED = "killed"
RUNNING = "running"

LOADED_FIELD = "checkpoint-loaded"


@dataclass(frozen=True)
class AttemptRecord:
    attempt: int
    status: str
    loaded: Optional[str]  # key of the checkpoint the attempt loaded last, if any


def attempt_records(pathspec: str) -> List[AttemptRecord]:
    """Every attempt of the task, oldest first ([] if it never started)."""
    from metaflow import Task
    from metaflow.exception import MetaflowNotFound

    try:
        newest = Task(pathspec).current_attempt
    except MetaflowNotFound:
        return []
    records = []
    for attempt in range(newest + 1):
        metadata = Task(pathspec, attempt=attempt).metadata_dict
        ok = metadata.get("attempt_ok")
        if ok == "True":
            status = SUCCEEDED
        elif ok == "False":
            status = FAILED
        else:
            status = KILLED if attempt < newest else RUNNING
        records.append(AttemptRecord(attempt, status, metadata.get(LOADED_FIELD)))
    return records


@contextmanager
def client_reading(metadata_provider) -> Iterator[None]:
    """Inside a task: Metaflow's client pointed at the task's own metadata provider, in
    every namespace (what ``card create`` sets up in its subprocess), for the duration;
    the client's previous settings are restored afterwards."""
    from metaflow import get_metadata, get_namespace, metadata, namespace

    previous_metadata, previous_namespace = get_metadata(), get_namespace()
    metadata("%s@%s" % (metadata_provider.TYPE, metadata_provider.default_info()))
    namespace(None)
    try:
        yield
    finally:
        metadata(previous_metadata)
        namespace(previous_namespace)


def attempt_statuses(pathspec: str) -> List[str]:
    """The status of every attempt of the task, oldest first."""
    return [record.status for record in attempt_records(pathspec)]


def record_loaded(metadata_provider, run_id: str, step: str, task_id: str, attempt: int, key: str) -> None:
    """Note in the task's metadata that ``attempt`` loaded checkpoint ``key``."""
    from metaflow.metadata_provider import MetaDatum

    metadata_provider.register_metadata(
        run_id,
        step,
        task_id,
        [MetaDatum(field=LOADED_FIELD, value=key, type="checkpoint", tags=["attempt_id:%d" % attempt])],
    )
