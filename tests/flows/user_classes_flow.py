"""The pytorch/examples MNIST loop as users write it: Net, a config dataclass and a helper
class defined in this file, Adadelta + StepLR, an EMA copy updated through ``.data``.

    python user_classes_flow.py run --crash-at 2     # SIGKILL after epoch 2, resume
"""

import dataclasses
import hashlib
import os
import signal

import torch
import torch.nn as nn
import torch.nn.functional as F

from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(2304, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


@dataclasses.dataclass
class Config:
    lr: float = 1.0
    gamma: float = 0.7
    batch_size: int = 32
    ema_decay: float = 0.9

    def __post_init__(self):
        self.tag = "lr=%g" % self.lr  # set outside the declared fields


class RunningMean:
    """A plain helper object (no state_dict)."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, value):
        self.total += value
        self.count += 1

    @property
    def mean(self):
        return self.total / max(self.count, 1)


def synthetic_mnist(n=256):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 1, 14, 14, generator=g).repeat_interleave(2, 2).repeat_interleave(2, 3)
    labels = torch.randint(0, 10, (n,), generator=g)
    return images, labels


def digest_of(*modules_and_optimizers):
    digest = hashlib.sha256()
    for obj in modules_and_optimizers:
        state = obj.state_dict()
        if isinstance(obj, torch.optim.Optimizer):
            state = {"%s.%s" % (k, name): v for k, s in state["state"].items() for name, v in s.items()}
        for name, tensor in sorted(state.items()):
            digest.update(name.encode())
            digest.update(torch.as_tensor(tensor).numpy().tobytes())
    return digest.hexdigest()


class UserClassesFlow(FlowSpec):
    epochs = Parameter("epochs", default=4, type=int)
    crash_at = Parameter("crash-at", default=0, type=int, help="SIGKILL attempt 0 after this epoch")

    @step
    def start(self):
        self.next(self.train)

    @retry(times=1)
    @checkpoint
    @step
    def train(self):
        torch.set_num_threads(1)
        torch.manual_seed(1)
        images, labels = synthetic_mnist()
        self.config = Config()
        self.model = Net()
        self.ema = Net()
        self.ema.load_state_dict(self.model.state_dict())
        self.optimizer = torch.optim.Adadelta(self.model.parameters(), lr=self.config.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=self.config.gamma)
        self.loss_mean = RunningMean()
        self.epoch = 0
        self.lr_history = []
        built = (self.model, self.optimizer, self.scheduler, self.ema)
        if current.checkpoint.is_loaded:
            current.checkpoint.load()
            self.kept_objects = all(a is b for a, b in zip(built, (self.model, self.optimizer, self.scheduler, self.ema)))
            self.isinstance_after_load = [
                isinstance(self.model, Net), isinstance(self.config, Config),
                isinstance(self.loss_mean, RunningMean), self.config.tag,
            ]
        while self.epoch < self.epochs:
            self.model.train()
            order = torch.randperm(len(images))
            for batch in order.split(self.config.batch_size):
                self.optimizer.zero_grad()
                loss = F.nll_loss(self.model(images[batch]), labels[batch])
                loss.backward()
                self.optimizer.step()
                self.loss_mean.add(loss.item())
                with torch.no_grad():
                    for e, p in zip(self.ema.parameters(), self.model.parameters()):
                        e.data.mul_(self.config.ema_decay).add_(p.data, alpha=1 - self.config.ema_decay)
            self.scheduler.step()
            self.epoch += 1
            self.lr_history.append(self.optimizer.param_groups[0]["lr"])
            current.checkpoint.save(metadata={"loss": self.loss_mean.mean})
            if self.epoch == self.crash_at and current.retry_count == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        self.final_digest = digest_of(self.model, self.optimizer, self.ema)
        self.scheduler_linked = self.scheduler.optimizer is self.optimizer
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UserClassesFlow()
