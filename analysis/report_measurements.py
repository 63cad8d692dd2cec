"""The report's "Measurements" section: the figures and tables of each measurement's view
(``analysis.views``), drawn from its merged results ``RESULTS/measurements/<name>.parquet``.

Importing this module registers, in ``analysis.registry``, the section (its intro: one
line per measurement file, the measurement's summary or why it is not shown) and a
provider of its items: one per ``FigureSpec`` and per ``TableSpec`` of the view of every
registered measurement (``ablations.measurements``) whose file is there, each made in
isolation like every other report item (a figure that raises is a "could not draw"
line, not a crash). A file that cannot be read is one "input" failure that costs only
its own measurement's items; a file of a measurement that is not registered is named in
the section and left out. Rows are restricted to the report's trials (a ``--where``
view).

Also ``LAYER_RESPONSE_STD``, the report's ``layer_response_std`` figure
(``analysis.report_items`` registers it among its figures): when
``measurements/responses.parquet`` is there it draws He et al.'s responses from it
(``analysis.views.responses.responses_as_layers``, captioned as their Fig. 7); else the
block outputs of ``layers.parquet`` (after the addition: a different quantity, and
captioned so).

No torch: the measurement registry imports it only inside the functions that measure.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import figures
from analysis.registry import (Provider, ReportItem, has_stat, register_provider,
                               register_section)

SECTION = "Measurements"
FOLDER = "measurements"
RESPONSES = "responses"  # the measurement whose file replaces layer_response_std's rows
RESPONSES_CAPTION = (
    "Std of each 3x3 conv's output after BN, before the addition (He et al. 2016, Fig. 7), "
    "{how}; MLPs: each Linear's output after its norm; from measurements/responses.parquet, "
    "{when}, in network order and sorted by magnitude; median over seeds; trials that did "
    "not complete are left out and named in the panel.")
PER_CHANNEL = "per channel over images and positions, averaged over channels"
WHOLE_TENSOR = ("over every element of the output at once (an old file, measured before "
                "the per-channel std existed)")
BLOCK_OUTPUT_CAPTION = (
    "Block output std: the std of the stem's, each block's and the classifier's output over "
    "the whole batch (a block's: after the addition of branch and shortcut, and a "
    "post-activation ResNet block's final ReLU), from layers.parquet ({when}), in network "
    "order and sorted by magnitude; not He et al.'s Fig. 7, whose responses are the 3x3 "
    "convs' outputs after BN, before the ReLU and the addition (the responses measurement); "
    "median over seeds; trials that did not complete are left out and named in the panel.")


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


def _items(c, guard) -> list[ReportItem]:
    """Every figure, then every table, of each registered measurement with a readable
    file, in file-name order. Each file is read once, here."""
    from analysis import views
    present = files(c.run_dir)
    if not present:
        return []
    registry = guard.run("input", "the measurement registry", _registry) or {}
    out = []
    for name, path in present.items():
        if name not in registry:
            continue  # named in the section's intro (unregistered)
        df = guard.run("input", f"{FOLDER}/{path.name}",
                       lambda p=path: _of_trials(pd.read_parquet(p), c.trials))
        if df is None:
            continue
        shown = guard.run("input", f"the view of {name}",
                          lambda n=name: (views.figures(n), views.tables(n)))
        if shown is None:
            continue
        out += [ReportItem("figure", item_name(name, f.name), lambda _: True,
                           lambda c, f=f, df=df: f.draw(df, c.look), f.caption, SECTION)
                for f in shown[0]]
        out += [ReportItem("table", item_name(name, t.name), lambda _: True,
                           lambda c, t=t, df=df: t.make(df), t.caption, SECTION)
                for t in shown[1]]
    return out


def _intro(c, guard) -> list[str]:
    """One line per measurement file: its measurement's summary, or why it is not shown."""
    present = files(c.run_dir)
    if not present:
        return []
    registry = guard.run("section", "measurement summaries", _registry) or {}
    return [f"{n}: {registry[n].summary}" if n in registry else
            f"{n}: {FOLDER}/{p.name} has no registered measurement of that name; not shown"
            for n, p in present.items()]


# --------------------------------------------------------------------------- layer_response_std

def _responses_file(c) -> Path:
    return Path(c.run_dir) / FOLDER / f"{RESPONSES}.parquet"


def has_responses(c) -> bool:
    return _responses_file(c).is_file()


def response_rows(c) -> tuple[pd.DataFrame, str, str]:
    """``(layers-shaped act_std rows, when, y label)`` for ``figures.layer_response_std``
    from ``measurements/responses.parquet`` (``responses_as_layers``: the per-channel
    std, or an old file's whole-tensor one): "late" when trained networks were
    measured, else "init"."""
    from analysis.views.responses import responses_as_layers, shown
    df = _of_trials(pd.read_parquet(_responses_file(c)), c.trials)
    rows = responses_as_layers(df, c.layers, c.trials)
    return rows, "late" if (rows["phase"] == "train").any() else "init", shown(df)[2]


def responses_caption(c) -> str:
    from analysis.views.responses import CHANNEL, shown
    try:
        df = pd.read_parquet(_responses_file(c))
        trained = (df["when"] == "final").any()
        per_channel = shown(df)[1] == CHANNEL
    except Exception:  # noqa: BLE001  the figure's own read names the damage
        trained, per_channel = True, True
    return RESPONSES_CAPTION.format(when="trained networks" if trained else "at init",
                                    how=PER_CHANNEL if per_channel else WHOLE_TENSOR)


def _std_when(c) -> str:
    return "late" if has_stat(c.layers, "act_std", "train") else "init"


def response_std(c):
    """He et al. Fig. 7 from measurements/responses.parquet (the 3x3 convs after BN, before
    the ReLU and the addition) when it is there; else, under the same name, the block
    outputs in layers.parquet (after the addition: not Fig. 7's quantity, and labelled so)."""
    if has_responses(c):
        rows, when, ylabel = response_rows(c)
        return figures.layer_response_std(rows, c.look, when=when, trials=c.trials,
                                          ylabel=ylabel)
    return figures.layer_response_std(c.layers, c.look, when=_std_when(c), trials=c.trials)


def _response_std_caption(c) -> str:
    if has_responses(c):
        return responses_caption(c)
    return BLOCK_OUTPUT_CAPTION.format(
        when="end of training" if _std_when(c) == "late" else "at init")


LAYER_RESPONSE_STD = ReportItem(
    "figure", "layer_response_std",
    lambda c: has_stat(c.layers, "act_std") or has_responses(c), response_std,
    _response_std_caption)

register_section(SECTION, _intro)
register_provider(Provider("measurement files", "input", _items, SECTION))
