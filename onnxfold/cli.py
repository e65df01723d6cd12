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
    f.add_argument("model", type=Path, nargs="?", help="the ONNX model to fold (never modified)")
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
    f.add_argument("--dry-run", action="store_true",
                   help="list what would fold into what, and why not; write no model")
    f.add_argument("--only", type=_names, metavar="RULE,...", help="use only these rules")
    f.add_argument("--skip", type=_names, metavar="RULE,...", help="do not use these rules")
    f.add_argument("--keep", type=_names, metavar="NODE,...",
                   help="leave these nodes alone (a BatchNormalization or the layer before it)")
    f.add_argument("--list-rules", action="store_true", help="list the rule names and exit")
    layout = f.add_mutually_exclusive_group()
    layout.add_argument(
        "--external-data", dest="external_data", action="store_true", default=None,
        help="write the weights to OUT.onnx.data beside the output (default: as the input does)",
    )
    layout.add_argument(
        "--no-external-data", dest="external_data", action="store_false",
        help="write every weight inside the output model (at most 2 GB)",
    )
    return p


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


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
    from onnxfold.fold.rules import all_rules
    from onnxfold.parity.inputs import parse_shape

    if args.list_rules:
        for r in all_rules():
            print(f"{r.name:<34} {r.summary}")
        return 0
    if args.model is None:
        raise OnnxfoldError("fuse", "a model path (onnxfold fuse MODEL.onnx)", "none")
    shapes = dict(parse_shape(s) for s in args.shape)
    outcome = fuse_file(
        args.model, args.output, force=args.force, check=not args.no_check, shapes=shapes,
        seed=args.seed, report_path=args.report, dry_run=args.dry_run, only=args.only,
        skip=args.skip, keep=args.keep, external_data=args.external_data,
    )
    if not args.quiet:
        print(outcome.text)
    if outcome.error:
        if args.quiet:  # the numbers are the error's evidence
            print(outcome.text, file=sys.stderr)
        print(f"onnxfold: error: {outcome.error}; nothing written", file=sys.stderr)
    return outcome.exit_code
