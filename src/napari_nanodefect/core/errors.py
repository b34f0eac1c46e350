"""The one exception type users see."""

from __future__ import annotations

import contextlib
import os
import struct
from typing import Iterator


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


class CorruptFile(Exception):
    """Raised inside our binary parsers; :func:`translate_read_errors` turns it into a
    :class:`NanodefectError` with the file name."""


@contextlib.contextmanager
def translate_read_errors(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn parser and library exceptions raised while reading ``path`` into one clear
    :class:`NanodefectError` (``what`` names the format, e.g. ``"JEOL .img file"``)."""
    try:
        yield
    except NanodefectError:
        raise
    except CorruptFile as exc:
        raise NanodefectError(str(exc), path) from None
    except OSError as exc:
        raise NanodefectError(f"cannot read the file: {exc.strerror or exc}", path) from None
    except MemoryError:
        raise NanodefectError("not enough memory to read the image", path) from None
    except (ValueError, TypeError, IndexError, KeyError, OverflowError, struct.error, RecursionError) as exc:
        raise NanodefectError(f"corrupt {what} ({type(exc).__name__}: {exc})", path) from None
