"""The text of report.md and report.html: ``write_reports``.

In order: the title, the problems of the build (``render.problems_section``), the
status totals, the training budget against He et al.'s schedule, the findings
(``analysis.findings``), the spec, the environment, the plan and status table, the
tables and the figures (``analysis.report_items``), each further section of
``analysis.registry`` (the measurements), and the W&B runs. Each part is rendered in
isolation (``render.guarded``).
"""
from __future__ import annotations

import datetime as _dt
import html
import shlex
from pathlib import Path

import pandas as pd

from ablations.status import Status
from ablations import levels
from ablations.where import where_slug
from analysis import contrasts as _contrasts
from analysis import budget, findings, findings_training, multiplicity, registry, stats, tuning
from analysis.failures import Guard
from analysis.registry import ReportContext
from analysis.render import (Section, empty, guarded, html_table, item_sections,
                             list_section, page, pairs_section, problems_section)
from analysis.report_items import depth_sweep, multi_factor
from analysis.report_runner import MadeItem
from ablations.files import write_text
from analysis.tables import shown_factors, to_markdown, without_redundant_model


# ----------------------------------------------------------------- the spec, environment, W&B

def spec_lines(spec: dict) -> list[tuple[str, str]]:
    s = spec.get("spec", {})
    if not s:
        return [("spec", "spec.json missing or unreadable: regenerated from the Parquet "
                         "files alone")]
    t = s.get("train") or {}
    lines = [("name", str(s.get("name"))), ("mode", str(s.get("mode"))),
             ("families", ", ".join(map(str, s.get("families") or [])) or "—"),
             ("models", ", ".join(map(str, s.get("models") or [])) or "—"),
             ("depths", ", ".join(map(str, s.get("depths") or []))),
             ("residual", str(s.get("residual"))), ("seeds", str(s.get("seeds")))]
    if s.get("recipe"):  # absent in folders from before recipes: the replicated article's
        lines.append(("recipe", str(s["recipe"])))
    levels = [f"{n} {','.join(map(str, lv))}" for n, lv in s.get("factors") or []]
    levels += [f"{fam}: {n} {','.join(map(str, lv))}"
               for fam, lvs in s.get("family_factors") or [] for n, lv in lvs]
    if levels:
        lines.append(("factor levels", "; ".join(levels)))
    if s.get("mode") == "train" and t:
        # synthetic data is made in memory: its --data-root was never read
        where = "" if t.get("dataset") == "synthetic" or not t.get("data_root") \
            else f" ({t['data_root']})"
        lines += [("data", f"{t.get('dataset')}{where}, "
                           f"subset {t.get('subset')}, val fraction {t.get('val_fraction')}"),
                  ("schedule", f"{t.get('epochs')} epochs, SGD lr {t.get('lr')} momentum "
                               f"{t.get('momentum')} wd {t.get('weight_decay')}"
                               + (f" on {'every parameter' if t['decay'] == 'all' else 'weights only'}"
                                  if t.get("decay") else "") + ", batch "
                               f"{t.get('batch_size')}, milestones {t.get('milestones')}")]
    if s.get("tune"):
        lines.append(("tuning", f"Optuna per cell: {', '.join(s['tune'])}, "
                                f"{s.get('samples')} samples per cell"))
    for inv in spec.get("invocations") or []:
        argv = inv.get("argv") or []
        cmd = "python sweep.py " + (argv if isinstance(argv, str) else shlex.join(map(str, argv)))
        lines.append((f"command ({inv.get('kind')}, {inv.get('time')})", cmd))
    for sk in spec.get("skipped") or []:
        lines.append(("skipped cell", f"{sk.get('cell')}: {sk.get('reason')}"))
    return lines


def env_lines(spec: dict, trials: pd.DataFrame | None) -> list[tuple[str, str]]:
    env = spec.get("environment") or {}
    lines = []
    if env:
        lines += [("git commit", str(env.get("git_commit"))), ("python", str(env.get("python"))),
                  ("platform", str(env.get("platform"))),
                  ("packages", ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())),
                  ("CPUs", str(env.get("cpu_count"))),
                  ("CUDA devices", ", ".join(map(str, env.get("cuda_devices") or [])) or "none")]
    if trials is not None and "device" in trials:
        devs = trials["device"].dropna().astype(str).value_counts()
        lines.append(("trials ran on", ", ".join(f"{d} ({n})" for d, n in devs.items()) or "—"))
    return lines or [("environment", "not recorded (no usable spec.json)")]


