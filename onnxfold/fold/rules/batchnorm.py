"""The BatchNormalization side of every fold: inference mode? constant parameters?"""

from __future__ import annotations

import numpy as np

from onnxfold.fold.rules import Match, Refused
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
