"""darknet's activations (the `activation=` key of conv, shortcut and connected) as ONNX ops.

Formulas as the AlexeyAB fork computes them (src/activations.{h,c}); the original darknet (pj)
has the first five and, for a name it does not know (mish, swish, ...), prints a warning and
runs ReLU. A cfg asking pj for one of those is refused with the pj flavour: pj computes a
different network than the cfg says.
"""

from __future__ import annotations

import numpy as np

from onnxfold.darknet.cfg import Section
from onnxfold.darknet.layers.base import Graph, pj_refusal

BOTH = ("leaky", "linear", "logistic", "relu", "tanh")
AB_ONLY = ("mish", "swish", "relu6", "hard_mish", "gelu")
NAMES = BOTH + AB_ONLY
# gelu in ab: 0.5*x*(1 + tanh(0.797885*x + 0.035677*x^3)), the tanh approximation, rounded
GELU_A, GELU_B = 0.797885, 0.035677


def parse(sec: Section, default: str, flavour: str) -> str:
    """The activation a section asks for; refused if unknown, or ab-only under pj."""
    name = sec.get_str("activation", default)
    if name not in NAMES:
        raise sec.error("activation", f"an activation onnxfold converts ({', '.join(NAMES)})",
                        repr(name))
    if flavour == "darknet" and name in AB_ONLY:
        raise pj_refusal(sec, "activation", "an activation the original darknet knows",
                         repr(name), f"it runs '{name}' as ReLU")
    return name


def emit(g: Graph, x: str, name: str, act: str) -> str:
    """Apply `act` to `x`; the result is named `name` (linear adds nothing)."""
    if act == "linear":
        return x
    if act == "leaky":
        return g.node("LeakyRelu", [x], name, alpha=0.1)
    if act in ("logistic", "relu", "tanh"):
        return g.node({"logistic": "Sigmoid", "relu": "Relu", "tanh": "Tanh"}[act], [x], name)
    if act == "relu6":
        lo = g.const(f"{name}.min", np.array(0, np.float32))
        hi = g.const(f"{name}.max", np.array(6, np.float32))
        return g.node("Clip", [x, lo, hi], name)
    if act == "swish":
        gate = g.node("Sigmoid", [x], f"{name}.sigmoid")
    elif act == "mish":
        # x * tanh(softplus(x)); ab switches softplus to x above 20 and to exp(x) below -20,
        # where log(1 + exp(x)) agrees with either to float32 precision
        gate = g.node("Tanh", [g.node("Softplus", [x], f"{name}.softplus")], f"{name}.tanh")
    elif act == "hard_mish":
        # x if x > 0, x*x/2 + x if -2 < x <= 0, else 0: x * clip(x/2 + 1, 0, 1)
        gate = g.node("HardSigmoid", [x], f"{name}.gate", alpha=0.5, beta=1.0)
    else:  # gelu
        a = g.const(f"{name}.a", np.array(GELU_A, np.float32))
        b = g.const(f"{name}.b", np.array(GELU_B, np.float32))
        half = g.const(f"{name}.half", np.array(0.5, np.float32))
        sq = g.node("Mul", [x, x], f"{name}.square")
        inner = g.node("Mul", [x, g.node("Add", [a, g.node("Mul", [sq, b], f"{name}.bx2")],
                                        f"{name}.poly")], f"{name}.inner")
        t = g.node("Tanh", [inner], f"{name}.tanh")
        one = g.const(f"{name}.one", np.array(1, np.float32))
        gate = g.node("Mul", [g.node("Add", [t, one], f"{name}.1p"), half], f"{name}.gate")
    return g.node("Mul", [x, gate], name)
