"""Running onnxfold on hostile input and checking the promise: exit 2 (or 1 for a parity
failure), one stderr line `onnxfold: error: FILE: expected X, found Y`, no traceback, nothing
written, inputs byte-identical, no hang (SECONDS).

In-process (main()) for most cases: fast. In a real subprocess, with an address-space limit and
a timeout, for the cases that could hang or allocate without bound if a guard regressed (so a
regression fails the test instead of the CI machine), and for signals and file size limits.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.clitools import digest, listing, run_cli

REPO = Path(__file__).resolve().parents[2]
SECONDS = 20.0  # a hang guard, not a speed measure: loaded CI machines ran 1 s cases in 6 s
MEMORY = 4 << 30  # address space of a subprocess: onnxruntime and numpy take ~1.5 GB


@dataclass
class Run:
    rc: int
    out: str
    err: str
    seconds: float


def inproc(capsys: pytest.CaptureFixture[str], *argv: object) -> Run:
    t = time.perf_counter()
    rc, out, err = run_cli(capsys, *argv)
    return Run(rc, out, err, time.perf_counter() - t)


def subproc(*argv: object, env: dict[str, str] | None = None, fsize: int | None = None,
            no_dac: bool = False, timeout: float = 30) -> Run:
    """`python -m onnxfold ARGV` in a fresh process limited to MEMORY bytes of address space
    (and files of at most `fsize` bytes; `no_dac`: without root's power to ignore file modes)."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            # A write past the limit raises SIGXFSZ; ignored (CPython does so too) it becomes
            # an OSError (EFBIG) the program can handle.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if no_dac:
            drop_dac_override()

    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "onnxfold", *map(str, argv)], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, preexec_fn=limits,
        timeout=timeout,
    )
    return Run(p.returncode, p.stdout, p.stderr, time.perf_counter() - t)


def drop_dac_override() -> None:
    """For root: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set before
    exec, so file modes apply (a read-only folder is read-only). A no-op for other users."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


class Tree:
    """A folder's file list and every file's sha256, to compare after a run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files = listing(folder)
        self.digests = self._digests()

    def _digests(self) -> dict[str, object]:
        """sha256 of each file; size and mtime of big (sparse) ones, which take long to hash."""
        out: dict[str, object] = {}
        for name in listing(self.folder):
            p = self.folder / name
            if p.is_file() and not p.is_symlink():
                st = p.stat()
                out[name] = digest(p) if st.st_size < 64 << 20 else (st.st_size, st.st_mtime_ns)
        return out

    def assert_unchanged(self) -> None:
        assert listing(self.folder) == self.files  # nothing written, no temp file left
        assert self._digests() == self.digests  # inputs byte-identical


def assert_error(run: Run, file: object, expected: str, found: str | None = None,
                 *, prefix: bool = False, rc: int = 2) -> None:
    """Exit rc, nothing on stdout, exactly one stderr line naming file, expected and found
    (`prefix`: found starts with the given text), within SECONDS."""
    head = f"onnxfold: error: {file}: expected {expected}, found "
    assert (run.rc, run.out) == (rc, ""), run.err
    assert "Traceback" not in run.err, run.err
    assert run.err.endswith("\n") and run.err.count("\n") == 1, run.err
    if found is None or prefix:
        assert run.err.startswith(head + (found or "")), run.err
    else:
        assert run.err == f"{head}{found}\n"
    assert run.seconds < SECONDS, f"{run.seconds:.1f} s"
