"""A command's options as the fields of one dataclass: the argparse parser built from them, and the Python API's
keyword arguments.

Each option's default, help text and flag live once, on its field (`option`); `add_options` turns the fields into
arguments and `from_args` turns the parsed arguments back into the dataclass; `from_keywords` makes the dataclass from
a Python call's keyword arguments, named as the fields, and `keyword_signature` is that call's signature. A field
without help text is for the Python API alone. `parse` converts an option's text after argparse, so its errors are
saezarr's own one-line `SaezarrError`s; an argparse `type` is for values argparse itself refuses.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from saezarr.errors import InputError
from saezarr.errors import option as named
from saezarr.inputs.configs import parse_layers

_ARGPARSE_KEYS = ("type", "choices", "nargs", "const", "metavar", "required")


def option(
    default: Any = None,
    *,
    help: str | None,
    flag: str | None = None,
    positional: bool = False,
    parse: Callable[[str], Any] | None = None,
    group: str | None = None,
    **argparse_keys: Any,
) -> Any:
    """A dataclass field that is also a command-line option: its default, help and flag spelling in one place;
    `group` names a mutually exclusive group, `argparse_keys` go to add_argument (type, choices, nargs, ...);
    dataclasses.MISSING as the default makes the field required."""
    unknown = set(argparse_keys) - set(_ARGPARSE_KEYS)
    if unknown:
        raise TypeError(f"option(): unknown argparse keys {sorted(unknown)}")
    metadata = {"help": help, "flag": flag, "positional": positional, "parse": parse, "group": group, **argparse_keys}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def options_of(factory: Callable[[], Any], *, omit: tuple[str, ...] = ()) -> Any:
    """A field holding a nested options dataclass (such as the cluster options), its own fields less `omit` added as
    options of the command."""
    return dataclasses.field(default_factory=factory, metadata={"nested": factory, "omit": omit})


def _is_option(field: dataclasses.Field) -> bool:
    return "help" in field.metadata or "nested" in field.metadata


def command_fields(cls: type, omit: tuple[str, ...] = ()) -> list[dataclasses.Field]:
    """The fields of an options dataclass that are command-line options, nested ones flattened, in order."""
    found = []
    for field in dataclasses.fields(cls):
        if field.name in omit or not _is_option(field):
            continue
        if "nested" in field.metadata:
            found.extend(command_fields(field.metadata["nested"], field.metadata["omit"]))
        else:
            found.append(field)
    return found


def flag(field: dataclasses.Field) -> str:
    """The option's spelling on the command line: its own flag, its name for a positional, else --field-name."""
    if field.metadata["positional"]:
        return field.name
    return field.metadata["flag"] or "--" + field.name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add an argument per option field of `cls` (and of its nested options), with its mutually exclusive groups."""
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for field in command_fields(cls):
        group = field.metadata["group"]
        target: argparse._ActionsContainer = parser
        if group is not None:
            target = groups.get(group) or groups.setdefault(group, parser.add_mutually_exclusive_group())
        target.add_argument(*_names(field), **_argument(field))


def _names(field: dataclasses.Field) -> tuple[str, ...]:
    return (field.name,) if field.metadata["positional"] else (flag(field),)


def _argument(field: dataclasses.Field) -> dict[str, Any]:
    """add_argument's keywords for a field: a flag for a boolean, else a value (the field's default when absent)."""
    meta = field.metadata
    keys = {key: meta[key] for key in _ARGPARSE_KEYS if key in meta}
    keys["help"] = meta["help"]
    if meta["positional"]:
        return keys
    keys["dest"] = field.name
    if field.default is False:
        return {**keys, "action": "store_true"}
    keys.setdefault("metavar", None if "choices" in keys else flag(field).lstrip("-").replace("-", "_").upper())
    default = None if field.default is dataclasses.MISSING else field.default
    return {**keys, "default": None if meta["parse"] else default}


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """The options dataclass from parsed arguments: each option's text parsed, nested options built."""
    values = {}
    for field in dataclasses.fields(cls):
        if not _is_option(field):
            continue
        if "nested" in field.metadata:
            nested = field.metadata["nested"]
            inner = {f.name: _value(f, args) for f in command_fields(nested, field.metadata["omit"])}
            values[field.name] = nested(**inner)
        else:
            values[field.name] = _value(field, args)
    return cls(**values)


