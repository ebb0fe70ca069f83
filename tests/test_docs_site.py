"""The documentation site builds with ``mkdocs build --strict`` (a broken link, anchor or API reference fails), and
its home page renders in headless Chromium, as the report does. Needs the docs extra (``pip install -e ".[docs]"``):
without it the test skips, unless PDM_BENCH_REQUIRE_DOCS is set (.ci/run sets it after installing the extra)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS_TOOLS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_click")


def missing_tools() -> list[str]:
    missing = []
    for name in DOCS_TOOLS:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a dotted name whose parent package is absent
            found = False
        if not found:
            missing.append(name)
    return missing


def test_site_builds_strict_and_its_home_page_renders(tmp_path: Path, chromium: list[str]) -> None:
    if missing := missing_tools():
        if os.environ.get("PDM_BENCH_REQUIRE_DOCS"):
            pytest.fail(f"the docs tools are not installed ({', '.join(missing)}), and PDM_BENCH_REQUIRE_DOCS is set")
        pytest.skip(f"the docs extra is not installed ({', '.join(missing)}): pip install -e \".[docs]\"")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, env=env)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "WARNING" not in built.stderr, built.stderr[-3000:]

    home = site / "index.html"
    html = home.read_text(encoding="utf-8")
    assert "<title>pdm-bench</title>" in html
    for entry in ("Getting started", "User guide", "Detectors", "The report and the checklist",
                  "Studies, parallel runs and Slurm", "Caching and resuming", "Extending", "Reproduction", "Design",
                  "Reference"):
        assert entry in html, f"the home page's navigation has no {entry!r}"
    for page in ("getting-started", "guide/gray", "guide/white", "guide/black", "guide/adaptive", "detectors", "report",
                 "studies", "caching", "extending", "design", "RESULTS", "reference/cli", "reference/api"):
        assert (site / page / "index.html").exists(), page
    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert all(f"pdm-bench {command}" in cli for command in ("train", "run", "report", "paper", "list"))  # mkdocs-click
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert 'id="pdm_bench.api.evaluate"' in api and 'id="pdm_bench.study.Study"' in api  # mkdocstrings
    assert not (site / "runs" / "mnist-quick" / "cache").exists()  # the committed models stay out of the site

    dom = subprocess.run([*chromium, "--dump-dom", home.as_uri()], capture_output=True, text=True, timeout=60).stdout
    assert "Headline" in dom and "Getting started" in dom
    shot = tmp_path / "home.png"
    subprocess.run([*chromium, f"--screenshot={shot}", "--window-size=1280,1600", home.as_uri()], capture_output=True,
                   timeout=60, check=False)
    from PIL import Image

    image = Image.open(shot)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert image.size == (1280, 1600)
    assert pixels.std() > 10, "the screenshot is one colour: nothing was drawn"
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 50  # text, the header's colour, the code blocks
    header = pixels[:40].reshape(-1, 3).mean(axis=0)
    assert header[2] > header[0] + 30, f"the Material header (indigo) is not at the top: mean RGB {header}"
