"""The Python API: what the CLI does, as functions (same caches, resuming and results files), and the extension
contracts in one namespace.

    import pdm_bench as pb
    trained = pb.train(dataset="digits", defense="pdm")
    rows = pb.evaluate(trained, threat="gray", attacks=["fgsm-0.1", "cw"], n_samples=200)
    pb.report("pdm-results", out="report/")

The contracts a plugin implements (docs/plugins.md): :class:`Defense` (a training loss), :class:`Detector` (a
score on the embedding, its view of the model checked by :func:`check_view`), :class:`ThreatModel` with its
:class:`ThreatParams`, the model contract (:class:`EmbeddingClassifier`, checked by :func:`check_classifier`), the
results schema (:class:`ResultRow`, :class:`Metric`) and the :class:`Registry` they join by entry point. A gray-box
attack is an ``AttackSpec`` (``pdm_bench.threat_models.attack_specs``, the component layer).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pdm_bench.arguments import check_mapping, checked
from pdm_bench.config import dataset_family, get_preset, make_plan, resolve_cache_dir, resolve_device
from pdm_bench.data import load_dataset, resolve_data_dir
from pdm_bench.defense import Defense
from pdm_bench.errors import UserError
from pdm_bench.registry import defense_registry, detector_registry, threat_model_registry

if TYPE_CHECKING:
    import torch

    from pdm_bench.data import Dataset
    from pdm_bench.detectors import Detector
    from pdm_bench.results import ResultRow
    from pdm_bench.threat import ThreatModel
    from pdm_bench.training import TrainedModel

Log = Callable[[str], None]

__all__ = ["Defense", "Detector", "EmbeddingClassifier", "Metric", "Registry", "ResultRow", "RunPlan", "ThreatModel",
           "ThreatParams", "Trained", "TrainContext", "check_classifier", "check_view", "evaluate", "execute", "load",
           "plan", "report", "train", "wrap"]


@dataclass(frozen=True)
class Trained:
    """A model ready to evaluate: its record (the network, defense, plan, cache key), its data set and device."""

    data: Dataset
    record: TrainedModel
    device: torch.device

    @property
    def network(self) -> torch.nn.Module:
        return self.record.model

    @property
    def test_accuracy(self) -> float:
        return self.record.test_accuracy

    def art_classifier(self) -> Any:
        """The model as ART's ``PyTorchClassifier`` (pixels in [0, 1]); ``get_activations(x, "embedding")`` gives the
        pre-logits embedding the detectors read."""
        from pdm_bench.art_adapter import to_art_classifier

        return to_art_classifier(self.network, input_shape=self.data.input_shape, nb_classes=self.data.num_classes,
                                 device=self.device)


@dataclass(frozen=True, kw_only=True)
class Pretrained(Defense):
    """A user's model, trained elsewhere: no loss; ``label`` names it in results and tables."""

    name: ClassVar[str] = "pretrained"
    description = "a model trained outside pdm-bench (pdm_bench.wrap)"
    label: str = "pretrained"

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.label)  # the user's name for it, in rows and tables

    def loss(self, model: Any, x: Any, y: Any, context: Any) -> Any:
        raise UserError(f"'{self.label}' is a wrapped pretrained model: pdm-bench does not train it")


@dataclass(frozen=True)
class ModelConfig:
    """A model's config resolved from names (bad values fail here, before any work): its data, defense, plan,
    cache folder and device."""

    data: Dataset
    defense: Defense
    plan: Any  # pdm_bench.config.TrainPlan
    cache: Path
    device: torch.device


def resolve_model(*, dataset: str, defense: str, options: Mapping[str, Any] | None, preset: str, epochs: int | None,
                  seed: int, data_dir: str | Path | None, cache_dir: str | Path | None, device: str) -> ModelConfig:
    """Every name and value of a model's config checked and resolved; the data set is loaded (decoded once, cached)."""
    torch_device = resolve_device(device)
    given = check_mapping(f"defense '{defense}'", "options", options)
    chosen = defense_registry().get(defense).from_options({k: str(v) for k, v in given.items()},
                                                          preset=get_preset(preset).name, family=dataset_family(dataset))
    cache = check_cache_dir(resolve_cache_dir(cache_dir))
    data = load_dataset(dataset, data_dir=resolve_data_dir(data_dir), cache_dir=cache)
    plan = make_plan(preset, dataset=data.name, input_shape=data.input_shape, num_classes=data.num_classes,
                     seed=seed, epochs=epochs if epochs is not None else chosen.default_epochs)
    return ModelConfig(data, chosen, plan, cache, torch_device)


