"""ART's configuration file, written once and atomically before ART is first imported.

On import, ART checks twice whether ``~/.art/config.json`` exists and writes it if not; when several processes start
on a fresh home at once (``--jobs``, a Slurm array, two runs side by side) one of them can pass the first check before
the file exists and the second after, and dies with ``NameError: name '_config' is not defined``. Writing the same
default file here first, through a temporary name and ``os.replace``, leaves ART nothing to race on. Standard
library only: this runs on ``import pdm_bench``."""

from __future__ import annotations

import json
import os
from pathlib import Path


def art_folder() -> Path:
    """The folder ART keeps its configuration in: ``~/.art``, or ``/tmp/.art`` where the home cannot be written."""
    home = Path(os.path.expanduser("~"))
    return (home if os.access(home, os.W_OK) else Path("/tmp")) / ".art"


def prepare_art_config() -> None:
    """Write ART's default ``config.json`` if it is missing; never raise (ART warns on its own if it cannot)."""
    folder = art_folder()
    config = folder / "config.json"
    if config.exists():
        return
    tmp = folder / f".config.json.{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"ART_DATA_PATH": str(folder / "data")}, indent=4), encoding="utf8")
        os.replace(tmp, config)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
