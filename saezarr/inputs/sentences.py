"""Reading and validating the labeled sentences: a CSV file (TSV, Parquet and JSON Lines files by their suffix), or an
in-memory table such as a pandas DataFrame, each row checked by the same rules."""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from saezarr.errors import InputError, option

SENTENCE_COLUMN = "sentence"
LABEL_COLUMN = "concept_strength_label"
LABEL_PATTERN = re.compile(r"^\s*[0-3]\s*$")


class SentenceTable(Protocol):
    """An in-memory table of labeled sentences other than a pandas DataFrame, such as a `datasets.Dataset`."""

    def to_pandas(self) -> pd.DataFrame:
        """The table as a pandas DataFrame."""
        ...


@dataclass(frozen=True)
class LabeledSentences:
    """Sentences with their 0-3 concept-strength labels, as read from one file or in-memory table."""

    path: Path | None  # None: an in-memory table, or an extension's sentences as its store holds them
    sentences: list[str]
    labels: np.ndarray
    sha256: str
    table: str | None = None  # an in-memory table's kind ("DataFrame"), which messages and the store name
    index: Sequence = ()  # an in-memory table's row labels

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def where(self) -> str:
        """The input as messages name it: the file's path, or the in-memory table's kind."""
        return self.table if self.table is not None else str(self.path)

    @property
    def name(self) -> str:
        """What the store records as its input file: the file's name, or the in-memory table's kind."""
        return self.table if self.table is not None else Path(str(self.path)).name

    def row(self, i: int) -> str:
        """Where data row i (0-based) is, for a message: `PATH: data row N` (1-based), or `DataFrame row LABEL`."""
        return f"{self.table} row {self.index[i]}" if self.table is not None else data_row(self.path, i)


def data_row(where: object, i: int) -> str:
    """Where data row i (0-based) of the file `where` is, for a message: `PATH: data row N` (1-based)."""
    return f"{where}: data row {i + 1}"


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sentences(source: str | PathLike | pd.DataFrame | SentenceTable) -> LabeledSentences:
    """The labeled sentences of a file (CSV, or TSV, Parquet or JSON Lines by the suffix .tsv, .parquet, .jsonl), of
    a pandas DataFrame, or of any table with a `to_pandas()` method (such as a `datasets.Dataset`)."""
    if isinstance(source, (str, PathLike)):
        path = Path(source)
        return _FILE_READERS.get(path.suffix.lower(), read_labeled_csv)(path)
    return read_table(source)


def read_labeled_csv(path: str | Path) -> LabeledSentences:
    """Read a `sentence,concept_strength_label` CSV, refusing any invalid row."""
    return _read_delimited(Path(path), _CSV)


def read_labeled_tsv(path: str | Path) -> LabeledSentences:
    """Read a tab-separated `sentence<TAB>concept_strength_label` file (quoted as a CSV), refusing any invalid row."""
    return _read_delimited(Path(path), _TSV)


def read_table(table: pd.DataFrame | SentenceTable) -> LabeledSentences:
    """Read a pandas DataFrame, or a table with a `to_pandas()` method, with `sentence` and `concept_strength_label`
    columns, refusing any invalid row; messages name a row by its index label (`DataFrame row 3`)."""
    kind = type(table).__name__
    if not isinstance(table, pd.DataFrame):
        to_pandas = getattr(table, "to_pandas", None)
        if not callable(to_pandas):
            raise InputError(
                f"{option('input')}: expected a file path, a pandas DataFrame or a table with a to_pandas() method, "
                f"got {kind}"
            )
        table = to_pandas()
        if not isinstance(table, pd.DataFrame):
            raise InputError(f"{option('input')}: {kind}.to_pandas() returned {type(table).__name__}, not a DataFrame")
    table = table.loc[:, ~table.columns.duplicated()]  # the first of repeated column names wins, as in a file
    index = table.index.tolist()
    sentences, labels = _checked_rows(table, kind, lambda i: f"{kind} row {index[i]}", f"{kind}: has no rows")
    return LabeledSentences(None, sentences, labels, table_sha256(sentences, labels), table=kind, index=index)


def table_sha256(sentences: Sequence[str], labels: np.ndarray) -> str:
    """The sha256 of the sentences and labels written as a CSV file: what `df.to_csv(path, index=False)` of the
    DataFrame of these two columns writes."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([SENTENCE_COLUMN, LABEL_COLUMN])
    writer.writerows(zip(sentences, labels.tolist()))
    return hashlib.sha256(text.getvalue().encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Dialect:
    """A delimited text format: its name in messages, its delimiter, and the delimiter's name."""

    name: str
    delimiter: str
    delimiter_name: str


_CSV = _Dialect("CSV", ",", "a comma")
_TSV = _Dialect("TSV", "\t", "a tab")


def _read_delimited(path: Path, dialect: _Dialect) -> LabeledSentences:
    text = _read_utf8(path, f"a {dialect.name} file")
    if not text.strip():
        header = f"{SENTENCE_COLUMN}{dialect.delimiter}{LABEL_COLUMN}".replace("\t", "<TAB>")
        raise InputError(f"{path}: the file is empty; expected a header '{header}'")
    table = _parse_delimited(path, text, dialect)
    sentences, labels = _checked_rows(
        table, path, lambda i: data_row(path, i), f"{path}: the file has a header but no data rows"
    )
    return LabeledSentences(path=path, sentences=sentences, labels=labels, sha256=file_sha256(path))


