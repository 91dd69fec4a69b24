"""Small Flax NNX models used by the experiments, tests and notebooks."""

from paperlab.models.cnn import CNN
from paperlab.models.mlp import ACTIVATIONS, MLP
from paperlab.models.transformer import CharTransformer

__all__ = ["ACTIVATIONS", "CNN", "CharTransformer", "MLP"]
