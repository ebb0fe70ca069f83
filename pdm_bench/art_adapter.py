"""ART at the edge: a trained model as an ART ``PyTorchClassifier`` (its embedding reachable by layer name), and the
black-box distillation pieces (``CopycatCNN``). The attacks are built in ``pdm_bench.threat_models.attack_specs``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from art.attacks.extraction import CopycatCNN
from art.estimators.classification import PyTorchClassifier

from pdm_bench.errors import UserError
from pdm_bench.storage import atomic_save

from pdm_bench.contract import EMBEDDING_LAYER


def to_art_classifier(
    model: torch.nn.Module,
    *,
    input_shape: tuple[int, int, int],
    nb_classes: int,
    device: torch.device,
) -> PyTorchClassifier:
    """Wrap ``model`` (which returns the logits it predicts with, -z for RCE models) for ART.

    ``clip_values=(0, 1)`` because every dataset's pixels lie in [0, 1]. The loss is cross-entropy on those
    logits, which is what gradient attacks (FGSM, BIM) ascend.
    """
    if not isinstance(model, torch.nn.Module) or not hasattr(model, EMBEDDING_LAYER):
        raise TypeError(f"expected a model with a top-level '{EMBEDDING_LAYER}' module, got {type(model).__name__}")
    model.eval()
    return PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=input_shape,
        nb_classes=nb_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )


def art_embeddings(classifier: PyTorchClassifier, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """The pre-logits embedding of ``x`` as ART returns it, by layer name (never by index: see REFERENCE.md)."""
    return np.asarray(classifier.get_activations(x, EMBEDDING_LAYER, batch_size=batch_size, framework=False))


class ProbabilityOutput(torch.nn.Module):
    """A victim as the black-box attacker queries it: the softmax of the logits it predicts with (-z for RCE)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


class ScheduledCopycatCNN(CopycatCNN):
    """ART's ``CopycatCNN`` with what distillation needs and its ``extract`` lacks; the rest is ART's.

    ``extract`` calls ``fit(x, y, batch_size, nb_epochs)`` and nothing else, so the proxy could not train with the
    target's schedule (step learning rate: ``milestones``, ``gamma``), a final batch of one image breaks BatchNorm
    (no ``drop_last``), and the queries (``_select_data``) and batch order come from the global, unseeded RNGs. This
    subclass passes a ``MultiStepLR`` and ``drop_last=True`` to ``fit`` and seeds both; it still queries the victim
    through ART (``_query_label``, probabilities with ``use_probability=True``) and fits ART's thieved classifier.
    """

    attack_params = CopycatCNN.attack_params + ["milestones", "gamma", "seed"]

    def __init__(self, classifier: PyTorchClassifier, *, milestones: tuple[int, ...] = (), gamma: float = 0.1,
                 seed: int = 0, verbose: bool = False, **kwargs: Any) -> None:
        super().__init__(classifier, **kwargs)
        self.milestones, self.gamma, self.seed, self.verbose = tuple(milestones), gamma, seed, verbose

    def _select_data(self, x: np.ndarray) -> np.ndarray:
        """``nb_stolen`` inputs, a seeded choice (all of them, in order, when ``nb_stolen >= len(x)``)."""
        if self.nb_stolen >= len(x):
            return x.astype(np.float32)
        chosen = np.sort(np.random.default_rng(self.seed).choice(len(x), self.nb_stolen, replace=False))
        return x[chosen].astype(np.float32)

    def extract(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> PyTorchClassifier:
        """Fit ``thieved_classifier`` (keyword) on the victim's answers, one epoch per ``fit`` call (the same batches
        as one call). With ``checkpoint`` (keyword, a path) each finished epoch is saved there and a rerun resumes
        after the last one; the file is removed at the end."""
        thieved = kwargs.get("thieved_classifier")
        if not isinstance(thieved, PyTorchClassifier) or thieved.optimizer is None:
            raise ValueError(f"expected a thieved PyTorchClassifier with an optimizer, got {type(thieved).__name__}")
        checkpoint: Path | None = kwargs.get("checkpoint")
        selected = self._select_data(x)
        soft_labels = self._query_label(selected)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(thieved.optimizer, milestones=list(self.milestones),
                                                         gamma=self.gamma)
        with torch.random.fork_rng(devices=[]):  # the DataLoader's shuffling draws from torch's CPU generator
            torch.manual_seed(self.seed)
            done = _resume(checkpoint, thieved, scheduler)
            for epoch in range(done, self.nb_epochs):
                thieved.fit(selected, soft_labels, batch_size=self.batch_size_fit, nb_epochs=1,
                            drop_last=len(selected) > self.batch_size_fit, scheduler=scheduler, verbose=self.verbose)
                if checkpoint is not None and epoch + 1 < self.nb_epochs:
                    state = {"epochs_done": epoch + 1, "model": thieved.model.state_dict(),
                             "optimizer": thieved.optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "rng": torch.get_rng_state()}
                    atomic_save(state, checkpoint)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        thieved.model.eval()
        return thieved


def _resume(checkpoint: Path | None, thieved: PyTorchClassifier, scheduler: Any) -> int:
    """Load a distillation checkpoint into the proxy, its optimizer, scheduler and torch's RNG; epochs already done."""
    if checkpoint is None or not checkpoint.exists():
        return 0
    try:
        state = torch.load(checkpoint, map_location=thieved.device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError):
        return 0  # a torn file: nothing loaded yet, start over
    try:
        thieved.model.load_state_dict(state["model"])
        thieved.optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        return int(state["epochs_done"])
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as error:
        raise UserError(f"Distillation checkpoint {checkpoint} does not fit this proxy ({error}); remove it to "
                        "distil again") from None


def build_copycat(victim: torch.nn.Module, proxy: torch.nn.Module, *, optimizer: torch.optim.Optimizer,
                  input_shape: tuple[int, int, int], nb_classes: int, device: torch.device, epochs: int, batch_size: int,
                  milestones: tuple[int, ...], gamma: float, seed: int, nb_stolen: int, verbose: bool = False
                  ) -> tuple[ScheduledCopycatCNN, PyTorchClassifier]:
    """The distillation pieces: a copycat attack querying ``victim``'s probabilities, and ``proxy`` as ART's
    thieved classifier (cross-entropy against those probabilities, ``optimizer``, pixels in [0, 1])."""
    device_type = "gpu" if device.type == "cuda" else "cpu"
    victim.eval()
    queried = PyTorchClassifier(model=ProbabilityOutput(victim), loss=torch.nn.CrossEntropyLoss(), input_shape=input_shape,
                                nb_classes=nb_classes, clip_values=(0.0, 1.0), device_type=device_type)
    thieved = PyTorchClassifier(model=proxy, loss=torch.nn.CrossEntropyLoss(), optimizer=optimizer, input_shape=input_shape,
                                nb_classes=nb_classes, clip_values=(0.0, 1.0), device_type=device_type)
    attack = ScheduledCopycatCNN(queried, batch_size_fit=batch_size, batch_size_query=512, nb_epochs=epochs,
                                 nb_stolen=nb_stolen, use_probability=True, milestones=milestones, gamma=gamma, seed=seed,
                                 verbose=verbose)
    return attack, thieved
