"""The model contract that training losses, the KDE detector and the attacks rely on, and a wrapper that makes any
user ``nn.Module`` classifier satisfy it.

Names used throughout the project:

* **embedding**: the pre-logits vector of an input, shape ``(N, D)``;
* **raw logits**: the output of the final layer, before any sign flip;
* **logits**: what the model predicts with, ``logit_sign * raw_logits`` (``logit_sign`` is -1 for reverse
  cross-entropy models).
"""

from __future__ import annotations

import difflib
import hashlib
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from pdm_bench.errors import UserError

EMBEDDING_LAYER = "embedding"
"""Name of the top-level ``nn.Identity`` child the embedding passes through (ART's ``get_activations`` layer)."""

_MAX_LISTED_LAYERS = 40


@runtime_checkable
class EmbeddingClassifier(Protocol):
    """A classifier exposing its embedding (pre-logits vector) and raw logits (final layer output).

    ``model(x)`` returns the logits it predicts with, ``logit_sign * raw_logits``; ``logit_sign`` is a 0-dim tensor,
    +1 or -1. To be usable with ART by layer name the model must also have a top-level child module named
    ``embedding`` (see :data:`EMBEDDING_LAYER`) that the embedding passes through inside ``forward``.
    """

    logit_sign: torch.Tensor

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding, shape ``(N, D)``."""
        ...

    def embed_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, raw_logits)`` from one forward pass."""
        ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The logits the model predicts with, ``logit_sign * raw_logits``."""
        ...


class WrappedModel(nn.Module):
    """A user's classifier (child ``network``) made into an :class:`EmbeddingClassifier`.

    A forward hook on the submodule named ``embedding_layer`` captures its output, flattened to ``(N, D)``; the
    network's output is taken as the raw logits. If ``network`` already is an :class:`EmbeddingClassifier` and
    ``embedding_layer`` is ``"embedding"``, its own ``embed_and_logits`` is used instead (so its raw logits stay raw)
    and ``logit_sign`` starts as the network's sign. Either way ``negate_logits`` negates what the network predicts
    with. Not thread-safe: one forward at a time per network. Build it with :func:`wrap`, which validates the name.
    """

    logit_sign: torch.Tensor

    def __init__(self, network: nn.Module, embedding_layer: str, *, negate_logits: bool = False) -> None:
        super().__init__()
        self.network = network
        self.embedding = nn.Identity()
        self.embedding_layer = embedding_layer
        self.delegates = embedding_layer == EMBEDDING_LAYER and isinstance(network, EmbeddingClassifier)
        sign = float(network.logit_sign) if self.delegates else 1.0  # type: ignore[arg-type, attr-defined]
        self.register_buffer("logit_sign", torch.tensor(-sign if negate_logits else sign))
        if not self.delegates:
            self._layer()  # fail now on a bad name

    def _layer(self) -> nn.Module:
        try:
            return self.network.get_submodule(self.embedding_layer)
        except AttributeError:
            raise ValueError(f"{type(self.network).__name__} has no layer {self.embedding_layer!r}") from None

    def _network_output(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.delegates:
            return self.network.embed_and_logits(x)  # type: ignore[operator]
        captured: list[Any] = []

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            # clone now: a later in-place op in the network (ReLU(inplace=True), +=) must not change the embedding
            captured.append(output.clone() if isinstance(output, torch.Tensor) else output)

        # The hook lives only for this call: no stale value or graph is kept, copies and pickles carry no hook.
        handle = self._layer().register_forward_hook(hook)
        try:
            raw = self.network(x)
        finally:
            handle.remove()
        name = type(self.network).__name__
        if not captured:
            raise RuntimeError(f"layer '{self.embedding_layer}' of {name} did not run in its forward pass, so no "
                               "embedding was captured; choose a layer on the path from input to output")
        out = captured[-1]  # a layer called twice in one forward (a shared ReLU): its last output
        if not isinstance(out, torch.Tensor) or out.dim() < 2:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise RuntimeError(f"layer '{self.embedding_layer}' of {name} output {got}; expected a tensor (N, ...)")
        return torch.flatten(out, 1), raw

    def embed_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, raw_logits)`` from ONE forward of the network; the embedding keeps autograd."""
        embedding, raw = self._network_output(x)
        if not isinstance(raw, torch.Tensor):
            raise TypeError(f"{type(self.network).__name__} returned {type(raw).__name__}; expected a tensor of logits")
        return self.embedding(embedding), raw

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding, shape ``(N, D)``."""
        return self.embed_and_logits(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits the model predicts with; the embedding goes through ``self.embedding`` on the way (for ART)."""
        _, raw = self.embed_and_logits(x)
        return raw * self.logit_sign

    def extra_repr(self) -> str:
        return f"embedding_layer={self.embedding_layer!r}"


