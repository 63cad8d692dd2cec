"""P values: the two-sided tests of a paired difference and their multiple-comparison
adjustment.

``paired_t_pvalue`` (the paired t test, equivalent to ``scipy.stats.ttest_rel``) and
``wilcoxon_exact_pvalue`` (an exact Wilcoxon signed-rank test, whose ties are ties of the
measurement: |d| on a resolution grid, or equal up to rounding, not the floats' last bits)
test the per-seed differences of ``analysis.contrasts``; differences equal up to rounding
(relative spread <= ``stats.ZERO_SD_RTOL``) count as constant and get no t test.

**Multiple comparisons.** A report lists many contrasts; the p values are adjusted
with **Holm's step-down method** (``holm``): it controls the family-wise error rate
(the chance of *any* false claim among the findings) under any dependence between the
tests. Our tests are dependent by construction (every residual level is contrasted with
one shared plain cell, and the same seeds recur), which Holm needs no assumption about;
a report's findings are read as separate claims, for which the family-wise rate is the
right guarantee; and with tens of contrasts its loss of power against
Benjamini-Hochberg is small. ``benjamini_hochberg`` (false discovery rate; valid under
independence or positive dependence) is here for comparison. NaN p values are left out
of the count and stay NaN. Which tests form the report's family is
``analysis.multiplicity``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy import special as _sp  # not scipy.stats: ~0.3 s more import per report

from analysis.stats import ZERO_SD_RTOL, finite_values

ADJUSTMENT = "holm"  # the report's choice (see the module docstring)
ADJUSTMENT_LABEL = {"holm": "Holm", "bh": "Benjamini-Hochberg"}


# --------------------------------------------------------------------------- tests

def mid_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks (``scipy.stats.rankdata``'s
    default "average" method)."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="mergesort")
    s = v[order]
    first = np.r_[True, s[1:] != s[:-1]]           # a new value starts at this position
    group = np.cumsum(first) - 1                  # 0-based tie group of each sorted value
    starts = np.r_[np.flatnonzero(first), v.size]  # first position of each group, then n
    ranks = np.empty(v.size)
    ranks[order] = (starts[group] + starts[group + 1] + 1) / 2.0  # mean of ranks lo+1..hi
    return ranks


def paired_t_pvalue(diffs: Iterable) -> float:
    """Two-sided one-sample t test of mean(diffs) == 0 (= ``scipy.stats.ttest_rel``).

    NaN for fewer than two finite differences, and NaN for zero variance
    (t is 0/0 or +-inf; scipy would return NaN or 0.0 with a precision
    warning, a "significance" that no noise estimate supports). "Zero" means
    ``sd <= ZERO_SD_RTOL * max|d|``: equal differences computed in floating
    point, e.g. ``(0.3 - 0.2, 0.2 - 0.1)``, differ by rounding (sd ~ 1e-17)
    and would otherwise give p ~ 1e-32 (scipy does).
    """
    d = finite_values(diffs)
    n = d.size
    if n < 2:
        return math.nan
    sd = float(d.std(ddof=1))
    if sd <= ZERO_SD_RTOL * float(np.abs(d).max()):
        return math.nan
    t = float(d.mean()) / (sd / math.sqrt(n))
    return float(2.0 * _sp.stdtr(n - 1, -abs(t)))  # = 2 t.sf(|t|, n - 1)


def _magnitude_classes(d: np.ndarray, resolution: float | None) -> np.ndarray:
    """|d| as whole numbers (floats), equal exactly where the magnitudes are ties (0: a
    zero difference); ``d`` is not empty. With ``resolution``: ``rint(|d| /
    resolution)``, the count of grid steps. Without: sorted |d| within ``ZERO_SD_RTOL * max|d|`` of the previous one share
    a class, and |d| within that tolerance of 0 is 0."""
    a = np.abs(d)
    if resolution is not None:
        resolution = float(resolution)
        if not (math.isfinite(resolution) and resolution > 0):
            raise ValueError(f"resolution must be a positive number, got {resolution!r}")
        return np.rint(a / resolution)
    tol = ZERO_SD_RTOL * float(a.max())
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    new = np.r_[s[0] > tol, np.diff(s) > tol]  # a class starts here
    classes = np.empty(a.size)
    classes[order] = np.cumsum(new)  # 0 for the values within tol of zero
    return classes


def wilcoxon_exact_pvalue(diffs: Iterable, *, resolution: float | None = None) -> float:
    """Two-sided exact Wilcoxon signed-rank p value of the finite differences.

    Zero differences are dropped (Wilcoxon's convention, scipy's
    ``zero_method="wilcox"``); tied |d| get mid-ranks, and the null
    distribution of ``W+`` (sum of the ranks of positive differences) is the
    exact one over all ``2^n`` equally likely sign assignments of *those*
    ranks (so ties are handled exactly, unlike the tie-free tables). It is
    counted by dynamic programming on doubled ranks (integers), not by
    enumeration. ``p = min(1, 2 * min(P(W+ <= w), P(W+ >= w)))``.
    No finite difference -> NaN; all differences zero -> 1.0 (``W+ = 0``
    is the only possible value: no evidence either way). With n nonzero
    differences the smallest attainable p is ``2 / 2^n`` (0.25 for n = 3).

    **Ties on the measurement's resolution.** Differences of accuracies (counts / 1017)
    that are equal as counts differ in their last bits as floats, and ranking the raw
    floats would split a tie (``[10, 10, -10, 20, 30] / 1017`` built from accuracies
    can give 0.125 or 0.1875 instead of 0.25). So |d| is put on a grid before ranking:
    ``resolution`` (e.g. ``1 / n_test``) rounds |d| to ``rint(|d| / resolution)``
    steps (0 steps = a zero difference); without it, |d| values within
    ``ZERO_SD_RTOL * max|d|`` of each other (sorted, chained) are ties and |d| within
    that tolerance of 0 is zero. The sign is the sign of d.
    """
    d = finite_values(diffs)
    if d.size == 0:
        return math.nan
    mag = _magnitude_classes(d, resolution)
    nonzero = mag != 0
    d, mag = d[nonzero], mag[nonzero]
    n = d.size
    if n == 0:
        return 1.0
    ranks2 = np.rint(2 * mid_ranks(mag)).astype(np.int64)  # mid-ranks * 2
    w2 = int(ranks2[d > 0].sum())
    counts = np.zeros(int(ranks2.sum()) + 1, dtype=object)  # exact integers for any n
    counts[0] = 1
    for r in ranks2:
        shifted = np.zeros_like(counts)
        shifted[r:] = counts[:-r]
        counts = counts + shifted
    total = 2 ** n
    lower = sum(counts[: w2 + 1])
    upper = sum(counts[w2:])
    return float(min(1.0, 2 * min(lower, upper) / total))


# --------------------------------------------------------------------------- adjustment

def _finite_order(pvalues) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = np.asarray(pd.to_numeric(pd.Series(list(pvalues), dtype=object), errors="coerce"),
                   dtype=float)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    return p, ok, order


def holm(pvalues: Iterable) -> np.ndarray:
    """Holm's step-down adjusted p values (family-wise error), in the input order.

    With the m finite p values sorted, ``p_(1) <= ... <= p_(m)``:
    ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. Reject at level a where
    ``adj <= a``; this is exactly Holm's procedure. NaN stays NaN and is not counted in m.

    >>> holm([0.01, 0.04, 0.03, 0.005])  # 0.005*4, 0.01*3, 0.03*2, max(0.04*1, 0.06)
    array([0.03, 0.06, 0.06, 0.02])
    """
    p, ok, order = _finite_order(pvalues)
    out = np.full(p.shape, math.nan)
    m = ok.size
    running = 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out


def benjamini_hochberg(pvalues: Iterable) -> np.ndarray:
    """Benjamini-Hochberg adjusted p values (false discovery rate), in the input order.

    ``adj_(i) = min_{j >= i} min(1, m p_(j) / j)`` over the m finite p values sorted
    ascending; NaN stays NaN and is not counted in m (= ``scipy.stats.
    false_discovery_control`` on the finite values).

    >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.005])
    array([0.02, 0.04, 0.04, 0.02])
    """
    p, ok, order = _finite_order(pvalues)
    out = np.full(p.shape, math.nan)
    m = ok.size
    running = 1.0
    for j in range(m - 1, -1, -1):
        i = order[j]
        running = min(running, min(1.0, m * p[i] / (j + 1)))
        out[i] = running
    return out


def adjust(pvalues: Iterable, method: str = ADJUSTMENT) -> np.ndarray:
    """``holm`` (method "holm") or ``benjamini_hochberg`` ("bh")."""
    if method == "holm":
        return holm(pvalues)
    if method == "bh":
        return benjamini_hochberg(pvalues)
    raise ValueError(f"unknown adjustment {method!r}; valid: holm, bh")
