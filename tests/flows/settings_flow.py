"""One save in a task that counts the fsync / fdatasync calls made on checkpoint files: the
counters are installed before Metaflow (and so the store) is imported
(tests/test_settings_mapping.py)."""

import os

SYNCED = []


def _counting(real):
    def sync(fd):
        try:
            path = os.readlink("/proc/self/fd/%d" % fd)
        except OSError:
            path = ""
        if "_implicit_checkpoints" in path:
            SYNCED.append(path)
        return real(fd)
    return sync


os.fsync = _counting(os.fsync)
os.fdatasync = _counting(os.fdatasync)

from metaflow import FlowSpec, checkpoint, current, step  # noqa: E402


class SettingsFlow(FlowSpec):
    @checkpoint(card=False)
    @step
    def start(self):
        self.weights = list(range(5000))
        current.checkpoint.save()
        self.synced = len(SYNCED)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SettingsFlow()
