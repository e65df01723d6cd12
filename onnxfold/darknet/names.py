"""A darknet .names file (one class label per line) checked against the network's classes."""

from __future__ import annotations

import os
from pathlib import Path

from onnxfold.darknet.cfg import not_a_file
from onnxfold.errors import OnnxfoldError

MAX_NAMES_BYTES = 16 << 20


def read_names(path: str | os.PathLike[str], classes: int, what: str) -> list[str]:
    """The labels of `path`; their count must be `classes` (`what` says where that came from)."""
    p = Path(path)
    expected = f"{classes} class labels, one per line ({what})"
    if not p.is_file():
        raise OnnxfoldError(p, expected, not_a_file(p))
    try:
        if p.stat().st_size > MAX_NAMES_BYTES:
            raise OnnxfoldError(p, f"{expected}, at most {MAX_NAMES_BYTES} bytes",
                                f"{p.stat().st_size} bytes")
        data = p.read_bytes()
    except OSError as e:
        raise OnnxfoldError(p, expected, f"a file that cannot be read ({e.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise OnnxfoldError(p, f"{expected} in UTF-8", f"byte {e.start}: {e.reason}") from None
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:  # trailing blank lines: darknet never reads that far
        labels.pop()
    if len(labels) != classes:
        raise OnnxfoldError(p, expected, f"{len(labels)} lines")
    empty = [k for k, label in enumerate(labels, start=1) if not label]
    if empty:
        raise OnnxfoldError(f"{p}:{empty[0]}", "a class label on every line", "an empty line")
    return labels
