"""The embedded demo model: a small CNN with BatchNorm for scikit-learn's 8x8 digits.

Data: `load_digits()` (1797 images, 17 grey levels) scaled to uint8 NHWC [N, 8, 8, 1] and split
deterministically (test = 20 %, stratified, seed 0). The input normalisation is x = (u8/255 − MEAN)/STD.
"""

from __future__ import annotations

import numpy as np
import torch.nn as nn

MEAN = [0.3057]
STD = [0.3773]


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def load_digits_split() -> dict[str, np.ndarray]:
    """{'train_images', 'train_labels', 'test_images', 'test_labels'}: uint8 [N, 8, 8, 1], int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(images, labels, test_size=0.2, stratify=labels, random_state=0)
    return {"train_images": tr_x, "train_labels": tr_y, "test_images": te_x, "test_labels": te_y}
