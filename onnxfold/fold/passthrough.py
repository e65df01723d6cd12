"""Nodes a fold may look through: they keep the channel axis, so a per-channel map commutes."""

from __future__ import annotations

import onnx

from onnxfold.graph import DEFAULT_DOMAINS, GraphIndex, attrs, describe

OPS = ("Identity", "Squeeze", "Unsqueeze")


def is_layout_op(node: onnx.NodeProto) -> bool:
    return node.op_type in OPS and node.domain in DEFAULT_DOMAINS


def why_channels_move(g: GraphIndex, node: onnx.NodeProto) -> str | None:
    """None if the node keeps axes 0 and 1 where they are; otherwise why it may not."""
    if node.op_type == "Identity":
        return None
    axes = _axes(g, node)
    if isinstance(axes, str):
        return axes
    if not axes:
        return f"{describe(node)} has no axes: it may drop the batch axis"
    rank = g.rank(node.input[0])
    if rank is not None and node.op_type == "Unsqueeze":
        rank += len(axes)
    if any(a < 0 for a in axes) and rank is None:
        return f"{describe(node)} has negative axes {axes} on a tensor of unknown rank"
    norm = sorted(a + rank if a < 0 else a for a in axes) if rank is not None else sorted(axes)
    if norm[0] < 2:
        return f"{describe(node)} with axes {axes} moves the channel axis"
    return None


def _axes(g: GraphIndex, node: onnx.NodeProto) -> list[int] | str:
    a = attrs(node)
    if "axes" in a:  # before opset 13
        return list(a["axes"])
    if len(node.input) < 2 or not node.input[1]:
        return []
    why = g.why_not_constant(node.input[1])
    if why:
        return f"the axes of {describe(node)}: {why}"
    return [int(x) for x in g.value(node.input[1]).reshape(-1)]
