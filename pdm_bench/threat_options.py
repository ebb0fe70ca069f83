"""The ``run`` options of the white- and black-box threat models (C&W-wb budget, attacker's KDE, proxy)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import click

from pdm_bench.errors import UserError

if TYPE_CHECKING:
    from pdm_bench.results import ResultRow
    from pdm_bench.threat_models.common import Evaluation, ThreatModel

ThreatRunner = Callable[..., "tuple[list[ResultRow], str]"]


def white_box_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add the C&W-wb and proxy options to ``command`` (they reach it as ``wb_*`` / ``proxy_*`` keywords)."""
    options = [
        click.option("--cw-iterations", "wb_max_iter", type=int, default=None,
                     help="C&W-wb: Adam steps per binary-search step (one fixed budget instead of the schedule)."),
        click.option("--cw-search-steps", "wb_binary_search_steps", type=int, default=None,
                     help="C&W-wb: binary-search steps on the constant (one fixed budget instead of the schedule)."),
        click.option("--cw-initial-const", "wb_initial_const", type=float, default=None,
                     help="C&W-wb: first constant c (one fixed budget instead of the schedule)."),
        click.option("--cw-learning-rate", "wb_learning_rate", type=float, default=None,
                     help="C&W-wb: Adam step size (one fixed budget instead of the schedule)."),
        click.option("--wb-kde-points", "wb_kde_points", type=int, default=100, show_default=True,
                     help="Kernel points per class in the attacker's differentiable KDE."),
        click.option("--wb-threshold", "wb_threshold", type=click.Choice(["median", "clean"]), default="median",
                     show_default=True,
                     help="Density the attack must reach: the target class's median (Pang) or the clean image's (Carlini)."),
        click.option("--proxy-depth", "proxy_depth", type=int, default=None,
                     help="Black box: the proxy ResNet's depth 6n+2 [default: quick 8, paper 32]."),
        click.option("--proxy-epochs", "proxy_epochs", type=int, default=None,
                     help="Black box: distillation epochs [default: the target's]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


_FLAGS = {"max_iter": "--cw-iterations", "binary_search_steps": "--cw-search-steps",
          "initial_const": "--cw-initial-const", "learning_rate": "--cw-learning-rate", "kde_points": "--wb-kde-points",
          "proxy_depth": "--proxy-depth", "proxy_epochs": "--proxy-epochs"}


def _check_positive(name: str, value: float | None, *, integer: bool) -> None:
    if value is None:
        return
    if integer and value <= 0:
        raise UserError(f"{_FLAGS[name]} must be a positive integer, got {value}")
    if not integer and not (value > 0 and math.isfinite(value)):
        raise UserError(f"{_FLAGS[name]} must be a positive number, got {value}")


@dataclass(frozen=True)
class WhiteBoxOptions:
    """What ``run --threat white|black`` was given beyond the shared options."""

    max_iter: int | None = None
    binary_search_steps: int | None = None
    initial_const: float | None = None
    learning_rate: float | None = None
    kde_points: int = 100
    threshold: str = "median"
    proxy_depth: int | None = None
    proxy_epochs: int | None = None

    @classmethod
    def pop(cls, options: dict[str, Any]) -> WhiteBoxOptions:
        """Take this class's keywords (``wb_*``, ``proxy_*``) out of a click command's ``options``."""
        values = {}
        for f in fields(cls):
            key = f.name if f.name.startswith("proxy_") else f"wb_{f.name}"
            values[f.name] = options.pop(key)
        return cls(**values)

    def schedule(self) -> tuple[Any, ...]:
        """The default budget schedule, or the one budget the ``--cw-*`` options fix (unset ones from its first rung)."""
        from pdm_bench.threat_models.white import DEFAULT_SCHEDULE

        for name in ("max_iter", "binary_search_steps", "kde_points", "proxy_depth", "proxy_epochs"):
            _check_positive(name, getattr(self, name), integer=True)
        for name in ("initial_const", "learning_rate"):
            _check_positive(name, getattr(self, name), integer=False)
        given = {name: getattr(self, name) for name in ("max_iter", "binary_search_steps", "initial_const", "learning_rate")
                 if getattr(self, name) is not None}
        return (replace(DEFAULT_SCHEDULE[0], **given),) if given else DEFAULT_SCHEDULE

    def runner(self, threat: ThreatModel) -> ThreatRunner | None:
        """A function ``(evaluation, progress=...) -> (rows, table)`` for white or black; None for gray."""
        from pdm_bench.threat_models.common import ThreatModel

        if threat is ThreatModel.GRAY:
            return None
        schedule = self.schedule()
        common = {"schedule": schedule, "kde_points": self.kde_points, "threshold": self.threshold}
        if threat is ThreatModel.WHITE:
            from pdm_bench.threat_models.white import run_white, white_table

            def run_white_box(ev: Evaluation, *, progress: bool = False) -> tuple[list[ResultRow], str]:
                rows = run_white(ev, **common)
                return rows, white_table(rows)

            return run_white_box
        from pdm_bench.threat_models.black import black_table, run_black

        def run_black_box(ev: Evaluation, *, progress: bool = False) -> tuple[list[ResultRow], str]:
            rows = run_black(ev, proxy_depth=self.proxy_depth, proxy_epochs=self.proxy_epochs, progress=progress,
                             **common)
            return rows, black_table(rows)

        return run_black_box
