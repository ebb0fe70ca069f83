"""The gray box's attacks as data (name, family, parameters; Appendix C of the paper), their registry (built-ins and
the entry-point group ``pdm_bench.attacks``), and the ART ``EvasionAttack`` each one builds."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from pdm_bench.errors import UserError, unknown_name_error
from pdm_bench.registry import Registry

if TYPE_CHECKING:
    import torch
    from art.attacks.attack import EvasionAttack
    from art.estimators.classification import PyTorchClassifier

ATTACK_ENTRY_POINT_GROUP = "pdm_bench.attacks"
# Our settings for the Adam C&W where a spec or budget leaves one open (cleverhans's defaults, batched, quiet); the
# class itself has ART's defaults, for drop-in use.
CW_ADAM_DEFAULTS: dict[str, Any] = {"learning_rate": 5e-3, "binary_search_steps": 5, "max_iter": 1000,
                                    "initial_const": 1e-2, "batch_size": 128, "verbose": False}
RESILIENCY_EPS: tuple[float, ...] = tuple(round(0.01 * k, 2) for k in range(1, 11))  # Figure 3's eps grid


class AttackBackend(str, Enum):
    """``torch``: our batched ports where ART's are slow or weak (C&W, JSMA); ``art``: ART's originals.

    With ``torch``, a C&W spec's ``solver`` picks the algorithm: ``adam`` (Carlini and Wagner's original, as in
    cleverhans) or ``line-search`` (ART's ``CarliniL2Method`` algorithm, ported).
    """

    TORCH = "torch"
    ART = "art"


@dataclass(frozen=True, kw_only=True)
class AttackSpec:
    """An attack as data: its family and parameters (Appendix C of the paper)."""

    name: str
    family: str  # fgsm, bim, cw, jsma, or a plugin's own
    params: dict[str, Any] = field(default_factory=dict)
    # A plugin's attack: (classifier, *, targeted, batch_size[, rng]) -> EvasionAttack; None for the built-in families.
    # A factory that takes ``rng`` gets a numpy Generator seeded from the run's seed; either way ``generate`` runs with
    # numpy's and Python's global random state seeded from it (pdm_bench.seeding), so a run id gives the same images.
    factory: Callable[..., EvasionAttack] | None = field(default=None, compare=False)


def build_attack(spec: AttackSpec, classifier: PyTorchClassifier, *, backend: AttackBackend, targeted: bool,
                 batch_size: int = 128, verbose: bool = False, seed: int = 0) -> EvasionAttack:
    """An ART ``EvasionAttack`` for ``spec`` against ``classifier``; a plugin factory that takes ``rng`` gets a
    generator seeded with ``seed``."""
    from art.attacks.evasion import BasicIterativeMethod, CarliniL2Method, FastGradientMethod, SaliencyMapMethod

    if spec.factory is not None:
        extra = {"rng": np.random.default_rng(seed)} if _takes(spec.factory, "rng") else {}
        return spec.factory(classifier, targeted=targeted, batch_size=batch_size, **extra)
    p = spec.params
    if spec.family == "fgsm":
        return FastGradientMethod(classifier, norm=np.inf, eps=p["eps"], targeted=targeted, batch_size=batch_size)
    if spec.family == "bim":
        return BasicIterativeMethod(classifier, eps=p["eps"], eps_step=p["eps"] / 10, max_iter=p.get("max_iter", 10),
                                    targeted=targeted, batch_size=batch_size, verbose=verbose)
    if spec.family == "cw":
        if backend is AttackBackend.ART:
            return CarliniL2Method(classifier, confidence=p["confidence"], targeted=targeted,
                                   binary_search_steps=p["binary_search_steps"], max_iter=p["max_iter"],
                                   batch_size=batch_size, verbose=verbose)
        from pdm_bench.threat_models.attacks import CarliniWagnerL2
        from pdm_bench.threat_models.cw_line_search import CarliniWagnerL2LineSearch

        if p.get("solver", "adam") == "adam":
            return CarliniWagnerL2(classifier, **{**CW_ADAM_DEFAULTS, "confidence": p["confidence"], "targeted": targeted,
                                                  "binary_search_steps": p["binary_search_steps"],
                                                  "max_iter": p["max_iter"], "batch_size": batch_size,
                                                  "verbose": verbose})
        return CarliniWagnerL2LineSearch(classifier, confidence=p["confidence"], targeted=targeted,
                                         binary_search_steps=p["binary_search_steps"], max_iter=p["max_iter"],
                                         batch_size=batch_size, verbose=verbose)
    if spec.family == "jsma":  # always targeted (random targets when none are given), as in ART
        if backend is AttackBackend.ART:
            return SaliencyMapMethod(classifier, theta=p["theta"], gamma=p["gamma"], batch_size=batch_size, verbose=verbose)
        from pdm_bench.threat_models.jsma import SaliencyMapTorch

        return SaliencyMapTorch(classifier, theta=p["theta"], gamma=p["gamma"], batch_size=batch_size, verbose=verbose)
    raise UserError(f"Attack '{spec.name}': expected a family fgsm, bim, cw or jsma or a factory, got {spec.family!r}")


def _takes(function: Callable[..., Any], name: str) -> bool:
    """Whether ``function`` accepts the keyword ``name`` (or any keyword)."""
    import inspect

    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def build_cw_attack(classifier: PyTorchClassifier, *, kde: Any = None, log_tau: torch.Tensor | None = None,
                    threshold: str = "median", **params: Any) -> EvasionAttack:
    """Targeted C&W L2 (Adam, the original algorithm) with ``params``; with ``kde``: C&W-wb against that KDE."""
    from pdm_bench.threat_models.attacks import CarliniWagnerL2

    settings = {**CW_ADAM_DEFAULTS, **params}
    if kde is None:
        return CarliniWagnerL2(classifier, targeted=True, **settings)
    from pdm_bench.threat_models.cw_kde import CarliniWagnerKDE

    return CarliniWagnerKDE(classifier, kde=kde, log_tau=log_tau, threshold=threshold, **settings)  # type: ignore[arg-type]


GRAY_ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec(name="fgsm-0.05", family="fgsm", params={"eps": 0.05}),
        AttackSpec(name="fgsm-0.1", family="fgsm", params={"eps": 0.1}),
        AttackSpec(name="bim-0.05", family="bim", params={"eps": 0.05, "max_iter": 10}),
        AttackSpec(name="bim-0.1", family="bim", params={"eps": 0.1, "max_iter": 10}),
        AttackSpec(name="cw", family="cw",
                   params={"confidence": 0.0, "binary_search_steps": 9, "max_iter": 10, "solver": "line-search"}),
        AttackSpec(name="cw-hc", family="cw",
                   params={"confidence": 10.0, "binary_search_steps": 9, "max_iter": 1000, "solver": "adam"}),
        AttackSpec(name="jsma", family="jsma", params={"theta": 1.0, "gamma": 0.1}),
    )
}
_EPS_ATTACK = re.compile(r"^(fgsm|bim)-(.+)$")


def parse_attack(name: str) -> AttackSpec:
    """A gray-box attack by name: one of ``GRAY_ATTACKS`` or ``fgsm-EPS`` / ``bim-EPS`` with EPS in (0, 1]."""
    if name in GRAY_ATTACKS:
        return GRAY_ATTACKS[name]
    match = _EPS_ATTACK.match(name)
    if match:
        try:
            eps = float(match.group(2))
        except ValueError:
            eps = float("nan")
        if not 0.0 < eps <= 1.0:
            raise UserError(f"Attack '{name}': eps must be in (0, 1] (pixels are in [0, 1]), got {match.group(2)}")
        params = {"eps": eps, "max_iter": 10} if match.group(1) == "bim" else {"eps": eps}
        return AttackSpec(name=f"{match.group(1)}-{eps:g}", family=match.group(1), params=params)
    registry = attack_registry()
    if name in registry:
        return registry.get(name)
    raise unknown_name_error("attack", name, [*registry.names(), "fgsm-EPS", "bim-EPS"])


def attack_targets(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """A seeded random target class != the true one for each image (Pang's random-target mode, and JSMA's)."""
    offsets = np.random.default_rng(seed).integers(1, num_classes, size=len(labels))
    return (labels + offsets) % num_classes




def _check_attack(name: str, value: object) -> AttackSpec:
    if not isinstance(value, AttackSpec) or value.name != name:
        raise TypeError(f"expected an AttackSpec named {name!r} (the entry point's name), got {value!r}")
    return value


def attack_registry(*, plugins: bool = True) -> Registry[AttackSpec]:
    """The gray box's attacks: the paper's seven, plus, unless ``plugins=False``, installed plugins'
    (entry points of ``pdm_bench.attacks`` naming an :class:`AttackSpec`)."""
    registry: Registry[AttackSpec] = Registry("attack", check=_check_attack)
    for spec in GRAY_ATTACKS.values():
        registry.add(spec.name, spec)
    if plugins:
        registry.load_entry_points(ATTACK_ENTRY_POINT_GROUP)
    return registry
