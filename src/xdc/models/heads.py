"""The classification head trained on each round's pseudo-labels."""

from __future__ import annotations

from torch import nn


class LinearHead(nn.Linear):
    """A linear layer initialised like DeepCluster's fresh head each round: weights N(0, 0.01), bias 0."""

    def __init__(self, in_dim: int, classes: int):
        super().__init__(in_dim, classes)

    def reset_parameters(self) -> None:  # nn.Linear.__init__ calls this, so re-initialising keeps the scheme
        nn.init.normal_(self.weight, 0.0, 0.01)
        nn.init.zeros_(self.bias)
