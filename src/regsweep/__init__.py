"""regsweep: find the regularization settings that make a transfer-learning classifier generalize."""


def __getattr__(name: str) -> str:
    """`regsweep.__version__`, read from the installed metadata when asked: pyproject.toml holds the
    one copy, and importing the package reads nothing."""
    if name == "__version__":
        from importlib.metadata import version

        return version("regsweep")
    raise AttributeError(f"module 'regsweep' has no attribute {name!r}")
