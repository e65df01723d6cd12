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
    _check_parser(sub)
    _convert_parser(sub)
    _add_export(sub)
    return p


def _check_parser(sub) -> None:
    from onnxfold.parity.images import RESIZE_MODES

    levels = ("disable", "basic", "extended", "all")
    c = sub.add_parser("check", help="do two models compute the same thing? (onnxruntime)")
    c.add_argument("reference", type=Path, help="model A, the reference")
    c.add_argument("candidate", type=Path, help="model B, compared with A")
    c.add_argument("--shape", action="append", default=[], metavar="NAME:1x3x416x416",
                   help="shape for an input with dynamic dims (repeatable); unset dims become 1")
    c.add_argument("--seed", type=int, default=0, help="seed of the first random input set")
    c.add_argument("--trials", type=int, default=3, help="random input sets (default 3)")
    c.add_argument("--range", action="append", default=[], metavar="NAME:LOW:HIGH",
                   help="random values for an input in [LOW, HIGH) (default 0:1; ints 0:10)")
    c.add_argument("--inputs", type=Path, metavar="DATA.npz", help="real inputs by name")
    c.add_argument("--image", action="append", default=[], metavar="NAME=PICTURE",
                   help="feed a picture (RGB, [0,1], NCHW) to an input (needs Pillow)")
    c.add_argument("--resize", choices=RESIZE_MODES, default="letterbox",
                   help="how --image fits the input: letterbox (darknet, default) or stretch")
    c.add_argument("--ref-opt-level", choices=levels, default="disable",
                   help="onnxruntime graph optimizations for the reference (default disable)")
    c.add_argument("--opt-level", choices=levels, default="disable",
                   help="onnxruntime graph optimizations for the candidate (default disable)")
    c.add_argument("--map", action="append", default=[], metavar="A_NAME=B_NAME",
                   help="pair an input or output of A with a differently named one of B")
    c.add_argument("--positional", action="store_true",
                   help="pair inputs and outputs by position instead of by name")
    c.add_argument("--rtol", type=float, help="allowed max abs error as a fraction of max|ref| "
                   "(default by precision: 1e-4 float32/64, 2e-2 float16, 5e-2 bfloat16)")
    c.add_argument("--atol", type=float, default=0.0, help="allowed abs error on top (default 0)")
    c.add_argument("--topk", type=int, default=0, metavar="K",
                   help="also say whether the K largest values sit at the same places")
    c.add_argument("--bisect", action="store_true",
                   help="on a difference, find the first intermediate tensor that differs")
    c.add_argument("--report", type=Path, metavar="R.json", help="write the report as JSON")
    c.add_argument("--force", action="store_true", help="overwrite an existing report file")
    c.add_argument("-q", "--quiet", action="store_true", help="print only errors")


def _convert_parser(sub: argparse._SubParsersAction) -> None:
    from onnxfold.darknet.heads import DEFAULT_IOU_THRESH, DEFAULT_SCORE_THRESH

    c = sub.add_parser("convert", help="darknet .cfg + .weights -> ONNX, as darknet computes it")
    c.add_argument("cfg", type=Path, help="the darknet .cfg (never modified)")
    c.add_argument("weights", type=Path, nargs="?", help="the darknet .weights (never modified)")
    c.add_argument("--weights-seed", type=int, metavar="N",
                   help="instead of a .weights file: synthetic weights from this seed")
    c.add_argument("-o", "--output", type=Path, help="output path (default: CFG with .onnx)")
    c.add_argument("--force", action="store_true", help="overwrite an existing output file")
    c.add_argument("--bn-eps", choices=["darknet", "alexeyab"], default="darknet",
                   help="BN formula: darknet (pjreddie) sqrt(var)+1e-6 (default), "
                   "alexeyab sqrt(var+1e-5)")
    c.add_argument("--head", choices=["darknet", "raw", "boxes"],
                   help="darknet: the [region] layer's output (default); raw: the last conv's; "
                   "boxes: every head decoded to boxes [1,N,4] and scores [1,N,classes]")
    c.add_argument("--nms", action="store_true",
                   help="--head boxes, then per-class NonMaxSuppression: detections [K,7]")
    c.add_argument("--score-thresh", type=float, metavar="T",
                   help=f"with --nms: keep scores > T (default {DEFAULT_SCORE_THRESH})")
    c.add_argument("--iou-thresh", type=float, metavar="T",
                   help=f"with --nms: suppress IoU > T (default {DEFAULT_IOU_THRESH})")
    c.add_argument("--max-per-class", type=int, metavar="K",
                   help="with --nms: keep at most K boxes per class (default: no limit)")
    c.add_argument("--size", metavar="WxH",
                   help="input width x height instead of [net]'s (multiples of 32), e.g. 320x320")
    c.add_argument("--names", type=Path, metavar="FILE.names",
                   help="class labels, one per line, stored in the model's metadata")
    c.add_argument("--fold", action="store_true",
                   help="also fold BatchNormalization and check parity against the unfolded model")
    c.add_argument("--seed", type=int, default=0, help="seed of the --fold check's inputs")
    c.add_argument("-q", "--quiet", action="store_true", help="print only errors")


