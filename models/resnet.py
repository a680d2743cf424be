from __future__ import annotations

import torchvision
from torch import nn

from models.classifier import Classifier


class ResNet18(Classifier):
    """torchvision's ResNet-18 adapted to 32x32 images: 3x3 stem, stride 1, no max-pool."""

    def __init__(self, num_classes: int = 10, lr: float = 1e-3, weight_decay: float = 5e-4) -> None:
        net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        super().__init__(net, num_classes, lr, weight_decay)
        self.save_hyperparameters()
