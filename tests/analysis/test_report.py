"""report.html: self-contained, links exact, every example token shaded by its activation, data escaped."""

from __future__ import annotations

import base64
import html
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from saezarr.analysis.headline import Headline
from saezarr.analysis.ranking import config_summary
from saezarr.analysis.report.page import FINAL_FRAGMENTS_NOTE, write_report
from saezarr.analysis.tables import ConfigTable, site_kinds
from saezarr.build.pipeline import BuildOptions, build
from saezarr.store.reading import open_store
from saezarr.testing.synthetic import DEMO_CSV

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NEURONPEDIA = "https://www.neuronpedia.org/"
THRESHOLDS = {"min_pearson": 0.2, "min_tpr": 0.3, "max_fpr": 0.2}
RANKED_LEGACY = [
    "rank",
    "layer",
    "average_l0",
    "feature_id",
    "neuronpedia_url",
    "interpretability_score",
    "pearson_corr",
    "spearman_corr",
    "separation_score",
    "tpr",
    "fpr",
    "mean_label_0",
    "mean_label_1",
    "mean_label_2",
    "mean_label_3",
    "monotonic",
]
NASTY = "<bos><script>alert(\"x\")</script> & 'q' </span>"


# ---------------------------------------------------------------- realistic inputs from a real store


def _corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of x with y (NaN for a constant column)."""
    xc, yc = x - x.mean(0), y - y.mean()
    return (xc * yc[:, None]).sum(0) / np.sqrt((xc**2).sum(0) * (yc**2).sum())


def _metrics(values: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Legacy-style metrics per feature of one config's (sentence, feature) activations, plain numpy."""
    x = values.astype(np.float64)
    means = {k: x[labels == k].mean(0) if (labels == k).any() else np.zeros(x.shape[1]) for k in range(4)}
    std = x.std(0)
    constant = std == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        pearson = _corr(x, labels.astype(np.float64))
        spearman = _corr(pd.DataFrame(x).rank().to_numpy(), pd.Series(labels).rank().to_numpy())
        separation = (means[3] - means[0]) / std
        threshold = np.percentile(x[labels == 0], 95, axis=0)
        tpr = (x[labels == 3] > threshold).mean(0)
        fpr = (x[labels == 0] > threshold).mean(0)
        d3, d0 = x[labels == 3], x[labels == 0]
        pooled = np.sqrt(
            ((len(d3) - 1) * d3.var(0, ddof=1) + (len(d0) - 1) * d0.var(0, ddof=1)) / (len(d3) + len(d0) - 2)
        )
        cohens = (d3.mean(0) - d0.mean(0)) / pooled
    auroc = (d3[:, None, :] > d0[None, :, :]).mean((0, 1)) + 0.5 * (d3[:, None, :] == d0[None, :, :]).mean((0, 1))
    score = 0.4 * pearson + 0.3 * separation + 0.3 * (tpr - fpr)
    nan = np.where(constant, np.nan, 1.0)
    out = {
        "pearson_corr": pearson * nan,
        "spearman_corr": spearman * nan,
        "separation_score": separation * nan,
        "threshold": threshold,
        "tpr": tpr * nan,
        "fpr": fpr * nan,
        "interpretability_score": score * nan,
        "frac_active": (x > 0).mean(0),
        "max_activation": x.max(0),
        "auroc_3v0": auroc,
        "cohens_d_3v0": cohens,
    }
    out |= {f"mean_label_{k}": means[k] for k in range(4)}
    out |= {f"frac_active_label_{k}": (x[labels == k] > 0).mean(0) for k in range(4)}
    out["monotonic"] = (means[0] <= means[1]) & (means[1] <= means[2]) & (means[2] <= means[3])
    return out


def _source(layer: int, l0: int) -> str:
    """A Neuronpedia source for the SAEs of even layers, none for the others (the demo's passing features come from
    layers 0, 2 and 5)."""
    return f"gemma-2-2b/{layer}-gemmascope-res-16k__l0-{l0}" if layer % 2 == 0 else ""


