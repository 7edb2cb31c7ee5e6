"""A training step that fails on every attempt until its bug is fixed, then `resume`.

    FAIL_AT_EPOCH=3 python resume_command_flow.py run    # fails at epoch 3, every attempt
    python resume_command_flow.py resume                 # continues from epoch 3
"""

import hashlib
import os

import torch

from metaflow import FlowSpec, checkpoint, current, retry, step

EPOCHS = 6


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    def forward(self, x):
        return self.body(x)


def new_training():
    """The data, the model and its optimizer, as every attempt starts them."""
    torch.manual_seed(0)
    data = torch.randn(128, 8, generator=torch.Generator().manual_seed(1))
    target = (data.sum(1) > 0).long()
    model = TinyNet()
    return data, target, model, torch.optim.Adam(model.parameters(), lr=0.01)


def train_one_epoch(data, target, model, optimizer):
    for batch in torch.randperm(128).split(32):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(data[batch]), target[batch]).backward()
        optimizer.step()


def digest_of(model):
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


class ResumeCommandFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @retry(times=1)
    @checkpoint
    @step
    def train(self):
        data, target, self.model, self.optimizer = new_training()
        self.epoch = 0
        self.started_at = None
        if current.checkpoint.is_loaded:
            resumed = current.checkpoint.load()
            self.resumed_from = resumed.key
        self.started_at = self.epoch
        fail_at = int(os.environ.get("FAIL_AT_EPOCH", "-1"))
        while self.epoch < EPOCHS:
            if self.epoch == fail_at:
                raise RuntimeError("a bug at epoch %d" % fail_at)
            train_one_epoch(data, target, self.model, self.optimizer)
            self.epoch += 1
            current.checkpoint.save()
        self.digest = digest_of(self.model)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ResumeCommandFlow()