@checked
def train(*, dataset: str = "digits", defense: str = "pdm", options: Mapping[str, Any] | None = None,
          preset: str = "quick", epochs: int | None = None, seed: int = 0, data_dir: str | Path | None = None,
          cache_dir: str | Path | None = None, device: str = "auto", progress: bool = False, log: Log = print,
          results_dir: str | Path | None = None, geometry: bool = True, command: str = "python: pdm_bench.train") -> Trained:
    """Train ``defense`` on ``dataset`` (or reuse the cached model of this exact config) and return it. With
    ``results_dir``, also record its clean accuracy and embedding geometry there (Table 1, Figure 2)."""
    if results_dir is not None:
        check_results_dir(results_dir)
    config = resolve_model(dataset=dataset, defense=defense, options=options, preset=preset, epochs=epochs, seed=seed,
                      data_dir=data_dir, cache_dir=cache_dir, device=device)
    return train_config(config, progress=progress, log=log, results_dir=results_dir, geometry=geometry, command=command)


def train_config(config: ModelConfig, *, progress: bool, log: Log, results_dir: str | Path | None, geometry: bool,
                 command: str) -> Trained:
    """Train (or reuse) the model of a resolved config; with ``results_dir``, record it there."""
    from pdm_bench.training import train_or_load

    data, chosen, plan, torch_device, seed = config.data, config.defense, config.plan, config.device, config.plan.seed
    log(f"Dataset {data.name}: {len(data.y_train)} train / {len(data.y_test)} test images, "
        f"{'x'.join(map(str, data.input_shape))}, {data.num_classes} classes")
    log(f"Defense {chosen.name} {chosen.options() or ''}".rstrip()
        + f"; preset {plan.preset}: ResNet-{plan.model.depth}, {plan.epochs} epochs, seed {seed}, device {torch_device}")
    started = time.perf_counter()
    result = train_or_load(dataset=data, defense=chosen, plan=plan, cache_dir=config.cache, device=torch_device,
                           progress=progress, log=log)
    verb = "reused" if result.from_cache else f"trained in {time.perf_counter() - started:.1f} s"
    log(f"Clean test accuracy: {100 * result.test_accuracy:.2f}% "
        f"({chosen.name} on {data.name}, preset {plan.preset}, seed {seed}; {verb})")
    log(f"Model: {result.run_dir}")
    trained = Trained(data, result, torch_device)
    if results_dir is not None:
        record(trained, Path(results_dir), geometry=geometry, details={"threat": "model"}, command=command, log=log,
               progress=progress)
    return trained


@checked
def load(*, dataset: str = "digits", defense: str = "pdm", options: Mapping[str, Any] | None = None,
         preset: str = "quick", epochs: int | None = None, seed: int = 0, data_dir: str | Path | None = None,
         cache_dir: str | Path | None = None, device: str = "auto", log: Log = print) -> Trained:
    """The cached model of this config, as :func:`train` returns it; never trains (a one-line error if absent)."""
    from pdm_bench.training import model_dir

    config = resolve_model(dataset=dataset, defense=defense, options=options, preset=preset, epochs=epochs, seed=seed,
                      data_dir=data_dir, cache_dir=cache_dir, device=device)
    run_dir, _, _ = model_dir(config.cache, config.data, config.defense, config.plan)
    if not (run_dir / "model.pt").exists():
        raise UserError(f"No trained {defense} model for this config in {config.cache}: train it first "
                        f"(pdm_bench.train(...) or pdm-bench train --dataset {dataset} --defense {defense})")
    return train_config(config, progress=False, log=log, results_dir=None, geometry=False, command="python: pdm_bench.load")


