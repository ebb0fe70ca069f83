"""The ``pdm-bench`` command line (click). Bad input ends in one ``Error: ...`` line and a non-zero exit."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pdm_bench.art_adapter import AttackBackend
from pdm_bench.config import DEVICE_CHOICES, PRESETS, PresetName, get_preset, make_plan, resolve_cache_dir, resolve_device
from pdm_bench.data import DATASET_NAMES, load_dataset, resolve_data_dir
from pdm_bench.errors import UserError, unknown_name_error
from pdm_bench.registry import defense_registry
from pdm_bench.threat_options import WhiteBoxOptions, white_box_options

if TYPE_CHECKING:
    import torch

    from pdm_bench.data import Dataset
    from pdm_bench.training import TrainedModel

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pdm-bench")
def cli() -> None:
    """pdm-bench: train defended classifiers and benchmark KDE detection of adversarial examples."""


def _parse_options(pairs: Sequence[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UserError(f"--defense-option expects NAME=VALUE, got '{pair}'")
        options[name.strip()] = value.strip()
    return options


def _data_and_training_options(*, dataset_default: str, with_defense: bool) -> list[Callable[..., Any]]:
    """Dataset, preset, epochs, seed, data/cache dirs, device, progress; with ``with_defense``, the defense too."""
    defense = [
        click.option("--defense", default="pdm", show_default=True, help="A defense name; `pdm-bench list` shows them all."),
        click.option("--defense-option", "-o", "defense_options", multiple=True, metavar="NAME=VALUE",
                     help="Set a defense option, e.g. -o q=0.7 -o rvl_weight=2 (repeatable)."),
    ] if with_defense else []
    return [
        click.option("--dataset", default=dataset_default, show_default=True,
                     help=f"{', '.join(DATASET_NAMES)}, or folder:PATH for an image folder (train/<class>/*, test/<class>/*)"),
        *defense,
        click.option("--preset", default=PresetName.QUICK.value, show_default=True,
                     type=click.Choice([p.value for p in PresetName]), help="quick: small ResNet for a CPU; paper: ResNet-56."),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the preset's epoch count."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, envvar="PDM_BENCH_DATA",
                     help="Where mnist/, cifar-10-batches-py/, cifar10-jpeg/ lie [env PDM_BENCH_DATA]."),
        click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, envvar="PDM_BENCH_CACHE",
                     help="Decoded data and trained models [env PDM_BENCH_CACHE; default ~/.cache/pdm-bench]."),
        click.option("--device", default="auto", show_default=True, help=f"One of {', '.join(DEVICE_CHOICES)}."),
        click.option("--progress/--no-progress", default=None, help="Show a progress bar [default: when stderr is a terminal]."),
    ]


def _apply(options: list[Callable[..., Any]], command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(options):
        command = option(command)
    return command


def model_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options that pick and train a model, shared by ``train`` and ``run``."""
    return _apply(_data_and_training_options(dataset_default="digits", with_defense=True), command)


def study_options(command: Callable[..., None]) -> Callable[..., None]:
    """``model_options`` without the defense (a study trains all of them), on MNIST by default."""
    return _apply(_data_and_training_options(dataset_default="mnist", with_defense=False), command)


@dataclass(frozen=True)
class ModelChoice:
    dataset: str
    defense: str
    defense_options: tuple[str, ...]
    preset: str
    epochs: int | None
    seed: int
    data_dir: Path | None
    cache_dir: Path | None
    device: str
    progress: bool | None


