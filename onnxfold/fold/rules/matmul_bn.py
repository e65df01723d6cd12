"""MatMul(X, const W) [→ Add(const)] → BatchNormalization, for a 2-D X only.

BatchNormalization normalizes axis 1. For a 2-D (N, K) @ (K, C) product that is the MatMul's
last axis, so each output column is scaled and shifted. For a 3-D (N, T, K) input axis 1 is T:
the BN would normalize over time steps, which no change of W can express; that is refused.
"""

from __future__ import annotations

from onnxfold.fold import bn_math
from onnxfold.fold.rules import Match, Refused, constant_input, exclusive_producer, per_column
from onnxfold.fold.rules.anchor import absorb_anchor, check_anchor, folded_values
from onnxfold.graph import DEFAULT_DOMAINS, GraphIndex, describe


class MatMulBatchNorm:
    name = "MatMul+BatchNormalization"
    summary = "MatMul(2-D X, const W) [-> Add(const)] -> BN: W's columns scaled"
    producers = ("MatMul", "Add")

    def pattern(self, g: GraphIndex, m: Match) -> bool:
        p = g.nodes[m.producer]
        if p.op_type == "MatMul":
            return True
        for name in p.input[:2]:  # Add(MatMul(..), c) or Add(c, MatMul(..))
            i = g.producer.get(name)
            if i is not None and g.nodes[i].op_type == "MatMul":
                m.inner = i
                return True
        return False

    def check(self, g: GraphIndex, m: Match) -> None:
        exclusive_producer(g, m)
        who = m.who
        mm_i = m.producer if m.inner is None else m.inner
        mm = g.nodes[mm_i]
        if mm.domain not in DEFAULT_DOMAINS:
            raise Refused("not-foldable", f"{who}: {describe(mm)} is in domain '{mm.domain}'")
        if m.inner is not None:
            add = g.nodes[m.producer]
            slot = list(add.input).index(mm.output[0])
            if g.is_used_outside(mm.output[0], m.producer, slot):
                raise Refused(
                    "shared-output",
                    f"{who}: the output '{mm.output[0]}' of {describe(mm)} is needed unfolded: "
                    f"{g.other_user(mm.output[0], m.producer, slot)}",
                )
            m.values["add_slot"] = 1 - slot
        x = mm.input[0]
        rank = g.rank(x)
        if rank != 2:
            what = "an unknown rank" if rank is None else f"rank {rank}"
            raise Refused(
                "channel-axis",
                f"{who}: the input '{x}' of {describe(mm)} has {what}; only a 2-D input puts "
                "BatchNormalization's channel axis 1 on the MatMul's output columns",
            )
        w = constant_input(g, m, 1, "weight", node=mm_i)
        if w is None or w.ndim != 2:
            shape = "missing" if w is None else f"of shape {list(w.shape)}"
            raise Refused("unsupported-shape", f"{who}: the weight of {describe(mm)} is {shape}")
        n = w.shape[1]
        m.values["W"] = w
        if m.inner is not None:
            c = constant_input(g, m, int(m.values["add_slot"]), "addend")
            if c is None or not per_column(c, n):
                shape = "missing" if c is None else f"of shape {list(c.shape)}"
                raise Refused(
                    "channel-mismatch",
                    f"{who}: the addend of {describe(g.nodes[m.producer])} is {shape}, not a "
                    f"per-column constant for {n} columns",
                )
            m.values["C"] = c
        check_anchor(g, m, n, 2)

    def rewrite(self, g: GraphIndex, m: Match) -> str:
        v = m.values
        w, c = folded_values(
            m, lambda s, t: bn_math.fold_gemm(v["W"], v.get("C"), s, t, False, 1.0)
        )
        if m.inner is None:
            mm = g.nodes[m.producer]
            label = describe(mm)
            mm.op_type = "Gemm"  # a 2-D MatMul plus a bias is exactly a Gemm
            absorb_anchor(g, m, w, c)
        else:
            label = f"{describe(g.nodes[m.inner])} and {describe(g.nodes[m.producer])}"
            absorb_anchor(g, m, w, c, weight_at=(m.inner, 1),
                             bias_at=(m.producer, int(v["add_slot"])))
        return label
