"""The before/after table of docs/recipes.md: per cell of each run, completed/diverged
trials, mean final train loss and test accuracy, and the depth x shortcut interaction
(analysis.interaction) between the shallowest and the deepest depth.

    python docs/tools/lever_table.py RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from analysis.interaction import interaction  # noqa: E402
from analysis.tables import fmt_ci  # noqa: E402


def cells(run: Path) -> list[str]:
    t = pd.read_parquet(run / "trials.parquet")
    t["cell"] = t["trial_id"].str.replace(r"-s\d+$", "", regex=True)
    out = []
    for cell, g in t.groupby("cell", sort=False):
        done = g[g["status"] == "completed"]
        out.append(f"| {run.name} | {cell} | {len(done)}/{len(g)} "
                   f"({(g['status'] == 'diverged').sum()} div.) | "
                   f"{done['final_train_loss'].mean():.3f} | "
                   f"{100 * done['final_test_acc'].mean():.1f} |")
    return out


def did(run: Path) -> list[str]:
    t = pd.read_parquet(run / "trials.parquet")
    i = interaction(t, "final_train_loss")
    i = i[i["depth"] == i["depth"].max()]
    out = []
    for _, r in i.iterrows():
        scale = r.get("branch_scale", "")
        out.append(f"| {run.name} | {r['model']} {r['base_depth']} -> {r['depth']} "
                   f"(residual {scale}) | {r['plain_delta']:+.3f} | {r['residual_delta']:+.3f} | "
                   f"{fmt_ci(r['did'], r['ci_lo'], r['ci_hi'], 3)} | {r['p_value']:.3g} "
                   f"({r['method']}, n={r['n_seeds']}) |")
    return out


if __name__ == "__main__":
    runs = [Path(a) for a in sys.argv[1:]]
    print("| run | cell | completed | train loss | test acc % |\n| --- | --- | --- | ---: | ---: |")
    for r in runs:
        print("\n".join(cells(r)))
    print("\n| run | depths | plain change | residual change | DiD (95% CI) | p (raw) |\n"
          "| --- | --- | ---: | ---: | --- | --- |")
    for r in runs:
        print("\n".join(did(r)))
