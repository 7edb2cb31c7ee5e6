"""Handing a task's identity down to its subprocesses (torchrun workers, a launcher's
children), so ``Checkpoint()`` there saves, lists and loads for the task.

The step's process sets one environment variable that child processes inherit; it names
the task, its attempt, its load policy and the datastore the run uses.
"""

import json
import os
from dataclasses import asdict, dataclass
from typing import Optional

from ..engine.gang import Gang
from ..engine.session import TaskIdentity

TASK_ENV = "METAFLOW_CHECKPOINT_TASK"


@dataclass(frozen=True)
class HandedTask:
    task: TaskIdentity
    load_policy: str
    datastore: str
    root: str


def hand_down(handed: HandedTask) -> None:
    """Make ``handed`` visible to every process this one starts from now on."""
    wire = dict(asdict(handed), task=asdict(handed.task))
    os.environ[TASK_ENV] = json.dumps(wire)


def handed_task() -> Optional[HandedTask]:
    """The task handed down to this process, or None outside a @checkpoint step."""
    text = os.environ.get(TASK_ENV)
    if not text:
        return None
    wire = json.loads(text)
    task = dict(wire.pop("task"))
    task["foreach_indices"] = tuple(task["foreach_indices"])
    if task.get("gang") is not None:
        task["gang"] = Gang(**task["gang"])
    return HandedTask(task=TaskIdentity(**task), **wire)
