"""``from metaflow import Checkpoint``: list, inspect and load checkpoints of any run."""

import functools
import os
import tempfile
from typing import Any, Dict, Iterable, List, Mapping, Optional

from ..engine.artifact import CheckpointArtifact, Reference, key_of
from ..engine.errors import CheckpointException, CheckpointNotFound
from ..engine.fields import FieldSelector
from ..engine.keys import split_pathspec
from ..engine.reading import inspect_checkpoint, list_run, list_task, open_checkpoint
from ..engine.session import DEFAULT_NAME, AttributeSource, CheckpointSession
from ..engine.loading import LoadRequest, load_checkpoint
from ..engine.verify import VerifyReport, verify_checkpoints
from ..plugins.formatting import missing_blobs, verify_report_dict
from ..plugins.run_visibility import runs_in_current_namespace
from ..plugins.settings import settings
from ..plugins.store_binding import store_from_config
from ..plugins.task_handoff import TASK_ENV, HandedTask, handed_task


class _on_class_too:
    """A method that also works called on the class, on a ``Checkpoint()`` made then."""

    def __init__(self, method):
        self._method = method
        functools.update_wrapper(self, method)

    def __get__(self, instance, owner):
        if instance is not None:
            return functools.partial(self._method, instance)

        @functools.wraps(self._method)
        def on_a_new_instance(*args, **kwargs):
            return self._method(owner(), *args, **kwargs)

        return on_a_new_instance


