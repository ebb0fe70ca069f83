"""pdm-bench: train defended classifiers and benchmark detection of adversarial examples on their embeddings.

The Python API (``pdm_bench.api``, ``pdm_bench.study``) is imported lazily, so ``pdm-bench --help`` stays fast."""

from __future__ import annotations

from typing import Any

from pdm_bench import threads
from pdm_bench.art_home import prepare_art_config

prepare_art_config()  # before anything imports ART: see pdm_bench.art_home
threads.apply_defaults()  # before anything imports torch: see pdm_bench.threads

__version__ = "0.1.0"

__all__ = ["RunPlan", "Study", "Trained", "evaluate", "execute", "load", "plan", "report", "train", "wrap"]


def __getattr__(name: str) -> Any:
    if name == "Study":
        from pdm_bench import study

        return study.Study
    if name in __all__:
        from pdm_bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'pdm_bench' has no attribute {name!r}")
