"""Loading by artifact / dict / key, list filters, metadata round trip, and bad input in a step."""

import pytest

from conftest import TEST_FLOWS

pytestmark = pytest.mark.flow


def test_references_metadata_and_errors(world):
    world.run_flow(TEST_FLOWS / "references_flow.py")
    result = world.python(
        """
        import json
        from metaflow import Flow, namespace
        namespace(None)
        task = Flow("ReferencesFlow").latest_run["start"].task
        print(json.dumps({"checks": task.data.checks, "errors": task.data.errors}))
        """
    )
    checks, errors = result["checks"], result["errors"]
    assert checks["by_artifact"] == 1
    assert checks["by_dict"] == 1
    assert checks["by_key"] == 2
    assert checks["versions"] == [1, 2, 3]
    assert checks["names"] == ["checkpoint", "other", "checkpoint"]
    assert checks["other_versions"] == [2]
    assert checks["attempt0_versions"] == [1, 2, 3]
    assert checks["attempt1_versions"] == []
    # Exactly the user's metadata comes back: no internal keys added.
    assert checks["metadata"] == {"loss": 0.5, "tags": ["a", "b"], "nested": {"k": 1}, "flag": None}
    assert checks["inspect_is_manifest"] is True
    assert checks["from_dict_equal"] is True
    assert checks["is_loaded"] is False and checks["loaded"] is None

    # Every bad input failed with a clear message...
    assert errors["name_dotdot"].startswith("CheckpointException") and "'../x'" in errors["name_dotdot"]
    assert "'a/b'" in errors["name_slash"] and "step *start*" in errors["name_slash"]
    assert errors["metadata_object"].startswith("CheckpointSerializationError")
    assert "metadata['obj']" in errors["metadata_object"] and "builtins.object" in errors["metadata_object"]
    assert errors["missing_key"].startswith("CheckpointNotFound")
    assert "not a checkpoint key" in errors["not_a_key"]
    assert errors["load_nothing"].startswith("CheckpointNotFound")
    assert "is_loaded" in errors["load_nothing"]
    for label, field, type_name in (
        ("lock_field", "self.lock", "_thread.lock"),
        ("generator_field", "self.gen", "builtins.generator"),
    ):
        message = errors[label]
        assert message.startswith("CheckpointSerializationError")
        assert field in message and type_name in message and "exclude=" in message
    # ...and nothing saved before was lost or replaced.
    assert checks["unchanged_after_errors"] is True
    assert checks["newest_still_loads"] == 3
