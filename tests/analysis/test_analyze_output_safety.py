"""`analyze --overwrite` replaces only a folder that analyze wrote (or an empty one): never a user's folder, a Zarr
store, the input store or a folder holding it; every refusal is one line, exit 2, every byte left in place."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import zarr
from analyzetools import build_store
from clitools import run_main

LOOSE = ("--min-pearson", "-1", "--min-tpr", "0", "--max-fpr", "1", "--top-n", "3", "--quiet")


@pytest.fixture(scope="module")
def store(cli_store) -> Path:
    """`saezarr build` of the tiny model and the demo CSV, every option its default (tests/conftest.py): read only."""
    return cli_store


def analyze(store: Path, output: Path, cache: Path, *args: str):
    return run_main("analyze", store, "--output", output, *LOOSE, *args, env={"SAEZARR_CACHE": str(cache)})


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under folder (and the folder itself), by relative path, with a digest of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        for path in sorted(folder.rglob("*"))
    }


def refused(result, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr, result.stderr


def test_a_users_folder_is_never_replaced(store, tmp_path):
    thesis = tmp_path / "thesis"
    (thesis / "chapters").mkdir(parents=True)
    (thesis / "chapters" / "one.tex").write_text("\\chapter{One}")
    (thesis / "notes.md").write_text("keep me")
    before = snapshot(thesis)
    result = analyze(store, thesis, tmp_path / "cache", "--overwrite")
    refused(result, f"--output {thesis}: has no analysis.json written by saezarr, so saezarr did not write it")
    assert snapshot(thesis) == before


def test_the_input_store_itself_and_folders_around_it_are_refused(store, tmp_path):
    before = snapshot(store)
    refused(analyze(store, store, tmp_path / "cache", "--overwrite"), f"--output {store}: is the input store")
    inside = store / "analysis"
    refused(analyze(store, inside, tmp_path / "cache", "--overwrite"), "is inside the input store")
    refused(analyze(store, store.parent, tmp_path / "cache", "--overwrite"), "holds the input store")
    assert snapshot(store) == before and not inside.exists()


def test_another_store_saezarrs_or_not_is_refused(store, tmp_path, tiny):
    other = build_store(tmp_path / "other", tiny.config_file, tiny.csv, "--layers", "0")
    plain = tmp_path / "plain.zarr"
    zarr.create_array(plain, shape=(4,), dtype="f4")[:] = 1.0
    for target in (other, plain):
        before = snapshot(target)
        refused(analyze(store, target, tmp_path / "cache", "--overwrite"), f"--output {target}: is a Zarr store")
        assert snapshot(target) == before


def test_an_earlier_analysis_is_replaced_but_not_once_a_user_added_to_it(store, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert analyze(store, out, cache).returncode == 0
    info = json.loads((out / "analysis.json").read_text())
    assert info["written_by"] == "saezarr analyze"
    assert set(info["files"]) == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert analyze(store, out, cache, "--overwrite", "--top-n", "2").returncode == 0
    (out / "my_plot.png").write_bytes(b"mine")
    before = snapshot(out)
    refused(
        analyze(store, out, cache, "--overwrite"), "holds 1 file(s) saezarr analyze did not write (e.g. my_plot.png)"
    )
    assert snapshot(out) == before


def test_a_forged_or_foreign_analysis_json_is_refused(store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "analysis.json").write_text(json.dumps({"written_by": "someone else", "files": ["analysis.json"]}))
    before = snapshot(out)
    refused(analyze(store, out, tmp_path / "cache", "--overwrite"), "is not signed by saezarr analyze")
    assert snapshot(out) == before


def test_an_empty_folder_is_filled(store, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert analyze(store, out, tmp_path / "cache", "--overwrite").returncode == 0
    assert (out / "report.html").is_file()
