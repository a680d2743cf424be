from __future__ import annotations

from torch import nn

from models.classifier import Classifier


class MLP(Classifier):
    """A multilayer perceptron on flattened inputs (8x8 digits: in_features=64; MNIST: 784)."""

    def __init__(self, in_features: int = 64, hidden: int = 128, num_classes: int = 10, dropout: float = 0.1,
                 lr: float = 1e-2, weight_decay: float = 0.0) -> None:
        net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        super().__init__(net, num_classes, lr, weight_decay)
        self.save_hyperparameters()
