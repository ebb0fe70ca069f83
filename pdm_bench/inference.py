"""Inference in eval mode, batched, results on the CPU: the one place a model is run on data outside training and
attacks' inner loops.

Names (one meaning each): the *embedding* is the pre-logits vector, the *raw logits* are the final layer's output,
the *logits* are what the model predicts with (``logit_sign * raw logits``; -1 for reverse cross-entropy).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm


@torch.no_grad()
def embed_and_predict(model: torch.nn.Module, x: np.ndarray | torch.Tensor, *, device: torch.device,
                      batch_size: int = 500, progress: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and predicted classes (from the logits the model predicts with) in one forward pass.

    ``progress``: a bar over the images with that description (None: no bar)."""
    model.eval()
    images = torch.as_tensor(x)
    embeddings, predictions = [], []
    with tqdm(total=len(images), desc=progress, unit="img", disable=progress is None, leave=False,
              dynamic_ncols=True) as bar:
        for chunk in images.split(batch_size):
            embedding, raw_logits = model.embed_and_logits(chunk.to(device))  # type: ignore[operator]
            embeddings.append(embedding.cpu())
            predictions.append((raw_logits * model.logit_sign).argmax(dim=1).cpu())
            bar.update(len(chunk))
    return torch.cat(embeddings), torch.cat(predictions)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor | np.ndarray, *, device: torch.device,
                   batch_size: int = 1000) -> torch.Tensor:
    """The logits the model predicts with."""
    model.eval()
    return torch.cat([model(chunk.to(device)).cpu() for chunk in torch.as_tensor(x).split(batch_size)])


def evaluate_accuracy(model: torch.nn.Module, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, *,
                      device: torch.device) -> float:
    """Clean accuracy in [0, 1]."""
    predictions = predict_logits(model, x, device=device).argmax(dim=1)
    return float((predictions == torch.as_tensor(y)).float().mean())
