"""The train side's association table and the names the CLI and config validation offer stay the same set."""

from types import SimpleNamespace

import pytest

from mult.config import ASSOCIATIONS
from mult.train.associations import ASSOCIATE, unknown_association


def test_every_configurable_association_has_an_entry_and_no_other():
    assert sorted(ASSOCIATE) == sorted(ASSOCIATIONS), (
        "mult.config.ASSOCIATIONS and mult.train.associations.ASSOCIATE must name the same associations: "
        f"only in the config {sorted(set(ASSOCIATIONS) - set(ASSOCIATE))}, "
        f"only in the table {sorted(set(ASSOCIATE) - set(ASSOCIATIONS))}")


def test_none_means_no_association_and_the_others_are_functions():
    assert ASSOCIATE["none"] is None
    assert all(callable(fn) for name, fn in ASSOCIATE.items() if name != "none")


def test_an_unknown_name_raises_naming_it():
    with pytest.raises(ValueError, match="unknown association 'fast'"):
        unknown_association(None, None, None, None, SimpleNamespace(association="fast"), None, 0)
