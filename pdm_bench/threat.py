"""The threat-model contract: one class per threat model, registered by name (built-ins and the entry-point group
``pdm_bench.threat_models``).

A threat model has typed options (a keyword-only dataclass, validated once in its ``__post_init__``), implements
``evaluate(evaluation) -> rows``, and says how its rows read: the table printed after a run (``summary``), the
report's tables (``report_tables``) and figures (``report_figures``). ``cost_rank`` orders a study's parallel steps (lower: started first).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, final

from pdm_bench.errors import UserError
from pdm_bench.options import build_options

if TYPE_CHECKING:
    from pathlib import Path

    from pdm_bench.checklist import Check
    from pdm_bench.data import Dataset
    from pdm_bench.detectors import Detector
    from pdm_bench.evaluation import Evaluation
    from pdm_bench.figures import Figure
    from pdm_bench.results import ResultRow
    from pdm_bench.tables import RowIndex, Table


@dataclass(frozen=True, kw_only=True)
class ThreatParams:
    """Options of a threat model: subclass with typed fields and defaults."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ThreatModel(ABC):
    """Base class of every threat model (built-in or plugin)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    params_type: ClassVar[type[ThreatParams]] = ThreatParams
    cost_rank: ClassVar[int] = 50  # a study with --jobs starts the lowest ranks first (the costliest threats)
    attacks_detector: ClassVar[bool] = False  # True: the attack optimises the detector's differentiable score
    heading: ClassVar[str] = ""  # what the results printed after a run are called (default: "Threat model 'NAME'")
    # Built-in CLI flags this threat model takes (flag -> params field); any field can be set with -t NAME=VALUE.
    flags: ClassVar[Mapping[str, str]] = {}

    def __init__(self, params: ThreatParams | None = None) -> None:
        if params is None:
            params = self.params_type()
        if not isinstance(params, self.params_type):
            raise UserError(f"Threat model '{self.name}' expects {self.params_type.__name__} options, got "
                            f"{type(params).__name__}")
        self.params = params

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> ThreatModel:
        """Built from option values (strings from the CLI are converted to each field's type)."""
        return cls(build_options(cls.params_type, values, owner=f"threat model '{cls.name}'"))

    @final
    def run(self, evaluation: Evaluation) -> list[ResultRow]:
        """Evaluate (reusing what the results store already holds) and return this run's rows."""
        if self.attacks_detector and not evaluation.detector.differentiable:
            raise UserError(f"Threat model '{self.name}' attacks the detector through its differentiable score; "
                            f"detector '{evaluation.detector.name}' has none")
        self.check_detector(evaluation.detector)
        if evaluation.detector.head_attack:
            self.fit_detector_head(evaluation)
        return self.evaluate(evaluation)

    def check_detector(self, detector: Detector) -> None:
        """Refuse, before any training, a detector this threat model cannot run: by default one with a second stage
        to train (``head_attack``), which the built-in threat models train and a plugin's does not."""
        if detector.head_attack:
            raise UserError(f"Threat model '{self.name}' cannot train detector '{detector.name}' on "
                            f"head_attack={detector.head_attack}; leave head_attack unset, or use gray, white, black "
                            "or adaptive")

    def check_data(self, data: Dataset) -> None:
        """Refuse, before any training, options that do not fit the data set (default: none checked)."""

    def fit_detector_head(self, evaluation: Evaluation) -> None:
        """Train the detector's second stage on its ``head_attack``'s examples (the built-in threat models share
        :func:`pdm_bench.threat_models.detector_head.train_head`); a threat model whose ``check_detector`` accepts
        such a detector implements it."""
        raise NotImplementedError(f"threat model '{self.name}' accepts head_attack but does not train the head")

    @abstractmethod
    def evaluate(self, evaluation: Evaluation) -> list[ResultRow]:
        """Attack ``evaluation``'s images, append the rows to its store, and return the run's rows."""

    def settings(self) -> dict[str, Any]:
        """What, besides the model, samples and detector, identifies a run (its id) and its provenance."""
        return self.params.as_dict()

    def summary(self, rows: list[ResultRow]) -> str:
        """The table printed after a run (default: attack, metric, value, n)."""
        lines = [f"{'attack':<14} {'metric':<20} {'value':>10} {'n':>6}"]
        lines += [f"{r.attack:<14} {r.metric:<20} {r.value:>10.4g} {r.n:>6}" for r in rows if r.metric != "finished"]
        return "\n".join(lines)

    def report_tables(self, index: RowIndex) -> list[Table]:
        """The report's tables from this threat model's rows (default: none)."""
        return []

    def report_figures(self, index: RowIndex, directory: Path, dataset: str, preset: str) -> list[Figure]:
        """The report's figures for one dataset block (``directory``: the results directory, for files beside the
        rows); default: none."""
        return []

    def checklist(self, index: RowIndex, dataset: str, preset: str, defense: str) -> list[Check]:
        """The items of Carlini et al. 2019's checklist these rows show for one column (default: none)."""
        return []