def _features(ds, per_sentence: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    frames = []
    for c, config in enumerate(ds["config"].values.tolist()):
        layer, l0 = int(ds["layer"].values[c]), int(ds["average_l0"].values[c])
        frame = pd.DataFrame(_metrics(per_sentence[c], labels))
        passes = (
            (frame["pearson_corr"] >= THRESHOLDS["min_pearson"])
            & frame["monotonic"]
            & (frame["tpr"] >= THRESHOLDS["min_tpr"])
            & (frame["fpr"] <= THRESHOLDS["max_fpr"])
        )
        source = _source(layer, l0)
        frame.insert(0, "feature_id", np.arange(per_sentence.shape[2]))
        frame.insert(0, "average_l0", l0)
        frame.insert(0, "layer", layer)
        frame.insert(0, "config", config)
        frame["passes_filter"] = passes.fillna(False).astype(bool)
        frame["neuronpedia_url"] = [f"{NEURONPEDIA}{source}/{i}" if source else "" for i in frame["feature_id"]]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _ranked(features: pd.DataFrame) -> pd.DataFrame:
    ranked = features[features["passes_filter"]].sort_values(
        "interpretability_score", ascending=False, kind="stable", ignore_index=True
    )
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    rest = [c for c in ranked.columns if c not in RANKED_LEGACY]
    return ranked[RANKED_LEGACY + rest]


def _tokens(ds, acts: np.ndarray, c: int, sentence: int, feature: int) -> list[dict] | None:
    rows = np.flatnonzero(ds["sentence_index"].values == sentence)
    if len(rows) == 1:
        return None
    rows = rows[np.argsort(ds["token_position"].values[rows])]
    texts = ds["fragment_text"].values[rows].tolist()
    return [
        {"text": text[len(previous) :], "activation": float(acts[c, row, feature])}
        for previous, text, row in zip(["", *texts[:-1]], texts, rows)
    ]


def _examples(ds, acts, per_sentence, labels, sentences, ranked, top_n: int = 10, per_label: int = 3) -> dict:
    configs = ds["config"].values.tolist()
    examples = {}
    for row in ranked.head(top_n).to_dict("records"):
        c, feature = configs.index(row["config"]), int(row["feature_id"])
        by_label = {}
        for label in range(4):
            idx = np.flatnonzero(labels == label)
            top = idx[np.argsort(-per_sentence[c, idx, feature], kind="stable")[:per_label]]
            by_label[str(label)] = [
                {
                    "sentence": sentences[s],
                    "activation": float(per_sentence[c, s, feature]),
                    "tokens": _tokens(ds, acts, c, int(s), feature),
                }
                for s in top
            ]
        key = f"layer_{row['layer']}_l0_{float(row['average_l0'])}_feature_{feature}"
        examples[key] = {
            "rank": int(row["rank"]),
            "layer": int(row["layer"]),
            "average_l0": int(row["average_l0"]),
            "feature_id": feature,
            "neuronpedia_url": row["neuronpedia_url"],
            "interpretability_score": float(row["interpretability_score"]),
            "pearson_correlation": float(row["pearson_corr"]),
            "tpr": float(row["tpr"]),
            "fpr": float(row["fpr"]),
            "config": row["config"],
            "examples_by_label": by_label,
        }
    return examples


def _info(ds, store: Path, features: pd.DataFrame, ranked: pd.DataFrame, labels: np.ndarray, shading: bool) -> dict:
    attrs = ds.attrs
    headline = Headline.of(ds.sizes["config"], len(features), len(labels), len(ranked), None)  # no null
    return {
        "store": str(store),
        "saezarr_version": attrs["saezarr_version"],
        "model": attrs["model"],
        "model_revision": attrs["model_revision"],
        "sae_repo": attrs["sae_repo"],
        "sae_revision": attrs["sae_revision"],
        "input_file": attrs["input_file"],
        "input_sha256": attrs["input_sha256"],
        "fragments": attrs["fragments"],
        "pool": "final",
        "thresholds": THRESHOLDS,
        "top_n": 10,
        "examples_per_label": 3,
        "counts": {
            "configs": ds.sizes["config"],
            "features": len(features),
            "sentences": len(labels),
            "sentences_by_label": {str(k): int((labels == k).sum()) for k in range(4)},
            "passing": len(ranked),
        },
        "token_shading": shading,
        "notes": ["Layers 0 and 5 at L0 8 have no Neuronpedia source: their features are not linked."],
        "headline": headline.to_json(),
    }


def summary_of(features: pd.DataFrame) -> pd.DataFrame:
    """The report's per-SAE summary of a features table whose rows are configs x features, config by config."""
    first = features.groupby("config", sort=False).first()
    configs = ConfigTable(
        np.arange(len(first)),
        first.index.to_numpy(dtype=object),
        first["layer"].to_numpy(),
        first["average_l0"].to_numpy(),
        np.array([_source(layer, l0) for layer, l0 in zip(first["layer"], first["average_l0"])]),
        site_kinds(None, len(first)),
    )
    shape = (len(first), -1)
    return config_summary(
        configs,
        features["interpretability_score"].to_numpy().reshape(shape),
        features["passes_filter"].to_numpy().reshape(shape),
    )


def analysis_inputs(store: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    """features, ranked, examples and info as analyze makes them, from the store's final-token activations (the
    report takes `summary_of(features)` in place of features)."""
    ds = open_store(store)
    acts = ds["activations"].values
    final = np.flatnonzero(ds["is_final_token"].values)
    final = final[np.argsort(ds["sentence_index"].values[final])]
    labels = ds["concept_strength_label"].values[final]
    sentences = ds["original_sentence"].values[final].tolist()
    per_sentence = acts[:, final, :]
    features = _features(ds, per_sentence, labels)
    ranked = _ranked(features)
    examples = _examples(ds, acts, per_sentence, labels, sentences, ranked)
    info = _info(ds, store, features, ranked, labels, shading=len(final) < ds.sizes["fragment"])
    return features, ranked, examples, info


@pytest.fixture(scope="module")
def stores(demo_config, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report-stores")
    paths = {}
    for fragments in ("token", "final"):
        paths[fragments] = root / f"{fragments}.zarr"
        build(
            BuildOptions(
                input=DEMO_CSV, output=paths[fragments], config_file=demo_config, fragments=fragments, quiet=True
            )
        )
    return paths


@pytest.fixture(scope="module")
def token_inputs(stores):
    return analysis_inputs(stores["token"])


@pytest.fixture(scope="module")
def token_report(token_inputs, tmp_path_factory) -> tuple[Path, str]:
    features, ranked, examples, info = token_inputs
    path = write_report(tmp_path_factory.mktemp("report"), summary_of(features), ranked, examples, info)
    return path, path.read_text(encoding="utf-8")


# ---------------------------------------------------------------- parsing the page


VOID = frozenset({"meta", "img", "br", "hr", "link", "input", "rect"})


class Page(HTMLParser):
    """Collects attributes of every tag, token spans (with their section) and checks tags nest."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.tokens: list[dict] = []  # {"section", "text", "alpha", "title"}
        self.section = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "article":
            self.section = attrs.get("id")
        if tag == "span" and attrs.get("class") == "t":
            alpha = float(re.fullmatch(r"--a:([0-9.]+)", attrs["style"]).group(1))
            self.tokens.append({"section": self.section, "text": "", "alpha": alpha, "title": attrs["title"]})
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "span" and self.tokens and self.tags[-1][1].get("class") == "t":
            self.tokens[-1]["text"] += data


def _section_id(key: str) -> str:
    return "f-" + re.sub(r"[^\w-]", "_", key)


def _hrefs(page: Page) -> list[str]:
    return [attrs["href"] for tag, attrs in page.tags if "href" in attrs]


# ---------------------------------------------------------------- tests


def test_report_is_self_contained(token_report):
    _path, text = token_report
    page = Page(text)
    assert not page.stack, f"unclosed tags: {page.stack}"
    assert not re.search(r"<script[^>]*\bsrc", text, re.IGNORECASE)
    assert not re.search(r"<link\b", text, re.IGNORECASE)
    assert not re.search(r"@import|url\(", text, re.IGNORECASE)
    for href in _hrefs(page):
        assert href.startswith(("#", NEURONPEDIA)), href
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert images
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(attrs["src"].split(",", 1)[1]).startswith(PNG_MAGIC)
    for tag, attrs in page.tags:
        assert "src" not in attrs or attrs["src"].startswith("data:"), (tag, attrs)


def test_overview_plot_is_saved_and_embedded(token_report):
    path, text = token_report
    png = (path.parent / "plots" / "overview.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in text


def test_provenance_names_the_store_and_its_inputs(token_report, token_inputs):
    _, text = token_report
    info = token_inputs[3]
    for value in (
        info["store"],
        info["model"],
        info["sae_repo"],
        info["input_sha256"],
        info["input_file"],
        info["saezarr_version"],
        info["notes"][0],
    ):
        assert value in text, value
    assert "pool <b>final</b>" in text
    assert f"pearson ≥ {THRESHOLDS['min_pearson']}" in text and f"fpr ≤ {THRESHOLDS['max_fpr']}" in text


def test_every_example_token_is_shaded_in_order_of_its_activation(token_report, token_inputs):
    _, text = token_report
    examples = token_inputs[2]
    assert examples, "the demo store must give passing features to show"
    page = Page(text)
    for key, entry in examples.items():
        shown = [t for t in page.tokens if t["section"] == _section_id(key)]
        expected = [t for label in "3210" for ex in entry["examples_by_label"][label] for t in ex["tokens"]]
        assert [t["text"] for t in shown] == [t["text"] for t in expected]
        activations = np.array([t["activation"] for t in expected])
        alphas = np.array([t["alpha"] for t in shown])
        assert np.array([float(t["title"]) for t in shown]) == pytest.approx(activations, rel=1e-3, abs=1e-6)
        order = np.argsort(activations, kind="stable")
        assert (np.diff(alphas[order]) >= 0).all(), key
        clearly = np.diff(activations[order]) > 1e-3 * activations.max()
        assert (np.diff(alphas[order])[clearly] > 0).all(), key
        assert alphas.max() <= 1 and (alphas[activations <= 0] == 0).all()
    assert len(page.tokens) == sum(
        len(ex["tokens"]) for e in examples.values() for exs in e["examples_by_label"].values() for ex in exs
    )
    assert FINAL_FRAGMENTS_NOTE not in text


def test_links_exactly_for_features_with_a_neuronpedia_page(token_report, token_inputs):
    _, text = token_report
    features, ranked, examples, _ = token_inputs
    assert (ranked["neuronpedia_url"] != "").any() and (ranked["neuronpedia_url"] == "").any(), (
        "the inputs must mix linked and unlinked SAEs"
    )
    table = text[text.index('<section id="ranked">') : text.index('<section id="features">')]
    cells = dict(
        re.findall(
            r'<td class=n data-v="\d+">(?:<a href="#[^"]+">)?(\d+)(?:</a>)?</td><td>[^<]*</td>'
            r'<td class=n data-v="[^"]*">[^<]*</td><td class=n data-v="\d+">(.*?)</td>',
            table,
        )
    )
    assert len(cells) == len(ranked)
    for row in ranked.itertuples():
        link = re.fullmatch(r'<a class="ext" href="([^"]+)"[^>]*>(\d+)</a>', cells[str(row.rank)])
        if row.neuronpedia_url:
            assert link and link.group(1) == row.neuronpedia_url and int(link.group(2)) == row.feature_id
        else:
            assert not link and "<a" not in cells[str(row.rank)] and str(row.feature_id) in cells[str(row.rank)]
    for key, entry in examples.items():
        card = text[text.index(f'<article class="feature" id="{_section_id(key)}"') :]
        card = card[: card.index("</article>")]
        hrefs = re.findall(r'href="(https?://[^"]+)"', card)
        assert hrefs == ([entry["neuronpedia_url"]] if entry["neuronpedia_url"] else [])
    every = set(features["neuronpedia_url"]) - {""}
    assert {h for h in _hrefs(Page(text)) if not h.startswith("#")} <= every


def test_ranked_rows_jump_to_their_sections(token_report, token_inputs):
    _, text = token_report
    examples = token_inputs[2]
    page = Page(text)
    ids = {attrs["id"] for _, attrs in page.tags if "id" in attrs}
    jumps = {h[1:] for h in _hrefs(page) if h.startswith("#f-")}
    sections = {_section_id(key) for key in examples}
    assert jumps == sections and sections <= ids
    ranks = [int(m) for m in re.findall(r'<article class="feature" id="[^"]+"><header><h3>#(\d+)', text)]
    assert ranks == sorted(entry["rank"] for entry in examples.values())


def test_data_is_escaped(token_inputs, tmp_path):
    features, ranked, examples, info = token_inputs
    entry = next(iter(examples.values()))
    example = entry["examples_by_label"]["3"][0]
    nasty = {
        **example,
        "sentence": NASTY + example["sentence"],
        "tokens": [{"text": NASTY, "activation": 0.5}, *example["tokens"]],
    }
    examples = {
        **examples,
        next(iter(examples)): {**entry, "examples_by_label": {**entry["examples_by_label"], "3": [nasty]}},
    }
    info = {**info, "notes": [*info["notes"], "<b>bold</b> & co"], "input_file": "<i>in</i>.csv"}
    text = write_report(tmp_path, summary_of(features), ranked, examples, info).read_text()
    assert "<script>alert" not in text and "<bos>" not in text and "<b>bold" not in text and "<i>in" not in text
    assert "&lt;bos&gt;&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27; &lt;/span&gt;" in text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in text
    page = Page(text)
    assert not page.stack
    assert NASTY in [t["text"] for t in page.tokens]


def test_final_fragment_store_says_shading_needs_token_fragments(stores, tmp_path):
    features, ranked, examples, info = analysis_inputs(stores["final"])
    assert examples and not info["token_shading"]
    assert all(ex["tokens"] is None for e in examples.values() for exs in e["examples_by_label"].values() for ex in exs)
    text = write_report(tmp_path, summary_of(features), ranked, examples, info).read_text()
    assert text.count("--fragments token") == 1
    assert FINAL_FRAGMENTS_NOTE in text
    page = Page(text)
    assert not page.tokens
    for entry in examples.values():
        for ex in entry["examples_by_label"]["3"]:
            assert f'<span class="sent">{html.escape(ex["sentence"])}</span>' in text
            assert f'title="sentence activation (final)">{ex["activation"]:.3g}</span>' in text


def test_nothing_passing_and_nan_scores_still_give_a_report(token_inputs, tmp_path):
    features, ranked, _, info = token_inputs
    layer0 = features["layer"] == 0
    features = features.assign(
        interpretability_score=features["interpretability_score"].where(~layer0), passes_filter=False
    )
    info = {**info, "counts": {**info["counts"], "passing": 0}}
    path = write_report(tmp_path, summary_of(features), ranked.iloc[:0], {}, info)
    text = path.read_text()
    assert "No feature passes the filter" in text
    assert (tmp_path / "plots" / "overview.png").read_bytes().startswith(PNG_MAGIC)
    assert not Page(text).stack
