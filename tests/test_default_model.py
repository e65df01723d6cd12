"""The bundled default model: reproducible from tools/, and shaped like what we claim it is."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "models" / "tiny-yolov2-backbone.onnx"
GENERATOR = REPO / "tools" / "make_default_model.py"


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load(BUNDLED)


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            users.setdefault(name, []).append(n)
    return users


def chains(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]]:
    """Conv -> BatchNormalization -> LeakyRelu, each link the only reader of the one before."""
    g = model.graph
    users = consumers(g)
    outputs = {o.name for o in g.output}
    found = []
    for conv in g.node:
        if conv.op_type != "Conv" or conv.output[0] in outputs:
            continue
        bn = users.get(conv.output[0], [])
        if len(bn) != 1 or bn[0].op_type != "BatchNormalization":
            continue
        act = users.get(bn[0].output[0], [])
        if len(act) == 1 and act[0].op_type == "LeakyRelu":
            found.append((conv, bn[0], act[0]))
    return found


def test_generator_reproduces_the_bundled_bytes(tmp_path):
    out = tmp_path / "regenerated.onnx"
    p = subprocess.run([sys.executable, str(GENERATOR), str(out)], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    # Hashes, not bytes: a failing 2.4 MB bytes comparison takes pytest many seconds to render.
    got, want = (hashlib.sha256(f.read_bytes()).hexdigest() for f in (out, BUNDLED))
    assert got == want, "tools/make_default_model.py no longer makes the bundled model"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["regenerated.onnx"]


def test_model_is_small_and_valid(model):
    assert BUNDLED.stat().st_size < 5 * 1024 * 1024
    onnx.checker.check_model(model, full_check=True)


def test_input_and_output(model):
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    assert [i.name for i in inputs] == ["images"]
    tt = inputs[0].type.tensor_type
    assert tt.elem_type == TensorProto.FLOAT
    assert [d.dim_value for d in tt.shape.dim] == [1, 3, 416, 416]
    assert all(d.HasField("dim_value") for d in tt.shape.dim)
    out = model.graph.output[0].type.tensor_type
    assert [d.dim_value for d in out.shape.dim] == [1, 125, 13, 13]


def test_conv_bn_leaky_chains(model):
    found = chains(model)
    assert len(found) >= 6
    for conv, _bn, act in found:
        # The fold has to add a bias: none of these Convs has one.
        assert len(conv.input) == 2 or conv.input[2] == "", conv.name
        attrs = {a.name: helper.get_attribute_value(a) for a in act.attribute}
        assert attrs["alpha"] == pytest.approx(0.1), act.name
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert len(bns) == len(found)  # every BN sits in such a chain
    assert sum(n.op_type == "MaxPool" for n in model.graph.node) >= 6


def test_batchnorm_statistics_look_trained(model):
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert bns
    for bn in bns:
        gamma, var = values[bn.input[1]], values[bn.input[4]]
        assert np.all(var > 0), bn.name
        assert np.any(var < 1e-5), f"{bn.name}: no near-dead channel"
        assert np.all((gamma >= 0.7) & (gamma <= 1.3)), bn.name
