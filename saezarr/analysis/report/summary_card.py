"""The summary card: an analysis's headline record as one block of HTML carrying its own style, at the top of
report.html and wherever else HTML is shown (a notebook)."""

from __future__ import annotations

import re
from html import escape

from saezarr.analysis.headline import Headline
from saezarr.analysis.report.assets import static_text

_LEAD = re.compile(r"[^(;]*")  # the sentence's first clause, up to its first parenthesis or semicolon


def summary_card(headline: Headline) -> str:
    """The headline as HTML: its sentence, leading clause in bold, then its counts and what chance means."""
    text = headline.text()
    lead = _LEAD.match(text).group(0).rstrip()  # type: ignore[union-attr]  # matches any text, if only ""
    sentence = f"<b>{escape(lead[:1].upper() + lead[1:])}</b>{escape(text[len(lead) :])}."
    if headline.beat_chance is None:
        state, beat = "untested", "not tested"
    else:
        state, beat = ("some" if headline.beat_chance else "none"), f"{headline.beat_chance:,} of {headline.features:,}"
    facts = [("beat chance", beat)]
    if headline.tested:
        facts.append(("best Pearson · chance", f"{headline.best_pearson:.3f} · {headline.chance_pearson:.3f}"))
    facts += [
        ("pass in-sample filter", f"{headline.passing:,}"),
        ("SAEs", f"{headline.configs:,}"),
        ("sentences", f"{headline.sentences:,}"),
    ]
    strip = "".join(f'<div class="szc-fact"><span>{escape(k)}</span><b>{escape(v)}</b></div>' for k, v in facts)
    hint = (
        f'<p class="szc-hint">A feature beats chance when its family-wise p-value (p_value_fwer, the max-statistic '
        f"permutation test over every analysed feature, {headline.permutations:,} permutations) is at most "
        f"{headline.alpha:g}; chance is the {100 * (1 - headline.alpha):g}th percentile of the best Pearson "
        f"correlation of any feature under permuted labels. The in-sample filter ranks on the same sentences it "
        f"chose on.</p>"
        if headline.tested
        else ""
    )
    return (
        f'<style>{static_text("summary_card.css")}</style><div class="szc szc-{state}">'
        f'<p class="szc-verdict">{sentence}</p><div class="szc-facts">{strip}</div>{hint}</div>'
    )
