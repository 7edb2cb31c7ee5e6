"""A training step that fails on every attempt until its bug is fixed, then `resume`.

    FAIL_AT_EPOCH=3 python resume_command_flow.py run    # fails at epoch 3, every attempt
    python resume_command_flow.py resume                 # continues from epoch 3
"""

import hashlib
import os

import torch

from metaflow import FlowSpec, checkpoint, current, retry, step


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    def forward(self, x):
        return self.body(x)


class ResumeCommandFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @retry(times=1)
    @checkpoint
    @step
    def train(self):
        torch.manual_seed(0)
        data = torch.randn(128, 8, generator=torch.Generator().manual_seed(1))
        target = (data.sum(1) > 0).long()
        self.model = TinyNet()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.01)
        self.epoch = 0
        self.started_at = None
        if current.checkpoint.is_loaded:
            resumed = current.checkpoint.load()
            self.resumed_from = resumed.key
        self.started_at = self.epoch
        fail_at = int(os.environ.get("FAIL_AT_EPOCH", "-1"))
        while self.epoch < 6:
            if self.epoch == fail_at:
                raise RuntimeError("a bug at epoch %d" % fail_at)
            for batch in torch.randperm(128).split(32):
                self.optimizer.zero_grad()
                torch.nn.functional.cross_entropy(self.model(data[batch]), target[batch]).backward()
                self.optimizer.step()
            self.epoch += 1
            current.checkpoint.save()
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(tensor.numpy().tobytes())
        self.digest = digest.hexdigest()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ResumeCommandFlow()
