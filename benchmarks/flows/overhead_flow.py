"""start -> end, saving nothing. Run plain, and with `--with checkpoint` on every step."""

from metaflow import FlowSpec, step


class OverheadFlow(FlowSpec):
    @step
    def start(self):
        self.x = 1
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    OverheadFlow()
