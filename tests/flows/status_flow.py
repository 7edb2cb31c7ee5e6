"""A run with one @checkpoint step done, one failed and one still running (for `checkpoint status`).

`broken` records its failure, then a non-daemon thread keeps its process alive until the
test writes SIGNALS/release, so the run goes on while the test looks at it.
"""

import os, threading, time
from metaflow import FlowSpec, Parameter, checkpoint, current, step

def wait_for(path, timeout=120):
    end = time.time() + timeout
    while not os.path.exists(path) and time.time() < end:
        time.sleep(0.05)

class StatusFlow(FlowSpec):
    signals = Parameter("signals", default=".")

    @step
    def start(self):
        self.next(self.done, self.broken, self.busy)

    @checkpoint
    @step
    def done(self):
        self.x = 1
        current.checkpoint.save(metadata={"loss": 0.5})
        self.next(self.join)

    @checkpoint
    @step
    def broken(self):
        self.x = 2
        current.checkpoint.save(metadata={"loss": 0.9})
        release = os.path.join(self.signals, "release")
        # Keep the process alive after the failure is recorded, so the run goes on.
        threading.Thread(target=wait_for, args=(release,)).start()
        raise RuntimeError("broken on purpose")
        self.next(self.join)  # never reached

    @checkpoint
    @step
    def busy(self):
        self.x = 3
        current.checkpoint.save(metadata={"loss": 0.7})
        wait_for(os.path.join(self.signals, "release"))
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass

if __name__ == "__main__":
    StatusFlow()
