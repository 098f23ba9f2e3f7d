"""The config file's optional keys: an entry's norm scaling factor, the file's processing facts."""

from __future__ import annotations

import json

import pytest

from saezarr.errors import ConfigError
from saezarr.inputs.configs import load_config_file


def _write(tmp_path, entry: dict, **top) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": "m", "sae_repo": "r", "configs": [{"path": "a", **entry}], **top}))
    return str(path)


def test_today_s_files_read_as_before(tmp_path):
    config = load_config_file(_write(tmp_path, {"layer": 3}))
    assert config.configs[0].norm_scaling_factor is None
    assert (config.model_from_pretrained_kwargs, config.prepend_bos) == ({}, None)


def test_a_norm_scaling_factor_and_processing_facts_are_read(tmp_path):
    kwargs = {"center_writing_weights": True}
    path = _write(tmp_path, {"norm_scaling_factor": 12.5}, model_from_pretrained_kwargs=kwargs, prepend_bos=False)
    config = load_config_file(path)
    assert config.configs[0].norm_scaling_factor == 12.5
    assert (config.model_from_pretrained_kwargs, config.prepend_bos) == (kwargs, False)


@pytest.mark.parametrize(
    ("entry", "top", "message"),
    [
        ({"norm_scaling_factor": 0}, {}, r"configs\[0\]: 'norm_scaling_factor' must be a positive number, got 0$"),
        ({"norm_scaling_factor": "2"}, {}, r"'norm_scaling_factor' must be a positive number, got '2'$"),
        ({}, {"prepend_bos": "yes"}, r"'prepend_bos' must be true or false, got 'yes'$"),
        ({}, {"model_from_pretrained_kwargs": [1]}, r"'model_from_pretrained_kwargs' must be an object"),
    ],
)
def test_bad_values_are_refused_in_one_line(tmp_path, entry, top, message):
    path = _write(tmp_path, entry, **top)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config_file(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_a_derived_name_says_a_site_other_than_resid_post():
    from saezarr.inputs.configs import SAEConfig

    assert SAEConfig(5, 24, "x", hook="blocks.5.hook_resid_post").name == "layer_5_l0_24"
    assert SAEConfig(5, 24, "x").name == "layer_5_l0_24"
    assert SAEConfig(5, 24, "x", hook="blocks.5.hook_mlp_out").name == "layer_5_hook_mlp_out_l0_24"
    assert SAEConfig(5, 24, "x", hook="blocks.5.attn.hook_z").name == "layer_5_attn-hook_z_l0_24"
    assert SAEConfig(5, 24, "x", hook="blocks.5.attn.hook_z", given_name="z").name == "z"