def _train_or_load(choice: ModelChoice) -> tuple[Dataset, TrainedModel, torch.device]:
    """Resolve every option (bad ones fail here, before any work), then train or reuse the model."""
    from pdm_bench.training import train_or_load  # torch-heavy imports only when needed

    torch_device = resolve_device(choice.device)
    defense = defense_registry().get(choice.defense).from_options(_parse_options(choice.defense_options))
    cache = resolve_cache_dir(choice.cache_dir)
    data = load_dataset(choice.dataset, data_dir=resolve_data_dir(choice.data_dir), cache_dir=cache)
    plan = make_plan(choice.preset, dataset=data.name, input_shape=data.input_shape, num_classes=data.num_classes,
                     seed=choice.seed, epochs=choice.epochs)
    click.echo(f"Dataset {data.name}: {len(data.y_train)} train / {len(data.y_test)} test images, "
               f"{'x'.join(map(str, data.input_shape))}, {data.num_classes} classes")
    click.echo(f"Defense {defense.name} {defense.options() or ''}".rstrip()
               + f"; preset {plan.preset}: ResNet-{plan.model.depth}, {plan.epochs} epochs, seed {choice.seed}, device {torch_device}")
    started = time.perf_counter()
    progress = _progress(choice.progress)
    result = train_or_load(dataset=data, defense=defense, plan=plan, cache_dir=cache, device=torch_device,
                           progress=progress, log=click.echo)
    verb = "reused" if result.from_cache else f"trained in {time.perf_counter() - started:.1f} s"
    click.echo(f"Clean test accuracy: {100 * result.test_accuracy:.2f}% "
               f"({defense.name} on {data.name}, preset {plan.preset}, seed {choice.seed}; {verb})")
    click.echo(f"Model: {result.run_dir}")
    return data, result, torch_device


def _command_line() -> str:
    """The command as typed (for the provenance record)."""
    obj = click.get_current_context().find_root().obj
    args = obj.get("argv", []) if isinstance(obj, dict) else []
    return " ".join(["pdm-bench", *args])


def _record(results_dir: Path, data: Dataset, trained: TrainedModel, device: torch.device, *, geometry: bool,
            details: dict[str, Any], run_ids: set[str] | None = None) -> None:
    """The model's rows (Table 1 accuracy, embedding geometry) and the provenance of each run."""
    from pdm_bench.records import record_model, record_run
    from pdm_bench.results import ResultsStore

    store = ResultsStore(results_dir)
    record_model(store, data, trained, device=device, geometry=geometry, log=click.echo)
    for run_id in sorted(run_ids or {trained.key}):
        if run_id == trained.key and run_ids and (store.directory / "runs" / f"{run_id}.json").exists():
            continue  # the model's own record stays that of the command that first measured it
        record_run(store, run_id, command=_command_line(), device=device,
                   details={"dataset": data.name, "preset": trained.plan.preset, "seed": trained.plan.seed,
                            "defense": trained.defense.name, "model": trained.key, **details})


def _progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


GEOMETRY_OPTION = click.option(
    "--geometry/--no-geometry", default=True, show_default=True,
    help="With a results directory: measure the embedding (Davies-Bouldin index, t-SNE, Eq. 4 margin and Jacobian).")


@cli.command()
@model_options
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also record the clean accuracy and the embedding geometry in RESULTS_DIR/results.csv (for reports).")
@GEOMETRY_OPTION
def train(results_dir: Path | None, geometry: bool, **options: Any) -> None:
    """Train a defense (or reuse its cached model) and print its clean test accuracy."""
    if results_dir is not None:
        from pdm_bench.results import ResultsStore

        ResultsStore(results_dir).rows()  # refuse a foreign or malformed results file before any work
    data, trained, device = _train_or_load(ModelChoice(**options))
    if results_dir is not None:
        _record(results_dir, data, trained, device, geometry=geometry, details={"threat": "model"})


@cli.command(name="run")
@click.option("--threat", required=True, help="gray, white or black (Appendix D).")
@model_options
@click.option("--attacks", default=None, help="Comma-separated subset, e.g. fgsm-0.05,cw (default: all of the threat's).")
@click.option("--n-samples", type=int, default=None, help="Test images to attack (paper: 1000) [default: the preset's, quick 200, paper 1000].")
@click.option("--attack-backend", type=click.Choice([b.value for b in AttackBackend]), default=AttackBackend.TORCH.value,
              show_default=True, help="torch: our fast C&W/JSMA ports; art: ART's originals.")
