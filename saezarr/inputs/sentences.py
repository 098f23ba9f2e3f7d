"""Reading and validating the labeled-sentence CSV."""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from saezarr.errors import InputError

SENTENCE_COLUMN = "sentence"
LABEL_COLUMN = "concept_strength_label"
LABEL_PATTERN = re.compile(r"^\s*[0-3]\s*$")


@dataclass(frozen=True)
class LabeledSentences:
    """Sentences with their 0-3 concept-strength labels, as read from one CSV file."""

    path: Path | None  # None: an extension's sentences, as its store holds them
    sentences: list[str]
    labels: np.ndarray
    sha256: str

    def __len__(self) -> int:
        return len(self.sentences)


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_labeled_csv(path: str | Path) -> LabeledSentences:
    """Read a `sentence,concept_strength_label` CSV, refusing any invalid row."""
    path = Path(path)
    text = _read_utf8(path)
    if not text.strip():
        raise InputError(f"{path}: the file is empty; expected a header 'sentence,concept_strength_label'")
    table = _parse_csv(path, text)
    for column in (SENTENCE_COLUMN, LABEL_COLUMN):
        _require_column(path, table, column)
    if table.empty:
        raise InputError(f"{path}: the file has a header but no data rows")
    sentences = table[SENTENCE_COLUMN].astype(str).tolist()
    labels = table[LABEL_COLUMN].astype(str).tolist()
    for row, (sentence, label) in enumerate(zip(sentences, labels), start=1):
        if not sentence.strip():
            raise InputError(f"{path}: data row {row}: the sentence is empty")
        if not LABEL_PATTERN.match(label):
            raise InputError(f"{path}: data row {row}: concept_strength_label {label!r} is not an integer from 0 to 3")
    return LabeledSentences(
        path=path,
        sentences=sentences,
        labels=np.array([int(label) for label in labels], dtype=np.int64),
        sha256=file_sha256(path),
    )


def _read_utf8(path: Path) -> str:
    if not path.exists():
        raise InputError(f"{path}: no such input file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a CSV file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + (
            len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
        )  # utf-8-sig counts after the BOM
        line = raw[:offset].count(b"\n") + 1
        raise InputError(f"{path}: line {line}: not valid UTF-8 (byte offset {offset})") from None


def _parse_csv(path: Path, text: str) -> pd.DataFrame:
    """Parse CSV text into a table of strings, refusing rows with more fields than the header."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        records = [record for record in reader if record]  # blank lines are skipped
    except csv.Error as exc:
        raise InputError(f"{path}: line {reader.line_num}: not a valid CSV file ({_first_line(exc)})") from None
    header = [c.strip() for c in records[0]]
    for row, record in enumerate(records[1:], start=1):
        if len(record) > len(header):
            raise InputError(
                f"{path}: data row {row}: {len(record)} fields but the header has {len(header)}; "
                "quote a sentence that contains a comma"
            )
    rows = [record + [""] * (len(header) - len(record)) for record in records[1:]]
    # the first of repeated column names wins, as a reader by name would see it
    keep = [i for i, name in enumerate(header) if name not in header[:i]]
    return pd.DataFrame([[r[i] for i in keep] for r in rows], columns=[header[i] for i in keep], dtype=object)


def _require_column(path: Path, table: pd.DataFrame, column: str) -> None:
    if column in table.columns:
        return
    close = difflib.get_close_matches(column, list(table.columns), n=1, cutoff=0.6)
    hint = f"; rename column {close[0]!r} to {column!r}?" if close else ""
    found = ", ".join(repr(c) for c in table.columns)
    raise InputError(f"{path}: missing column {column!r} (found {found}){hint}")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
