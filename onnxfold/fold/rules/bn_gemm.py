"""BatchNormalization on (N, K) → Gemm reading it as A: fold forward into B's K axis and C."""

from __future__ import annotations

import numpy as np

from onnxfold.fold import bn_math
from onnxfold.fold.rules import (
    Match,
    Refused,
    constant_input,
    exclusive_follower,
    per_column,
    store,
)
from onnxfold.fold.rules.anchor import check_anchor, drop_anchor, folded_values
from onnxfold.graph import GraphIndex, attrs, describe


class BatchNormGemm:
    """Here Match.producer is the Gemm *after* the BN, the layer that absorbs it."""

    name = "BatchNormalization+Gemm"
    summary = "BN on (N, K) -> Gemm (transA 0): folded into B's K axis and C"
    producers: tuple[str, ...] = ()
    consumers = ("Gemm",)

    def check(self, g: GraphIndex, m: Match) -> None:
        exclusive_follower(g, m)
        gemm, who = g.nodes[m.producer], m.who
        a = attrs(gemm)
        if a.get("transA", 0):
            raise Refused(
                "channel-axis",
                f"{who}: {describe(gemm)} has transA=1, so the BN's channels are the rows of "
                "its output, not a per-column map",
            )
        w = constant_input(g, m, 1, "B input")
        if w is None or w.ndim != 2:
            raise Refused("unsupported-shape", f"{who}: the B input of {describe(gemm)} is not 2-D")
        k = w.shape[1] if a.get("transB", 0) else w.shape[0]
        n = w.shape[0] if a.get("transB", 0) else w.shape[1]
        m.values["W"] = w
        c = constant_input(g, m, 2, "C input")
        if c is not None:
            if not per_column(c, n):
                raise Refused("channel-mismatch", f"{who}: the C input of {describe(gemm)} has "
                                                  f"shape {list(c.shape)}")
            m.values["C"] = c
        check_anchor(g, m, k, 2)

    def rewrite(self, g: GraphIndex, m: Match) -> str:
        gemm, v = g.nodes[m.producer], m.values
        a = attrs(gemm)
        trans_b, alpha, beta = bool(a.get("transB", 0)), a.get("alpha", 1.0), a.get("beta", 1.0)
        w, c = folded_values(m, lambda s, t: bn_math.fold_into_next_gemm(
            v["W"], v.get("C"), s, t, trans_b, float(alpha), float(beta)))
        bn = g.nodes[m.norm]
        label = describe(gemm)
        store(g, m.producer, 1, w, "")
        store(g, m.producer, 2, np.ascontiguousarray(c), f"{gemm.output[0]}_bias")
        for attr in gemm.attribute:
            if attr.name == "beta":
                attr.f = 1.0  # beta is now inside C
        g.set_input(m.producer, 0, bn.input[0])  # the Gemm now reads what the BN read
        drop_anchor(g, m)
        return label
