"""Fold rules: one per file, each a pattern / check / rewrite triple anchored on a normalization.

`pattern` says whether the rule applies to the node feeding the BatchNormalization, `check` says
why not when it may not (a Refused with a code and a one-line reason), `rewrite` edits the graph.
A rewrite computes every new value before its first edit, so a Refused or an unexpected error
raised in it leaves the graph as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from onnxfold.graph import DEFAULT_DOMAINS, GraphIndex, describe

FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")


class Refused(Exception):
    """A fold that must not happen; code groups refusals in reports, the message says why."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Match:
    norm: int  # the BatchNormalization (node index)
    producer: int  # the node whose output it normalizes
    values: dict[str, np.ndarray] = field(default_factory=dict)  # constants read by check
    who: str = ""  # how refusals name the normalization node
    slot: int = 0  # which input of the anchor (norm) reads the producer's chain
    inner: int | None = None  # a node behind the producer that the fold also changes
    # Nodes between the producer and the normalization that keep the channel axis (Identity,
    # Squeeze/Unsqueeze off axes 0 and 1), producer side first. They stay; the last one takes
    # over the normalization's output name.
    through: list[int] = field(default_factory=list)

    @property
    def chain_end(self) -> int:
        return self.through[-1] if self.through else self.producer


class Rule(Protocol):
    name: str
    summary: str  # one line for --list-rules
    producers: tuple[str, ...]  # op types this rule folds into

    def pattern(self, g: GraphIndex, m: Match) -> bool: ...  # is this the rule's shape?

    def check(self, g: GraphIndex, m: Match) -> None: ...  # raises Refused

    def rewrite(self, g: GraphIndex, m: Match) -> str: ...  # returns the producer's label


def exclusive_producer(g: GraphIndex, m: Match) -> None:
    """The producer is a default-domain op whose output reaches only the normalization (through
    m.through, each read only by the next)."""
    p, who = g.nodes[m.producer], describe(g.nodes[m.norm])
    if p.domain not in DEFAULT_DOMAINS:
        raise Refused("not-foldable", f"{who}: {describe(p)} is in domain '{p.domain}'")
    chain = [m.producer, *m.through]
    readers = [(n, 0) for n in m.through] + [(m.norm, m.slot)]
    for node, reader in zip(chain, readers):
        out = g.nodes[node].output[0]
        if g.is_used_outside(out, *reader):
            raise Refused(
                "shared-output",
                f"{who}: the output '{out}' of {describe(g.nodes[node])} is needed unfolded: "
                f"{g.other_user(out, *reader)}",
            )


def per_column(c: np.ndarray, n: int) -> bool:
    """Does c broadcast to a (M, n) output without changing its shape: (), [1|n], [M|1, 1|n]?"""
    return c.ndim <= 2 and (c.ndim == 0 or c.shape[-1] in (1, n))


def exclusive_follower(g: GraphIndex, m: Match) -> None:
    """For forward folds: the layer after the BN (m.producer) is a default-domain op and the
    only reader of the BN's output."""
    layer, who = g.nodes[m.producer], m.who
    if layer.domain not in DEFAULT_DOMAINS:
        raise Refused("not-foldable", f"{who}: {describe(layer)} is in domain '{layer.domain}'")
    out = g.nodes[m.norm].output[0]
    if g.is_used_outside(out, m.producer, 0):
        raise Refused("shared-output", f"{who}: its output '{out}' is needed unfolded: "
                                       f"{g.other_user(out, m.producer, 0)}")


def constant_input(
    g: GraphIndex, m: Match, slot: int, what: str, node: int | None = None
) -> np.ndarray | None:
    """The value of input `slot` of the producer (or of `node`), None if absent; refuse if it is
    not a float constant."""
    p = g.nodes[m.producer if node is None else node]
    name = p.input[slot] if len(p.input) > slot else ""
    if not name:
        return None
    why = g.why_not_constant(name)
    if why:
        who = describe(g.nodes[m.norm])
        raise Refused("not-constant", f"{who}: the {what} of {describe(p)}: {why}")
    v = g.value(name)
    if v.dtype.name not in FLOAT_DTYPES:
        raise Refused(
            "unsupported-dtype",
            f"{describe(g.nodes[m.norm])}: the {what} '{name}' of {describe(p)} is {v.dtype.name}",
        )
    return v


def store(g: GraphIndex, node: int, slot: int, array: np.ndarray, base: str) -> None:
    """Give input `slot` of `node` a new value: in place if it is a stored tensor only it reads,
    else as a new initializer (named from `base`, never clashing), so no other reader sees the
    change."""
    n = g.nodes[node]
    name = n.input[slot] if len(n.input) > slot else ""
    if name and g.is_stored(name) and not g.is_used_outside(name, node, slot):
        g.set_value(name, array)
        return
    g.set_input(node, slot, g.add_initializer(f"{name}_folded" if name else base, array))
    g.drop_if_unused(name)  # e.g. a computed constant this node alone read


def all_rules() -> list[Rule]:
    from onnxfold.fold.rules.bn_conv import BatchNormConv
    from onnxfold.fold.rules.bn_gemm import BatchNormGemm
    from onnxfold.fold.rules.conv_bn import ConvBatchNorm
    from onnxfold.fold.rules.convtranspose_bn import ConvTransposeBatchNorm
    from onnxfold.fold.rules.gemm_bn import GemmBatchNorm
    from onnxfold.fold.rules.matmul_bn import MatMulBatchNorm
    from onnxfold.fold.rules.scale import ScaleLayer

    return [ConvBatchNorm(), ConvTransposeBatchNorm(), GemmBatchNorm(), MatMulBatchNorm(),
            ScaleLayer(), BatchNormConv(), BatchNormGemm()]
