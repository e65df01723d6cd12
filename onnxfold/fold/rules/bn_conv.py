"""BatchNormalization → Conv: fold forward into the Conv's input channels (pre-activation nets).

Exact only when the Conv pads nothing: padding inserts zeros after the BN, and the folded bias
would treat them as if they had been shifted by t too.
"""

from __future__ import annotations

import numpy as np

from onnxfold.fold import bn_math
from onnxfold.fold.rules import Match, Refused, constant_input, exclusive_follower, store
from onnxfold.fold.rules.anchor import check_anchor, drop_anchor, folded_values
from onnxfold.graph import GraphIndex, attrs, describe


class BatchNormConv:
    """Here Match.producer is the Conv *after* the BN, the layer that absorbs it."""

    name = "BatchNormalization+Conv"
    summary = "BN -> Conv with zero padding: folded into the Conv's input channels"
    producers: tuple[str, ...] = ()  # not a producer rule: it absorbs a BN it follows
    consumers = ("Conv",)

    def check(self, g: GraphIndex, m: Match) -> None:
        exclusive_follower(g, m)
        conv, who = g.nodes[m.producer], m.who
        a = attrs(conv)
        if any(a.get("pads", [])) or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
            raise Refused(
                "padding",
                f"{who}: {describe(conv)} pads its input; the zeros it adds after the "
                "BatchNormalization would be shifted by the fold",
            )
        w = constant_input(g, m, 1, "weight")
        if w is None or w.ndim < 3:
            raise Refused("unsupported-shape", f"{who}: the weight of {describe(conv)} is unusable")
        group = a.get("group", 1)
        if w.shape[0] % group:
            raise Refused("unsupported-shape", f"{who}: {describe(conv)} has group {group}")
        m.values["W"] = w
        b = constant_input(g, m, 2, "bias")
        if b is not None:
            m.values["b"] = b
        check_anchor(g, m, w.shape[1] * group, w.ndim)

    def rewrite(self, g: GraphIndex, m: Match) -> str:
        conv, v = g.nodes[m.producer], m.values
        group = attrs(conv).get("group", 1)
        w, b = folded_values(
            m, lambda s, t: bn_math.fold_into_next_conv(v["W"], v.get("b"), s, t, group)
        )
        bn = g.nodes[m.norm]
        label = describe(conv)
        store(g, m.producer, 1, w, "")
        store(g, m.producer, 2, np.ascontiguousarray(b), f"{conv.output[0]}_bias")
        g.set_input(m.producer, 0, bn.input[0])  # the Conv now reads what the BN read
        drop_anchor(g, m)
        return label
