"""Scale layers: Mul/Add/Sub/Div by a per-channel constant right after Conv, ConvTranspose, Gemm.

Caffe's BatchNorm+Scale, the BN-merge case of Caffe MobileNet-SSD, DETR's Conv→Mul→Add and BNs
that exporters decompose into (x - mean) * k + B or (x - mean) / d + B all reach ONNX this way.
Each is y*s+t per channel: Mul by c is s = c, t = 0; Add of c is s = 1, t = c; x - c is
s = 1, t = -c; c - x is s = -1, t = c; x / c is s = 1/c (c / x is not affine: never matched). Only
constants that broadcast per output channel fold: one value per channel on axis 1 (shapes like
[C,1,1], [1,C,1,1], [C] for Gemm) or a single value; a constant that varies along the batch or
spatial axes, or has more axes than the output (it would change the output's shape), is refused.
"""

from __future__ import annotations

import numpy as np

from onnxfold.fold.rules import FLOAT_DTYPES, Match, Refused
from onnxfold.graph import DEFAULT_DOMAINS, GraphIndex

OPS = ("Mul", "Add", "Sub", "Div")
PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


class ScaleLayer:
    """Selects scale-layer folds (--only/--skip); the fold itself uses the producer's rule."""

    name = "ScaleLayer"
    summary = "Conv/ConvTranspose/Gemm -> Mul/Add/Sub/Div by a per-channel constant"
    producers: tuple[str, ...] = ()


def constant_slot(g: GraphIndex, node) -> int | None:
    """For a default-domain Mul/Add with exactly one constant operand: that operand's slot."""
    if node.op_type not in OPS or node.domain not in DEFAULT_DOMAINS or len(node.input) != 2:
        return None
    const = [g.why_not_constant(name) is None for name in node.input]
    if const.count(True) != 1:
        return None
    slot = const.index(True)
    return None if node.op_type == "Div" and slot == 0 else slot  # c / x is not affine


def check_scale(g: GraphIndex, m: Match, channels: int, rank: int | None) -> None:
    """Refuse unless the anchor's constant is per-channel; store s and t (float64) in m.values."""
    node = g.nodes[m.norm]
    name = node.input[1 - m.slot]
    c = g.value(name)
    where = f"{m.who}: the constant '{name}' of shape {list(c.shape)}"
    if c.dtype.name not in FLOAT_DTYPES or c.dtype != m.values["W"].dtype:
        raise Refused(
            "broadcast-dtype",
            f"{m.who}: the constant '{name}' is {c.dtype.name}, the layer computes in "
            f"{m.values['W'].dtype.name}",
        )
    if rank is None:
        raise Refused("channel-axis", f"{m.who}: the rank of its input is unknown")
    if g.opset < 7:  # numpy-style broadcasting is opset 7's; the fold below assumes it
        raise Refused("broadcast-shape", f"{where}: before opset 7, {node.op_type} broadcasts "
                                         "only by its legacy broadcast/axis attributes")
    if c.ndim > rank:
        raise Refused("broadcast-shape", f"{where} has more axes than the rank-{rank} output: "
                                         "it would change the output's shape")
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)
    if full.shape[0] != 1:
        raise Refused("broadcast-shape", f"{where} varies along the batch axis")
    if any(d != 1 for d in full.shape[2:]):
        raise Refused("not-per-channel", f"{where} varies along spatial axes")
    if full.shape[1] not in (1, channels):
        raise Refused("channel-mismatch", f"{where} does not match {channels} channels")
    vec = np.broadcast_to(full.reshape(-1).astype(np.float64), (channels,)).copy()
    if not np.isfinite(vec).all():
        raise Refused("not-finite", f"{where} has values that are not finite")
    ones, zeros = np.ones(channels), np.zeros(channels)
    if node.op_type == "Div" and not vec.all():
        raise Refused("not-finite", f"{where} has zeros: division by zero")
    # Sub with the layer on the right is c - x: s = -1, t = c.
    s_t = {
        "Mul": (vec, zeros),
        "Add": (ones, vec),
        "Sub": (ones, -vec) if m.slot == 0 else (-ones, vec),
        "Div": (1.0 / vec, zeros),
    }
    m.values["s"], m.values["t"] = s_t[node.op_type]
