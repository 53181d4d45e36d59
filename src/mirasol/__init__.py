"""Mirasol3B: autoregressive modelling of time-aligned video and audio, with a text decoder."""

from mirasol.config import ConfigError, MirasolConfig

__all__ = ["ConfigError", "Mirasol", "MirasolConfig"]
__version__ = "0.1.0"


def __getattr__(name):  # lazy, so that `import mirasol` for configs does not import torch
    if name == "Mirasol":
        from mirasol.model.mirasol import Mirasol

        return Mirasol
    raise AttributeError(name)
