"""The ``pdm-bench`` command line (click). Bad input ends in one ``Error: ...`` line and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pdm_bench import threads
from pdm_bench.cli_params import FOLDER, check_environment, slurm_resources
from pdm_bench.config import DEVICE_CHOICES, MAX_SEED, PRESETS, PresetName
from pdm_bench.data import DATASET_NAMES
from pdm_bench.errors import UserError
from pdm_bench.options import describe_options, parse_pairs
from pdm_bench.registry import Registry, defense_registry, detector_registry, threat_model_registry

if TYPE_CHECKING:
    from pdm_bench.api import ModelConfig, Trained

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _set_threads(_ctx: click.Context, _param: click.Parameter, value: int | None) -> None:
    try:
        threads.set_threads(value)
    except UserError as error:  # a bad PDM_BENCH_THREADS (a bad --threads is the type's to report)
        raise click.UsageError(str(error)) from None


THREADS_OPTION = click.option(
    "--threads", type=click.IntRange(1, threads.MAX_THREADS), default=None, expose_value=False, is_eager=True,
    callback=_set_threads, metavar="N",
    help="CPU threads for torch here and in --jobs/Slurm steps [env PDM_BENCH_THREADS; default: torch's]. "
         "OpenMP waits passively unless OMP_WAIT_POLICY is set.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pdm-bench")
@THREADS_OPTION
def cli() -> None:
    """pdm-bench: train defended classifiers and benchmark KDE detection of adversarial examples."""


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
        click.option("--seed", type=click.IntRange(min=0, max=MAX_SEED), default=0, show_default=True),
        click.option("--data-dir", type=FOLDER, default=None, envvar="PDM_BENCH_DATA",
                     help="Where mnist/, cifar-10-batches-py/, cifar10-jpeg/ lie [env PDM_BENCH_DATA]."),
        click.option("--cache-dir", type=FOLDER, default=None, envvar="PDM_BENCH_CACHE",
                     help="Decoded data and trained models [env PDM_BENCH_CACHE; default ~/.cache/pdm-bench]."),
        click.option("--device", default="auto", show_default=True, help=f"One of {', '.join(DEVICE_CHOICES)}."),
        click.option("--progress/--no-progress", default=None, help="Show a progress bar [default: when stderr is a terminal]."),
        THREADS_OPTION,
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


def _resolve(*, defense: str, defense_options: Sequence[str], progress: bool | None, **options: Any) -> ModelConfig:
    """Every model option checked and resolved (bad ones fail here, before any work; the data set is loaded)."""
    from pdm_bench import api

    return api.resolve_model(defense=defense, options=parse_pairs(defense_options, flag="--defense-option"), **options)


def _train(config: ModelConfig, progress: bool | None, *, results_dir: Path | None = None, geometry: bool = True) -> Trained:
    from pdm_bench import api

    return api.train_config(config, progress=_progress(progress), log=click.echo, results_dir=results_dir,
                            geometry=geometry, command=_command_line())


def _command_line() -> str:
    """The command as typed (for the provenance record)."""
    obj = click.get_current_context().find_root().obj
    args = obj.get("argv", []) if isinstance(obj, dict) else []
    return " ".join(["pdm-bench", *args])


def _progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


GEOMETRY_OPTION = click.option(
    "--geometry/--no-geometry", default=True, show_default=True,
    help="With a results directory: measure the embedding (Davies-Bouldin index, t-SNE, Eq. 4 margin and Jacobian).")


@cli.command(short_help="Train a defense, or reuse its cached model.")
@model_options
@click.option("--results-dir", type=FOLDER, default=None,
              help="Also record the clean accuracy and the embedding geometry in RESULTS_DIR/results.csv (for reports).")
@GEOMETRY_OPTION
def train(results_dir: Path | None, geometry: bool, **options: Any) -> None:
    """Train a defense (or reuse its cached model) and print its clean test accuracy."""
    defense_registry().require(options["defense"])  # a typo fails before torch is imported
    if results_dir is not None:
        from pdm_bench.api import check_results_dir

        check_results_dir(results_dir)
    _train(_resolve(**options), options["progress"], results_dir=results_dir, geometry=geometry)


# The built-in threat models' own flags (each class's ``flags`` says which apply to it); None = not given.
THREAT_FLAG_SPECS: dict[str, dict[str, Any]] = {
    "--attacks": {"help": "gray: comma-separated attacks, e.g. fgsm-0.05,cw (default: all seven)."},
    "--attack-backend": {"type": click.Choice(["torch", "art"]),
                         "help": "gray: torch (our fast C&W/JSMA ports, default) or art (ART's originals)."},
    "--targeted/--untargeted": {"help": "gray: seeded random targets (Pang's code); default untargeted."},
    "--resiliency/--no-resiliency": {"help": "gray: accuracy under FGSM/BIM over an eps grid [on]."},
    "--cw-iterations": {"type": int, "help": "white/black: C&W-wb Adam steps (one fixed budget)."},
    "--cw-search-steps": {"type": int, "help": "white/black: binary-search steps (one fixed budget)."},
    "--cw-initial-const": {"type": float, "help": "white/black: first constant c (one fixed budget)."},
    "--cw-learning-rate": {"type": float, "help": "white/black: Adam step size (one fixed budget)."},
    "--wb-kde-points": {"type": int, "help": "white/black: kernel points per class of the attacker's KDE [100]."},
    "--wb-threshold": {"type": click.Choice(["median", "clean"]),
                       "help": "white/black: density to reach: the target class's median (Pang) or the clean image's (Carlini)."},
    "--wb-confidence": {"type": float, "help": "white/black: C&W-wb's margin over the target in its density stage [0]; "
                                              "higher transfers better to another model."},
    "--proxy-depth": {"type": int, "help": "black: the proxy ResNet's depth 6n+2 [quick 8, paper 32]."},
    "--proxy-epochs": {"type": int, "help": "black: distillation epochs [the target's]."},
    "--norm": {"type": click.Choice(["linf", "l2"]), "help": "adaptive: the budget's norm [linf]."},
    "--eps": {"help": "adaptive: comma-separated budgets [MNIST/digits: linf 0.1,0.3, l2 2.0; CIFAR-10: 8/255, 0.5]."},
}
THREAT_FLAGS = [
    *(click.option(decl, default=None, **spec) for decl, spec in THREAT_FLAG_SPECS.items()),
    click.option("--threat-option", "-t", "threat_option_pairs", multiple=True, metavar="NAME=VALUE",
                 help="Any option of the threat model (repeatable); `pdm-bench list` shows them."),
]


def _pop_threat_flags(options: dict[str, Any]) -> dict[str, Any]:
    """Take the threat flags out of a command's keyword arguments: ``{"--attacks": "cw", ...}`` for those given."""
    given = {}
    for decl in THREAT_FLAG_SPECS:
        flag = decl.split("/")[0]
        value = options.pop(flag.lstrip("-").replace("-", "_"))
        if value is not None:
            given[flag] = value
    return given


