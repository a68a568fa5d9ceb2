"""Statistics of a comparison over seeds: mean ± std, Student-t intervals, paired tests.

Pure functions on lists of numbers, checked on hand-computable values in
``tests/test_compare.py``.  The paired tests compare two strategies run on the same
seeds — with fedsim's seeding the same seed means the same partition, the same initial
model and the same client sampling — so the per-seed difference removes the variance
that the seed causes in both (Student, "The probable error of a mean", 1908; Wilcoxon,
"Individual comparisons by ranking methods", 1945).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Confidence level of every interval fedsim reports.
LEVEL = 0.95


def higher_is_better(metric: str) -> bool:
    """Losses are minimised, everything else is maximised."""
    return "loss" not in metric.rsplit("/", 1)[-1]


def finite(values: Sequence[float]) -> np.ndarray:
    return np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; NaN for fewer than two values) and count of finite values."""
    v = finite(values)
    if v.size == 0:
        return math.nan, math.nan, 0
    std = float(np.std(v, ddof=1)) if v.size >= 2 else math.nan
    return float(np.mean(v)), std, int(v.size)


def t_halfwidth(std: float, n: int, level: float = LEVEL) -> float:
    """Half-width of the two-sided Student-t interval of a mean: ``t_{(1+level)/2, n-1}
    * std / sqrt(n)``; NaN for fewer than two values or an undefined std."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    from scipy.stats import t

    return float(t.ppf((1 + level) / 2, n - 1) * std / math.sqrt(n))


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """The two-sided Student-t confidence interval of the mean of the finite values."""
    mean, std, n = mean_std(values)
    half = t_halfwidth(std, n, level)
    return mean - half, mean + half


@dataclass(frozen=True)
class PairedTest:
    """A strategy against the baseline on the same seeds; ``diff`` = strategy - baseline."""

    n: int  # pairs (seeds both have)
    mean_diff: float
    ci_low: float
    ci_high: float
    t_p: float  # two-sided paired t-test p-value; NaN below two pairs or for zero spread
    wilcoxon_p: float  # two-sided Wilcoxon signed-rank p-value; NaN where it does not apply

    @property
    def min_wilcoxon_p(self) -> float:
        """The smallest two-sided p-value the exact signed-rank test can give with ``n``
        pairs (all differences of one sign): ``2 / 2**n``."""
        return 2.0 / 2**self.n if self.n else math.nan


def paired_test(strategy: Sequence[float], baseline: Sequence[float]) -> PairedTest:
    """Paired t-test and Wilcoxon signed-rank test of ``strategy - baseline``.

    The two sequences are aligned (element i of both comes from the same seed); a pair
    with a non-finite value is dropped.  The t-test (``scipy.stats.ttest_rel``) needs two
    pairs and differences that are not all equal; the signed-rank test
    (``scipy.stats.wilcoxon``, exact distribution for small samples, zero differences
    dropped as in Wilcoxon's original test) needs one non-zero difference.
    """
    if len(strategy) != len(baseline):
        raise ValueError(f"paired_test: {len(strategy)} values against {len(baseline)}")
    pairs = [(a, b) for a, b in zip(strategy, baseline, strict=True) if math.isfinite(a + b)]
    d = np.asarray([a - b for a, b in pairs], dtype=np.float64)
    n = int(d.size)
    if n == 0:
        return PairedTest(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean, std, _ = mean_std(list(d))
    half = t_halfwidth(std, n)
    t_p = math.nan
    if n >= 2 and std > 0:
        from scipy.stats import ttest_rel

        t_p = float(ttest_rel([a for a, _ in pairs], [b for _, b in pairs]).pvalue)
    w_p = math.nan
    if np.any(d != 0):
        from scipy.stats import wilcoxon

        w_p = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return PairedTest(n, mean, mean - half, mean + half, t_p, w_p)
