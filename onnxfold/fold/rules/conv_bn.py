"""Conv → BatchNormalization: scale the weight per output channel, add the BN's shift as bias."""

from __future__ import annotations

import numpy as np
import onnx

from onnxfold.fold import bn_math
from onnxfold.fold.rules import Match, Refused
from onnxfold.fold.rules.batchnorm import check_batchnorm, drop_batchnorm
from onnxfold.graph import DEFAULT_DOMAINS, GraphIndex, describe

FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")


class ConvBatchNorm:
    """Also the base of the other weight-and-bias producers: they override the two hooks below."""

    name = "Conv+BatchNormalization"
    producers = ("Conv",)

    def out_channels(self, w: np.ndarray, node: onnx.NodeProto) -> int | None:
        """Output channels given weight w, or None if w's shape does not fit the node."""
        return w.shape[0]

    def fold_weight(self, w, b, s, t, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
        return bn_math.fold_conv(w, b, s, t)

    def check(self, g: GraphIndex, m: Match) -> None:
        conv, bn = g.nodes[m.producer], g.nodes[m.norm]
        who = describe(bn)
        if conv.domain not in DEFAULT_DOMAINS:
            raise Refused("not-foldable", f"{who}: {describe(conv)} is in domain '{conv.domain}'")
        out = conv.output[0]
        if g.is_used_outside(out, m.norm, 0):
            raise Refused(
                "shared-output",
                f"{who}: the output '{out}' of {describe(conv)} is needed unfolded: "
                f"{g.other_user(out, m.norm, 0)}",
            )
        w_name = conv.input[1] if len(conv.input) > 1 else ""
        why = g.why_not_constant(w_name) if w_name else "is missing"
        if why:
            raise Refused("not-constant", f"{who}: the weight of {describe(conv)}: {why}")
        w = g.value(w_name)
        channels = self.out_channels(w, conv) if w.ndim >= 3 else None
        if w.dtype.name not in FLOAT_DTYPES or channels is None:
            raise Refused(
                "unsupported-dtype",
                f"{who}: the weight '{w_name}' of {describe(conv)} is {w.dtype.name} "
                f"with shape {list(w.shape)}",
            )
        m.values["W"] = w
        b_name = conv.input[2] if len(conv.input) > 2 else ""
        if b_name:
            why = g.why_not_constant(b_name)
            if why:
                raise Refused("not-constant", f"{who}: the bias of {describe(conv)}: {why}")
            b = g.value(b_name)
            if b.shape != (channels,):
                raise Refused(
                    "channel-mismatch",
                    f"{who}: the bias '{b_name}' of {describe(conv)} has shape {list(b.shape)}, "
                    f"its weight {channels} output channels",
                )
            m.values["b"] = b
        check_batchnorm(g, m, channels=channels)

    def rewrite(self, g: GraphIndex, m: Match) -> str:
        v = m.values
        conv, bn = g.nodes[m.producer], g.nodes[m.norm]
        try:
            s, t = bn_math.bn_scale_shift(v["scale"], v["B"], v["mean"], v["var"], v["epsilon"])
            w64, b64 = self.fold_weight(v["W"], v.get("b"), s, t, conv)
            w = bn_math.cast_checked(w64, v["W"].dtype, "weight")
            b = bn_math.cast_checked(b64, v["W"].dtype, "bias")
        except bn_math.FoldError as e:
            raise Refused(e.code, f"{describe(bn)}: {e}") from None
        label = describe(conv)
        conv_out, bn_out = conv.output[0], bn.output[0]
        # Edits start here; nothing below raises on a valid graph.
        _store(g, m.producer, 1, w, f"{conv.input[1]}_folded")
        if "b" in v:
            _store(g, m.producer, 2, b, f"{conv.input[2]}_folded")
        else:
            g.set_input(m.producer, 2, g.add_initializer(f"{bn_out}_bias", b))
        # The Conv takes over the BN's output name, so everything downstream keeps working.
        g.rename_output(m.producer, conv_out, bn_out)
        drop_batchnorm(g, m)
        return label


def _store(g: GraphIndex, node: int, slot: int, array, copy_base: str) -> None:
    """Give input `slot` of `node` the new value: in place if only it reads it, else as a copy."""
    name = g.nodes[node].input[slot]
    if g.is_used_outside(name, node, slot):
        g.set_input(node, slot, g.add_initializer(copy_base, array))
    else:
        g.set_value(name, array)
