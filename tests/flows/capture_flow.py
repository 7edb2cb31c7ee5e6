"""What each @checkpoint variant captures by default, with include and with exclude."""

import threading

from metaflow import FlowSpec, Parameter, checkpoint, current, step


def helper():
    return 1


class CaptureFlow(FlowSpec):
    lr = Parameter("lr", default=0.1)

    @step
    def start(self):
        self.parent_read = [1, 2, 3]
        self.parent_reassigned = "old"
        self.parent_untouched = {"x": 1}
        self.next(self.default_capture)

    @checkpoint
    @step
    def default_capture(self):
        assert self.parent_read == [1, 2, 3]  # only read: not captured
        assert self.lr == 0.1  # a Parameter: never captured
        self.parent_reassigned = "new"  # assigned in this step: captured
        self.model_state = {"w": [1.0, 2.0]}
        self.epoch = 3
        self._private = 1
        self.fn = helper
        self.cls = threading.Thread
        self.lam = lambda: 0
        current.checkpoint.save()
        self.next(self.include_capture)

    @checkpoint(include=["model_*", "parent_untouched", "epoch"])
    @step
    def include_capture(self):
        self.model_state = {"w": [3.0]}
        self.model_extra = 5
        self.epoch = 4
        self.other = "not included"
        current.checkpoint.save()
        self.next(self.exclude_capture)

    @checkpoint(exclude=["big_*", "lock"])
    @step
    def exclude_capture(self):
        self.big_cache = list(range(10))
        self.lock = threading.Lock()
        self.kept = "yes"
        current.checkpoint.save()
        del self.lock
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    CaptureFlow()
