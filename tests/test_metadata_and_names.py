"""Bad names and metadata fail at save() with a message naming the key, never later."""

import numpy as np
import pytest

from engine_helpers import State, local_store, make_session
from metaflow_extensions.implicit_checkpoint.engine.errors import (
    CheckpointException,
    CheckpointSerializationError,
)


@pytest.fixture
def session(tmp_path):
    state = State()
    state.x = 1
    return make_session(local_store(tmp_path), state)


@pytest.mark.parametrize("name", ["a\n", "a\r\n", "\na", "best\n"])
def test_names_with_a_newline_are_rejected(session, name):
    with pytest.raises(CheckpointException, match="is not allowed"):
        session.save(name=name)
    assert session.list() == []


def test_numpy_bools_and_ints_are_plain_metadata(session):
    saved = session.save(metadata={"done": np.bool_(True), "n": np.int32(3), "on": [np.bool_(False)]})
    assert saved.metadata == {"done": True, "n": 3, "on": [False]}
    assert type(session.list()[-1].metadata["done"]) is bool


@pytest.mark.parametrize("number", [2**70, -(2**63) - 1, 2**64])
def test_an_int_too_large_for_storage_is_named_at_save(session, number):
    with pytest.raises(CheckpointSerializationError, match=r"metadata\['stats'\]\['big'\] is the int"):
        session.save(metadata={"stats": {"big": number}})
    assert session.list() == []


def test_the_extreme_64_bit_ints_are_stored(session):
    saved = session.save(metadata={"low": -(2**63), "high": 2**64 - 1})
    assert session.inspect(saved)["metadata"] == {"low": -(2**63), "high": 2**64 - 1}


def test_self_referencing_metadata_is_named(session):
    loop = {"a": 1}
    loop["again"] = [loop]
    with pytest.raises(CheckpointSerializationError, match=r"metadata\['loop'\]\['again'\]\[0\] contains itself"):
        session.save(metadata={"loop": loop})


def test_deep_metadata_is_named_not_a_recursion_error(session):
    deep = current = []
    for _ in range(10_000):
        current.append([])
        current = current[0]
    with pytest.raises(CheckpointSerializationError, match="nested more than 32 levels"):
        session.save(metadata={"deep": deep})


def test_shared_but_acyclic_metadata_is_fine(session):
    shared = [1, 2]
    saved = session.save(metadata={"a": shared, "b": shared})
    assert saved.metadata == {"a": [1, 2], "b": [1, 2]}
