"""A float32 copy of a model, for dtypes ORT's CPU provider cannot run (float64, bfloat16)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

from onnxfold.graph import subgraphs, walk_graphs

WIDEN = {TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
DTYPE_ATTRS = {"to", "dtype"}  # Cast, EyeLike, RandomNormal, ... name the output dtype here


def upcast_to_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every float16/bfloat16/float64 tensor, type and dtype attribute becomes float32."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graphs = list(walk_graphs(out.graph))
    for f in out.functions:
        for n in f.node:
            graphs += [g for _, sg in subgraphs(n) for g in walk_graphs(sg)]
        _nodes(f.node)
    for g in graphs:
        for t in g.initializer:
            _tensor(t)
        for vi in (*g.input, *g.output, *g.value_info):
            _type(vi.type)
        _nodes(g.node)
    return out


def _nodes(nodes) -> None:
    for n in nodes:
        for a in n.attribute:
            if a.type == AttributeProto.TENSOR:
                _tensor(a.t)
            elif a.type == AttributeProto.INT and a.name in DTYPE_ATTRS and a.i in WIDEN:
                a.i = TensorProto.FLOAT


def _tensor(t: TensorProto) -> None:
    if t.data_type in WIDEN:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))


def _type(tp: onnx.TypeProto) -> None:
    kind = tp.WhichOneof("value")
    if kind == "tensor_type" and tp.tensor_type.elem_type in WIDEN:
        tp.tensor_type.elem_type = TensorProto.FLOAT
    elif kind == "sequence_type":
        _type(tp.sequence_type.elem_type)
    elif kind == "optional_type":
        _type(tp.optional_type.elem_type)

