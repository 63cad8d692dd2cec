"""The report's findings: one sentence per contrast, interaction or survivorship check.

Pure functions, frames in, sentences out (``analysis.report`` renders them):

* ``interaction_findings`` (the headline): the depth x residual interaction
  (``analysis.interaction``) of final train loss, then test error, per residual cell and
  depth: each variant's change, the difference of differences with its 95% interval and
  its p adjusted over the report's family (Holm, ``analysis.multiplicity.report_family``);
  "consistent with ..." only when that adjusted p is below 0.05, else "not resolved with
  N seeds"; below three seeds the means alone.
* ``contrast_findings``: each level minus its factor's baseline on final test accuracy,
  paired by seed (``analysis.contrasts``), with the paired-t p adjusted over the report's
  family (Holm: family-wise error under any dependence); ``adjustment_note`` says how.
* ``survivorship_findings``: a contrast or interaction whose conclusion changes when the
  diverged trials are counted at chance (``analysis.robust.survivorship``).

The findings about how the trials trained (failures and their mechanism at
initialization, warmup, tuning ranges) are in ``analysis.findings_training``, the
training budget whose tag (``budget_tag``) ends a finding in ``analysis.budget``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ablations.plan import network_title
from ablations.status import Status
from ablations import levels as _levels
from analysis import contrasts as _contrasts
from analysis import robust, stats
from analysis.formatting import fmt_interval
from analysis.multiplicity import (contrast_key, family_caption, family_lookup, interaction_key,
                                   report_family)
from analysis.pvalues import ADJUSTMENT, ADJUSTMENT_LABEL
from analysis.tables_contrasts import interactions
from analysis.tables_robust import survivorship_few, survivorship_frame, survivorship_label


def cell_title(row, names) -> str:
    """"resnet depth 56 (norm=none)": a cell's network and depth, and its levels of
    ``names`` (``ablations.levels.describe``), as a finding's opening words."""
    within = _levels.describe(row, names)
    return f"{network_title(row['family'], row['model'])} depth {row['depth']}" + (
        f" ({within})" if within else "")


# --------------------------------------------------------------------------- contrasts

def _status_why(t: pd.DataFrame, r) -> str:
    """"plain: 1 diverged": the unfinished trials of the two cells a contrast compares."""
    same = (t["family"] == r["family"]) & (t["model"] == r["model"]) & (t["depth"] == r["depth"])
    name = r["factor"]
    lv = t[name].map(lambda v: _levels.level_of(name, v))
    base = same & (lv == r["baseline"])
    for k in _levels.present(t):
        if k != name:
            base &= (t[k] == r[k]) | (t[k] == _levels.NA)
    sides = [(r["baseline"], base)]
    if pd.notna(r["level"]):
        treat = same & (lv == r["level"])
        for k in _levels.present(t):
            if k != name:
                treat &= t[k] == r[k]
        sides.append((r["level"], treat))
    parts = []
    for level, mask in sorted(sides, key=lambda s: _levels.rank(name, s[0])):
        g = t[mask & (t["status"] != Status.COMPLETED)]
        if len(g):
            parts.append(f"{level}: " + ", ".join(f"{n} {st}" for st, n
                                                  in g["status"].value_counts().items()))
    return "; ".join(parts)


def _pp(v: float) -> str:
    return f"{100 * v:+.1f}"


