"""Reading media: decode a file by timestamp (PyAV), log-mel features, `load_clip` (one file ->
time-aligned video frames + audio), and a deterministic mp4 writer for tests and the built-in world."""

from mirasol.media.clip import Clip, load_clip
from mirasol.media.decode import MediaError, NoAudioError

__all__ = ["Clip", "MediaError", "NoAudioError", "load_clip"]
