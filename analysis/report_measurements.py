"""The report's "Measurements" section: the figures and tables each measurement
registers (``ablations.measurements``), drawn from its merged results
``RESULTS/measurements/<name>.parquet``.

One report entry per ``FigureSpec`` and per ``TableSpec`` of every measurement whose
file is there, each made in isolation like every other entry of ``analysis.report``
(a figure that raises is a "could not draw" line, not a crash). A file that cannot
be read is one "input" failure that costs only its own measurement's entries; a
file of a measurement that is not registered is named in the section and left
out. Rows are restricted to the report's trials (a ``--where`` view).

Also: when ``measurements/responses.parquet`` is there, the report's
``layer_response_std`` figure draws He et al.'s responses from it (``response_rows``,
captioned as their Fig. 7) instead of the block outputs of ``layers.parquet`` (after the
addition: a different quantity, captioned so by ``analysis.report``).

No torch: the registry and the measurement modules import it only inside the
functions that measure.
"""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

SECTION = "Measurements"
FOLDER = "measurements"
RESPONSES_CAPTION = (
    "Std of each 3x3 conv's output after BN, before the addition (He et al. 2016, Fig. 7), "
    "{how}; MLPs: each Linear's output after its norm; from measurements/responses.parquet, "
    "{when}, in network order and sorted by magnitude; median over seeds; trials that did "
    "not complete are left out and named in the panel.")
PER_CHANNEL = "per channel over images and positions, averaged over channels"
WHOLE_TENSOR = ("over every element of the output at once (an old file, measured before "
                "the per-channel std existed)")


def files(run_dir) -> dict[str, Path]:
    """``{name: path}`` of the merged measurement files in ``run_dir``."""
    return {p.stem: p for p in sorted((Path(run_dir) / FOLDER).glob("*.parquet"))}


def _registry() -> dict:
    from ablations import measurements
    return {n: measurements.get(n) for n in measurements.names()}


def _of_trials(df: pd.DataFrame, trials: pd.DataFrame | None) -> pd.DataFrame:
    """``df``'s rows of the report's trials (all of them unless a view filtered them)."""
    if trials is None or "trial_id" not in trials or "trial_id" not in df:
        return df
    return df[df["trial_id"].isin(set(trials["trial_id"]))].reset_index(drop=True)


def item_name(measurement: str, name: str) -> str:
    """A figure's or table's file name: its own, prefixed with the measurement's name
    unless it starts with it (``lesion_by_unit``; a table "summary" of lesion:
    ``lesion_summary``), so no two measurements' items share files."""
    return name if name.startswith(measurement) else f"{measurement}_{name}"


def entries(c, guard) -> list[tuple[str, object]]:
    """``[(kind, _Entry)]``: every figure, then every table, of each measurement with a
    readable file, in file-name order. Each file is read once, here."""
    from analysis.report import _Entry
    present = files(c.run_dir)
    if not present:
        return []
    registry = guard.run("input", "the measurement registry", _registry) or {}
    out = []
    for name, path in present.items():
        m = registry.get(name)
        if m is None:
            continue  # named in the section (unregistered)
        df = guard.run("input", f"{FOLDER}/{path.name}",
                       lambda p=path: _of_trials(pd.read_parquet(p), c.trials))
        if df is None:
            continue
        out += [("figure", _Entry(item_name(name, f.name), lambda _: True,
                                  lambda c, f=f, df=df: f.draw(df, c.look), f.caption))
                for f in m.figures]
        out += [("table", _Entry(item_name(name, t.name), lambda _: True,
                                 lambda c, t=t, df=df: t.make(df), t.caption))
                for t in m.tables]
    return out


def section(run_dir, items: list, guard, rel):
    """The "Measurements" section: one line per measurement file (its summary, or why
    it is not shown), then its items; empty when there is no measurement file."""
    from analysis.report import _Section, _figure_section, _item_sections, _table_section
    present = files(run_dir)
    if not present and not items:
        return _Section([], [])
    registry = guard.run("section", "measurement summaries", _registry) or {}
    lines = [f"{n}: {registry[n].summary}" if n in registry else
             f"{n}: {FOLDER}/{p.name} has no registered measurement of that name; not shown"
             for n, p in present.items()]
    out = _item_sections(guard, SECTION, items,
                         lambda i, r: (_figure_section if i.kind == "figure"
                                       else _table_section)(i, r), rel)
    esc = html.escape
    out.md[2:2] = [f"- {w}" for w in lines] + [""]
    out.html[1:1] = ["<ul>" + "".join(f"<li>{esc(w)}</li>" for w in lines) + "</ul>"]
    return out


# --------------------------------------------------------------------------- responses

def has_responses(c) -> bool:
    return (Path(c.run_dir) / FOLDER / "responses.parquet").is_file()


def response_rows(c) -> tuple[pd.DataFrame, str, str]:
    """``(layers-shaped act_std rows, when, y label)`` for ``figures.layer_response_std``
    from ``measurements/responses.parquet`` (``responses.responses_as_layers``: the
    per-channel std, or an old file's whole-tensor one): "late" when trained networks
    were measured, else "init"."""
    from ablations.measurements.responses import responses_as_layers, shown
    df = _of_trials(pd.read_parquet(Path(c.run_dir) / FOLDER / "responses.parquet"), c.trials)
    rows = responses_as_layers(df, c.layers, c.trials)
    return rows, "late" if (rows["phase"] == "train").any() else "init", shown(df)[2]


def responses_caption(c) -> str:
    from ablations.measurements.responses import CHANNEL, shown
    try:
        df = pd.read_parquet(Path(c.run_dir) / FOLDER / "responses.parquet")
        trained = (df["when"] == "final").any()
        per_channel = shown(df)[1] == CHANNEL
    except Exception:  # noqa: BLE001  the figure's own read names the damage
        trained, per_channel = True, True
    return RESPONSES_CAPTION.format(when="trained networks" if trained else "at init",
                                    how=PER_CHANNEL if per_channel else WHOLE_TENSOR)