def contrast_findings(trials: pd.DataFrame | None, method: str = ADJUSTMENT,
                      family: pd.DataFrame | None = None,
                      budget_tag: str = "") -> tuple[list[str], str]:
    """One sentence per contrast of final test accuracy (``contrasts``), and the sentence
    that says how their p values were adjusted ("" when none has a p value), e.g.

    "resnet depth 56 (branch_scale=zero): residual minus plain test accuracy +21.3 pp
    [95% CI +15.0, +27.6] over 3 seed(s), Holm p = 0.019."

    The p is the paired t p adjusted over the report's family (``family``, see
    ``analysis.multiplicity.report_family``; computed from ``trials`` when None) with Holm
    (``method="bh"``: its Benjamini-Hochberg q instead). Below ``MIN_SEEDS`` pairs the
    sentence gives the mean only ("over 2 seed(s) (means only)"). A contrast without a
    pair says which trials did not complete. ``budget_tag`` (``budget_text``) ends every
    sentence about trained networks. No sentences without ``final_test_acc``.
    """
    if trials is None or "final_test_acc" not in trials or "residual" not in trials:
        return [], ""
    # No try: a frame the statistics reject (two trials for one seed) is a failure of
    # this section, named in the report, not a silent absence of findings.
    d = _contrasts.contrasts(trials, "final_test_acc")
    if family is None:
        family = report_family(trials)
    t = stats.prepare_trials(trials)
    varying = _levels.varying(trials)
    label = ADJUSTMENT_LABEL[method]
    out = []
    shown_p = means = 0
    for _, r in d.iterrows():
        head = cell_title(r, [n for n in varying if n != r["factor"]])
        residual = r["factor"] == "residual"
        if r["n_pairs"] == 0:
            why = _status_why(t, r)
            out.append(f"{head}: no seed with both {'variants' if residual else 'levels'} "
                       "completed" + (f" ({why})." if why else "."))
            continue
        what = ("residual minus plain" if residual
                else f"{r['factor']} {r['level']} minus {r['baseline']}")
        n = int(r["n_pairs"])
        ci, tail = "", ""
        if _contrasts.means_only(n):
            means += 1
            tail = " (means only)"
        elif np.isfinite(r["ci_lo"]):
            ci = f" [95% CI {_pp(r['ci_lo'])}, {_pp(r['ci_hi'])}]"
        p = ""
        if not _contrasts.means_only(n):
            holm_p, bh_p = family_lookup(
                family, contrast_key(r, "final_test_acc", "t"), r["p_value"])
            adj = holm_p if method == "holm" else bh_p
            if np.isfinite(adj):
                shown_p += 1
                p = f", {label} p = {adj:.2g}"
            elif np.isfinite(r["p_value"]):
                p = ", adjusted p n/a (this view changes the test)"
        out.append(f"{head}: {what} test accuracy {_pp(r['mean_diff'])} pp{ci} over {n} "
                   f"seed(s){tail}{p}"
                   + (f"; {r['n_unpaired']} seed(s) unpaired" if r["n_unpaired"] else "")
                   + f"{budget_tag}.")
    notes = []
    if shown_p:
        notes.append(adjustment_note(family, method))
    if means:
        notes.append(_contrasts.MEANS_ONLY_WHY)
    return out, " ".join(notes)


def adjustment_note(family: pd.DataFrame | None, method: str = ADJUSTMENT) -> str:
    """"p: two-sided paired t test (interactions: paired or Welch t), adjusted with Holm
    over the 14 primary tests of this report (...)"."""
    how = ("Holm's step-down method (family-wise error rate, valid under any dependence)"
           if method == "holm" else "the Benjamini-Hochberg method (false discovery rate)")
    return (f"p: two-sided t tests (contrasts paired by seed; interactions paired or Welch), "
            f"adjusted with {how}: " + family_caption(family) + ".")


# --------------------------------------------------------------------------- interactions

def _moved(v: float, scale: float, unit: str) -> str:
    """"rose by 0.41" / "fell by 1.2 pp" / "did not change"."""
    if not np.isfinite(v):
        return "is unknown"
    if v == 0:
        return "did not change"
    mag = abs(v) * scale
    num = f"{mag:.1f}" if unit else f"{mag:.3g}"
    return f"{'rose' if v > 0 else 'fell'} by {num}{unit}"


def _signed(v: float, scale: float, unit: str) -> str:
    return (f"{v * scale:+.1f}" if unit else f"{v:+.3g}") if np.isfinite(v) else "n/a"


def _verdict(r, higher_is_better: bool = False) -> str:
    """What a resolved difference of differences is consistent with."""
    sign = -1.0 if higher_is_better else 1.0
    did, plain = sign * float(r["did"]), sign * float(r["plain_delta"])
    residual = sign * float(r["residual_delta"])
    if did > 0:
        return ("consistent with residual connections reducing the degradation" if plain > 0
                else "consistent with the residual network gaining more from depth than plain")
    return ("consistent with the residual network degrading more with depth than plain"
            if residual > 0 else
            "consistent with plain gaining more from depth than the residual network")


INTERACTION_LEVEL = 0.05  # an adjusted p below this resolves an interaction


