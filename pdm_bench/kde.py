"""Per-class Gaussian kernel density on embeddings (Feinman et al. 2017), pure torch, in the log domain.

One isotropic Gaussian KDE per class, built from up to 1000 training embeddings of that class (true labels). A test
input is scored by its log-density under its *predicted* class; low density = adversarial. ``log_density`` is
differentiable in the queries (a white-box attack backpropagates through it) and runs where the tensors are.

Accuracy: squared distances come from ``||a||^2 + ||b||^2 - 2 a.b`` on data centred at each class's kernel mean, so
float32 stays within a few 1e-4 nats of an exact float64 sum even for embeddings with norms ~50 (measured by
``benchmarks/bench_kde.py``). Where float32 matmuls may use TF32/bf16 (``torch.set_float32_matmul_precision``
"high"/"medium"), the distance matmul runs in float64 instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pdm_bench.errors import UserError

_CHUNK_ELEMENTS = 1 << 22  # query x kernel entries per block: bounds memory for 10^4 queries and more


@dataclass(frozen=True)
class BandwidthSearch:
    """The bandwidth rule; it sees clean training kernel points only, never adversarial data.

    Maximise the mean leave-one-out (LOO) log-likelihood of every kernel point under its own class's density with
    that point removed, pooled over all classes (classes with a single point are skipped). Candidates:
    ``scale * 10**linspace(log10_low, log10_high, num)``, with scale = the median distance from a kernel point to its
    nearest same-class neighbour. While the best candidate sits on the grid's edge, the grid is extended by its own
    span (at most ``max_extensions`` times). Then a ``refine_num``-point grid across the best candidate's two
    neighbouring cells is evaluated and a parabola through its best three points (in log h) gives the bandwidth.
    The mean is over at most ``loo_points`` evenly spaced kernel points per class (each scored against all of its
    class's other points; None = all). All-equal embeddings (scale 0, no maximum) give ``fallback``.
    """

    log10_low: float = -1.5
    log10_high: float = 1.5
    num: int = 41
    refine_num: int = 9
    max_extensions: int = 3
    loo_points: int | None = 200
    fallback: float = 1e-3

    def __post_init__(self) -> None:
        if self.num < 3 or not self.log10_low < self.log10_high or not self.fallback > 0 or (self.loo_points or 1) < 1:
            raise UserError(f"invalid {self}: need num >= 3, log10_low < log10_high, fallback > 0, loo_points >= 1")


def _check_bandwidth(bandwidth: float) -> float:
    h = float(bandwidth)
    if not (h > 0 and math.isfinite(h)):
        raise UserError(f"bandwidth must be > 0, got {h}" if not h > 0 else f"bandwidth must be finite, got {h}")
    return h


def _loo_sq(points: torch.Tensor, max_points: int | None) -> torch.Tensor:
    """float64 squared distances from up to ``max_points`` evenly spaced kernel points to all (+inf to themselves)."""
    n = points.shape[0]
    rows = torch.arange(0, n, 1 if max_points is None else max(1, -(-n // max_points)), device=points.device)
    centred = points.to(torch.float64) - points.to(torch.float64).mean(0)
    sq = (centred * centred).sum(1)
    d2 = torch.addmm(sq[rows, None] + sq[None, :], centred[rows], centred.T, alpha=-2.0).clamp_min_(0.0)
    d2[torch.arange(rows.numel(), device=points.device), rows] = math.inf
    return d2


def loo_log_likelihood(
    kernels: Sequence[torch.Tensor], bandwidths: Sequence[float] | np.ndarray, *, max_points: int | None = None
) -> np.ndarray:
    """Mean leave-one-out log-likelihood of the kernel points under their own class's density, per bandwidth.

    Classes with < 2 points are skipped; ``max_points`` caps the evenly spaced points scored per class (each
    against all of its class's other points).
    """
    hs = np.asarray(bandwidths, dtype=np.float64).reshape(-1)
    total, count = np.zeros(hs.size), 0
    for points in kernels:
        n, d = points.shape
        if n < 2:
            continue
        d2 = _loo_sq(points, max_points)
        nearest = d2.min(1).values
        gaps = d2 - nearest[:, None]
        scales = torch.as_tensor(0.5 / hs**2, dtype=torch.float64, device=gaps.device)
        sums = [(gaps * -s[:, None, None]).exp_().sum(2).log_().sum(1) for s in scales.split(max(1, _CHUNK_ELEMENTS // gaps.numel()))]
        lse = (torch.cat(sums) - scales * nearest.sum()).cpu().numpy()
        total += lse - len(d2) * (math.log(n - 1) + 0.5 * d * np.log(2 * math.pi * hs**2))
        count += len(d2)
    if count == 0:
        raise UserError("cannot choose a KDE bandwidth: every class has fewer than 2 kernel points; set a fixed bandwidth")
    return total / count


def _nn_scale(kernels: Sequence[torch.Tensor], max_points: int | None) -> float:
    """Median nearest-same-class-neighbour distance (of the positive ones if most are duplicates); 0 if none."""
    nearest = [_loo_sq(k, max_points).min(1).values.sqrt() for k in kernels if len(k) >= 2]
    if not nearest:
        return 0.0
    dist = torch.cat(nearest)
    median = dist.median().item()
    positive = dist[dist > 0]
    return median if median > 0 else (positive.median().item() if positive.numel() else 0.0)


def select_bandwidth(
    kernels: Sequence[torch.Tensor], *, candidates: BandwidthSearch | Sequence[float] = BandwidthSearch(),
    progress: bool = False,
) -> float:
    """Bandwidth maximising the mean leave-one-out log-likelihood of the kernel points (see ``BandwidthSearch``).

    ``candidates`` is either the search rule or an explicit list of bandwidths (then the best of those is returned).
    ``progress``: a bar over the candidate bandwidths scored.
    """
    if not isinstance(candidates, BandwidthSearch):
        hs = np.array([_check_bandwidth(h) for h in candidates])
        if hs.size == 0:
            raise ValueError("expected at least one candidate bandwidth")
        return float(hs[int(np.argmax(loo_log_likelihood(kernels, hs)))])
    rule = candidates
    scale = _nn_scale(kernels, rule.loo_points)
    if scale == 0.0:
        loo_log_likelihood(kernels, [1.0], max_points=1)  # raises if no class has 2 points
        return rule.fallback
    total = rule.num + (rule.refine_num if rule.refine_num >= 3 else 0)
    with tqdm(total=total, desc="KDE bandwidth search", unit="h", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        def score(log_hs: np.ndarray) -> np.ndarray:
            values = loo_log_likelihood(kernels, scale * 10.0**log_hs, max_points=rule.loo_points)
            bar.update(len(log_hs))
            return values

        logs, scores, step = _coarse_search(rule, score, bar)
        best = int(np.argmax(scores))
        if rule.refine_num >= 3 and 0 < best < len(logs) - 1:
            logs = np.linspace(logs[best] - step, logs[best] + step, rule.refine_num)
            scores = score(logs)
            best = int(np.argmax(scores))
    return float(scale * 10.0**_parabola_peak(logs, scores, best))


def _coarse_search(rule: BandwidthSearch, score: Callable[[np.ndarray], np.ndarray], bar: Any
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """The log10 grid (extended while its best point is on an edge), its scores and its step."""
    logs = np.linspace(rule.log10_low, rule.log10_high, rule.num)
    step = (rule.log10_high - rule.log10_low) / (rule.num - 1)
    scores = score(logs)
    for _ in range(rule.max_extensions):
        best = int(np.argmax(scores))
        if 0 < best < len(logs) - 1:
            break
        offsets = step * np.arange(1, rule.num)
        new = logs[0] - offsets[::-1] if best == 0 else logs[-1] + offsets
        bar.total += len(new)
        new_scores = score(new)
        logs, scores = (np.r_[new, logs], np.r_[new_scores, scores]) if best == 0 else (np.r_[logs, new], np.r_[scores, new_scores])
    return logs, scores, step


def _parabola_peak(logs: np.ndarray, scores: np.ndarray, best: int) -> float:
    """The best log10 bandwidth, refined by a parabola through the best three (equally spaced) points."""
    x = logs[best]
    if 0 < best < len(logs) - 1:  # parabola through the best three points (equally spaced in log h)
        y0, y1, y2 = scores[best - 1 : best + 2]
        curvature = y0 - 2 * y1 + y2
        if curvature < 0:
            fine_step = logs[best + 1] - logs[best]
            x += float(np.clip(0.5 * (y0 - y2) / curvature, -1.0, 1.0)) * fine_step
    return float(x)


class GaussianKDE:
    """Per-class isotropic Gaussian KDE, pure torch, log domain.

    ``kernels[c]`` are class c's kernel points, (n_c, d) float32; ``bandwidth`` is the kernel's standard deviation h.
    """

    kernels: list[torch.Tensor]
    bandwidth: float

    def __init__(self, kernels: Sequence[torch.Tensor], bandwidth: float) -> None:
        self.bandwidth = _check_bandwidth(bandwidth)
        if len(kernels) == 0:
            raise ValueError("expected at least one class of kernel points")
        dim = kernels[0].shape[-1] if kernels[0].ndim == 2 else -1
        for c, points in enumerate(kernels):
            if points.ndim != 2 or points.shape[1] != dim:
                raise ValueError(f"expected kernel points of shape (n, {dim}) for class {c}, got {tuple(points.shape)}")
            if points.shape[0] == 0:
                raise UserError(f"class {c} has no training embeddings: cannot build its density")
        self.kernels = [k.detach().to(torch.float32) for k in kernels]
        self._centres = [k.mean(0) for k in self.kernels]
        self._centred = [k - m for k, m in zip(self.kernels, self._centres)]
        self._sq_norms = [(b * b).sum(1) for b in self._centred]

    @property
    def num_classes(self) -> int:
        return len(self.kernels)

    @property
    def dim(self) -> int:
        return int(self.kernels[0].shape[1])

    @property
    def device(self) -> torch.device:
        return self.kernels[0].device

    def __repr__(self) -> str:
        sizes = sorted({len(k) for k in self.kernels})
        return f"GaussianKDE(classes={self.num_classes}, dim={self.dim}, points={sizes}, bandwidth={self.bandwidth:.6g})"

    @classmethod
    def fit(
        cls,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        *,
        num_classes: int,
        points_per_class: int = 1000,
        bandwidth: float | None = None,
        seed: int = 0,
        search: BandwidthSearch | None = None,
        progress: bool = False,
    ) -> GaussianKDE:
        """Up to ``points_per_class`` embeddings per true class (a seeded random subset when there are more).

        ``bandwidth=None`` chooses it with ``select_bandwidth`` (rule ``search``) on those kernel points only.
        """
        if bandwidth is not None:
            _check_bandwidth(bandwidth)
        if embeddings.ndim != 2:
            raise ValueError(f"expected embeddings of shape (n, d), got {tuple(embeddings.shape)}")
        if labels.shape != (embeddings.shape[0],):
            raise ValueError(f"expected labels of shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"expected integer labels, got dtype {labels.dtype}")
        if points_per_class < 1:
            raise ValueError(f"points_per_class must be >= 1, got {points_per_class}")
        points = embeddings.detach().to(torch.float32)
        if not torch.isfinite(points).all():
            raise ValueError("embeddings contain NaN or inf")
        labels = labels.to(points.device)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"expected labels in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
        generator = torch.Generator().manual_seed(seed)
        kernels = []
        for c in range(num_classes):
            index = torch.nonzero(labels == c).squeeze(1)
            if index.numel() == 0:
                raise UserError(f"class {c} has no training embeddings: cannot build its density")
            kernels.append(points[_pick(index, points_per_class, generator)])
        h = bandwidth if bandwidth is not None else select_bandwidth(kernels, candidates=search or BandwidthSearch(), progress=progress)
        return cls(kernels, h)

    def log_density(self, embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(n,) log-density of each ``embeddings[i]`` under class ``classes[i]``'s normalised Gaussian mixture.

        ``logsumexp_j(-||e - k_j||^2 / (2 h^2)) - log n_c - (d/2) log(2 pi h^2)`` for an embedding e; differentiable
        w.r.t. ``embeddings``; float64 queries are computed in float64, anything else in float32.
        """
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of shape (n, {self.dim}), got {tuple(embeddings.shape)}")
        if classes.shape != (embeddings.shape[0],):
            raise ValueError(f"expected classes of shape ({embeddings.shape[0]},), got {tuple(classes.shape)}")
        if classes.is_floating_point() or classes.is_complex():
            raise ValueError(f"expected integer classes, got dtype {classes.dtype}")
        dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
        embeddings = embeddings.to(dtype)
        classes = classes.to(embeddings.device)
        if embeddings.shape[0] == 0:
            return embeddings.sum(1)
        if int(classes.min()) < 0 or int(classes.max()) >= self.num_classes:
            raise ValueError(f"expected classes in [0, {self.num_classes}), got range [{int(classes.min())}, {int(classes.max())}]")
        scale = -0.5 / self.bandwidth**2
        norm = -0.5 * self.dim * math.log(2 * math.pi * self.bandwidth**2)
        values, order = [], []
        for c in torch.unique(classes).tolist():
            index = torch.nonzero(classes == c).squeeze(1)
            centre, centred, sq_norms = self._centred_terms(c, dtype, embeddings.device)
            a = embeddings.index_select(0, index) - centre
            rows = max(1, _CHUNK_ELEMENTS // centred.shape[0])
            if dtype == torch.float32 and _reduced_precision_matmul():  # TF32/bf16 distances: errors >> 1e-3 nats
                a, centred, sq_norms = a.double(), centred.double(), sq_norms.double()
            for block in a.split(rows):
                d2 = torch.addmm((block * block).sum(1, keepdim=True) + sq_norms, block, centred.T, alpha=-2.0).to(dtype)
                lse = torch.logsumexp(d2.clamp_min(0.0) * scale, dim=1)
                values.append(lse + (norm - math.log(centred.shape[0])))
            order.append(index)
        flat = torch.cat(values)
        return flat.new_empty(embeddings.shape[0]).index_copy(0, torch.cat(order), flat)

    def _centred_terms(self, c: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class c's kernel mean, kernel points minus it and their squared norms (float32 ones are cached)."""
        if dtype == torch.float32:
            return self._centres[c].to(device), self._centred[c].to(device), self._sq_norms[c].to(device)
        centre = self.kernels[c].to(device, dtype).mean(0)
        centred = self.kernels[c].to(device, dtype) - centre
        return centre, centred, (centred * centred).sum(1)

    def to(self, device: torch.device | str) -> GaussianKDE:
        """A copy with the kernel points on ``device``."""
        return type(self)([k.to(device) for k in self.kernels], self.bandwidth)

    def subset(self, points_per_class: int, *, seed: int = 0) -> GaussianKDE:
        """A KDE on a seeded random subset of at most ``points_per_class`` kernel points per class, same bandwidth."""
        if points_per_class < 1:
            raise ValueError(f"points_per_class must be >= 1, got {points_per_class}")
        generator = torch.Generator().manual_seed(seed)
        picks = [k[_pick(torch.arange(len(k), device=k.device), points_per_class, generator)] for k in self.kernels]
        return type(self)(picks, self.bandwidth)

    def state_dict(self) -> dict:
        """Plain tensors and numbers: ``torch.save`` it, reload with ``torch.load(..., weights_only=True)``."""
        return {"format": "pdm_bench.kde/1", "bandwidth": self.bandwidth, "kernels": [k.clone() for k in self.kernels]}

    @classmethod
    def from_state_dict(cls, state: dict) -> GaussianKDE:
        """Inverse of ``state_dict``."""
        if not isinstance(state, dict) or state.get("format") != "pdm_bench.kde/1":
            raise ValueError("not a GaussianKDE state dict (missing format 'pdm_bench.kde/1')")
        return cls(list(state["kernels"]), state["bandwidth"])


def _reduced_precision_matmul() -> bool:
    """Whether float32 matmuls may run in reduced precision (TF32, bf16), as set by ``set_float32_matmul_precision``."""
    cuda_precision = getattr(torch.backends.cuda.matmul, "fp32_precision", "none")
    return torch.get_float32_matmul_precision() != "highest" or cuda_precision == "tf32"


def _pick(index: torch.Tensor, limit: int, generator: torch.Generator) -> torch.Tensor:
    """All of ``index`` if it has at most ``limit`` entries, else a seeded random subset (kept in order)."""
    if index.numel() <= limit:
        return index
    chosen = torch.randperm(index.numel(), generator=generator)[:limit].sort().values
    return index[chosen.to(index.device)]
