"""Gemm → BatchNormalization on its (M, N) output: scale B's columns, fold the shift into C."""

from __future__ import annotations

from onnxfold.fold import bn_math
from onnxfold.fold.rules import Match, Refused, constant_input, exclusive_producer, per_column
from onnxfold.fold.rules.anchor import absorb_anchor, check_anchor, folded_values
from onnxfold.graph import GraphIndex, attrs, describe


class GemmBatchNorm:
    name = "Gemm+BatchNormalization"
    summary = "Gemm -> BN on (N, C): B's output columns scaled, the BN shift folded into C"
    producers = ("Gemm",)

    def pattern(self, g: GraphIndex, m: Match) -> bool:
        return True

    def check(self, g: GraphIndex, m: Match) -> None:
        exclusive_producer(g, m)
        gemm, who = g.nodes[m.producer], describe(g.nodes[m.norm])
        w = constant_input(g, m, 1, "B input")
        if w is None or w.ndim != 2:
            shape = "missing" if w is None else f"of shape {list(w.shape)}"
            raise Refused("unsupported-shape", f"{who}: the B input of {describe(gemm)} is {shape}")
        n = w.shape[0] if attrs(gemm).get("transB", 0) else w.shape[1]
        m.values["W"] = w
        c = constant_input(g, m, 2, "C input")
        if c is not None:
            if not per_column(c, n):
                raise Refused(
                    "channel-mismatch",
                    f"{who}: the C input '{gemm.input[2]}' of {describe(gemm)} has shape "
                    f"{list(c.shape)}, which does not broadcast to its {n} output columns",
                )
            m.values["C"] = c
        check_anchor(g, m, n, 2)

    def rewrite(self, g: GraphIndex, m: Match) -> str:
        gemm, v = g.nodes[m.producer], m.values
        a = attrs(gemm)
        trans_b, beta = bool(a.get("transB", 0)), float(a.get("beta", 1.0))
        w, c = folded_values(
            m, lambda s, t: bn_math.fold_gemm(v["W"], v.get("C"), s, t, trans_b, beta)
        )
        label = describe(gemm)
        for attr in gemm.attribute:
            if attr.name == "beta":
                attr.f = 1.0  # beta is now inside C
        absorb_anchor(g, m, w, c)
        return label
