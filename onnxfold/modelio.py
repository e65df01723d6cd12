"""Loading and saving models: clear errors on bad files, deterministic bytes, atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from onnxfold.errors import OnnxfoldError

_EXPECTED = "an ONNX model (a serialized onnx.ModelProto)"


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read and parse an ONNX file; raise OnnxfoldError naming the file on any problem."""
    p = Path(path)
    if not p.exists():
        raise OnnxfoldError(p, _EXPECTED, "no such file")
    if not p.is_file():
        raise OnnxfoldError(p, _EXPECTED, "a directory" if p.is_dir() else "not a regular file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise OnnxfoldError(p, _EXPECTED, f"a file that cannot be read ({e.strerror})") from None
    return parse_model(data, p)


def parse_model(data: bytes, path: str | os.PathLike[str] = "<bytes>") -> onnx.ModelProto:
    """Parse bytes as a ModelProto, rejecting what protobuf accepts but is no model."""
    if not data:
        raise OnnxfoldError(path, _EXPECTED, "an empty file")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        # A truncated or corrupt file: protobuf cannot decode it.
        raise OnnxfoldError(path, _EXPECTED, f"bytes protobuf cannot decode ({e})") from None
    # Protobuf happily parses many non-model byte strings into an empty or partial message.
    if not model.HasField("graph") or model.ir_version <= 0:
        raise OnnxfoldError(path, _EXPECTED, f"{len(data)} bytes with no ir_version or no graph")
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        raise OnnxfoldError(path, _EXPECTED, "a model with no opset_import for the default domain")
    for t in _all_initializers(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise OnnxfoldError(
                path, "a model with its weights inside the .onnx file",
                f"tensor '{t.name}' stored as external data (not supported yet)",
            )
    return model


def tensor_array(tensor: onnx.TensorProto, base_dir: str | os.PathLike[str] | None = None):
    """A tensor's value as numpy; external data is read from base_dir (the model's folder)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise OnnxfoldError(
            base_dir or "<model>", "a tensor stored inside the model",
            f"tensor '{tensor.name}' stored as external data (not supported yet)",
        )
    return numpy_helper.to_array(tensor)


def _all_initializers(model: onnx.ModelProto):
    stack = [model.graph]
    while stack:
        g = stack.pop()
        yield from g.initializer
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(a.graphs)


def model_bytes(model: onnx.ModelProto) -> bytes:
    """Serialize deterministically: the same model always gives the same bytes."""
    return model.SerializeToString(deterministic=True)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes to path via a temp file in the same folder and a rename: never a partial file."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Save a model atomically with deterministic bytes."""
    write_atomic(path, model_bytes(model))
