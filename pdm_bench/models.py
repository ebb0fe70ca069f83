"""CIFAR-style ResNets (depth 6n+2) with leaky ReLU and a named ``embedding`` module.

The pre-logits vector passes through ``model.embedding`` (an ``nn.Identity`` that is a *top-level*
child), so ART's ``get_activations(x, "embedding")`` and a plain forward hook both reach it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pdm_bench.config import ModelSpec

LEAKY_SLOPE = 0.1


class BasicBlock(nn.Module):
    """Pre-activation-free basic block: conv-BN-lrelu-conv-BN + shortcut, then lrelu."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), LEAKY_SLOPE)
        out = self.bn2(self.conv2(out))
        return F.leaky_relu(out + self.shortcut(x), LEAKY_SLOPE)


class ResNet(nn.Module):
    """ResNet-(6n+2) for small images of any size and channel count.

    ``forward`` returns the logits the defense *predicts with*: ``logit_sign * z`` where ``z`` is the raw
    output of the final linear layer (``logit_sign`` is -1 for reverse-cross-entropy models). Losses use
    :meth:`embed_and_logits`, which returns the raw ``z``.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        n = (spec.depth - 2) // 6
        w = spec.width
        self.stem = nn.Sequential(
            nn.Conv2d(spec.in_channels, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.LeakyReLU(LEAKY_SLOPE),
        )
        self.stage1 = self._stage(w, w, n, stride=1)
        self.stage2 = self._stage(w, 2 * w, n, stride=2)
        self.stage3 = self._stage(2 * w, 4 * w, n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding = nn.Identity()
        self.fc = nn.Linear(4 * w, spec.num_classes)
        self.register_buffer("logit_sign", torch.ones(()))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, *, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-logits embedding, shape (N, 4*width)."""
        out = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.embedding(torch.flatten(self.pool(out), 1))

    def embed_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedding and *raw* logits z (before ``logit_sign``), for training losses."""
        embedding = self.embed(x)
        return embedding, self.fc(embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x)) * self.logit_sign

    def with_batch_norm_folded(self) -> ResNet:
        """An eval-mode copy with every BatchNorm folded into the convolution before it: the same function (up to
        float rounding) in fewer operations, for attacks' inner loops. This model is left as it is."""
        folded = copy.deepcopy(self).eval()
        for module in folded.modules():
            if isinstance(module, BasicBlock):
                module.conv1, module.bn1 = fuse_conv_bn_eval(module.conv1, module.bn1), nn.Identity()  # type: ignore[assignment]
                module.conv2, module.bn2 = fuse_conv_bn_eval(module.conv2, module.bn2), nn.Identity()  # type: ignore[assignment]
            elif isinstance(module, nn.Sequential) and len(module) >= 2 and isinstance(module[0], nn.Conv2d) \
                    and isinstance(module[1], nn.BatchNorm2d):  # the stem and the projection shortcuts
                module[0], module[1] = fuse_conv_bn_eval(module[0], module[1]), nn.Identity()
        return folded


def build_model(spec: ModelSpec, *, negate_logits: bool = False) -> ResNet:
    """A fresh ResNet; ``negate_logits`` makes it predict with -z (reverse cross-entropy models)."""
    model = ResNet(spec)
    if negate_logits:
        model.logit_sign.fill_(-1.0)  # type: ignore[operator]
    return model
