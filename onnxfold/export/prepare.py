"""The graph onnxfold hands to the converters: BN folded, ops TF.js lacks rewritten, shapes static.

Each step is checked in onnxruntime (graph optimizations off): the fold against the original with
the fuse check's tolerance, and the rewrites against the folded model exactly (they only move data).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxfold.errors import OnnxfoldError
from onnxfold.fold.engine import fuse
from onnxfold.parity import ParityReport, check_parity
from onnxfold.parity.inputs import CannotRun, make_feeds, real_inputs

# Ops whose export to all three targets the tests verify (tests/test_export*.py): what onnxfold's
# darknet translator emits, plus the constants and identities around them. SpaceToDepth is
# rewritten before conversion; a BatchNormalization that cannot fold converts as itself.
VERIFIED_OPS = frozenset({
    "Add", "BatchNormalization", "Clip", "Concat", "Constant", "Conv", "Div", "Flatten", "Gemm",
    "GlobalAveragePool", "HardSigmoid", "Identity", "LeakyRelu", "MaxPool", "Mul", "Pad", "Relu",
    "Reshape", "Resize", "Sigmoid", "Slice", "Softmax", "Softplus", "SpaceToDepth", "Split",
    "Tanh", "Transpose", "Upsample",
})

@dataclass
class Prepared:
    model: onnx.ModelProto
    folded: int  # BatchNormalizations folded
    bns: int  # BatchNormalizations before the fold
    rewrites: list[str] = field(default_factory=list)  # "SpaceToDepth 'name'"
    fold_check: ParityReport | None = None  # original vs folded (fuse's tolerance)
    rewrite_check: ParityReport | None = None  # folded vs prepared (exact)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def prepare(
    model: onnx.ModelProto, source: str, shapes: dict[str, list[int]] | None = None, seed: int = 0,
    fold: bool = True,
) -> Prepared:
    """Fold, rewrite and fix shapes; raise OnnxfoldError (exit 2) for a model we cannot export.

    fold=False keeps every BatchNormalization (tools/bench_export.py compares both)."""
    refuse_unsupported(model, source)
    try:
        feeds, notes = make_feeds(model, shapes, seed)
    except CannotRun as e:
        raise OnnxfoldError(source, "a model with float32 tensor inputs of known rank",
                            str(e)) from None
    for name, a in feeds.items():
        if a.dtype != np.float32:
            raise OnnxfoldError(source, "float32 inputs", f"input '{name}' of {a.dtype.name}")
    fixed = {k: list(v.shape) for k, v in feeds.items()}
    result = fuse(model) if fold else None
    folded = result.model if result else model
    n_folded = len(result.folded) if result else 0
    bns = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
    prepared = onnx.ModelProto()
    prepared.CopyFrom(folded)
    _static_inputs(prepared, fixed)
    _name_nodes(prepared)
    rewrites = _rewrite(prepared, source)
    p = Prepared(prepared, n_folded, bns, rewrites, shapes=fixed, notes=notes)
    p.fold_check = check_parity(model, folded, shapes=fixed, seed=seed)
    p.rewrite_check = check_parity(folded, prepared, shapes=fixed, seed=seed, rel_tol=0.0)
    return p


def refuse_unsupported(model: onnx.ModelProto, source: str) -> None:
    """Every node must be an op whose export is verified; the error names the first that is not."""
    if model.functions:
        raise OnnxfoldError(source, "a model without model-local functions",
                            f"function '{model.functions[0].name}'")
    verified = ", ".join(sorted(VERIFIED_OPS))
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx") or n.op_type not in VERIFIED_OPS:
            op = f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
            raise OnnxfoldError(
                source, f"only ops onnxfold export verifies on every target ({verified})",
                f"{op} (node '{n.name}')")
    for vi in model.graph.output:
        if vi.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise OnnxfoldError(source, "float32 outputs", f"output '{vi.name}' of "
                                f"{TensorProto.DataType.Name(vi.type.tensor_type.elem_type)}")


def _static_inputs(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> None:
    """The converters want static shapes: the ones the check runs with."""
    for vi in real_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        del dims[:]
        for d in shapes[vi.name]:
            dims.add().dim_value = d


def _name_nodes(model: onnx.ModelProto) -> None:
    """onnx2tf's parameter replacement addresses nodes by name: give unnamed nodes one."""
    taken = {n.name for n in model.graph.node}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in taken:
                name += "_"
            n.name = name
            taken.add(name)


def _rewrite(model: onnx.ModelProto, source: str) -> list[str]:
    """Ops the targets lack or mistranslate, replaced by equivalents (checked exactly in ORT):
    SpaceToDepth (TF.js has no kernel); and darknet's shortcut between maps of different shape,
    whose strided Slice and channel Pad onnx2tf applies to the wrong axes after its NCHW -> NHWC
    change (the converted graph failed on mismatched shapes)."""
    if not any(n.op_type in ("SpaceToDepth", "Pad", "Slice") for n in model.graph.node):
        return []
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else 0
                        for d in vi.type.tensor_type.shape.dim]
              for vi in (*inferred.graph.value_info, *inferred.graph.input)}
    floats = {vi.name for vi in (*inferred.graph.value_info, *inferred.graph.input)
              if vi.type.tensor_type.elem_type == TensorProto.FLOAT}
    consts = {t.name: t for t in model.graph.initializer}
    taken = {n.name for n in model.graph.node} | set(consts)
    taken |= {v for n in model.graph.node for v in (*n.input, *n.output)}

    def fresh(base: str) -> str:
        name = base
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    def const(base: str, a: np.ndarray) -> str:
        name = fresh(base)
        model.graph.initializer.append(numpy_helper.from_array(a, name))
        return name

    nodes, done = [], []
    for n in model.graph.node:
        if n.op_type == "SpaceToDepth":
            nodes += _space_to_depth(n, shapes.get(n.input[0], []), fresh, const, source)
        elif n.op_type == "Slice" and n.input[0] in floats and (
                strides := _strided_sample(n, consts, shapes.get(n.input[0], []))):
            nodes += _sample_as_conv(n, shapes[n.input[0]], *strides, const)
        elif n.op_type == "Pad" and n.input[0] in floats and _pad_rewritable(
                ends := _zero_end_pads(n, consts), shape := shapes.get(n.input[0], [])):
            nodes += _pad_channels_as_conv(n, shape, ends, fresh, const)
        else:
            nodes.append(n)
            continue
        done.append(f"{n.op_type} '{n.name}'")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return done