def wandb_lines(run_dir: Path, trials: pd.DataFrame | None, spec: dict | None = None
                 ) -> list[str]:
    lines = []
    url = (spec or {}).get("wandb_report_url")  # recorded by analysis.wandb_publish
    if url:
        lines.append(f"W&B report: {url}")
    elif (run_dir / "wandb_report.json").is_file():
        lines.append(f"W&B report: not published (its spec: {run_dir / 'wandb_report.json'}); "
                     f"publish with: python -m analysis {run_dir} --wandb-report ENTITY/PROJECT")
    if trials is not None and "wandb" in trials:
        runs = trials[["trial_id", "wandb"]].dropna()
        runs = runs[runs["wandb"].astype(str).str.len() > 0]
        for tid, ref in runs.itertuples(index=False):
            lines.append(f"{tid}: {ref}")
    offline = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*") if p.is_dir())
    if offline:
        lines.append(f"{len(offline)} offline run folder(s) under {run_dir / 'wandb'}; upload with "
                     f"`wandb sync {run_dir / 'wandb'}/offline-run-*`")
    return lines or ["no W&B runs recorded (--wandb disabled)"]


def status_frame(trials: pd.DataFrame | None) -> pd.DataFrame | None:
    if trials is None or not len(trials):
        return None
    s = stats.status_counts(trials)
    s.insert(3, "variant", s["residual"].map({True: "residual", False: "plain"}).fillna(""))
    hidden = [n for n in levels.present(trials) if n != "residual"
              and n not in shown_factors(trials)]  # one level throughout: not shown
    s = without_redundant_model(s.drop(columns=["residual", *hidden]))
    if not s["n_pending"].any():
        s = s.drop(columns="n_pending")
    return s.rename(columns=lambda c: c.removeprefix("n_"))


# --------------------------------------------------------------------------- status and findings

def totals(trials: pd.DataFrame | None) -> Section:
    if trials is None or not len(trials):
        return empty()
    c = trials["status"].value_counts()
    text = (f"{len(trials)} trials: {int(c.get(Status.COMPLETED, 0))} completed, "
            f"{int(c.get(Status.DIVERGED, 0))} diverged, {int(c.get(Status.ERROR, 0))} errored"
            + (f", {int(c.get(Status.PENDING, 0))} pending" if c.get(Status.PENDING, 0) else ""))
    return Section([f"**{text}.**", ""], [f"<p><strong>{html.escape(text)}.</strong></p>"])


def findings_title(trials) -> str:
    first = ("the depth x residual interaction first; then "
             if trials is not None and "final_test_acc" in trials and depth_sweep(trials)
             else "")
    return (f"Findings ({first}each level minus its factor's baseline, paired by seed)"
            if multi_factor(trials)
            else f"Findings ({first}residual minus plain, paired by seed)")


def findings_section(guard: Guard, data: dict, spec: dict, trained: bool,
                     family: pd.DataFrame | None = None) -> Section:
    """The depth x residual interactions first (the headline), then the contrast
    findings, the survivorship warnings, what explains each failed cell and each cell that
    starts above chance. Each part runs in isolation: a failure is an entry in the list.
    ``family``: the report's multiplicity family (``build``: of the full trials)."""
    trials, layers, epochs = data.get("trials"), data.get("layers"), data.get("epochs")
    title = findings_title(trials)
    lines: list[str] = []
    failed: list[str] = []

    def part(name, fn):
        got = guard.run("section", name, fn,
                        on_failure=lambda f: failed.append(f.entry))
        lines.extend(got or [])

    tag = (guard.run("section", "budget tag", lambda: budget.budget_text(trials, spec)[1])
           or "") if trained else ""
    if trained:
        part("interaction findings",
             lambda: findings.interaction_findings(trials, family, budget_tag=tag))
        part("findings", lambda: findings.contrast_findings(trials, family=family,
                                                            budget_tag=tag)[0])
        part("survivorship findings",
             lambda: findings.survivorship_findings(trials, budget_tag=tag))
    stated = list(lines)
    if not lines:  # a probe sweep: no contrasts, only what explains its failures
        title = "Findings"
    part("failure findings", lambda: findings_training.failure_findings(trials, layers))
    warm = (spec.get("spec") or {}).get("train") or {}
    part("warmup findings", lambda: findings_training.warmup_findings(
        trials, epochs, int(warm.get("warmup_epochs") or 0) if isinstance(warm, dict) else 0))
    part("tuning findings", lambda: findings_training.tuning_findings(data.get("tuning"),
                                                             tuning.search_ranges(spec)))
    if not lines and not failed:
        return empty()
    notes = []
    if any("Holm p = " in w for w in stated):
        notes.append(guard.run("section", "findings note",
                               lambda: findings.adjustment_note(
                                   family if family is not None
                                   else multiplicity.report_family(trials))) or "")
    if any("means only" in w for w in stated):
        notes.append(_contrasts.MEANS_ONLY_WHY)
    note = " ".join(n for n in notes if n)
    esc = html.escape
    md = [f"## {title}", ""] + ([note, ""] if note else []) + [f"- {w}" for w in lines] \
        + [f"- **{e}**" for e in failed] + [""]
    part_html = ([f"<h2>{esc(title)}</h2>"] + ([f"<p>{esc(note)}</p>"] if note else [])
            + ["<ul>" + "".join(f"<li>{esc(w)}</li>" for w in lines)
               + "".join(f'<li class="failed">{esc(e)}</li>' for e in failed) + "</ul>"])
    return Section(md, part_html)