DETECTOR_FLAGS = [
    click.option("--detector", default="kde", show_default=True, help="A detector name; `pdm-bench list` shows them all."),
    click.option("--detector-option", "detector_option_pairs", multiple=True, metavar="NAME=VALUE",
                 help="An option of the detector (repeatable), e.g. --detector-option points_per_class=500."),
    click.option("--bandwidth", type=float, default=None, help="kde: fixed bandwidth [chosen on clean training embeddings]."),
    click.option("--kde-points", type=click.IntRange(min=1), default=None, help="kde: kernel points per class [1000]."),
]


def threat_options(name: str, given: dict[str, Any], pairs: Sequence[str], *, strict: bool) -> dict[str, Any]:
    """The options of threat model ``name`` from its flags and ``-t`` pairs. ``strict``: a flag it does not take is
    an error (``run``); otherwise it is left to the study's other threat models (``paper``)."""
    cls = threat_model_registry().get(name)
    options: dict[str, Any] = {}
    for flag, value in given.items():
        if flag in cls.flags:
            options[cls.flags[flag]] = value
        elif strict:
            takes = ", ".join(cls.flags) or "none"
            raise UserError(f"{flag} does not apply to threat model '{name}' (its flags: {takes}; any option with -t NAME=VALUE)")
    paired = parse_pairs(pairs, flag="--threat-option")
    for flag, key in cls.flags.items():
        if key in options and key in paired:
            raise UserError(f"{flag} {options[key]} and -t {key}={paired[key]} both set {key}; give it once")
    return {**options, **paired}


