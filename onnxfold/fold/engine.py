"""Apply the fold rules: every BatchNormalization or scale layer is folded or refused, with why."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from onnxfold import wellformed
from onnxfold.errors import OnnxfoldError
from onnxfold.fold import batched, passthrough
from onnxfold.fold.rules import Match, Refused, Rule, all_rules, scale
from onnxfold.graph import (
    DEFAULT_DOMAINS,
    GraphIndex,
    describe,
    may_have_subgraphs,
    subgraphs,
    walk_graphs,
)
from onnxfold.modelio import Spill, has_external_data, paused_gc

log = logging.getLogger(__name__)

NORM_OPS = ("BatchNormalization",)
RANK_OPS = ("MatMul", "Squeeze", "Unsqueeze")  # their folds need tensor ranks
META_VERSION = "onnxfold.version"
META_FOLDED = "onnxfold.folded"


@dataclass(frozen=True)
class Fold:
    rule: str
    node: str  # the removed normalization or scale node
    into: str  # the node it was folded into
    op: str = "BatchNormalization"  # the removed node's op type
    where: str = ""  # "" for the main graph, else the subgraph or function holding it


@dataclass(frozen=True)
class Refusal:
    node: str
    code: str
    reason: str  # one line, names the node
    op: str = "BatchNormalization"
    where: str = ""


@dataclass
class FuseResult:
    model: onnx.ModelProto
    folded: list[Fold] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.folded) + len(self.refused)


def select_rules(only: list[str] | None = None, skip: list[str] | None = None) -> list[Rule]:
    """The rules named by --only (default: all) minus --skip; unknown names raise KeyError."""
    rules = all_rules()
    names = [r.name for r in rules]
    for name in (only or []) + (skip or []):
        if name not in names:
            raise KeyError(name)
    return [r for r in rules if (not only or r.name in only) and r.name not in (skip or [])]


def fuse(
    model: onnx.ModelProto,
    rules: list[Rule] | None = None,
    keep: set[str] | frozenset[str] = frozenset(),
    base_dir: str | None = None,
    batch: bool = True,
) -> FuseResult:
    """Fold every foldable BatchNormalization and scale layer; the argument is not modified.

    `keep`: names of nodes to leave alone (a normalization, or the layer it would fold into).
    `base_dir`: the folder external-data locations are relative to (the model file's folder).
    `batch=False`: never the batched path (fold/batched.py), which gives the same result.
    """
    if base_dir is None and has_external_data(model):
        raise OnnxfoldError(
            "<model>", "weights in the model, or fuse(model, base_dir=<the model file's folder>)",
            "tensors stored as external data",
        )
    wellformed.check(model, "<model>")  # e.g. a cycle of Identity nodes would never end below
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return fuse_in_place(out, rules, keep, base_dir, batch=batch)


def fuse_in_place(
    out: onnx.ModelProto,
    rules: list[Rule] | None = None,
    keep: set[str] | frozenset[str] = frozenset(),
    base_dir: str | None = None,
    spill: Spill | None = None,
    batch: bool = True,
) -> FuseResult:
    """fuse() on a model that modelio.load_model returned (so already checked well-formed),
    editing it in place: no copy of a model that may be 2 GB. New values of external tensors
    go to `spill` if given."""
    with paused_gc():
        return _fuse(out, rules, keep, base_dir, spill, batch)


def _fuse(
    out: onnx.ModelProto,
    rules: list[Rule] | None,
    keep: set[str] | frozenset[str],
    base_dir: str | None,
    spill: Spill | None = None,
    batch: bool = True,
) -> FuseResult:
    result = FuseResult(out)
    selected = rules if rules is not None else all_rules()
    scale_rule = any(r.name == "ScaleLayer" for r in selected)
    prepared = None
    if batch:
        try:
            with np.errstate(all="ignore"):  # a non-finite value sends the model to the rules
                prepared = batched.prepare(out, {r.name for r in selected}, keep, scale_rule)
        except Exception:  # it changed nothing: the rules fold the model instead
            log.exception("the batched fold failed; folding one normalization at a time")
    if prepared is not None:
        result.folded = [Fold(*f) for f in batched.apply(out, prepared)]
        if result.folded:
            _stamp(out, result.folded)
        return result
    ctx = _Context(
        by_producer=_by_producer(selected),
        # Rules that fold a BN forward into the layer reading it, by that layer's op type.
        forward={op: r for r in selected for op in getattr(r, "consumers", ())},
        # Scale layers fold with the producer's own rule, whichever BN rules were selected.
        scale_rules=_by_producer(all_rules()) if scale_rule else {},
        keep=keep,
        result=result,
    )
    g = GraphIndex(out, base_dir, spill=spill)
    bodies = [*walk_graphs(out.graph), *out.functions]
    if any(n.op_type in RANK_OPS for b in bodies for n in b.node):
        g.infer_ranks()  # before any edit: shape inference needs the model intact
    _fuse_body(g, ctx, "")
    for f in out.functions:
        _fuse_body(GraphIndex(out, base_dir, f, root=g), ctx, f"function '{f.domain}.{f.name}'")
    if result.folded:
        _stamp(out, result.folded)
    return result


@dataclass
class _Context:
    by_producer: dict[str, list[Rule]]
    forward: dict[str, Rule]
    scale_rules: dict[str, list[Rule]]
    keep: set[str] | frozenset[str]
    result: FuseResult


def _fuse_body(g: GraphIndex, ctx: _Context, where: str) -> None:
    """Fold in one graph, function or subgraph, then in the subgraphs of its nodes (which see
    its folded names), then drop the constants of it those subgraphs stopped reading."""
    result = ctx.result
    for i, node in enumerate(g.nodes):
        if _is_norm(node):
            attempt = (ctx.by_producer, 0)
        elif ctx.scale_rules and (slot := _scale_slot(g, node)) is not None:
            attempt = (ctx.scale_rules, slot)
        else:
            continue
        try:
            # numpy's warnings (a signalling NaN cast, an overflow) went to stderr: the rules
            # check what they compute is finite and say so in a refusal.
            with np.errstate(all="ignore"):
                try:
                    fold = _fold_one(g, i, *attempt, ctx.keep)
                except Refused as e:
                    if e.code != "no-producer" or not ctx.forward or not _is_norm(node):
                        raise
                    fold = _fold_forward(g, i, ctx.forward, ctx.keep, e)
            result.folded.append(replace(fold, where=where))
        except Refused as e:
            result.refused.append(Refusal(_label(node), e.code, e.reason, node.op_type, where))
        except Exception as e:  # one bad node never costs the user the other folds
            log.exception("unexpected error folding %s", describe(node))
            err = f"{type(e).__name__}: {e}"
            reason = f"{describe(node)}: internal error, left unfolded ({err})"
            result.refused.append(
                Refusal(_label(node), "internal-error", reason, node.op_type, where)
            )
    nested = any(True for n in g.nodes if may_have_subgraphs(n) for _ in subgraphs(n))
    g.commit(reindex=nested)
    released: set[str] = set()
    for parent in (n for n in g.nodes if may_have_subgraphs(n)):
        for attr, sg in subgraphs(parent):
            inner = GraphIndex(g.model, g.base_dir, sg, outer=g)
            here = f"{describe(parent)} {attr}"
            _fuse_body(inner, ctx, f"{where} > {here}" if where else here)
            released |= inner.released
    if released:
        g.commit()  # re-reads which names the subgraphs still use
        for name in sorted(released):
            g.drop_if_unused(name)
        g.commit()


def _by_producer(rules: list[Rule]) -> dict[str, list[Rule]]:
    by: dict[str, list[Rule]] = {}
    for r in rules:
        for op in r.producers:
            by.setdefault(op, []).append(r)
    return by


def _scale_slot(g: GraphIndex, node: onnx.NodeProto) -> int | None:
    """The input slot through which a Mul/Add by a constant reads a foldable layer, if it does.

    Mul/Add by constants are everywhere; only those right after Conv/ConvTranspose/Gemm (through
    layout no-ops) are scale layers, and only they are folded or reported."""
    c = scale.constant_slot(g, node)
    if c is None:
        return None
    p = g.producer.get(node.input[1 - c])
    while p is not None and passthrough.is_layout_op(g.nodes[p]):
        p = g.producer.get(g.nodes[p].input[0])
    ok = p is not None and g.nodes[p].op_type in scale.PRODUCERS
    return 1 - c if ok else None


def _fold_forward(
    g: GraphIndex,
    i: int,
    forward: dict[str, Rule],
    keep: set[str] | frozenset[str],
    no_producer: Refused,
) -> Fold:
    """No layer before the BN can take it: fold it into the layer that alone reads it, if any."""
    bn = g.nodes[i]
    uses = g.uses(bn.output[0])
    rule = forward.get(g.nodes[uses[0].node].op_type) if len(uses) == 1 else None
    if rule is None or uses[0].slot != 0:
        raise no_producer
    conv = g.nodes[uses[0].node]
    if conv.name and conv.name in keep:
        raise Refused("kept", f"{describe(bn)}: {describe(conv)} is kept (--keep)")
    m = Match(norm=i, producer=uses[0].node, who=describe(bn))
    _no_attribute_refs(g, m)
    rule.check(g, m)
    label = _label(bn)
    return Fold(rule.name, label, rule.rewrite(g, m), bn.op_type)


def _no_attribute_refs(g: GraphIndex, m: Match) -> None:
    """In a function body an attribute may name one of the caller's (ref_attr_name): its value
    is unknown here, so a fold reading it (epsilon, group, transB...) must not happen."""
    for i in (m.norm, m.producer, *m.through):
        n = g.nodes[i]
        refs = [f"{a.name}=@{a.ref_attr_name}" for a in n.attribute if a.ref_attr_name]
        if refs:
            raise Refused(
                "attribute-ref",
                f"{m.who}: {describe(n)} takes {', '.join(refs)} from the function's caller",
            )


def _is_norm(node: onnx.NodeProto) -> bool:
    return node.op_type in NORM_OPS and node.domain in DEFAULT_DOMAINS


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"<{node.op_type} -> {node.output[0] if node.output else '?'}>"


def _fold_one(
    g: GraphIndex,
    i: int,
    by_producer: dict[str, list[Rule]],
    slot: int,
    keep: set[str] | frozenset[str],
) -> Fold:
    """Fold anchor node i (a BatchNormalization, or a scale layer reading its layer at `slot`)."""
    bn = g.nodes[i]
    if bn.name and bn.name in keep:
        raise Refused("kept", f"{describe(bn)} is kept (--keep)")
    x = bn.input[slot] if len(bn.input) > slot else ""
    p = g.producer.get(x)
    through: list[int] = []
    while p is not None and passthrough.is_layout_op(g.nodes[p]):
        why = passthrough.why_channels_move(g, g.nodes[p])
        if why:
            raise Refused("channel-axis", f"{describe(bn)}: {why}")
        through.insert(0, p)
        x = g.nodes[p].input[0]
        p = g.producer.get(x)
    if p is None:
        if x in g.inputs:
            where = "a function input" if g.is_function else "a graph input"
        elif x and not g.is_local(x) and g.outer is not None:
            where = "defined in an enclosing graph"
        else:
            where = "not produced by a node"
        raise Refused("no-producer", f"{describe(bn)}: its input '{x}' is {where}")
    if g.nodes[p].name and g.nodes[p].name in keep:
        raise Refused("kept", f"{describe(bn)}: {describe(g.nodes[p])} is kept (--keep)")
    m = Match(norm=i, producer=p, who=describe(bn), through=through, slot=slot)
    rule = next((r for r in by_producer.get(g.nodes[p].op_type, []) if r.pattern(g, m)), None)
    if rule is None:
        raise Refused(
            "no-producer",
            f"{describe(bn)}: its input comes from {describe(g.nodes[p])}, which has no fold rule",
        )
    _no_attribute_refs(g, m)
    rule.check(g, m)
    op, label = bn.op_type, _label(bn)
    into = rule.rewrite(g, m)
    return Fold("ScaleLayer" if op in scale.OPS else rule.name, label, into, op)


def _stamp(model: onnx.ModelProto, folded: list[Fold]) -> None:
    """Record what was folded in metadata_props, merged with any earlier onnxfold record."""
    from onnxfold import __version__

    props = {p.key: p for p in model.metadata_props}
    record: dict[str, list[str]] = {}
    if META_FOLDED in props:
        try:
            record = json.loads(props[META_FOLDED].value)
        except ValueError:
            record = {}
    for f in folded:
        record.setdefault(f.rule, []).append(f.node)
    values = {META_VERSION: __version__, META_FOLDED: json.dumps(record, sort_keys=True)}
    for key, value in values.items():
        if key in props:
            props[key].value = value
        else:
            model.metadata_props.add(key=key, value=value)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type over the whole model (subgraphs and functions included)."""
    c: Counter[str] = Counter()
    for g in walk_graphs(model.graph):
        c.update(n.op_type for n in g.node)
    for f in model.functions:
        c.update(n.op_type for n in f.node)
    return dict(sorted(c.items()))
