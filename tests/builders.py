"""Small models for tests, built with onnx.helper, and the three checks every fold test makes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

NP_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.float64): TensorProto.DOUBLE,
}


def bn_stats(rng: np.random.Generator, c: int) -> dict[str, np.ndarray]:
    """Trained-looking statistics, including a near-dead channel with variance 1e-6."""
    var = np.exp(rng.standard_normal(c) * 0.5)
    var[0] = 1e-6
    return {
        "scale": rng.uniform(0.7, 1.3, c),
        "B": rng.standard_normal(c) * 0.1,
        "mean": rng.standard_normal(c) * 0.3,
        "var": var,
    }


def conv_bn_model(
    *,
    dims: int = 2,
    cin: int = 4,
    cout: int = 6,
    group: int = 1,
    k: int = 3,
    size: int = 9,
    bias: bool = True,
    dtype=np.float32,
    param_dtype=None,
    opset: int = 13,
    ir: int = 8,
    epsilon: float = 1e-5,
    seed: int = 0,
    conv_attrs: dict | None = None,
    bn_attrs: dict | None = None,
    constant_nodes: bool = False,
    tail: str | None = "Relu",
    op: str = "Conv",
) -> onnx.ModelProto:
    """X -> Conv -> BatchNormalization [-> tail] -> Y, every parameter an initializer by default."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    param_dtype = np.dtype(param_dtype or dtype)
    ks = [k] * dims
    # Conv weights are [M, C/group, k...]; ConvTranspose weights are [C, M/group, k...].
    w_shape = (cout, cin // group, *ks) if op == "Conv" else (cin, cout // group, *ks)
    w = rng.standard_normal(w_shape) * np.sqrt(2.0 / (cin // group * k**dims))
    consts = {"W": w.astype(dtype)}
    if bias:
        consts["b"] = (rng.standard_normal(cout) * 0.1).astype(dtype)
    stats = bn_stats(rng, cout)
    consts.update({f"bn_{n}": v.astype(param_dtype) for n, v in stats.items()})
    nodes, inits = [], []
    for name, value in consts.items():
        if constant_nodes:
            nodes.append(helper.make_node("Constant", [], [name], name=f"const_{name}",
                                          value=numpy_helper.from_array(value, name)))
        else:
            inits.append(numpy_helper.from_array(value, name))
    attrs = {"kernel_shape": ks, "group": group, **(conv_attrs or {})}
    if "auto_pad" not in attrs and "pads" not in attrs:
        attrs["pads"] = [k // 2] * (2 * dims)
    nodes.append(helper.make_node(op, ["X", "W"] + (["b"] if bias else []), ["conv_out"],
                                  name="conv", **attrs))
    nodes.append(helper.make_node(
        "BatchNormalization", ["conv_out", "bn_scale", "bn_B", "bn_mean", "bn_var"],
        ["bn_out"], name="bn", epsilon=epsilon, **(bn_attrs or {}),
    ))
    out = "bn_out"
    if tail:
        nodes.append(helper.make_node(tail, ["bn_out"], ["Y"], name="tail"))
        out = "Y"
    et = NP_TO_ONNX[dtype]
    graph = helper.make_graph(
        nodes, "conv_bn",
        [helper.make_tensor_value_info("X", et, [1, cin, *[size] * dims])],
        [helper.make_tensor_value_info(out, et, [f"d{i}" for i in range(dims + 2)])], inits,
    )
    if ir < 4:  # before IR 4 every initializer is also listed as a graph input
        graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                           for t in graph.initializer)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run with all graph optimizations off (ORT would otherwise fold Conv+BN itself)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def random_feeds(model: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def max_rel_error(original: onnx.ModelProto, folded: onnx.ModelProto, seed: int = 1) -> float:
    """max |folded - original| / max |original| over all outputs, both run at ORT_DISABLE_ALL."""
    feeds = random_feeds(original, seed)
    worst = 0.0
    for a, b in zip(run_ort(original, feeds), run_ort(folded, feeds), strict=True):
        a, b = a.astype(np.float64), b.astype(np.float64)
        worst = max(worst, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)))
    return worst


def gemm_bn_model(
    *,
    k: int = 5,
    n: int = 6,
    batch: int = 3,
    trans_a: int = 0,
    trans_b: int = 0,
    alpha: float | None = None,
    beta: float | None = None,
    c_shape: tuple[int, ...] | None = (6,),
    dtype=np.float32,
    opset: int = 13,
    seed: int = 0,
) -> onnx.ModelProto:
    """A (batch, k) -> Gemm -> BatchNormalization over the (batch, n) output -> Relu -> Y."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    inits = [numpy_helper.from_array(
        rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype), "Bw")]
    inputs = ["A", "Bw"]
    if c_shape is not None:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_shape).astype(dtype), "C"))
        inputs.append("C")
    inits += [numpy_helper.from_array(v.astype(dtype), f"bn_{p}")
              for p, v in bn_stats(rng, n).items()]
    gemm_attrs = {"transA": trans_a, "transB": trans_b}
    if alpha is not None:
        gemm_attrs["alpha"] = alpha
    if beta is not None:
        gemm_attrs["beta"] = beta
    nodes = [
        helper.make_node("Gemm", inputs, ["gemm_out"], name="gemm", **gemm_attrs),
        helper.make_node("BatchNormalization", ["gemm_out", "bn_scale", "bn_B", "bn_mean",
                                                "bn_var"], ["bn_out"], name="bn"),
        helper.make_node("Relu", ["bn_out"], ["Y"], name="tail"),
    ]
    et = NP_TO_ONNX[dtype]
    graph = helper.make_graph(
        nodes, "gemm_bn",
        [helper.make_tensor_value_info("A", et, [k, batch] if trans_a else [batch, k])],
        [helper.make_tensor_value_info("Y", et, [batch, n])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def matmul_bn_model(
    *,
    rank: int = 2,
    k: int = 5,
    n: int = 6,
    add: str | None = None,
    c_shape: tuple[int, ...] = (6,),
    declare_rank: bool = True,
    seed: int = 0,
) -> onnx.ModelProto:
    """X (rank 2: (3, k); rank 3: (3, n, k)) -> MatMul W [-> Add c] -> BatchNormalization -> Y.

    add: None, "right" (Add(mm, c)) or "left" (Add(c, mm)). For rank 3 the BN normalizes axis 1
    of (3, n, n), i.e. over T; its channel count still equals n so only the axis check refuses.
    """
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")]
    nodes = [helper.make_node("MatMul", ["X", "W"], ["mm_out"], name="mm")]
    x = "mm_out"
    if add:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_shape).astype(np.float32), "c"))
        nodes.append(helper.make_node("Add", ["mm_out", "c"] if add == "right" else ["c", "mm_out"],
                                      ["add_out"], name="add"))
        x = "add_out"
    inits += [numpy_helper.from_array(v.astype(np.float32), f"bn_{p}")
              for p, v in bn_stats(rng, n).items()]
    nodes.append(helper.make_node("BatchNormalization",
                                  [x, "bn_scale", "bn_B", "bn_mean", "bn_var"], ["Y"], name="bn"))
    x_shape = [3, k] if rank == 2 else [3, n, k]
    graph = helper.make_graph(
        nodes, "matmul_bn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                       x_shape if declare_rank else None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None if not declare_rank
                                       else [3, n] if rank == 2 else [3, n, n])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def assert_refused(m: onnx.ModelProto, code: str, *needles: str):
    """The model comes back unchanged (no provenance stamp) with one refusal naming the case."""
    import onnxfold
    from onnxfold.modelio import model_bytes

    result = onnxfold.fuse(m)
    assert result.folded == []
    assert model_bytes(result.model) == model_bytes(m)
    assert [r.code for r in result.refused] == [code], result.refused
    reason = result.refused[0].reason
    assert "\n" not in reason
    for needle in needles:
        assert needle in reason, reason
    return result.refused[0]


def scale_model(layers, *, producer: str = "Conv", keep_bn: bool = False, dtype=np.float32,
                **kw) -> onnx.ModelProto:
    """producer [-> BN] -> (op, const shape, const on the left?) ... -> graph output."""
    if producer == "Gemm":
        m, x = gemm_bn_model(dtype=dtype, **kw), "gemm_out"
    else:
        m, x = conv_bn_model(op=producer, tail=None, dtype=dtype, **kw), "conv_out"
    g = m.graph
    bn = next(n for n in g.node if n.op_type == "BatchNormalization")
    if keep_bn:
        x = bn.output[0]
    else:
        g.node.remove(bn)
        for t in [t for t in g.initializer if t.name.startswith("bn_")]:
            g.initializer.remove(t)
    for n in [n for n in g.node if n.op_type == "Relu"]:
        g.node.remove(n)
    rng = np.random.default_rng(5)
    for k, (op, shape, left) in enumerate(layers):
        c = rng.uniform(0.5, 1.5, shape) * rng.choice([-1, 1], shape) if op == "Mul" \
            else rng.standard_normal(shape)
        g.initializer.append(numpy_helper.from_array(np.asarray(c).astype(dtype), f"c{k}"))
        g.node.append(helper.make_node(op, [f"c{k}", x] if left else [x, f"c{k}"], [f"s{k}"],
                                       name=f"{op.lower()}{k}"))
        x = f"s{k}"
    g.output[0].name = x
    return m


def bn_conv_model(*, cin: int = 4, cout: int = 6, group: int = 1, k: int = 3, dims: int = 2,
                  bias: bool = True, conv_attrs: dict | None = None) -> onnx.ModelProto:
    """X -> BatchNormalization -> Conv -> Y (the pre-activation / data-BN shape)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(v.astype(np.float32), f"bn_{p}")
             for p, v in bn_stats(rng, cin).items()]
    w = rng.standard_normal((cout, cin // group, *[k] * dims)) * 0.3
    inits.append(numpy_helper.from_array(w.astype(np.float32), "W"))
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
    nodes = [
        helper.make_node("BatchNormalization", ["X", "bn_scale", "bn_B", "bn_mean", "bn_var"],
                         ["bn_out"], name="bn"),
        helper.make_node("Conv", ["bn_out", "W"] + (["b"] if bias else []), ["Y"], name="conv",
                         group=group, kernel_shape=[k] * dims, **(conv_attrs or {})),
    ]
    graph = helper.make_graph(
        nodes, "bn_conv", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                         [1, cin, *[9] * dims])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [f"d{i}" for i in range(dims + 2)])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def between(m: onnx.ModelProto, *nodes: onnx.NodeProto, out_rank: int | None = None):
    """Insert nodes between the Conv ('conv_out') and the BN; the last must write 'mid'."""
    bn = next(n for n in m.graph.node if n.op_type == "BatchNormalization")
    bn.input[0] = "mid"
    i = list(m.graph.node).index(bn)
    for k, n in enumerate(nodes):
        m.graph.node.insert(i + k, n)
    if out_rank is not None:
        dims = m.graph.output[0].type.tensor_type.shape.dim
        del dims[:]
        for d in range(out_rank):
            dims.add().dim_param = f"o{d}"
    return m


def axes_const(m: onnx.ModelProto, name: str, axes: list[int]) -> str:
    """An int64 axes initializer for Squeeze/Unsqueeze (opset 13+)."""
    m.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), name))
    return name


def bn_gemm_model(*, k: int = 5, n: int = 6, trans_a: int = 0, trans_b: int = 0,
                  alpha: float = 1.0, beta: float = 1.0,
                  c_shape: tuple[int, ...] | None = (6,)) -> onnx.ModelProto:
    """A (3, k) -> BatchNormalization over k channels -> Gemm -> Y (3, n)."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(v.astype(np.float32), f"bn_{p}")
             for p, v in bn_stats(rng, k).items()]
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    inits.append(numpy_helper.from_array(b, "Bw"))
    inputs = ["bn_out", "Bw"]
    if c_shape is not None:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_shape).astype(np.float32), "C"))
        inputs.append("C")
    a_shape = [k, 3] if trans_a else [3, k]
    nodes = [
        helper.make_node("BatchNormalization", ["A", "bn_scale", "bn_B", "bn_mean", "bn_var"],
                         ["bn_out"], name="bn"),
        helper.make_node("Gemm", inputs, ["Y"], name="gemm", transA=trans_a, transB=trans_b,
                         alpha=alpha, beta=beta),
    ]
    graph = helper.make_graph(
        nodes, "bn_gemm", [helper.make_tensor_value_info("A", TensorProto.FLOAT, a_shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["m", "n"])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
