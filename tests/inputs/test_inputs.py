"""Reading the labeled CSV: accepted shapes of the file, and every refusal with its exact one-line message."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from clitools import run_main, write_csv

from saezarr.errors import SaezarrError
from saezarr.inputs.sentences import read_labeled_csv

HEADER = "sentence,concept_strength_label\n"
_LATIN1 = f"{HEADER}Fine.,0\n".encode() + "Café au lait.,1\n".encode("latin-1")

# name -> (file bytes, or None for no file; the message after "<path>: ")
REFUSALS: dict[str, tuple[bytes | None, str]] = {
    "missing_file": (None, "no such input file"),
    "misspelled_sentence": (
        b"sentance,concept_strength_label\nHello there.,1\n",
        "missing column 'sentence' (found 'sentance', 'concept_strength_label'); "
        "rename column 'sentance' to 'sentence'?",
    ),
    "misspelled_label": (
        b"sentence,concept_strenght_label\nHello there.,1\n",
        "missing column 'concept_strength_label' (found 'sentence', 'concept_strenght_label'); "
        "rename column 'concept_strenght_label' to 'concept_strength_label'?",
    ),
    "unrelated_columns": (b"text,score\nHello there.,1\n", "missing column 'sentence' (found 'text', 'score')"),
    "empty_sentence": (f"{HEADER}Fine.,0\n,2\n".encode(), "data row 2: the sentence is empty"),
    "whitespace_sentence": (
        f'{HEADER}Fine.,0\nAlso fine.,1\n"  \t ",2\n'.encode(),
        "data row 3: the sentence is empty",
    ),
    "label_4": (
        f"{HEADER}Fine.,0\nBad.,4\n".encode(),
        "data row 2: concept_strength_label '4' is not an integer from 0 to 3",
    ),
    "label_minus_1": (
        f"{HEADER}Bad.,-1\n".encode(),
        "data row 1: concept_strength_label '-1' is not an integer from 0 to 3",
    ),
    "label_1_5": (
        f"{HEADER}Fine.,3\nFine.,2\nBad.,1.5\n".encode(),
        "data row 3: concept_strength_label '1.5' is not an integer from 0 to 3",
    ),
    "label_high": (
        f"{HEADER}Bad.,high\n".encode(),
        "data row 1: concept_strength_label 'high' is not an integer from 0 to 3",
    ),
    "label_blank": (
        f"{HEADER}Fine.,1\nBad.,\n".encode(),
        "data row 2: concept_strength_label '' is not an integer from 0 to 3",
    ),
    "empty_file": (b"", "the file is empty; expected a header 'sentence,concept_strength_label'"),
    "blank_lines_only": (b"\n  \n\n", "the file is empty; expected a header 'sentence,concept_strength_label'"),
    "header_only": (HEADER.encode(), "the file has a header but no data rows"),
    "invalid_utf8": (_LATIN1, f"line 3: not valid UTF-8 (byte offset {_LATIN1.index(0xE9)})"),
    # the reported offset and line count the BOM's bytes too
    "invalid_utf8_after_bom": (
        b"\xef\xbb\xbf" + _LATIN1,
        f"line 3: not valid UTF-8 (byte offset {3 + _LATIN1.index(0xE9)})",
    ),
    # an unquoted comma in every sentence must not silently shift the columns
    "unquoted_commas": (
        f"{HEADER}Well, fine.,0\nNo, never.,3\n".encode(),
        "data row 1: 3 fields but the header has 2; quote a sentence that contains a comma",
    ),
    "unquoted_comma_later_row": (
        f"{HEADER}Fine.,0\nNo, never.,3\n".encode(),
        "data row 2: 3 fields but the header has 2; quote a sentence that contains a comma",
    ),
    "unterminated_quote": (
        f'{HEADER}Fine.,0\n"Never closed,3\n'.encode(),
        "line 3: not a valid CSV file (unexpected end of data)",
    ),
}
# the refusals also run through the real command line (the rest only through read_labeled_csv)
CLI_CASES = (
    "missing_file",
    "misspelled_sentence",
    "whitespace_sentence",
    "label_1_5",
    "header_only",
    "invalid_utf8_after_bom",
    "unquoted_commas",
)


def _case_file(folder: Path, name: str) -> Path:
    content, _ = REFUSALS[name]
    path = folder / f"{name}.csv"
    if content is not None:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_refusal_message(tmp_path, name):
    path = _case_file(tmp_path, name)
    with pytest.raises(SaezarrError) as caught:
        read_labeled_csv(path)
    assert str(caught.value) == f"{path}: {REFUSALS[name][1]}"
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_invalid_utf8_offset_is_the_bad_byte(tmp_path):
    for name in ("invalid_utf8", "invalid_utf8_after_bom"):
        raw = _case_file(tmp_path, name).read_bytes()
        offset = int(REFUSALS[name][1].split("byte offset ")[1].rstrip(")"))
        assert raw[offset : offset + 1] == b"\xe9"
        assert raw[:offset].count(b"\n") + 1 == 3


@pytest.fixture(scope="module")
def cli_refusals(tmp_path_factory, tiny):
    """Run the command line (its `main`, in this process) once per CLI case: {name: (csv path, output path, result)}."""
    root = tmp_path_factory.mktemp("cli-refusals")

    def one(name):
        folder = root / name
        folder.mkdir()
        path = _case_file(folder, name)
        output = folder / "out.zarr"
        process = run_main(
            "build",
            "--input",
            path,
            "--output",
            output,
            "--config",
            tiny.config_file,
            "--quiet",
            env={"HF_HUB_OFFLINE": "1"},
        )
        return name, (path, output, process)

    return dict(map(one, CLI_CASES))


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_refusal(cli_refusals, name):
    path, output, process = cli_refusals[name]
    assert process.returncode == 2, process.stderr
    assert process.stdout == ""
    assert process.stderr == f"saezarr: error: {path}: {REFUSALS[name][1]}\n"
    assert "Traceback" not in process.stderr
    assert not output.exists()
    # nothing at all was written next to the input (no staging folder, no partial store)
    assert sorted(p.name for p in path.parent.iterdir()) == ([path.name] if path.exists() else [])


def test_bom_quotes_newlines_and_extra_columns(tmp_path):
    sentences = [
        'He said "stop, now" and left.',
        "Line one,\nline two.",
        "Plain sentence",
        "  keeps its  inner and outer spaces ",
        "Crème brûlée, naïve café — ok",
        "NA",
    ]
    labels = [3, 0, 2, 1, 0, 2]
    lines = ["id,concept_strength_label,notes,sentence"]
    for i, (sentence, label) in enumerate(zip(sentences, labels)):
        quoted = '"' + sentence.replace('"', '""') + '"'
        lines.append(f'{i},{label},"note, {i}",{quoted}')
    path = write_csv(tmp_path / "bom.csv", "\ufeff" + "\r\n".join(lines) + "\r\n", encoding="utf-8")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    data = read_labeled_csv(path)
    assert data.sentences == sentences
    assert data.labels.dtype == np.int64
    assert data.labels.tolist() == labels
    assert len(data) == len(sentences)
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data.path == path


def test_header_spaces_blank_lines_and_label_spaces(tmp_path):
    path = write_csv(tmp_path / "spaces.csv", " sentence , concept_strength_label \nFirst one., 3 \n\nSecond one.,0\n")
    data = read_labeled_csv(path)
    assert data.sentences == ["First one.", "Second one."]
    assert data.labels.tolist() == [3, 0]


def test_blank_line_does_not_count_as_a_data_row(tmp_path):
    path = write_csv(tmp_path / "gap.csv", f"{HEADER}First.,1\n\nSecond.,7\n")
    with pytest.raises(SaezarrError, match=r"data row 2: concept_strength_label '7'"):
        read_labeled_csv(path)


def test_quoted_newline_does_not_shift_row_numbers(tmp_path):
    path = write_csv(tmp_path / "multiline.csv", f'{HEADER}"One\nspans\nlines.",1\nTwo.,9\n')
    with pytest.raises(SaezarrError, match=r"data row 2: concept_strength_label '9'"):
        read_labeled_csv(path)


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(SaezarrError, match=r"is a folder, expected a CSV file"):
        read_labeled_csv(tmp_path)


def test_bundled_demo_csv_reads():
    from saezarr.testing.synthetic import DEMO_CSV

    data = read_labeled_csv(DEMO_CSV)
    assert len(data) == 40
    assert set(data.labels.tolist()) == {0, 1, 2, 3}
    assert all(s.strip() for s in data.sentences)
