"""Which attributes a save captures: default, include, exclude."""

import pytest

from conftest import TEST_FLOWS

pytestmark = pytest.mark.flow


def test_default_include_and_exclude_capture(world):
    world.run_flow(TEST_FLOWS / "capture_flow.py")
    fields = world.python(
        """
        import json
        from metaflow import Checkpoint, Flow, namespace
        namespace(None)
        run = Flow("CaptureFlow").latest_run
        cp = Checkpoint()
        out = {}
        for step in ("default_capture", "include_capture", "exclude_capture"):
            (art,) = cp.list(task=run[step].task)
            out[step] = {"fields": sorted(art.implicit_manifest["fields"]),
                         "values": cp.load(art)}
        print(json.dumps(out, default=str))
        """
    )
    # Default: assigned, public, non-function state. Not: parent artifacts only read,
    # Parameters, private names, functions, classes, lambdas, Metaflow internals.
    assert fields["default_capture"]["fields"] == ["epoch", "model_state", "parent_reassigned"]
    assert fields["default_capture"]["values"] == {
        "epoch": 3, "model_state": {"w": [1.0, 2.0]}, "parent_reassigned": "new",
    }
    # include replaces the default and can name a parent artifact.
    assert fields["include_capture"]["fields"] == [
        "epoch", "model_extra", "model_state", "parent_untouched",
    ]
    assert fields["include_capture"]["values"]["parent_untouched"] == {"x": 1}
    # exclude removes matches (a lock here, which could not be saved at all).
    assert fields["exclude_capture"]["fields"] == ["kept"]
