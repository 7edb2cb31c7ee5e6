"""Loading by artifact, dict and key; list filters; metadata; bad input inside a step."""

import threading

from metaflow import (
    CheckpointArtifact,
    CheckpointException,
    FlowSpec,
    checkpoint,
    current,
    step,
)


class ReferencesFlow(FlowSpec):
    @checkpoint
    @step
    def start(self):
        self.value = 1
        first = current.checkpoint.save(
            metadata={"loss": 0.5, "tags": ["a", "b"], "nested": {"k": 1}, "flag": None}
        )
        self.value = 2
        second = current.checkpoint.save(name="other")
        self.value = 3
        current.checkpoint.save()
        checks = {}

        self.value = 9
        current.checkpoint.load(first)
        checks["by_artifact"] = self.value
        self.value = 9
        current.checkpoint.load(first.to_dict())
        checks["by_dict"] = self.value
        self.value = 9
        current.checkpoint.load(second.key)
        checks["by_key"] = self.value

        checks["versions"] = [a.version for a in current.checkpoint.list()]
        checks["names"] = [a.name for a in current.checkpoint.list()]
        checks["other_versions"] = [a.version for a in current.checkpoint.list(name="other")]
        checks["attempt0_versions"] = [a.version for a in current.checkpoint.list(attempt=0)]
        checks["attempt1_versions"] = [a.version for a in current.checkpoint.list(attempt=1)]
        checks["metadata"] = first.metadata
        checks["inspect_is_manifest"] = current.checkpoint.inspect(first) == first.implicit_manifest
        checks["from_dict_equal"] = CheckpointArtifact.from_dict(first.to_dict()) == first
        checks["is_loaded"] = current.checkpoint.is_loaded
        checks["loaded"] = current.checkpoint.loaded

        before = [a.key for a in current.checkpoint.list()]
        errors = {}

        def attempt(label, call):
            try:
                call()
                errors[label] = None
            except CheckpointException as ex:
                errors[label] = "%s: %s" % (type(ex).__name__, ex)

        attempt("name_dotdot", lambda: current.checkpoint.save(name="../x"))
        attempt("name_slash", lambda: current.checkpoint.save(name="a/b"))
        attempt("metadata_object", lambda: current.checkpoint.save(metadata={"obj": object()}))
        attempt("missing_key", lambda: current.checkpoint.load(first.key.rsplit("/", 1)[0] + "/77"))
        attempt("not_a_key", lambda: current.checkpoint.load("nonsense"))
        attempt("load_nothing", lambda: current.checkpoint.load())
        self.lock = threading.Lock()
        attempt("lock_field", lambda: current.checkpoint.save())
        del self.lock
        self.gen = (i for i in range(3))
        attempt("generator_field", lambda: current.checkpoint.save())
        del self.gen

        checks["unchanged_after_errors"] = [a.key for a in current.checkpoint.list()] == before
        self.value = 9
        current.checkpoint.load(current.checkpoint.list()[-1])
        checks["newest_still_loads"] = self.value
        self.checks = checks
        self.errors = errors
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ReferencesFlow()
