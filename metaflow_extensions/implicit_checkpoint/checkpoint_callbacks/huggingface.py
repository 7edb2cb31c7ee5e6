"""A Hugging Face ``TrainerCallback`` that saves a checkpoint after each of the Trainer's
own saves: the Trainer's folder (``output_dir``) as it is then, with the step's fields."""

from typing import Any, Dict

from transformers import TrainerCallback

from .step_checkpoint import numeric_values, step_checkpointer

#: TrainerState.log_history keys that are counters or totals, not metrics to chart.
_NOT_METRICS = ("step", "epoch", "total_flos")


class HuggingFaceCheckpointCallback(TrainerCallback):
    """
    Calls `current.checkpoint.save()` each time the `Trainer` has saved a
    `checkpoint-N` folder (its `on_save` event, once that folder is complete and old
    ones are rotated out), with `global_step`, `epoch` and the latest logged metrics
    (`loss`, `learning_rate`, ...) as metadata, so the checkpoint card charts them.

    Point the Trainer's output at the task's folder, and resume from it:

    ```
    args = TrainingArguments(output_dir=current.checkpoint.directory, save_steps=500, ...)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[HuggingFaceCheckpointCallback()])
    if current.checkpoint.is_loaded:
        current.checkpoint.load()          # puts checkpoint-N/ back in the folder
    trainer.train(resume_from_checkpoint=current.checkpoint.is_loaded)
    ```

    Only the local main process of the step saves (`state.is_local_process_zero`): one
    save per Metaflow task, so every node of a `@parallel` gang saves its part.

    Parameters
    ----------
    name : str, default "checkpoint"
        The name of the checkpoints it saves.
    blocking : bool, default True
        False saves in the background (`save(blocking=False)`): the folder's files are
        copied when the Trainer has saved them, and training goes on meanwhile.
    """

    def __init__(self, name: str = "checkpoint", blocking: bool = True):
        step_checkpointer(type(self).__name__)  # fail when the trainer is built, not at its first save
        self.name = name
        self.blocking = blocking

    def on_save(self, args, state, control, **kwargs):
        if state.is_local_process_zero:
            step_checkpointer(type(self).__name__).save(
                name=self.name, metadata=trainer_metadata(state), blocking=self.blocking
            )
        return control


def trainer_metadata(state) -> Dict[str, Any]:
    """``global_step``, ``epoch`` and the newest value of each metric the Trainer logged."""
    metrics: Dict[str, Any] = {}
    for entry in state.log_history:
        metrics.update(numeric_values({k: v for k, v in entry.items() if k not in _NOT_METRICS}))
    metrics["global_step"] = int(state.global_step)
    if state.epoch is not None:
        metrics["epoch"] = float(state.epoch)
    return metrics
