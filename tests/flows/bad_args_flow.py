"""@checkpoint on its train step with the arguments in CHECKPOINT_ARGS (a JSON object):
tests/test_decorator_validation.py runs it with bad arguments and with good ones."""

import json
import os

from metaflow import FlowSpec, checkpoint, step

CHECKPOINT_ARGS = json.loads(os.environ.get("CHECKPOINT_ARGS", "{}"))


class BadArgsFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @checkpoint(**CHECKPOINT_ARGS)
    @step
    def train(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BadArgsFlow()
