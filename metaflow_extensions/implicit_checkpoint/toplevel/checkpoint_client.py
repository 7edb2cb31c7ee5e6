"""``from metaflow import Checkpoint``: list, inspect and load checkpoints of any run."""

from typing import Any, Dict, Iterable, List, Optional

from ..engine.artifact import CheckpointArtifact, Reference, key_of
from ..engine.errors import CheckpointException, CheckpointNotFound
from ..engine.keys import split_pathspec
from ..engine.manifest import public_view
from ..engine.session import list_artifacts, list_run_artifacts
from ..engine.snapshot import load_snapshot
from ..engine.verify import VerifyReport, verify_checkpoints
from ..plugins.store_binding import store_from_config


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
    ```

    Parameters
    ----------
    datastore : str, optional
        Datastore type ("local", "s3", ...); default: Metaflow's configured one.
    root : str, optional
        Datastore root; default: the configured root for that datastore.
    """

    def __init__(self, datastore: Optional[str] = None, root: Optional[str] = None):
        self._store = store_from_config(datastore, root)

    def list(
        self,
        task: Any = None,
        name: Optional[str] = None,
        attempt: Optional[int] = None,
        run: Any = None,
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

        Returns
        -------
        List[CheckpointArtifact]
        """
        if (task is None) == (run is None):
            raise CheckpointException(
                "Checkpoint().list() takes exactly one of task=\"Flow/run/step/task\" "
                "or run=\"Flow/run\"."
            )
        if task is not None:
            flow, run_id, step, task_id = split_pathspec(getattr(task, "pathspec", task))
            _require_exists("Task", "/".join((flow, run_id, step, task_id)))
            return list_artifacts(self._store, flow, run_id, step, task_id, name, attempt)
        flow, run_id = _split_run(getattr(run, "pathspec", run))
        _require_exists("Run", "%s/%s" % (flow, run_id))
        return list_run_artifacts(self._store, flow, run_id, name, attempt)

    def inspect(self, reference: Reference) -> Dict[str, Any]:
        """The manifest of a checkpoint (field -> type, codec, size), reading no field data."""
        return public_view(self._store.read_manifest(key_of(reference)))

    def load(
        self,
        reference: Reference,
        fields: Optional[Iterable[str]] = None,
        flow: Any = None,
        allow_pickle: bool = True,
    ):
        """
        Load a checkpoint's fields.

        Parameters
        ----------
        reference : CheckpointArtifact, dict or str
            The checkpoint: an artifact, its `to_dict()`, or its key.
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

        Returns
        -------
        Dict[str, Any] or CheckpointArtifact
        """
        if isinstance(fields, str):
            fields = [fields]
        key = key_of(reference)
        manifest = self._store.read_manifest(key)
        values, _ = load_snapshot(
            self._store, manifest, fields, target=flow, allow_pickle=allow_pickle
        )
        if flow is None:
            return values
        return CheckpointArtifact.from_manifest(manifest)


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
            `damaged` checkpoints, `blobs_read`, `bytes_read`, `repaired_blobs`.
        """
        artifacts = self.list(task=task, run=run)
        keys = [key_of(a) for a in artifacts]
        flow = keys[0].flow if keys else None
        if flow is None:
            return VerifyReport().to_dict()
        return verify_checkpoints(self._store, flow, keys, repair).to_dict()


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
