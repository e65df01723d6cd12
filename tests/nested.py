"""Models with If / Loop / Scan bodies and model-local functions, for tests and the corpus."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.builders import conv_bn_model

F = TensorProto.FLOAT


def vi(name: str, rank: int = 4, elem: int = F) -> onnx.ValueInfoProto:
    """A value_info with symbolic dims (the checker wants a shape on every output)."""
    return helper.make_tensor_value_info(name, elem, [f"{name}_{i}" for i in range(rank)])


def body_of(prefix: str, *, x: str = "X", outer_consts: bool = False, seed: int = 0):
    """conv_bn_model's graph as a body reading `x` from the enclosing scope, every other name
    prefixed. outer_consts: the body keeps no initializers (returned for the caller to place)."""
    m = conv_bn_model(seed=seed)
    body = m.graph
    del body.input[:]
    for n in body.node:
        n.name = f"{prefix}{n.name}"
        n.input[:] = [x if i == "X" else f"{prefix}{i}" for i in n.input]
        n.output[:] = [f"{prefix}{o}" for o in n.output]
    for t in body.initializer:
        t.name = f"{prefix}{t.name}"
    body.output[0].name = f"{prefix}Y"
    inits = list(body.initializer)
    if outer_consts:
        del body.initializer[:]
    return body, inits


def model_with(nodes, inits, outputs, *, inputs=None, opset=13, functions=(), scan=False):
    graph = helper.make_graph(
        nodes, "g", inputs or [helper.make_tensor_value_info("X", F, [1, 4, 9, 9])],
        [vi(o, 5 if o == "Z" and scan else 4) for o in outputs], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8, functions=list(functions))


def if_model(outer_consts: bool = False) -> onnx.ModelProto:
    then, t_inits = body_of("t_", outer_consts=outer_consts, seed=1)
    other, e_inits = body_of("e_", outer_consts=outer_consts, seed=2)
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["Z"], name="if", then_branch=then,
                            else_branch=other)
    return model_with([node], [cond, *(t_inits + e_inits if outer_consts else [])], ["Z"])


def loop_model() -> onnx.ModelProto:
    """Loop: the carried state goes through Conv(4 -> 4) -> BN -> Relu three times; the body
    reads its weights from the main graph."""
    body, inits = body_of("l_", x="state", outer_consts=True)
    body.input.extend([helper.make_tensor_value_info("i", TensorProto.INT64, []),
                       helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                       helper.make_tensor_value_info("state", F, None)])
    body.node.append(helper.make_node("Identity", ["c"], ["c_out"]))
    for t in inits:  # the carried state keeps its channel count
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:4], t.name))
    del body.output[:]
    body.output.extend([vi("c_out", 0, TensorProto.BOOL), vi("l_Y")])
    trip = numpy_helper.from_array(np.array(3, np.int64), "trip")
    loop = helper.make_node("Loop", ["trip", "", "X"], ["Z"], name="loop", body=body)
    return model_with([loop], [trip, *inits], ["Z"])


def function_model(*, weights_as_inputs: bool = False, eps_ref: bool = False):
    """Main graph calls local.Block twice; Block is Conv -> BN -> Relu with Constant weights."""
    inner = conv_bn_model(cin=4, cout=4, constant_nodes=True)
    nodes = list(inner.graph.node)
    inputs = ["X"]
    if weights_as_inputs:
        nodes = [n for n in nodes if n.name != "const_W"]
        inputs.append("W")
    attributes = []
    if eps_ref:
        bn = next(n for n in nodes if n.op_type == "BatchNormalization")
        del bn.attribute[:]
        bn.attribute.append(onnx.AttributeProto(name="epsilon", ref_attr_name="eps",
                                                type=onnx.AttributeProto.FLOAT))
        attributes = ["eps"]
    f = helper.make_function("local", "Block", inputs, ["Y"], nodes,
                             [helper.make_opsetid("", 13)], attributes=attributes)
    call_inputs = ["X", "W0"] if weights_as_inputs else ["X"]
    calls = [helper.make_node("Block", call_inputs, ["h"], name="b1", domain="local"),
             helper.make_node("Block", ["h", *call_inputs[1:]], ["Z"], name="b2",
                              domain="local")]
    if eps_ref:
        for c in calls:
            c.attribute.append(helper.make_attribute("eps", 1e-3))
    inits = []
    if weights_as_inputs:
        w = next(n for n in inner.graph.node if n.name == "const_W").attribute[0].t
        inits.append(numpy_helper.from_array(numpy_helper.to_array(w), "W0"))
    m = model_with(calls, inits, ["Z"], functions=[f])
    m.opset_import.append(helper.make_opsetid("local", 1))
    return m
