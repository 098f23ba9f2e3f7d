"""Bad inputs: one line `saezarr: error: ...`, exit code 2, and an existing store at --output left byte-identical."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from faultkit import REPORT, Run, build_args, copy_store, one_error_line, tree_digest

from saezarr.cli import main
from saezarr.testing.synthetic import DEMO_CSV

HEADER = "sentence,concept_strength_label\n"
GOOD_ROW = "The garden looks lovely in the morning light.,0\n"


@dataclass
class Env:
    """What a case may use: a scratch folder, the demo config and its assets, the existing store."""

    tmp: Path
    config: Path
    model: Path
    saes: Path
    store: Path

    def csv(self, text: str | bytes, name: str | None = None) -> Path:
        path = self.tmp / (name or f"input-{len(list(self.tmp.glob('input-*.csv')))}.csv")
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return path

    def config_file(self, data, name: str = "config.json") -> Path:
        path = self.tmp / name
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return path

    def config_data(self) -> dict:
        return json.loads(self.config.read_text())

    def saes_with(self, edit: Callable[[Path], None]) -> Path:
        """A copy of the SAE folder with the first config's params.npz edited, and a config file naming it."""
        folder = self.tmp / "saes"
        shutil.copytree(self.saes, folder)
        data = self.config_data()
        edit(folder / data["configs"][0]["path"] / "params.npz")
        return self.config_file({**data, "sae_repo": str(folder)}, "edited-saes.json")


def _npz_edit(**changes):
    def edit(path: Path) -> None:
        with np.load(path) as params:
            arrays = dict(params)
        arrays.update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            del arrays[key]
        np.savez(path, **arrays)

    return edit


def _folder(env: Env, name: str, files: dict[str, str] | None = None) -> Path:
    folder = env.tmp / name
    folder.mkdir()
    for file, text in (files or {}).items():
        (folder / file).write_text(text)
    return folder


def _csv_build(text, *expect, mode="--overwrite"):
    def case(env: Env):
        return build_args(env.csv(text), env.store, env.config, mode), expect

    return case


def _config_build(data, *expect):
    def case(env: Env):
        data_ = data(env) if callable(data) else data
        return build_args(DEMO_CSV, env.store, env.config_file(data_), "--overwrite"), expect

    return case


def _entries(env: Env) -> list[dict]:
    return env.config_data()["configs"]


LONG_SENTENCE = " ".join(["the quick brown fox jumps over the lazy dog"] * 75) + "."  # ~680 tokens > 512