@checked
def wrap(module: torch.nn.Module, *, embedding: str, dataset: str, negate_logits: bool = False, name: str = "pretrained",
         preset: str = "quick", seed: int = 0, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
         device: str = "auto") -> Trained:
    """Any ``nn.Module`` classifier of ``dataset``'s images as a model to evaluate; ``embedding`` names the submodule
    whose output the detector reads (e.g. ``"layer4.pool"``); ``negate_logits`` if it predicts with the negated
    outputs. Its weights' fingerprint keys its results, so a changed model is a new run."""
    from pdm_bench.contract import check_classifier, model_fingerprint
    from pdm_bench.contract import wrap as wrap_module
    from pdm_bench.inference import evaluate_accuracy
    from pdm_bench.training import TrainedModel

    torch_device = resolve_device(device)
    cache = resolve_cache_dir(cache_dir)
    data = load_dataset(dataset, data_dir=resolve_data_dir(data_dir), cache_dir=cache)
    model = wrap_module(module, embedding=embedding, negate_logits=negate_logits).to(torch_device).eval()
    check_classifier(model, input_shape=data.input_shape, num_classes=data.num_classes, device=torch_device)
    plan = make_plan(preset, dataset=data.name, input_shape=data.input_shape, num_classes=data.num_classes, seed=seed)
    key = model_fingerprint(model)
    accuracy = evaluate_accuracy(model, data.x_test, data.y_test, device=torch_device)
    entry = TrainedModel(model, Pretrained(label=name), plan, key, cache / "models" / f"{name}-{key}", accuracy, True, [])  # type: ignore[arg-type]
    return Trained(data, entry, torch_device)


@checked
def make_detector(name: str = "kde", options: Mapping[str, Any] | None = None) -> Detector:
    """A detector by registry name, with its options (strings are converted to each option's type)."""
    from pdm_bench.options import build_options

    cls = detector_registry().get(name)
    return build_options(cls, dict(check_mapping(f"detector '{name}'", "options", options)), owner=f"detector '{name}'")  # type: ignore[return-value]


def check_detector_view(detector: Detector, config: ModelConfig) -> None:
    """The detector's view of an untrained model of ``config`` checked against the view contract, before training."""
    import torch

    from pdm_bench.detectors import check_view

    with torch.random.fork_rng(devices=[]):  # the global generator as it was: training seeds its own
        torch.manual_seed(0)
        model = config.defense.build_model(config.plan.model).eval()
    check_view(detector, model, input_shape=config.data.input_shape, num_classes=config.data.num_classes)


@checked
def make_threat(name: str, options: Mapping[str, Any] | None = None) -> ThreatModel:
    """A threat model by registry name, with its options validated."""
    values = check_mapping(f"threat model '{name}'", "options", options)
    return threat_model_registry().get(name).from_options(dict(values))  # type: ignore[no-any-return]


