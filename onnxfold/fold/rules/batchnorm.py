"""The BatchNormalization side of every fold: inference mode? constant parameters?"""

from __future__ import annotations

import numpy as np

from onnxfold.fold import bn_math
from onnxfold.fold.rules import Match, Refused, store
from onnxfold.graph import GraphIndex, attrs, describe

PARAMS = ("scale", "B", "mean", "var")  # BatchNormalization inputs 1..4


def check_batchnorm(g: GraphIndex, m: Match, channels: int) -> None:
    """Refuse unless the BN is an inference-mode per-channel affine map of `channels` channels.

    Stores scale/B/mean/var (as float64-ready arrays) and epsilon in m.values.
    """
    bn = g.nodes[m.norm]
    who = describe(bn)
    a = attrs(bn)
    if g.opset < 7 and a.get("is_test", 0) == 0:
        raise Refused("training-mode", f"{who} has is_test=0 (training mode, opset {g.opset})")
    if g.opset < 9 and a.get("spatial", 1) == 0:
        raise Refused(
            "spatial-0",
            f"{who} has spatial=0 (per-activation statistics, opset {g.opset}): not a "
            "per-channel map",
        )
    if a.get("training_mode", 0) != 0:
        raise Refused("training-mode", f"{who} has training_mode=1 (uses batch statistics)")
    extra = [o for o in bn.output[1:] if o]
    if extra:
        # Before opset 14 the spec defines the 5-output form as training mode (ORT then uses
        # batch statistics, used or not); from 14 on they are only valid with training_mode=1.
        raise Refused(
            "training-mode",
            f"{who} has training outputs {', '.join(repr(o) for o in extra)} "
            "(running/saved statistics: training mode)",
        )
    if len(bn.input) < 5 or not all(bn.input[1:5]):
        raise Refused("malformed", f"{who} has {len(bn.input)} inputs, expected 5")
    for key, name in zip(PARAMS, bn.input[1:5]):
        why = g.why_not_constant(name)
        if why:
            raise Refused("not-constant", f"{who}: {key} {why}")
        v = g.value(name)
        if v.shape != (channels,):
            raise Refused(
                "channel-mismatch",
                f"{who}: {key} '{name}' has shape {list(v.shape)}, the layer before it has "
                f"{channels} output channels",
            )
        if v.dtype.kind != "f" and v.dtype.name != "bfloat16":
            raise Refused("unsupported-dtype", f"{who}: {key} '{name}' has dtype {v.dtype.name}")
        m.values[key] = v
    m.values["epsilon"] = np.float64(a.get("epsilon", 1e-5))


def folded_values(m: Match, fold) -> tuple[np.ndarray, np.ndarray]:
    """fold(s, t) -> (weight, bias) in float64 for the BN's y = x*s + t, each cast once to the
    dtype of m.values["W"]; a Refused (not-finite, overflow) when they cannot be represented."""
    v = m.values
    try:
        s, t = bn_math.bn_scale_shift(v["scale"], v["B"], v["mean"], v["var"], v["epsilon"])
        w64, b64 = fold(s, t)
        dtype = v["W"].dtype
        return bn_math.cast_checked(w64, dtype, "weight"), bn_math.cast_checked(b64, dtype, "bias")
    except bn_math.FoldError as e:
        raise Refused(e.code, f"{m.who}: {e}") from None


def absorb_batchnorm(
    g: GraphIndex,
    m: Match,
    w: np.ndarray,
    b: np.ndarray,
    weight_at: tuple[int, int] | None = None,
    bias_at: tuple[int, int] | None = None,
) -> None:
    """Weight w and bias b go to (node, input slot) weight_at / bias_at (default: the producer's
    inputs 1 and 2), the producer (or the last pass-through node after it) takes over the BN's
    output name (so everything downstream keeps working), and the BN and its unused parameters
    go."""
    bn = g.nodes[m.norm]
    bn_out = bn.output[0]
    store(g, *(weight_at or (m.producer, 1)), w, "")
    store(g, *(bias_at or (m.producer, 2)), np.ascontiguousarray(b), f"{bn_out}_bias")
    g.rename_output(m.chain_end, g.nodes[m.chain_end].output[0], bn_out)
    params = list(bn.input[1:5])
    g.remove_node(m.norm)
    for name in params:
        g.drop_if_unused(name)
