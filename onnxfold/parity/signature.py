"""Before any run: do two models take and give the same tensors? Pair them, or say why not."""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx

from onnxfold.errors import OnnxfoldError
from onnxfold.parity.inputs import real_inputs


@dataclass(frozen=True)
class Pairing:
    inputs: list[tuple[str, str]]  # (name in the reference, name in the candidate)
    outputs: list[tuple[str, str]]


def parse_map(specs: list[str]) -> dict[str, str]:
    """['a_out=b_out', ...] -> {'a_out': 'b_out'}."""
    out: dict[str, str] = {}
    for spec in specs:
        a, sep, b = spec.partition("=")
        if not sep or not a or not b:
            raise OnnxfoldError("--map", "NAME_IN_A=NAME_IN_B", repr(spec))
        out[a] = b
    return out


def pair(
    a: onnx.ModelProto,
    b: onnx.ModelProto,
    a_path: str | os.PathLike[str],
    b_path: str | os.PathLike[str],
    mapping: dict[str, str] | None = None,
    positional: bool = False,
) -> Pairing:
    """Pair inputs and outputs: by name in the same order (default), by `mapping` (A name -> B
    name, any order), or by position. Dtypes and static ranks must agree."""
    mapping = mapping or {}
    pairs = []
    for kind, va, vb in (
        ("input", real_inputs(a), real_inputs(b)),
        ("output", list(a.graph.output), list(b.graph.output)),
    ):
        pairs.append(_pair_kind(kind, va, vb, a_path, b_path, mapping, positional))
    known = {n for v in (real_inputs(a), a.graph.output) for n in (x.name for x in v)}
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise OnnxfoldError("--map", f"input or output names of {a_path}", ", ".join(unknown))
    return Pairing(*pairs)


def _pair_kind(kind, va, vb, a_path, b_path, mapping, positional) -> list[tuple[str, str]]:
    names_a, names_b = [v.name for v in va], [v.name for v in vb]
    if len(va) != len(vb):
        raise OnnxfoldError(
            b_path, f"{len(va)} {kind}s as in {a_path} ({_list(names_a)})",
            f"{len(vb)} ({_list(names_b)})",
        )
    if positional:
        pairs = list(zip(names_a, names_b))
    else:
        pairs = []
        for i, n in enumerate(names_a):
            target = mapping.get(n, n)
            if target not in names_b:
                raise OnnxfoldError(
                    b_path,
                    f"an {kind} '{target}' as in {a_path} (or --map {n}=NAME, --positional)",
                    f"{kind}s {_list(names_b)}",
                )
            if n not in mapping and names_b[i] != n:
                raise OnnxfoldError(
                    b_path, f"{kind} {i} named '{n}' as in {a_path} (their order differs; pair "
                    "them with --map or --positional)", f"'{names_b[i]}'",
                )
            pairs.append((n, target))
    by_a, by_b = {v.name: v for v in va}, {v.name: v for v in vb}
    for x, y in pairs:
        ta, tb = _type(by_a[x]), _type(by_b[y])
        if ta[0] != tb[0] or (None not in (ta[1], tb[1]) and ta[1] != tb[1]):
            raise OnnxfoldError(
                b_path, f"{kind} '{y}' of {_fmt(ta)} like '{x}' in {a_path}", _fmt(tb),
            )
    return pairs


def _type(vi: onnx.ValueInfoProto) -> tuple[str, int | None]:
    """(dtype name, rank or None)."""
    t = vi.type
    if t.WhichOneof("value") != "tensor_type":
        return (t.WhichOneof("value") or "untyped", None)
    tt = t.tensor_type
    dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower() if tt.elem_type else "untyped"
    return dtype, (len(tt.shape.dim) if tt.HasField("shape") else None)


def _fmt(t: tuple[str, int | None]) -> str:
    return f"{t[0]}, rank {'unknown' if t[1] is None else t[1]}"


def _list(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names) or "none"
