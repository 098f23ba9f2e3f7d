"""Labeled sentences from a pandas DataFrame, a table with `to_pandas()` (a pyarrow Table), and TSV, Parquet and JSON
Lines files: read as the CSV is, refused by the same rules with one-line messages naming the row at fault."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import zarr
from clitools import run_main

from saezarr.errors import InputError
from saezarr.inputs.fragments import make_fragments
from saezarr.inputs.sentences import file_sha256, read_labeled_csv, read_sentences, read_table
from saezarr.models.language_model import load_tokenizer, resolve_model
from saezarr.testing.synthetic import DEMO_CSV

SENTENCES = ['He said "stop, now"\tand left.', "Line one,\nline two.", "  spaces kept  ", "Crème brûlée"]
LABELS = [3, 0, 2, 1]


def frame(**columns) -> pd.DataFrame:
    return pd.DataFrame({"sentence": SENTENCES, "concept_strength_label": LABELS, **columns})


def test_a_dataframe_reads_as_its_csv_file_does(tmp_path):
    table = frame(notes=["a", "b", "c", "d"])
    data = read_sentences(table)
    assert data.sentences == SENTENCES and data.labels.dtype == np.int64 and data.labels.tolist() == LABELS
    assert (data.path, data.name, data.where) == (None, "DataFrame", "DataFrame")
    # its sha256 is that of the CSV file pandas writes of the two columns: the same store from either
    path = tmp_path / "written.csv"
    table[["sentence", "concept_strength_label"]].to_csv(path, index=False)
    assert data.sha256 == file_sha256(path) == read_labeled_csv(path).sha256
    assert read_labeled_csv(path).sentences == SENTENCES


def test_labels_may_be_integers_text_or_whole_numbers():
    table = pd.DataFrame({"sentence": ["a.", "b.", "c.", "d."], "concept_strength_label": [3, " 2 ", 1.0, np.int8(0)]})
    assert read_table(table).labels.tolist() == [3, 2, 1, 0]


def test_a_table_with_to_pandas_is_read_and_named_by_its_type():
    data = read_sentences(pa.Table.from_pandas(frame()))
    assert data.sentences == SENTENCES and data.labels.tolist() == LABELS and data.name == "Table"
    bad = pa.Table.from_pandas(frame().assign(concept_strength_label=[3, 0, 7, 1]))
    with pytest.raises(InputError) as caught:
        read_sentences(bad)
    assert str(caught.value) == "Table row 2: concept_strength_label 7 is not an integer from 0 to 3"


# name -> (the sentence and label columns, the message); rows are labelled 10, 11, ... in the DataFrame
REFUSALS = {
    "label 4": (["a.", "b."], [0, 4], "DataFrame row 11: concept_strength_label 4 is not an integer from 0 to 3"),
    "label 1.5": (["a.", "b."], [1.5, 0], "DataFrame row 10: concept_strength_label 1.5 is not an integer from 0 to 3"),
    "label text": (["a."], ["high"], "DataFrame row 10: concept_strength_label 'high' is not an integer from 0 to 3"),
    "label True": (["a."], [True], "DataFrame row 10: concept_strength_label True is not an integer from 0 to 3"),
    "label missing": (
        ["a.", "b."],
        [1, None],
        "DataFrame row 11: concept_strength_label nan is not an integer from 0 to 3",
    ),
    "empty sentence": (["a.", "  "], [1, 2], "DataFrame row 11: the sentence is empty"),
    "missing sentence": ([None, "b."], [1, 2], "DataFrame row 10: the sentence is empty"),
    "number sentence": (["a.", 5], [1, 2], "DataFrame row 11: the sentence is 5, not text"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_dataframe_row_is_refused_by_its_index_label(name):
    sentences, labels, message = REFUSALS[name]
    index = range(10, 10 + len(sentences))
    table = pd.DataFrame({"sentence": sentences, "concept_strength_label": labels}, index=index)
    with pytest.raises(InputError) as caught:
        read_table(table)
    assert str(caught.value) == message


def test_missing_columns_no_rows_and_other_objects_are_refused():
    with pytest.raises(InputError) as caught:
        read_table(pd.DataFrame({"sentance": ["a."], "concept_strength_label": [1]}))
    assert str(caught.value) == (
        "DataFrame: missing column 'sentence' (found 'sentance', 'concept_strength_label'); rename column 'sentance' "
        "to 'sentence'?"
    )
    with pytest.raises(InputError) as caught:
        read_table(frame().iloc[:0])
    assert str(caught.value) == "DataFrame: has no rows"
    with pytest.raises(InputError) as caught:
        read_sentences([("a.", 1)])
    assert str(caught.value) == (
        "input: expected a file path, a pandas DataFrame or a table with a to_pandas() method, got list"
    )


def _write(folder, kind: str, table: pd.DataFrame):
    path = folder / f"sentences.{kind}"
    if kind == "tsv":
        table.to_csv(path, sep="\t", index=False)
    elif kind == "parquet":
        table.to_parquet(path)
    else:
        table.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


@pytest.mark.parametrize("kind", ["tsv", "parquet", "jsonl"])
def test_tsv_parquet_and_json_lines_files_read_as_the_csv_does(tmp_path, kind):
    path = _write(tmp_path, kind, frame(notes=["a", "b", "c", "d"]))
    data = read_sentences(path)
    assert data.sentences == SENTENCES and data.labels.tolist() == LABELS
    assert (data.path, data.name, data.sha256) == (path, path.name, hashlib.sha256(path.read_bytes()).hexdigest())
    bad = _write(tmp_path, kind, frame().assign(concept_strength_label=[3, 0, 2, 9]))
    with pytest.raises(InputError) as caught:
        read_sentences(bad)
    shown = "'9'" if kind == "tsv" else "9"  # TSV is text, as a CSV is
    assert str(caught.value) == f"{bad}: data row 4: concept_strength_label {shown} is not an integer from 0 to 3"


def test_broken_files_are_refused_in_one_line(tmp_path):
    parquet = tmp_path / "broken.parquet"
    parquet.write_bytes(b"not parquet")
    jsonl = tmp_path / "broken.jsonl"
    jsonl.write_text('{"sentence": "a.", "concept_strength_label": 1}\n{"sentence": \n')
    tsv = tmp_path / "commas.tsv"
    tsv.write_text("sentence\tconcept_strength_label\nWell\tfine.\t0\n")
    for path, start in (
        (parquet, f"{parquet}: not a valid Parquet file ("),
        (jsonl, f"{jsonl}: not a valid JSON Lines file ("),
        (tsv, f"{tsv}: data row 1: 3 fields but the header has 2; quote a sentence that contains a tab"),
        (tmp_path / "missing.parquet", f"{tmp_path / 'missing.parquet'}: no such input file"),
    ):
        with pytest.raises(InputError) as caught:
            read_sentences(path)
        assert str(caught.value).startswith(start) and "\n" not in str(caught.value)


def test_a_too_long_sentence_of_a_dataframe_is_named_by_its_row(tiny):
    model = resolve_model(str(tiny.model))
    table = pd.DataFrame({"sentence": ["Short.", " ".join(["word"] * 40)], "concept_strength_label": [0, 3]})
    with pytest.raises(InputError) as caught:
        make_fragments(read_table(table.set_axis(["first", "second"])), load_tokenizer(model), max_tokens=20)
    assert str(caught.value).startswith("DataFrame row second: the sentence is ")


def test_the_command_line_builds_from_a_parquet_file_as_from_its_csv(tiny, tmp_path):
    table = pd.read_csv(DEMO_CSV)
    parquet = _write(tmp_path, "parquet", table)
    stores = {}
    for name, path in (("csv", DEMO_CSV), ("parquet", parquet)):
        stores[name] = tmp_path / f"{name}.zarr"
        args = ("--input", path, "--output", stores[name], "--config", tiny.config_file, "--layers", "12")
        result = run_main("build", *args, "--quiet")
        assert result.returncode == 0, result.stderr
    groups = {name: zarr.open_group(store, mode="r") for name, store in stores.items()}
    assert np.array_equal(groups["csv"]["activations"][:], groups["parquet"]["activations"][:], equal_nan=True)
    attrs = {name: json.loads((store / "zarr.json").read_text())["attributes"] for name, store in stores.items()}
    assert attrs["parquet"]["input_file"] == "sentences.parquet"
    assert attrs["parquet"]["input_sha256"] == file_sha256(parquet)
    assert attrs["parquet"]["tokens_sha256"] == attrs["csv"]["tokens_sha256"]
