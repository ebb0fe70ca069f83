"""The paper's study from Python (``pdm_bench.Study``; ``pdm-bench paper`` is the same): which models to train and
evaluate, checked before any work, as steps run in turn, in parallel or on Slurm."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pdm_bench.api import Log, Trained, check_cache_dir, check_run, make_detector, make_threat, report, run_evaluation, train
from pdm_bench.arguments import check_fields, checked
from pdm_bench.config import MAX_SEED, config_key, get_preset, resolve_cache_dir, resolve_device
from pdm_bench.data import load_dataset, resolve_data_dir
from pdm_bench.errors import UserError
from pdm_bench.executors import ExecutorName, SlurmResources, import_submitit
from pdm_bench.registry import defense_registry
from pdm_bench.storage import atomic_write_text
from pdm_bench.steps import STEP_TIMES, Step, run_in_turn, run_parallel, run_phases, study_log_dir, visible_gpus


STEP_FORMAT = 1  # the version of a study step's data (pdm-bench step --spec FILE)


@dataclass
class Study:
    """The paper's study, or any part of it: train ``defenses`` and ``train_only`` (Table 1), evaluate each of
    ``defenses`` under each of ``threats`` per seed, then write the report. Every step is cached, so ``run`` again
    resumes. ``threat_options`` gives each threat model's options by name, e.g. ``{"gray": {"attacks": "cw"}}``."""

    dataset: str = "mnist"
    defenses: Sequence[str] = ("baseline", "rce", "pdm")
    train_only: Sequence[str] = ("siamese_rvl",)
    threats: Sequence[str] = ("gray", "white", "black")
    seeds: Sequence[int] = (0,)
    preset: str = "quick"
    epochs: int | None = None
    n_samples: int | None = None
    detector: str = "kde"  # one detector, or several comma-separated: every (defense, detector) pair is evaluated
    threat_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    results_dir: str | Path | None = None
    data_dir: str | Path | None = None
    cache_dir: str | Path | None = None
    device: str = "auto"
    progress: bool = False
    log: Log = print
    executor: str = "local"  # or "slurm": each step a Slurm job through submitit, with ``slurm``'s resources
    slurm: Any = None  # pdm_bench.executors.SlurmResources (None: its defaults)

    def __post_init__(self) -> None:
        """Check every name and option now, before any training (a single string names one or several,
        comma-separated, as on the CLI)."""
        for name in ("defenses", "train_only", "threats"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, [part.strip() for part in getattr(self, name).split(",") if part.strip()])
        if isinstance(self.seeds, int) and not isinstance(self.seeds, bool):
            self.seeds = [self.seeds]
        check_fields(self)
        self._check_names()
        if self.executor not in {e.value for e in ExecutorName}:
            raise UserError(f"--executor must be local or slurm, got '{self.executor}'")
        if self.executor == ExecutorName.SLURM.value:
            import_submitit()  # a missing extra fails now, before any work
            self.slurm = self.slurm if self.slurm is not None else SlurmResources()
        if self.results_dir is None:
            self.results_dir = Path("pdm-results") / f"{self.dataset.replace('/', '_').replace(':', '_')}-{self.preset}"
        elif not str(self.results_dir).strip():
            raise UserError("--results-dir is empty: give a folder, e.g. pdm-results/mnist-quick")

    def _check_names(self) -> None:
        """Defenses, threat models, seeds, preset, device and detectors: registered names and valid values."""
        if not self.defenses:
            raise UserError("a study needs at least one defense to evaluate (--defenses), got none")
        check_defenses("--defenses", self.defenses)
        check_defenses("--train-only", self.train_only)
        if both := sorted(set(self.defenses) & set(self.train_only)):
            raise UserError(f"--train-only repeats {', '.join(both)} from --defenses (those are trained anyway)")
        if not self.threats or len(set(self.threats)) != len(self.threats):
            raise UserError(f"--threats must name distinct threat models, got {','.join(self.threats) or 'none'}")
        self.seeds = check_seeds(self.seeds)
        if self.n_samples is not None and self.n_samples <= 0:
            raise UserError(f"--n-samples must be a positive number of test images, got {self.n_samples}")
        if self.epochs is not None and self.epochs < 0:
            raise UserError(f"--epochs must be a non-negative integer, got {self.epochs}")
        get_preset(self.preset)
        resolve_device(self.device)
        if unknown := sorted(set(self.threat_options) - set(self.threats)):
            raise UserError(f"threat options for {', '.join(unknown)}, which the study does not run")
        self.threat_models = {t: make_threat(t, self.threat_options.get(t)) for t in self.threats}
        self.detectors = [name.strip() for name in self.detector.split(",") if name.strip()]
        if not self.detectors or len(set(self.detectors)) != len(self.detectors):
            raise UserError(f"--detectors must name distinct detectors, got '{self.detector}'")
        for name in self.detectors:
            chosen = make_detector(name)
            for threat_model in self.threat_models.values():
                threat_model.check_detector(chosen)

    def check_data(self) -> None:
        """The data set (loaded: decoded once, cached), and every threat model and detector against it (``run`` does
        this first, before any step)."""
        cache = check_cache_dir(resolve_cache_dir(self.cache_dir))
        data = load_dataset(self.dataset, data_dir=resolve_data_dir(self.data_dir), cache_dir=cache)
        if self.n_samples is not None and self.n_samples > len(data.y_test):
            raise UserError(f"--n-samples must be between 1 and the test set's size {len(data.y_test)} ({data.name}), "
                            f"got {self.n_samples}")
        for name in self.detectors:
            chosen = make_detector(name)
            for threat_model in self.threat_models.values():
                check_run(threat_model, chosen, data)

    def steps(self) -> tuple[list[Any], list[Any]]:
        """The trainings (every defense, per seed), then the evaluations (threat x defense, per seed). Each step is
        data (:meth:`step_data`), run the same way in this process, as ``pdm-bench step`` with ``--jobs`` and as a
        Slurm job: no command line is rebuilt and parsed back."""
        def title(text: str, seed: int) -> str:
            return f"{text}, seed {seed}" if len(self.seeds) > 1 else text

        def step(text: str, action: dict[str, Any], rank: int = 100) -> Step:
            data = self.step_data(action)
            path = step_spec_path(self._spec_dir(), data)  # written by run(), before any step starts
            self._specs[path] = data
            return Step(text, ("step", "--spec", str(path)), lambda: run_step_data(data, log=self.log), rank=rank)

        self._specs: dict[Path, dict[str, Any]] = {}

        trainings = [step(title(f"train {d}", s), {"kind": "train", "defense": d, "seed": s})
                     for s in self.seeds for d in [*self.defenses, *self.train_only]]
        several = len(self.detectors) > 1
        runs = [step(title(f"{t} box, {d}" + (f", {k}" if several else ""), s),
                     {"kind": "evaluate", "threat": t, "defense": d, "seed": s, "detector": k},
                     rank=self.threat_models[t].cost_rank)
                for s in self.seeds for t in self.threats for k in self.detectors for d in self.defenses]
        return trainings, runs

    def to_data(self) -> dict[str, Any]:
        """The study's settings as JSON-able data (``Study.from_data`` gives it back; not the log function)."""
        data: dict[str, Any] = {}
        for option in fields(self):
            if option.name in ("log", "slurm", "executor"):  # how the steps run, not what they do
                continue
            value = getattr(self, option.name)
            data[option.name] = str(value) if isinstance(value, Path) else \
                list(value) if isinstance(value, tuple) else value
        data["threat_options"] = {t: dict(o) for t, o in self.threat_options.items()}
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, Any], *, log: Log = print) -> Study:
        """The study of :meth:`to_data`'s ``data``, checked again as any study is."""
        return cls(**dict(data), log=log)

    def step_data(self, action: Mapping[str, Any]) -> dict[str, Any]:
        """One step as data: the study's settings and what to do (train, or evaluate under a threat model)."""
        return {"format": STEP_FORMAT, "study": self.to_data(), "step": dict(action)}

    def run_action(self, action: Mapping[str, Any]) -> None:
        """Do one step's action: train a defense, or evaluate it under a threat model with a detector."""
        if action["kind"] == "train":
            self._train(action["defense"], action["seed"])
        else:
            self._evaluate(action["threat"], action["defense"], action["seed"], action["detector"])

    def _spec_dir(self) -> Path:
        return study_log_dir(Path(self.results_dir)) / "steps"  # type: ignore[arg-type]

    @checked
    def run(self, *, jobs: int = 1, out: str | Path | None = None) -> list[Path]:
        """Run every step not yet finished (``jobs`` at a time as subprocesses), then write the report."""
        if jobs < 1:
            raise UserError(f"pdm_bench.Study.run: jobs must be a positive number of steps run at once, got {jobs}")
        self.check_data()
        results_dir = Path(self.results_dir)  # type: ignore[arg-type]
        log_dir = study_log_dir(results_dir)
        trainings, evaluations = self.steps()
        for data in self._specs.values():
            write_step_spec(self._spec_dir(), data)
        started = time.perf_counter()
        if self.executor == ExecutorName.SLURM.value:
            from pdm_bench.executors import run_jobs

            run_phases(trainings, evaluations, run=lambda steps: run_jobs(steps, resources=self.slurm, log_dir=log_dir,
                                                                           echo=self.log),
                       how=f" as Slurm jobs, at most {self.slurm.max_parallel} at once", noun="jobs",
                       advice="fix and rerun the same command: only what is missing is submitted", log=self.log,
                       started=started)
        elif jobs == 1:
            run_in_turn([*trainings, *evaluations], log_dir=log_dir, log=self.log, started=started)
        else:  # each step on its own GPU where there are several and the device is not pinned (cuda:N)
            gpus = visible_gpus() if self.device in ("auto", "cuda") else []
            run_phases(trainings, evaluations, run=lambda steps: run_parallel(steps, jobs=jobs, log_dir=log_dir,
                                                                               echo=self.log,
                                                                               gpus=gpus if len(gpus) > 1 else []),
                       how=f", {jobs} at a time", noun="steps", advice="fix and rerun the same command to resume",
                       log=self.log, started=started)
        written = report(results_dir, out=out)
        self.log(f"Study finished in {time.perf_counter() - started:.0f} s (this call; finished steps were reused). "
                 f"Each step's time: {log_dir / STEP_TIMES}")
        return written

    def _train(self, defense: str, seed: int) -> Trained:
        return train(dataset=self.dataset, defense=defense, preset=self.preset, epochs=self.epochs, seed=seed,
                     data_dir=self.data_dir, cache_dir=self.cache_dir, device=self.device, progress=self.progress,
                     log=self.log, results_dir=self.results_dir, command="python: pdm_bench.Study")

    def _evaluate(self, threat: str, defense: str, seed: int, detector: str) -> None:
        trained = self._train(defense, seed)
        run_evaluation(trained, self.threat_models[threat], make_detector(detector), Path(self.results_dir),  # type: ignore[arg-type]
                       n_samples=self.n_samples, geometry=True, progress=self.progress, log=self.log,
                       command="python: pdm_bench.Study")


