"""Errors a user can cause and fix: bad input files, config keys, arguments, run directories.

Each is a MirasolError whose message alone says what is wrong and where (file, line, key), so the
`mirasol` command prints it as one line, `mirasol <command>: error: <message>`, without a traceback.
Anything else that escapes a command is a bug and keeps its traceback. The concrete types live
beside the code that raises them and subclass both MirasolError and the builtin they have always
been (ConfigError is still a ValueError, CacheError a RuntimeError), so existing `except` clauses
keep working:

    ConfigError    mirasol.config            config keys and values, overrides, config files
    ManifestError  mirasol.data.manifest a manifest row (file:line, key)
    ConvertError   mirasol.corpora.adapters official annotation files
    MediaError     mirasol.media.decode      a video file that cannot be used
    CacheError     mirasol.data.cache        a clip cache folder
    TokenizerError mirasol.data.tokenizer    a tokenizer file or a text that cannot be encoded
    CheckpointError here                     a checkpoint or saved model refused (unsafe) or unreadable
    UsageError     here                      a command-line argument value that cannot work
"""

from __future__ import annotations


class MirasolError(Exception):
    """Base of every error caused by the user's input; its message names the file/key and the fix."""


class CheckpointError(MirasolError):
    """A checkpoint or saved-model file was refused (not plain tensors) or cannot be read. The message
    names the file and what to do (raised by Mirasol.from_pretrained and mirasol.run_dir)."""


class UsageError(MirasolError, ValueError):
    """A command-line argument value that cannot work (the message names the argument)."""
