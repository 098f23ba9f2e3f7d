"""The version bridges: what older xarray writes is rewritten to today's bytes, the shard index checksum is CRC32C
from whichever library zarr installed, and CSV floats read back exactly. Each path also runs at the floors
(scripts/check_floors.sh); these pin down the rewrites with today's versions."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import xarray as xr

from saezarr.compat import crc32c, exact_floats, fill_value_encoding, settle_layout


def test_a_boolean_and_a_fill_value_as_older_xarray_writes_them_become_todays(tmp_path):
    dataset = xr.Dataset(
        {"x": ("n", np.zeros(4, dtype=np.float32))}, coords={"flag": ("n", np.array([True, False, True, True]))}
    )
    dataset.to_zarr(tmp_path, zarr_format=3, encoding={"x": fill_value_encoding(np.nan)}, consolidated=False)
    settle_layout(tmp_path, {"x": "NaN"})  # with today's xarray this changes nothing
    today = {name: (tmp_path / name / "zarr.json").read_bytes() for name in ("flag", "x")}
    assert json.loads(today["flag"])["data_type"] == "bool" and json.loads(today["x"])["fill_value"] == "NaN"
    flag = json.loads(today["flag"])  # as xarray before 2026.9 writes it: int8, its dtype an attribute
    flag.update(data_type="int8", fill_value=0, attributes={"dtype": "bool"})
    flag["codecs"][0] = {"name": "bytes", "configuration": {"endian": "little"}}
    (tmp_path / "flag" / "zarr.json").write_text(json.dumps(flag, indent=2))
    x = json.loads(today["x"])  # as xarray before 2025.3.1 writes it: no fill value of ours
    x["fill_value"] = 0.0
    (tmp_path / "x" / "zarr.json").write_text(json.dumps(x, indent=2))
    settle_layout(tmp_path, {"x": "NaN"})
    assert {name: (tmp_path / name / "zarr.json").read_bytes() for name in today} == today
    settle_layout(tmp_path, {"x": "NaN"})  # what is right stays untouched
    assert {name: (tmp_path / name / "zarr.json").read_bytes() for name in today} == today


def test_crc32c_is_the_castagnoli_checksum():
    assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C (RFC 3720)
    assert crc32c(b"") == 0


def test_csv_floats_read_back_exactly():
    values = np.random.default_rng(0).standard_normal(200)
    text = pd.DataFrame({"v": values}).to_csv(index=False)
    assert np.array_equal(pd.read_csv(io.StringIO(text), **exact_floats())["v"].to_numpy(), values)