def _value(field: dataclasses.Field, args: argparse.Namespace) -> Any:
    """An option's parsed value; an option left out keeps its field's default."""
    value = getattr(args, field.name)
    parse = field.metadata["parse"]
    if parse is None:
        return value
    return parse(value) if value else field.default


def from_keywords(cls: type, function: str, keywords: dict[str, Any]) -> Any:
    """The options dataclass from a Python call's keyword arguments, one per field: text is read as the command line
    reads it (a path, "3,12", "8GiB"), a number checked as its flag's value is, a value outside the choices refused."""
    fields = {field.name: field for field in dataclasses.fields(cls)}
    for name in keywords:
        if name not in fields:
            # the field a flag names (config: --config is config_file), else the closest field name
            flags = {flag(f).lstrip("-").replace("-", "_"): f.name for f in command_fields(cls)}
            close = [flags[name]] if name in flags else difflib.get_close_matches(name, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}{hint}")
    return cls(**{name: _keyword_value(fields[name], value) for name, value in keywords.items()})


def _keyword_value(field: dataclasses.Field, value: Any) -> Any:
    """A keyword argument's value as its option takes it (the field's default, None, as it is)."""
    meta = field.metadata
    convert = meta.get("parse") or meta.get("type")
    if convert is Path:
        if isinstance(value, (str, PathLike)):
            return Path(value)
        if isinstance(value, list):  # nargs="+": a list of paths
            return [Path(item) if isinstance(item, (str, PathLike)) else item for item in value]
        return value
    if convert is not None and value is not None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and meta.get("type") is convert:
            value = str(value)  # a number is checked as the flag's text is
        if isinstance(value, str):
            try:
                value = convert(value)
            except argparse.ArgumentTypeError as exc:
                raise InputError(f"{named(field.name, value)}: {exc}") from None
    choices = meta.get("choices")
    if choices is not None and value is not None and value not in choices:
        raise InputError(f"{named(field.name, value)}: expected one of {', '.join(map(str, choices))}")
    return value


def keyword_signature(cls: type, positional: Sequence[str]) -> inspect.Signature:
    """The signature of a Python call whose keyword arguments are the fields of `cls`, with their defaults; the
    `positional` ones first, which may also be given by position."""
    fields = {field.name: field for field in dataclasses.fields(cls)}
    order = [*positional, *(name for name in fields if name not in positional)]
    parameters = []
    for name in order:
        field = fields[name]
        default: Any = inspect.Parameter.empty
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if name in positional else inspect.Parameter.KEYWORD_ONLY
        parameters.append(inspect.Parameter(name, kind, default=default, annotation=field.type))
    return inspect.Signature(parameters)


def positive_int(text: str) -> int:
    """Parse a positive integer option value."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def count(text: str) -> int:
    """Parse a non-negative integer option value."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """Parse a positive number option value."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def configs_option() -> Any:
    """The `--configs` option of a command that reads chosen configs of a store."""
    return option(help="only these configs, e.g. layer_12_l0_82,layer_3_l0_59", parse=comma_list)


def layers_option() -> Any:
    """The `--layers` option of a command that reads the configs of chosen layers of a store."""
    return option(help="only configs on these layers, e.g. 3,12", parse=parse_layers)


def comma_list(text: str) -> list[str]:
    """Parse a comma-separated list, e.g. --configs layer_12_l0_82,layer_3_l0_59."""
    return text.split(",")
