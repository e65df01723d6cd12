"""Conv → BatchNormalization folds in one batch, for the graphs most models are.

The rules (fold/rules/) fold one normalization at a time through GraphIndex: general, and
about 150 µs a fold in Python. A chain of 20,000 Conv+BN blocks spends seconds there. When
every normalization of a model is the plain case -- a default-domain BN in inference form,
right after a Conv only it reads, every parameter a float32 initializer only it reads -- this
module folds them all with one pass over the graph and one numpy computation
(bn_math.fold_conv_batch), and makes exactly the model, bytes and report, that the rules make
(tests/test_batched.py compares them). Anything else, anywhere in the model, and prepare()
declines (returns None) before any edit: the rules then fold the whole model, and refuse what
they must.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from itertools import chain

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto

from onnxfold.fold import bn_math
from onnxfold.graph import (
    DEFAULT_DOMAINS,
    SUBGRAPH_OPS,
    default_opset,
    describe,
    prune_value_info,
    remove,
)
from onnxfold.modelio import set_tensor

RULE = "Conv+BatchNormalization"
_SCALE_OPS = frozenset({"Mul", "Add", "Sub", "Div"})  # fold/rules/scale.py's anchors
_CONST_MAKERS = frozenset({"Constant", "Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal", "Neg",
                           "Identity"})  # nodes whose output may be a constant (graph.CONST_OPS)
_BN_ATTRS = frozenset({"epsilon", "momentum", "training_mode"})
_ATTR_TYPES = (AttributeProto.FLOAT, AttributeProto.INT)
_FLOAT, _EXTERNAL = TensorProto.FLOAT, TensorProto.EXTERNAL
_MAX_WEIGHT = 1 << 20  # bytes; weights this big take the rules (sliced fold, spill file)
_BATCH = 1 << 21  # weight elements per numpy batch: 16 MB of float64 at most


@dataclass
class _Pair:
    bn: onnx.NodeProto
    conv: onnx.NodeProto
    weight: TensorProto
    shape: tuple[int, ...]  # the weight's
    bias: TensorProto | None
    params: list[TensorProto]  # scale, B, mean, var
    epsilon: float


@dataclass
class Batch:
    """What prepare() found and computed; apply() writes it into the model."""

    pairs: list[_Pair]
    folded: list[tuple[np.ndarray, np.ndarray]]  # (weight, bias) per pair
    names: list  # sets and dicts that hold every name in the graph between them


def prepare(model: onnx.ModelProto, rule_names: set[str], keep, scale_rule: bool
            ) -> Batch | None:
    """Every BN of the model with its folded values, computed as the rules compute them, or
    None when any part of the model is not the plain case. Changes nothing."""
    if RULE not in rule_names or keep or model.functions or model.ir_version < 4:
        return None
    if default_opset(model) < 7:  # before 7, is_test=0 (training) was BatchNormalization's default
        return None
    plan = _plan(model.graph, scale_rule)
    if plan is None:
        return None
    pairs, names = plan
    folded: list[tuple[np.ndarray, np.ndarray]] = []
    start = 0
    while start < len(pairs):  # bounded batches: a model's weights are never all float64 at once
        end, size = start, 0
        while end < len(pairs) and (end == start or size + _size(pairs[end]) <= _BATCH):
            size += _size(pairs[end])
            end += 1
        got = _fold(pairs[start:end])
        if got is None:
            return None
        folded.extend(got)
        start = end
    return Batch(pairs, folded, names)


def _size(p: _Pair) -> int:
    return math.prod(p.shape)


def _plan(g: onnx.GraphProto, scale_rule: bool):
    """The (BN, Conv) pairs in node order and every name in the graph, or None if any
    normalization or scale layer is not the plain case."""
    nodes = list(g.node)
    ops = [n.op_type for n in nodes]
    if SUBGRAPH_OPS.intersection(ops) or any(n.domain not in DEFAULT_DOMAINS for n in nodes):
        return None
    inputs = [n.input for n in nodes]
    reads = Counter(chain.from_iterable(inputs))
    outs = [n.output for n in nodes]
    written = set(chain.from_iterable(outs))
    outputs = {o.name for o in g.output}
    graph_inputs = {i.name for i in g.input}
    inits = {t.name: t for t in g.initializer}
    if scale_rule:
        makers = {o[0] for o, op in zip(outs, ops) if op in _CONST_MAKERS and o}
        for op, ins in zip(ops, inputs):
            if op in _SCALE_OPS and any(x in inits or x in makers for x in ins):
                return None  # a possible scale layer: the rules decide
    convs = {o[0]: n for n, o, op in zip(nodes, outs, ops) if op == "Conv" and len(o) == 1}
    exclusive = {name for name, n in reads.items() if n == 1}
    exclusive.difference_update(outputs, graph_inputs)
    pairs = []
    for n, op, ins in zip(nodes, ops, inputs):
        if op == "BatchNormalization":
            pair = _pair(n, ins, convs, exclusive, inits)
            if pair is None:
                return None
            pairs.append(pair)
    # Every name in the graph, for new names that clash with none (graph.all_names), as the
    # sets already made: their union alone took 0.1 s on 20,000 blocks.
    names = [written, reads, inits, outputs, graph_inputs, {v.name for v in g.value_info},
             {t.values.name for t in g.sparse_initializer}]
    return pairs, names


def _pair(bn, ins, convs, exclusive, inits) -> _Pair | None:
    """BN and the Conv before it, if plain (names in `exclusive` are read once, by one node
    input, and are no graph input or output)."""
    if len(ins) != 5 or len(bn.output) != 1:
        return None
    epsilon = 1e-5
    for a in bn.attribute:
        if a.name not in _BN_ATTRS or a.ref_attr_name or a.type not in _ATTR_TYPES:
            return None
        if a.name == "epsilon":
            epsilon = a.f
        elif a.name == "training_mode" and a.i != 0:
            return None
    x, *params = ins
    conv = convs.get(x)
    if conv is None or x not in exclusive or any(a.ref_attr_name for a in conv.attribute):
        return None
    cins = conv.input
    if len(cins) == 3 and cins[2]:
        params.append(cins[2])
    elif len(cins) != 2 and len(cins) != 3:
        return None
    names = [cins[1], *params]
    if not exclusive.issuperset(names):
        return None
    tensors = [inits.get(x) for x in names]
    if None in tensors or not all(
            t.data_type == _FLOAT and t.data_location != _EXTERNAL and t.HasField("raw_data")
            for t in tensors):
        return None
    weight, *rest = tensors
    shape = tuple(weight.dims)
    if len(shape) < 3 or not shape[0] or math.prod(shape) * 4 >= _MAX_WEIGHT:
        return None
    one = [shape[0]]
    if any(t.dims != one for t in rest):
        return None
    bias = rest.pop() if len(rest) == 5 else None
    return _Pair(bn, conv, weight, shape, bias, rest, epsilon)


def _fold(pairs: list[_Pair]) -> list[tuple[np.ndarray, np.ndarray]] | None:
    f32 = np.dtype("<f4")
    weights = [np.frombuffer(p.weight.raw_data, f32) for p in pairs]
    biases = [None if p.bias is None else np.frombuffer(p.bias.raw_data, f32) for p in pairs]
    params = [[np.frombuffer(t.raw_data, f32) for t in p.params] for p in pairs]
    got = bn_math.fold_conv_batch(weights, biases, params, [p.epsilon for p in pairs], f32)
    if got is None:
        return None
    w, b = got
    out, wi, bi = [], 0, 0
    for p, x in zip(pairs, weights):
        c = p.shape[0]
        out.append((w[wi:wi + x.size].reshape(p.shape), b[bi:bi + c]))
        wi, bi = wi + x.size, bi + c
    return out


def apply(model: onnx.ModelProto, batch: Batch) -> list[tuple[str, str, str]]:
    """The rules' edits (see rules/anchor.absorb_anchor), all at once: the folds as (rule,
    removed node's label, producer's label), in node order."""
    g, new = model.graph, set()
    names = [*batch.names, new]
    folds, dropped, renamed = [], [], {}
    for p, (w, b) in zip(batch.pairs, batch.folded):
        out = p.bn.output[0]
        folds.append((RULE, p.bn.name or f"<BatchNormalization -> {out}>", describe(p.conv)))
        set_tensor(p.weight, w, p.weight.name)
        if p.bias is not None:
            set_tensor(p.bias, b, p.bias.name)
        else:
            name, k = f"{out}_bias", 0
            while any(name in n for n in names):
                k += 1
                name = f"{out}_bias_{k}"
            new.add(name)
            set_tensor(g.initializer.add(), b, name)
            if len(p.conv.input) == 3:
                p.conv.input[2] = name
            else:
                p.conv.input.append(name)
        renamed[p.conv.output[0]] = out
        p.conv.output[0] = out
        dropped.extend(p.params)
    if batch.pairs:
        remove(g.node, {id(p.bn) for p in batch.pairs})
        remove(g.initializer, {id(t) for t in dropped})
        prune_value_info(g.value_info, {t.name for t in dropped}, renamed,
                         {o.name for o in g.output})
    return folds
