"""Where manifests come from: the built-in synthetic audio-visual world (mp4 files + manifests) and
adapters from the official annotation files of real datasets."""