def detector_choice(detector: str, pairs: Sequence[str], bandwidth: float | None, kde_points: int | None) -> Any:
    """The detector (validated now, fitted later) from ``--detector`` and its options."""
    from pdm_bench.api import make_detector

    options: dict[str, Any] = parse_pairs(pairs, flag="--detector-option")
    for flag, key, value in (("--bandwidth", "bandwidth", bandwidth), ("--kde-points", "points_per_class", kde_points)):
        if value is not None:
            if detector != "kde":
                raise UserError(f"{flag} is an option of the kde detector, not of '{detector}'")
            if key in options:
                raise UserError(f"{flag} {value} and --detector-option {key}={options[key]} both set {key}; give it once")
            options[key] = value
    return make_detector(detector, options)


def _apply_flags(command: Callable[..., None]) -> Callable[..., None]:
    return _apply([*THREAT_FLAGS, *DETECTOR_FLAGS], command)


@cli.command(name="run", short_help="Evaluate a defense under a threat model.")
@click.option("--threat", default=None, help="A threat model: gray, white, black, adaptive or a plugin's (`pdm-bench list`).")
@model_options
@click.option("--n-samples", type=int, default=None,
              help="Test images to attack (paper: 1000) [default: the preset's, quick 200, paper 1000].")
@click.option("--results-dir", type=FOLDER, default=Path("pdm-results"),
              show_default=True, help="results.csv and cached adversarial examples.")
@GEOMETRY_OPTION
@_apply_flags
def run_command(threat: str, n_samples: int | None, results_dir: Path, geometry: bool, detector: str,
                detector_option_pairs: tuple[str, ...], bandwidth: float | None, kde_points: int | None,
                threat_option_pairs: tuple[str, ...], **options: Any) -> None:
    """Evaluate a defense under a threat model and append the results to RESULTS_DIR/results.csv."""
    if threat is None:
        raise UserError(f"--threat is required: one of {', '.join(threat_model_registry().names())}")
    threat_model_registry().require(threat)  # names first: a typo fails before torch is imported
    defense_registry().require(options["defense"])
    detector_registry().require(detector)
    from pdm_bench import api

    threat_model = api.make_threat(threat, threat_options(threat, _pop_threat_flags(options), threat_option_pairs,
                                                          strict=True))
    chosen = detector_choice(detector, detector_option_pairs, bandwidth, kde_points)
    progress = _progress(options.pop("progress"))
    defense_options = parse_pairs(options.pop("defense_options"), flag="--defense-option")
    model = {**options, "options": defense_options}
    planned = api.plan(threat=threat_model, detector=chosen, n_samples=n_samples, results_dir=results_dir,
                       geometry=geometry, **model)
    api.execute(planned, progress=progress, log=click.echo, command=_command_line())
    click.echo(f"Tables and figures from these rows: pdm-bench report --results-dir {results_dir}")


@cli.command(short_help="Tables, figures and report.html from results.")
@click.option("--results-dir", type=FOLDER, multiple=True,
              help="Where `run` / `paper` wrote results.csv [default: pdm-results]; repeat it to put several studies "
                   "(e.g. MNIST and CIFAR-10) in one report.")
@click.option("--out", type=FOLDER, default=None,
              help="Output folder [default: the first RESULTS_DIR/report].")
def report(results_dir: tuple[Path, ...], out: Path | None) -> None:
    """Write the paper's Tables 1-4 (CSV, LaTeX) and report.html with its figures, from recorded results only."""
    from pdm_bench import api

    for path in api.report(list(results_dir) or [Path("pdm-results")], out=out):
        click.echo(f"wrote {path}")


STUDY_ATTACKED = "baseline,rce,pdm"  # the paper's Tables 2-4
STUDY_TRAIN_ONLY = "siamese_rvl"  # the paper's Table 1 only


@cli.command(short_help="The whole study: train, attack, report.")
@study_options
@click.option("--results-dir", type=FOLDER, default=None,
              help="[default: pdm-results/DATASET-PRESET]")
@click.option("--out", type=FOLDER, default=None, help="Report folder [default: RESULTS_DIR/report].")
@click.option("--threats", default="gray,white,black", show_default=True, help="Comma-separated threat models (plugins too).")
@click.option("--n-samples", type=int, default=None, help="Test images attacked [default: the preset's].")
@click.option("--defenses", default=STUDY_ATTACKED, show_default=True,
              help="Defenses trained and attacked (Tables 1-4); plugins too, e.g. baseline,pdm,my_defense.")
@click.option("--train-only", default=STUDY_TRAIN_ONLY, show_default=True,
              help="Defenses only trained, for Table 1 ('' for none).")
