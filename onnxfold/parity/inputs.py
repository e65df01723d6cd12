"""Inputs for a parity run: the graph's real inputs, shapes resolved, seeded random data."""

from __future__ import annotations

import math
import os
import zipfile
import zlib

import numpy as np
import onnx

from onnxfold.errors import OnnxfoldError

# Random input data made for one trial, at most: a model's declared input dims (or --shape) are
# numbers in a file, and 2^40 elements must be refused, not allocated. Images at 4096x4096x3 in
# float32 take 200 MB.
MAX_FEED_BYTES = 1 << 30


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


def parse_range(spec: str) -> tuple[str, tuple[float, float]]:
    """'images:0:1' -> ('images', (0.0, 1.0)): random values for that input in [lo, hi)."""
    parts = spec.rsplit(":", 2)
    try:
        name, lo, hi = parts[0], float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        name, lo, hi = "", 0.0, 0.0
    if not name or not lo < hi or not np.isfinite([lo, hi]).all():
        raise OnnxfoldError("--range", "NAME:LOW:HIGH with LOW < HIGH (e.g. images:0:1)",
                            repr(spec))
    return name, (lo, hi)


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Named arrays from an .npz file (numpy.savez), never unpickling anything, and never
    allocating what a header merely claims (see _npz_sizes)."""
    try:
        _npz_sizes(path)
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not named arrays")
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise OnnxfoldError(path, "an .npz file of named input arrays", "no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError,
            zlib.error) as e:  # encrypted or unsupported members, corrupt deflate streams
        raise OnnxfoldError(path, "an .npz file of named input arrays (numpy.savez)",
                            str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _npz_sizes(path: str | os.PathLike[str]) -> None:
    """Each member's .npy header must describe exactly the bytes that follow it, and all of
    them at most MAX_FEED_BYTES: numpy allocates the header's shape before reading the data."""
    total = 0
    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError("no zip archive of .npy arrays (a single .npy array?)") from None
    with z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                raise ValueError(f"member '{info.filename}' is not an .npy array")
            with z.open(info) as f:
                major, _ = np.lib.format.read_magic(f)
                read = {1: np.lib.format.read_array_header_1_0,
                        2: np.lib.format.read_array_header_2_0}.get(major)
                if read is None:
                    raise ValueError(f"member '{info.filename}' has .npy version {major}")
                shape, _, dtype = read(f)
                need, have = math.prod(shape) * dtype.itemsize, info.file_size - f.tell()
            if dtype.hasobject or need != have:
                raise ValueError(f"member '{info.filename}' declares {dtype.str} "
                                 f"{_fmt(list(shape))} ({need} bytes) and holds {have} bytes")
            total += need
            if total > MAX_FEED_BYTES:
                raise ValueError(f"arrays over the {MAX_FEED_BYTES >> 30} GiB onnxfold reads "
                                 f"as inputs (at '{info.filename}')")


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (overridable initializers keep their defaults)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def make_feeds(
    model: onnx.ModelProto,
    shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
    ranges: dict[str, tuple[float, float]] | None = None,
    given: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Data for every real input: `given` arrays as they are (checked against the model), the
    rest seeded random data (in `ranges` where given); and notes on every dim we had to choose."""
    shapes, ranges, given = shapes or {}, ranges or {}, given or {}
    inputs = real_inputs(model)
    names = ", ".join(i.name for i in inputs)
    for flag, d in (("--shape", shapes), ("--range", ranges), ("--inputs/--image", given)):
        unknown = set(d) - {i.name for i in inputs}
        if unknown:
            raise OnnxfoldError(flag, f"a graph input name ({names})", ", ".join(sorted(unknown)))
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    notes: list[str] = []
    total = 0
    for vi in inputs:
        t = vi.type
        if t.WhichOneof("value") != "tensor_type":
            raise CannotRun(f"input '{vi.name}' is a {t.WhichOneof('value')}, not a tensor")
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type))
        except (KeyError, TypeError, ValueError):
            raise CannotRun(f"input '{vi.name}' has elem_type {t.tensor_type.elem_type}, "
                            "which has no numpy dtype") from None
        if vi.name in given:
            feeds[vi.name] = _checked(vi, given[vi.name], dtype)
            continue
        shape = _shape(vi, shapes.get(vi.name), notes)
        # numpy draws floats in float64 before the cast: count at least 8 bytes an element
        total += math.prod(shape) * max(dtype.itemsize, 8)
        if total > MAX_FEED_BYTES:
            raise CannotRun(
                f"input '{vi.name}' of shape {_fmt(shape)} takes the random inputs over the "
                f"{MAX_FEED_BYTES >> 30} GiB onnxfold allocates for them"
            )
        feeds[vi.name] = _random(rng, dtype, shape, vi.name, ranges.get(vi.name))
    return feeds, notes


def _checked(vi: onnx.ValueInfoProto, a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A given array must have the input's dtype and fit its static dims."""
    tt = vi.type.tensor_type
    if a.dtype != dtype:
        raise OnnxfoldError(f"input '{vi.name}'", f"an array of {dtype.name}",
                            f"{a.dtype.name} (shape {list(a.shape)})")
    if tt.HasField("shape"):
        fixed = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if len(fixed) != a.ndim or any(f is not None and f != n for f, n in zip(fixed, a.shape)):
            raise OnnxfoldError(f"input '{vi.name}'", f"an array of shape {_fmt(fixed)}",
                                _fmt(list(a.shape)))
    return a


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


def _random(
    rng: np.random.Generator,
    dtype: np.dtype,
    shape: list[int],
    name: str,
    span: tuple[float, float] | None = None,
) -> np.ndarray:
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        lo, hi = (0, 10) if span is None else (int(np.ceil(span[0])), int(np.ceil(span[1])))
        if lo >= hi:
            raise OnnxfoldError("--range", f"an integer in [LOW, HIGH) for '{name}'",
                                f"none in [{span[0]}, {span[1]})")
        return rng.integers(lo, hi, size=shape).astype(dtype)
    if dtype.kind == "f" or dtype.name == "bfloat16":
        # Image-like data in [0, 1) by default: what the YOLO-style models we serve are fed.
        lo, hi = span or (0.0, 1.0)
        return (lo + (hi - lo) * rng.random(shape)).astype(dtype)
    raise CannotRun(f"input '{name}' has dtype {dtype.name}: no random data for it")
