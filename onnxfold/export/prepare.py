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
    "Add", "BatchNormalization", "Concat", "Constant", "Conv", "Identity", "LeakyRelu", "MaxPool",
    "Mul", "Relu", "Reshape", "Resize", "Sigmoid", "Softmax", "SpaceToDepth", "Split", "Transpose",
    "Upsample",
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
    rewrites = _rewrite_space_to_depth(prepared, source)
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


def _rewrite_space_to_depth(model: onnx.ModelProto, source: str) -> list[str]:
    """SpaceToDepth -> Reshape, Transpose, Reshape (the ONNX spec's own definition): TF.js has no
    SpaceToDepth kernel."""
    if not any(n.op_type == "SpaceToDepth" for n in model.graph.node):
        return []
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else 0
                        for d in vi.type.tensor_type.shape.dim]
              for vi in (*inferred.graph.value_info, *inferred.graph.input)}
    taken = {n.name for n in model.graph.node} | {t.name for t in model.graph.initializer}
    taken |= {v for n in model.graph.node for v in (*n.input, *n.output)}

    def fresh(base: str) -> str:
        name = base
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    nodes, done = [], []
    for n in model.graph.node:
        if n.op_type != "SpaceToDepth":
            nodes.append(n)
            continue
        b = next((a.i for a in n.attribute if a.name == "blocksize"), 0)
        shape = shapes.get(n.input[0], [])
        if b < 1 or len(shape) != 4 or not all(shape) or shape[2] % b or shape[3] % b:
            raise OnnxfoldError(source, f"SpaceToDepth with a static NCHW input divisible by "
                                f"its blocksize (node '{n.name}')", f"input shape {shape}")
        nn, c, h, w = shape
        s6 = fresh(f"{n.name}.shape6")
        s4 = fresh(f"{n.name}.shape4")
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array([nn, c, h // b, b, w // b, b], np.int64), s6),
            numpy_helper.from_array(np.array([nn, c * b * b, h // b, w // b], np.int64), s4),
        ])
        r6, t6 = fresh(f"{n.name}.r6"), fresh(f"{n.name}.t6")
        nodes += [
            helper.make_node("Reshape", [n.input[0], s6], [r6], name=fresh(f"{n.name}.reshape6")),
            helper.make_node("Transpose", [r6], [t6], name=fresh(f"{n.name}.transpose"),
                             perm=[0, 3, 5, 1, 2, 4]),
            helper.make_node("Reshape", [t6, s4], [n.output[0]], name=n.name),
        ]
        done.append(f"SpaceToDepth '{n.name}'")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return done
