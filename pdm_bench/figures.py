"""A report figure (matplotlib, Agg), returned as a PNG data URI so report.html is one self-contained file; the
report and the threat models make theirs with these helpers."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One embedded figure: what it shows and the PNG."""

    key: str
    title: str
    caption: str
    data_uri: str


def pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def encode(fig) -> str:  # type: ignore[no-untyped-def]
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
