"""A step that saves 5 times, its load_policy taken from EAGER_FLOW_LOAD_POLICY (eager or
fresh); with --crash-after N every attempt of the run dies after its N-th save
(tests/test_eager.py)."""

import os

from metaflow import FlowSpec, Parameter, checkpoint, current, retry, step

LOAD_POLICY = os.environ.get("EAGER_FLOW_LOAD_POLICY", "eager")


class EagerFlow(FlowSpec):
    crash_after = Parameter("crash-after", default=0, type=int)

    @retry(times=1)
    @checkpoint(load_policy=LOAD_POLICY)
    @step
    def start(self):
        self.count = 0
        self.runs = []
        self.resumed_from = None
        if current.checkpoint.is_loaded:
            self.resumed_from = current.checkpoint.load().key
        while self.count < 5:
            self.count += 1
            self.runs.append(current.run_id)
            current.checkpoint.save(metadata={"count": self.count})
            if self.crash_after and self.count >= self.crash_after:
                os._exit(1)  # every attempt of this run dies
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    EagerFlow()