def check_cache_dir(cache: Path) -> Path:
    """Refuse, before any work, a cache folder that cannot be made or written."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if not os.access(cache, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as error:
        raise UserError(f"--cache-dir {cache} (or PDM_BENCH_CACHE): cannot write there ({error.strerror or error}); "
                        "give a writable folder") from None
    return cache


def check_run(threat: ThreatModel, detector: Detector, data: Dataset) -> None:
    """Refuse, before any training, a threat model or detector whose options do not fit each other or the data set
    (e.g. an adaptive budget beyond the pixel range, LID's k beyond its reference points)."""
    threat.check_detector(detector)
    threat.check_data(data)
    detector.check_data(data)


def check_results_dir(results_dir: str | Path) -> Path:
    """Refuse, before any work, a results directory that cannot be written or holds a foreign or malformed file."""
    from pdm_bench.results import ResultsStore

    if not str(results_dir).strip():
        raise UserError("--results-dir is empty: give a folder, e.g. pdm-results")
    path = Path(results_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(path / ".results.lock", "a"):
            pass
    except OSError as error:
        raise UserError(f"--results-dir {path}: cannot write there ({error.strerror or error})") from None
    ResultsStore(path).rows()
    from pdm_bench.records import read_runs

    read_runs(path)  # a damaged run record fails now, not in the report
    return path


@checked
def evaluate(trained: Trained, *, threat: str | ThreatModel = "gray", detector: str | Detector = "kde",
             n_samples: int | None = None, results_dir: str | Path = "pdm-results", geometry: bool = True,
             progress: bool = False, log: Log = print, command: str = "python: pdm_bench.evaluate",
             **threat_options: Any) -> list[ResultRow]:
    """Evaluate ``trained`` under ``threat`` (a name, with ``threat_options``, or a built threat model) against
    ``detector``; the rows are appended to ``results_dir/results.csv`` and this run's rows are returned. Attacks
    already finished in that directory are reused."""
    from pdm_bench.detectors import Detector, check_view
    from pdm_bench.threat import ThreatModel

    for name, value, cls in (("threat", threat, ThreatModel), ("detector", detector, Detector)):
        if not isinstance(value, (str, cls)):
            raise UserError(f"pdm_bench.evaluate: {name} must be a name or a {cls.__name__}, got {value!r}")
    if threat_options and not isinstance(threat, str):
        raise UserError("give threat options either to the built threat model or as keywords, not both")
    threat_model = make_threat(threat, threat_options) if isinstance(threat, str) else threat
    chosen = make_detector(detector) if isinstance(detector, str) else detector
    check_run(threat_model, chosen, trained.data)
    check_view(chosen, trained.network, input_shape=trained.data.input_shape, num_classes=trained.data.num_classes)
    return run_evaluation(trained, threat_model, chosen, check_results_dir(results_dir), n_samples=n_samples,
                          geometry=geometry, progress=progress, log=log, command=command)


@dataclass(frozen=True)
class RunPlan:
    """A run resolved and checked before any training (names, options, the detector against the threat model and
    the model's view, the results directory, N against the test set): what :func:`execute` runs. ``pdm-bench run``
    is ``plan`` then ``execute``."""

    config: ModelConfig
    threat: ThreatModel
    detector: Detector
    results_dir: Path
    n_samples: int | None = None
    geometry: bool = True


@checked
def plan(*, threat: str | ThreatModel = "gray", detector: str | Detector = "kde", dataset: str = "digits",
         defense: str = "pdm", options: Mapping[str, Any] | None = None, preset: str = "quick", epochs: int | None = None,
         seed: int = 0, data_dir: str | Path | None = None, cache_dir: str | Path | None = None, device: str = "auto",
         n_samples: int | None = None, results_dir: str | Path = "pdm-results", geometry: bool = True,
         **threat_options: Any) -> RunPlan:
    """Resolve and check a whole run (model, threat model with ``threat_options``, detector, results, N) without
    training anything; bad input is one :class:`UserError` line."""
    if threat_options and not isinstance(threat, str):
        raise UserError("give threat options either to the built threat model or as keywords, not both")
    threat_model = make_threat(threat, threat_options) if isinstance(threat, str) else threat
    chosen = make_detector(detector) if isinstance(detector, str) else detector
    threat_model.check_detector(chosen)
    results = check_results_dir(results_dir)
    config = resolve_model(dataset=dataset, defense=defense, options=options, preset=preset, epochs=epochs, seed=seed,
                           data_dir=data_dir, cache_dir=cache_dir, device=device)
    sample_indices(config.data, n_samples, config.plan)  # too many images fails now, not after training
    check_run(threat_model, chosen, config.data)
    check_detector_view(chosen, config)  # a plugin detector's view of the model, before training
    return RunPlan(config, threat_model, chosen, results, n_samples, geometry)


def execute(run: RunPlan, *, progress: bool = False, log: Log = print, command: str = "python: pdm_bench.execute"
            ) -> list[ResultRow]:
    """Train (or reuse) the plan's model and run its evaluation; this run's rows."""
    trained = train_config(run.config, progress=progress, log=log, results_dir=None, geometry=run.geometry,
                           command=command)
    return run_evaluation(trained, run.threat, run.detector, run.results_dir, n_samples=run.n_samples,
                          geometry=run.geometry, progress=progress, log=log, command=command)


def sample_indices(data: Dataset, n_samples: int | None, plan: Any) -> Any:
    """The test images a run attacks: ``n_samples`` of them (None: the preset's number), seeded by the plan."""
    from pdm_bench.evaluation import sample_indices as draw

    return draw(data, n_samples, plan.seed, default=get_preset(plan.preset).attack_samples)


def run_evaluation(trained: Trained, threat: ThreatModel, detector: Detector, results_dir: Path, *,
                   n_samples: int | None, geometry: bool, progress: bool, log: Log, command: str
                   ) -> list[ResultRow]:
    """Fit the detector, run the threat model, print its table, record provenance; this run's rows."""
    from pdm_bench.detectors import fit_detector
    from pdm_bench.evaluation import Evaluation
    from pdm_bench.results import ResultsStore

    data, entry, device = trained.data, trained.record, trained.device
    indices = sample_indices(data, n_samples, entry.plan)
    fit_detector(detector, entry.model, data, device=device, seed=entry.plan.seed, progress=progress)
    log(detector.summary())
    store = ResultsStore(results_dir)
    evaluation = Evaluation(data, entry, threat.name, detector, indices, store, device, entry.plan.seed,
                            settings=threat.settings(), log=log, progress=progress)
    rows = threat.run(evaluation)
    from pdm_bench.options import option_values
    from pdm_bench.records import component_version

    details = {"threat": threat.name, "n_samples": len(indices), "detector": detector.label,
               **detector.fitted_values(), **threat.params.as_dict(),
               "detector_name": detector.name, "detector_options": option_values(detector),
               "detector_version": component_version(detector), "threat_options": threat.params.as_dict(),
               "threat_version": component_version(threat), "attack_packages": plugin_attack_packages(threat)}
    record(trained, results_dir, geometry=geometry, details=details, command=command, log=log,
           run_ids={r.run_id for r in rows} | {entry.key}, progress=progress)
    log(f"\n{threat.heading or f'Threat model {threat.name!r}'} results ({entry.defense.name} on {data.name}, N={len(indices)}, "
        f"run {evaluation.run_id}):")
    log(threat.summary(rows))
    log(f"Rows in {store.path}")
    return rows


def plugin_attack_packages(threat: ThreatModel) -> dict[str, str]:
    """The distribution and version of each plugin attack a threat model runs (its ``params.attack_names()``)."""
    from pdm_bench.records import module_version
    from pdm_bench.registry import BUILTIN_THREAT_MODELS

    names = getattr(threat.params, "attack_names", None)
    if names is None or threat.name not in BUILTIN_THREAT_MODELS:
        return {}
    from pdm_bench.threat_models.attack_specs import parse_attack

    specs = [parse_attack(name) for name in names()]
    return {spec.name: module_version(getattr(spec.factory, "__module__", "")) for spec in specs if spec.factory is not None}


def record(trained: Trained, results_dir: Path, *, geometry: bool, details: dict[str, Any], command: str, log: Log,
           run_ids: set[str] | None = None, progress: bool = False) -> None:
    """The model's rows (Table 1 accuracy, embedding geometry) and the provenance of each run."""
    from pdm_bench.records import component_version, record_model, record_run, weights_provenance
    from pdm_bench.results import ResultsStore

    data, entry, device = trained.data, trained.record, trained.device
    store = ResultsStore(results_dir)
    record_model(store, data, entry, device=device, geometry=geometry, log=log, progress=progress)
    for run_id in sorted(run_ids or {entry.key}):
        if (store.directory / "runs" / f"{run_id}.json").exists():
            continue  # a run's record stays that of the command that first measured it (a rerun reuses its rows)
        record_run(store, run_id, command=command, device=device,
                   details={"dataset": data.name, "preset": entry.plan.preset, "seed": entry.plan.seed,
                            "defense": entry.defense.name, "defense_options": entry.defense.options(),
                            "defense_version": component_version(entry.defense), "epochs": entry.plan.epochs,
                            "model": entry.key, **weights_provenance(entry), **details})


@checked
def report(results_dir: str | Path | Sequence[str | Path] = "pdm-results", *, out: str | Path | None = None) -> list[Path]:
    """The tables (CSV, LaTeX) and report.html from results directories alone (several: one report, e.g. a study per
    data set side by side); the paths written. ``out`` defaults to the first directory's ``report/``."""
    from pdm_bench.reports.generator import write_report

    directories = [Path(results_dir)] if isinstance(results_dir, (str, Path)) else [Path(d) for d in results_dir]
    if not directories:
        raise UserError("expected at least one --results-dir")
    for results in directories:
        if results.exists() and not results.is_dir():
            raise UserError(f"Results directory {results} is a file: pass the --results-dir of your runs (a folder)")
        if not results.is_dir():
            raise UserError(f"Results directory {results} does not exist: pass the --results-dir of your runs")
    return write_report(directories, Path(out) if out is not None else directories[0] / "report")


# The extension contracts (see the module docstring), importable from here.
from pdm_bench.contract import EmbeddingClassifier, check_classifier  # noqa: E402
from pdm_bench.defense import TrainContext  # noqa: E402
from pdm_bench.detectors import Detector, check_view  # noqa: E402,F811
from pdm_bench.registry import Registry  # noqa: E402
from pdm_bench.results import Metric, ResultRow  # noqa: E402,F811
from pdm_bench.threat import ThreatModel, ThreatParams  # noqa: E402,F811
