"""A store is plain Zarr v3: xarray opens it lazily in a Python that cannot import saezarr at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

from saezarr.inputs.fragments import make_fragments
from saezarr.inputs.sentences import read_labeled_csv
from saezarr.models.language_model import load_tokenizer, resolve_model

CONFIG = "layer_12_l0_20"

READER = textwrap.dedent(
    """
    import json, sys

    class BlockSaezarr:
        '''Refuses to import saezarr, wherever it is installed (the editable install's finder included).'''

        def find_spec(self, name, path=None, target=None):
            if name == "saezarr" or name.startswith("saezarr."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, BlockSaezarr())
    try:
        import saezarr  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("saezarr is importable here; the isolation is broken")

    import dask.array as da
    import numpy as np
    import xarray as xr

    store, config, expected_file, texts_file = sys.argv[1:5]
    ds = xr.open_zarr(store)
    activations = ds["activations"]
    assert activations.dims == ("config", "fragment", "feature"), activations.dims
    assert isinstance(activations.data, da.Array), type(activations.data)
    one = activations.sel(config=config)
    assert isinstance(one.data, da.Array)
    final = one.isel(fragment=np.flatnonzero(ds["is_final_token"].values))
    assert isinstance(final.data, da.Array), "selection must stay lazy until read"
    values = final.values
    expected = np.load(expected_file)
    assert values.dtype == np.float32 and values.shape == expected.shape, (values.dtype, values.shape)
    np.testing.assert_array_equal(values, expected)
    texts = json.load(open(texts_file, encoding="utf-8"))
    assert ds["fragment_text"].values[ds["is_final_token"].values].tolist() == texts
    # label-wise means over fragments, computed by dask
    # (coordinates off the dimensions are lazy too: load the grouping one first, as xarray asks)
    by_label = one.groupby(ds["concept_strength_label"].compute()).mean("fragment").compute()
    labels = ds["concept_strength_label"].values
    for label in by_label["concept_strength_label"].values.tolist():
        rows = one.values[labels == label]
        np.testing.assert_allclose(by_label.sel(concept_strength_label=label).values, rows.mean(0), rtol=1e-5, atol=1e-7)
    assert int(ds["layer"].sel(config=config)) == int(config.split("_")[1])
    assert "saezarr" not in sys.modules
    assert not any(name.startswith("saezarr") for name in sys.modules)
    print("read", values.shape[0], "fragments of", config)
    """
)


@pytest.fixture(scope="module")
def store(tiny_store_chunk64):
    """`build()` of the tiny model and the demo CSV in chunks of 64 fragments (tests/conftest.py): read only."""
    return tiny_store_chunk64.path


def test_open_zarr_without_saezarr(tiny, store, tmp_path):
    # the expected values, read with zarr alone and located by our own fragment table
    table = make_fragments(read_labeled_csv(tiny.csv), load_tokenizer(resolve_model(str(tiny.model))), "token").table
    finals = np.flatnonzero(table["is_final_token"].to_numpy())
    index = [c.name for c in tiny.configs].index(CONFIG)
    expected = zarr.open_array(store / "activations", mode="r")[index][finals]
    assert expected.shape == (40, 128) and (expected > 0).any()
    np.save(tmp_path / "expected.npy", expected)
    (tmp_path / "texts.json").write_text(
        json.dumps(table["fragment_text"].to_numpy()[finals].tolist()), encoding="utf-8"
    )
    script = tmp_path / "reader.py"
    script.write_text(READER, encoding="utf-8")

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    process = subprocess.run(
        [
            sys.executable,
            "-I",
            str(script),
            str(store),
            CONFIG,
            str(tmp_path / "expected.npy"),
            str(tmp_path / "texts.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr + process.stdout
    assert process.stdout.strip() == f"read 40 fragments of {CONFIG}"


def test_block_really_blocks(tmp_path):
    """The same isolation makes `import saezarr` fail (so the test above would notice a dependency on it)."""
    script = tmp_path / "probe.py"
    script.write_text(READER.split("import dask.array")[0] + "import saezarr\n", encoding="utf-8")
    process = subprocess.run(
        [sys.executable, "-I", str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert process.returncode == 1
    assert "ModuleNotFoundError: No module named 'saezarr' (blocked)" in process.stderr
    # and without the block, this interpreter would import it
    plain = subprocess.run(
        [sys.executable, "-I", "-c", "import saezarr"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert plain.returncode == 0, plain.stderr