CASES: dict[str, Callable[[Env], tuple[list[str], tuple[str, ...]]]] = {
    # ---- the CSV
    "missing CSV": lambda env: (
        build_args(env.tmp / "nope.csv", env.store, env.config, "--overwrite"),
        ("nope.csv", "no such"),
    ),
    "CSV is a folder": lambda env: (build_args(env.tmp, env.store, env.config, "--overwrite"), ("folder",)),
    "empty CSV": _csv_build("", "empty"),
    "whitespace-only CSV": _csv_build(" \n\n  \n", "empty"),
    "header only": _csv_build(HEADER, "no data rows"),
    "header only, with BOM": _csv_build("\ufeff" + HEADER, "no data rows"),
    "misspelled sentence column": _csv_build(
        "sentense,concept_strength_label\nhi there,1\n", "'sentence'", "'sentense'"
    ),
    "misspelled label column": _csv_build(
        "sentence,concept_strenght_label\nhi there,1\n", "'concept_strength_label'", "'concept_strenght_label'"
    ),
    "capitalised column": _csv_build("Sentence,concept_strength_label\nhi there,1\n", "'sentence'", "'Sentence'"),
    "no header at all": _csv_build(GOOD_ROW, "missing column"),
    "label 4": _csv_build(HEADER + GOOD_ROW + "Another one.,4\n", "row 2", "'4'", "0 to 3"),
    "label -1": _csv_build(HEADER + "Another one.,-1\n", "row 1", "'-1'"),
    "label 1.5": _csv_build(HEADER + GOOD_ROW * 3 + "Another one.,1.5\n", "row 4", "'1.5'"),
    "label 2.0": _csv_build(HEADER + "Another one.,2.0\n", "row 1", "'2.0'"),
    "label high": _csv_build(HEADER + "Another one.,high\n", "row 1", "'high'"),
    "label blank": _csv_build(HEADER + GOOD_ROW + "Another one.,\n", "row 2", "''"),
    "label missing (short row)": _csv_build(HEADER + GOOD_ROW + "Another one.\n", "row 2"),
    "empty sentence": _csv_build(HEADER + GOOD_ROW + ",2\n", "row 2", "empty"),
    "whitespace-only sentence": _csv_build(HEADER + GOOD_ROW + '"   \t ",2\n', "row 2", "empty"),
    "sentence longer than the context": _csv_build(HEADER + GOOD_ROW + f"{LONG_SENTENCE},3\n", "row 2", "512"),
    "invalid UTF-8 (latin-1)": _csv_build(
        HEADER.encode() + GOOD_ROW.encode() + "Caf\u00e9 au lait.,1\n".encode("latin-1"), "UTF-8", "line 3"
    ),
    "UTF-16 file": _csv_build((HEADER + GOOD_ROW).encode("utf-16"), "UTF-8"),
    "unquoted comma in a sentence": _csv_build(HEADER + "Well, that went badly.,2\n", "row 1"),
    "unterminated quote": _csv_build(HEADER + GOOD_ROW + '"It never ends,1\nAnd more.,2\n', "CSV"),
    # ---- the config file
    "missing config file": lambda env: (
        build_args(DEMO_CSV, env.store, env.tmp / "nope.json", "--overwrite"),
        ("nope.json",),
    ),
    "config not JSON": _config_build("{'model': oops", "JSON"),
    "config is a list": _config_build([], "JSON object"),
    "config misses sae_repo": _config_build(
        lambda env: {"model": env.config_data()["model"], "configs": _entries(env)}, "'sae_repo'"
    ),
    "config misses configs": _config_build(
        lambda env: {k: v for k, v in env.config_data().items() if k != "configs"}, "'configs'"
    ),
    "config with no configs": _config_build(lambda env: {**env.config_data(), "configs": []}, "configs"),
    "config entry misses path": _config_build(
        lambda env: {**env.config_data(), "configs": [{"layer": 0, "average_l0": 8}]}, "configs[0]", "'path'"
    ),
    "config layer is a string": _config_build(
        lambda env: {**env.config_data(), "configs": [{**_entries(env)[0], "layer": "2"}]}, "'layer'"
    ),
    "config layer beyond the model": _config_build(
        lambda env: {
            **env.config_data(),
            "configs": [*_entries(env), {"layer": 6, "average_l0": 8, "path": "layer_6/x"}],
        },
        "layer 6",
        "6 layers",
    ),
    "config repeated": _config_build(
        lambda env: {**env.config_data(), "configs": [*_entries(env), _entries(env)[2]]},
        "layer_2_l0_8",
        "more than once",
    ),
    "SAE folder without params.npz": _config_build(
        lambda env: {
            **env.config_data(),
            "configs": [*_entries(env)[:2], {"layer": 2, "average_l0": 9, "path": "layer_2/nothing"}],
        },
        "params.npz",
        "layer_2_l0_9",
    ),
    "model folder missing": _config_build(
        lambda env: {**env.config_data(), "model": str(env.tmp / "no-model")}, "no-model"
    ),
    "model folder without config.json": _config_build(
        lambda env: {**env.config_data(), "model": str(_folder(env, "empty"))}, "config.json"
    ),
    "model folder whose config.json is no model's": _config_build(
        lambda env: {**env.config_data(), "model": str(_folder(env, "odd", {"config.json": '{"hello": 1}'}))},
        "odd",
        "config.json",
    ),
    "params.npz W_enc of another hidden size": lambda env: (
        build_args(DEMO_CSV, env.store, env.saes_with(_npz_edit(W_enc=np.zeros((32, 512), np.float32))), "--overwrite"),
        ("W_enc", "32", "64"),
    ),
    "params.npz threshold of another width": lambda env: (
        build_args(DEMO_CSV, env.store, env.saes_with(_npz_edit(threshold=np.zeros(511, np.float32))), "--overwrite"),
        ("threshold", "511"),
    ),
    "params.npz without threshold": lambda env: (
        build_args(DEMO_CSV, env.store, env.saes_with(_npz_edit(threshold=None)), "--overwrite"),
        ("threshold",),
    ),
    "params.npz W_enc 1-D": lambda env: (
        build_args(DEMO_CSV, env.store, env.saes_with(_npz_edit(W_enc=np.zeros(512, np.float32))), "--overwrite"),
        ("W_enc", "2-D"),
    ),
    "params.npz not a zip": lambda env: (
        build_args(DEMO_CSV, env.store, env.saes_with(lambda p: p.write_bytes(b"not a zip file")), "--overwrite"),
        ("params.npz",),
    ),
    # ---- the output
    "a store exists, neither --resume nor --overwrite": lambda env: (
        build_args(DEMO_CSV, env.store, env.config),
        ("--resume", "--overwrite"),
    ),
    "--resume with another CSV": _csv_build(HEADER + GOOD_ROW, "input sha256", mode="--resume"),
    "--resume with fewer configs": lambda env: (
        build_args(DEMO_CSV, env.store, env.config, "--resume", "--layers", "0"),
        ("configs",),
    ),
    "--resume with word fragments": lambda env: (
        build_args(DEMO_CSV, env.store, env.config, "--resume", "--fragments", "word"),
        ("fragments",),
    ),
    # ---- options
    "--layers not in the config": lambda env: (
        build_args(DEMO_CSV, env.store, env.config, "--overwrite", "--layers", "4"),
        ("layer 4",),
    ),
    "--layers not numbers": lambda env: (
        build_args(DEMO_CSV, env.store, env.config, "--overwrite", "--layers", "two"),
        ("--layers",),
    ),
    "--configs misspelled": lambda env: (
        build_args(DEMO_CSV, env.store, env.config, "--overwrite", "--configs", "layer_2_l0_88"),
        ("layer_2_l0_8",),
    ),
    "--sae-memory nonsense": lambda env: (
        build_args(DEMO_CSV, env.store, env.config, "--overwrite", "--sae-memory", "lots"),
        ("--sae-memory",),
    ),
}