@click.option("--seeds", default=None, help="Comma-separated seeds, e.g. 0,1,2 (instead of --seed): the whole study per "
              "seed; the report gives mean and sd.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Steps run at once, as subprocesses with CPUs/JOBS torch threads each, logs in RESULTS_DIR/logs/.")
@click.option("--detectors", default=None, help="Comma-separated detectors, e.g. kde,mahalanobis,lid (instead of "
              "--detector): every defense under every threat model against each.")
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="local: here (--jobs); slurm: each step a Slurm job through submitit (pip install 'pdm-bench[slurm]').")
@click.option("--slurm-partition", default=None, help="slurm: the partition [the cluster's default].")
@click.option("--slurm-gpus-per-job", type=int, default=None, help="slurm: GPUs per step [1; 0 on a CPU cluster].")
@click.option("--slurm-cpus-per-job", type=int, default=None, help="slurm: CPUs per step [4].")
@click.option("--slurm-mem", type=float, default=None, help="slurm: memory per step in GB [16].")
@click.option("--slurm-time", type=int, default=None, help="slurm: time limit per step in minutes [1440].")
@click.option("--max-parallel", type=int, default=None, help="slurm: jobs submitted at once [16].")
@_apply_flags
def paper(dataset: str, preset: str, seed: int, epochs: int | None, data_dir: Path | None, cache_dir: Path | None,
          device: str, results_dir: Path | None, out: Path | None, threats: str, n_samples: int | None,
          defenses: str, train_only: str, seeds: str | None, jobs: int, progress: bool | None, detector: str,
          detector_option_pairs: tuple[str, ...], bandwidth: float | None, kde_points: int | None,
          threat_option_pairs: tuple[str, ...], detectors: str | None, executor: str, slurm_partition: str | None,
          slurm_gpus_per_job: int | None, slurm_cpus_per_job: int | None, slurm_mem: float | None,
          slurm_time: int | None, max_parallel: int | None, **flags: Any) -> None:
    """The whole study: train baseline, rce, siamese_rvl and pdm; gray, white and black box for baseline, rce and
    pdm (or your --defenses); then the report. Rerun the same command to resume: finished models, attacks and rows
    are reused."""
    from pdm_bench.study import Study, parse_seeds

    if seeds is not None and click.get_current_context().get_parameter_source("seed") is not click.core.ParameterSource.DEFAULT:
        raise UserError(f"--seed {seed} and --seeds {seeds} both given: use --seeds for several seeds, --seed for one")
    if detectors is not None and click.get_current_context().get_parameter_source("detector") is not click.core.ParameterSource.DEFAULT:
        raise UserError(f"--detector {detector} and --detectors {detectors} both given: use --detectors for several")
    chosen = _names(threats)
    registry = threat_model_registry()
    for name in chosen:
        registry.get(name)
    if detector_option_pairs or bandwidth is not None or kde_points is not None:
        raise UserError("paper runs each detector with its default options; set them per run with `pdm-bench run`")
    if threat_option_pairs and len(chosen) != 1:
        raise UserError("-t/--threat-option needs exactly one threat model in --threats (options differ between them)")
    given = _pop_threat_flags(flags)
    if unused := sorted(f for f in given if not any(f in registry.get(n).flags for n in chosen)):
        raise UserError(f"{', '.join(unused)} applies to none of --threats {threats}")
    options = {name: threat_options(name, given, threat_option_pairs, strict=False) for name in chosen}
    slurm = slurm_resources(executor, jobs, partition=slurm_partition, gpus_per_job=slurm_gpus_per_job,
                            cpus_per_job=slurm_cpus_per_job, mem_gb=slurm_mem, time_min=slurm_time,
                            max_parallel=max_parallel)
    study = Study(dataset=dataset, defenses=_names(defenses), train_only=_names(train_only), threats=chosen,
                  seeds=parse_seeds(seeds) if seeds is not None else [seed], preset=preset, epochs=epochs,
                  n_samples=n_samples, detector=detectors if detectors is not None else detector,
                  threat_options={k: v for k, v in options.items() if v},
                  results_dir=results_dir, data_dir=data_dir, cache_dir=cache_dir, device=device,
                  progress=_progress(progress), log=click.echo, executor=executor, slurm=slurm)
    for path in study.run(jobs=jobs, out=out):
        click.echo(f"wrote {path}")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _list_components(title: str, registry: Registry[Any]) -> None:
    """Built-ins are described from their source (no torch import: see pdm_bench.catalog); plugins are loaded, so a
    broken one shows as BROKEN with its error."""
    from pdm_bench.catalog import Card, read_card

    click.echo(f"{title}:")
    for name, target, origin in registry.targets():
        card = read_card(target) if origin == "built-in" and target else None
        if card is None:
            status = registry.status(name)
            if status.error is not None:
                click.echo(f"  {name:<14} BROKEN {origin}: {status.error}")
                continue
            params = getattr(status.value, "params_type", status.value)
            card = Card(getattr(status.value, "description", ""),
                        describe_options(params) if isinstance(params, type) else "")
        click.echo(f"  {name:<14} {card.description}{'' if origin == 'built-in' else f' [{origin}]'}")
        if card.options:
            click.echo(f"  {'':<14} options: {card.options}")
    for status in registry.rejected():
        click.echo(f"  {status.name:<14} BROKEN {status.origin}: {status.error}")


