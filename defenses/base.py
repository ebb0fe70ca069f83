"""The defense contract as plugins import it: :mod:`pdm_bench.defense` (the core's), under its documented path."""

from pdm_bench.defense import ClassGroups, Defense, LossTerms, TrainContext, check_loss_weights, check_non_negative, terms_total

__all__ = ["ClassGroups", "Defense", "LossTerms", "TrainContext", "check_loss_weights", "check_non_negative", "terms_total"]