@click.option("--targeted/--untargeted", default=False, show_default=True,
              help="Untargeted as the paper; --targeted uses seeded random targets (Pang's code).")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("pdm-results"),
              show_default=True, help="results.csv and cached adversarial examples.")
@click.option("--bandwidth", type=float, default=None, help="Fixed KDE bandwidth [default: chosen on clean training embeddings].")
@click.option("--kde-points", type=click.IntRange(min=1), default=1000, show_default=True, help="Kernel points per class.")
@click.option("--resiliency/--no-resiliency", default=True, show_default=True, help="Accuracy under FGSM/BIM over an eps grid.")
@GEOMETRY_OPTION
@white_box_options
def run_command(threat: str, attacks: str | None, n_samples: int | None, attack_backend: str, targeted: bool,
                results_dir: Path, bandwidth: float | None, kde_points: int, resiliency: bool, geometry: bool,
                **options: Any) -> None:
    """Evaluate a defense under a threat model and append the results to RESULTS_DIR/results.csv."""
    from pdm_bench.results import ResultsStore
    from pdm_bench.threat_models.common import Evaluation, ThreatModel, fit_detector, sample_indices
    from pdm_bench.threat_models.gray import GRAY_ATTACKS, gray_table, parse_attack, run_gray

    try:
        threat_model = ThreatModel(threat)
    except ValueError:
        raise unknown_name_error("threat model", threat, [t.value for t in ThreatModel]) from None
    white = WhiteBoxOptions.pop(options)
    if threat_model is ThreatModel.GRAY:
        names = [parse_attack(a.strip()).name for a in attacks.split(",") if a.strip()] if attacks else list(GRAY_ATTACKS)
    elif attacks:
        raise UserError(f"--attacks selects gray-box attacks; the {threat} threat model runs C&W-wb and plain C&W, got '{attacks}'")
    attack_run = white.runner(threat_model)  # a bad budget fails here, before any work
    if bandwidth is not None and not bandwidth > 0:
        raise UserError(f"--bandwidth must be > 0, got {bandwidth}")
    store = ResultsStore(results_dir)
    store.rows()  # refuse a foreign or malformed results file before any work
    data, trained, device = _train_or_load(ModelChoice(**options))
    indices = sample_indices(data, n_samples, options["seed"], default=get_preset(options["preset"]).attack_samples)
    kde = fit_detector(trained, data, device=device, points_per_class=kde_points, bandwidth=bandwidth, seed=options["seed"])
    click.echo(f"Detector: Gaussian KDE, {kde_points} points per class, bandwidth {kde.bandwidth:.4g}"
               f" ({'fixed' if bandwidth else 'max leave-one-out likelihood on clean training embeddings'})")
    if threat_model is ThreatModel.GRAY:
        evaluation = Evaluation(data, trained, threat_model, kde, indices, store, device, options["seed"],
                                settings={"targeted": targeted, "backend": attack_backend}, log=click.echo)
        rows = run_gray(evaluation, names, backend=AttackBackend(attack_backend), targeted=targeted, resiliency=resiliency)
        table = gray_table(rows, names)
    else:
        evaluation = Evaluation(data, trained, threat_model, kde, indices, store, device, options["seed"], log=click.echo)
        rows, table = attack_run(evaluation, progress=_progress(options["progress"]))
    _record(results_dir, data, trained, device, geometry=geometry, run_ids={r.run_id for r in rows} | {trained.key},
            details={"threat": threat_model.value, "n_samples": len(indices), "bandwidth": kde.bandwidth,
                     "kde_points": kde_points, "attack_backend": attack_backend, "targeted": targeted})
    click.echo(f"\n{threat_model.value.capitalize()}-box results ({trained.defense.name} on {data.name}, N={len(indices)}, "
               f"run {evaluation.run_id}):")
    click.echo(table)
    click.echo(f"Rows in {store.path}")


@cli.command()
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("pdm-results"),
              show_default=True, help="Where `run` / `paper` wrote results.csv.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder [default: RESULTS_DIR/report].")
