"""A small Lightning model (dropout, shuffled batches) trained with LightningModelCheckpoint
into current.checkpoint.directory. Branches: "killed" is SIGKILLed right after the
step-15 save and resumes with fit(ckpt_path="last") on the retry; "straight" trains
straight through; "files_only" is killed and resumed the same way but reseeds the
random generators after load(): what Lightning's own files give without the RNG state
@checkpoint restores."""

import json
import os
import signal

from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step

from folder_listing import listing


class LightningFlow(FlowSpec):
    witness = Parameter("witness", default="")

    @step
    def start(self):
        self.modes = ["killed", "straight", "files_only"]
        self.next(self.train, foreach="modes")

    @retry(times=1)
    @checkpoint
    @step
    def train(self):
        import lightning as L
        import torch

        from metaflow.checkpoint_callbacks import LightningModelCheckpoint

        torch.set_num_threads(1)
        self.mode = self.input
        folder = current.checkpoint.directory
        witness = "%s.%s.json" % (self.witness, self.mode)

        class Regressor(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = torch.nn.Sequential(
                    torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.Tanh(), torch.nn.Linear(16, 1)
                )

            def training_step(self, batch, batch_index):
                x, y = batch
                loss = torch.nn.functional.mse_loss(self.net(x), y)
                self.log("train_loss", loss)
                return loss

            def configure_optimizers(self):
                return torch.optim.Adam(self.parameters(), lr=0.01)

        class KillAfterTheStep15Save(L.Callback):
            def on_train_batch_start(self, trainer, *args):
                if trainer.global_step == 15 and current.retry_count == 0:
                    with open(witness, "w") as f:
                        json.dump(listing(folder), f)
                    os.kill(os.getpid(), signal.SIGKILL)

        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        x, y = torch.randn(40, 8, generator=generator), torch.randn(40, 1, generator=generator)
        batches = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True)
        model = Regressor()
        self.resumed_at, self.restored = None, None
        if current.checkpoint.is_loaded:
            self.resumed_at = current.checkpoint.load().metadata["global_step"]
            self.restored = listing(folder)
            if self.mode == "files_only":
                torch.manual_seed(1)
        callbacks = [LightningModelCheckpoint(every_n_train_steps=5)]
        if self.mode != "straight":
            callbacks.append(KillAfterTheStep15Save())
        trainer = L.Trainer(
            max_steps=30, callbacks=callbacks, logger=False, enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu", devices=1,
        )
        trainer.fit(model, batches, ckpt_path="last")
        self.resave_written = current.checkpoint.save(name="resave").implicit_manifest["bytes_written"]
        self.weights = {name: t.detach().numpy().copy() for name, t in model.state_dict().items()}
        self.next(self.join)

    @step
    def join(self, inputs):
        import numpy as np

        weights = {branch.mode: branch.weights for branch in inputs}
        self.weight_names = sorted(weights["straight"])
        self.identical = {
            mode: all(np.array_equal(weights[mode][n], weights["straight"][n]) for n in self.weight_names)
            for mode in ("killed", "files_only")
        }
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LightningFlow()
