"""Threat models and detectors as registered components: a plugin threat model (examples/noise_threat_plugin) and a
plugin detector (nearest class mean, defined here) through the CLI, the study and the report; their bad input."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

NOISE = Path(__file__).resolve().parents[1] / "examples" / "noise_threat_plugin" / "pdm_noise_threat.py"
CliResult = Any  # conftest.CliResult (conftest is not importable under --import-mode=importlib)

NEAREST_MEAN = '''
from dataclasses import dataclass

import torch

from pdm_bench.detectors import Detector


@dataclass(kw_only=True)
class NearestMean(Detector):
    """Minus the distance to the predicted class's mean training embedding."""

    name = "nearest_mean"
    description = "distance to the class mean (test plugin)"
    differentiable = True

    def fit(self, embeddings, labels, *, num_classes, seed):
        self.means = torch.stack([embeddings[labels == c].mean(0) for c in range(num_classes)])

    def score(self, embeddings, predicted):
        return -(embeddings - self.means.to(embeddings.device)[predicted]).norm(dim=1)

    torch_score = score
'''


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_dist: Callable[..., None]) -> Path:
    site = tmp_path / "site"
    fake_dist(site, "pdm-noise-threat", {"pdm_noise_threat.py": NOISE},
            {"pdm_bench.threat_models": {"noise": "pdm_noise_threat:UniformNoise"}})
    fake_dist(site, "pdm-nearest-mean", {"pdm_nearest_mean.py": NEAREST_MEAN},
            {"pdm_bench.detectors": {"nearest_mean": "pdm_nearest_mean:NearestMean"}})
    fake_dist(site, "pdm-fgm-l2", {"pdm_fgm_l2.py": L2_ATTACK}, {"pdm_bench.attacks": {"fgm-l2": "pdm_fgm_l2:FGM_L2"}})
    monkeypatch.syspath_prepend(str(site))
    return site


L2_ATTACK = """
from art.attacks.evasion import FastGradientMethod

from pdm_bench.threat_models.attack_specs import AttackSpec


def fgm_l2(classifier, *, targeted, batch_size):
    return FastGradientMethod(classifier, norm=2, eps=1.0, targeted=targeted, batch_size=batch_size)


FGM_L2 = AttackSpec(name="fgm-l2", family="fgm", params={"norm": 2, "eps": 1.0}, factory=fgm_l2)
"""


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_plugins_are_listed(plugins: Path, cli: Callable[..., CliResult]) -> None:
    listing = cli("list")
    assert listing.code == 0, listing.err
    assert "noise" in listing.out and "plugin from pdm-noise-threat 0.1.0" in listing.out and "eps=0.1" in listing.out
    assert "nearest_mean" in listing.out and "plugin from pdm-nearest-mean 0.1.0" in listing.out
    assert "fgm-l2" in listing.out and "fgm: norm=2, eps=1.0 [plugin from pdm-fgm-l2 0.1.0" in listing.out
    for section in ("Defenses:", "Detectors (--detector):", "Threat models (--threat):", "Gray-box attacks (--attacks):"):
        assert section in listing.out


def test_plugin_threat_and_detector_through_run_and_report(plugins: Path, tmp_path: Path,
                                                           cli: Callable[..., CliResult]) -> None:
    results = tmp_path / "results"
    common = ("--defense", "baseline", "--epochs", "2", "--n-samples", "40", "--no-progress", "--no-geometry",
              "--results-dir", str(results))
    noise = cli("run", "--threat", "noise", "-t", "eps=0.2", *common)
    assert noise.code == 0, noise.err
    assert "noise-0.2: flipped" in noise.out
    mine = cli("run", "--threat", "gray", "--attacks", "fgsm-0.1,fgm-l2", "--no-resiliency", "--detector", "nearest_mean", *common)
    assert mine.code == 0, mine.err
    rows = read_csv(results / "results.csv")
    assert {r["detector"] for r in rows if r["threat"] == "gray"} == {"nearest_mean"}
    assert any(r["threat"] == "noise" and r["attack"] == "noise-0.2" and r["metric"] == "auc" for r in rows)
    rerun = cli("run", "--threat", "noise", "-t", "eps=0.2", *common)  # resumes: nothing redone
    assert rerun.code == 0 and "already in" in rerun.out
    assert len(read_csv(results / "results.csv")) == len(rows)

    report = cli("report", "--results-dir", str(results), "--out", str(tmp_path / "report"))
    assert report.code == 0, report.err
    noise_table = read_csv(tmp_path / "report" / "noise_auc.csv")
    assert noise_table[0]["attack"] == "noise-0.2" and float(noise_table[0]["digits (quick) baseline"]) >= 0.0
    gray = read_csv(tmp_path / "report" / "table2_graybox_auc.csv")
    assert "digits (quick) baseline (nearest_mean)" in gray[0]  # the cell names its detector
    l2 = next(row for row in gray if row["attack"] == "fgm-l2")  # the plugin attack's row, measured
    assert 0.0 <= float(l2["digits (quick) baseline (nearest_mean)"]) <= 1.0
    assert "noise_auc" in (tmp_path / "report" / "report.html").read_text(encoding="utf-8")


def test_plugin_threat_in_a_study(plugins: Path, tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    results = tmp_path / "study"
    done = cli("paper", "--dataset", "digits", "--threats", "gray,noise", "--defenses", "baseline", "--train-only", "",
               "--attacks", "fgsm-0.1", "--no-resiliency", "--n-samples", "30", "--epochs", "2", "--no-progress",
               "--results-dir", str(results))
    assert done.code == 0, done.err
    assert (results / "report" / "noise_auc.csv").exists() and (results / "report" / "table2_graybox_auc.csv").exists()
    threats = {r["threat"] for r in read_csv(results / "results.csv")}
    assert {"model", "gray", "noise"} <= threats


@pytest.mark.parametrize(("args", "expected"), [
    (("run", "--threat", "nois"), "Unknown threat model 'nois'. Did you mean: noise?"),
    (("run", "--threat", "gray", "--detector", "nearest_men"), "Unknown detector 'nearest_men'. Did you mean: nearest_mean?"),
    (("run", "--threat", "noise", "-t", "eps=2"), "Bad options for threat model 'noise': eps must be in (0, 1], got 2.0"),
    (("run", "--threat", "noise", "-t", "epsilon=0.1"), "Unknown option of threat model 'noise' 'epsilon'"),
    (("run", "--threat", "noise", "--attacks", "cw"), "--attacks does not apply to threat model 'noise'"),
    (("run", "--threat", "white", "--attacks", "cw"), "--attacks does not apply to threat model 'white'"),
    (("run", "--threat", "gray", "--detector", "nearest_mean", "--bandwidth", "0.1"),
     "--bandwidth is an option of the kde detector, not of 'nearest_mean'"),
    (("paper", "--threats", "gray,nois"), "Unknown threat model 'nois'"),
])
def test_bad_component_input_is_one_line(plugins: Path, cli: Callable[..., CliResult], args: tuple[str, ...],
                                         expected: str) -> None:
    result = cli(*args, "--no-progress")
    assert result.code == 2
    assert expected in result.err and len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err


def test_white_and_black_box_attack_a_plugin_detector(plugins: Path, tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    """C&W-wb optimises the plugin's differentiable score (white box), or attacks the proxy and the plugin judges
    the transferred images (black box)."""
    results = tmp_path / "results"
    common = ("--defense", "baseline", "--epochs", "3", "--n-samples", "20", "--no-progress", "--no-geometry",
              "--detector", "nearest_mean", "--cw-iterations", "100", "--cw-search-steps", "2", "--results-dir", str(results))
    white = cli("run", "--threat", "white", *common)
    assert white.code == 0, white.err
    assert "detector nearest_mean's score" in white.out
    black = cli("run", "--threat", "black", "--proxy-epochs", "2", *common)
    assert black.code == 0, black.err
    rows = [r for r in read_csv(results / "results.csv") if r["metric"] != "finished"]
    value = {(r["threat"], r["attack"], r["metric"]): float(r["value"]) for r in rows}
    assert {r["detector"] for r in rows if r["threat"] in ("white", "black")} == {"nearest_mean"}
    # The density term works: C&W-wb ends closer to the target class's mean than plain C&W from the same start.
    assert value[("white", "cw-wb", "log_density_mean")] > value[("white", "cw", "log_density_mean")]
    assert value[("white", "cw-wb", "auc")] < value[("white", "cw", "auc")]  # and the detector sees it less
    assert 0.0 <= value[("black", "cw-wb", "success_rate")] <= 1.0 and ("black", "cw-wb", "proxy_agreement") in value


PRETRAINED = '''
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pdm_bench.contract import wrap
from pdm_bench.defenses.base import Defense