@cli.command(name="step", short_help="Run one study step from its JSON data (what paper --jobs and Slurm run).")
@click.option("--spec", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="A step's data, as `paper` writes it under RESULTS_DIR/logs/steps/.")
def step_command(spec: Path) -> None:
    """Train or evaluate one step of a study from its data: the same call `paper` makes in its own process."""
    from pdm_bench.study import read_step_spec, run_step_data

    run_step_data(read_step_spec(spec), log=click.echo)


@cli.group(short_help="Get the data sets: pdm-bench data download mnist|cifar10.")
def data() -> None:
    """Data sets that are not embedded (digits is): download them from the sources torchvision uses."""


@data.command(name="download", short_help="Download MNIST or CIFAR-10 (checksummed, resumable).")
@click.argument("name", metavar="mnist|cifar10")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("data"),
              envvar="PDM_BENCH_DATA", show_default=True,
              help="Where to put it (NAME/ inside it); then pass the same --data-dir to train, run and paper "
                   "[env PDM_BENCH_DATA].")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar [default: when stderr is a terminal].")
def download_command(name: str, data_dir: Path, progress: bool | None) -> None:
    """Download data set NAME into DATA_DIR/NAME/, checked against its published md5; an interrupted download
    resumes where it stopped."""
    from pdm_bench.download import download

    download(name, data_dir, progress=_progress(progress), log=click.echo)


@cli.command(name="list", short_help="Components, data sets, presets, devices.")
def list_command() -> None:
    """List defenses, detectors, threat models and attacks (with their options), datasets, presets and devices."""
    _list_components("Defenses", defense_registry())
    _list_components("Detectors (--detector)", detector_registry())
    _list_components("Threat models (--threat)", threat_model_registry())
    from pdm_bench.threat_models.attack_specs import attack_registry

    click.echo("Gray-box attacks (--attacks):")
    for status in attack_registry().statuses():
        if status.error is not None:
            click.echo(f"  {status.name:<14} BROKEN {status.origin}: {status.error}")
            continue
        spec = status.value
        settings = ", ".join(f"{k}={v}" for k, v in spec.params.items())  # type: ignore[union-attr]
        origin = "" if status.origin == "built-in" else f" [{status.origin}]"
        click.echo(f"  {status.name:<14} {spec.family}: {settings}{origin}")  # type: ignore[union-attr]
    click.echo(f"  {'fgsm-EPS':<14} any eps in (0, 1]; also bim-EPS")
    click.echo("Datasets:")
    for name in DATASET_NAMES:
        click.echo(f"  {name}")
    click.echo("  folder:PATH    any image folder with train/<class>/* and test/<class>/*")
    click.echo("Presets:")
    for preset in PRESETS.values():
        click.echo(f"  {preset.name:<14} {preset.description}")
    click.echo(f"Devices: {', '.join(DEVICE_CHOICES)} (auto picks cuda when present)")


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code; errors print one line, never a traceback."""
    try:
        args = list(argv) if argv is not None else sys.argv[1:]
        if not args:  # the bare command: its help, not an error
            args = ["--help"]
        check_environment()
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
        click.echo("Interrupted: every finished epoch, attack chunk (50 images) and result row is kept; rerun the same "
                   "command to resume from there.", err=True)
        return EXIT_INTERRUPTED
    return 0


def main() -> None:
    sys.exit(run())
