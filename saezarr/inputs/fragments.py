"""Turning sentences into fragments: one sentence prefix per selected token."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from saezarr.errors import InputError, option
from saezarr.inputs.sentences import LabeledSentences

GRANULARITIES = ("token", "word", "final")
PREPEND_BOS = "prepend_bos"  # the store attribute that says, where False, that nothing precedes a sentence
FRAGMENT_FIELDS = (
    "fragment_text",
    "original_sentence",
    "concept_strength_label",
    "sentence_index",
    "token_position",
    "is_final_token",
    "fragment_length",
)
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Fragments:
    """The fragment table (one row per fragment, ordered by sentence then position) and each sentence's token ids."""

    table: pd.DataFrame
    token_ids: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.table)

    def tokens_sha256(self) -> str:
        """sha256 of every sentence's token ids and of the selected (sentence, position) pairs."""
        digest = hashlib.sha256()
        for ids in self.token_ids:
            digest.update(np.int64(len(ids)).tobytes())  # lengths keep [1 2][3] apart from [1][2 3]
            digest.update(np.asarray(ids, dtype="<i8").tobytes())
        digest.update(self.table[["sentence_index", "token_position"]].to_numpy(dtype="<i8").tobytes())
        return digest.hexdigest()


def make_fragments(
    data: LabeledSentences,
    tokenizer,
    granularity: str = "token",
    max_tokens: int | None = None,
    prepend_bos: bool = True,
) -> Fragments:
    """Tokenize every sentence (BOS first; EOS where the tokenizer has no BOS, as TransformerLens does; nothing
    without `prepend_bos`, its first real token then a fragment at position 0) and select its fragments at the given
    granularity."""
    if granularity not in GRANULARITIES:
        raise InputError(f"{option('fragments')}: expected one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    # user text is text: a literal "<bos>" or "<start_of_turn>" in a sentence must not become a control token
    encoded = tokenizer(
        list(data.sentences), add_special_tokens=prepend_bos, return_offsets_mapping=True, split_special_tokens=True
    )
    bos = start_token_id(tokenizer) if prepend_bos else None
    first = 1 if prepend_bos else 0  # the first position that is a real token
    columns: dict[str, list] = {field: [] for field in FRAGMENT_FIELDS}
    token_ids = []
    for row, sentence in enumerate(data.sentences):
        ids, offsets = _with_bos(encoded["input_ids"][row], encoded["offset_mapping"][row], bos)
        if max_tokens is not None and len(ids) > max_tokens:
            raise InputError(
                f"{data.row(row)}: the sentence is {len(ids)} tokens long, more than the "
                f"model's context of {max_tokens} tokens; shorten or split it"
            )
        if len(ids) <= first:
            raise InputError(f"{data.row(row)}: the sentence has no tokens")
        token_ids.append(np.asarray(ids, dtype=np.int64))
        ends = [end for _, end in offsets]
        positions = select_positions(sentence, ends, granularity, first)
        texts = [sentence[: ends[position]] for position in positions]
        columns["fragment_text"] += texts
        columns["original_sentence"] += [sentence] * len(positions)
        columns["concept_strength_label"] += [int(data.labels[row])] * len(positions)
        columns["sentence_index"] += [row] * len(positions)
        columns["token_position"] += positions
        columns["is_final_token"] += [position == len(ids) - 1 for position in positions]
        columns["fragment_length"] += [len(text.split()) for text in texts]
    table = pd.DataFrame(columns)
    for field in ("concept_strength_label", "sentence_index", "token_position", "fragment_length"):
        table[field] = table[field].astype(np.int64)
    table["is_final_token"] = table["is_final_token"].astype(bool)
    return Fragments(table=table, token_ids=token_ids)


def start_token_id(tokenizer) -> int | None:
    """The token put before every sentence, as TransformerLens prepends it: BOS, else EOS (Qwen has no BOS)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def select_positions(sentence: str, token_ends: Sequence[int], granularity: str, first: int = 1) -> list[int]:
    """Token positions that become fragments, given each token's end offset in the sentence; `first` is the first
    real token's (1 after BOS, 0 with nothing before the sentence)."""
    last = len(token_ends) - 1
    if granularity == "final":
        return [last]
    if granularity == "token":
        return list(range(first, last + 1))
    positions: list[int] = []
    position = first
    for word in _WORD.finditer(sentence):
        # the word's last token is the first token that reaches the word's end, or the last of the tokens
        # sharing that end offset (byte-fallback pieces of one character, a prepended '▁' and its character)
        while position < last and token_ends[position] < word.end():
            position += 1
        while position < last and token_ends[position + 1] == token_ends[position]:
            position += 1
        if not positions or position > positions[-1]:
            positions.append(position)
    return positions or [last]


def _with_bos(
    ids: Sequence[int], offsets: Sequence[Sequence[int]], bos: int | None
) -> tuple[list[int], list[Sequence[int]]]:
    ids, offsets = list(ids), [tuple(o) for o in offsets]
    if bos is not None and (not ids or ids[0] != bos):
        ids, offsets = [bos, *ids], [(0, 0), *offsets]
    return ids, offsets
