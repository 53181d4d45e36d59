"""From a manifest to batches: manifest rows, the tokenizer, the clip store (decode once, read many
times) and the dataset with its batches. `load_clip` lives in mirasol.media and is re-exported
here, where users first looked for it."""

from mirasol.media import Clip, MediaError, NoAudioError, load_clip

__all__ = ["Clip", "MediaError", "NoAudioError", "load_clip"]