def interaction_findings(trials: pd.DataFrame | None, family: pd.DataFrame | None = None,
                         budget_tag: str = "") -> list[str]:
    """The headline: one sentence per depth x residual interaction
    (``analysis.interaction.interaction``) of final train loss, then of test error, e.g.

    "resnet 20 -> 56: plain's train loss rose by 0.41, residual's fell by 0.06;
    difference of differences +0.47 [95% CI +0.21, +0.73], Holm p = 0.01 (3 seeds,
    paired): consistent with residual connections reducing the degradation."

    The wording follows the evidence: "consistent with ..." only when the p adjusted over
    the report's family (Holm) is below 0.05 and the interval excludes 0; otherwise "not
    resolved with N seeds"; below ``MIN_SEEDS`` seeds the means alone. Never a claim
    from means. ``budget_tag`` ends each sentence.
    """
    if trials is None or "final_test_acc" not in trials and "final_train_loss" not in trials:
        return []
    ints = interactions(trials)
    if not ints:
        return []
    if family is None:
        family = report_family(trials)
    varying = [n for n in _levels.varying(trials) if n != "residual"]
    out = []
    for m, d in ints.items():
        what, scale, unit = (("train loss", 1.0, "") if m == "final_train_loss"
                             else ("test error", 100.0, " pp"))
        for _, r in d.iterrows():
            ctx = _levels.describe(r, varying)
            head = (f"{network_title(r['family'], r['model'])} {int(r['base_depth'])} -> "
                    f"{int(r['depth'])}" + (f" ({ctx})" if ctx else ""))
            n = _contrasts.interaction_n(r)
            if not np.isfinite(r["did"]):
                gone = [f"{side} at depth {dep}" for side, dep, c in (
                    ("plain", r["base_depth"], "n_plain_base"), ("plain", r["depth"], "n_plain"),
                    ("residual", r["base_depth"], "n_residual_base"),
                    ("residual", r["depth"], "n_residual")) if not r[c]]
                out.append(f"{head}: no difference of differences of {what}"
                           + (f" ({', '.join(gone)}: no completed seed)" if gone else "")
                           + f"{budget_tag}.")
                continue
            text = (f"{head}: plain's {what} {_moved(r['plain_delta'], scale, unit)}, "
                    f"residual's {_moved(r['residual_delta'], scale, unit)}; difference of "
                    f"differences {_signed(r['did'], scale, unit)}{unit}")
            seeds = (f"{n} seeds, paired" if r["method"] == "paired"
                     else f"at least {n} seeds per cell, Welch")
            if _contrasts.means_only(n):
                text += (f" ({n} seed{'s' if n != 1 else ''} per cell: means only, no "
                         f"interval or p): not resolved with {n} seed{'s' if n != 1 else ''}")
            else:
                lo, hi = r["ci_lo"], r["ci_hi"]
                ci = (f" [95% CI {_signed(lo, scale, unit)}, {_signed(hi, scale, unit)}]"
                      if np.isfinite(lo) and np.isfinite(hi) else "")
                holm_p, _ = family_lookup(
                    family, interaction_key(r, m), r["p_value"])
                if np.isfinite(holm_p):
                    p = f", Holm p = {holm_p:.2g}"
                elif np.isfinite(r["p_value"]):
                    p = ", adjusted p n/a (this view changes the test)"
                else:
                    p = ", no p value (no spread to test against)"
                excludes = np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0)
                resolved = np.isfinite(holm_p) and holm_p < INTERACTION_LEVEL and excludes
                text += (f"{ci}{p} ({seeds}): "
                         + (_verdict(r) if resolved else f"not resolved with {n} seeds"))
            out.append(text + f"{budget_tag}.")
    return out


# --------------------------------------------------------------------------- survivorship

def survivorship_findings(trials: pd.DataFrame | None, budget_tag: str = "") -> list[str]:
    """One sentence per contrast or interaction whose conclusion changes when every
    diverged trial is counted as a completed run at chance (``analysis.robust.
    survivorship``, ``sign_flips``: the sign, or the side of 0 the interval lies on), e.g.

    "resnet depth 56: residual minus plain (train loss): counting the 2 diverged trials
    as runs at chance (2.3) changes the estimate from -0.310 [-0.52, -0.10] to +0.120
    [-0.40, +0.64]: the contrast is not robust to survivorship."
    """
    if trials is None or "final_test_acc" not in trials or "residual" not in trials:
        return []
    s = survivorship_frame(trials)
    if not len(s):
        return []
    varying = _levels.varying(trials)
    few = survivorship_few(trials)
    out = []
    for _, r in s[s["sign_flips"].astype(bool)].iterrows():
        m = r["metric"]
        what, scale, dec = (("train loss", 1.0, 3) if m == "final_train_loss"
                            else ("test error", 100.0, 1))
        chance = robust.chance_value(m)
        n = int(r["n_diverged"])

        def est(v, lo, hi, bare):
            sign = "+" if np.isfinite(v) and v >= 0 else ""
            return sign + fmt_interval(v, lo, hi, dec, scale, show_interval=not bare)
        as_is = est(r["estimate"], r["ci_lo"], r["ci_hi"], few[m][0])
        at = est(r["estimate_chance"], r["ci_lo_chance"], r["ci_hi_chance"], few[m][1])
        out.append(f"{survivorship_label(r, varying)} ({what}): counting the {n} diverged "
                   f"trial{'s' if n != 1 else ''} as runs at chance ("
                   + (f"{chance * scale:.3g}" + ("%" if scale != 1 else "") if chance else "?")
                   + f") changes the estimate from {as_is} to {at}: "
                   f"the {'interaction' if r['kind'] == 'interaction' else 'contrast'} is not "
                   f"robust to survivorship{budget_tag}.")
    return out
