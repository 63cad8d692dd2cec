"""The report's findings: one sentence per contrast, and sentences that explain a failure.

Pure functions, frames in, sentences out (``analysis.report`` renders them):

* ``interaction_findings`` (the headline): the depth x residual interaction
  (``analysis.interaction``) of final train loss, then test error, per residual cell and
  depth: each variant's change, the difference of differences with its 95% interval and
  its p adjusted over the report's family (Holm, ``analysis.contrasts.report_family``);
  "consistent with ..." only when that adjusted p is below 0.05, else "not resolved with
  N seeds"; below three seeds the means alone.
* ``contrast_findings``: each level minus its factor's baseline on final test accuracy,
  paired by seed (``analysis.contrasts``), with the paired-t p adjusted over the report's
  family (Holm: family-wise error under any dependence).
* ``survivorship_findings``: a contrast or interaction whose conclusion changes when the
  diverged trials are counted at chance (``analysis.robust.survivorship``).
* ``budget_text``: the training budget against He et al.'s 64k iterations, which every
  finding about trained networks carries.
* ``failure_findings``: a cell where a trial diverged or stayed at chance (final test
  error >= ``AT_CHANCE_ERROR`` or final train loss within ``LOSS_TOL`` of ln 10, with
  10 balanced classes) names the mechanism measured at initialization in
  ``layers.parquet`` (``init_ratios``: activation growth from the first block to the
  last, and first-layer over last-layer gradient), and the cells of the same model
  and depth that trained, by the levels in which they differ.
* ``warmup_findings``: a cell whose first-epoch train loss is above chance (ln 10)
  suggests ``--warmup-epochs`` (and, for a residual network not already at it,
  ``--branch-scale zero``).
* ``tuning_findings``: a cell of a ``--tune`` sweep whose selected hyperparameter lies
  within 10% (log scale) of a bound of its search range (``analysis.tuning.bound_side``:
  the tuning playbook's boundary check) is told to widen the range.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis import contrasts as _contrasts
from ablations import levels as _levels
from analysis import stats
from analysis import tuning as _tuning
from analysis.tables import snapshot_rows

N_CLASSES = 10                  # CIFAR-10 and the synthetic data set
CHANCE_LOSS = math.log(N_CLASSES)  # cross-entropy of the uniform prediction: 2.3026
AT_CHANCE_ERROR = 0.85          # a test error this high with 10 classes (chance: 0.9)
LOSS_TOL = 0.05                 # a final train loss >= ln 10 - 0.05 has learnt nothing
NOTABLE = 10.0                  # a ratio beyond 10x (or below 1/10) is called a mechanism
MAX_AVOIDERS = 4


def _label(family, model) -> str:
    """"mlp" for a family's own network, "resnet: small_resnet18" for a preset."""
    return str(model) if model == family else f"{family}: {model}"


def _head(row, names) -> str:
    within = _levels.describe(row, names)
    return f"{_label(row['family'], row['model'])} depth {row['depth']}" + (
        f" ({within})" if within else "")


def _times(r: float) -> str:
    """1,900 / 12 / 1.3 / 3.4e+06; "non-finite" for inf or NaN."""
    if not np.isfinite(r):
        return "non-finite"
    if r >= 1e6:
        return f"{r:.1e}"
    if r >= 10:
        return f"{r:,.0f}"
    return f"{r:.2g}"


def _ratio(r: float) -> str:
    """A ratio as "1,900x" or "0.8x", and as "1/67" below one half (not "0.015x")."""
    if not np.isfinite(r):
        return "non-finite"
    return f"{_times(r)}x" if r >= 0.5 or r <= 0 else f"1/{_times(1 / r)}"


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
        g = t[mask & (t["status"] != "completed")]
        if len(g):
            parts.append(f"{level}: " + ", ".join(f"{n} {st}" for st, n
                                                  in g["status"].value_counts().items()))
    return "; ".join(parts)


