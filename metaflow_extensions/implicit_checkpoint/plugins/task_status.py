"""How a task's attempts ended, from Metaflow's metadata.

A task records ``attempt_ok`` (True / False) for an attempt when the attempt ends
normally or with an exception. An attempt killed hard (os._exit, SIGKILL, out of
memory, a reclaimed machine) records nothing: it is "killed" once a later attempt has
started, and indistinguishable from "running" while it is the newest.
"""

from typing import List

SUCCEEDED = "succeeded"
FAILED = "failed"
KILLED = "killed"
RUNNING = "running"


def attempt_statuses(pathspec: str) -> List[str]:
    """The status of every attempt of the task, oldest first ([] if it never started)."""
    from metaflow import Task
    from metaflow.exception import MetaflowNotFound

    try:
        newest = Task(pathspec).current_attempt
    except MetaflowNotFound:
        return []
    statuses = []
    for attempt in range(newest + 1):
        ok = Task(pathspec, attempt=attempt).metadata_dict.get("attempt_ok")
        if ok == "True":
            statuses.append(SUCCEEDED)
        elif ok == "False":
            statuses.append(FAILED)
        else:
            statuses.append(KILLED if attempt < newest else RUNNING)
    return statuses
