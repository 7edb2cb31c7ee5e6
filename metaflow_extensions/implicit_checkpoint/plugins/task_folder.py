"""Where a task's folder (``current.checkpoint.directory``) lives on the machine.

One path per task, the same on every attempt (frameworks that resume from a folder find
it where they wrote it, and Hugging Face's ``training_args.bin``, which records
``output_dir``, stays byte-identical): under a per-user root in the system's temp
folder, keyed by the datastore, flow, run, step and task. It is made empty before the
step runs (a killed attempt's leftovers never leak into the next one; ``load()`` puts
the checkpoint's files back) and removed when the task ends: the checkpoints hold it.
"""

import hashlib
import os
import shutil
import tempfile

from ..engine.directory import make_empty_folder
from ..engine.errors import CheckpointException
from .settings import settings

#: The setting for where task folders are made instead of the system's temp folder.
DIRECTORY_ROOT_ENV = "METAFLOW_CHECKPOINT_DIRECTORY_ROOT"
FOLDER_NAME = "directory"


def task_folder(datastore_root: str, flow: str, run_id: str, step: str, task_id: str) -> str:
    """The task's folder: ``<root>/<datastore hash>/<flow>/<run>/<step>/<task>/directory``."""
    root = settings().directory_root or os.path.join(
        tempfile.gettempdir(), "metaflow-checkpoint-%d" % os.getuid()
    )
    _own_private_root(root)
    datastore = hashlib.sha256(datastore_root.encode()).hexdigest()[:12]
    return os.path.join(root, datastore, flow, run_id, step, task_id, FOLDER_NAME)


def start_task_folder(folder: str) -> None:
    """Make the task's area hold only its folder, empty (at the start of every attempt)."""
    task_area = os.path.dirname(folder)
    if os.path.isdir(task_area):
        shutil.rmtree(task_area, ignore_errors=True)
    make_empty_folder(folder)


def end_task_folder(folder: str) -> None:
    """Remove the task's area at the end of the task."""
    shutil.rmtree(os.path.dirname(folder), ignore_errors=True)


def _own_private_root(root: str) -> None:
    os.makedirs(root, mode=0o700, exist_ok=True)
    if os.stat(root).st_uid != os.getuid():
        raise CheckpointException(
            "The folder for current.checkpoint.directory, %s, belongs to another user. Set "
            "%s to a folder of yours." % (root, DIRECTORY_ROOT_ENV)
        )
