"""The `onnxfold` command: parse arguments, call the API, print, set the exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from onnxfold import __version__
from onnxfold.errors import OnnxfoldError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="onnxfold",
        description="Fold BatchNormalization into the layer before it, and prove nothing changed.",
    )
    p.add_argument("--version", action="version", version=f"onnxfold {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fuse", help="fold BatchNormalization into Conv and check parity in ORT")
    f.add_argument("model", type=Path, help="the ONNX model to fold (never modified)")
    f.add_argument("-o", "--output", type=Path, help="output path (default: MODEL.folded.onnx)")
    f.add_argument("--force", action="store_true", help="overwrite an existing output file")
    f.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    f.add_argument(
        "--shape", action="append", default=[], metavar="NAME:1x3x416x416",
        help="shape for an input with dynamic dims (repeatable); unset dynamic dims become 1",
    )
    f.add_argument("--seed", type=int, default=0, help="seed of the random check inputs")
    f.add_argument("--report", type=Path, metavar="R.json", help="write the report as JSON")
    f.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR if getattr(args, "quiet", False) else logging.WARNING,
        format="onnxfold: %(levelname)s: %(message)s",
    )
    try:
        return _fuse(args)
    except OnnxfoldError as e:
        print(f"onnxfold: error: {e}", file=sys.stderr)
        return 2


def _fuse(args: argparse.Namespace) -> int:
    from onnxfold.fold.pipeline import fuse_file
    from onnxfold.parity.inputs import parse_shape

    shapes = dict(parse_shape(s) for s in args.shape)
    outcome = fuse_file(
        args.model, args.output, force=args.force, check=not args.no_check, shapes=shapes,
        seed=args.seed, report_path=args.report,
    )
    if not args.quiet:
        print(outcome.text)
    if outcome.error:
        if args.quiet:  # the numbers are the error's evidence
            print(outcome.text, file=sys.stderr)
        print(f"onnxfold: error: {outcome.error}; nothing written", file=sys.stderr)
    return outcome.exit_code
