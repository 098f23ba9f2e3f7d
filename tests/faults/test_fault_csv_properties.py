"""Property tests of CSV reading: what the csv module writes comes back exactly; anything else fails in one line.

(Fragment properties live in tests/inputs/test_fragments.py.)
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saezarr.errors import SaezarrError
from saezarr.inputs.sentences import read_labeled_csv

_EXAMPLES = int(os.environ.get("FAULTS_HYPOTHESIS_EXAMPLES", "150"))  # more for a deeper search
_SETTINGS = settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_TRICKY = st.sampled_from(
    [",", '"', '""', "\n", "\r\n", "\r", " ", "\t", ";", "'", "é", "😀", "\u2028", "\x85", "\ufeff", "#", "nan", "NULL"]
)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
sentences = st.lists(st.one_of(_TEXT, _TRICKY), min_size=1, max_size=6).map("".join).filter(lambda s: s.strip())


def _write(rows, *, bom: bool, crlf: bool, quote_all: bool, extra: bool) -> Path:
    buffer = io.StringIO(newline="")
    # with lineterminator "\n" and minimal quoting, the csv module leaves a lone "\r" unquoted and its own
    # reader then splits the row there: such a file is ambiguous, so "\n" endings come with full quoting
    crlf = crlf or not quote_all
    writer = csv.writer(
        buffer, lineterminator="\r\n" if crlf else "\n", quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL
    )
    header = ["sentence", "concept_strength_label"] + (["note"] if extra else [])
    writer.writerow(header)
    for sentence, label in rows:
        writer.writerow([sentence, label] + (["x,y"] if extra else []))
    with tempfile.NamedTemporaryFile("wb", suffix=".csv", delete=False) as f:
        f.write(buffer.getvalue().encode("utf-8-sig" if bom else "utf-8"))
    return Path(f.name)


@_SETTINGS
@given(
    rows=st.lists(st.tuples(sentences, st.integers(0, 3)), min_size=1, max_size=8),
    bom=st.booleans(),
    crlf=st.booleans(),
    quote_all=st.booleans(),
    extra=st.booleans(),
)
def test_csv_round_trip(rows, bom, crlf, quote_all, extra):
    path = _write(rows, bom=bom, crlf=crlf, quote_all=quote_all, extra=extra)
    try:
        data = read_labeled_csv(path)
    finally:
        path.unlink()
    assert data.sentences == [s for s, _ in rows]
    assert data.labels.tolist() == [label for _, label in rows]


@_SETTINGS
@given(
    rows=st.lists(st.tuples(sentences, st.integers(0, 3).map(str)), min_size=1, max_size=5),
    bad=st.text(max_size=6).filter(lambda s: s.strip() not in {"0", "1", "2", "3"}),
    where=st.integers(0, 4),
)
def test_any_invalid_label_names_its_row(rows, bad, where):
    where = min(where, len(rows) - 1)
    rows[where] = (rows[where][0], bad)
    path = _write(rows, bom=False, crlf=False, quote_all=False, extra=False)
    try:
        try:
            read_labeled_csv(path)
        except SaezarrError as exc:
            assert f"data row {where + 1}:" in str(exc), str(exc)
            assert "\n" not in str(exc).replace(repr(bad), "")
        else:
            raise AssertionError(f"label {bad!r} in data row {where + 1} was accepted")
    finally:
        path.unlink()


@_SETTINGS
@given(
    st.one_of(
        st.binary(max_size=200),
        st.lists(
            st.sampled_from(
                [
                    b"sentence",
                    b"concept_strength_label",
                    b",",
                    b'"',
                    b"\n",
                    b"\r",
                    b"1",
                    b"9",
                    b" ",
                    b"\xff",
                    b"\xc3",
                    b"\x00",
                    b"hi",
                ]
            ),
            max_size=30,
        ).map(b"".join),
    )
)
def test_arbitrary_bytes_read_or_fail_in_one_line(raw):
    with tempfile.NamedTemporaryFile("wb", suffix=".csv", delete=False) as f:
        f.write(raw)
    path = Path(f.name)
    try:
        try:
            data = read_labeled_csv(path)
        except SaezarrError as exc:
            assert str(exc).startswith(str(path))
        else:
            assert len(data.sentences) == len(data.labels) >= 1
    finally:
        path.unlink()
