"""Pure PyTorch model code. Files are touched only by Mirasol.save_pretrained / from_pretrained and by
model/pretrained.py, which reads local Hugging Face folders for the pretrained backbones."""

from mirasol.config import IGNORE_INDEX
from mirasol.model.chunks import split_chunks
from mirasol.model.mirasol import Mirasol, MirasolOutput

__all__ = ["IGNORE_INDEX", "Mirasol", "MirasolOutput", "split_chunks"]
