"""Where do two models start to differ? Compare every intermediate tensor both of them name.

A rewrite that keeps names (a folded Conv takes over the BatchNormalization's output name) leaves
most tensors comparable; the first one, in the reference's topological order, that is off by more
than the tolerance points at the broken rewrite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxfold.graph import describe
from onnxfold.parity.compare import OutputDiff, compare


@dataclass(frozen=True)
class Divergence:
    tensor: str
    ref_node: str  # the node producing it in the reference
    cand_node: str  # ... and in the candidate
    diff: OutputDiff


@dataclass(frozen=True)
class BisectResult:
    compared: int  # tensors both models name, compared in order
    first: Divergence | None  # the first that differs, None if all agree
    last_good: str = ""  # the last tensor before it that agrees


def shared_tensors(a: onnx.ModelProto, b: onnx.ModelProto) -> list[str]:
    """Names produced by main-graph nodes of both models, in the reference's node order."""
    in_b = {o for n in b.graph.node for o in n.output if o}
    return [o for n in a.graph.node for o in n.output if o and o in in_b]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy that also outputs `names` (onnxruntime infers their types)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    out.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    return out


def bisect(
    a: onnx.ModelProto,
    b: onnx.ModelProto,
    run_a: Callable[[onnx.ModelProto, list[str]], list[np.ndarray]],
    run_b: Callable[[onnx.ModelProto, list[str]], list[np.ndarray]],
    rel_tol: float,
    atol: float = 0.0,
) -> BisectResult:
    """run_x(model, names) runs the model on the check's inputs and returns those tensors."""
    names = shared_tensors(a, b)
    if not names:
        return BisectResult(0, None)
    got_a = run_a(with_outputs(a, names), names)
    got_b = run_b(with_outputs(b, names), names)
    prod_a = {o: n for n in a.graph.node for o in n.output}
    prod_b = {o: n for n in b.graph.node for o in n.output}
    last = ""
    for i, (name, x, y) in enumerate(zip(names, got_a, got_b)):
        d = compare(np.asarray(x), np.asarray(y), name, rel_tol, atol)
        if not d.passed:
            div = Divergence(name, describe(prod_a[name]), describe(prod_b[name]), d)
            return BisectResult(i + 1, div, last)
        last = name
    return BisectResult(len(names), None, last)
