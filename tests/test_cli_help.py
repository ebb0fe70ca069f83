"""The first commands a new user types: the bare command, a missing --threat, the command summaries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CliResult = Any


def test_the_bare_command_prints_its_help_and_succeeds(cli: Callable[..., CliResult]) -> None:
    done = cli()
    assert done.code == 0 and "Commands:" in done.out and "Error" not in done.err
    summaries = [line for line in done.out.splitlines() if line.startswith("  ") and not line.strip().startswith("-")]
    assert summaries and not any(line.rstrip().endswith("...") for line in summaries)  # none cut mid-sentence


def test_a_missing_threat_lists_the_choices(cli: Callable[..., CliResult]) -> None:
    done = cli("run", "--defense", "pdm")
    assert done.code == 2 and done.err.count("\n") == 1
    assert "gray, white, black, adaptive" in done.err


def test_the_threat_help_names_every_built_in(cli: Callable[..., CliResult]) -> None:
    assert "gray, white, black, adaptive" in " ".join(cli("run", "--help").out.split())
