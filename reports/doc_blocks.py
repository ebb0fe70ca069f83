"""The docs' generated blocks: tables in docs/*.md between ``<!-- NAME -->`` markers, made from committed rows.

``python -m pdm_bench.reports.doc_blocks [REPO]`` rewrites every block; ``stale_blocks`` lists those that differ
from what the rows give now (tests/test_doc_blocks.py fails on any). Add a block by adding a :class:`DocBlock`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pdm_bench.reports.claims import all_claims, claims_markdown
from pdm_bench.results import ResultsStore
from pdm_bench.records import read_runs
from pdm_bench.tables import RowIndex


@dataclass(frozen=True)
class DocBlock:
    """A block of ``doc`` (relative to the repository) rendered by ``render`` from the rows of ``directories``."""

    doc: str
    name: str
    directories: tuple[str, ...]
    render: Callable[[RowIndex, list[Path]], str]


def _claims(index: RowIndex, directories: list[Path]) -> str:
    return claims_markdown(all_claims(index, directories))


def _headline(index: RowIndex, directories: list[Path]) -> str:
    claims = all_claims(index, directories)
    parts = []
    for block in dict.fromkeys(c.block for c in claims):
        verdicts = [c.verdict.split(" (")[0] for c in claims if c.block == block]
        parts.append(f"{block}: {verdicts.count('holds')} hold, {verdicts.count('does not hold')} do not, "
                     f"{verdicts.count('inconclusive')} inconclusive")
    return (f"**Headline** (quick preset, one seed, the paper's claims judged from the committed rows): "
            f"{'; '.join(parts)}. See the claims table in [docs/RESULTS.md](docs/RESULTS.md).")


BLOCKS = (
    DocBlock("docs/RESULTS.md", "claims:quick",
             ("docs/runs/mnist-quick", "docs/runs/mnist-adaptive", "docs/runs/cifar10-quick",
              "docs/runs/cifar10-transfer", "docs/runs/cifar10-adaptive"), _claims),
    DocBlock("README.md", "headline:quick",
             ("docs/runs/mnist-quick", "docs/runs/mnist-adaptive", "docs/runs/cifar10-quick",
              "docs/runs/cifar10-transfer", "docs/runs/cifar10-adaptive"), _headline),
)


def render(block: DocBlock, root: Path) -> str:
    """The block's text, markers included."""
    directories = [root / d for d in block.directories]
    rows = [row for d in directories for row in ResultsStore(d).rows()]
    runs = {k: v for d in directories for k, v in read_runs(d).items()}
    body = block.render(RowIndex(rows, runs), directories)
    sources = ", ".join(f"`{d}`" for d in block.directories)
    return (f"<!-- {block.name} -->\nGenerated from the rows of {sources} by `python -m pdm_bench.reports.doc_blocks`; "
            f"do not edit by hand.\n\n{body}\n<!-- /{block.name} -->")


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)


def stale_blocks(root: Path) -> list[str]:
    """The blocks whose text in their doc is missing or differs from what the rows give now."""
    stale = []
    for block in BLOCKS:
        found = _pattern(block.name).search((root / block.doc).read_text(encoding="utf-8"))
        if found is None or found.group(0) != render(block, root):
            stale.append(f"{block.doc}: {block.name}")
    return stale


def write_blocks(root: Path) -> list[str]:
    """Rewrite every block in place (a missing block goes at the end of its doc); the blocks rewritten."""
    for block in BLOCKS:
        path = root / block.doc
        text, new = path.read_text(encoding="utf-8"), render(block, root)
        pattern = _pattern(block.name)
        text = pattern.sub(lambda _: new, text) if pattern.search(text) else text.rstrip() + "\n\n" + new + "\n"
        path.write_text(text, encoding="utf-8")
    return [f"{block.doc}: {block.name}" for block in BLOCKS]


if __name__ == "__main__":
    for line in write_blocks(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()):
        print(f"rewrote {line}")
