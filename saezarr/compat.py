"""The differences between the dependency versions saezarr supports, each bridged in one place (USAGE.md,
"Supported versions")."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    import zarr

TRANSFORMERS_DTYPE = (4, 56)  # from here from_pretrained takes the weights' dtype as `dtype` (before: `torch_dtype`)
MULTIMODAL_GEMMA3_BASE = (4, 52)  # from here AutoModel loads a multimodal Gemma 3 (as Gemma3Model)
GEMMA3_TEXT_BASE = (5,)  # from here AutoModel loads a Gemma 3 text checkpoint's weights (4.x leaves them random)


def release(package: str) -> tuple[int, ...]:
    """The installed package's release numbers, e.g. (4, 56, 0) for transformers 4.56.0.dev0."""
    from importlib.metadata import version

    match = re.match(r"\d+(\.\d+)*", version(package))
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """transformers' from_pretrained keyword for the weights' dtype: `dtype` from 4.56, `torch_dtype` before."""
    return {"dtype" if release("transformers") >= TRANSFORMERS_DTYPE else "torch_dtype": dtype}


def layer_output(output: Any) -> torch.Tensor:
    """A decoder layer's hidden states from what its forward returned: a tensor from transformers 5, a tuple's first
    element in 4.x."""
    return output[0] if isinstance(output, tuple) else output


def load_base_model(name: str | Path, dtype: torch.dtype, **kwargs: Any) -> Any:
    """The base model (no LM head) of a checkpoint (a folder or hub id) as transformers 5's AutoModel.from_pretrained
    loads it, with the weights in dtype; kwargs go to from_pretrained (`revision` to the config's too)."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(name, revision=kwargs.get("revision")).model_type
    return _base_of(_base_model_class(model_type).from_pretrained(name, **dtype_kwargs(dtype), **kwargs))


def build_base_model(config: Any) -> Any:
    """The base model of a config, built with fresh weights (on the meta device inside `with torch.device("meta")`)."""
    return _base_of(_base_model_class(config.model_type).from_config(config))


def gemma3_layers() -> str:
    """Where a multimodal Gemma 3 base model keeps its language model's decoder layers."""
    if release("transformers") >= MULTIMODAL_GEMMA3_BASE:
        return "language_model.layers"  # Gemma3Model
    return "language_model.model.layers"  # Gemma3ForConditionalGeneration, whose language model is a Gemma3ForCausalLM


def portable_tokenizer(folder: Path) -> None:
    """Make the PreTrainedTokenizerFast saved in folder load in transformers 4.x and 5.x alike: 5.x records its class
    as `TokenizersBackend`, unknown to 4.x, which both know as PreTrainedTokenizerFast."""
    path = folder / "tokenizer_config.json"
    config = {**json.loads(path.read_text(encoding="utf-8")), "tokenizer_class": "PreTrainedTokenizerFast"}
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _base_model_class(model_type: str) -> Any:
    """The Auto class whose model holds a model type's base model: AutoModel, but before transformers 5 a Gemma 3 text
    checkpoint loads its weights only as Gemma3ForCausalLM (the base model's `language_model` prefix does not match
    the checkpoint's `model.`), and before 4.52 AutoModel has no multimodal Gemma 3 (Gemma3ForConditionalGeneration)."""
    import transformers

    if model_type == "gemma3_text" and release("transformers") < GEMMA3_TEXT_BASE:
        return transformers.AutoModelForCausalLM
    if model_type == "gemma3" and release("transformers") < MULTIMODAL_GEMMA3_BASE:
        return transformers.AutoModelForImageTextToText
    return transformers.AutoModel


def _base_of(model: Any) -> Any:
    """The base model within a model of `_base_model_class`: a Gemma3ForCausalLM's `model`, or the model itself."""
    return model.model if type(model).__name__ == "Gemma3ForCausalLM" else model


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE=1, as snapshot_download's local_files_only: without it huggingface_hub 1.x to 2.1 ask
    the hub for a cached commit's file list, and fail offline."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hide_zarr_codec_notice() -> None:
    """Silence zarr 3.0's warning, on every open of a string array, that the vlen-utf8 codec (which saezarr's string
    coordinates use, as zarr 3.1 writes them too) is not in the Zarr v3 spec: it would break one-line errors."""
    warnings.filterwarnings("ignore", message="The codec `vlen-utf8` is currently not part", module=r"zarr\.")


