"""current.checkpoint.inspect() with no key, before and after the retry's save; the retry
ends with one card (tests/test_newcomer.py)."""

from metaflow import FlowSpec, checkpoint, current, retry, step


class InspectDefaultFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train)

    @retry(times=1)
    @checkpoint(exclude=["seen"])
    @step
    def train(self):
        self.count = 0
        self.seen = []
        if current.checkpoint.is_loaded:
            current.checkpoint.load()
            self.seen.append(current.checkpoint.inspect()["version"])
        while self.count < 3:
            self.count += 1
            current.checkpoint.save()
            self.seen.append(current.checkpoint.inspect()["version"])
            if self.count == 2 and current.retry_count == 0:
                raise RuntimeError("failure after save 2")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    InspectDefaultFlow()
