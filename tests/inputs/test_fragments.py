"""Fragments at token, word and final granularity, checked against the tiny model's own tokenizer offsets."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saezarr.errors import SaezarrError
from saezarr.inputs.fragments import FRAGMENT_FIELDS, GRANULARITIES, make_fragments, select_positions
from saezarr.inputs.sentences import LabeledSentences, read_labeled_csv
from saezarr.models.language_model import load_tokenizer, resolve_model

WORD = re.compile(r"\S+")


@pytest.fixture(scope="module")
def model_info(tiny):
    return resolve_model(str(tiny.model))


@pytest.fixture(scope="module")
def tokenizer(model_info):
    return load_tokenizer(model_info)


@pytest.fixture(scope="module")
def demo(tiny):
    return read_labeled_csv(tiny.csv)


def labeled(sentences, labels=None, path="mem.csv") -> LabeledSentences:
    """LabeledSentences made in memory (the CSV reader has its own tests)."""
    labels = np.array(labels if labels is not None else [i % 4 for i in range(len(sentences))], dtype=np.int64)
    return LabeledSentences(
        Path(path), list(sentences), labels, hashlib.sha256("".join(sentences).encode()).hexdigest()
    )


def reference_tokens(tokenizer, sentence):
    """Token ids (BOS first) and each token's end offset, from the tokenizer alone, one sentence at a time."""
    encoded = tokenizer(sentence, add_special_tokens=True, return_offsets_mapping=True, split_special_tokens=True)
    ids = list(encoded["input_ids"])
    ends = [end for _, end in encoded["offset_mapping"]]
    if ids[0] != tokenizer.bos_token_id:
        ids, ends = [tokenizer.bos_token_id, *ids], [0, *ends]
    return ids, ends


def word_positions_oracle(sentence, ends):
    """Per word: the last of the tokens sharing the end offset of the first token that reaches the word's end."""
    last = len(ends) - 1
    chosen = set()
    for word in WORD.finditer(sentence):
        first = next((p for p in range(1, last + 1) if ends[p] >= word.end()), last)
        chosen.add(max(p for p in range(first, last + 1) if ends[p] == ends[first]))
    return sorted(chosen) or [last]


def check_table(fragments, data, tokenizer, granularity):
    """Every invariant of the fragment table that holds for any sentence."""
    table = fragments.table
    assert list(table.columns) == list(FRAGMENT_FIELDS)
    assert table["sentence_index"].dtype == np.int64
    assert table["token_position"].dtype == np.int64
    assert table["fragment_length"].dtype == np.int64
    assert table["concept_strength_label"].dtype == np.int64
    assert table["is_final_token"].dtype == bool
    assert len(fragments.token_ids) == len(data)
    # ordered by sentence, then position
    keys = list(zip(table["sentence_index"], table["token_position"]))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert set(table["sentence_index"]) == set(range(len(data)))
    for index, sentence in enumerate(data.sentences):
        ids, ends = reference_tokens(tokenizer, sentence)
        assert fragments.token_ids[index].dtype == np.int64
        assert fragments.token_ids[index].tolist() == ids
        # BOS once, first; no control token from the text (a literal "<eos>" is text)
        assert ids[0] == tokenizer.bos_token_id
        assert set(ids[1:]).isdisjoint(tokenizer.all_special_ids)
        assert ends == sorted(ends), "token end offsets must not go backwards"
        rows = table[table["sentence_index"] == index]
        positions = rows["token_position"].tolist()
        last = len(ids) - 1
        if granularity == "token":
            assert positions == list(range(1, last + 1))
            assert rows["is_final_token"].sum() == 1
        elif granularity == "final":
            assert positions == [last]
        else:
            assert positions == word_positions_oracle(sentence, ends)
        assert all(1 <= p <= last for p in positions)
        assert rows["is_final_token"].tolist() == [p == last for p in positions]
        for row in rows.itertuples():
            assert row.fragment_text == sentence[: ends[row.token_position]]
            assert sentence.startswith(row.fragment_text)
            assert row.original_sentence == sentence
            assert row.concept_strength_label == data.labels[index]
            assert row.fragment_length == len(row.fragment_text.split())
        if positions[-1] == last:
            assert rows["fragment_text"].iloc[-1] == sentence


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_demo_fragments(demo, tokenizer, granularity):
    fragments = make_fragments(demo, tokenizer, granularity)
    check_table(fragments, demo, tokenizer, granularity)


def test_token_granularity_counts(demo, tokenizer):
    fragments = make_fragments(demo, tokenizer, "token")
    lengths = [len(tokenizer(s)["input_ids"]) for s in demo.sentences]  # the tiny tokenizer adds BOS itself
    assert len(fragments) == sum(lengths) - len(lengths)
    finals = fragments.table[fragments.table["is_final_token"]]
    assert finals["sentence_index"].tolist() == list(range(len(demo)))
    assert finals["fragment_text"].tolist() == demo.sentences


