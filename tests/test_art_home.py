"""ART's config file is written before ART is imported, so processes starting at once on a fresh home cannot race on
it (ART's own check-then-write can leave it with ``NameError: name '_config' is not defined``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pdm_bench.art_home import prepare_art_config


def fresh_home_env(home: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(home)}


def test_importing_pdm_bench_writes_arts_default_config_before_art_is_imported(tmp_path: Path) -> None:
    code = ("import sys, pdm_bench; print('art' in sys.modules); "
            "import art.config; print(art.config.ART_DATA_PATH)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=fresh_home_env(tmp_path))
    assert done.stdout.split() == ["False", str(tmp_path / ".art" / "data")], done.stderr
    assert json.loads((tmp_path / ".art" / "config.json").read_text()) == {"ART_DATA_PATH": str(tmp_path / ".art" / "data")}
    assert [p.name for p in (tmp_path / ".art").iterdir() if p.name.endswith(".tmp")] == []


def test_an_existing_config_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".art").mkdir()
    (tmp_path / ".art" / "config.json").write_text('{"ART_DATA_PATH": "/somewhere/else"}')
    prepare_art_config()
    assert (tmp_path / ".art" / "config.json").read_text() == '{"ART_DATA_PATH": "/somewhere/else"}'


def test_a_home_where_the_folder_cannot_be_made_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".art").write_text("a file where ART wants its folder")
    monkeypatch.setenv("HOME", str(tmp_path))
    prepare_art_config()  # ART itself warns about this case; importing pdm_bench must not fail on it
    assert (tmp_path / ".art").read_text() == "a file where ART wants its folder"

