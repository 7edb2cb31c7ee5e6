"""Errors no retry can fix: a task that hits one does not spend its @retry attempts on it.

What Metaflow offers, read in its source (the same from 2.15.21 to 2.19):

- No exception class opts out of ``@retry``. A task process treats every exception alike:
  the decorators' ``task_exception`` hooks, then ``metaflow/cli.py`` ``main`` prints it
  (``MetaflowException`` with its headline) and exits with 1. The runtime counts a
  task's retries once, from every decorator's ``step_task_retry_count()``, when it
  creates the task (``metaflow/runtime.py``, ``Task.__init__``), not per failure.
- A task process that exits with ``METAFLOW_EXIT_DISALLOW_RETRY`` (202,
  ``metaflow/exception.py``) is not retried by the local runtime
  (``NativeRuntime._poll_workers``: "This failed task will not be retried."); Metaflow's
  own ``@batch`` / ``@kubernetes`` launchers exit so for failures of their own. The run
  then lets the tasks already running finish and fails ("The terminal step ... was not
  successful").
- Nothing honours 202 where a scheduler retries (Argo Workflows' ``retryStrategy``, AWS
  Batch attempts under Step Functions), nor for ``@kubernetes`` / ``@batch`` tasks of a
  local run (their launcher exits 1 whatever the container's exit code).

So, when a ``@checkpoint`` step fails with such an error and a retry is left, the task:

1. records the error in the attempt's metadata (``checkpoint-not-retryable``);
2. exits with 202, after Python's exit handlers have run: the local runtime does not
   retry it (skipped when the step has ``@catch``, so that its last attempt is caught
   as before);
3. where a retry starts anyway, the retry reads that record before the step's code
   runs (``task_pre_step``) and fails at once with the same message.

The errors: a ``CheckpointConfigError`` (an ``include=`` name the step never assigns), a
``CheckpointSerializationError`` (an attribute or metadata value that cannot be
stored), and an error of ``load()`` about what the checkpoint holds against what the
step built (another type or shape, ``allow_pickle=False`` refusing a pickled field):
the engine raises those as a plain ``CheckpointException``, while a damaged or
unreachable store (``CheckpointCorrupted``, ``CheckpointStorageError``), which a retry
may well get past, is left to ``@retry``.
"""

import atexit
import functools
import json
import os
import sys
from typing import Any, Optional

from ..engine.errors import (
    CheckpointConfigError,
    CheckpointException,
    CheckpointSerializationError,
)
from ..engine.session import CheckpointSession
from .task_status import NOT_RETRYABLE_FIELD  # the attempt's record: JSON, class and message
#: Set on an exception that ``StepCheckpointSession.load`` found to be about content.
_MARK = "_checkpoint_not_retryable"

try:
    from metaflow.exception import METAFLOW_EXIT_DISALLOW_RETRY
except ImportError:  # pragma: no cover - every supported Metaflow defines it
    METAFLOW_EXIT_DISALLOW_RETRY = 202


class NotRetried(CheckpointException):
    """A retry of an attempt that failed with an error no retry can fix: it fails at once,
    before the step's code runs, with the same message."""

    headline = "Not retried: the previous attempt's error cannot be fixed by a retry"


def why_not_retryable(exception: BaseException) -> Optional[str]:
    """What makes ``exception`` one that no retry can fix, or None when a retry may help."""
    if isinstance(exception, NotRetried):
        return "the error of the attempt before"
    if isinstance(exception, CheckpointConfigError):
        return "a @checkpoint configuration error"
    if isinstance(exception, CheckpointSerializationError):
        return "a value that cannot be stored"
    if getattr(exception, _MARK, False):
        return "the checkpoint does not fit what the step built"
    return None


class StepCheckpointSession(CheckpointSession):
    """``current.checkpoint``: the engine's session; an error of ``load()`` about what the
    checkpoint holds (a plain ``CheckpointException``) is marked as one no retry can fix."""

    @functools.wraps(CheckpointSession.load)  # its signature and docstring
    def load(self, *args: Any, **kwargs: Any):
        try:
            return super().load(*args, **kwargs)
        except CheckpointException as ex:
            if type(ex) is CheckpointException:
                setattr(ex, _MARK, True)
            raise


def after_preemption(attempt: int, max_retries: int) -> str:
    """What a preempted attempt's error says happens next (``TaskPreempted`` is retried:
    the attempt exits with 1, like any exception)."""
    if attempt < max_retries:
        return "@retry starts attempt %d, which resumes from it." % (attempt + 1)
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "flow.py"
    return (
        "no @retry attempt is left, so nothing resumes it now: `python %s resume` reruns "
        "the step in a new run, continuing from it (@retry(times=3) resumes on its own)."
        % script
    )


def record(metadata_provider, run_id: str, step: str, task_id: str, attempt: int, exception) -> None:
    """Note in the attempt's metadata that it failed with ``exception``, which no retry fixes."""
    from .metaflow_internals import register_task_metadata

    value = json.dumps({"error": type(exception).__name__, "message": _message_of(exception)})
    register_task_metadata(metadata_provider, (run_id, step, task_id), attempt, NOT_RETRYABLE_FIELD, value)


def recorded(pathspec: str, attempt: int) -> Optional[dict]:
    """What attempt ``attempt`` of the task recorded (``{"error", "message"}``), or None.
    Read through Metaflow's client, which the caller points at the task's metadata."""
    from metaflow import Task
    from metaflow.exception import MetaflowNotFound

    try:
        value = Task(pathspec, attempt=attempt).metadata_dict.get(NOT_RETRYABLE_FIELD)
    except MetaflowNotFound:
        return None
    if not value:
        return None
    try:
        found = json.loads(value)
    except ValueError:
        return {"error": "CheckpointException", "message": value}
    return found if isinstance(found, dict) else None


def fail_at_once(found: dict, attempt: int) -> NotRetried:
    """The error a retry raises before the step runs, after attempt ``attempt - 1`` failed
    with ``found``."""
    return NotRetried(
        "Attempt %d failed with an error no retry can fix (%s), so attempt %d fails at once, "
        "before the step's code runs (this scheduler retries the task anyway). The error:\n\n%s"
        % (attempt - 1, found.get("error", "?"), attempt, found.get("message", ""))
    )


def _message_of(exception: BaseException) -> str:
    return getattr(exception, "message", None) or str(exception)


_exit_requested = False


def exit_without_retry() -> None:
    """End this process with ``METAFLOW_EXIT_DISALLOW_RETRY`` instead of Metaflow's 1.

    Metaflow's ``main`` ends a failed task with ``sys.exit(1)``; at interpreter exit this
    handler runs every other exit handler first, flushes the output, then exits with 202,
    which the local runtime reads as "do not retry"."""
    global _exit_requested
    if not _exit_requested:
        _exit_requested = True
        atexit.register(_exit_with_disallow_retry)


def cancel_exit_without_retry() -> None:
    global _exit_requested
    if _exit_requested:
        _exit_requested = False
        atexit.unregister(_exit_with_disallow_retry)


def _exit_with_disallow_retry() -> None:
    atexit.unregister(_exit_with_disallow_retry)
    atexit._run_exitfuncs()  # the handlers registered before this one would be skipped
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(METAFLOW_EXIT_DISALLOW_RETRY)
