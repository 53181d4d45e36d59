"""Data: media decoding, features, manifests, caching."""

from mirasol.data.clip import Clip, load_clip
from mirasol.data.decode import MediaError, NoAudioError

__all__ = ["Clip", "MediaError", "NoAudioError", "load_clip"]
