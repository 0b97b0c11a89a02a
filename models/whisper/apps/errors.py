"""How the apps report a failure: the errors that are the user's input (one line, no
traceback) and that line."""

from __future__ import annotations

import os
import sys

# Errors caused by the user's input: reported as one line, no traceback.
# (models.whisper.audio.load.AudioError and models.whisper.weights.ct2.CT2FormatError are ValueErrors;
# models.whisper.weights.packages.WeightsNotInstalledError is an ImportError.)
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, PermissionError)


def one_line(exc: BaseException, path: str | None = None) -> str:
    """``exc`` as one line: whitespace collapsed, an OS error's own text, ``path: `` dropped
    (the caller names the file)."""
    msg = " ".join(str(exc).split())
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)) and exc.strerror:
        msg = exc.strerror  # the file name is printed separately
    if path is not None:
        for prefix in (f"{path}: ", f"{os.path.normpath(path)}: "):
            if msg.startswith(prefix):
                msg = msg[len(prefix) :]
                break
    return msg or type(exc).__name__


def error(msg: str) -> None:
    """``kvgraph: error: msg`` on stderr."""
    print(f"kvgraph: error: {msg}", file=sys.stderr, flush=True)