def report(results_dir: Path, out: Path | None) -> None:
    """Write the paper's Tables 1-4 (CSV, LaTeX) and report.html with its figures, from recorded results only."""
    from pdm_bench.reports.generator import write_report

    if not results_dir.is_dir():
        raise UserError(f"Results directory {results_dir} does not exist: pass the --results-dir of your runs")
    for path in write_report(results_dir, out if out is not None else results_dir / "report"):
        click.echo(f"wrote {path}")


STUDY_ATTACKED = "baseline,rce,pdm"  # the paper's Tables 2-4
STUDY_TRAIN_ONLY = "siamese_rvl"  # the paper's Table 1 only


@cli.command()
@study_options
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="[default: pdm-results/DATASET-PRESET]")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Report folder [default: RESULTS_DIR/report].")
@click.option("--threats", default="gray,white,black", show_default=True, help="Comma-separated subset of the threat models.")
@click.option("--n-samples", type=int, default=None, help="Test images attacked [default: the preset's].")
@click.option("--attacks", default=None, help="Gray-box attack subset (default: all seven).")
@click.option("--defenses", default=STUDY_ATTACKED, show_default=True,
              help="Defenses trained and attacked (Tables 1-4); plugins too, e.g. baseline,pdm,my_defense.")
@click.option("--train-only", default=STUDY_TRAIN_ONLY, show_default=True,
              help="Defenses only trained, for Table 1 ('' for none).")
@click.option("--seeds", default=None, help="Comma-separated seeds, e.g. 0,1,2 (instead of --seed): the whole study per "
              "seed; the report gives mean and sd.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Steps run at once, as subprocesses with CPUs/JOBS torch threads each, logs in RESULTS_DIR/logs/.")
@white_box_options
def paper(dataset: str, preset: str, seed: int, epochs: int | None, data_dir: Path | None, cache_dir: Path | None,
          device: str, results_dir: Path | None, out: Path | None, threats: str, n_samples: int | None,
          attacks: str | None, defenses: str, train_only: str, seeds: str | None, jobs: int, progress: bool | None,
          **white: Any) -> None:
    """The whole study: train baseline, rce, siamese_rvl and pdm; gray, white and black box for baseline, rce and
    pdm (or your --defenses); then the report. Rerun the same command to resume: finished models, attacks and rows
    are reused."""
    from pdm_bench.study import (STEP_TIMES, costliest_first, defense_list, parse_seeds, record_step, run_parallel,
                                 study_log_dir, study_steps)
    from pdm_bench.threat_models.common import ThreatModel

    chosen = [t.strip() for t in threats.split(",") if t.strip()]
    for name in chosen:
        try:
            ThreatModel(name)
        except ValueError:
            raise unknown_name_error("threat model", name, [t.value for t in ThreatModel]) from None
    if n_samples is not None and n_samples <= 0:
        raise UserError(f"--n-samples must be a positive number of test images, got {n_samples}")
    attacked, trained_only = defense_list("--defenses", defenses), defense_list("--train-only", train_only)
    if not attacked:
        raise UserError("--defenses must name at least one defense, got ''")
    if both := sorted(set(attacked) & set(trained_only)):
        raise UserError(f"--train-only repeats {', '.join(both)} from --defenses (those are trained anyway)")
    seed_list = parse_seeds(seeds) if seeds is not None else [seed]
    if attacks:
        from pdm_bench.threat_models.gray import parse_attack

        for name in attacks.split(","):
            parse_attack(name.strip())  # an unknown attack fails now, not after four trainings
    WhiteBoxOptions.pop(dict(white)).runner(ThreatModel.WHITE)  # so does a bad C&W-wb budget
    results_dir = results_dir if results_dir is not None else Path("pdm-results") / f"{dataset.replace('/', '_').replace(':', '_')}-{preset}"
    shared = {"dataset": dataset, "preset": preset, "epochs": epochs, "data_dir": data_dir, "cache_dir": cache_dir,
              "device": device, "progress": progress, "defense_options": (), "results_dir": results_dir}
    trainings, attacks_steps = study_steps(
        train=train, run=run_command, attacked=attacked, trained_only=trained_only, threats=chosen, seeds=seed_list,
        shared=shared, gray={"attacks": attacks}, attack={"n_samples": n_samples, **white})
    ctx = click.get_current_context()
    started = time.perf_counter()
    if jobs == 1:
        steps = [*trainings, *attacks_steps]
        for number, step in enumerate(steps, start=1):
            click.echo(f"\n=== [{number}/{len(steps)}] {step.title} "
                       f"({time.perf_counter() - started:.0f} s into the study)")
            step_started = time.perf_counter()
            ctx.invoke(step.command, **step.params)
            record_step(study_log_dir(results_dir), step, seconds=time.perf_counter() - step_started, status="finished", jobs=1)
    else:
        for phase, phase_steps in (("training", trainings), ("attacks", costliest_first(attacks_steps))):
            click.echo(f"\n=== {phase}: {len(phase_steps)} steps, {jobs} at a time "
                       f"({time.perf_counter() - started:.0f} s into the study)")
            failed = run_parallel(phase_steps, jobs=jobs, log_dir=study_log_dir(results_dir), echo=click.echo)
            if failed:
                raise UserError(f"{len(failed)} of {len(phase_steps)} {phase} steps failed: {'; '.join(failed)}; "
                                "fix and rerun the same command to resume")
    ctx.invoke(report, results_dir=results_dir, out=out)
    click.echo(f"Study finished in {time.perf_counter() - started:.0f} s (this call; finished steps were reused). "
               f"Each step's time: {study_log_dir(results_dir) / STEP_TIMES}")


