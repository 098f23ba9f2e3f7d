"""`saezarr.info` and `saezarr info` print one `StoreInfo`: its dict is `store_info`'s, key for key and in order, and
the command line's JSON and text are exactly what they were before the dataclass."""

from __future__ import annotations

import json

import pytest
from clitools import run_cli
from IPython.lib.pretty import pretty

import saezarr
from saezarr.store.reading import format_info, store_info
from saezarr.store_info import ConfigProgress, ResidualsInfo, StoreInfo


@pytest.fixture(scope="module")
def stores(planted, demo_partial) -> dict:
    """A store with its residual stream (the planted one) and a partly built demo store without (`build --demo
    --max-chunks 1 --chunk-fragments 64`, tests/conftest.py)."""
    return {"residuals": planted.cued, "partial": demo_partial}


def _key_order(value):
    if isinstance(value, dict):
        return [(key, _key_order(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [_key_order(item) for item in value]
    return None


@pytest.mark.parametrize("kind", ["residuals", "partial"])
def test_store_info_is_the_summary_as_a_dataclass(stores, kind):
    path = stores[kind]
    info = saezarr.info(path)
    assert isinstance(info, StoreInfo) and info == StoreInfo.of(path)
    expected = store_info(path)
    assert info.to_dict() == expected and _key_order(info.to_dict()) == _key_order(expected)
    assert all(isinstance(config, ConfigProgress) for config in info.configs)
    assert isinstance(info.residuals, ResidualsInfo) == (kind == "residuals")
    assert info.complete == (kind == "residuals")
    assert str(info) == pretty(info) == format_info(expected)  # what Jupyter shows: the command line's text


@pytest.mark.parametrize("kind", ["residuals", "partial"])
def test_the_command_line_prints_what_it_printed_before(stores, kind):
    path = stores[kind]
    expected = store_info(path)
    as_json = run_cli("info", path, "--json")
    assert (as_json.returncode, as_json.stderr) == (0, "")
    assert as_json.stdout == json.dumps(expected, indent=2) + "\n"
    as_text = run_cli("info", path)
    assert (as_text.returncode, as_text.stderr) == (0, "")
    assert as_text.stdout == format_info(expected) + "\n"