def writing_empty_chunks(array: zarr.Array) -> zarr.Array:
    """The array, writing every chunk even if all fill value (`with_config` from zarr 3.1.6, the constructor before)."""
    if hasattr(array, "with_config"):
        return array.with_config({"write_empty_chunks": True})
    import zarr
    from zarr.core.array import AsyncArray

    config = {"write_empty_chunks": True}
    return zarr.Array(AsyncArray(array.metadata, array.store_path, config=config))  # type: ignore[call-overload]  # one overload per metadata version


def crc32c(data: bytes) -> int:
    """The CRC32C checksum of data, from the library the installed zarr depends on (zarr 3.1: google-crc32c, 3.0:
    crc32c); numcodecs' CRC32C codec needs the one its own version expects."""
    try:
        import google_crc32c
    except ImportError:
        from crc32c import crc32c as checksum

        return checksum(data)
    return google_crc32c.value(data)


XARRAY_FILL_VALUE = (2025, 3, 1)  # from here xarray's to_zarr sets a Zarr v3 array's fill value
XARRAY_READS_ZARR_3_1 = (2025, 6)  # from here xarray's open_zarr reads the arrays zarr 3.1's data types describe


def fill_value_encoding(fill_value: float) -> dict[str, float]:
    """xarray's to_zarr encoding for a Zarr v3 array's fill value (none before 2025.3.1: `settle_layout` sets it)."""
    return {"fill_value": fill_value} if release("xarray") >= XARRAY_FILL_VALUE else {}


def check_xarray_reads_zarr() -> None:
    """Refuse in one line xarray before 2025.6 beside zarr 3.1 or later: its open_zarr fails on every Zarr v3 array
    (AttributeError: 'Float32' object has no attribute 'value'), and pip installs the pair without complaint."""
    from saezarr.errors import SaezarrError

    if release("xarray") < XARRAY_READS_ZARR_3_1 and release("zarr") >= (3, 1):
        from importlib.metadata import version

        raise SaezarrError(
            f"xarray {version('xarray')} cannot open Zarr v3 stores with zarr {version('zarr')} (xarray before 2025.6 "
            "reads zarr 3.0's data types only); install xarray>=2025.6 or zarr<3.1"
        )


def settle_layout(folder: Path, fill_values: dict[str, str]) -> None:
    """Rewrite the arrays' zarr.json that an older xarray's to_zarr wrote into folder as today's writes them: booleans
    as Zarr `bool` (before 2026.9: `int8` with an attribute `dtype: bool`, the same chunk bytes) and the fill values
    {array: JSON value} asked for (before 2025.3.1 it sets none). Files already right are left untouched."""
    from saezarr.durable.folders import write_durably

    for path in sorted(folder.glob("*/zarr.json")):
        meta = json.loads(path.read_text())
        before = json.dumps(meta)
        if meta.get("data_type") == "int8" and meta.get("attributes", {}).get("dtype") == "bool":
            del meta["attributes"]["dtype"]
            meta["data_type"], meta["fill_value"] = "bool", bool(meta["fill_value"])
            meta["codecs"] = [{"name": "bytes"} if c.get("name") == "bytes" else c for c in meta["codecs"]]
        if path.parent.name in fill_values:
            meta["fill_value"] = fill_values[path.parent.name]
        if json.dumps(meta) != before:
            write_durably(path, json.dumps(meta, indent=2).encode())


PANDAS_EXACT_FLOATS = (3,)  # from here read_csv parses floats exactly by default (and deprecates float_precision)


def exact_floats() -> dict[str, str]:
    """pandas' read_csv keywords that parse each float to the value written: `round_trip` before pandas 3, whose
    default parser is off by an ulp or so (the default from 3, which deprecates the keyword)."""
    return {} if release("pandas") >= PANDAS_EXACT_FLOATS else {"float_precision": "round_trip"}
