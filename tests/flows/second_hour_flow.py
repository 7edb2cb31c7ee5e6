"""A user's second hour, in one run: what tests/test_newcomer.py looks at afterwards.

- ``train`` is a foreach over two learning rates (``checkpoint list`` has a FOREACH column).
- It keeps the model, an Adam optimizer and a StepLR scheduler (``inspect``'s sizes must add
  up: the scheduler reaches the optimizer's tensors, the optimizer the model's).
- ``include=`` names those three only, so ``self.epoch`` is left out: the log says so at the
  first save, and again when branch 0's retry loads a checkpoint without it.
- ``keep_last=1``: retention removes older checkpoints (the card says how many each
  attempt saved and kept); the metadata is ``epoch`` only (the card says a counter labels
  the x axis instead of "no numeric metadata").
- A user's own ``@card(id="notes")`` sits beside the checkpoint card.
"""

from metaflow import FlowSpec, card, checkpoint, current, retry, step
from metaflow.cards import Markdown


class SecondHourFlow(FlowSpec):
    @step
    def start(self):
        self.rates = [0.05, 0.01]
        self.next(self.train, foreach="rates")

    @card(type="blank", id="notes")
    @retry(times=1)
    @checkpoint(include=["model", "optimizer", "scheduler"], keep_last=1)
    @step
    def train(self):
        import torch  # here, not at the top: the card processes import this file too

        current.card["notes"].append(Markdown("the user's own notes, branch %d" % self.index))
        torch.manual_seed(0)
        x, y = torch.randn(64, 8), torch.randn(64, 1)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.input)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1)
        self.epoch = 0
        if current.checkpoint.is_loaded:
            current.checkpoint.load()
        self.started_at = self.epoch
        while self.epoch < 3:
            self.optimizer.zero_grad()
            torch.nn.functional.mse_loss(self.model(x), y).backward()
            self.optimizer.step()
            self.scheduler.step()
            self.epoch += 1
            current.checkpoint.save(metadata={"epoch": self.epoch})
            if self.epoch == 2 and self.index == 0 and current.retry_count == 0:
                raise RuntimeError("simulated crash after epoch 2")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.started_at = [i.started_at for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        print("started at", self.started_at)


if __name__ == "__main__":
    SecondHourFlow()
