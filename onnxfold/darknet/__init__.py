"""darknet .cfg + .weights -> ONNX, computing what darknet computes (see README, `convert`)."""

from __future__ import annotations

import logging
import os

import numpy as np

from onnxfold.darknet.build import Converted, Plan, build, plan
from onnxfold.darknet.cfg import read_cfg, unused_keys
from onnxfold.darknet.heads import KINDS, Decode, Nms, check_nms
from onnxfold.darknet.layers.base import BN_FLAVOURS, Options
from onnxfold.darknet.layers.base import HEADS as LAYER_HEADS
from onnxfold.darknet.layers.convolutional import Convolutional
from onnxfold.darknet.layers.region import Region
from onnxfold.darknet.layers.yolo import Yolo
from onnxfold.darknet.names import read_names
from onnxfold.darknet.weights import read_weights
from onnxfold.errors import OnnxfoldError
from onnxfold.modelio import PROTOBUF_LIMIT
from onnxfold.parity.inputs import MAX_FEED_BYTES

__all__ = ["BN_FLAVOURS", "HEADS", "Converted", "Nms", "convert_darknet", "load_plan",
           "parse_size"]
log = logging.getLogger(__name__)
DEFAULT_BN_EPS = "darknet"
DEFAULT_HEAD = "darknet"
HEADS = (*LAYER_HEADS, "boxes")  # boxes: the layers emit darknet's buffers, heads/ decodes them
SIZE_STEP = 32  # the YOLOs' total stride


def parse_size(text: str) -> tuple[int, int]:
    """--size WIDTHxHEIGHT -> (width, height), each a positive multiple of 32."""
    w, x, h = text.lower().partition("x")
    if not (x and w.isdigit() and h.isdigit()):
        raise OnnxfoldError("--size", "WIDTHxHEIGHT, e.g. 320x320", repr(text))
    return check_size((int(w), int(h)))


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    w, h = size
    if not all(v > 0 and v % SIZE_STEP == 0 for v in size):
        raise OnnxfoldError("--size", f"a width and height that are positive multiples of "
                            f"{SIZE_STEP}", f"{w}x{h}")
    return size


def load_plan(cfg_path: str | os.PathLike[str], bn_eps: str = DEFAULT_BN_EPS,
              head: str = DEFAULT_HEAD, *, size: tuple[int, int] | None = None,
              nms: Nms | None = None) -> Plan:
    """Parse a cfg and lay out its layers; raises OnnxfoldError for what we cannot convert.
    `size` is (width, height) in place of [net]'s; `nms` needs head "boxes"."""
    if bn_eps not in BN_FLAVOURS:
        raise OnnxfoldError("--bn-eps", " or ".join(BN_FLAVOURS), repr(bn_eps))
    if head not in HEADS:
        raise OnnxfoldError("--head", " or ".join(HEADS), repr(head))
    if nms is not None and head != "boxes":
        raise OnnxfoldError("--nms", "--head boxes (NMS runs on the decoded boxes)",
                            f"--head {head}")
    if size is not None:
        check_size(size)
    cfg = read_cfg(cfg_path)
    if head == "boxes" and not any(sec.kind in KINDS for sec in cfg.layers):
        raise OnnxfoldError(cfg.path, "a [region] or [yolo] layer for --head boxes",
                            f"none (the last layer is [{cfg.layers[-1].kind}])")
    result = plan(cfg, Options(bn_eps, "raw" if head == "raw" else "darknet"),
                  None if size is None else (size[1], size[0]))
    if head == "boxes":
        result.decode = Decode(None if nms is None else check_nms(nms))
        result.decode.describe(result.layers, result.input.w, result.input.h)
    for section in (cfg.net, *cfg.layers):
        if section.kind == "region" and head == "raw":
            continue  # not emitted: --head raw ends at the last conv
        for key in unused_keys(section):
            opt = section.options[key]
            log.warning("%s: unused (darknet ignores it too): %s=%s", section.where(key),
                        key, opt.value[:80])
    return result