def _space_to_depth(n, shape, fresh, const, source) -> list[onnx.NodeProto]:
    """SpaceToDepth -> Reshape, Transpose, Reshape (the ONNX spec's own definition)."""
    b = next((a.i for a in n.attribute if a.name == "blocksize"), 0)
    if b < 1 or len(shape) != 4 or not all(shape) or shape[2] % b or shape[3] % b:
        raise OnnxfoldError(source, f"SpaceToDepth with a static NCHW input divisible by "
                            f"its blocksize (node '{n.name}')", f"input shape {shape}")
    nn, c, h, w = shape
    s6 = const(f"{n.name}.shape6", np.array([nn, c, h // b, b, w // b, b], np.int64))
    s4 = const(f"{n.name}.shape4", np.array([nn, c * b * b, h // b, w // b], np.int64))
    r6, t6 = fresh(f"{n.name}.r6"), fresh(f"{n.name}.t6")
    return [
        helper.make_node("Reshape", [n.input[0], s6], [r6], name=fresh(f"{n.name}.reshape6")),
        helper.make_node("Transpose", [r6], [t6], name=fresh(f"{n.name}.transpose"),
                         perm=[0, 3, 5, 1, 2, 4]),
        helper.make_node("Reshape", [t6, s4], [n.output[0]], name=n.name),
    ]


def _zero_end_pads(n: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> list[int] | None:
    """A float constant-mode Pad adding zeros after the end of axes only: the end pads, else
    None."""
    mode = next((a.s for a in n.attribute if a.name == "mode"), b"constant")
    if mode != b"constant" or len(n.input) < 2 or n.input[1] not in consts or len(n.input) > 3:
        return None
    if len(n.input) == 3 and n.input[2] and (
            n.input[2] not in consts or numpy_helper.to_array(consts[n.input[2]]).any()):
        return None
    pads = numpy_helper.to_array(consts[n.input[1]]).astype(np.int64).ravel()
    rank = len(pads) // 2
    if len(pads) % 2 or pads[:rank].any() or (pads[rank:] < 0).any():
        return None
    return pads[rank:].tolist()


def _strided_sample(n, consts, shape) -> tuple[int, int, int] | None:
    """(channels kept, row step, column step) of a Slice that keeps channels 0..c-1 and every
    s-th row and column from 0 to the end of a static NCHW tensor; else None."""
    if len(shape) != 4 or not all(shape) or len(n.input) != 5 \
            or not all(i in consts for i in n.input[1:]):
        return None
    starts, ends, axes, steps = (numpy_helper.to_array(consts[i]).astype(np.int64).ravel()
                                 for i in n.input[1:])
    per = {int(a) % 4: (int(b), int(e), int(p)) for a, b, e, p in zip(axes, starts, ends, steps)}
    if set(per) != {1, 2, 3} or any(b for b, _, _ in per.values()) or per[1][2] != 1:
        return None
    c = min(per[1][1], shape[1])
    for axis in (2, 3):
        _, e, p = per[axis]
        if p < 1 or min(e, shape[axis]) <= shape[axis] - p:  # stops before the last window
            return None
    return c, per[2][2], per[3][2]


def _sample_as_conv(n, shape, c, sh, sw, const) -> list[onnx.NodeProto]:
    """Strided Slice -> a 1x1 Conv with those strides and identity weights (exact)."""
    w = np.eye(c, shape[1], dtype=np.float32).reshape(c, shape[1], 1, 1)
    return [helper.make_node("Conv", [n.input[0], const(f"{n.name}.eye", w)], [n.output[0]],
                             name=n.name, kernel_shape=[1, 1], strides=[sh, sw])]


def _pad_rewritable(ends: list[int] | None, shape: list[int]) -> bool:
    """Zeros appended to the channels of a static NCHW tensor, nothing else."""
    return (ends is not None and len(shape) == 4 and all(shape) and ends[1] > 0
            and ends[0] == ends[2] == ends[3] == 0)


def _pad_channels_as_conv(n, shape, ends, fresh, const) -> list[onnx.NodeProto]:
    """Pad -> a 1x1 Conv whose weights are an identity with zero rows below: exact (each output
    is one input times 1.0, or 0.0), and onnx2tf lays it out right, where it padded a channel
    Pad, or a Concat with constant zeros, along the wrong axis after its NCHW -> NHWC change."""
    c = shape[1]
    w = np.eye(c + ends[1], c, dtype=np.float32).reshape(c + ends[1], c, 1, 1)
    return [helper.make_node("Conv", [n.input[0], const(f"{n.name}.eye", w)], [n.output[0]],
                             name=n.name, kernel_shape=[1, 1])]