def _pp(v: float) -> str:
    return f"{100 * v:+.1f}"


def contrast_findings(trials: pd.DataFrame | None, method: str = _contrasts.ADJUSTMENT,
                      family: pd.DataFrame | None = None,
                      budget_tag: str = "") -> tuple[list[str], str]:
    """One sentence per contrast of final test accuracy (``contrasts``), and the sentence
    that says how their p values were adjusted ("" when none has a p value), e.g.

    "resnet depth 56 (branch_scale=zero): residual minus plain test accuracy +21.3 pp
    [95% CI +15.0, +27.6] over 3 seed(s), Holm p = 0.019."

    The p is the paired t p adjusted over the report's family (``family``, see
    ``analysis.contrasts.report_family``; computed from ``trials`` when None) with Holm
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
        family = _contrasts.report_family(trials)
    t = stats._prepare(trials)
    varying = _levels.varying(trials)
    label = _contrasts.ADJUSTMENT_LABEL[method]
    out = []
    shown_p = means = 0
    for _, r in d.iterrows():
        head = _head(r, [n for n in varying if n != r["factor"]])
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
            holm_p, bh_p = _contrasts.family_lookup(
                family, _contrasts.contrast_key(r, "final_test_acc", "t"), r["p_value"])
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


def adjustment_note(family: pd.DataFrame | None, method: str = _contrasts.ADJUSTMENT) -> str:
    """"p: two-sided paired t test (interactions: paired or Welch t), adjusted with Holm
    over the 14 primary tests of this report (...)"."""
    how = ("Holm's step-down method (family-wise error rate, valid under any dependence)"
           if method == "holm" else "the Benjamini-Hochberg method (false discovery rate)")
    return (f"p: two-sided t tests (contrasts paired by seed; interactions paired or Welch), "
            f"adjusted with {how}: " + _contrasts.family_caption(family) + ".")


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
    from analysis.tables import interactions
    ints = interactions(trials)
    if not ints:
        return []
    if family is None:
        family = _contrasts.report_family(trials)
    varying = [n for n in _levels.varying(trials) if n != "residual"]
    out = []
    for m, d in ints.items():
        what, scale, unit = (("train loss", 1.0, "") if m == "final_train_loss"
                             else ("test error", 100.0, " pp"))
        for _, r in d.iterrows():
            ctx = _levels.describe(r, varying)
            head = (f"{_label(r['family'], r['model'])} {int(r['base_depth'])} -> "
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
                holm_p, _ = _contrasts.family_lookup(
                    family, _contrasts.interaction_key(r, m), r["p_value"])
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
    from analysis import robust
    from analysis.tables import (fmt_interval, survivorship_few, survivorship_frame,
                                 survivorship_label)
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


# --------------------------------------------------------------------------- budget

HE_ITERATIONS = 64_000   # He et al. 2016, CIFAR-10: 64k iterations ...
HE_BATCH = 128           # ... of mini-batches of 128 ...
HE_TRAIN_IMAGES = 45_000  # ... on a 45k/5k train/val split
HE_EPOCHS = HE_ITERATIONS * HE_BATCH / HE_TRAIN_IMAGES  # 182 epochs
SEED_RECIPE_EPOCHS = 30  # the seed and default recipes' full length (ablations.recipes)
BUDGET_COLUMNS = ("steps", "schedule_steps", "batch_size", "n_train")
CIFAR_TRAIN_IMAGES = 50_000


def _pct(x: float) -> str:
    v = 100 * x
    return f"{v:.2g}%" if v < 10 else f"{v:.0f}%"


def _median(col: pd.Series) -> float | None:
    v = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def budgets(trials: pd.DataFrame | None, spec: dict | None) -> list[dict]:
    """The training budget: one dict per recipe (``recipe`` column; one without it) with
    ``recipe, steps, steps_lo, steps_hi, schedule_steps, batch_size, n_train, about``.

    From the trials' columns ``steps, schedule_steps, batch_size, n_train`` when they
    have ``steps`` (completed trials first; the median, with the range over trials); else
    estimated from spec.json's ``train`` (``about``: True): ``n_train = subset - round(
    val_fraction * subset)`` (CIFAR-10's 50,000 without a subset), ``ceil(n_train /
    batch_size)`` steps per epoch, the trials' median ``epochs_run`` (else the spec's
    epochs) for the steps run and the spec's epochs for the schedule. [] when neither
    says.
    """
    out = []
    if trials is not None and len(trials) and "steps" in trials and \
            pd.to_numeric(trials["steps"], errors="coerce").notna().any():
        t = trials[pd.to_numeric(trials["steps"], errors="coerce").notna()]
        done = t[t["status"] == "completed"] if "status" in t else t
        t = done if len(done) else t
        groups = (t.groupby(t["recipe"].astype(str), sort=True) if "recipe" in t
                  and t["recipe"].notna().any() else [(None, t)])
        for recipe, g in groups:
            steps = pd.to_numeric(g["steps"], errors="coerce")
            out.append(dict(recipe=recipe, steps=_median(steps), steps_lo=float(steps.min()),
                            steps_hi=float(steps.max()),
                            **{c: _median(g[c]) if c in g else None
                               for c in ("schedule_steps", "batch_size", "n_train")},
                            about=False))
        return out
    train = ((spec or {}).get("spec") or {}).get("train") or {}
    if not isinstance(train, dict) or not train.get("epochs") or not train.get("batch_size"):
        return []
    try:
        epochs, batch = float(train["epochs"]), float(train["batch_size"])
        subset = train.get("subset")
        vf = float(train.get("val_fraction") or 0.0)
        images = float(subset) if subset else (CIFAR_TRAIN_IMAGES if str(
            train.get("dataset", "cifar10")).startswith("cifar") else None)
    except (TypeError, ValueError):
        return []
    if not images or batch <= 0:
        return []
    n_train = images - (0 if vf <= 0 else max(1, round(vf * images)))
    per_epoch = math.ceil(n_train / batch)
    run = None
    if trials is not None and "epochs_run" in trials:
        done = trials[trials["status"] == "completed"] if "status" in trials else trials
        run = _median(done["epochs_run"])
    steps = (run or epochs) * per_epoch
    # A folder without these columns was written before recipes existed, so it ran the
    # seed article's recipe, whose full length is 30 epochs (ablations.recipes; not
    # imported: it needs torch). Another recipe's length is unknown here.
    recipe = (spec or {}).get("recipe") or ((spec or {}).get("spec") or {}).get("recipe")
    schedule = SEED_RECIPE_EPOCHS * per_epoch if recipe in (None, "seed", "default") else None
    return [dict(recipe=recipe, steps=steps, steps_lo=steps, steps_hi=steps,
                 schedule_steps=schedule, batch_size=batch, n_train=n_train, about=True)]


def _budget_label(frac: float) -> str:
    return ("early training" if frac < 0.25 else "partial training" if frac < 1
            else "full-length training")


def budget_text(trials: pd.DataFrame | None, spec: dict | None) -> tuple[str, str]:
    """(statement, tag): the report's budget against He et al.'s CIFAR-10 schedule
    (64k iterations at batch 128 on 45k images = 182 epochs), e.g.

    "early training: 360 steps = 0.56% of He et al.'s 64k iterations (100% of this
    recipe's 360-step schedule); 10 epochs of 4,500 images = 5.5% of He et al.'s 182
    epochs", and the tag the findings about trained networks carry:
    " [early training: 360 steps = 0.56% of He et al.'s 64k iterations]". "about" where
    estimated from spec.json. ("", "") when nothing records the budget."""
    found = [b for b in budgets(trials, spec) if b["steps"]]
    if not found:
        return "", ""
    parts = []
    for b in found:
        about = "about " if b["about"] else ""
        frac = b["steps"] / HE_ITERATIONS
        steps = (f"{b['steps']:,.0f} steps" if b["steps_lo"] == b["steps_hi"] else
                 f"{b['steps']:,.0f} steps (median; {b['steps_lo']:,.0f} to "
                 f"{b['steps_hi']:,.0f})")
        text = (f"{_budget_label(frac)}: {about}{steps} = {_pct(frac)} of He et al.'s 64k "
                "iterations")
        if b["schedule_steps"]:
            text += (f" ({_pct(b['steps'] / b['schedule_steps'])} of this recipe's "
                     f"{b['schedule_steps']:,.0f}-step schedule)")
        if b["n_train"] and b["batch_size"]:
            ep = b["steps"] * b["batch_size"] / b["n_train"]
            text += (f"; {about}{ep:.3g} epochs of {b['n_train']:,.0f} images = "
                     f"{_pct(ep / HE_EPOCHS)} of He et al.'s {HE_EPOCHS:.0f} epochs")
        if b["about"]:
            text += " (estimated from spec.json: epochs x ceil(images / batch))"
        parts.append((f"recipe {b['recipe']}: " if b["recipe"] is not None else "") + text)
    lo = min(b["steps"] for b in found)
    hi = max(b["steps"] for b in found)
    about = "about " if any(b["about"] for b in found) else ""
    span = f"{lo:,.0f} steps" if lo == hi else f"{lo:,.0f} to {hi:,.0f} steps"
    fr = (_pct(lo / HE_ITERATIONS) if lo == hi
          else f"{_pct(lo / HE_ITERATIONS)} to {_pct(hi / HE_ITERATIONS)}")
    tag = f" [{_budget_label(hi / HE_ITERATIONS)}: {about}{span} = {fr} of He et al.'s 64k iterations]"
    return "; ".join(parts), tag


# --------------------------------------------------------------------------- mechanisms

def _ends(rows: pd.DataFrame, interior: bool) -> tuple[float, float, int]:
    """(first, last, count) of one trial's values in network order; ``interior`` drops
    the first and last tap (the stem or input layer, and the head) when at least four."""
    v = rows.sort_values("layer_index", kind="stable")["value"].to_numpy(dtype=float)
    if interior and v.size >= 4:
        v = v[1:-1]
    return (float(v[0]), float(v[-1]), int(v.size)) if v.size else (math.nan, math.nan, 0)


def _divide(num: float, den: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(num) / np.float64(den))


def init_ratios(layers: pd.DataFrame | None) -> pd.DataFrame:
    """Per trial, at initialization (``snapshot_rows(..., "init")``: the probe's init
    phase, or a trained trial's first sample):

    * ``act_ratio``: ``act_std`` (``act_mean_abs`` when the folder has no act_std) of
      the last block over the first, over ``n_blocks`` blocks (the tap points without
      the first and last, i.e. stem/input layer and head, when there are at least four);
    * ``grad_ratio``: ``grad_mean_abs`` of the first weight layer over the last one
      (below 1: gradients vanish toward the input).

    Columns ``trial_id, act_stat, n_blocks, act_ratio, grad_ratio``; NaN where the rows
    are missing, inf for x/0.
    """
    cols = ["trial_id", "act_stat", "n_blocks", "act_ratio", "grad_ratio"]
    if layers is None or not len(layers):
        return pd.DataFrame(columns=cols)
    out: dict[str, dict] = {}
    act_stat = "act_std" if (layers["stat"] == "act_std").any() else "act_mean_abs"
    for tid, g in snapshot_rows(layers, act_stat, "init").groupby("trial_id", sort=True):
        first, last, n = _ends(g, interior=True)
        out.setdefault(tid, {})
        out[tid].update(act_stat=act_stat, n_blocks=n, act_ratio=_divide(last, first))
    for tid, g in snapshot_rows(layers, "grad_mean_abs", "init").groupby("trial_id", sort=True):
        first, last, _ = _ends(g, interior=False)
        out.setdefault(tid, {})["grad_ratio"] = _divide(first, last)
    rows = [{"trial_id": tid, **v} for tid, v in out.items()]
    return pd.DataFrame(rows, columns=cols)


def _cell_ratio(values: pd.Series) -> float:
    """Median over the finite per-trial ratios; inf when every one is inf; else NaN."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    if np.isfinite(v).any():
        return float(np.median(v[np.isfinite(v)]))
    return math.inf if np.isinf(v).any() else math.nan


def mechanism(act_ratio: float, n_blocks: int, act_stat: str, grad_ratio: float) -> tuple[str, str]:
    """(sentence, which) for a cell's init ratios; ``which`` is "act", "grad" or ""."""
    if np.isinf(act_ratio) or (n_blocks and np.isnan(act_ratio)
                               and not np.isfinite(grad_ratio)):
        return "activations are already non-finite at init", ""
    if np.isfinite(act_ratio) and act_ratio >= NOTABLE:
        return (f"activations grow {_times(act_ratio)}x over {n_blocks} blocks at init "
                f"({act_stat}, last block / first)", "act")
    if np.isfinite(act_ratio) and 0 < act_ratio <= 1 / NOTABLE:
        return (f"activations shrink {_times(1 / act_ratio)}x over {n_blocks} blocks at init "
                f"({act_stat}, last block / first)", "act")
    if np.isfinite(grad_ratio) and 0 < grad_ratio <= 1 / NOTABLE:
        return (f"gradients vanish toward the input: the first layer's mean |dL/dW| is "
                f"1/{_times(1 / grad_ratio)} of the last layer's at init", "grad")
    if np.isfinite(grad_ratio) and grad_ratio >= NOTABLE:
        return (f"gradients grow toward the input: the first layer's mean |dL/dW| is "
                f"{_times(grad_ratio)}x the last layer's at init", "grad")
    if np.isnan(act_ratio) and np.isnan(grad_ratio):
        return "no layer statistics at init for this cell", ""
    parts = []
    if np.isfinite(act_ratio):
        parts.append(f"activations {_ratio(act_ratio)} over {n_blocks} blocks")
    if np.isfinite(grad_ratio):
        parts.append(f"first/last-layer gradient {_ratio(grad_ratio)}")
    return "no activation growth or vanishing gradient at init (" + ", ".join(parts) + ")", ""


# --------------------------------------------------------------------------- failures

def trial_outcomes(trials: pd.DataFrame) -> pd.Series:
    """Per trial: "trained" (completed, above chance), "chance" (completed with final
    test error >= AT_CHANCE_ERROR or final train loss >= ln 10 - LOSS_TOL), "diverged",
    or None (errored or pending: says nothing about the network)."""
    t = stats.with_derived(trials)
    err = pd.to_numeric(t.get("final_test_error", pd.Series(np.nan, index=t.index)),
                        errors="coerce")
    loss = pd.to_numeric(t.get("final_train_loss", pd.Series(np.nan, index=t.index)),
                         errors="coerce")
    chance = (err >= AT_CHANCE_ERROR) | (loss >= CHANCE_LOSS - LOSS_TOL)
    out = [("diverged" if st == "diverged" else ("chance" if c else "trained")
            if st == "completed" else None) for st, c in zip(t["status"], chance)]
    return pd.Series(out, index=t.index, dtype=object)


def failure_findings(trials: pd.DataFrame | None, layers: pd.DataFrame | None = None) -> list[str]:
    """One sentence per cell with a diverged or at-chance trial, e.g.

    "resnet depth 56 (plain): 3/3 seed(s) diverged; activations grow 1,900x over 27
    blocks at init (act_std, last block / first); trained at this depth: residual
    branch_scale=zero (1x); residual norm=layer (1.3x)."

    The mechanism is the cell's median ``init_ratios``; the cells named after it are
    those of the same model and depth whose finished trials all trained, nearest first,
    described by the levels (of residual and the factors that vary) in which they
    differ, with the same ratio in parentheses (at most ``MAX_AVOIDERS``).
    """
    if trials is None or not len(trials) or "residual" not in trials:
        return []
    t = stats._prepare(trials)
    t["_outcome"] = trial_outcomes(t).to_numpy()
    trained_word = "trained" if "final_test_acc" in t or "final_train_loss" in t else "stayed finite"
    keys = stats.cell_keys(t)
    shown = ["residual"] + [n for n in _levels.varying(t) if n != "residual"]
    ratios = init_ratios(layers)
    t = t.merge(ratios, on="trial_id", how="left") if "trial_id" in t and len(ratios) else \
        t.assign(act_stat=None, n_blocks=np.nan, act_ratio=np.nan, grad_ratio=np.nan)
    cells = []
    for key, g in t.groupby(keys, sort=False, dropna=False):
        o = g["_outcome"]
        cells.append({**dict(zip(keys, key)), "n": int(o.notna().sum()),
                      "diverged": int((o == "diverged").sum()),
                      "chance": int((o == "chance").sum()),
                      "trained": int((o == "trained").sum()),
                      "act_ratio": _cell_ratio(g["act_ratio"]),
                      "grad_ratio": _cell_ratio(g["grad_ratio"]),
                      "n_blocks": int(g["n_blocks"].max()) if g["n_blocks"].notna().any() else 0,
                      "act_stat": next((s for s in g["act_stat"] if isinstance(s, str)), "act_std")})
    cells = _levels.sort_cells(pd.DataFrame(cells), keys)
    out = []
    for _, c in cells.iterrows():
        if not (c["diverged"] or c["chance"]):
            continue
        what = [f"{c[k]}/{c['n']} seed(s) {w}" for k, w in
                (("diverged", "diverged"), ("chance", "stayed at chance")) if c[k]]
        text, which = mechanism(c["act_ratio"], c["n_blocks"], c["act_stat"], c["grad_ratio"])
        peers = cells[(cells["family"] == c["family"]) & (cells["model"] == c["model"])
                      & (cells["depth"] == c["depth"]) & (cells["trained"] > 0)
                      & (cells["diverged"] == 0) & (cells["chance"] == 0)]
        names = []
        # nearest first: the cells that differ from this one in the fewest factors
        peers = peers.assign(_d=[sum(p[n] != c[n] for n in shown) for _, p in peers.iterrows()])
        for _, p in peers.sort_values("_d", kind="stable").iterrows():
            diff = [n for n in shown if p[n] != c[n]]
            desc = _levels.describe(p, diff, sep=" ")
            if not desc:
                continue
            ratio = p["act_ratio"] if which == "act" else p["grad_ratio"] if which == "grad" else None
            names.append(desc + (f" ({_ratio(ratio)})" if ratio is not None and np.isfinite(ratio)
                                 else ""))
        if len(names) > MAX_AVOIDERS:
            names = names[:MAX_AVOIDERS] + [f"{len(names) - MAX_AVOIDERS} more"]
        avoid = (f"{trained_word} at this depth: {'; '.join(names)}" if names
                 else f"no other cell of this sweep {trained_word} at this depth")
        out.append(f"{_head(c, shown)}: {' and '.join(what)}; {text}; {avoid}.")
    return out


# --------------------------------------------------------------------------- warmup

def warmup_findings(trials: pd.DataFrame | None, epochs: pd.DataFrame | None,
                    warmup_epochs: int = 0) -> list[str]:
    """One sentence per cell whose median first-epoch train loss is above chance (more
    than ``LOSS_TOL`` above ln 10: a cell stuck at 2.31 is at chance, not overshooting;
    a non-finite loss counts as above), e.g.

    "resnet depth 56 (residual): first-epoch train loss above chance (ln 10 = 2.30) in
    3/3 seed(s) (median 4.12): the first steps overshoot; try --warmup-epochs N or
    --branch-scale zero."

    ``--branch-scale zero`` is suggested for residual cells not already at zero; a sweep
    that already warmed up (``warmup_epochs`` > 0) is told to warm up longer.
    """
    if trials is None or epochs is None or not len(epochs) or "train_loss" not in epochs \
            or "trial_id" not in epochs or "trial_id" not in trials or "residual" not in trials:
        return []
    t = stats._prepare(trials)
    e = epochs[["trial_id", "epoch", "train_loss"]].dropna(subset=["epoch"])
    first = e[e["epoch"] == e.groupby("trial_id")["epoch"].transform("min")]
    first = first.drop_duplicates("trial_id")
    keys = stats.cell_keys(t)
    m = t[["trial_id", *keys]].merge(first, on="trial_id", how="inner")
    shown = ["residual"] + [n for n in _levels.varying(t) if n != "residual"]
    out = []
    for key, g in _levels.sort_cells(m, keys).groupby(keys, sort=False, dropna=False):
        loss = pd.to_numeric(g["train_loss"], errors="coerce").to_numpy(dtype=float)
        loss = np.where(np.isfinite(loss), loss, math.inf)  # NaN or inf: the loss blew up
        if not loss.size or not np.median(loss) > CHANCE_LOSS + LOSS_TOL:
            continue
        c = dict(zip(keys, key))
        med = float(np.median(loss))
        above = int((loss > CHANCE_LOSS + LOSS_TOL).sum())
        shown_loss = ("non-finite: diverged" if not np.isfinite(med)
                      else f"{med:.2f}" if med < 100 else f"{med:.3g}")
        try_ = (f"a longer --warmup-epochs (this sweep used {warmup_epochs})" if warmup_epochs
                else "--warmup-epochs N")
        if bool(c["residual"]) and c.get("branch_scale", "one") not in ("zero", _levels.NA):
            try_ += " or --branch-scale zero"
        out.append(f"{_head(c, shown)}: first-epoch train loss above chance (ln {N_CLASSES} = "
                   f"{CHANCE_LOSS:.2f}) in {above}/{loss.size} seed(s) (median {shown_loss}): "
                   f"the first steps overshoot; try {try_}.")
    return out


# --------------------------------------------------------------------------- tuning

def tuning_findings(tuning: pd.DataFrame | None, ranges: dict | None) -> list[str]:
    """One warning per (cell, tuned hyperparameter) whose selected value is at a bound of
    its search range (``analysis.tuning.boundary_rows``), e.g.

    "resnet-20-plain: selected lr 0.93 is within 10% (log scale) of the upper bound 1 of
    its range [0.001, 1]: the range was likely too narrow; widen it with --tune-range
    lr=LOW:HIGH, e.g. lr=0.001:10."

    The example moves the flagged bound one decade out. ``tuning``: the samples of
    tuning.parquet (``analysis.tuning.load_tuning``), ``ranges``: the spec's search
    ranges (``analysis.tuning.search_ranges``); nothing without either.
    """
    out = []
    for _, r in _tuning.boundary_rows(tuning, ranges).iterrows():
        lo, hi, v, name = r["lo"], r["hi"], r["value"], r["name"]
        bound = lo if r["side"] == "lower" else hi
        wide = (lo / 10, hi) if r["side"] == "lower" else (lo, hi * 10)
        where = ("below" if v < lo else "above") if not lo <= v <= hi else None
        what = (f"lies {where} its range" if where else
                f"is within {_tuning.MARGIN:.0%} (log scale) of the {r['side']} bound "
                f"{bound:g} of its range")
        out.append(f"{r['cell']}: selected {name} {v:.3g} {what} "
                   f"{_tuning.fmt_range(lo, hi)}: the range was likely too narrow; widen it "
                   f"with --tune-range {name}=LOW:HIGH, e.g. {name}={wide[0]:g}:{wide[1]:g}.")
    return out
