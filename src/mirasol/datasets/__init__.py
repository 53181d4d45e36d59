"""Describing datasets: the manifest format (JSON Lines rows), adapters from official annotation
files to manifests, and the built-in synthetic audio-visual world."""
