"""The differences between the dependency versions saezarr supports, each bridged in one place (USAGE.md,
"Supported versions")."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

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
