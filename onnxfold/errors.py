"""The one exception type for bad input; the CLI maps it to exit code 2."""

from __future__ import annotations

import os

# Each part of the error line at most: a name or value is copied from the file, and a file can
# hold a 15 MB "name" (the line then was 15 MB long).
PART = 400


class OnnxfoldError(Exception):
    """Bad input: names the file, what was expected and what was found."""

    def __init__(self, file: str | os.PathLike[str], expected: str, found: str) -> None:
        self.file = os.fspath(file)
        self.expected = expected
        self.found = found
        super().__init__(f"{_clip(self.file)}: expected {_clip(expected)}, found {_clip(found)}")


def _clip(text: str) -> str:
    if len(text) <= PART:
        return text
    return f"{text[:PART - 40]}... ({len(text)} characters)"
