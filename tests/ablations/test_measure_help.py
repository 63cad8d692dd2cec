"""``python -m ablations.measure --help``: each option says its default once, in words
(no Python reprs); its metavar says what goes there; the options sit in the sections
measurements, resources and output; ``--where`` names every registered factor with its
levels and ``--measure`` every registered measurement."""
from __future__ import annotations

import pytest

from ablations import factors, measure, measurements
from tests.help_conventions import check_conventions, entries, help_of

SECTIONS = ("measurements", "resources", "output")


@pytest.fixture(scope="module")
def measure_help() -> str:
    return help_of("ablations.measure")


def test_the_help_keeps_the_conventions(measure_help):
    check_conventions(measure_help, measure.build_parser(), SECTIONS)
    for bad in ("ADDRESS", "CPUS_PER_TRIAL", "GPUS_PER_TRIAL", "DATA_ROOT", "(default ./"):
        assert bad not in measure_help
    found = entries(measure_help)
    assert found["--address"].startswith("--address HOST:PORT")
    assert found["--cpus-per-trial"].startswith("--cpus-per-trial CPUS ")
    assert found["--data-root"].startswith("--data-root DIR_OR_URI ")


def test_the_defaults_said_are_the_defaults_used(measure_help):
    found = entries(measure_help)
    args = measure.build_parser().parse_args(["results/x"])
    assert found["--where"].endswith("(default: every trial)") and args.where == []
    assert found["--out"].endswith("(default: ./NAME)") and args.out is None
    assert "(default: the sweep's own --measure set" in found["--measure"]
    assert args.measure is None and args.address is None and not args.redo
    parser = measure.build_parser()
    where = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
    assert where["measure"] == where["where"] == where["redo"] == "measurements"
    assert where["address"] == where["gpus_per_trial"] == where["data_root"] == "resources"
    assert where["out"] == "output"


def test_where_and_measure_name_the_registries(measure_help):
    found = entries(measure_help)
    for f in factors.all_factors():
        assert f"{f.name}={'/'.join(f.level_names)}" in found["--where"], f.name
    assert "activation=relu/gelu" in found["--where"]
    for name in measurements.names():
        assert name in found["--measure"], name
