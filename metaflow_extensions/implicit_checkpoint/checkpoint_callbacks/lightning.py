"""A Lightning ``ModelCheckpoint`` that saves a checkpoint after each of its own saves:
its folder (``dirpath``) once the new file, ``last.ckpt`` and the removal of old top-k
files are all done, with the step's fields."""

from typing import Any, Dict, Optional

from ..engine.errors import CheckpointException
from .step_checkpoint import numeric_values, step_checkpointer

try:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.plugins.io import AsyncCheckpointIO
except ImportError:  # the standalone package
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.plugins.io import AsyncCheckpointIO


class LightningModelCheckpoint(ModelCheckpoint):
    """
    A `ModelCheckpoint` that writes into the task's folder and calls
    `current.checkpoint.save()` each time it has saved, with `global_step`, `epoch` and
    the logged metrics (`trainer.callback_metrics`) as metadata, so the card charts them.

    Use it instead of `ModelCheckpoint`, and resume from the folder:

    ```
    trainer = L.Trainer(max_epochs=10, callbacks=[LightningModelCheckpoint(every_n_train_steps=500)])
    if current.checkpoint.is_loaded:
        current.checkpoint.load()          # puts last.ckpt (and the rest) back in the folder
    trainer.fit(model, data, ckpt_path="last")
    ```

    It saves after `ModelCheckpoint`'s own hooks, when the new file is written,
    `last.ckpt` updated and old top-k files removed (Lightning calls a plain
    `Callback.on_save_checkpoint` before the file is even written). Only the local main
    process (`trainer.local_rank == 0`) saves: one save per Metaflow task.

    Parameters
    ----------
    dirpath : str, optional
        Default: `current.checkpoint.directory`; another folder is not part of the
        checkpoints.
    save_last : bool, default True
        `trainer.fit(ckpt_path="last")` resumes from `last.ckpt`.
    name : str, default "checkpoint"
        The name of the checkpoints it saves.
    blocking : bool, default True
        False saves in the background (`save(blocking=False)`).
    **kwargs
        Any other `ModelCheckpoint` argument (`every_n_train_steps`, `monitor`, ...).
    """

    def __init__(
        self,
        dirpath: Optional[str] = None,
        save_last: bool = True,
        name: str = "checkpoint",
        blocking: bool = True,
        **kwargs: Any,
    ):
        checkpointer = step_checkpointer(type(self).__name__)
        super().__init__(dirpath=dirpath or checkpointer.directory, save_last=save_last, **kwargs)
        self._checkpoint_name = name
        self._blocking = blocking
        self._saved_since_snapshot = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if isinstance(getattr(trainer.strategy, "checkpoint_io", None), AsyncCheckpointIO):
            raise CheckpointException(
                "%s cannot snapshot the files AsyncCheckpointIO writes in the background "
                "(they may be incomplete when its hooks run). Drop the AsyncCheckpointIO "
                "plugin and pass %s(blocking=False): the checkpoint is then committed in "
                "the background instead." % (type(self).__name__, type(self).__name__)
            )

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self._saved_since_snapshot = True

    def on_train_batch_end(self, trainer, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        self._snapshot(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._snapshot(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self._snapshot(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._snapshot(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self._snapshot(trainer)

    def _snapshot(self, trainer) -> None:
        if not self._saved_since_snapshot:
            return
        self._saved_since_snapshot = False
        if trainer.local_rank == 0:
            step_checkpointer(type(self).__name__).save(
                name=self._checkpoint_name, metadata=trainer_metadata(trainer), blocking=self._blocking
            )


def trainer_metadata(trainer) -> Dict[str, Any]:
    """``global_step``, ``epoch`` and the metrics logged so far (``callback_metrics``)."""
    metrics: Dict[str, Any] = numeric_values(trainer.callback_metrics)
    metrics["global_step"] = int(trainer.global_step)
    metrics["epoch"] = int(trainer.current_epoch)
    return metrics
