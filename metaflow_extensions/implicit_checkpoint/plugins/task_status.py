"""What Metaflow's metadata says about a task's attempts: how each ended, what it loaded.

A task records ``attempt_ok`` (True / False) for an attempt when the attempt ends
normally or with an exception. An attempt killed hard (os._exit, SIGKILL, out of
memory, a reclaimed machine) records nothing: it is "killed" once a later attempt has
started. While it is the newest, the process it ran in tells: @checkpoint records it
(``checkpoint-process``: host, boot, pid and the process's start time) when the attempt
starts, so on that machine an attempt whose process is gone is "killed", not
"running". From another machine it reads "running" until a later attempt starts or the
run is over (``checkpoint status`` decides that).

When a step loads a checkpoint, @checkpoint records its key as the attempt's
``checkpoint-loaded`` metadata, so "resumed from" is known even for an attempt that
loaded and then saved nothing.
"""

import json
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional

SUCCEEDED = "succeeded"
FAILED = "failed"
KILLED = "killed"
RUNNING = "running"

LOADED_FIELD = "checkpoint-loaded"
PROCESS_FIELD = "checkpoint-process"
#: Recorded by an attempt that failed with an error no retry fixes (retry_policy.py).
NOT_RETRYABLE_FIELD = "checkpoint-not-retryable"


@dataclass(frozen=True)
class AttemptRecord:
    attempt: int
    status: str
    loaded: Optional[str]  # key of the checkpoint the attempt loaded last, if any
    not_retryable: bool = False  # it failed with an error no retry fixes: not retried
    alive: Optional[bool] = None  # the newest attempt's process still runs (None: unknown)


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
        alive = process_alive(metadata.get(PROCESS_FIELD)) if attempt == newest else False
        ok = metadata.get("attempt_ok")
        if ok == "True":
            status = SUCCEEDED
        elif ok == "False":
            status = FAILED
        elif attempt < newest or alive is False:
            status = KILLED
        else:
            status = RUNNING
        records.append(
            AttemptRecord(
                attempt,
                status,
                metadata.get(LOADED_FIELD),
                bool(metadata.get(NOT_RETRYABLE_FIELD)),
                alive,
            )
        )
    return records


def _boot_id() -> Optional[str]:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> Optional[int]:
    """When process ``pid`` started (clock ticks since boot), or None where /proc does
    not tell. With the boot id, it tells a process from a later one with its pid."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def this_process() -> dict:
    """What identifies the running process: host, boot, pid, start time."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": pid, "start": _start_ticks(pid)}


def process_alive(recorded: Optional[str]) -> Optional[bool]:
    """Whether the process ``recorded`` (``this_process()`` as JSON) still runs: None when
    this machine cannot tell (another host, another boot, nothing recorded)."""
    try:
        info = json.loads(recorded) if recorded else None
        pid = int(info["pid"])
    except (ValueError, TypeError, KeyError):
        return None
    if info.get("host") != socket.gethostname():
        return None
    boot = _boot_id()
    if info.get("boot") and boot and info["boot"] != boot:
        return False  # this machine rebooted since: that process is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    except OSError:
        return None
    start = _start_ticks(pid)
    if info.get("start") is not None and start is not None and start != info["start"]:
        return False  # a later process with the same pid
    if _is_zombie(pid):
        return False
    return True


def _is_zombie(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2 :].split()[0] == "Z"
    except (OSError, ValueError, IndexError):
        return False


def record_process(metadata_provider, run_id: str, step: str, task_id: str, attempt: int) -> None:
    """Note in the task's metadata which process runs ``attempt`` (see ``process_alive``)."""
    from .metaflow_internals import register_task_metadata

    register_task_metadata(
        metadata_provider, (run_id, step, task_id), attempt, PROCESS_FIELD, json.dumps(this_process())
    )


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
    from .metaflow_internals import register_task_metadata

    register_task_metadata(metadata_provider, (run_id, step, task_id), attempt, LOADED_FIELD, key)