def _add_export(sub) -> None:
    e = sub.add_parser("export", help="fold, convert to TF/TFLite/TF.js, check each in its runtime")
    e.add_argument("model", type=Path, nargs="?", help="the ONNX model to export (never modified)")
    e.add_argument("--to", default="tf,tflite,tfjs", metavar="tf,tflite,tfjs",
                   help="targets (default: all three)")
    e.add_argument("-o", "--output", type=Path, metavar="OUTDIR", help="output folder")
    e.add_argument("--force", action="store_true", help="replace an existing output folder")
    e.add_argument("--fp16", action="store_true", help="also write model_float16.tflite")
    e.add_argument("--quantize", choices=["float16", "uint8"], help="quantize the TF.js weights")
    e.add_argument("--nhwc", action="store_true",
                   help="TF-native channel-last inputs/outputs (default: the ONNX interface)")
    e.add_argument("--shape", action="append", default=[], metavar="NAME:1x3x416x416",
                   help="static shape for an input (repeatable); unset dynamic dims become 1")
    e.add_argument("--seed", type=int, default=0, help="seed of the random check inputs")
    e.add_argument("--no-check", action="store_true", help="convert only; run no runtime")
    e.add_argument("--demo", action="store_true",
                   help="also write index.html, a detection page running the TF.js model (for "
                   "models converted from darknet YOLO cfgs)")
    e.add_argument("--report", type=Path, metavar="R.json", help="also write the report here")
    e.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    e.add_argument("--install", action="store_true",
                   help="install the pinned export stack into this Python and the TF.js "
                   "packages (npm ci), then exit")


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR if getattr(args, "quiet", False) else logging.WARNING,
        format="onnxfold: %(levelname)s: %(message)s",
    )
    try:
        return {"fuse": _fuse, "check": _check, "convert": _convert, "export": _export}[
            args.command
        ](args)
    except OnnxfoldError as e:
        print(f"onnxfold: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: temp files are gone, targets old or absent (atomic)
        print("onnxfold: interrupted", file=sys.stderr)
        return 130


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


def _check(args: argparse.Namespace) -> int:
    from onnxfold.parity.images import parse_image_arg
    from onnxfold.parity.inputs import parse_range, parse_shape
    from onnxfold.parity.job import check_files
    from onnxfold.parity.signature import parse_map

    outcome = check_files(
        args.reference, args.candidate, args.report, args.force,
        shapes=dict(parse_shape(s) for s in args.shape), seed=args.seed, trials=args.trials,
        ranges=dict(parse_range(r) for r in args.range), inputs=args.inputs,
        images=dict(parse_image_arg(i) for i in args.image), resize=args.resize,
        rtol=args.rtol, atol=args.atol, ref_opt_level=args.ref_opt_level,
        opt_level=args.opt_level, mapping=parse_map(args.map), positional=args.positional,
        topk=args.topk, bisect=args.bisect,
    )
    if not args.quiet or outcome.exit_code:
        print(outcome.text, file=sys.stdout if not args.quiet else sys.stderr)
    return outcome.exit_code


def _convert(args: argparse.Namespace) -> int:
    from onnxfold.darknet import parse_size
    from onnxfold.darknet.heads import Nms

    nms_args = {"score_thresh": args.score_thresh, "iou_thresh": args.iou_thresh,
                "max_per_class": args.max_per_class}
    given = {k: v for k, v in nms_args.items() if v is not None}  # the rest keep defaults
    if given and not args.nms:
        flag = "--" + next(iter(given)).replace("_", "-")
        raise OnnxfoldError(flag, f"{flag} only with --nms", "no --nms")
    nms = Nms(**given) if args.nms else None
    head = args.head or ("boxes" if args.nms else "darknet")
    from onnxfold.darknet.job import convert_file

    outcome = convert_file(
        args.cfg, args.weights, args.output, weights_seed=args.weights_seed, bn_eps=args.bn_eps,
        head=head, fold=args.fold, force=args.force, seed=args.seed,
        size=None if args.size is None else parse_size(args.size), nms=nms, names=args.names,
    )
    if not args.quiet or outcome.error:
        print(outcome.text, file=sys.stderr if outcome.error and args.quiet else sys.stdout)
    if outcome.error:
        print(f"onnxfold: error: {outcome.error}; nothing written", file=sys.stderr)
    return outcome.exit_code


def _export(args: argparse.Namespace) -> int:
    from onnxfold.export import export_file, parse_targets
    from onnxfold.export.stack import install
    from onnxfold.parity.inputs import parse_shape

    if args.install:
        install(log=(lambda _: None) if args.quiet else print)
        return 0
    if args.model is None or args.output is None:
        raise OnnxfoldError("export", "MODEL.onnx and -o OUTDIR", "none" if args.model is None
                            else "no -o OUTDIR")
    outcome = export_file(
        args.model, args.output, parse_targets(args.to), force=args.force, fp16=args.fp16,
        quantize=args.quantize, nhwc=args.nhwc, shapes=dict(parse_shape(s) for s in args.shape),
        seed=args.seed, check=not args.no_check, report_path=args.report, demo=args.demo,
    )
    if not args.quiet or outcome.error:
        print(outcome.text, file=sys.stderr if args.quiet else sys.stdout)
    if outcome.error:
        print(f"onnxfold: error: {outcome.error}; nothing written", file=sys.stderr)
    return outcome.exit_code
