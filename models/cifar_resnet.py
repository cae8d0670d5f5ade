"""CIFAR-10 ResNets with the option-A shortcut (He et al. 2016, §4.2), as in pytorch_resnet_cifar10.

Loads the published checkpoints (`../shared/models/resnet{20,56}_cifar10.th`): state_dict names
`conv1`, `bn1`, `layer{1,2,3}.{i}.conv1|bn1|conv2|bn2`, `linear`, prefixed `module.`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


class ShortcutA(nn.Module):
    """Option A: subsample by 2 and zero-pad planes//4 channels on each side (no parameters)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}")
        n = DEPTHS[depth]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.in_planes = 16
        self.layer1 = self._stage(16, n, 1)
        self.layer2 = self._stage(32, n, 2)
        self.layer3 = self._stage(64, n, 2)
        self.linear = nn.Linear(64, num_classes)

    def _stage(self, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = out.mean(dim=(2, 3))
        return self.linear(out)


def load_checkpoint(path: str, depth: int) -> CifarResNet:
    """A CifarResNet in eval mode with the weights of a pytorch_resnet_cifar10 checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict", ckpt)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = CifarResNet(depth)
    model.load_state_dict(state)
    return model.eval()
