"""The measurement views (analysis/views/__init__.py): each built-in measurement's figures
and tables found by its name, a third party's registered, none for an unknown name; the
measurement modules load neither matplotlib nor analysis, and the registry keeps its
order when a view imports its measurement first."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ablations import measurements
from analysis import views
from analysis.views import FigureSpec, TableSpec

ITEMS = {"lesion": (["lesion_by_unit", "lesion_vs_k"], ["lesion"]),
         "shattering": (["shattering_acf", "shattering_lag1"], ["shattering"]),
         "landscape": (["landscape_1d"], ["landscape"]),
         "landscape2d": (["landscape2d"], []),
         "responses": (["responses_std"], ["responses"]),
         "signal": (["signal_ratio", "signal_variance"], ["signal"])}


def test_every_builtin_measurement_has_its_view():
    builtin = [n for n in measurements.names()
               if measurements.get(n).fn.__module__.startswith(f"{measurements.__name__}.")]
    assert builtin == list(ITEMS)
    assert all(views.module_of(n) == f"analysis.views.{n}" for n in builtin)
    for name, (figures, tables) in ITEMS.items():
        assert all(isinstance(f, FigureSpec) and callable(f.draw) and f.caption
                   for f in views.figures(name))
        assert all(isinstance(t, TableSpec) and callable(t.make) and t.caption
                   for t in views.tables(name))
        assert ([f.name for f in views.figures(name)], [t.name for t in views.tables(name)]) \
            == (figures, tables)


def test_unknown_name_has_no_view():
    for name in ("no such measurement", "nosuch", "_private", "parts"):
        assert views.figures(name) == () == views.tables(name)
    assert views.module_of("nosuch") is None and views.module_of("a.b") is None


def test_register_view():
    fig = FigureSpec("curve", lambda df, look: None, "a curve.")
    table = TableSpec("summary", lambda df: None, "a table.")
    views.register_view("third_party", figures=[fig], tables=[table])
    try:
        assert views.figures("third_party") == (fig,) and views.tables("third_party") == (table,)
        with pytest.raises(ValueError, match="already has a view"):
            views.register_view("third_party")
    finally:
        views.unregister_view("third_party")
    assert views.figures("third_party") == ()
    with pytest.raises(ValueError, match="already has a view"):
        views.register_view("lesion", figures=[fig])  # a built-in view is not replaced
    assert [f.name for f in views.figures("lesion")] == ITEMS["lesion"][0]


def test_measurements_load_no_plotting_and_no_analysis():
    code = ("import sys; from ablations import measurements as m; m.load_builtins(); "
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
            "('matplotlib', 'analysis', 'torch')); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registry_order_when_a_view_is_imported_first():
    # a view imports its measurement's module (the column names), which registers it
    # before the others; the registry still lists the built-ins in BUILTINS order
    code = ("import analysis.views.signal, analysis.views.responses; "
            "from ablations import measurements as m; "
            f"assert m.names() == {list(ITEMS)}, m.names(); "
            "assert m.defaults() == ['lesion', 'shattering', 'responses', 'signal']")
    subprocess.run([sys.executable, "-c", code], check=True)
