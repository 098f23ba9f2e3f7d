"""report.html: one self-contained page (provenance, overview, ranked table, examples shaded per token)."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import pandas as pd

from saezarr.analysis.examples import example_key
from saezarr.analysis.headline import Headline
from saezarr.analysis.report.assets import static_text
from saezarr.analysis.report.plots import EMERGENCE_CURVES, emergence_png, null_png, overview_png
from saezarr.analysis.report.summary_card import summary_card

RANKED_ROWS = 200  # the table shows at least this many ranked features (all top-n ones in any case)
LABELS = ("0", "1", "2", "3")
FINAL_FRAGMENTS_NOTE = (
    "Token shading needs a store built with token fragments (saezarr build --fragments token); "
    "this store holds final fragments only, so each sentence shows its activation as a whole."
)


def write_report(
    directory: Path,
    summary: pd.DataFrame,
    ranked: pd.DataFrame,
    examples: dict,
    info: dict,
    plot_memo: Path | None = None,
    tables: dict[str, pd.DataFrame] | None = None,
) -> Path:
    """Write report.html and plots/*.png into directory (plots kept in and reused from plot_memo; tables: the
    `heldout` and `emergence` tables, where made); return the report's path."""
    directory = Path(directory)
    (directory / "plots").mkdir(parents=True, exist_ok=True)
    png = overview_png(summary, plot_memo)
    (directory / "plots" / "overview.png").write_bytes(png)
    entries = sorted(examples.items(), key=lambda item: item[1]["rank"])
    rows = _top_feature_rows(ranked, [entry for _, entry in entries])
    body = [
        _header(info, ranked),
        _provenance(info),
        _overview(summary, png),
        _chance(info, (tables or {}).get("heldout"), directory, plot_memo),
        _emergence(info, (tables or {}).get("emergence"), directory, plot_memo),
        _ranked_table(ranked, {key for key, _ in entries}, max(RANKED_ROWS, len(entries))),
        _feature_sections(entries, rows, str(info.get("pool", ""))),
        _token_traces(getattr(examples, "traces", [])),
    ]
    path = directory / "report.html"
    path.write_text(_page(info, "\n".join(body)), encoding="utf-8")
    return path


# ---------------------------------------------------------------- formatting helpers


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 3) -> str:
    """A number for a table cell: fixed decimals, NaN shown as a muted dash."""
    if value is None or pd.isna(value):
        return '<span class="muted" title="NaN">–</span>'
    return f"{float(value):.{digits}f}"


def _sortkey(value) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _esc(value)
    return "" if math.isnan(number) else repr(number)


def _l0(value) -> str:
    return f"{float(value):g}"


def _anchor(key: str) -> str:
    return "f-" + re.sub(r"[^\w-]", "_", key)


def _np_link(url, text: str) -> str:
    """`text` linked to its Neuronpedia page, plain where the SAE has none."""
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return f'<a class="ext" href="{_esc(url)}" title="open on Neuronpedia">{text}</a>'
    return f'<span title="no Neuronpedia page published for this SAE">{text}</span>'


# ---------------------------------------------------------------- sections


def _header(info: dict, ranked: pd.DataFrame) -> str:
    """The page's title and its summary card (what beats chance first), then the best feature of the ranking."""
    best = ""
    if len(ranked):
        top = ranked.iloc[0]
        best = (
            f'<p class="sub">Top of the in-sample ranking: <b>{_esc(top.get("config", ""))}</b> feature '
            f"{int(top['feature_id'])} · layer {int(top['layer'])} · L0 {_l0(top['average_l0'])} · score "
            f"{_num(top['interpretability_score'])}</p>"
        )
    return (
        f'<header class="top"><h1>Which SAE features track the concept?</h1>'
        f'<p class="sub">{_esc(info.get("input_file", ""))} · pool <b>{_esc(info.get("pool", ""))}</b> · '
        f"saezarr analyze</p>{summary_card(Headline.from_json(info['headline']))}{best}</header>"
    )


def _provenance(info: dict) -> str:
    thresholds = info.get("thresholds", {})
    counts = info.get("counts", {})
    by_label = counts.get("sentences_by_label", {})
    rows = [
        ("store", f"<code>{_esc(info.get('store', ''))}</code>"),
        ("model", f"<code>{_esc(info.get('model', ''))}</code> @ <code>{_esc(info.get('model_revision', ''))}</code>"),
        ("SAEs", f"<code>{_esc(info.get('sae_repo', ''))}</code> @ <code>{_esc(info.get('sae_revision', ''))}</code>"),
        ("input", f"<code>{_esc(info.get('input_file', ''))}</code>"),
        ("input sha256", f'<code class="hash">{_esc(info.get("input_sha256", ""))}</code>'),
        ("fragments", _esc(info.get("fragments", ""))),
        ("pool", _esc(info.get("pool", ""))),
        (
            "filter",
            (
                f"pearson ≥ {_esc(thresholds.get('min_pearson', ''))}, monotonic means, "
                f"tpr ≥ {_esc(thresholds.get('min_tpr', ''))}, fpr ≤ {_esc(thresholds.get('max_fpr', ''))}"
            ),
        ),
        (
            "top-n",
            (f"{_esc(info.get('top_n', ''))} features, {_esc(info.get('examples_per_label', ''))} examples per label"),
        ),
        (
            "counts",
            f"{_esc(counts.get('configs', ''))} SAEs, {_esc(counts.get('features', ''))} features, "
            f"{_esc(counts.get('passing', ''))} passing; {_esc(counts.get('sentences', ''))} sentences ("
            + ", ".join(f"label {_esc(k)}: {_esc(v)}" for k, v in by_label.items())
            + ")",
        ),
        ("score", "0.4·pearson + 0.3·separation + 0.3·(tpr − fpr)"),
        ("saezarr", _esc(info.get("saezarr_version", ""))),
    ]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    notes = "".join(f"<li>{_esc(note)}</li>" for note in info.get("notes", []))
    notes_box = f'<div class="notes"><b>Notes</b><ul>{notes}</ul></div>' if notes else ""
    return f'<section id="provenance"><h2>Provenance</h2>{notes_box}<table class="kv">{table}</table></section>'


def _overview(summary: pd.DataFrame, png: bytes) -> str:
    image = base64.b64encode(png).decode("ascii")
    rows = "".join(_overview_row(row) for row in summary.itertuples(index=False))
    names: tuple[str, ...] = ("SAE", "layer", "L0", "best score", "best feature", "passing")
    if "chance_pearson" in summary:
        names += ("best pearson, chance (95th pct)",)
    head = "".join(f"<th>{h}</th>" for h in names)
    return (
        f'<section id="overview"><h2>Overview</h2>'
        f'<p class="hint">One mark per SAE at its layer and average L0, coloured by the best interpretability '
        f"score of any of its features (whether or not it passes the filter); grey crosses have no score (NaN). "
        f"The table below counts each SAE's features passing the filter.</p>"
        f'<img class="plot" alt="best interpretability score per SAE, layer by average L0" '
        f'src="data:image/png;base64,{image}">'
        f"<details><summary>Per-SAE table ({len(summary)} SAEs)</summary>"
        f'<table class="data sortable"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></details>'
        f"</section>"
    )


def _overview_row(row) -> str:
    best = "" if pd.isna(row.best_feature) else _np_link(row.best_url, _esc(int(row.best_feature)))
    return (
        f"<tr><td>{_esc(row.config)}</td><td class=n>{int(row.layer)}</td>"
        f'<td class=n data-v="{_sortkey(row.average_l0)}">{_l0(row.average_l0)}</td>'
        f'<td class=n data-v="{_sortkey(row.best_score)}">{_num(row.best_score)}</td>'
        f"<td class=n>{best}</td><td class=n>{int(row.passing)}</td>"
        + (f"<td class=n>{_num(row.chance_pearson)}</td>" if hasattr(row, "chance_pearson") else "")
        + "</tr>"
    )


RANKED_COLUMNS = (
    ("interpretability_score", "score"),
    ("pearson_corr", "pearson"),
    ("spearman_corr", "spearman"),
    ("separation_score", "separation"),
    ("tpr", "tpr"),
    ("fpr", "fpr"),
    ("mean_label_0", "mean 0"),
    ("mean_label_1", "mean 1"),
    ("mean_label_2", "mean 2"),
    ("mean_label_3", "mean 3"),
)
# shown after RANKED_COLUMNS where the analysis made them
HONEST_COLUMNS = (
    ("p_value_fwer", "p (FWER)"),
    ("heldout_pearson", "held-out pearson"),
    ("folds_in_top_n", "folds in top-n"),
)


def _ranked_table(ranked: pd.DataFrame, sections: set[str], limit: int) -> str:
    if not len(ranked):
        return (
            '<section id="ranked"><h2>Ranked features</h2><p class="empty">No feature passes the filter. '
            "Loosen the thresholds (--min-pearson, --min-tpr, --max-fpr) to see candidates.</p></section>"
        )
    shown = ranked.head(limit)
    columns = RANKED_COLUMNS + tuple(column for column in HONEST_COLUMNS if column[0] in ranked)
    head = (
        "".join(f"<th>{h}</th>" for h in ("#", "SAE", "L0", "feature"))
        + "".join(f"<th>{label}</th>" for _, label in columns)
        + "<th>means 0–3</th>"
    )
    rows = "".join(_ranked_row(row, sections, columns) for row in shown.to_dict("records"))
    more = (
        f'<p class="hint">Showing the top {len(shown):,} of {len(ranked):,} passing features; '
        f"all of them are in ranked_features.csv.</p>"
        if len(shown) < len(ranked)
        else ""
    )
    return (
        f'<section id="ranked"><h2>Ranked features (in-sample)</h2><p class="hint">Features passing the filter, '
        f"by interpretability score, ranked and scored on the same sentences (the legacy ranking): see "
        f'<a href="#chance">chance and held-out validation</a> for how far to trust it. The feature id opens its '
        f"Neuronpedia page; the rank jumps to its examples below. Click a column to sort.</p>"
        f'<div class="scroll"><table class="data sortable"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
        f"</table></div>{more}</section>"
    )


def _ranked_row(row: dict, sections: set[str], columns=RANKED_COLUMNS) -> str:
    key = example_key(row.get("config", ""), row["layer"], row["average_l0"], row["feature_id"])
    rank = _esc(int(row["rank"]))
    rank = f'<a href="#{_anchor(key)}">{rank}</a>' if key in sections else rank
    config = row.get("config", f"layer_{int(row['layer'])}")
    cells = [
        f'<td class=n data-v="{int(row["rank"])}">{rank}</td>',
        f"<td>{_esc(config)}</td>",
        f'<td class=n data-v="{_sortkey(row["average_l0"])}">{_l0(row["average_l0"])}</td>',
        (
            f'<td class=n data-v="{int(row["feature_id"])}">'
            f"{_np_link(row.get('neuronpedia_url'), _esc(int(row['feature_id'])))}</td>"
        ),
    ]
    cells += [
        f'<td class=n data-v="{_sortkey(row[c])}">{_num(row[c], 0 if c == "folds_in_top_n" else 3)}</td>'
        for c, _ in columns
    ]
    cells.append(f"<td>{_sparkline([row[f'mean_label_{label}'] for label in LABELS])}</td>")
    return "<tr>" + "".join(cells) + "</tr>"


def _sparkline(means: list[float]) -> str:
    top = max([m for m in means if not pd.isna(m) and m > 0], default=0.0)
    bars = "".join(f'<i style="height:{_share(m, top) * 100:.0f}%"></i>' for m in means)
    return f'<span class="spark" title="{_esc(" / ".join(f"{m:.3g}" for m in means))}">{bars}</span>'


def _share(value: float, top: float) -> float:
    """value / top in [0, 1]; 0 for NaN, negative values or a zero top."""
    if top <= 0 or pd.isna(value):
        return 0.0
    return min(max(float(value) / top, 0.0), 1.0)


# ---------------------------------------------------------------- chance, held-out validation, emergence


def _image(directory: Path, name: str, png: bytes, alt: str) -> str:
    (directory / "plots" / f"{name}.png").write_bytes(png)
    return f'<img class="plot" alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _chance(info: dict, heldout: pd.DataFrame | None, directory: Path, memo: Path | None) -> str:
    permutation = info.get("permutation")
    parts = ['<section id="chance"><h2>Chance and held-out validation</h2>']
    if permutation is None:
        parts.append(
            '<p class="verdict">No permutation null was computed (--permutations 0): every score in this report is '
            "in-sample, with no chance baseline.</p>"
        )
    else:
        parts.append(_verdict(Headline.from_json(info["headline"])))
        parts.append(_image(directory, "null", null_png(permutation, memo), "best score under permuted labels"))
    parts.append(_heldout(info.get("heldout"), heldout))
    parts.append("</section>")
    return "".join(parts)


def _verdict(headline: Headline) -> str:
    n, significant = headline.permutations, headline.beat_chance
    best, chance = headline.best_pearson, headline.chance_pearson
    scores = (
        f"The best Pearson correlation of any feature is {_num(best)}; under {n} random permutations of the labels "
        f"the best feature reaches {_num(chance)} or less 95% of the time (the chance level)."
    )
    method = (
        "p_value_fwer = (1 + permutations whose best feature scores at least as high) / (1 + permutations): a "
        "family-wise p-value over every analysed feature."
    )
    if not significant:
        return (
            f'<p class="verdict none"><b>No feature beats chance.</b> {scores} With this many features, a score this '
            "high is what unrelated labels give: the in-sample ranking below is not evidence that any feature tracks "
            f'the concept.</p><p class="hint">{method}</p>'
        )
    return (
        f'<p class="verdict some"><b>{significant:,} feature{"s" if significant != 1 else ""} beat'
        f"{'' if significant != 1 else 's'} chance</b> (p_value_fwer ≤ {headline.alpha:g}). {scores}</p>"
        f'<p class="hint">{method}</p>'
    )


def _heldout(summary: dict | None, table: pd.DataFrame | None) -> str:
    if summary is None:
        return '<p class="hint">No held-out validation (--folds 0).</p>'
    folds = summary["folds"]
    rows = "".join(
        f"<tr><td class=n>{f['fold']}</td><td class=n>{f['chosen']}</td><td class=n>{_num(f['top1_heldout_pearson'])}"
        f"</td><td class=n>{_num(f['mean_heldout_pearson'])}</td><td class=n>{_num(f['mean_heldout_auroc_3v0'])}</td></tr>"
        for f in summary["per_fold"]
    )
    head = "".join(f"<th>{h}</th>" for h in ("fold", "chosen", "top-1 pearson", "mean pearson", "mean AUROC 3v0"))
    features = ""
    if not sum(f["chosen"] for f in summary["per_fold"]):
        features = '<p class="empty">No feature passes the filter on the training folds of any fold.</p>'
    if table is not None and len(table):
        shown = table.head(20)
        cells = "".join(
            f"<tr><td>{_esc(r.config)}</td><td class=n>{int(r.feature_id)}</td><td class=n>{int(r.folds_in_top_n)}</td>"
            f"<td class=n>{_num(r.heldout_pearson)}</td><td class=n>{_num(r.heldout_auroc_3v0)}</td>"
            f"<td class=n>{_num(r.insample_pearson_corr)}</td><td class=n>{_num(r.insample_interpretability_score)}</td></tr>"
            for r in shown.itertuples(index=False)
        )
        fhead = "".join(
            f"<th>{h}</th>"
            for h in (
                "SAE",
                "feature",
                "folds",
                "held-out pearson",
                "held-out AUROC",
                "in-sample pearson",
                "in-sample score",
            )
        )
        features = (
            f'<p class="hint">The features most often among a fold\'s top features ({len(table):,} in all, in '
            f'heldout.csv):</p><div class=scroll><table class="data sortable"><thead><tr>{fhead}</tr></thead>'
            f"<tbody>{cells}</tbody></table></div>"
        )
    return (
        f"<h3>Held-out validation ({folds} folds)</h3>"
        f'<p class="hint">In each of {folds} folds stratified by label, the top features are chosen on the other '
        f"folds with the same filter and score, and scored on the held-out sentences only. Held-out pearson across "
        f"the folds' top features: {_num(summary['mean_heldout_pearson'])} (AUROC 3v0 "
        f"{_num(summary['mean_heldout_auroc_3v0'])}); near 0 means the in-sample ranking does not carry over. The "
        f"held-out score of the best feature of each layer, chosen inside each fold, is the first curve of "
        '<a href="#emergence">where the concept emerges</a>.</p>'
        f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{features}'
    )


def _emergence(info: dict, table: pd.DataFrame | None, directory: Path, memo: Path | None) -> str:
    if table is None or not len(table):
        return ""
    png = emergence_png(table, memo)
    names = [(curve, label) for curve, (label, _) in EMERGENCE_CURVES.items()]
    sites = "site" in table  # SAEs of several sites: a row per layer and site
    head = "<th>layer</th>" + ("<th>site</th>" if sites else "")
    head += "".join(f"<th>{_esc(label)}</th>" for _, label in names) + "<th>chance</th>"
    rows = "".join(
        f"<tr><td class=n>{int(r['layer'])}</td>"
        + (f"<td>{_esc(r['site'])}</td>" if sites else "")
        + "".join(f"<td class=n>{_num(r[f'{curve}_heldout_spearman'])}</td>" for curve, _ in names)
        + f"<td class=n>{_num(r['chance_spearman'])}</td></tr>"
        for r in table.to_dict("records")
    )
    residual = table["probe_heldout_spearman"].notna().any()
    note = (
        ""
        if residual
        else " The store holds no residual stream, so there is no residual probe (build it with residuals to add one)."
    )
    return (
        '<section id="emergence"><h2>Where the concept emerges</h2>'
        f'<p class="hint">Per layer, out-of-fold Spearman ρ with the label of the best single SAE feature, of ridge '
        f"probes on the layer's top-k SAE features and on its residual stream; everything chosen on the training "
        f"folds only. The grey band is chance: the 95th percentile of the same procedure under permuted labels.{note} "
        f"All values, with AUROC 3v0, in emergence.csv.</p>"
        + _image(directory, "emergence", png, "held-out Spearman by layer")
        + f'<details><summary>Per-layer table</summary><table class="data sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></details></section>"
    )


# ---------------------------------------------------------------- per-feature sections


def _top_feature_rows(ranked: pd.DataFrame, entries: list[dict]) -> dict[tuple[str, int], dict]:
    """(config, feature_id) → the ranked row (all metrics) of each top feature."""
    if not entries or "config" not in ranked:
        return {}
    ids = {int(entry["feature_id"]) for entry in entries}
    rows = ranked[ranked["feature_id"].isin(ids)]
    wanted = {(str(entry.get("config")), int(entry["feature_id"])) for entry in entries}
    return {
        key: row for row in rows.to_dict("records") if (key := (str(row["config"]), int(row["feature_id"]))) in wanted
    }


def _feature_sections(entries: list[tuple[str, dict]], rows: dict, pool: str) -> str:
    if not entries:
        return ""
    shading = all(
        ex.get("tokens") is not None for _, e in entries for exs in e["examples_by_label"].values() for ex in exs
    )
    note = "" if shading else f'<p class="notice">{_esc(FINAL_FRAGMENTS_NOTE)}</p>'
    cards = "".join(
        _feature_card(key, entry, rows.get((str(entry.get("config")), int(entry["feature_id"])), {}), pool)
        for key, entry in entries
    )
    return (
        f'<section id="features"><h2>Top features</h2><p class="hint">Mean activation by concept-strength label, '
        f"then each label's top example sentences; every token is shaded by this feature's activation at it "
        f"(hover for the value).</p>{note}{cards}</section>"
    )


def _feature_card(key: str, entry: dict, metrics: dict, pool: str) -> str:
    config = entry.get("config", f"layer {int(entry['layer'])}")
    title = f"#{int(entry['rank'])} · {_esc(config)} · feature {int(entry['feature_id'])}"
    link = _np_link(
        entry.get("neuronpedia_url"),
        "Neuronpedia" if entry.get("neuronpedia_url") else "no Neuronpedia page for this SAE",
    )
    stats = [
        ("score", entry.get("interpretability_score")),
        ("pearson", entry.get("pearson_correlation")),
        ("spearman", metrics.get("spearman_corr")),
        ("separation", metrics.get("separation_score")),
        ("tpr", entry.get("tpr")),
        ("fpr", entry.get("fpr")),
        ("AUROC 3v0", metrics.get("auroc_3v0")),
        ("Cohen's d 3v0", metrics.get("cohens_d_3v0")),
    ]
    stats_html = "".join(f"<span><em>{name}</em> {_num(value)}</span>" for name, value in stats if value is not None)
    scale = _scale(entry, metrics)
    means = [metrics.get(f"mean_label_{label}") for label in LABELS]
    return (
        f'<article class="feature" id="{_anchor(key)}"><header><h3>{title}</h3>'
        f'<span class="meta">layer {int(entry["layer"])} · L0 {_l0(entry["average_l0"])} · {link}</span>'
        f'<a class="up" href="#ranked">↑ table</a></header>'
        f'<div class="stats">{stats_html}</div><div class="body">{_mean_bars(means, metrics)}'
        f'<div class="examples">{_examples(entry["examples_by_label"], scale, pool)}</div></div></article>'
    )


def _scale(entry: dict, metrics: dict) -> float:
    """The feature's max activation: the 100% of its token shading."""
    values = [metrics.get("max_activation") or 0.0]
    for examples in entry["examples_by_label"].values():
        for example in examples:
            values.append(example["activation"])
            values += [token["activation"] for token in example.get("tokens") or []]
    return max([float(v) for v in values if not pd.isna(v)], default=0.0)


def _mean_bars(means: list, metrics: dict) -> str:
    """Mean activation by label as a small inline SVG bar chart."""
    if all(m is None for m in means):
        return ""
    values = [float("nan") if m is None else float(m) for m in means]
    top = max([v for v in values if not math.isnan(v) and v > 0], default=0.0)
    width, height, bar, gap = 200, 120, 34, 14
    parts = []
    for i, (label, value) in enumerate(zip(LABELS, values)):
        h = _share(value, top) * 80
        x = 10 + i * (bar + gap)
        active = metrics.get(f"frac_active_label_{label}")
        tip = f"label {label}: mean {value:.4g}" + ("" if active is None else f", active in {active:.0%}")
        parts.append(
            f'<g><title>{_esc(tip)}</title><rect x="{x}" y="{95 - h:.1f}" width="{bar}" height="{h:.1f}" '
            f'class="l{label}"/><text x="{x + bar / 2}" y="{90 - h:.1f}" class="v">{value:.3g}</text>'
            f'<text x="{x + bar / 2}" y="112" class="k">{label}</text></g>'
        )
    return (
        f'<figure class="means"><svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="mean activation by label">{"".join(parts)}</svg>'
        f"<figcaption>mean activation by label</figcaption></figure>"
    )


def _examples(by_label: dict, scale: float, pool: str) -> str:
    blocks = []
    for label in reversed(LABELS):
        examples = by_label.get(label, [])
        items = "".join(_example(example, scale, pool) for example in examples) or '<li class="muted">no sentences</li>'
        blocks.append(
            f'<div class="label"><h4><span class="chip l{label}">label {label}</span></h4><ol>{items}</ol></div>'
        )
    return "".join(blocks)


def _example(example: dict, scale: float, pool: str) -> str:
    activation = float(example["activation"])
    badge = (
        f'<span class="act" style="--a:{_alpha(activation, scale)}" title="sentence activation ({_esc(pool)})">'
        f"{activation:.3g}</span>"
    )
    tokens = example.get("tokens")
    text = _esc(example["sentence"]) if tokens is None else _shaded(example["sentence"], tokens, scale)
    return f'<li>{badge}<span class="sent">{text}</span></li>'


def _shaded(sentence: str, tokens: list[dict], scale: float) -> str:
    """The sentence with one span per token, its background alpha proportional to the activation there."""
    joined = "".join(token["text"] for token in tokens)
    start = sentence.find(joined) if joined else -1
    before, after = (sentence[:start], sentence[start + len(joined) :]) if start >= 0 else ("", "")
    spans = "".join(
        f'<span class="t" style="--a:{_alpha(token["activation"], scale)}" '
        f'title="{float(token["activation"]):.4g}">{_esc(token["text"])}</span>'
        for token in tokens
    )
    return f"{_esc(before)}{spans}{_esc(after)}"


def _alpha(activation: float, scale: float) -> str:
    return f"{_share(activation, scale):.4f}"


# ---------------------------------------------------------------- token traces

TRACE_COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04")


def _token_traces(traces: list[dict]) -> str:
    """The token-traces section: per example sentence, the top features' activations token by token."""
    if not traces:
        return ""
    figures = "".join(_trace_figure(trace) for trace in traces)
    return (
        '<section id="traces"><h2>Token traces</h2><p class="hint">The top features through the #1 feature\'s top '
        "example sentence of each label: one line per feature, its activation at each token (hover a point for the "
        "value). From Python: <code>saezarr.token_traces(ds, sentence_index, config, features)</code>.</p>"
        f"{figures}</section>"
    )


def _trace_figure(trace: dict) -> str:
    """One sentence's traces as an inline SVG line chart with the tokens along the x axis."""
    tokens, features = trace["tokens"], trace["features"]
    step, left, top_pad, plot_h = 46, 44, 12, 150
    width, height = left + step * max(len(tokens), 1) + 20, top_pad + plot_h + 80
    peak = max([v for f in features for v in f["values"] if not math.isnan(v)] + [0.0])
    scale = peak if peak > 0 else 1.0

    def xy(i: int, value: float) -> str:
        return f"{left + step * i + step / 2:.1f},{top_pad + plot_h - plot_h * _share(value, scale):.1f}"

    parts = [
        f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - 10}" y2="{top_pad + plot_h}" class="axis"/>',
        f'<text x="{left - 6}" y="{top_pad + 4}" class="yl">{peak:.3g}</text>',
        f'<text x="{left - 6}" y="{top_pad + plot_h}" class="yl">0</text>',
    ]
    for i, token in enumerate(tokens):
        x = left + step * i + step / 2
        parts.append(
            f'<text x="{x:.1f}" y="{top_pad + plot_h + 14}" class="tok" transform="rotate(40 {x:.1f} '
            f'{top_pad + plot_h + 14})">{_esc(token.strip() or "␣")}</text>'
        )
    legend = []
    for j, feature in enumerate(features):
        colour = TRACE_COLOURS[j % len(TRACE_COLOURS)]
        points = " ".join(xy(i, v) for i, v in enumerate(feature["values"]))
        dots = "".join(
            f'<circle cx="{xy(i, v).split(",")[0]}" cy="{xy(i, v).split(",")[1]}" r="2.5" fill="{colour}">'
            f"<title>{_esc(feature['name'])} · {_esc(tokens[i])}: {v:.4g}</title></circle>"
            for i, v in enumerate(feature["values"])
        )
        parts.append(f'<g><polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.6"/>{dots}</g>')
        legend.append(f'<span><i style="background:{colour}"></i>{_esc(feature["name"])}</span>')
    return (
        f'<figure class="trace"><figcaption><span class="chip l{int(trace["label"])}">label {int(trace["label"])}'
        f"</span> sentence {int(trace['sentence_index'])}: {_esc(trace['sentence'])}</figcaption>"
        f'<div class="scroll"><svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="token traces">{"".join(parts)}</svg></div><div class="legend">{"".join(legend)}</div></figure>'
    )


# ---------------------------------------------------------------- the page


def _page(info: dict, body: str) -> str:
    title = f"saezarr analyze · {info.get('input_file', '')}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{static_text('report.css')}</style></head>\n<body><main>\n{body}\n</main>"
        f"<script>{static_text('sort.js')}</script></body></html>\n"
    )
