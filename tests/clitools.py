"""Helpers for tests that run the onnxfold command in-process and look at the files it left."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from onnxfold.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """main() in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def digest(path: Path) -> str:
    """sha256 of a file: compares model bytes without a multi-megabyte diff on failure."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    """Every file and folder under `folder`, hidden temp files included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
