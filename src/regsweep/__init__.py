"""regsweep: find the regularization settings that make a transfer-learning classifier generalize."""

__version__ = "0.1.0"
