"""20 saves under keep_last=3, keep_best=2 (by val_loss, lower is better)."""

import numpy as np
from metaflow import FlowSpec, checkpoint, current, step

# The two best val_loss values are at saves 4 and 11.
VAL_LOSS = [0.9, 0.8, 0.7, 0.11, 0.6, 0.5, 0.55, 0.45, 0.4, 0.35, 0.1, 0.3,
            0.31, 0.32, 0.33, 0.34, 0.36, 0.37, 0.38, 0.39]


def weights_for(save: int) -> np.ndarray:
    return np.random.default_rng(save).random(64 * 1024)  # 512 KB, new every save


class RetentionFlow(FlowSpec):
    @checkpoint(keep_last=3, keep_best=2, best_metric="val_loss")
    @step
    def start(self):
        for save, loss in enumerate(VAL_LOSS, start=1):
            self.save_number = save
            self.weights = weights_for(save)
            current.checkpoint.save(metadata={"val_loss": loss, "save": save})
        current.checkpoint.save(name="other", metadata={"val_loss": 5.0})
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RetentionFlow()
