"""The ``pdm-bench`` command line (click). Bad input ends in one ``Error: ...`` line and a non-zero exit."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import click

from pdm_bench.config import DEVICE_CHOICES, PRESETS, PresetName, make_plan, resolve_cache_dir, resolve_device
from pdm_bench.data import DATASET_NAMES, load_dataset, resolve_data_dir
from pdm_bench.errors import UserError
from pdm_bench.registry import defense_registry

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


@cli.command()
@click.option("--dataset", default="digits", show_default=True,
              help=f"{', '.join(DATASET_NAMES)}, or folder:PATH for an image folder (train/<class>/*, test/<class>/*)")
@click.option("--defense", default="pdm", show_default=True, help="A defense name; `pdm-bench list` shows them all.")
@click.option("--defense-option", "-o", "defense_options", multiple=True, metavar="NAME=VALUE",
              help="Set a defense option, e.g. -o q=0.7 -o rvl_weight=2 (repeatable).")
@click.option("--preset", default=PresetName.QUICK.value, show_default=True,
              type=click.Choice([p.value for p in PresetName]), help="quick: small ResNet for a CPU; paper: ResNet-56.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the preset's epoch count.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, envvar="PDM_BENCH_DATA",
              help="Where mnist/, cifar-10-batches-py/, cifar10-jpeg/ lie [env PDM_BENCH_DATA].")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, envvar="PDM_BENCH_CACHE",
              help="Decoded data and trained models [env PDM_BENCH_CACHE; default ~/.cache/pdm-bench].")
@click.option("--device", default="auto", show_default=True, help=f"One of {', '.join(DEVICE_CHOICES)}.")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar [default: when stderr is a terminal].")
def train(
    dataset: str,
    defense: str,
    defense_options: tuple[str, ...],
    preset: str,
    epochs: int | None,
    seed: int,
    data_dir: Path | None,
    cache_dir: Path | None,
    device: str,
    progress: bool | None,
) -> None:
    """Train a defense (or reuse its cached model) and print its clean test accuracy."""
    from pdm_bench.training import train_or_load  # torch-heavy imports only when needed

    torch_device = resolve_device(device)
    defense_obj = defense_registry().get(defense).from_options(_parse_options(defense_options))
    cache = resolve_cache_dir(cache_dir)
    data = load_dataset(dataset, data_dir=resolve_data_dir(data_dir), cache_dir=cache)
    plan = make_plan(preset, dataset=data.name, input_shape=data.input_shape, num_classes=data.num_classes,
                     seed=seed, epochs=epochs)
    click.echo(f"Dataset {data.name}: {len(data.y_train)} train / {len(data.y_test)} test images, "
               f"{'x'.join(map(str, data.input_shape))}, {data.num_classes} classes")
    click.echo(f"Defense {defense_obj.name} {defense_obj.options() or ''}".rstrip()
               + f"; preset {plan.preset}: ResNet-{plan.model.depth}, {plan.epochs} epochs, seed {seed}, device {torch_device}")
    started = time.perf_counter()
    result = train_or_load(dataset=data, defense=defense_obj, plan=plan, cache_dir=cache, device=torch_device,
                           progress=sys.stderr.isatty() if progress is None else progress, log=click.echo)
    verb = "reused" if result.from_cache else f"trained in {time.perf_counter() - started:.1f} s"
    click.echo(f"Clean test accuracy: {100 * result.test_accuracy:.2f}% "
               f"({defense_obj.name} on {data.name}, preset {plan.preset}, seed {seed}; {verb})")
    click.echo(f"Model: {result.run_dir}")


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


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code; errors print one line, never a traceback."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="pdm-bench", standalone_mode=False)
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
