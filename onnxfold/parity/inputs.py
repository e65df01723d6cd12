"""Inputs for a parity run: the graph's real inputs, shapes resolved, seeded random data."""

from __future__ import annotations

import numpy as np
import onnx

from onnxfold.errors import OnnxfoldError


class CannotRun(Exception):
    """The check cannot run for this model; the message says why."""


def parse_shape(spec: str) -> tuple[str, list[int]]:
    """'images:1x3x416x416' -> ('images', [1, 3, 416, 416])."""
    name, sep, dims = spec.rpartition(":")
    try:
        shape = [int(d) for d in dims.lower().split("x")]
    except ValueError:
        shape = []
    if not sep or not name or not shape or any(d < 0 for d in shape):
        raise OnnxfoldError("--shape", "NAME:D1xD2x... (e.g. images:1x3x416x416)", repr(spec))
    return name, shape


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (overridable initializers keep their defaults)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def make_feeds(
    model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None, seed: int = 0
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Seeded random data for every real input, and notes on every dim we had to choose."""
    shapes = shapes or {}
    inputs = real_inputs(model)
    unknown = set(shapes) - {i.name for i in inputs}
    if unknown:
        raise OnnxfoldError(
            "--shape", f"a graph input name ({', '.join(i.name for i in inputs)})",
            ", ".join(sorted(unknown)),
        )
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for vi in inputs:
        t = vi.type
        if t.WhichOneof("value") != "tensor_type":
            raise CannotRun(f"input '{vi.name}' is a {t.WhichOneof('value')}, not a tensor")
        shape = _shape(vi, shapes.get(vi.name), notes)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type)
        feeds[vi.name] = _random(rng, dtype, shape, vi.name)
    return feeds, notes


def _shape(vi: onnx.ValueInfoProto, given: list[int] | None, notes: list[str]) -> list[int]:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        if given is None:
            raise CannotRun(f"input '{vi.name}' has no shape; give it with --shape")
        return given
    dims = tt.shape.dim
    if given is not None:
        fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if len(given) != len(dims) or any(f is not None and f != g for f, g in zip(fixed, given)):
            raise OnnxfoldError(
                "--shape", f"a shape for '{vi.name}' matching {_fmt(fixed)}", _fmt(given)
            )
        return given
    shape = []
    for k, d in enumerate(dims):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(d.dim_value)
        else:
            label = d.dim_param or "?"
            notes.append(f"input '{vi.name}' dim {k} ('{label}') is dynamic: set to 1")
            shape.append(1)
    return shape


def _fmt(dims: list[int | None]) -> str:
    return "x".join("?" if d is None else str(d) for d in dims)


def _random(rng: np.random.Generator, dtype: np.dtype, shape: list[int], name: str) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dtype)
    if dtype.kind == "f" or dtype.name == "bfloat16":
        # Image-like data in [0, 1): what the YOLO-style models we serve are fed.
        return rng.random(shape).astype(dtype)
    raise CannotRun(f"input '{name}' has dtype {dtype.name}: no random data for it")
