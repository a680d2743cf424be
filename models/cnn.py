from __future__ import annotations

from torch import nn

from models.classifier import Classifier


class SmallCNN(Classifier):
    """Two conv blocks and a linear head; for 1x28x28 MNIST (or in_channels=3 for 32x32 inputs)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, dropout: float = 0.25,
                 lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * width * 16, num_classes),
        )
        super().__init__(net, num_classes, lr, weight_decay)
        self.save_hyperparameters()