def _layer_list(names: list[str]) -> str:
    if len(names) <= _MAX_LISTED_LAYERS:
        return ", ".join(names)
    head, tail = names[:15], names[-20:]
    return f"{', '.join(head)}, ... ({len(names) - 35} more) ..., {', '.join(tail)}"


def wrap(module: nn.Module, *, embedding: str, negate_logits: bool = False) -> WrappedModel:
    """Make ``module`` an :class:`EmbeddingClassifier` whose embedding is the (flattened) output of the submodule
    with dotted name ``embedding`` (e.g. ``"avgpool"``, ``"layer4.pool"``, ``"features.3"``).

    ``negate_logits`` makes it predict with the negation of the module's output (reverse cross-entropy models).
    Raises :class:`UserError` (one line) for a non-module or a name the module does not have.
    """
    if not isinstance(module, nn.Module):
        raise UserError(f"Expected a torch.nn.Module to wrap, got {type(module).__name__}")
    if not isinstance(embedding, str) or not embedding:
        raise UserError(f"Expected the embedding layer as a non-empty dotted name such as 'avgpool', got {embedding!r}")
    names = [name for name, _ in module.named_modules(remove_duplicate=False) if name]
    if embedding not in names:
        close = difflib.get_close_matches(embedding, names, n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        listed = _layer_list(names) if names else "(none: it has no submodules)"
        raise UserError(f"Model {type(module).__name__} has no layer {embedding!r}.{hint} Its layers: {listed}")
    return WrappedModel(module, embedding, negate_logits=negate_logits)


def model_fingerprint(model: nn.Module) -> str:
    """A stable 16-hex-digit key for caches of ``model``: sha256 of its class qualname, its module tree (names and
    class qualnames), a wrapper's embedding layer, and its state_dict (names, shapes, dtypes, bytes; sorted by name)."""
    digest = hashlib.sha256()
    digest.update(type(model).__qualname__.encode())
    for name, sub in model.named_modules(remove_duplicate=False):
        digest.update(f"\0module {name}:{type(sub).__qualname__}".encode())
        if isinstance(sub, WrappedModel):
            digest.update(f"\0embedding_layer {sub.embedding_layer}".encode())
    for name, value in sorted(model.state_dict().items()):
        if isinstance(value, torch.Tensor):
            tensor = value.detach().to("cpu").contiguous()
            digest.update(f"\0tensor {name}:{tuple(tensor.shape)}:{tensor.dtype}\0".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:  # extra state from get_extra_state()
            digest.update(f"\0extra {name}:{value!r}".encode())
    return digest.hexdigest()[:16]


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def check_classifier(model: nn.Module, *, input_shape: tuple[int, int, int], num_classes: int,
                     device: torch.device | str) -> None:
    """Run one forward (eval mode, no grad) on a zeros batch of 2 and raise a one-line :class:`UserError` unless
    ``model`` is an :class:`EmbeddingClassifier` giving logits of shape ``(2, num_classes)`` and a 2-D embedding
    ``(2, D)``. Every submodule's train/eval mode is restored afterwards."""
    name = type(model).__name__
    if not isinstance(model, nn.Module) or not isinstance(model, EmbeddingClassifier):
        raise UserError(f"Model {name} is not an embedding classifier (it needs logit_sign, embed and "
                        "embed_and_logits); wrap it with pdm_bench.contract.wrap(model, embedding='<layer name>')")
    modes = [(sub, sub.training) for sub in model.modules()]
    model.eval()
    x = torch.zeros((2, *input_shape), device=device)
    try:
        with torch.no_grad():
            result = model.embed_and_logits(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        raise UserError(f"Model {name} failed on a zeros batch of shape {tuple(x.shape)}: {_one_line(error)}") from None
    finally:
        for sub, training in modes:
            sub.training = training
    if not isinstance(result, tuple) or len(result) != 2:
        raise UserError(f"Model {name}.embed_and_logits returned {type(result).__name__}; expected (embedding, logits)")
    embedding, logits = result

    def shape(value: Any) -> Any:
        return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__

    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, num_classes):
        raise UserError(f"Model {name} returned logits of shape {shape(logits)} for a batch of 2; expected "
                        f"(2, {num_classes}) for {num_classes} classes")
    if not isinstance(embedding, torch.Tensor) or embedding.dim() != 2 or embedding.shape[0] != 2:
        raise UserError(f"Model {name} returned an embedding of shape {shape(embedding)} for a batch of 2; expected "
                        "a 2-D (2, D)")
