"""Model folders from the Hugging Face Hub: `Mirasol.from_pretrained("owner/name")` and
`mirasol ask --run owner/name` download the repository once (huggingface_hub's snapshot_download,
into its cache; needs the `hub` extra) and then read the local copy exactly as a folder on disk.
A path that exists is always used as it is, never looked up on the Hub."""

from __future__ import annotations

import re
from pathlib import Path

# owner/name, as the Hub spells repository ids; anything else is taken for a local path
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def local_folder(name_or_path: str | Path, revision: str | None = None) -> Path:
    """The local folder of a saved model: `name_or_path` itself when it exists, else the snapshot of
    the Hub repository of that id (downloaded where huggingface_hub is installed). A name that is
    neither raises FileNotFoundError saying which it was taken for."""
    path = Path(name_or_path).expanduser()
    if path.exists() or not isinstance(name_or_path, str) or not REPO_ID.match(name_or_path):
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{name_or_path} is not a local folder; to read it as a Hugging Face Hub "
                                "repository id, install the hub extra: pip install 'mirasol[hub]'") from None
    try:
        return Path(snapshot_download(repo_id=name_or_path, revision=revision))
    except Exception as err:  # no network, no such repository, no access: one message naming the id
        detail = " ".join(str(err).split())[:300]
        raise FileNotFoundError(f"{name_or_path} is neither a local folder nor a Hugging Face Hub repository "
                                f"that could be downloaded ({type(err).__name__}: {detail})") from None
