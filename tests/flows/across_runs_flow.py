"""current.checkpoint.list() and list(full_namespace=True) from a step run several times
(tests/test_seed_compat.py)."""

from metaflow import FlowSpec, checkpoint, current, step

class AcrossRunsFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @checkpoint
    @step
    def train(self):
        self.value = 1
        current.checkpoint.save(name="weights")
        self.mine = [a.key for a in current.checkpoint.list()]
        self.everywhere = [a.key for a in current.checkpoint.list(full_namespace=True)]
        self.identifier = current.checkpoint.task_identifier
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == "__main__":
    AcrossRunsFlow()
