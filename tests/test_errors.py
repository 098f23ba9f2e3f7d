"""saezarr's errors speak Python: a hierarchy of classes that are also the builtins a caller catches, messages that
name keyword arguments (the command line renders the same failure with its flags, in today's one line), and no
module but the command line prints."""

from __future__ import annotations

import ast
import copyreg
import io
import logging
import pickle
import warnings
from pathlib import Path

import pytest
from clitools import run_cli

import saezarr
from saezarr.analysis.compare import compare
from saezarr.durable.locking import StoreLock
from saezarr.errors import (
    ClusterError,
    ConfigError,
    InputError,
    Interrupted,
    LockHeld,
    LogText,
    OutOfMemory,
    OutputExists,
    ResumeMismatch,
    SAEFormatError,
    SaezarrError,
    SaezarrNote,
    StoreDamaged,
    StoreNotFound,
    StoreUnfinished,
    WriteFailed,
    call,
    option,
    render,
)
from saezarr.inputs.configs import parse_layers

PACKAGE = Path(saezarr.__file__).parent
BUILTINS = {
    InputError: (ValueError,),
    ConfigError: (InputError, ValueError),
    SAEFormatError: (InputError, ValueError),
    ResumeMismatch: (InputError, ValueError),
    OutputExists: (FileExistsError, OSError),
    StoreNotFound: (FileNotFoundError, OSError),
    StoreDamaged: (OSError,),
    StoreUnfinished: (),
    LockHeld: (),
    ClusterError: (RuntimeError,),
    WriteFailed: (OSError,),
    OutOfMemory: (MemoryError,),
    Interrupted: (),
}
FLAGGED = f"{option('output', '/tmp/out')}: already exists; use {option('overwrite', True)} to replace it"


@pytest.mark.parametrize("cls", list(BUILTINS), ids=lambda cls: cls.__name__)
def test_each_error_is_a_saezarr_error_and_the_builtin_a_caller_catches(cls):
    error = cls("/tmp/x: what is wrong", exit_code=1)
    assert isinstance(error, SaezarrError) and all(isinstance(error, builtin) for builtin in BUILTINS[cls])
    assert str(error) == "/tmp/x: what is wrong" and error.exit_code == 1
    assert cls("m").exit_code == 2  # a refusal, unless the raise says otherwise
    if isinstance(error, OSError):
        assert error.errno is None and error.filename is None  # the message is no (errno, strerror) pair


@pytest.mark.parametrize("cls", [SaezarrError, *BUILTINS], ids=lambda cls: cls.__name__)
def test_an_error_survives_pickling_as_dask_sends_it_from_a_worker(cls):
    error = cls(FLAGGED, exit_code=130)
    for dumped in (pickle.dumps(error), _pickled_as_distributed_does(error)):
        back = pickle.loads(dumped)
        assert type(back) is cls and back.exit_code == 130
        assert back.message == FLAGGED and str(back) == str(error)


def _pickled_as_distributed_does(error: Exception) -> bytes:
    """The error pickled through tblib's reducer, which distributed installs for every exception class."""
    from tblib.pickling_support import pickle_exception

    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer)
    pickler.dispatch_table = {**copyreg.dispatch_table, type(error): pickle_exception}
    pickler.dump(error)
    return buffer.getvalue()


def test_a_message_names_keyword_arguments_to_python_and_anything_else_to_a_renderer():
    error = OutputExists(f"{FLAGGED}; or `{call('build', 'resume')}` with {option('layers')}")
    assert str(error) == (
        "output=/tmp/out: already exists; use overwrite=True to replace it; or `build(..., resume=True)` with layers"
    )
    shouted = render(error.message, lambda name, value: name.upper() if value is None else f"{name.upper()}:{value}")
    assert shouted == (
        "OUTPUT:/tmp/out: already exists; use OVERWRITE:True to replace it; or `saezarr build ... RESUME:True` with "
        "LAYERS"
    )
    python = "output=/tmp/out: already exists; use overwrite=True to replace it"
    assert str(SaezarrNote(FLAGGED)) == str(LogText(FLAGGED)) == python


def test_a_missing_store_is_a_file_not_found_error_and_one_line_on_the_command_line(tmp_path):
    missing = tmp_path / "missing.zarr"
    with pytest.raises(FileNotFoundError) as caught:
        saezarr.open_store(missing)
    assert isinstance(caught.value, StoreNotFound) and str(caught.value) == f"{missing}: no such store"
    result = run_cli("info", missing)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"saezarr: error: {missing}: no such store\n"


def test_an_existing_output_names_the_keyword_in_python_and_the_flag_on_the_command_line(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FileExistsError) as caught:
        compare([tmp_path / "a", tmp_path / "b"], out)
    assert isinstance(caught.value, OutputExists)
    assert str(caught.value) == f"output={out}: already exists; use overwrite=True to replace it"
    result = run_cli("compare", tmp_path / "a", tmp_path / "b", "--output", out)
    assert result.returncode == 2
    assert result.stderr == f"saezarr: error: --output {out}: already exists; use --overwrite to replace it\n"


def test_a_bad_option_value_is_a_value_error_naming_the_option(tmp_path):
    with pytest.raises(ValueError) as caught:
        parse_layers("3,x")
    assert isinstance(caught.value, InputError)
    assert str(caught.value) == "layers: expected comma-separated layer numbers, got '3,x'"
    result = run_cli("export-npz", tmp_path / "s.zarr", "--output", tmp_path / "o", "--layers", "3,x")
    assert result.returncode == 2
    assert result.stderr == "saezarr: error: --layers: expected comma-separated layer numbers, got '3,x'\n"


def test_a_held_lock_is_lock_held_naming_the_keyword_that_takes_it(tmp_path):
    path = tmp_path / "lock"
    with StoreLock(path, tmp_path) as holder:
        holder.acquire()
        with pytest.raises(LockHeld) as caught:
            StoreLock(path, tmp_path).acquire()  # a second open file: flock refuses it as it would another process
    assert caught.value.exit_code == 2
    assert str(caught.value).startswith(f"{tmp_path}: another build is writing this store (pid ")
    assert str(caught.value).endswith("wait for it, or if it is gone use force_unlock=True")


def test_library_notes_are_warnings_and_log_records_not_prints(tmp_path, caplog, capsys):
    from saezarr.durable.locking import say_taken_over

    caplog.set_level(logging.INFO, logger="saezarr")
    say_taken_over({"pid": 7, "host": "h"})
    assert caplog.messages == ["taking over the lock of pid 7 on h, which is gone"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn(FLAGGED, SaezarrNote, stacklevel=1)
    assert [str(w.message) for w in caught] == ["output=/tmp/out: already exists; use overwrite=True to replace it"]
    assert capsys.readouterr() == ("", "")


def _writes_to_the_terminal(node: ast.AST) -> bool:
    """A call of print, or any use of sys.stdout or sys.stderr."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
        return True
    return (
        isinstance(node, ast.Attribute)
        and node.attr in ("stdout", "stderr")
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    )


def test_no_module_but_the_command_line_prints():
    allowed = {PACKAGE / "cli.py", PACKAGE / "__main__.py"}  # the command line and its entry point
    found = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in allowed
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if _writes_to_the_terminal(node)
    ]
    assert found == []
    assert any(_writes_to_the_terminal(node) for node in ast.walk(ast.parse((PACKAGE / "cli.py").read_text())))
