"""saezarr's exceptions, and the option markers that let one message name an option to Python and to the shell.

Every failure saezarr reports is a `SaezarrError`; its subclasses also subclass the builtin a Python caller would
catch for that failure (a missing store is a `FileNotFoundError`), as zarr's errors do. A message names an option
with `option("overwrite", True)`: `str(exc)` reads `overwrite=True`, the keyword argument, and the command line
renders the marker as its flag, `--overwrite` (`render(message, flag)`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_MARK = "\x1d"  # ASCII group separator: never in a path, sentence or number a message quotes
_MARKER = re.compile(f"{_MARK}(?:([a-z_]+)\\()?([a-z_]+)(?:=([^{_MARK}]*))?{_MARK}")

FlagRenderer = Callable[[str, "str | None"], str]


def option(name: str, value: object = None) -> str:
    """An option named in a message by its Python name, with the value it was given (True for a switch) or none."""
    return f"{_MARK}{name}{'' if value is None else f'={value}'}{_MARK}"


def call(command: str, name: str, value: object = True) -> str:
    """A command run again with one option: `build(..., resume=True)` to Python, the command line to the shell."""
    return f"{_MARK}{command}({option(name, value)[1:]}"


def keyword(name: str, value: str | None) -> str:
    """An option as a Python caller passes it: `name=value`, or its bare name when the message gives no value."""
    return name if value is None else f"{name}={value}"


def render(text: str, flag: FlagRenderer = keyword) -> str:
    """A message with each option marker written by `flag(name, value)` (and each command run again around it)."""

    def written(match: re.Match) -> str:
        command, name, value = match.groups()
        said = flag(name, value)
        if command is None:
            return said
        return f"{command}(..., {said})" if flag is keyword else f"saezarr {command} ... {said}"

    return _MARKER.sub(written, text)


class SaezarrError(Exception):
    """A user-facing failure: the message names the file, row or option at fault."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code

    @property
    def message(self) -> str:
        """The message with its option markers, for `render` with another flag renderer."""
        return self.args[0]

    def __str__(self) -> str:
        return render(self.message)

    def __reduce__(self) -> tuple:
        # rebuilt by calling the class: tblib (which distributed installs) would otherwise call cls.__new__, which
        # MemoryError's refuses for OutOfMemory
        return (type(self), (self.message, self.exit_code), self.__dict__)


class InputError(SaezarrError, ValueError):
    """An input file, option value or selection saezarr refuses; nothing was written."""


class ConfigError(InputError):
    """An SAE configuration file or bundled catalogue saezarr cannot use."""


class SAEFormatError(InputError):
    """An SAE whose files, layout or training settings saezarr cannot read or reproduce."""


class ResumeMismatch(InputError):
    """A resumed or extended store was started with other inputs or options than this run gives."""


class OutputExists(SaezarrError, FileExistsError):
    """The output is there and is not replaced: overwrite was not asked for, or saezarr did not write it."""


class StoreNotFound(SaezarrError, FileNotFoundError):
    """No saezarr store at the path given."""


class StoreDamaged(SaezarrError, OSError):
    """A store whose files cannot be read as saezarr wrote them."""


class StoreUnfinished(SaezarrError):
    """A store whose build is not finished, for a command that needs it finished."""


class LockHeld(SaezarrError):
    """Another build holds the store's lock, or the lock could not be taken."""


class ClusterError(SaezarrError, RuntimeError):
    """The dask cluster could not be reached, or a worker or task on it failed."""


class StorageUnavailable(SaezarrError, ConnectionError):
    """An object store that did not answer, or failed, after its retries; what was written whole is kept."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message, exit_code)


class WriteFailed(SaezarrError, OSError):
    """Writing a file failed (disk full, permissions); what was written whole is kept."""


class OutOfMemory(SaezarrError, MemoryError):
    """The machine ran out of memory; the message says which option to lower."""


class Interrupted(SaezarrError):
    """Interrupted (Ctrl-C) or terminated (SIGTERM); what was done is kept."""


class SaezarrNote(UserWarning):
    """Something the user should know that does not stop the command; the command line prints it as one line."""

    def __str__(self) -> str:
        return render(str(self.args[0]))


class LogText:
    """A `logging` message with option markers: `str()` is the Python text, `.text` what `render` reads."""

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return render(self.text)


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut to `limit` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