def convert_darknet(
    cfg_path: str | os.PathLike[str],
    weights_path: str | os.PathLike[str] | None = None,
    *,
    weights_seed: int | None = None,
    bn_eps: str = DEFAULT_BN_EPS,
    head: str = DEFAULT_HEAD,
    size: tuple[int, int] | None = None,
    nms: Nms | None = None,
    names: str | os.PathLike[str] | None = None,
) -> Converted:
    """Convert a darknet network; weights from a .weights file or synthetic ones from a seed.
    size: (width, height) for [net]; nms: with head "boxes"; names: a .names file of labels."""
    if (weights_path is None) == (weights_seed is None):
        raise OnnxfoldError("convert", "a .weights file or --weights-seed (one of them)",
                            "both" if weights_path is not None else "neither")
    if weights_seed is not None and weights_seed < 0:
        raise OnnxfoldError("--weights-seed", "an integer >= 0", str(weights_seed))
    p = load_plan(cfg_path, bn_eps, head, size=size, nms=nms)
    check_sizes(p)
    labels = None if names is None else read_names(names, *classes_of(p))
    if weights_path is not None:
        w = read_weights(weights_path, p.layout(), bn_eps)
        arrays, source = w.arrays, f"sha256:{w.sha256}"
        _check_variances(p, arrays, os.fspath(weights_path))
    else:
        from onnxfold.darknet.synth import synthetic_arrays

        arrays, source = synthetic_arrays(p, weights_seed), f"synthetic, seed {weights_seed}"
    meta = metadata(p, source)
    if labels is not None:
        meta["darknet.names"] = "\n".join(labels)
    return build(p, arrays, meta)


def classes_of(p: Plan) -> tuple[int, str]:
    """How many class labels the network needs, and which cfg line says so."""
    for layer in p.layers:
        if layer.kind in KINDS:
            sec = layer.section
            return sec.get_int("classes", 20), f"classes in {sec.where('classes')}"
    last = p.layers[-1]
    if last.out.h == last.out.w == 1:
        return last.out.c, f"the {last.out.c} outputs of {last.section.where()}"
    raise last.section.error(None, "a network with [region]/[yolo] heads or a classifier "
                             "output (Cx1x1) for --names", f"an output of {last.out}")


def check_sizes(p: Plan) -> None:
    """Refuse, from the cfg alone and before anything is read or allocated, a network whose
    weights cannot fit one ONNX file (protobuf's 2 GB) or one of whose layer outputs is over
    MAX_FEED_BYTES (synthetic weights are calibrated by running every layer; --fold runs the
    model): `filters=2000000000` is a number in a text file."""
    s = p.input
    if 4 * s.c * s.h * s.w > MAX_FEED_BYTES:
        raise p.cfg.net.error(None, f"an input of at most {MAX_FEED_BYTES >> 30} GiB",
                              f"1x{s}")
    total = 0
    for layer in p.layers:
        total += sum(n for _, n in layer.blobs)
        if 4 * total > PROTOBUF_LIMIT - (16 << 20):
            raise layer.section.error(None, "a network whose weights fit one ONNX file (2 GB)",
                                      f"{total} float32 weights up to this layer")
        out = layer.out
        if 4 * out.c * out.h * out.w > MAX_FEED_BYTES:
            raise layer.section.error(None, f"layer outputs of at most {MAX_FEED_BYTES >> 30} "
                                      "GiB (onnxfold runs the network)", f"1x{out}")


def metadata(p: Plan, weights: str) -> dict[str, str]:
    """What a user of the model needs to decode it, recorded in metadata_props."""
    s = p.input
    meta = {
        "darknet.cfg": f"{os.path.basename(p.cfg.path)} sha256:{p.cfg.sha256}",
        "darknet.weights": weights,
        "darknet.input": f"images 1x{s.c}x{s.h}x{s.w} float32 RGB in [0,1], planar (CHW)",
        "darknet.width": str(s.w),
        "darknet.height": str(s.h),
        "darknet.head": "boxes" if p.decode else p.opts.head,
        "darknet.bn_eps": p.opts.bn_eps,
    }
    last = p.layers[-1]
    if isinstance(last, Region):
        meta["darknet.classes"] = str(last.classes)
        meta["darknet.num"] = str(last.num)
        meta["darknet.coords"] = str(last.coords)
        meta["darknet.anchors"] = ",".join(str(a) for a in last.anchors)
    heads = [x for x in p.layers if isinstance(x, Yolo)]
    if heads:  # one entry per output, in order; the anchors are in input pixels
        meta["darknet.classes"] = ",".join(str(x.classes) for x in heads)
        meta["darknet.masks"] = ";".join(",".join(map(str, x.mask)) for x in heads)
        meta["darknet.anchors"] = ";".join(",".join(map(str, x.anchors)) for x in heads)
        meta["darknet.scale_x_y"] = ",".join(str(x.scale_x_y) for x in heads)
    if p.decode is not None:
        meta.update(p.decode.metadata())
    return meta


def _check_variances(p: Plan, arrays: dict[int, dict[str, np.ndarray]], source: str) -> None:
    """A negative running variance has no square root: darknet would compute NaN."""
    for layer in p.layers:
        if isinstance(layer, Convolutional) and layer.batch_normalize:
            var = arrays[layer.index]["rolling_variance"]
            bad = np.flatnonzero(var < 0)
            if bad.size:
                c = int(bad[0])
                raise OnnxfoldError(source, "rolling_variance >= 0 in every batch-normalized "
                                    "layer", f"layer {layer.index} channel {c}: {float(var[c])!r}")