def budget_section(trials, spec: dict, trained: bool) -> Section:
    """Near the top of a trained report: the training budget against He et al.'s
    schedule (``budget.budget_text``), or that nothing recorded it."""
    if not trained or trials is None or not len(trials):
        return empty()
    text, _ = budget.budget_text(trials, spec)
    text = ("Budget: " + text) if text else (
        "Budget: not recorded (trials.parquet has no steps column and spec.json no train "
        "settings): the findings cannot say how far into training they are.")
    return Section([f"**{text}.**" if not text.endswith(".") else f"**{text}**", ""],
                   [f"<p><strong>{html.escape(text)}</strong></p>"])


def status_section(trials) -> Section:
    status = status_frame(trials)
    if status is None:
        return empty()
    return Section(["## Plan and status", "", to_markdown(status)],
                   ["<h2>Plan and status</h2>" + html_table(status)])


# --------------------------------------------------------------------------- the two reports

def write_reports(ctx: ReportContext, spec: dict, data: dict, items: list[MadeItem],
                  where: dict, guard: Guard) -> list[str]:
    """report.md and report.html in ``ctx.out``, every section in isolation; a section
    that raises keeps its heading and names the failure. A "Problems" section near the
    top lists every failure of the build, the sections' own included. The items'
    sections: "Tables", "Figures", then each section of ``analysis.registry`` with its
    intro lines (``Section.intro``), shown when it has lines or items."""
    out, run_dir, trained, family = ctx.out, ctx.run_dir, ctx.trained, ctx.family
    trials = data.get("trials")
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    title = guard.run("section", "title",
                      lambda: str(spec.get("spec", {}).get("name") or run_dir.name)) or run_dir.name
    title = f"resablate sweep {title}" + (f" (view: {where_slug(where)})" if where else "")

    def rel(p):
        return str(Path(p).relative_to(out))

    def shown(kind=None, section=registry.MAIN):
        return [i for i in items if i.section == section and kind in (None, i.kind)]

    def registered(s):
        def render():
            intro = s.intro(ctx, guard) if s.intro is not None else []
            if not intro and not shown(section=s.title):
                return empty()
            return item_sections(guard, s.title, shown(section=s.title), rel, intro)
        return guarded(guard, s.title.lower(), s.title, render)

    esc = html.escape
    head = Section([f"# {title}", "", f"Generated {stamp} by `python -m analysis {run_dir}` "
                    "from the stored results alone.", ""],
                   [f"<h1>{esc(title)}</h1>",
                    f"<p>Generated {esc(stamp)} by <code>python -m analysis "
                    f"{esc(str(run_dir))}</code> from the stored results alone.</p>"])
    body = [
        guarded(guard, "status totals", None, lambda: totals(trials)),
        guarded(guard, "budget", None, lambda: budget_section(trials, spec, trained)),
        guarded(guard, "findings section",
                guard.run("section", "findings title", lambda: findings_title(trials))
                or "Findings",
                lambda: findings_section(guard, data, spec, trained, family)),
        guarded(guard, "spec", "Spec", lambda: pairs_section("Spec", spec_lines(spec))),
        guarded(guard, "environment", "Environment",
                lambda: pairs_section("Environment", env_lines(spec, trials))),
        guarded(guard, "plan and status", "Plan and status", lambda: status_section(trials)),
        item_sections(guard, "Tables", shown("table"), rel),
        item_sections(guard, "Figures", shown("figure"), rel),
        *[registered(s) for s in registry.sections()],
        guarded(guard, "W&B runs", "Weights & Biases",
                lambda: list_section("Weights & Biases", wandb_lines(run_dir, trials, spec))),
    ]
    # Last, so that it also names the failures of the sections above.
    md, page_html = page(title, [head, problems_section(guard.failures), *body])
    return [write_text(out / "report.md", md), write_text(out / "report.html", page_html)]
