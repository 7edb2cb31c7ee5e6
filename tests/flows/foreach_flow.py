"""@checkpoint(load_policy="eager") in the branches of a foreach: each branch saves data
the siblings share (8 MiB) and data of its own (tests/test_foreach_flow.py)."""

import numpy as np
from metaflow import FlowSpec, checkpoint, current, step

BASE_BYTES = 8 * 1024 * 1024


class ForeachFlow(FlowSpec):
    @step
    def start(self):
        self.shards = [10, 20, 30]
        self.next(self.train, foreach="shards")

    @checkpoint(load_policy="eager", card=False)
    @step
    def train(self):
        self.shard = self.input
        self.resumed_from = None
        self.resumed_shard = None
        self.rounds = 0
        if current.checkpoint.is_loaded:
            self.resumed_from = current.checkpoint.load().key
            self.resumed_shard = int(self.own[0])
        # The same for every sibling (say, frozen base weights); the rest is the branch's own.
        self.base = np.arange(BASE_BYTES // 8, dtype=np.float64)
        self.own = np.full(1000, self.input, dtype=np.int64)
        self.rounds += 1
        current.checkpoint.save()
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ForeachFlow()