@cli.command(name="list")
def list_command() -> None:
    """List defenses (with their options), datasets, presets and devices."""
    click.echo("Defenses:")
    for status in defense_registry().statuses():
        if status.error is not None:
            click.echo(f"  {status.name:<14} BROKEN {status.origin}: {status.error}")
            continue
        cls = status.value
        options = ", ".join(f"{f.name}={f.default}" for f in fields(cls))  # type: ignore[arg-type]
        origin = "" if status.origin == "built-in" else f" [{status.origin}]"
        click.echo(f"  {status.name:<14} {cls.description}{origin}")  # type: ignore[union-attr]
        if options:
            click.echo(f"  {'':<14} options: {options}")
    click.echo("Datasets:")
    for name in DATASET_NAMES:
        click.echo(f"  {name}")
    click.echo("  folder:PATH    any image folder with train/<class>/* and test/<class>/*")
    click.echo("Presets:")
    for preset in PRESETS.values():
        click.echo(f"  {preset.name:<14} {preset.description}")
    click.echo(f"Devices: {', '.join(DEVICE_CHOICES)} (auto picks cuda when present)")
    from pdm_bench.threat_models.common import ThreatModel
    from pdm_bench.threat_models.gray import GRAY_ATTACKS

    click.echo(f"Threat models: {', '.join(t.value for t in ThreatModel)}")
    click.echo("Gray-box attacks (--attacks):")
    for spec in GRAY_ATTACKS.values():
        settings = ", ".join(f"{k}={v}" for k, v in spec.params.items())
        click.echo(f"  {spec.name:<14} {spec.family}: {settings}")
    click.echo(f"  {'fgsm-EPS':<14} any eps in (0, 1]; also bim-EPS")


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code; errors print one line, never a traceback."""
    try:
        args = list(argv) if argv is not None else sys.argv[1:]
        cli.main(args=args, prog_name="pdm-bench", standalone_mode=False, obj={"argv": args})
    except UserError as error:
        click.echo(f"Error: {error}", err=True)
        return EXIT_USER_ERROR
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        click.echo(f"Error: {error.format_message()}", err=True)
        return error.exit_code
    except OSError as error:  # disk full, a cache file removed under us, permissions: say which file
        click.echo(f"Error: {error}", err=True)
        return 1
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("Interrupted: finished epochs and results are saved; rerun the same command to resume.", err=True)
        return EXIT_INTERRUPTED
    return 0


def main() -> None:
    sys.exit(run())