def _regular_file_output(env: Env):
    target = env.tmp / "results.zarr"
    target.write_text("my notes, not a store\n")
    return build_args(DEMO_CSV, target, env.config, "--overwrite"), ("results.zarr", "file"), target


def _foreign_zarr_output(env: Env):
    target = env.tmp / "someone-elses.zarr"
    zarr.create_array(target, shape=(4, 4), dtype="f4", fill_value=0.0)[...] = np.arange(16, dtype="f4").reshape(4, 4)
    return (
        build_args(DEMO_CSV, target, env.config, "--overwrite"),
        ("someone-elses.zarr", "not a saezarr store"),
        target,
    )


def _foreign_xarray_output(env: Env):
    target = env.tmp / "dataset.zarr"
    xr.Dataset({"x": ("i", np.arange(5))}, attrs={"title": "mine"}).to_zarr(target, zarr_format=3, consolidated=False)
    return build_args(DEMO_CSV, target, env.config, "--resume"), ("dataset.zarr", "not a saezarr store"), target


def _plain_folder_output(env: Env):
    target = env.tmp / "home"
    target.mkdir()
    (target / "thesis.tex").write_text("\\documentclass{article}\n")
    return build_args(DEMO_CSV, target, env.config, "--overwrite"), ("home", "not a saezarr store"), target


def _export_under_a_file(env: Env):
    blocker = env.tmp / "exports"
    blocker.write_text("a file where the export folder should go\n")
    return ["export-npz", str(env.store), "--output", str(blocker / "npz")], ("exports",), blocker


OTHER_TARGETS = {
    "--output is a regular file": _regular_file_output,
    "--output is a Zarr store saezarr did not make": _foreign_zarr_output,
    "--output is an xarray store (with --resume)": _foreign_xarray_output,
    "--output is a folder of other files": _plain_folder_output,
    "export-npz into a path under a regular file": _export_under_a_file,
}


@pytest.fixture(scope="module")
def existing(demo_config, demo_reference, tmp_path_factory):
    """A finished store that every case points --output at, and its files' hashes."""
    store = copy_store(demo_reference, tmp_path_factory.mktemp("existing") / "existing.zarr")
    return store, tree_digest(store)


def _env(tmp_path, demo_config, store) -> Env:
    data = json.loads(Path(demo_config).read_text())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return Env(scratch, Path(demo_config), Path(data["model"]), Path(data["sae_repo"]), store)


def _digest_of(path: Path) -> dict:
    return tree_digest(path) if path.is_dir() else {"": path.read_bytes()}


def _assert_refused(args: list[str], expect, capsys) -> None:
    """The command exits 2 with one error line holding every expected text."""
    code = main(args)
    err = capsys.readouterr().err
    REPORT["bad inputs tried"] += 1
    assert code == 2, err
    line = one_error_line(err)
    for text in expect:
        assert text in line, f"{text!r} not in {line!r}"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_and_the_store_untouched(case, existing, demo_config, tmp_path, capsys):
    store, digest = existing
    args, expect = CASES[case](_env(tmp_path, demo_config, store))
    _assert_refused(args, expect, capsys)
    assert tree_digest(store) == digest, f"{case}: the existing store changed"


