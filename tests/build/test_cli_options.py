"""Option errors of `saezarr build`: one line naming the option, exit code 2, no store written."""

from __future__ import annotations

import pytest
import torch

from saezarr.cli import main
from saezarr.testing.synthetic import DEMO_CSV


def _build(tmp_path, demo_config, *extra: str) -> list[str]:
    return [
        "build",
        "--input",
        str(DEMO_CSV),
        "--output",
        str(tmp_path / "out.zarr"),
        "--config",
        str(demo_config),
        "--quiet",
        *extra,
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("--device", "tpu9"), "saezarr: error: --device tpu9: not a device saezarr runs on (use cpu or cuda)"),
        (("--device", "meta"), "saezarr: error: --device meta: not a device saezarr runs on (use cpu or cuda)"),
        (("--sae-memory", "lots"), "saezarr: error: --sae-memory: expected a size such as 8GiB or 500MB, got 'lots'"),
        (("--layers", "1"), "saezarr: error: --layers: no config for layer 1 in the config file"),
        (
            ("--configs", "layer_2_l0_25"),
            "saezarr: error: --configs: unknown config 'layer_2_l0_25' (did you mean 'layer_2_l0_24'?)",
        ),
    ],
)
def test_bad_option_is_one_line_and_writes_nothing(tmp_path, demo_config, capsys, extra, expected):
    assert main(_build(tmp_path, demo_config, *extra)) == 2
    err = capsys.readouterr().err
    assert err.strip() == expected
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused(tmp_path, demo_config, capsys):
    assert main(_build(tmp_path, demo_config, "--device", "cuda")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saezarr: error: --device cuda: CUDA is not available here")
    assert not (tmp_path / "out.zarr").exists()


def test_sae_memory_budget_splits_passes_without_changing_results(tmp_path, demo_config, capsys):
    from saezarr.build.pipeline import BuildOptions, build
    from saezarr.store.format import Store

    def run(name: str, budget: int):
        options = BuildOptions(
            input=DEMO_CSV,
            output=tmp_path / name,
            config_file=demo_config,
            sae_memory=budget,
            quiet=True,
            chunk_fragments=128,
        )
        return build(options)

    one = run("one.zarr", 8 * 2**30)
    # each demo encoder is 4 * (64 * 512 + 2 * 512) bytes: a budget of one encoder forces a pass per SAE
    many = run("many.zarr", 4 * (64 * 512 + 2 * 512))
    assert (one.model_passes, many.model_passes) == (1, 6)
    assert one.sae_loads == many.sae_loads == 6
    a, b = Store(tmp_path / "one.zarr").array[:], Store(tmp_path / "many.zarr").array[:]
    assert a.tobytes() == b.tobytes()


def test_bfloat16_model_gives_float32_latents_close_to_float32(tmp_path, demo_config):
    import numpy as np
    import xarray as xr

    from saezarr.build.pipeline import BuildOptions, build

    for dtype in ("float32", "bfloat16"):
        summary = build(
            BuildOptions(
                input=DEMO_CSV, output=tmp_path / f"{dtype}.zarr", config_file=demo_config, dtype=dtype, quiet=True
            )
        )
        assert summary.complete
    full = xr.open_zarr(tmp_path / "float32.zarr")
    half = xr.open_zarr(tmp_path / "bfloat16.zarr")
    assert half.attrs["model_dtype"] == "bfloat16"
    assert half.activations.dtype == np.float32
    a, b = full.activations.values, half.activations.values
    assert np.isfinite(b).all()
    # bfloat16 residuals move pre-activations by ~1%: the same latents fire, with nearly the same values
    fired_a, fired_b = a > 0, b > 0
    assert (fired_a == fired_b).mean() > 0.99
    both = fired_a & fired_b
    assert np.corrcoef(a[both], b[both])[0, 1] > 0.95
    assert not np.array_equal(a, b)  # the dtype really reached the model
