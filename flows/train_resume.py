"""Train a small PyTorch model, crash mid-training, and resume where it stopped.

    python flows/train_resume.py run --crash-at 3

The first attempt of `train` saves a checkpoint after every epoch and is killed hard
(os._exit, like a reclaimed spot machine) right after epoch 3. @retry starts attempt 1,
which finds the checkpoint, restores model, optimizer, scheduler, epoch counter, loss
history and RNG state onto `self`, and trains on from epoch 4. The final weights are
bit-identical to an uninterrupted run.
"""

import os

from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step


def make_data(seed: int, n: int = 2048):
    """A synthetic two-class problem (local variables are not checkpointed)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 16, generator=g)
    w = torch.randn(16, generator=g)
    y = (X @ w + 0.3 * torch.randn(n, generator=g) > 0).long()
    return X, y


def make_model():
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(16, 64),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 2),
    )


class TrainResumeFlow(FlowSpec):
    epochs = Parameter("epochs", default=8, type=int, help="Epochs to train.")
    crash_at = Parameter(
        "crash-at",
        default=0,
        type=int,
        help="Kill the first attempt (os._exit) right after saving this epoch; 0: no crash.",
    )
    seed = Parameter("seed", default=0, type=int, help="Seed of data and initial weights.")
    background = Parameter(
        "background",
        default=False,
        type=bool,
        help="Save in the background (save(blocking=False)): the loop waits only for a copy.",
    )

    @step
    def start(self):
        self.next(self.train)

    @retry(times=2)
    @checkpoint
    @step
    def train(self):
        import torch

        torch.manual_seed(self.seed)
        X, y = make_data(self.seed)
        self.model = make_model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=3, gamma=0.5)
        self.epoch = 0
        self.losses = []

        if current.checkpoint.is_loaded:
            resumed = current.checkpoint.load()
            print(
                "Resumed from checkpoint %s (saved by attempt %d): continuing at epoch %d of %d"
                % (resumed.key, resumed.attempt, self.epoch + 1, self.epochs)
            )

        loss_fn = torch.nn.CrossEntropyLoss()
        while self.epoch < self.epochs:
            self.model.train()
            order = torch.randperm(len(X))  # random: resuming needs the RNG state too
            total = 0.0
            for batch in order.split(64):
                self.optimizer.zero_grad()
                loss = loss_fn(self.model(X[batch]), y[batch])
                loss.backward()
                self.optimizer.step()
                total += loss.item() * len(batch)
            self.scheduler.step()
            self.epoch += 1
            self.losses.append(total / len(X))
            saved = current.checkpoint.save(
                metadata={"epoch": self.epoch, "loss": self.losses[-1]},
                blocking=not self.background,
            )
            print("epoch %d  loss %.4f  saved %s" % (self.epoch, self.losses[-1], saved.key))
            if self.epoch == self.crash_at and current.retry_count == 0:
                current.checkpoint.wait()  # a background save of this epoch lands first
                print("Simulating a hard crash (os._exit) after epoch %d" % self.epoch, flush=True)
                os._exit(1)
        self.next(self.end)

    @step
    def end(self):
        print("Final loss %.4f after %d epochs" % (self.losses[-1], self.epoch))


if __name__ == "__main__":
    TrainResumeFlow()
