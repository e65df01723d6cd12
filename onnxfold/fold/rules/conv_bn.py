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
    store,
)
from onnxfold.fold.rules.batchnorm import check_batchnorm, drop_batchnorm
from onnxfold.graph import GraphIndex, describe


class ConvBatchNorm:
    """Also the base of ConvTranspose's rule, which overrides the two hooks below."""

    name = "Conv+BatchNormalization"
    producers = ("Conv",)

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
        store(g, m.producer, 1, w, "")
        store(g, m.producer, 2, b, f"{bn_out}_bias")
        # The Conv takes over the BN's output name, so everything downstream keeps working.
        g.rename_output(m.producer, conv_out, bn_out)
        drop_batchnorm(g, m)
        return label
