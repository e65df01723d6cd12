"""The anchor side of a fold: the BatchNormalization or scale layer the producer absorbs."""

from __future__ import annotations

import numpy as np

from onnxfold.fold import bn_math
from onnxfold.fold.rules import Match, Refused, store
from onnxfold.fold.rules.batchnorm import check_batchnorm
from onnxfold.fold.rules.scale import check_scale
from onnxfold.graph import GraphIndex


def check_anchor(g: GraphIndex, m: Match, channels: int, rank: int | None) -> None:
    """Refuse unless the anchor is a per-channel map y*s+t over `channels` channels on axis 1 of
    the producer's rank-`rank` output (None: unknown)."""
    if g.nodes[m.norm].op_type == "BatchNormalization":
        check_batchnorm(g, m, channels)
    else:
        if m.through and rank is not None:  # Squeeze/Unsqueeze in between change the rank
            rank = g.rank(g.nodes[m.norm].input[m.slot])
        check_scale(g, m, channels, rank)


def folded_values(m: Match, fold, weight_cast=None) -> tuple[np.ndarray, np.ndarray]:
    """fold(s, t) -> (weight, bias) in float64 for the anchor's y = x*s + t, each cast once to
    the dtype of m.values["W"]; a Refused (not-finite, overflow) when they cannot be represented.
    With weight_cast, fold gives (None, bias) and weight_cast(s) the cast weight."""
    v = m.values
    try:
        if "s" in v:
            s, t = v["s"], v["t"]
        else:
            s, t = bn_math.bn_scale_shift(v["scale"], v["B"], v["mean"], v["var"], v["epsilon"])
        w64, b64 = fold(s, t)
        if weight_cast is not None:
            w = weight_cast(s)
            dtype = v.pop("W").dtype
        else:
            # The unfolded weight is not needed past here: let it go before the cast (for a
            # big weight, it and the float64 and the cast copies were the run's peak memory).
            dtype = v.pop("W").dtype
            w = bn_math.cast_checked(w64, dtype, "weight")
            del w64
        return w, bn_math.cast_checked(b64, dtype, "bias")
    except bn_math.FoldError as e:
        raise Refused(e.code, f"{m.who}: {e}") from None


def absorb_anchor(
    g: GraphIndex,
    m: Match,
    w: np.ndarray,
    b: np.ndarray,
    weight_at: tuple[int, int] | None = None,
    bias_at: tuple[int, int] | None = None,
) -> None:
    """Weight w and bias b go to (node, input slot) weight_at / bias_at (default: the producer's
    inputs 1 and 2), the producer (or the last pass-through node after it) takes over the
    anchor's output name (so everything downstream keeps working), and the anchor and its
    constants nothing else reads go."""
    anchor = g.nodes[m.norm]
    out = anchor.output[0]
    store(g, *(weight_at or (m.producer, 1)), w, "")
    store(g, *(bias_at or (m.producer, 2)), np.ascontiguousarray(b), f"{out}_bias")
    g.rename_output(m.chain_end, g.nodes[m.chain_end].output[0], out)
    drop_anchor(g, m)


def drop_anchor(g: GraphIndex, m: Match) -> None:
    """Remove the anchor node and the constants of it that nothing else reads."""
    anchor = g.nodes[m.norm]
    if anchor.op_type == "BatchNormalization":
        params = list(anchor.input[1:5])
    else:
        params = [anchor.input[1 - m.slot]]
    g.remove_node(m.norm)
    for name in params:
        g.drop_if_unused(name)
