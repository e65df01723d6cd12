"""Conv → BatchNormalization: scale the weight per output channel, add the BN's shift as bias."""

from __future__ import annotations

import numpy as np
import onnx

from onnxfold.fold import bn_math
from onnxfold.fold.rules import (
    Match,
    Refused,
    constant_input,
    exclusive_producer,
)
from onnxfold.fold.rules.anchor import absorb_anchor, check_anchor, folded_values
from onnxfold.graph import GraphIndex, describe


class ConvBatchNorm:
    """Also the base of ConvTranspose's rule, which overrides the two hooks below."""

    name = "Conv+BatchNormalization"
    summary = "Conv -> BN: weight scaled per output channel, the BN shift becomes the bias"
    producers = ("Conv",)
    sliced = True  # big weights folded by bn_math.fold_conv_cast (fold_weight's math, in one pass)

    def pattern(self, g: GraphIndex, m: Match) -> bool:
        return True

    def out_channels(self, w: np.ndarray, node: onnx.NodeProto) -> int | None:
        """Output channels given weight w, or None if w's shape does not fit the node."""
        return w.shape[0] if w.ndim >= 3 else None

    def fold_weight(self, w, b, s, t, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
        return bn_math.fold_conv(w, b, s, t)

    def check(self, g: GraphIndex, m: Match) -> None:
        exclusive_producer(g, m)
        conv, who = g.nodes[m.producer], describe(g.nodes[m.norm])
        w = constant_input(g, m, 1, "weight")
        if w is None:
            raise Refused("not-constant", f"{who}: {describe(conv)} has no weight input")
        channels = self.out_channels(w, conv)
        if channels is None:
            raise Refused(
                "unsupported-shape",
                f"{who}: the weight '{conv.input[1]}' of {describe(conv)} has shape "
                f"{list(w.shape)}",
            )
        m.values["W"] = w
        b = constant_input(g, m, 2, "bias")
        if b is not None:
            if b.shape != (channels,):
                raise Refused(
                    "channel-mismatch",
                    f"{who}: the bias '{conv.input[2]}' of {describe(conv)} has shape "
                    f"{list(b.shape)}, its weight {channels} output channels",
                )
            m.values["b"] = b
        check_anchor(g, m, channels, w.ndim)

    def rewrite(self, g: GraphIndex, m: Match) -> str:
        conv, v = g.nodes[m.producer], m.values
        if self.sliced and v["W"].nbytes >= bn_math.SLICED_FROM:
            w, b = folded_values(
                m, lambda s, t: (None, bn_math.fold_conv_bias(v.get("b"), s, t)),
                weight_cast=lambda s: bn_math.fold_conv_cast(v["W"], s, v["W"].dtype),
            )
        else:
            w, b = folded_values(m, lambda s, t: self.fold_weight(v["W"], v.get("b"), s, t, conv))
        label = describe(conv)
        absorb_anchor(g, m, w, b)
        return label
