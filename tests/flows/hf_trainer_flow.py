"""A tiny GPT-2 trained by the Hugging Face Trainer into current.checkpoint.directory,
with HuggingFaceCheckpointCallback: one branch is SIGKILLed right after the step-15
save and resumes on the retry, the other trains straight through."""

import json
import os
import signal

from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step

from folder_listing import listing


class HFTrainerFlow(FlowSpec):
    witness = Parameter("witness", default="")

    @step
    def start(self):
        self.modes = ["killed", "straight"]
        self.next(self.train, foreach="modes")

    @retry(times=1)
    @checkpoint
    @step
    def train(self):
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

        from metaflow.checkpoint_callbacks import HuggingFaceCheckpointCallback

        torch.set_num_threads(1)
        self.mode = self.input
        folder = current.checkpoint.directory
        witness = self.witness

        class KillAfterTheStep15Save(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == 15 and current.retry_count == 0 and witness:
                    with open(witness, "w") as f:
                        json.dump(listing(folder), f)
                    os.kill(os.getpid(), signal.SIGKILL)

        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=500, n_positions=64))
        tokens = torch.randint(0, 500, (64, 32), generator=torch.Generator().manual_seed(0))
        data = [{"input_ids": row, "labels": row} for row in tokens]
        self.resumed_at, self.restored = None, None
        if current.checkpoint.is_loaded:
            self.resumed_at = current.checkpoint.load().metadata["global_step"]
            self.restored = listing(folder)
        args = TrainingArguments(
            output_dir=folder, save_steps=5, max_steps=30, per_device_train_batch_size=4,
            logging_steps=5, report_to="none", use_cpu=True, seed=0, disable_tqdm=True,
        )
        callbacks = [HuggingFaceCheckpointCallback()]
        if self.mode == "killed":
            callbacks.append(KillAfterTheStep15Save())
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
        trainer.train(resume_from_checkpoint=current.checkpoint.is_loaded)
        self.resave_written = current.checkpoint.save(name="resave").implicit_manifest["bytes_written"]
        self.weights = {name: t.detach().numpy().copy() for name, t in model.state_dict().items()}
        self.next(self.join)

    @step
    def join(self, inputs):
        import numpy as np

        weights = {branch.mode: branch.weights for branch in inputs}
        self.weight_names = sorted(weights["straight"])
        self.identical = {
            name: bool(np.array_equal(weights["killed"][name], weights["straight"][name]))
            for name in self.weight_names
        }
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    HFTrainerFlow()