def test_word_granularity_is_one_fragment_per_word(demo, tokenizer):
    """The demo sentences are single-spaced words, so word k's fragment is the sentence up to word k."""
    table = make_fragments(demo, tokenizer, "word").table
    tokens = make_fragments(demo, tokenizer, "token").table
    token_keys = set(zip(tokens["sentence_index"], tokens["token_position"]))
    assert set(zip(table["sentence_index"], table["token_position"])) <= token_keys
    for index, sentence in enumerate(demo.sentences):
        rows = table[table["sentence_index"] == index]
        words = list(WORD.finditer(sentence))
        assert rows["fragment_text"].tolist() == [sentence[: w.end()] for w in words]
        assert rows["fragment_length"].tolist() == list(range(1, len(words) + 1))
        assert rows["is_final_token"].tolist() == [False] * (len(words) - 1) + [True]


def test_final_granularity_is_the_whole_sentence(demo, tokenizer):
    table = make_fragments(demo, tokenizer, "final").table
    assert table["sentence_index"].tolist() == list(range(len(demo)))
    assert table["fragment_text"].tolist() == demo.sentences
    assert table["is_final_token"].all()
    assert table["concept_strength_label"].tolist() == demo.labels.tolist()
    assert table["fragment_length"].tolist() == [len(s.split()) for s in demo.sentences]


@pytest.mark.parametrize("sentence", ["A", "😀 ok", "x\ty\nz", "ok 😀", "Crème brûlée ☕"])
def test_word_fragment_ends_after_the_words_last_token(tokenizer, sentence):
    """Byte-fallback pieces (and a prepended '▁') share their character's end offset; the word ends at the last."""
    ids, ends = reference_tokens(tokenizer, sentence)
    table = make_fragments(labeled([sentence]), tokenizer, "word").table
    for row in table.itertuples():
        p = row.token_position
        assert p == len(ids) - 1 or ends[p + 1] > ends[p], f"token {p + 1} also ends at {ends[p]}"
    # no trailing whitespace: the last word's fragment is the final token
    assert table["is_final_token"].iloc[-1]
    assert table["token_position"].iloc[-1] == len(ids) - 1


SPECIAL_TEXT = [
    "He typed <bos> into the chat",
    "<bos>Hello <eos> <pad> <unk>",
    "Say <start_of_turn>user then <end_of_turn>",
    "<eos>",
]


@pytest.fixture(scope="module")
def chat_tokenizer(model_info):
    """The tiny tokenizer with Gemma's turn markers added as special tokens, as in Gemma's own tokenizer."""
    tokenizer = load_tokenizer(model_info)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    return tokenizer


def test_special_token_strings_in_a_sentence_are_text(chat_tokenizer):
    """A literal `<bos>`, `<eos>`, `<pad>`, `<unk>` or `<start_of_turn>` is tokenized as plain text, BOS only first."""
    specials = set(chat_tokenizer.all_special_ids)
    markers = {"<bos>", "<eos>", "<pad>", "<unk>", "<start_of_turn>", "<end_of_turn>"}
    assert markers <= set(chat_tokenizer.all_special_tokens)
    data = labeled(SPECIAL_TEXT)
    fragments = make_fragments(data, chat_tokenizer, "token")
    for index, sentence in enumerate(SPECIAL_TEXT):
        ids = fragments.token_ids[index].tolist()
        assert ids[0] == chat_tokenizer.bos_token_id and ids.count(chat_tokenizer.bos_token_id) == 1
        assert specials.isdisjoint(ids[1:]), chat_tokenizer.convert_ids_to_tokens(ids)
        # without splitting, the same sentence does hold a control token: the test would catch the old behaviour
        assert not specials.isdisjoint(chat_tokenizer(sentence)["input_ids"][1:])
    for granularity in GRANULARITIES:
        check_table(make_fragments(data, chat_tokenizer, granularity), data, chat_tokenizer, granularity)
    # single-spaced words: word k's fragment is the sentence up to the end of word k, markup included
    words = make_fragments(data, chat_tokenizer, "word").table
    for index, sentence in enumerate(SPECIAL_TEXT):
        texts = words[words["sentence_index"] == index]["fragment_text"].tolist()
        assert texts == [sentence[: w.end()] for w in WORD.finditer(sentence)]
    tokens = fragments.table
    assert tokens[tokens["is_final_token"]]["fragment_text"].tolist() == SPECIAL_TEXT
    first = tokens[tokens["sentence_index"] == 0]["fragment_text"].tolist()
    assert "He typed <" in first and "He typed <bos>" in first  # the marker's characters are ordinary fragments


def test_too_long_sentence_is_refused_naming_the_row(tokenizer, model_info):
    long = " ".join(f"word{i}" for i in range(600))
    data = labeled(["Short one.", long, "Another."], path="long.csv")
    n_tokens = len(reference_tokens(tokenizer, long)[0])
    assert n_tokens > model_info.max_tokens
    with pytest.raises(SaezarrError) as caught:
        make_fragments(data, tokenizer, "token", max_tokens=model_info.max_tokens)
    assert str(caught.value) == (
        f"long.csv: data row 2: the sentence is {n_tokens} tokens long, more than the model's context of "
        f"{model_info.max_tokens} tokens; shorten or split it"
    )
    # exactly at the limit is fine
    fits = make_fragments(data, tokenizer, "final", max_tokens=n_tokens)
    assert fits.table["token_position"].tolist()[1] == n_tokens - 1


