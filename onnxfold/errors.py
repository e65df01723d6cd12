"""The one exception type for bad input; the CLI maps it to exit code 2."""

from __future__ import annotations

import os


class OnnxfoldError(Exception):
    """Bad input: names the file, what was expected and what was found."""

    def __init__(self, file: str | os.PathLike[str], expected: str, found: str) -> None:
        self.file = os.fspath(file)
        self.expected = expected
        self.found = found
        super().__init__(f"{self.file}: expected {expected}, found {found}")
