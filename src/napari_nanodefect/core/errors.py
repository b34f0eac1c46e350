"""The one exception type users see."""

from __future__ import annotations

import os


class NanodefectError(Exception):
    """A clear, user-facing error: names the file (when there is one) and the problem.

    Library errors from deep inside tifffile, PIL, json, ... are translated into this
    type at the boundary of our readers, so the CLI can print one line instead of a
    traceback.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path else message)
