"""Adding a family = its own module + its registration: the toy ``vgg`` family
(tests/models/toy_vgg.py, a small VGG-style CNN with and without shortcuts) goes
through the factor registry, a probe, and a short training sweep through sweep.py and
Ray with measurements and the report, without a line about it anywhere else. A family
that lacks a part of the interface fails with a TypeError naming it."""
import dataclasses
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn

import models
import sweep
from ablations import factors, results, weights
from ablations.arguments import spec_from_args
from ablations.plan import expand
from ablations.trial import run_group
from models import units
from models.interface import Network

ROOT = Path(__file__).resolve().parents[2]
TOY = "tests.models.toy_vgg"


@pytest.fixture
def vgg():
    """The toy family registered in this process, and gone afterwards, pass or fail."""
    sys.modules.pop(TOY, None)
    yield importlib.import_module(TOY)
    models.unregister("vgg")
    sys.modules.pop(TOY, None)


def test_the_factor_registry_reads_what_the_family_declares(vgg):
    assert "vgg" in models.list_families()
    assert "vgg" in factors.get("norm").families and factors.get("norm").default["vgg"] == "batch"
    assert "vgg" in factors.get("activation").families
    assert "vgg" not in factors.get("shortcut").families
    assert "vgg" not in factors.get("branch_scale").families
    lv = factors.default_levels("vgg")
    assert lv["residual"] == "residual" and lv["block"] == lv["shortcut"] == factors.NA
    # a level the family does not build is not crossed with it; none at all is an error
    assert [v["norm"] for v in factors.variants("vgg", {"norm": ("batch", "layer")})] == \
        ["batch"]
    with pytest.raises(ValueError, match="no family of this sweep .vgg. builds level 'layer'"):
        factors.validate_requested({"norm": ("layer",)}, ("vgg",))
    factors.validate_requested({"norm": ("layer",)}, ("vgg", "mlp"))  # mlp builds it


@pytest.mark.parametrize("residual", [True, False])
def test_the_network_keeps_the_interface(vgg, residual):
    torch.manual_seed(0)
    net = models.create_model("vgg", depth=6, residual=residual).eval()
    assert isinstance(net, Network) and net.memory_format == torch.channels_last
    x = torch.randn(2, 3, 16, 16)
    h = net.stem(x)
    for _, unit in net.units():  # forward == head(units(stem(x))), each unit as split/join
        torch.testing.assert_close(units.join(unit, *units.split(unit, h)), unit(h))
        h = unit(h)
    torch.testing.assert_close(net.head(h), net(x))
    assert [units.has_skip(u) for _, u in net.units()] == [residual, residual, False, residual]
    assert [units.deletable(u) for _, u in net.units()] == [True, True, False, True]
    assert [n for n, _, _ in net.response_taps()] == [f"blocks.{i}.bn" for i in range(4)]


def test_a_probe_sweep_runs_the_toy_family(vgg, tmp_path):
    argv = ["--families", "vgg", "--depths", "4", "--mode", "probe", "--seeds", "2",
            "--out", str(tmp_path), "--name", "probe", "--wandb", "disabled"]
    spec = spec_from_args(sweep.build_parser().parse_args(argv))
    trials, skipped = expand(spec)
    assert not skipped
    assert sorted(t.trial_id for t in trials) == [
        "vgg-4-plain-s0", "vgg-4-plain-s1", "vgg-4-residual-s0", "vgg-4-residual-s1"]
    for t in trials:
        run_group([t], spec, spec.run_dir)
    results.merge(spec.run_dir, trials)
    rows = pd.read_parquet(f"{spec.run_dir}/trials.parquet")
    assert set(rows.family) == {"vgg"} and rows.probe_loss.notna().all()
    assert set(rows.norm) == {"batch"} and set(rows.shortcut) == {factors.NA}
    layers = pd.read_parquet(f"{spec.run_dir}/layers.parquet")
    assert {"stem", "blocks.0", "blocks.1", "fc", "blocks.0.conv.weight"} <= set(layers.layer)


def test_a_family_without_a_part_fails_naming_it(vgg):
    @dataclasses.dataclass(frozen=True)
    class NoShape:  # a config without input_shape
        depth: int
        residual: bool = True
        num_classes: int = 10
        family: str = "bad"
        FACTORS = {}

        def build(self):
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))

        def layout(self):
            return "bad"

        def with_input(self, in_features, num_classes):
            return self
    with pytest.raises(TypeError, match="config class NoShape lacks input_shape"):
        models.register_family("bad", NoShape)
    # a config that registers, whose network is no models.interface.Network
    shaped = type("Shaped", (NoShape,), {"input_shape": (3, 32, 32)})
    shaped = dataclasses.dataclass(frozen=True)(shaped)
    models.register_family("bad", shaped)(lambda *, depth, **kw: shaped(depth=depth, **kw))
    try:
        with pytest.raises(TypeError, match="family 'bad' builds Sequential, which is not a "
                                            "models.interface.Network"):
            weights.initial(models.get_config("bad", depth=2), seed=0)
    finally:
        models.unregister("bad")

    class NoTaps(Network):  # a network that forgets its response taps: cannot be built
        def units(self):
            return []

        def head(self, x):
            return x

        def tap_points(self):
            return []
    with pytest.raises(TypeError, match="response_taps"):
        NoTaps()


@pytest.mark.slow
def test_a_training_sweep_of_the_toy_family_through_ray(tmp_path):
    """sweep.py in its own process: the plug-in variable reaches the Ray workers."""
    env = {**os.environ, models.PLUGINS_ENV: TOY, "WANDB_MODE": "disabled"}
    cmd = [sys.executable, str(ROOT / "sweep.py"), "--smoke", "--families", "vgg",
           "--wandb", "disabled", "--out", str(tmp_path), "--name", "toy"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = tmp_path / "toy"
    rows = pd.read_parquet(run / "trials.parquet")
    assert sorted(rows.trial_id) == ["vgg-4-plain-s0", "vgg-4-residual-s0"]
    assert (rows.status == "completed").all()
    measured = {f.stem for f in (run / "measurements").glob("*.parquet")}
    assert {"lesion", "signal", "responses"} <= measured, measured
    resp = pd.read_parquet(run / "measurements" / "responses.parquet")
    assert set(resp.layer) == {"blocks.0.bn", "blocks.1.bn"}
    assert (run / "report.md").exists() and any((run / "figures").iterdir())
    assert sorted(f.name for f in (run / "features").glob("*.npz")) == \
        ["vgg-4-plain-s0.npz", "vgg-4-residual-s0.npz"]