@pytest.mark.parametrize("case", list(OTHER_TARGETS))
def test_bad_output_is_refused_and_left_as_it_was(case, existing, demo_config, tmp_path, capsys):
    store, digest = existing
    env = _env(tmp_path, demo_config, store)
    args, expect, target = OTHER_TARGETS[case](env)
    before = _digest_of(target)
    _assert_refused(args, expect, capsys)
    assert _digest_of(target) == before, f"{case}: {target} changed"
    assert tree_digest(store) == digest
    assert sorted(p.name for p in target.parent.iterdir() if p.name.startswith(".")) == [], (
        "temporary files left beside"
    )


@pytest.mark.parametrize("args", [["--chunk-fragments", "0"], ["--batch-size", "-3"], ["--fragments", "letters"]])
def test_bad_option_values_exit_2_without_traceback(args, existing, demo_config, capsys):
    store, digest = existing
    with pytest.raises(SystemExit) as stop:  # argparse's own usage error
        main(build_args(DEMO_CSV, store, demo_config, "--overwrite", *args))
    err = capsys.readouterr().err
    REPORT["bad inputs tried"] += 1
    assert stop.value.code == 2
    assert "Traceback" not in err and args[0] in err.splitlines()[-1]
    assert tree_digest(store) == digest


def test_bad_option_values_get_one_error_line(existing, demo_config, capsys):
    store, _ = existing
    with pytest.raises(SystemExit):
        main(build_args(DEMO_CSV, store, demo_config, "--overwrite", "--chunk-fragments", "0"))
    assert "--chunk-fragments" in one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_bad_inputs_as_real_processes(existing, demo_config, tmp_path):
    """A few cases through `python -m saezarr`, run side by side: real stderr, real exit codes, no traceback."""
    store, digest = existing
    env = _env(tmp_path, demo_config, store)
    cases = {"sentence longer than the context": CASES["sentence longer than the context"](env)}
    args, expect, target = _foreign_zarr_output(env)
    cases["--output is a Zarr store saezarr did not make"] = (args, expect)
    args, expect, _ = _export_under_a_file(env)
    cases["export-npz into a path under a regular file"] = (args, expect)
    target_before = _digest_of(target)
    runs = {name: Run(args, tmp_path / "logs") for name, (args, _) in cases.items()}
    try:
        for name, run in runs.items():
            assert run.finish(timeout=240) == 2, f"{name}: {run.stderr}"
            line = one_error_line(run.stderr)
            for text in cases[name][1]:
                assert text in line, f"{name}: {text!r} not in {line!r}"
            assert run.stdout == "", f"{name}: {run.stdout}"
    finally:
        for run in runs.values():
            run.close()
    REPORT["bad inputs tried (as real processes)"] += len(cases)
    assert _digest_of(target) == target_before
    assert tree_digest(store) == digest


def _truncated_weights(env: Env) -> Path:
    """A copy of the model whose model.safetensors was cut in half (an interrupted download)."""
    model = env.tmp / "model"
    shutil.copytree(env.model, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return env.config_file({**env.config_data(), "model": str(model)}, "truncated-model.json")


def _truncated_sae_data(env: Env) -> Path:
    """A params.npz whose W_enc header is right but whose data stops halfway (shapes pass, loading fails)."""
    import io
    import zipfile

    def edit(path: Path) -> None:
        with np.load(path) as params:
            arrays = dict(params)
        with zipfile.ZipFile(path, "w") as archive:
            for key, value in arrays.items():
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, value)
                data = buffer.getvalue()
                archive.writestr(f"{key}.npy", data[: len(data) // 2] if key == "W_enc" else data)

    return env.saes_with(edit)


LOADED_LATE = {
    "model.safetensors truncated": (_truncated_weights, "model.safetensors"),
    "params.npz W_enc data truncated": (_truncated_sae_data, "params.npz"),
}


@pytest.mark.parametrize("mode", ["--overwrite", "--resume"])
@pytest.mark.parametrize("case", list(LOADED_LATE))
def test_broken_weights_are_refused_before_the_store_is_touched(
    case, mode, demo_config, demo_reference, tmp_path, capsys
):
    store = copy_store(demo_reference, tmp_path / "existing.zarr")
    digest = tree_digest(store)
    make, expect = LOADED_LATE[case]
    env = _env(tmp_path, demo_config, store)
    config = make(env)
    REPORT["bad inputs tried"] += 1
    try:
        code = main(build_args(DEMO_CSV, store, config, mode))
    finally:
        if tree_digest(store) != digest:
            REPORT["stores found damaged by a bad input"] += 1
    err = capsys.readouterr().err
    assert code == 2, err
    assert expect in one_error_line(err)
    assert tree_digest(store) == digest