def test_too_long_sentence_stops_the_build_before_any_output(tiny, tmp_path):
    from saezarr.build.pipeline import BuildOptions, build

    csv = tmp_path / "long.csv"
    long = " ".join(f"w{i}" for i in range(700))
    csv.write_text(f"sentence,concept_strength_label\nShort.,0\nStill short.,1\n{long},3\n")
    output = tmp_path / "out.zarr"
    with pytest.raises(SaezarrError, match=rf"^{re.escape(str(csv))}: data row 3: the sentence is \d+ tokens long"):
        build(BuildOptions(input=csv, output=output, config_file=tiny.config_file, quiet=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.csv"]


def test_unknown_granularity(demo, tokenizer):
    with pytest.raises(SaezarrError, match=r"^fragments: expected one of token, word, final, got 'char'$"):
        make_fragments(demo, tokenizer, "char")


# ---- property tests -------------------------------------------------------------------------------------------

PIECES = st.one_of(
    st.sampled_from(
        [
            " ",
            "  ",
            "   ",
            "\t",
            "\n",
            "a",
            "the",
            "é",
            "ü",
            "ñ",
            "😀",
            "☕",
            "中文",
            ".",
            ",",
            "!",
            "'",
            "0",
            "<bos>",
            "<eos>",
            "<pad>",
            "<unk>",
            "<start_of_turn>",
        ]
    ),
    st.characters(exclude_categories=("Cs", "Cc")),
)
TEXT = st.lists(PIECES, min_size=1, max_size=24).map("".join).filter(lambda s: s.strip() != "")


@st.composite
def sentence_and_ends(draw):
    """A sentence and a plausible, non-decreasing token end-offset list (BOS end 0 first)."""
    sentence = draw(TEXT)
    cuts = draw(st.lists(st.integers(0, len(sentence)), min_size=0, max_size=30))
    ends = [0, *sorted(cuts), len(sentence)]
    return sentence, ends


@given(sentence_and_ends())
@settings(max_examples=300, deadline=None)
def test_select_positions_properties(case):
    sentence, ends = case
    last = len(ends) - 1
    assert select_positions(sentence, ends, "token") == list(range(1, last + 1))
    assert select_positions(sentence, ends, "final") == [last]
    words = select_positions(sentence, ends, "word")
    assert words == word_positions_oracle(sentence, ends)
    assert words == sorted(set(words)) and words[0] >= 1 and words[-1] <= last
    assert len(words) <= max(1, len(WORD.findall(sentence)))
    for word in WORD.finditer(sentence):
        # every word is complete in some word fragment, and nothing earlier than needed is taken
        covering = [p for p in words if ends[p] >= word.end()]
        assert covering or words[-1] == last


@given(st.lists(TEXT, min_size=1, max_size=4), st.sampled_from(GRANULARITIES))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_make_fragments_properties(tokenizer, sentences, granularity):
    data = labeled(sentences)
    fragments = make_fragments(data, tokenizer, granularity)
    check_table(fragments, data, tokenizer, granularity)
    if granularity != "word":
        # every sentence has exactly one final fragment, whose text is the whole sentence
        finals = fragments.table[fragments.table["is_final_token"]]
        assert finals["sentence_index"].tolist() == list(range(len(sentences)))
        assert finals["fragment_text"].tolist() == sentences
    else:
        for index, sentence in enumerate(sentences):
            if not sentence[-1].isspace():
                rows = fragments.table[fragments.table["sentence_index"] == index]
                assert rows["is_final_token"].iloc[-1] and rows["fragment_text"].iloc[-1] == sentence


def test_tokens_sha256_follows_the_token_ids_and_positions(demo, tokenizer, model_info):
    token = make_fragments(demo, tokenizer, "token")
    again = make_fragments(demo, load_tokenizer(model_info), "token")
    assert token.tokens_sha256() == again.tokens_sha256()
    assert len(token.tokens_sha256()) == 64
    # another selection of positions, or one token id changed, gives another fingerprint
    assert make_fragments(demo, tokenizer, "word").tokens_sha256() != token.tokens_sha256()
    changed = [ids.copy() for ids in token.token_ids]
    changed[3][2] += 1
    assert type(token)(token.table, changed).tokens_sha256() != token.tokens_sha256()
    # ids moved from one sentence to the next are not the same tokenization
    moved = [ids.copy() for ids in token.token_ids]
    moved[0], moved[1] = moved[0][:-1], np.concatenate([moved[0][-1:], moved[1]])
    assert type(token)(token.table, moved).tokens_sha256() != token.tokens_sha256()