def network(in_channels, num_classes):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))


@dataclass(frozen=True, kw_only=True)
class PretrainedNet(Defense):
    name = "pretrained_net"
    description = "a small CNN loaded from a file (test plugin)"
    default_epochs = 0

    weights: str = ""

    def build_model(self, spec):
        net = network(spec.in_channels, spec.num_classes)
        if self.weights:
            net.load_state_dict(torch.load(self.weights, weights_only=True))
        return wrap(net, embedding="3")

    def loss(self, model, x, y, context):
        return F.cross_entropy(model.embed_and_logits(x)[1], y)
'''


def test_a_defense_brings_its_own_pretrained_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     fake_dist: Callable[..., None], cli: Callable[..., CliResult]) -> None:
    """A defense that builds its own architecture and loads weights: zero epochs by default (used as it is), or
    fine-tuned with --epochs; evaluated like any other."""
    import torch

    from pdm_bench.data import load_dataset

    site = tmp_path / "site"
    fake_dist(site, "pdm-pretrained-net", {"pdm_pretrained_net.py": PRETRAINED},
              {"pdm_bench.defenses": {"pretrained_net": "pdm_pretrained_net:PretrainedNet"}})
    monkeypatch.syspath_prepend(str(site))
    import pdm_pretrained_net  # type: ignore[import-not-found]

    torch.manual_seed(3)
    net = pdm_pretrained_net.network(1, 10)
    weights = tmp_path / "net.pt"
    torch.save(net.state_dict(), weights)
    data = load_dataset("digits")
    with torch.no_grad():
        expected = float((net(torch.as_tensor(data.x_test)).argmax(1).numpy() == data.y_test).mean())

    used = cli("train", "--defense", "pretrained_net", "-o", f"weights={weights}", "--no-progress")
    assert used.code == 0, used.err
    assert f"Clean test accuracy: {100 * expected:.2f}%" in used.out and "epoch 1/" not in used.out
    tuned = cli("train", "--defense", "pretrained_net", "-o", f"weights={weights}", "--epochs", "1", "--no-progress")
    assert tuned.code == 0 and "epoch 1/1" in tuned.out
    gray = cli("run", "--threat", "gray", "--defense", "pretrained_net", "-o", f"weights={weights}", "--attacks", "fgsm-0.1",
               "--no-resiliency", "--n-samples", "30", "--no-progress", "--results-dir", str(tmp_path / "results"))
    assert gray.code == 0, gray.err
    rows = read_csv(tmp_path / "results" / "results.csv")
    assert any(r["defense"] == "pretrained_net" and r["attack"] == "fgsm-0.1" and r["metric"] == "auc" for r in rows)
