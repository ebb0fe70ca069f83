"""A detector's view of a model when it reads more than the embedding (Lee et al.'s and Ma et al.'s multi-layer
detectors): :class:`LayerFeatures` wraps the model so that ``embed_and_logits`` returns the detector's *features*,
the channel means of each named layer's output followed by the embedding, in place of the embedding alone. Everything
that runs a detector (its fit, the gray box's scoring, the white box's C&W-wb, the adaptive attacks) runs it on this
view, so a multi-layer detector is attacked through every layer it reads. Predictions are the model's own.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable

import torch
from torch import nn

from pdm_bench.errors import UserError

# (features of an input, input) -> the features a detector reads for that input (see LayerFeatures)
Adjust = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor], torch.Tensor]


def parse_layers(text: str) -> tuple[str, ...]:
    """``"stem,stage1"`` -> ``("stem", "stage1")``; '' -> () (the embedding only)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if len(set(names)) != len(names):
        raise ValueError(f"layers names a layer twice: {text!r}")
    return names


def channel_means(activation: torch.Tensor) -> torch.Tensor:
    """(N, C) of a layer's output: the mean over every position of each channel (Lee et al.'s feature), or the
    output itself when it is already (N, D)."""
    return activation.flatten(2).mean(dim=2) if activation.dim() > 2 else activation.flatten(1)


class LayerFeatures(nn.Module):
    """``model`` with ``embed_and_logits`` returning ``(features, raw logits)``: the channel means of each of
    ``layers`` (submodule names, in that order) and then the embedding, concatenated. ``layer_sizes`` gives each
    block's width (the embedding's last). Forward hooks are registered for one call at a time (not thread-safe)."""

    def __init__(self, model: nn.Module, layers: tuple[str, ...], *, adjust: Adjust | None = None) -> None:
        super().__init__()
        modules = dict(model.named_modules())
        for name in layers:
            if name not in modules or not name:
                valid = [n for n, m in model.named_children()]
                close = difflib.get_close_matches(name, list(modules), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise UserError(f"Detector option layers: the model has no layer '{name}'{hint}; its top-level layers "
                                f"are {', '.join(valid)} (any submodule name, e.g. stage2.0, works too)")
        self.model = model
        self.layers = layers
        self.adjust = adjust
        self.layer_sizes: tuple[int, ...] = ()
        self.embedding = getattr(model, "embedding", None)

    @property
    def logit_sign(self) -> torch.Tensor:  # type: ignore[override]
        return self.model.logit_sign  # type: ignore[return-value]

    def embed_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, raw = self._features_and_logits(x)
        if self.adjust is not None:  # e.g. Lee et al.'s input pre-processing: the features of a nudged input
            features = self.adjust(lambda nudged: self._features_and_logits(nudged)[0], x)
        return features, raw

    def _features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        modules = dict(self.model.named_modules())
        handles = [modules[name].register_forward_hook(
            lambda _m, _i, output, name=name: captured.__setitem__(name, output)) for name in self.layers]
        try:
            embedding, raw = self.model.embed_and_logits(x)  # type: ignore[operator]
        finally:
            for handle in handles:
                handle.remove()
        blocks = [channel_means(captured[name]) for name in self.layers] + [embedding]
        self.layer_sizes = tuple(block.shape[1] for block in blocks)
        return torch.cat(blocks, dim=1), raw

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_and_logits(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def with_batch_norm_folded(self) -> LayerFeatures:
        """The same view of a copy of the model, BatchNorm folded where the model can (see
        :meth:`pdm_bench.models.ResNet.with_batch_norm_folded`); this one is left as it is."""
        fold = getattr(self.model, "with_batch_norm_folded", None)
        inner = fold() if callable(fold) else copy.deepcopy(self.model)
        return LayerFeatures(inner, self.layers, adjust=self.adjust)


def split_layers(features: torch.Tensor, sizes: tuple[int, ...]) -> list[torch.Tensor]:
    """The per-layer blocks of ``features`` (see :class:`LayerFeatures`); the whole as one block when ``sizes`` is
    empty (a detector fitted on the embedding alone)."""
    if not sizes:
        return [features]
    if sum(sizes) != features.shape[1]:
        raise ValueError(f"features of width {features.shape[1]} do not split into layers of sizes {sizes}")
    return list(features.split(list(sizes), dim=1))
