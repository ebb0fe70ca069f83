"""Geometry of a trained model's embedding (Section 2 and Figure 2 of the paper), measured on clean test images.

- The terms of the bound (Eq. 4), ``||eps|| >~ eta / ||J(x)||``: the embedding margin ``eta`` (the smallest distance
  between the embeddings of two test images of different classes), the Frobenius norm of the embedding's Jacobian
  with respect to the input (exact, one backward pass per embedding dimension, averaged over the images), and their
  ratio. The minimum is an extreme statistic, so the mean distance of each image to its nearest other-class image is
  reported beside it.
- The Davies-Bouldin index of the embeddings under the true labels (lower: tighter, better separated clusters) and
  a 2-d t-SNE of the same images, for the report's Figure 2.

Pure torch except t-SNE and the Davies-Bouldin index (scikit-learn, on a numpy copy, once per model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from pdm_bench.inference import embed_and_predict

DEFAULT_POINTS = 1000


@dataclass(frozen=True)
class EmbeddingGeometry:
    """What :func:`measure_geometry` found on ``n`` test images."""

    n: int
    davies_bouldin: float
    margin: float  # eta: min distance between embeddings of different classes
    margin_mean: float  # mean over images of the distance to the nearest other-class embedding
    jacobian_frobenius: float  # mean over images of ||d embedding / d input||_F
    tsne: np.ndarray | None  # (n, 2)
    labels: np.ndarray  # (n,) true classes

    @property
    def bound(self) -> float:
        """eta / mean ||J||_F: the right-hand side of Eq. 4 (a distortion in input units)."""
        return self.margin / self.jacobian_frobenius if self.jacobian_frobenius > 0 else math.nan


def choose_points(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A seeded, sorted choice of ``count`` indices (all when there are fewer)."""
    if count >= len(labels):
        return np.arange(len(labels))
    return np.sort(np.random.default_rng(seed).choice(len(labels), count, replace=False))


def embedding_margin(embeddings: torch.Tensor, labels: torch.Tensor, *, chunk: int = 1024) -> tuple[float, float]:
    """(min, mean of per-point min) Euclidean distance between embeddings of different classes."""
    nearest = []
    for lo in range(0, len(embeddings), chunk):
        block = embeddings[lo:lo + chunk].double()
        distances = torch.cdist(block, embeddings.double(), compute_mode="donot_use_mm_for_euclid_dist")
        same = labels[lo:lo + chunk, None] == labels[None, :]
        nearest.append(distances.masked_fill(same, math.inf).min(dim=1).values)
    per_point = torch.cat(nearest)
    per_point = per_point[torch.isfinite(per_point)]
    if not len(per_point):
        return math.nan, math.nan
    return float(per_point.min()), float(per_point.mean())


def jacobian_frobenius(model: torch.nn.Module, x: torch.Tensor, *, device: torch.device, batch_size: int = 256) -> float:
    """Mean over images of the Frobenius norm of the embedding's Jacobian w.r.t. the input (exact).

    The model is in eval mode, so images do not interact and one backward pass per embedding dimension on a whole
    batch gives that row of every image's Jacobian.
    """
    model.eval()
    norms = []
    for chunk in x.split(batch_size):
        inputs = chunk.to(device).requires_grad_(True)
        embedding = model.embed(inputs)  # type: ignore[operator]
        squared = torch.zeros(len(inputs), device=device, dtype=torch.float64)
        for k in range(embedding.shape[1]):
            (row,) = torch.autograd.grad(embedding[:, k].sum(), inputs, retain_graph=k < embedding.shape[1] - 1)
            squared += row.flatten(1).double().pow(2).sum(dim=1)
        norms.append(squared.sqrt().cpu())
    return float(torch.cat(norms).mean())


def measure_geometry(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, *, device: torch.device, seed: int = 0,
                     points: int = DEFAULT_POINTS, tsne: bool = True, progress: bool = False) -> EmbeddingGeometry:
    """The Eq. 4 terms, the Davies-Bouldin index and (optionally) a t-SNE on ``points`` seeded test images.

    ``progress``: a bar over the five stages, naming the one running (t-SNE is the long one)."""
    from sklearn.metrics import davies_bouldin_score

    chosen = choose_points(y, points, seed)
    images, labels = torch.as_tensor(x[chosen]), y[chosen]
    with tqdm(total=5, desc="embedding geometry", unit="stage", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        def stage(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(0 if name == "embeddings" else 1)

        stage("embeddings")
        embeddings, _ = embed_and_predict(model, images, device=device)
        stage("margin")
        margin, margin_mean = embedding_margin(embeddings, torch.as_tensor(labels))
        stage("Jacobian")
        jac = jacobian_frobenius(model, images, device=device)
        stage("Davies-Bouldin")
        vectors = embeddings.double().numpy()
        dbi = float(davies_bouldin_score(vectors, labels)) if len(np.unique(labels)) > 1 else math.nan
        stage("t-SNE")
        coords = _tsne(vectors, seed) if tsne else None
        bar.update(1)
    return EmbeddingGeometry(len(chosen), dbi, margin, margin_mean, jac, coords, labels)


def _tsne(points: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(points) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points).astype(np.float32)
