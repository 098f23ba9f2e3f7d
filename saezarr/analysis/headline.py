"""analyze's answer in one record: how many features beat chance under the permutation null, the best real score
beside the chance level, and how many pass the in-sample filter. The summary line, the report's summary card and
analysis.json's `headline` are all read from this one record."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from saezarr.analysis.stats.permutation import ALPHA


@dataclass(frozen=True)
class Headline:
    """What an analysis found, first what survives chance. `beat_chance` counts the features whose p_value_fwer is
    at most `alpha` (None: no permutation null); `chance_pearson` is the (1 - alpha) quantile of the best Pearson
    correlation of any feature under permuted labels (None: no null, or no feature has a score)."""

    configs: int  # SAEs analysed
    features: int  # features analysed, over every SAE
    sentences: int
    passing: int  # features passing the in-sample filter
    permutations: int  # of the null; 0: no null was computed
    alpha: float  # the family-wise error rate
    beat_chance: int | None
    best_pearson: float | None
    chance_pearson: float | None

    @classmethod
    def of(cls, configs: int, features: int, sentences: int, passing: int, permutation: dict | None) -> Headline:
        """The record of an analysis, from its counts and analysis.json's `permutation` part (None: no null)."""
        if permutation is None:
            return cls(configs, features, sentences, passing, 0, ALPHA, None, None, None)
        return cls(
            configs,
            features,
            sentences,
            passing,
            int(permutation["permutations"]),
            float(permutation["alpha"]),
            int(permutation["significant_features"]),
            permutation["best"]["pearson"],
            permutation["chance"]["pearson"],
        )

    @classmethod
    def from_json(cls, data: dict) -> Headline:
        """The record as analysis.json's `headline` holds it."""
        return cls(**{field.name: data[field.name] for field in fields(cls)})

    def to_json(self) -> dict:
        """analysis.json's `headline`: the record's fields, and its sentence as `text`."""
        return {**asdict(self), "text": self.text()}

    @property
    def tested(self) -> bool:
        """Whether any feature was tested against chance: a null was computed and some feature has a score."""
        return self.beat_chance is not None and self.chance_pearson is not None and self.best_pearson is not None

    @property
    def fewest_permutations(self) -> int:
        """The fewest permutations whose smallest p-value, 1 / (1 + N), is at most alpha."""
        return math.ceil(1 / self.alpha) - 1

    def text(self) -> str:
        """The answer in one sentence, leading with what survives chance."""
        if not self.tested:
            untested = (
                "no permutation null was computed (0 permutations), so nothing was tested against chance"
                if self.beat_chance is None
                else "no feature has a Pearson correlation to test against chance"
            )
            return f"{untested}; {self.passing:,} of {self.features:,} features pass the in-sample filter"
        scores = f"FWER {self.alpha:g}; best Pearson {self.best_pearson:.2f}, chance {self.chance_pearson:.2f}"
        if self.permutations < self.fewest_permutations:
            scores += (
                f"; with {self.permutations} permutations no p-value can be <= {self.alpha:g}: use "
                f"{self.fewest_permutations} or more"
            )
        beat = f"{self.beat_chance:,} of {self.features:,} features beat chance"
        return f"{beat} ({scores}); {self.passing:,} pass the in-sample filter"
