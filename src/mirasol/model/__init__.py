"""Pure PyTorch model code: no file I/O beyond save_pretrained/from_pretrained."""

from mirasol.model.mirasol import IGNORE_INDEX, Mirasol, MirasolOutput, split_chunks

__all__ = ["IGNORE_INDEX", "Mirasol", "MirasolOutput", "split_chunks"]
