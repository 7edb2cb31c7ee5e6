"""A retry that rebuilds its model, optimizer, LR scheduler and GradScaler, then loads: what
it holds afterwards is recorded for tests/test_restore_in_place.py."""

import os

import torch
from metaflow import FlowSpec, checkpoint, current, retry, step


class InPlaceFlow(FlowSpec):
    @retry(times=1)
    @checkpoint(card=False)
    @step
    def start(self):
        torch.manual_seed(current.retry_count)  # the retry builds different weights
        self.model = torch.nn.Linear(8, 4)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=2, gamma=0.5)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)
        built = {name: getattr(self, name) for name in ("model", "optimizer", "scheduler", "scaler")}
        if not current.checkpoint.is_loaded:
            inputs, targets = torch.randn(16, 8), torch.randn(16, 4)
            for _ in range(5):
                self.optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(self.model(inputs), targets)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
            # What the live objects must hold after a load, saved beside them.
            self.saved_scheduler = self.scheduler.state_dict()
            self.saved_scaler = self.scaler.state_dict()
            self.saved_lr = self.optimizer.param_groups[0]["lr"]
            self.saved_weight = self.model.weight.detach().clone()
            self.saved_momentum = self.optimizer.state[self.model.weight]["momentum_buffer"].clone()
            current.checkpoint.save()
            os._exit(1)  # killed right after the save; the retry resumes

        current.checkpoint.load()
        self.same_objects = {name: getattr(self, name) is obj for name, obj in built.items()}
        self.scheduler_state_matches = self.scheduler.state_dict() == self.saved_scheduler
        self.scaler_state_matches = self.scaler.state_dict() == self.saved_scaler
        self.scale = self.scaler.get_scale()
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.weight_matches = torch.equal(self.model.weight, self.saved_weight)
        # The live optimizer's state is keyed by the live parameters.
        self.momentum_matches = torch.equal(
            self.optimizer.state[self.model.weight]["momentum_buffer"], self.saved_momentum
        )
        self.scheduler_drives_live_optimizer = self.scheduler.optimizer is self.optimizer
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    InPlaceFlow()
