"""Seeds for attacks: every attack, a plugin's included, draws its randomness from the run's seed.

An attack's own generator comes from :func:`attack_seed` (the run's seed, the attack's name and the first image of
the chunk, so a resumed run makes the same images); ART attacks that draw from numpy's or Python's global random
state run inside :func:`seeded_global_rngs`, which seeds both and restores them afterwards.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


def attack_seed(seed: int, attack: str, start: int = 0) -> int:
    """A 32-bit seed for ``attack`` on the chunk of images beginning at ``start``, derived from the run's ``seed``."""
    digest = hashlib.sha256(f"{seed}:{attack}:{start}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed numpy's and Python's global random state with ``seed`` for the block, then restore both."""
    state, python_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
        random.setstate(python_state)
