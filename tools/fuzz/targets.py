"""Fuzz targets: what onnxfold promises for any input, checked on one input.

Every target takes its input and either returns (the input was refused with an OnnxfoldError,
or was handled) or raises Finding. A finding is anything else: another exception, a warning
(it would print to stderr beside the one error line), a fold that logged an internal error,
a folded model that is malformed or fails the checker when its input passed it, a fold that
changed what onnxruntime computes, or an input that takes longer than LIMIT seconds.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import onnx

from onnxfold import wellformed
from onnxfold.darknet.job import convert_file
from onnxfold.errors import OnnxfoldError
from onnxfold.fold.engine import fuse
from onnxfold.fold.pipeline import fuse_file
from onnxfold.modelio import parse_model
from onnxfold.parity import check_parity
from onnxfold.parity.inputs import load_npz

LIMIT = 10  # seconds per input: a loop a file can make endless is a finding, not a stuck run
REPO = Path(__file__).resolve().parents[2]
CORPUS = sorted((REPO / "tests" / "corpus").glob("*.onnx"))
SEED_CFG = (Path(__file__).parent / "seeds" / "yolov2-mini.cfg").read_bytes()
STATS: Counter[str] = Counter()  # outcomes by target, for the run's report


class Finding(Exception):
    """onnxfold broke a promise on this input."""


class _Timeout(BaseException):  # BaseException: the engine's per-node `except Exception`
    pass  # must not swallow it


@contextlib.contextmanager
def guarded(target: str):
    """Run one input: warnings are errors, LIMIT seconds at most, outcomes counted."""
    def alarm(signum, frame):
        raise _Timeout

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(LIMIT)
    STATS[f"{target}: inputs"] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield
    except _Timeout:
        STATS[f"{target}: findings"] += 1
        raise Finding(f"{target}: more than {LIMIT} s on one input") from None
    except Finding:
        STATS[f"{target}: findings"] += 1
        raise
    except OnnxfoldError:
        STATS[f"{target}: refused (OnnxfoldError)"] += 1
    except Exception as e:
        STATS[f"{target}: findings"] += 1
        raise Finding(f"{target}: {type(e).__name__}: {e}") from e
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def seed_models() -> list[onnx.ModelProto]:
    return [onnx.load(p) for p in CORPUS]


def onnx_bytes(data: bytes, parity: bool = True) -> None:
    """The library path `onnxfold fuse` takes, on bytes: parse, well-formedness, fold, and for
    what folds, the folded model's own well-formedness, checker and onnxruntime parity."""
    with guarded("onnx"):
        model = parse_model(data, "fuzz.onnx")
        wellformed.check(model, "fuzz.onnx")
        STATS["onnx: well-formed"] += 1
        _fold_and_prove(model, parity)


def _fold_and_prove(model: onnx.ModelProto, parity: bool) -> None:
    result = fuse(model)
    internal = [r.reason for r in result.refused if r.code == "internal-error"]
    if internal:
        raise Finding(f"internal error in a fold: {internal[0]}")
    if not result.folded:
        return
    STATS["onnx: folded"] += 1
    try:
        wellformed.check(result.model, "folded")
    except OnnxfoldError as e:
        raise Finding(f"the fold made a malformed model: {e}") from None
    if _passes_checker(model) and not _passes_checker(result.model):
        raise Finding("the folded model fails onnx.checker and its input did not")
    if parity:
        try:
            rep = check_parity(model, result.model)
        except OnnxfoldError as e:  # the fold changed the model's inputs or outputs
            raise Finding(f"the folded model's signature differs: {e}") from None
        STATS[f"onnx: parity {rep.status}"] += 1
        if rep.status == "fail":
            raise Finding(f"the fold changed the outputs: {rep.reason or rep.outputs}")


def _passes_checker(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception:
        return False
    return True


def fuse_cli(data: bytes, side: bytes) -> None:
    """The file job (`onnxfold fuse m.onnx`), with `side` as the model's only possible data
    file (m.onnx.data): external data locations, offsets and lengths come from the mutations."""
    with guarded("fuse_file"), tempfile.TemporaryDirectory() as d:
        src = Path(d) / "m.onnx"
        src.write_bytes(data)
        (Path(d) / "m.onnx.data").write_bytes(side)
        outcome = fuse_file(src, check=False)
        STATS[f"fuse_file: exit {outcome.exit_code}"] += 1


def npz_bytes(data: bytes) -> None:
    """check --inputs FILE: named arrays from an .npz, or an OnnxfoldError."""
    with guarded("npz"), tempfile.TemporaryDirectory() as d:
        p = Path(d) / "in.npz"
        p.write_bytes(data)
        load_npz(p)


def darknet(cfg: bytes, weights: bytes | None, fold: bool, head: str) -> None:
    """`onnxfold convert` on a cfg (and a .weights file, else synthetic weights): an
    OnnxfoldError, or a model that is well-formed, passes the checker, and folds without an
    internal error."""
    with guarded("darknet"), tempfile.TemporaryDirectory() as d:
        c = Path(d) / "net.cfg"
        c.write_bytes(cfg)
        w = None
        if weights is not None:
            w = Path(d) / "net.weights"
            w.write_bytes(weights)
        outcome = convert_file(c, w, weights_seed=None if w else 0, head=head, fold=fold)
        STATS[f"darknet: exit {outcome.exit_code}"] += 1
        model = onnx.load(Path(d) / "net.onnx") if outcome.exit_code == 0 else None
        if model is not None:
            wellformed.check(model, "converted")
            result = fuse(model)
            internal = [r.reason for r in result.refused if r.code == "internal-error"]
            if internal:
                raise Finding(f"internal error folding a conversion: {internal[0]}")


def quiet() -> None:
    """Keep the engine's internal-error tracebacks off the terminal: they are findings."""
    logging.getLogger("onnxfold").setLevel(logging.CRITICAL)
