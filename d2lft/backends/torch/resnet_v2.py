"""Gluon's pre-activation ResNet-18 v2 (``resnet18_v2``), written in PyTorch.

The same computation as ``mxnet.gluon.model_zoo.vision.ResNetV2`` with
``BasicBlockV2`` and ``[2, 2, 2, 2]`` layers, so that one set of weights gives the
same logits in both engines (module names: :mod:`d2lft.weights`)::

    Gluon features.0   BatchNorm(scale=False, center=False)  -> bn_data
          features.1   Conv2D(64, 7, 2, 3, use_bias=False)   -> conv1
          features.2-4 BatchNorm, relu, MaxPool2D(3, 2, 1)   -> bn1, relu, maxpool
          features.5-8 stage1..stage4 of BasicBlockV2        -> layer1..layer4
          features.9-12 BatchNorm, relu, GlobalAvgPool, Flatten -> bn_final, ...
          output       Dense(classes)                        -> fc

BasicBlockV2: ``bn1 -> relu`` feeds both ``conv1`` and the 1x1 ``downsample``
convolution (the shortcut starts *after* the pre-activation), then
``bn2 -> relu -> conv2`` and the sum, with no activation after it.

Gluon's input BatchNorm uses ``fix_gamma=True``: its gamma is treated as 1 (and
set to 1 by every training-mode forward pass) and never trained; its beta is
applied but, with ``center=False``, never trained either. :class:`InputBatchNorm`
does the same: ``weight`` and ``bias`` are buffers, not parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYERS = (2, 2, 2, 2)
CHANNELS = (64, 64, 128, 256, 512)


class InputBatchNorm(nn.Module):
    """Gluon's ``BatchNorm(scale=False, center=False)``: normalise with batch
    statistics (training) or running statistics (evaluation), add the fixed `bias`;
    `weight` is kept only so that a Gluon file round-trips, and is held at 1."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.weight.fill_(1.0)  # as Gluon's fix_gamma does in training mode
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            None,
            self.bias,
            self.training,
            self.momentum,
            self.eps,
        )

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, fixed gamma"


def _conv3x3(in_channels, out_channels, stride):
    return nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)


class BasicBlockV2(nn.Module):
    """Gluon's ``BasicBlockV2`` (pre-activation basic block)."""

    def __init__(self, in_channels, channels, stride, downsample=False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels, 1)
        self.downsample = (
            nn.Conv2d(in_channels, channels, 1, stride, bias=False) if downsample else None
        )

    def forward(self, x):
        residual = x
        x = F.relu(self.bn1(x))
        if self.downsample is not None:
            residual = self.downsample(x)
        x = self.conv1(x)
        x = self.conv2(F.relu(self.bn2(x)))
        return x + residual


class ResNetV2(nn.Module):
    """Gluon's ``ResNetV2`` with basic blocks (``thumbnail=False``)."""

    def __init__(self, layers=LAYERS, channels=CHANNELS, num_classes=1000):
        super().__init__()
        self.bn_data = InputBatchNorm(3)
        self.conv1 = nn.Conv2d(3, channels[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = channels[0]
        for i, n in enumerate(layers):
            stride = 1 if i == 0 else 2
            out = channels[i + 1]
            blocks = [BasicBlockV2(in_channels, out, stride, out != in_channels)]
            blocks += [BasicBlockV2(out, out, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            in_channels = out
        self.bn_final = nn.BatchNorm2d(in_channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self.reset_parameters()

    def reset_parameters(self):
        """torchvision's ResNet initialisation (He-normal convolutions, BatchNorm
        1/0, the Linear default); pretrained or loaded weights replace it."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.bn_data(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.relu(self.bn_final(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18_v2(num_classes=1000):
    """Gluon's ``resnet18_v2`` in torch, randomly initialised."""
    return ResNetV2(LAYERS, CHANNELS, num_classes)