class Checkpoint(object):
    """
    Read checkpoints saved by `@checkpoint` from a notebook or any Python process
    configured like the run (same datastore and metadata settings).

    ```
    from metaflow import Checkpoint
    cp = Checkpoint()
    ckpts = cp.list(task="TrainFlow/12/train/3")
    cp.inspect(ckpts[-1])                      # manifest, no field data read
    state = cp.load(ckpts[-1], fields=["model"])
    state = cp.load(ckpts[-1])                 # every field, and the files of the
    print(os.listdir(cp.directory))            # step's folder put in cp.directory
    ```

    In a process started by a `@checkpoint` step (torchrun workers, a launcher's
    children), `Checkpoint()` works for that task: `save({...}, name=...)` commits a
    checkpoint of it, `list()` lists it, and `load()` returns the checkpoint its attempt
    resumes from.

    Parameters
    ----------
    datastore : str, optional
        Datastore type ("local", "s3", ...); default: Metaflow's configured one.
    root : str, optional
        Datastore root; default: the configured root for that datastore.
    directory : str, optional
        The folder `load()` puts a checkpoint's files in (what the step had in
        `current.checkpoint.directory`): a new or empty folder (it is created if
        missing; one with files in it is refused, since a load removes what the
        checkpoint does not have). Default: a new temporary folder, made on first use
        (see `directory`), never removed by this client.
    """

    def __init__(
        self,
        datastore: Optional[str] = None,
        root: Optional[str] = None,
        directory: Optional[str] = None,
    ):
        # Inside a @checkpoint step or a process it started: that task and its datastore.
        self._handed = handed_task()
        if self._handed is not None and datastore is None and root is None:
            datastore, root = self._handed.datastore, self._handed.root
        self._store = store_from_config(datastore, root)
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise CheckpointException(
                "Checkpoint(directory=...) is the path of a folder; got %r." % (directory,)
            )
        self._directory = os.path.abspath(os.fspath(directory)) if directory is not None else None
        self._filled = False  # whether load() has put a checkpoint's files in the folder

    @property
    def directory(self) -> str:
        """
        The folder `load()` puts a checkpoint's files in: the one passed as
        `Checkpoint(directory=...)`, or a temporary folder of this client's own.

        Returns
        -------
        str
        """
        if self._directory is None:
            self._directory = tempfile.mkdtemp(prefix="metaflow_checkpoint_")
        return self._directory

    def save(
        self,
        fields: Mapping[str, Any],
        name: str = DEFAULT_NAME,
        metadata: Optional[dict] = None,
    ) -> CheckpointArtifact:
        """
        Commit a checkpoint of the task this process works for (in a subprocess of a
        `@checkpoint` step: a torchrun worker, a launcher's child).

        Parameters
        ----------
        fields : Dict[str, Any]
            The values to save, by field name.
        name : str, default "checkpoint"
            Workers that save at the same time use distinct names.
        metadata : dict, optional
            Plain values shown with the checkpoint (and charted on the card).

        Returns
        -------
        CheckpointArtifact
        """
        handed = self._task_here("save()")
        if not isinstance(fields, Mapping) or not all(
            isinstance(k, str) and k.isidentifier() for k in fields
        ):
            raise CheckpointException(
                "Checkpoint().save(fields) takes a dict of field names to values, e.g. "
                "save({\"model\": model, \"step\": step}); got %r." % (type(fields).__name__,)
            )
        values = dict(fields)
        session = self._session_of(
            handed, AttributeSource(lambda: values), selector=FieldSelector(include=sorted(values)), rng=False
        )
        try:
            return session.save(name=name, metadata=metadata)
        finally:
            session.finish()

    def _task_here(self, what: str) -> HandedTask:
        if self._handed is None:
            raise CheckpointException(
                "Checkpoint().%s without a checkpoint works only inside a @checkpoint step "
                "or a process it started (which inherits the task from the environment "
                "variable %s)." % (what, TASK_ENV)
            )
        return self._handed

    def _session_of(
        self, handed: HandedTask, source: Optional[AttributeSource] = None, **kwargs
    ) -> CheckpointSession:
        """A session of the task handed down to this process (for reading, or with
        ``source`` for a save), with the options of this process's settings. Its saves
        are the worker's own: never a gang's global checkpoint."""
        return CheckpointSession(
            self._store,
            handed.task,
            source or AttributeSource(lambda: {}),
            target=None,
            load_policy=handed.load_policy,
            accept_run=runs_in_current_namespace(handed.task.flow),
            gang_saves=False,
            options=settings().session,
            **kwargs,
        )

    def _resume_point(self) -> CheckpointArtifact:
        handed = self._task_here("load()")
        found = self._session_of(handed).start()
        if found is None:
            raise CheckpointNotFound(
                "Checkpoint().load() has no checkpoint to resume from in task %s (attempt "
                "%d). Pass a checkpoint (an artifact from list(), or its key)."
                % (handed.task.pathspec, handed.task.attempt)
            )
        return found

    def list(
        self,
        task: Any = None,
        name: Optional[str] = None,
        attempt: Optional[int] = None,
        run: Any = None,
        full_namespace: bool = False,
    ) -> List[CheckpointArtifact]:
        """
        Committed checkpoints, oldest first.

        Parameters
        ----------
        task : str or metaflow.Task, optional
            A task pathspec "Flow/run/step/task" (or a Task object).
        name : str, optional
            Only checkpoints with this name.
        attempt : int, optional
            Only checkpoints saved by this attempt.
        run : str or metaflow.Run, optional
            Instead of `task`: every checkpoint of the run "Flow/run", across its steps.
        full_namespace : bool, default False
            In a process started by a `@checkpoint` step: that step's checkpoints (at
            its foreach position) in every run of the current namespace.

        Returns
        -------
        List[CheckpointArtifact]
        """
        if full_namespace:
            handed = self._task_here("list(full_namespace=True)")
            return self._session_of(handed).list(name=name, attempt=attempt, full_namespace=True)
        if task is None and run is None and self._handed is not None:
            task = self._handed.task.pathspec  # a subprocess of a step: its task
        if (task is None) == (run is None):
            raise CheckpointException(
                "Checkpoint().list() takes exactly one of task=\"Flow/run/step/task\" "
                "or run=\"Flow/run\"."
            )
        if task is not None:
            flow, run_id, step, task_id = split_pathspec(getattr(task, "pathspec", task))
            pathspec = "/".join((flow, run_id, step, task_id))
            if self._handed is None or pathspec != self._handed.task.pathspec:
                _require_exists("Task", pathspec)
            return list_task(self._store, flow, run_id, step, task_id, name, attempt)
        flow, run_id = _split_run(getattr(run, "pathspec", run))
        _require_exists("Run", "%s/%s" % (flow, run_id))
        return list_run(self._store, flow, run_id, name, attempt)

    @_on_class_too
    def inspect(self, reference: Reference) -> Dict[str, Any]:
        """
        The manifest of a checkpoint, reading no field or file data.

        Works on the class too (`Checkpoint.inspect(ref)`, as in metaflow-checkpoint),
        with the configured datastore.

        Returns
        -------
        Dict[str, Any]
            `fields` (field -> type, codec, size), `files` (path in the step's folder
            -> size, mode, mtime_ns) and `directories`, `metadata`, `parent`, ...
        """
        return inspect_checkpoint(self._store, reference)

    def load(
        self,
        reference: Optional[Reference] = None,
        fields: Optional[Iterable[str]] = None,
        flow: Any = None,
        allow_pickle: bool = True,
        node: Optional[int] = None,
        files: Optional[bool] = None,
        map_location: Any = None,
    ):
        """
        Load a checkpoint's fields, and put the files its step had in
        `current.checkpoint.directory` in `directory`, exactly as saved (anything
        else in that folder is removed).

        Parameters
        ----------
        reference : CheckpointArtifact, dict or str, optional
            The checkpoint: an artifact, its `to_dict()`, or its key. None, in a
            subprocess of a step: the checkpoint its attempt resumes from.
        fields : List[str], optional
            Read only these fields (only their data is read).
        flow : object, optional
            Set the fields as attributes of this object (restoring modules and
            optimizers in place, as `current.checkpoint.load()` does) and return the
            CheckpointArtifact instead of the values.
        allow_pickle : bool, default True
            False never unpickles (for checkpoints from elsewhere): tensors, state
            dicts, dataclasses and plain data load; a field that needs unpickling
            raises an error naming it. Stateful objects (models, optimizers) then load
            into live objects held by `flow`.
        node : int, optional
            For a checkpoint of a multi-node (`@parallel`) step: whose part to load.
            Default: node 0's, or, in a process started by a gang node, that node's.
        files : bool, optional
            Whether to put the checkpoint's files in `directory`. Default: when every
            field is loaded (`fields` not given). A checkpoint saved without a folder
            (by a worker process) leaves the folder alone.
        map_location : str, torch.device or dict, optional
            The device of the tensors loaded without a live tensor to go into (all of
            them, without `flow`): "cpu", "cuda", "cuda:0", or a dict from saved to
            new device names. Default: the device they were saved on, if this machine
            has it, else the CPU (a checkpoint saved on a GPU loads in a notebook).
            Tensors that go into a live tensor of `flow` keep its device.

        Returns
        -------
        Dict[str, Any] or CheckpointArtifact
        """
        if isinstance(fields, str):
            fields = [fields]
        if fields is not None and not (
            isinstance(fields, (list, tuple, set)) and all(isinstance(f, str) for f in fields)
        ):
            raise CheckpointException(
                "Checkpoint().load(reference, fields=...) takes field names, e.g. "
                "fields=[\"model\"]; got a %s. To set the fields on an object, pass it as "
                "flow=obj." % type(fields).__name__
            )
        if reference is None:
            reference = self._resume_point()
        if node is None and self._handed is not None and self._handed.task.gang is not None:
            node = self._handed.task.gang.node_index
        opened = open_checkpoint(self._store, reference, node)
        request = LoadRequest(
            fields=fields,
            target=flow,
            allow_pickle=allow_pickle,
            folder=self.directory,
            files=files,
            map_location=map_location,
        )
        with_files = request.restores_files(opened)
        if with_files:
            self._check_folder_is_ours(opened.key)
        loaded = load_checkpoint(self._store, opened, request)
        self._filled = self._filled or with_files
        return loaded.values if flow is None else loaded.artifact

    def _check_folder_is_ours(self, key) -> None:
        """A load makes the folder exactly the checkpoint's: never over files that this
        client did not put there itself."""
        folder = self.directory
        if not self._filled and os.path.isdir(folder) and os.listdir(folder):
            raise CheckpointException(
                "Checkpoint(directory=%r).load(%s) would replace what is in that folder (a "
                "load makes it exactly the checkpoint's folder, removing everything else), "
                "and it is not empty. Pass a new or empty folder, or load(..., files=False) "
                "for the fields only." % (folder, key)
            )

    def verify(self, task: Any = None, run: Any = None, repair: bool = False) -> Dict[str, Any]:
        """
        Read and hash every blob the checkpoints of a task or run reference.

        Parameters
        ----------
        task : str or metaflow.Task, optional
            A task pathspec "Flow/run/step/task".
        run : str or metaflow.Run, optional
            Instead of `task`: every checkpoint of the run "Flow/run".
        repair : bool
            Delete damaged blobs, so the next save of the same content writes them again.

        Returns
        -------
        Dict[str, Any]
            `checkpoints`: per checkpoint its `key`, `intact`, and `damages` (each a
            `blob`, its `problem` and the `fields` it holds); counts of `intact` and
            `damaged` checkpoints, `blobs_read` and `bytes_read` (the blobs read and
            hashed), `blobs_missing` (the digests of those that are not stored),
            `repaired_blobs`.
        """
        artifacts = self.list(task=task, run=run)
        keys = [key_of(a) for a in artifacts]
        flow = keys[0].flow if keys else None
        if flow is None:
            return verify_report_dict(VerifyReport(), {})
        report = verify_checkpoints(self._store, flow, keys, repair)
        return verify_report_dict(report, missing_blobs(self._store, report))


def _split_run(pathspec: Any):
    parts = pathspec.split("/") if isinstance(pathspec, str) else []
    if len(parts) != 2 or not all(parts):
        raise CheckpointException(
            "%r is not a run pathspec; expected 'Flow/run_id', e.g. 'TrainFlow/12'." % (pathspec,)
        )
    return parts[0], parts[1]


def _require_exists(kind: str, pathspec: str) -> None:
    """Raise a clear error when the Metaflow client cannot see ``pathspec``."""
    import metaflow
    from metaflow.exception import MetaflowNamespaceMismatch, MetaflowNotFound

    try:
        getattr(metaflow, kind)(pathspec)
    except MetaflowNamespaceMismatch:
        raise CheckpointException(
            "%s %s is not in the current namespace (%s). Switch with "
            "metaflow.namespace(None) to see every user's runs."
            % (kind, pathspec, metaflow.get_namespace())
        )
    except MetaflowNotFound:
        raise CheckpointNotFound(
            "%s %s does not exist (check the pathspec, and that this process uses the "
            "same metadata service and datastore as the run)." % (kind, pathspec)
        )