def step_spec_path(directory: Path, data: Mapping[str, Any]) -> Path:
    """Where a step's data is kept: ``DIRECTORY/<key>.json``, named by its content (a changed step is a new file)."""
    return directory / f"{config_key(dict(data))}.json"


def write_step_spec(directory: Path, data: Mapping[str, Any]) -> Path:
    """``data`` as its :func:`step_spec_path`; the path."""
    text = json.dumps(data, sort_keys=True, indent=1)
    path = step_spec_path(directory, data)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    return path


def run_step_data(data: Mapping[str, Any], *, log: Log = print) -> None:
    """Run one study step from its data (:meth:`Study.step_data`): what ``pdm-bench step --spec FILE`` does."""
    if not isinstance(data, Mapping) or data.get("format") != STEP_FORMAT or not isinstance(data.get("study"), Mapping) \
            or not isinstance(data.get("step"), Mapping) or data["step"].get("kind") not in ("train", "evaluate"):
        raise UserError(f"a study step's data must be what pdm-bench wrote (format {STEP_FORMAT}: study, step with "
                        "kind train or evaluate)")
    Study.from_data(data["study"], log=log).run_action(data["step"])


def read_step_spec(path: Path) -> dict[str, Any]:
    """A step's data from its JSON file; a missing or corrupt file is one line."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read the study step {path}: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"the study step {path} holds no step data")
    return data


def check_defenses(option: str, names: Sequence[str]) -> None:
    """Each name is a registered defense (built-in or plugin; did-you-mean otherwise), none twice."""
    registry = defense_registry()
    for name in names:
        registry.get(name)  # an unknown name fails now, with did-you-mean, before any training
    if len(set(names)) != len(names):
        raise UserError(f"{option} names a defense twice, got '{','.join(names)}'")


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """Distinct non-negative integers, at least one."""
    seeds = list(seeds)
    if not seeds or min(seeds) < 0 or max(seeds) > MAX_SEED or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds expects distinct non-negative integers up to {MAX_SEED}, e.g. 0,1,2, got '{','.join(map(str, seeds))}'")
    return seeds


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` -> [0, 1, 2]: distinct non-negative integers."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--seeds expects comma-separated non-negative integers, e.g. 0,1,2, got '{text}'") from None
    return check_seeds(seeds)