def _read_parquet(path: Path) -> LabeledSentences:
    import pyarrow as pa

    _check_file(path, "a Parquet file")
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a valid Parquet file ({_first_line(exc)})") from None
    return _read_typed(path, table)


def _read_jsonl(path: Path) -> LabeledSentences:
    text = _read_utf8(path, "a JSON Lines file")
    if not text.strip():
        raise InputError(f"{path}: the file is empty; expected one JSON object per line")
    try:
        table = pd.read_json(io.StringIO(text), lines=True, dtype=False)  # values keep their JSON types
    except ValueError as exc:
        raise InputError(f"{path}: not a valid JSON Lines file ({_first_line(exc)})") from None
    return _read_typed(path, table)


def _read_typed(path: Path, table: pd.DataFrame) -> LabeledSentences:
    """The labeled sentences of a file read into a table whose values keep their types (Parquet, JSON Lines)."""
    sentences, labels = _checked_rows(table, path, lambda i: data_row(path, i), f"{path}: the file has no data rows")
    return LabeledSentences(path=path, sentences=sentences, labels=labels, sha256=file_sha256(path))


_FILE_READERS: dict[str, Callable[[Path], LabeledSentences]] = {
    ".tsv": read_labeled_tsv,
    ".parquet": _read_parquet,
    ".jsonl": _read_jsonl,
}


def _checked_rows(
    table: pd.DataFrame, where: object, row: Callable[[int], str], empty: str
) -> tuple[list[str], np.ndarray]:
    """The sentences and integer labels of a table, refusing a missing column, no rows, an empty sentence or a label
    that is not an integer 0-3; `row(i)` names data row i in a message."""
    for column in (SENTENCE_COLUMN, LABEL_COLUMN):
        _require_column(where, table, column)
    if table.empty:
        raise InputError(empty)
    sentences, labels = [], []
    for i, (sentence, label) in enumerate(zip(table[SENTENCE_COLUMN].tolist(), table[LABEL_COLUMN].tolist())):
        text = _text(sentence, row(i))
        if not text.strip():
            raise InputError(f"{row(i)}: the sentence is empty")
        value = _label(label)
        if value is None:
            raise InputError(f"{row(i)}: {LABEL_COLUMN} {_shown(label)} is not an integer from 0 to 3")
        sentences.append(text)
        labels.append(value)
    return sentences, np.array(labels, dtype=np.int64)


def _text(value: object, where: str) -> str:
    """A sentence cell's text: a missing value reads as empty; a value of any other type than text is refused."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    raise InputError(f"{where}: the sentence is {_shown(value)}, not text")


def _label(value: object) -> int | None:
    """A label cell's integer 0-3: text such as ' 2 ', or a number equal to one (2, 2.0); None for anything else."""
    if isinstance(value, str):
        return int(value) if LABEL_PATTERN.match(value) else None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return int(value) if value in (0, 1, 2, 3) else None


def _shown(value: object) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def _check_file(path: Path, expected: str) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such input file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected {expected}")


def _read_utf8(path: Path, expected: str) -> str:
    _check_file(path, expected)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + (
            len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
        )  # utf-8-sig counts after the BOM
        line = raw[:offset].count(b"\n") + 1
        raise InputError(f"{path}: line {line}: not valid UTF-8 (byte offset {offset})") from None


def _parse_delimited(path: Path, text: str, dialect: _Dialect) -> pd.DataFrame:
    """Parse CSV (or TSV) text into a table of strings, refusing rows with more fields than the header."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, delimiter=dialect.delimiter)
    try:
        records = [record for record in reader if record]  # blank lines are skipped
    except csv.Error as exc:
        raise InputError(
            f"{path}: line {reader.line_num}: not a valid {dialect.name} file ({_first_line(exc)})"
        ) from None
    header = [c.strip() for c in records[0]]
    for row, record in enumerate(records[1:], start=1):
        if len(record) > len(header):
            raise InputError(
                f"{path}: data row {row}: {len(record)} fields but the header has {len(header)}; "
                f"quote a sentence that contains {dialect.delimiter_name}"
            )
    rows = [record + [""] * (len(header) - len(record)) for record in records[1:]]
    # the first of repeated column names wins, as a reader by name would see it
    keep = [i for i, name in enumerate(header) if name not in header[:i]]
    return pd.DataFrame([[r[i] for i in keep] for r in rows], columns=[header[i] for i in keep], dtype=object)


def _require_column(where: object, table: pd.DataFrame, column: str) -> None:
    if column in table.columns:
        return
    names = [str(c) for c in table.columns]
    close = difflib.get_close_matches(column, names, n=1, cutoff=0.6)
    hint = f"; rename column {close[0]!r} to {column!r}?" if close else ""
    found = ", ".join(repr(c) for c in names)
    raise InputError(f"{where}: missing column {column!r} (found {found}){hint}")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
