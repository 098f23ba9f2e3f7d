"""compare's report.html: one self-contained page in analyze's report style (concepts, specific vs shared features,
emergence by concept)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd

from saezarr.analysis.report.assets import static_text
from saezarr.analysis.report.page import _esc, _num, _sortkey
from saezarr.analysis.report.plots import concepts_png, main_site

SHOWN_FEATURES = 100  # rows of the specific/shared table in the page (all of them in concept_features.csv)


def write_compare_report(directory: Path, analyses: list, counted: pd.DataFrame, emergence, info: dict) -> Path:
    """Write report.html (and plots/emergence.png) into directory; return the report's path."""
    concepts = [a.concept for a in analyses]
    body = [
        _header(info, concepts),
        _concepts(analyses, info),
        _features(counted, concepts),
        _emergence(directory, emergence),
    ]
    path = directory / "report.html"
    title = f"saezarr compare · {', '.join(concepts)}"
    path.write_text(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_esc(title)}</title>'
        f"<style>{static_text('report.css')}</style></head>\n<body><main>\n{''.join(body)}\n</main><script>{static_text('sort.js')}</script></body></html>\n",
        encoding="utf-8",
    )
    return path


def _header(info: dict, concepts: list[str]) -> str:
    facts = [
        ("concepts", len(concepts)),
        ("features", f"{info['features']:,}"),
        ("specific", f"{info['specific']:,}"),
        ("shared", f"{info['shared']:,}"),
    ]
    strip = "".join(f'<div class="fact"><span>{_esc(k)}</span><b>{_esc(v)}</b></div>' for k, v in facts)
    return (
        f'<header class="top"><h1>Which features are specific to one concept?</h1>'
        f'<p class="sub">{_esc(", ".join(concepts))} · model <code>{_esc(info.get("model"))}</code> · SAEs '
        f'<code>{_esc(info.get("sae_repo"))}</code> · saezarr compare</p><div class="facts">{strip}</div></header>'
    )


def _concepts(analyses: list, info: dict) -> str:
    rows = "".join(
        f"<tr><td>{_esc(c['concept'])}</td><td><code>{_esc(c['folder'])}</code></td><td>{_esc(c['pool'])}</td>"
        f"<td class=n>{_esc('–' if c['significant_features'] is None else c['significant_features'])}</td>"
        f"<td class=n>{c['counted']}</td></tr>"
        for c in info["concepts"]
    )
    head = "".join(f"<th>{h}</th>" for h in ("concept", "analysis", "pool", "beat chance", "counted here"))
    return (
        '<section id="concepts"><h2>Concepts</h2><p class="hint">A feature counts for a concept when its '
        "family-wise p-value there is at most 0.05 (in an analysis without permutations: when it passes that "
        "analysis's filter). Scores are Pearson correlations with each concept's labels.</p>"
        f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></section>'
    )


def _features(counted: pd.DataFrame, concepts: list[str]) -> str:
    if not len(counted):
        return (
            '<section id="features"><h2>Specific and shared features</h2><p class="empty">No feature counts for any '
            "concept: none beats chance in any analysis.</p></section>"
        )
    shown = counted.head(SHOWN_FEATURES)
    head = "".join(f"<th>{h}</th>" for h in ("kind", "SAE", "feature", "counts for", "specificity")) + "".join(
        f"<th>{_esc(c)}</th>" for c in concepts
    )
    rows = "".join(
        f"<tr><td>{_esc(r['kind'])}</td><td>{_esc(r['config'])}</td><td class=n>{int(r['feature_id'])}</td>"
        f"<td>{_esc(r['concepts'].replace(';', ', '))}</td>"
        f'<td class=n data-v="{_sortkey(r["specificity"])}">{_num(r["specificity"])}</td>'
        + "".join(
            f'<td class=n data-v="{_sortkey(r[f"pearson_{c}"])}">{_num(r[f"pearson_{c}"])}</td>' for c in concepts
        )
        + "</tr>"
        for r in shown.to_dict("records")
    )
    more = (
        f'<p class="hint">Showing {len(shown):,} of {len(counted):,}; all in concept_features.csv.</p>'
        if len(shown) < len(counted)
        else ""
    )
    return (
        '<section id="features"><h2>Specific and shared features</h2><p class="hint">Specific: counts for one '
        "concept only. Shared: counts for several (an “aggression” feature that also counts for negativity is "
        "shared). Specificity: the score for the feature's best concept minus its best score among the others.</p>"
        f'<div class="scroll"><table class="data sortable"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
        f"</table></div>{more}</section>"
    )


def _emergence(directory: Path, emergence: pd.DataFrame | None) -> str:
    if emergence is None or not len(emergence):
        return ""
    emergence, site = main_site(emergence)  # one site's rows: an attn_out SAE at layer 5 is no resid_post SAE there
    curve = "probe" if emergence["probe_heldout_spearman"].notna().any() else "sparse_probe_k8"
    png = concepts_png(emergence, curve)
    (directory / "plots").mkdir(exist_ok=True)
    (directory / "plots" / "emergence.png").write_bytes(png)
    grid = emergence.pivot_table(index="concept", columns="layer", values=f"{curve}_heldout_spearman", sort=False)
    head = "<th>concept</th>" + "".join(f"<th>{int(layer)}</th>" for layer in grid.columns)
    rows = "".join(
        f"<tr><td>{_esc(concept)}</td>" + "".join(f"<td class=n>{_num(v)}</td>" for v in np.asarray(values)) + "</tr>"
        for concept, values in grid.iterrows()
    )
    image = base64.b64encode(png).decode("ascii")
    return (
        '<section id="emergence"><h2>Emergence by concept</h2><p class="hint">Per concept and layer, the out-of-fold '
        f"Spearman ρ of the {_esc(curve.replace('_', ' '))} (from each analysis's emergence.csv"
        f"{f', the SAEs of {_esc(site)}' if site else ''}), beside its chance level.</p>"
        f'<img class="plot" alt="held-out Spearman by layer and concept" src="data:image/png;base64,{image}">'
        f'<div class="scroll"><table class="data"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
        "</section>"
    )
