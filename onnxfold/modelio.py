"""Loading and saving models: clear errors on bad files, deterministic bytes, atomic writes.

External data (weights in side files) stays on disk: a loaded model keeps its external
initializers as references, each checked to lie inside the model's folder before any byte is
read, and a saved model streams them from the source file into its own data file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto, numpy_helper

from onnxfold.errors import OnnxfoldError

_EXPECTED = "an ONNX model (a serialized onnx.ModelProto)"
EXTERNAL = TensorProto.EXTERNAL
# protobuf cannot serialize or parse a message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1
# Written data files: every tensor starts at a multiple of ALIGN (the page size, so onnxruntime
# can mmap each tensor) and tensors under INLINE_BELOW bytes stay in the model (onnx's default).
ALIGN = 4096
INLINE_BELOW = 1024
_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)
_SUB_BYTE_BITS = {
    getattr(TensorProto, name): bits
    for name, bits in (("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("UINT2", 2), ("INT2", 2),
                       ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6))
    if hasattr(TensorProto, name)
}
_EXTERNAL_KEYS = ("location", "offset", "length")
# dtypes whose raw_data numpy reads and writes directly (little-endian hosts): faster than
# numpy_helper, which handles every dtype and byte order; anything else goes through it.
_DIRECT = {TensorProto.FLOAT: "<f4", TensorProto.FLOAT16: "<f2", TensorProto.DOUBLE: "<f8"}
_DIRECT_BACK = {np.dtype("<f4"): TensorProto.FLOAT, np.dtype("<f2"): TensorProto.FLOAT16,
                np.dtype("<f8"): TensorProto.DOUBLE}  # keys by dtype: dtype.name is slow
_LITTLE = sys.byteorder == "little"
_IN_FOLDER = "external data in a regular file inside the model's folder"


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector off for a block (as it was after). A model's protobuf
    wrappers and the fold's index are many long-lived objects: every full collection walked
    them all, which made a 20,000-block model take 3x as long per block as a 5,000-block one.
    Nothing here makes cycles that must be freed before the block ends."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read and parse an ONNX file; raise OnnxfoldError naming the file on any problem.

    The model must be well-formed (see wellformed.check). External initializers stay references
    to their files, every one checked first (see external_ref). External tensors in node
    attributes or sparse tensors are read in.
    """
    return read_model(path)[0]


def read_model(path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, list[ExternalRef]]:
    """load_model, and where the initializers it left in external data are (a walk over a
    big model's tensors saved)."""
    p = Path(path)
    if not p.exists():
        raise OnnxfoldError(p, _EXPECTED, "no such file")
    if not p.is_file():
        raise OnnxfoldError(p, _EXPECTED, "a directory" if p.is_dir() else "not a regular file")
    try:
        size = p.stat().st_size
        if size > PROTOBUF_LIMIT:  # protobuf cannot parse it: do not read it in to find out
            raise OnnxfoldError(p, _EXPECTED, f"{size} bytes, over protobuf's 2 GB limit (a "
                                "model that big keeps its weights in external data files)")
        data = p.read_bytes()
    except OSError as e:
        raise OnnxfoldError(p, _EXPECTED, f"a file that cannot be read ({e.strerror})") from None
    with paused_gc():
        model = parse_model(data, p)
        del data
        from onnxfold import wellformed  # it imports graph, which imports this module

        wellformed.check(model, p)
    refs = [(kind, t, external_ref(t, p.parent, p)) for kind, t in tensors(model) if _is_ext(t)]
    for kind, t, ref in refs:  # only after every location passed its checks
        if kind != "initializer":
            _read_in(t, ref)
    return model, [ref for kind, _, ref in refs if kind == "initializer"]


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
    bad = _utf8_problem(model, data)
    if bad:
        raise OnnxfoldError(path, "names and strings in UTF-8", bad)
    return model


# A model of this many nodes and initializers or more is checked for UTF-8 by a second parse
# (below), up to this file size (the parse holds a second copy of the model for a moment).
_PARSE_FROM, _PARSE_UP_TO = 5000, 256 << 20


def _utf8_problem(model: onnx.ModelProto, data: bytes) -> str:
    """Where the model has a string that is not UTF-8 (see _not_utf8), or "". On a model of
    many nodes, reading every string from Python (0.4 s for 60,000 nodes) costs 4x a second
    parse as proto3, whose parser checks every string field's UTF-8 in C: a model that passes
    it needs no walk. One it refuses is walked to say where (a parse it refuses for another
    reason walks to "": proto2's parse, which counts, took the model)."""
    g = model.graph
    if len(g.node) + len(g.initializer) >= _PARSE_FROM and len(data) <= _PARSE_UP_TO:
        try:
            _utf8_checking_model()().ParseFromString(data)
            return ""
        except DecodeError:
            pass
    return _not_utf8(model)


@functools.cache
def _utf8_checking_model():
    """ModelProto's message class with onnx's schema as proto3 (same fields and numbers), so
    parsing checks that every string is UTF-8."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto()
    onnx.ModelProto.DESCRIPTOR.file.CopyToProto(fdp)
    old, new = f".{fdp.package}.", "onnxfold_utf8"
    fdp.name, fdp.package, fdp.syntax = f"{new}.proto", new, "proto3"
    fdp.ClearField("options")

    def to_proto3(messages) -> None:
        for m in messages:
            m.ClearField("extension_range")
            for f in m.field:
                f.ClearField("default_value")
                f.options.ClearField("packed")
                if f.label == f.LABEL_REQUIRED:
                    f.label = f.LABEL_OPTIONAL
                if f.type_name.startswith(old):
                    f.type_name = f".{new}.{f.type_name[len(old):]}"
            to_proto3(m.nested_type)

    to_proto3(fdp.message_type)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{new}.ModelProto"))


def _not_utf8(msg) -> str:
    """Where a string field holds bytes that are not UTF-8, or "". Protobuf hands such a field
    over as bytes, not str: an op_type b'\xffatchNormalization' broke lookups far away."""
    if isinstance(msg, TensorProto):  # ListFields would copy every tensor's raw_data
        return _tensor_not_utf8(msg)
    if isinstance(msg, onnx.NodeProto):  # the many: their string fields read directly
        return _node_not_utf8(msg)
    for field, value in msg.ListFields():
        if field.type not in (field.TYPE_STRING, field.TYPE_MESSAGE):
            continue
        values = value if _repeated(field) else [value]
        if field.type == field.TYPE_STRING:
            bad = next((v for v in values if isinstance(v, bytes)), None)
            if bad is not None:
                return f"{msg.DESCRIPTOR.name}.{field.name} {bad[:40]!r}"
        else:
            found = next((f for f in map(_not_utf8, values) if f), "")
            if found:
                return found
    return ""


_PLAIN_ATTRS = frozenset({AttributeProto.FLOAT, AttributeProto.INT, AttributeProto.STRING,
                          AttributeProto.FLOATS, AttributeProto.INTS, AttributeProto.STRINGS})


def _node_not_utf8(n: onnx.NodeProto) -> str:
    values = (n.op_type, n.name, n.domain, n.overload, n.doc_string, *n.input, *n.output)
    if any(type(v) is bytes for v in values):  # rare: then say which field
        for what in ("op_type", "name", "domain", "overload", "doc_string", "input", "output"):
            v = getattr(n, what)
            bad = next((x for x in (v if what in ("input", "output") else [v])
                        if type(x) is bytes), None)
            if bad is not None:
                return f"NodeProto.{what} {bad[:40]!r}"
    for a in n.attribute:
        # The common attribute (a number, numbers or bytes) has three string fields; only
        # the others, with messages inside, take the generic walk.
        if a.type in _PLAIN_ATTRS:
            if (type(a.name) is bytes or type(a.ref_attr_name) is bytes
                    or type(a.doc_string) is bytes):
                return _not_utf8(a)
        else:
            found = _not_utf8(a)
            if found:
                return found
    for items in (n.metadata_props, n.device_configurations):
        if items:
            found = next((f for f in map(_not_utf8, items) if f), "")
            if found:
                return found
    return ""


def _tensor_not_utf8(t: TensorProto) -> str:
    if type(t.name) is bytes or type(t.doc_string) is bytes:
        what = "name" if type(t.name) is bytes else "doc_string"
        return f"TensorProto.{what} {getattr(t, what)[:40]!r}"
    if t.external_data or t.metadata_props:
        for entries in (t.external_data, t.metadata_props):
            found = next((f for f in map(_not_utf8, entries) if f), "")
            if found:
                return found
    return ""


def _repeated(field) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 6 (7 has no .label)
        return field.is_repeated
    return field.label == field.LABEL_REPEATED


def tensor_array(tensor: onnx.TensorProto, base_dir: str | os.PathLike[str] | None = None):
    """A tensor's value as numpy; external data is read from base_dir (the model's folder).
    The array may be read-only (a view of the tensor's bytes)."""
    if not _is_ext(tensor):
        return _to_array(tensor)
    if base_dir is None:
        raise OnnxfoldError(
            "<model>", "the model's folder to read external data from",
            f"tensor '{tensor.name}' stored as external data and no folder given",
        )
    ref = external_ref(tensor, base_dir, base_dir)
    dtype = _DIRECT.get(tensor.data_type) if _LITTLE else None
    if dtype is not None:  # straight from the file's bytes, no proto in between
        return np.frombuffer(_read(ref), dtype).reshape(tuple(tensor.dims))
    inline = TensorProto()
    inline.CopyFrom(tensor)
    _read_in(inline, ref)
    return _to_array(inline)


def _to_array(t: TensorProto):
    dtype = _DIRECT.get(t.data_type) if _LITTLE else None
    if dtype is None or not t.HasField("raw_data") or t.HasField("segment"):
        return numpy_helper.to_array(t)
    return np.frombuffer(t.raw_data, dtype).reshape(tuple(t.dims))


def set_tensor(t: TensorProto, array, name: str) -> None:
    """Make t exactly numpy_helper.from_array(array, name), in place (no new message)."""
    kind = _DIRECT_BACK.get(array.dtype) if _LITTLE else None
    if kind is None:
        t.CopyFrom(numpy_helper.from_array(array, name))
        return
    t.Clear()
    t.dims.extend(array.shape)
    t.data_type = kind
    t.name = name
    t.raw_data = array.tobytes()  # C order, as from_array writes it


# --- external data: where a tensor's bytes are, checked --------------------------------------


@dataclass(frozen=True)
class ExternalRef:
    """The bytes of one external tensor: a regular file inside the model's folder."""

    file: Path  # resolved, no symlinks
    offset: int
    length: int


def tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every dense tensor in the model, in a fixed walk order, with its kind: 'initializer',
    'attribute' (a node's tensor attribute) or 'sparse' (values or indices of a sparse tensor).
    Subgraphs are walked where their node is; then functions, then training_info."""
    yield from _graph_tensors(model.graph)
    for f in model.functions:
        yield from _node_tensors(f.node)
    for ti in model.training_info:
        yield from _graph_tensors(ti.initialization)
        yield from _graph_tensors(ti.algorithm)


def _graph_tensors(g: onnx.GraphProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    for t in g.initializer:
        yield "initializer", t
    for s in g.sparse_initializer:
        yield "sparse", s.values
        yield "sparse", s.indices
    yield from _node_tensors(g.node)


# The default-domain ops with tensor or graph attributes (tests/test_perf_paths.py checks this
# against onnx.defs). Any other default-domain node with one is refused by wellformed.check
# (its schema has no such attribute), so walks need not read the attributes of the many.
TENSOR_ATTR_OPS = frozenset({"Constant", "ConstantOfShape", "If", "Loop", "Scan", "SequenceMap"})


def _node_tensors(nodes) -> Iterator[tuple[str, onnx.TensorProto]]:
    for n in nodes:
        if n.op_type not in TENSOR_ATTR_OPS and n.domain in ("", "ai.onnx"):
            continue
        for a in n.attribute:
            if a.type == AttributeProto.TENSOR:
                yield "attribute", a.t
            elif a.type == AttributeProto.TENSORS:
                for t in a.tensors:
                    yield "attribute", t
            elif a.type == AttributeProto.SPARSE_TENSOR:
                yield "sparse", a.sparse_tensor.values
                yield "sparse", a.sparse_tensor.indices
            elif a.type == AttributeProto.SPARSE_TENSORS:
                for s in a.sparse_tensors:
                    yield "sparse", s.values
                    yield "sparse", s.indices
            elif a.type == AttributeProto.GRAPH:
                yield from _graph_tensors(a.g)
            elif a.type == AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graph_tensors(g)


def _is_ext(t: onnx.TensorProto) -> bool:
    return t.data_location == EXTERNAL


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(_is_ext(t) for _, t in tensors(model))


def external_ref(
    tensor: onnx.TensorProto, base_dir: str | os.PathLike[str], model_file: str | os.PathLike[str]
) -> ExternalRef:
    """Check where an external tensor's bytes are, without reading them; raise OnnxfoldError
    naming model_file, the tensor and its location on anything that is not a regular file
    inside base_dir (absolute, a '..' component, a symlink out), or bytes not of the tensor's
    size inside that file."""
    entries: dict[str, str] = {}
    for e in tensor.external_data:
        if e.key in entries:
            raise OnnxfoldError(model_file, "each external_data key at most once",
                                f"tensor '{tensor.name}' with key '{e.key}' twice")
        entries[e.key] = e.value
    loc = entries.get("location", "")
    what = f"tensor '{tensor.name}' with location '{loc}'"

    def refuse(expected: str, found: str) -> OnnxfoldError:
        return OnnxfoldError(model_file, expected, f"{what}: {found}")

    parts = loc.replace("\\", "/").split("/")
    if not loc:
        raise OnnxfoldError(model_file, _IN_FOLDER, f"tensor '{tensor.name}' with no location")
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
        raise refuse(_IN_FOLDER, "an absolute path")
    if ".." in parts:
        raise refuse(_IN_FOLDER, "a '..' component")
    if "\0" in loc:
        raise refuse(_IN_FOLDER, "a NUL character")
    folder = os.path.realpath(base_dir)
    real = os.path.realpath(os.path.join(folder, loc))
    if os.path.commonpath([folder, real]) != folder:
        raise refuse(_IN_FOLDER, f"resolves to '{real}' (through a symlink), outside '{folder}'")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise refuse(_IN_FOLDER, "no such file") from None
    except OSError as e:
        raise refuse(_IN_FOLDER, f"a file that cannot be read ({e.strerror})") from None
    if not os.path.isfile(real):
        raise refuse(_IN_FOLDER, "a directory" if os.path.isdir(real) else "not a regular file")

    dtype, shape = _dtype_name(tensor.data_type), "x".join(map(str, tensor.dims)) or "scalar"
    need = _nbytes(tensor)
    if need is None:
        raise refuse("a numeric tensor in external data", f"dtype {dtype}, dims {shape}")
    numbers = {}
    for key in ("offset", "length"):
        text = entries.get(key)
        if text is not None and not (text.isascii() and text.isdigit()):
            raise refuse("external data offset and length as non-negative integers",
                         f"{key} '{text}'")
        numbers[key] = None if text is None else int(text)
    size = st.st_size
    offset = numbers["offset"] or 0
    if offset > size:
        raise refuse("external data inside its file",
                     f"offset {offset} past its end ({size} bytes)")
    length = size - offset if numbers["length"] is None else numbers["length"]
    if offset + length > size:
        raise refuse("external data inside its file",
                     f"offset {offset} + length {length} past its end ({size} bytes)")
    if length != need:
        raise refuse(f"{need} bytes of external data ({dtype} {shape})", f"length {length}")
    return ExternalRef(Path(real), offset, length)


def _dtype_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type)
    except ValueError:
        return str(data_type)


def _nbytes(t: onnx.TensorProto) -> int | None:
    """Bytes the tensor's raw data takes, or None for a type that has no raw form."""
    if any(d < 0 for d in t.dims) or t.data_type in (TensorProto.UNDEFINED, TensorProto.STRING):
        return None
    bits = _SUB_BYTE_BITS.get(t.data_type)
    if bits is None:
        try:
            bits = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize * 8
        except (KeyError, ValueError, TypeError):
            return None
    return (math.prod(t.dims) * bits + 7) // 8


def _open(ref: ExternalRef) -> int:
    # O_NOFOLLOW: the checked path has no symlinks left; one swapped in since is refused.
    return os.open(ref.file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))


def _read(ref: ExternalRef) -> bytes:
    fd = _open(ref)
    try:
        parts = []
        for k in range(0, ref.length, 1 << 30):  # one pread returns at most ~2 GB
            n = min(1 << 30, ref.length - k)
            parts.append(os.pread(fd, n, ref.offset + k))
            if len(parts[-1]) != n:  # the file shrank since it was checked
                raise OnnxfoldError(ref.file, f"{ref.length} bytes at offset {ref.offset}",
                                    f"the file ends at {ref.offset + k + len(parts[-1])}")
    finally:
        os.close(fd)
    return b"".join(parts)


def _read_in(t: onnx.TensorProto, ref: ExternalRef) -> None:
    """Make an external tensor an inline one (its bytes in raw_data)."""
    t.raw_data = _read(ref)
    del t.external_data[:]
    t.ClearField("data_location")


def inline_size(model: onnx.ModelProto) -> int:
    """An upper bound of the model's serialized size with every external tensor inline."""
    extra = 0
    for _, t in tensors(model):
        if _is_ext(t):
            n = _nbytes(t) or 0
            extra += n + 16  # the raw_data field's tag and length, and the enclosing lengths
    return model.ByteSize() + extra


def tensor_data_size(model: onnx.ModelProto) -> int:
    """Bytes of data in all the model's numeric tensors, wherever they are stored."""
    return sum(_nbytes(t) or 0 for _, t in tensors(model))


def inline_external(model: onnx.ModelProto, base_dir: str | os.PathLike[str],
                    model_file: str | os.PathLike[str], keep=None) -> None:
    """Read every external tensor into the model (in place), but those keep(t) is true of."""
    for _, t in tensors(model):
        if _is_ext(t) and not (keep is not None and keep(t)):
            _read_in(t, external_ref(t, base_dir, model_file))


# --- writing --------------------------------------------------------------------------------


def model_bytes(model: onnx.ModelProto) -> bytes:
    """Serialize deterministically: the same model always gives the same bytes."""
    return model.SerializeToString(deterministic=True)


def _test_pause(point: str) -> None:
    """Test-only: ONNXFOLD_TEST_PAUSE=<point>:<marker file> stops a write at the named point,
    creates the marker and sleeps, so a test can signal the process there (tests/hostile).
    Points: temp-open, temp-written, data-partial, data-renamed. Unset: one dict lookup."""
    spec = os.environ.get("ONNXFOLD_TEST_PAUSE")
    if spec and spec.partition(":")[0] == point:
        Path(spec.partition(":")[2]).touch()
        time.sleep(60)


def _usual_mode(path: str | os.PathLike[str]) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode


def _temp(p: Path) -> tuple[int, Path]:
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    return fd, Path(tmp)


def write_temp(p: Path, data: bytes, sync: bool = True) -> Path:
    """data in a temp file beside p, with the usual file mode: fsynced, or with sync=False
    only on its way to disk (fsync_file it before it is renamed into place)."""
    fd, tmp = _temp(p)
    try:
        with os.fdopen(fd, "wb") as f:
            _test_pause("temp-open")
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
            else:
                _start_writeback(f.fileno(), 0, len(data))
        _usual_mode(tmp)
        _test_pause("temp-written")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """An OSError while writing path (a read-only folder, a full disk, a file size limit) is a
    bad output location: OnnxfoldError naming path, exit 2, not a traceback."""
    try:
        yield
    except OSError as e:
        code = errno.errorcode.get(e.errno, "") if e.errno else ""
        found = (e.strerror or type(e).__name__).lower() + (f" ({code})" if code else "")
        raise OnnxfoldError(path, "an output location onnxfold can write", found) from None


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], data: bytes) -> Iterator[None]:
    """data in a temp file beside path now, renamed into place when the block ends without an
    error (else removed): a file to put in place only if something else succeeds."""
    p = Path(path)
    with writing(p):
        tmp = write_temp(p, data)
    try:
        yield
        with writing(p):
            os.replace(tmp, p)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes to path via a temp file in the same folder and a rename: never a partial file."""
    with atomic_file(path, data):
        pass


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Save a model atomically with deterministic bytes."""
    write_atomic(path, model_bytes(model))


def data_path(target: Path) -> Path:
    """Where a model saved with external data keeps it: `<model file name>.data` beside it."""
    return target.with_name(f"{target.name}.data")


def goes_external(kind: str, t: onnx.TensorProto) -> bool:
    """Does a data file take this tensor? Initializers of INLINE_BELOW bytes or more with raw
    bytes (raw_data or external); node attributes, sparse tensors and typed fields (float_data,
    ...) stay in the model exactly as they are."""
    if kind != "initializer":
        return False
    n = (_nbytes(t) or 0) if _is_ext(t) else len(t.raw_data) if t.HasField("raw_data") else 0
    return n >= INLINE_BELOW


@dataclass
class StagedSave:
    """A model and its data file written to temp files beside the target, not yet in place.

    `model_temp` points at `data_temp` and can be checked and run as it is; `commit()` puts
    both in place (an old model removed, the data file, then the model rewritten to point at
    it), `discard()` removes whatever is still a temp: call it in any case."""

    model: onnx.ModelProto
    target: Path
    model_temp: Path
    data_temp: Path
    tensors: int
    size: int
    _final_temp: Path | None = None

    @property
    def data_file(self) -> Path:
        return data_path(self.target)

    def commit(self) -> None:
        with writing(self.target):
            self._commit()

    def _commit(self) -> None:
        _set_location(self.model, self.data_file.name)
        self._final_temp = write_temp(self.target, model_bytes(self.model))
        # An old model (--force) must not outlive its data file: beside the new one it would
        # read other weights, or silently the wrong ones. Until the last rename the target is
        # absent, never a model with another run's data.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.target)
        os.replace(self.data_temp, self.data_file)
        _test_pause("data-renamed")
        os.replace(self._final_temp, self.target)

    def discard(self) -> None:
        for p in (self.model_temp, self.data_temp, self._final_temp):
            if p is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)


@dataclass(frozen=True)
class HeldRef:
    """The bytes of a tensor a held Spill keeps in memory (see Spill), for write_streamed."""

    array: np.ndarray

    @property
    def length(self) -> int:
        return self.array.nbytes


def _as_external(t: TensorProto, array, name: str, where: tuple[str, int, int]) -> None:
    """t becomes array's tensor named `name`, its bytes elsewhere: (location, offset, length)."""
    t.Clear()
    t.dims.extend(array.shape)
    t.data_type = _DIRECT_BACK[array.dtype]
    t.name = name
    t.data_location = EXTERNAL
    for key, value in zip(_EXTERNAL_KEYS, where):
        entry = t.external_data.add()
        entry.key, entry.value = key, str(value)


class Spill:
    """Folded values of external tensors, written to a temp file beside the output as the fold
    makes them: a model whose weights are in external data is never all in memory at once.
    Each goes at the next ALIGN-ed offset, in the order the fold makes them: the order and the
    offsets the output's data file gives them when the fold dropped or added nothing big before
    them (a Conv -> BN model, its BN parameters dropped). stage_external then keeps the spill
    file as the output's data file and writes only the other tensors around them; otherwise it
    streams the spilled tensors, like the source's, into a new data file (same layout and bytes
    either way). close() removes the file unless stage_external took it: call it in any case.

    held=True (an output with no data file, from a model with none): no file; the values stay
    in memory as arrays, outside the proto, until write_streamed writes them inline. The model
    was in memory already, so this holds at most its folded weights more, under the copy that
    serializing it would make, and saves writing them to disk and reading them back."""

    def __init__(self, target: Path, min_bytes: int = INLINE_BELOW, to_data: bool = False,
                 held: bool = False) -> None:
        """to_data: the output has a data file, which this file may become (see above)."""
        self.held = held
        if held:
            self._fd, self.path = -1, target.with_name(f"{target.name}.held")
        else:
            with writing(target):
                self._fd, self.path = _temp(target.with_name(f"{target.name}.spill"))
        self._open = True
        self.size = 0
        self.min_bytes = min_bytes
        self.to_data = to_data
        self._refs: dict[int, tuple[TensorProto, ExternalRef | HeldRef]] = {}
        self._regions: list[tuple[int, int]] = []  # (offset, length) of every put, in order

    def takes(self, t: TensorProto, array) -> bool:
        """Does a new value for t go here? Tensors a data file (or the streamed write) takes,
        of the dtypes written directly."""
        return (array.nbytes >= self.min_bytes and self._open and _LITTLE
                and array.dtype in _DIRECT_BACK)

    def put(self, t: TensorProto, array, name: str) -> None:
        """t becomes numpy_helper.from_array(array, name) with its bytes in the spill file. The
        bytes never enter the proto: protobuf keeps whatever a message was given until the
        whole model is freed (setting and clearing raw_data would cost their size)."""
        array = np.ascontiguousarray(array)
        if self.held:
            _as_external(t, array, name, (self.path.name, 0, array.nbytes))
            self.size += array.nbytes
            self._refs[id(t)] = (t, HeldRef(array))
            return
        data = memoryview(array).cast("B")
        flat = array.reshape(-1).view(np.uint8)
        offset = -(-self.size // ALIGN) * ALIGN
        with writing(self.path):
            # Chunks of zeros stay holes, as _copy leaves them: the data file, if this becomes
            # it, is as sparse as one written by copying. The file is only ever appended to, so
            # a hole here reads as zeros.
            for k in range(0, len(data), _CHUNK):
                if flat[k:k + _CHUNK].any():
                    _pwrite_all(self._fd, data[k:k + _CHUNK], offset + k)
            if self.to_data:
                _start_writeback(self._fd, offset, len(data))
        _as_external(t, array, name, (self.path.name, offset, len(data)))
        self.size = offset + len(data)
        self._refs[id(t)] = (t, ExternalRef(self.path, offset, len(data)))
        self._regions.append((offset, len(data)))

    def ref(self, t: TensorProto) -> ExternalRef | HeldRef | None:
        got = self._refs.get(id(t))
        return got[1] if got is not None and got[0] is t else None

    def read(self, t: TensorProto):
        """The value put() gave t."""
        ref = self.ref(t)
        if isinstance(ref, HeldRef):
            return ref.array
        return np.frombuffer(_read(ref), _DIRECT[t.data_type]).reshape(tuple(t.dims))

    def give_up(self, live: set[tuple[int, int]], size: int) -> tuple[int, Path]:
        """The spill file (fd, path), now the caller's to close and remove, as the start of a
        data file `size` bytes long whose tensors `live` ((offset, length)) stay where they
        are: every other region put() wrote below `size` (a value replaced again, or dropped)
        reads as zeros again. No put() after this."""
        for offset, length in self._regions:
            if (offset, length) not in live:
                for k in range(offset, min(offset + length, size), _CHUNK):
                    _pwrite_all(self._fd, _ZEROS[:min(_CHUNK, size - k, offset + length - k)], k)
        fd, self._fd = self._fd, -1
        return fd, self.path

    def close(self) -> None:
        self._open = False
        self._refs.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def stage_external(
    model: onnx.ModelProto, target: Path, source: Path | None = None, spill: Spill | None = None
) -> StagedSave:
    """Move every tensor that goes_external into a temp data file beside target, in walk order,
    each at an offset aligned to ALIGN, and write a temp model pointing at it.

    Edits `model` in place. External tensors still pointing into the source model's files are
    streamed from them in chunks (zero runs become holes: a sparse file); small ones are read in.
    So are the tensors the fold put in `spill`.
    """
    with writing(data_path(target)):
        return _stage_external(model, target, source, spill)


def _stage_external(
    model: onnx.ModelProto, target: Path, source: Path | None = None, spill: Spill | None = None
) -> StagedSave:
    """stage_external without the OSError translation."""
    plan = []  # (tensor, its bytes' ExternalRef or None for raw_data, offset, length, spilled)
    size = 0
    for kind, t in tensors(model):
        if not goes_external(kind, t):
            if _is_ext(t):
                _read_in(t, _source_ref(t, source, spill))
            continue
        spilled = spill is not None and spill.ref(t) is not None
        ref = _source_ref(t, source, spill) if _is_ext(t) else None
        length = ref.length if ref is not None else len(t.raw_data)
        offset = -(-size // ALIGN) * ALIGN
        plan.append((t, ref, offset, length, spilled))
        size = offset + length
    # The folded tensors were written once, as the fold made them: where every one of them
    # already sits at its offset in this layout, the spill file becomes the data file and only
    # the others are written (not 2x the folded bytes, read back and written again).
    kept = [(offset, length) for _, ref, offset, length, spilled in plan
            if spilled and ref.offset == offset]
    in_place = bool(kept) and len(kept) == sum(p[4] for p in plan)
    if in_place:
        fd, data_temp = spill.give_up(set(kept), size)
    else:
        fd, data_temp = _temp(data_path(target))
    try:
        for t, ref, offset, length, spilled in plan:
            if not (spilled and in_place):  # else its bytes are there already
                if ref is not None:
                    _copy(ref, fd, offset)
                else:
                    data = t.raw_data
                    for k in range(0, length, _CHUNK):
                        _write_unless_zero(fd, data[k:k + _CHUNK], offset + k)
                    t.ClearField("raw_data")
                _start_writeback(fd, offset, length)
            del t.external_data[:]
            t.data_location = EXTERNAL
            for key, value in zip(_EXTERNAL_KEYS, (data_temp.name, offset, length)):
                entry = t.external_data.add()
                entry.key, entry.value = key, str(value)
            _test_pause("data-partial")
        os.ftruncate(fd, size)  # trailing zeros were skipped, not written (or spilled past it)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        _usual_mode(data_temp)
        # Only checked and run, never put in place (commit writes the model it renames): no
        # fsync, which on some file systems also waits for other files' writes.
        model_temp = write_temp(target, model_bytes(model), sync=False)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(data_temp)
        raise
    return StagedSave(model, target, model_temp, data_temp, len(plan), size)


def _source_ref(t: onnx.TensorProto, source: Path | None, spill: Spill | None = None
                ) -> ExternalRef:
    ref = spill.ref(t) if spill is not None else None
    if ref is not None:
        return ref
    if source is None:
        raise OnnxfoldError("<model>", "the source model file to read external data from",
                            f"tensor '{t.name}' stored as external data")
    return external_ref(t, source.parent, source)


def _set_location(model: onnx.ModelProto, location: str) -> None:
    for _, t in tensors(model):
        for e in t.external_data if _is_ext(t) else ():
            if e.key == "location":
                e.value = location


def _write_unless_zero(fd: int, chunk: bytes, pos: int) -> None:
    """Write chunk at pos, unless it is all zeros: the file then keeps a hole (reads as zeros)."""
    if chunk == (_ZEROS if len(chunk) == _CHUNK else bytes(len(chunk))):
        return
    _pwrite_all(fd, chunk, pos)


def _pwrite_all(fd: int, data, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


def _copy(ref: ExternalRef, dst: int, pos: int) -> None:
    """Stream ref's bytes to dst at pos in chunks, skipping the source's holes and zero runs.
    (Not copy_file_range: it would write the zero runs, which stay holes here.)"""
    src = _open(ref)
    try:
        start, end = ref.offset, ref.offset + ref.length
        at = start
        while at < end:
            data_at = _seek(src, at, "SEEK_DATA", at)
            if data_at >= end:
                break  # the rest is a hole
            hole_at = min(_seek(src, data_at, "SEEK_HOLE", end), end)
            if hole_at <= data_at:
                hole_at = end
            for k in range(data_at, hole_at, _CHUNK):
                n = min(_CHUNK, hole_at - k)
                chunk = os.pread(src, n, k)
                if len(chunk) != n:  # the file shrank since it was checked
                    raise OnnxfoldError(ref.file, f"{ref.length} bytes at offset {ref.offset}",
                                        f"the file ends at {k + len(chunk)}")
                _write_unless_zero(dst, chunk, pos + k - start)
            at = hole_at
    finally:
        os.close(src)


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing these bytes to disk now, not all at the fsync before the
    rename: the disk works while the fold computes the next weights (1.2 GB: 0.6 s less at the
    end). Linux's sync_file_range(SYNC_FILE_RANGE_WRITE), which does not wait; elsewhere nothing.
    The fsync still makes the file durable."""
    global _SYNC_FILE_RANGE
    if _SYNC_FILE_RANGE is None:
        _SYNC_FILE_RANGE = _sync_file_range()
    if _SYNC_FILE_RANGE and length:
        _SYNC_FILE_RANGE(fd, offset, length, 2)  # an error only means no head start


def _sync_file_range():
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        f = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return False
    f.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    f.restype = ctypes.c_int
    return f


_SYNC_FILE_RANGE = None  # the libc function, False where there is none; looked up once


def _seek(fd: int, at: int, whence: str, fallback: int) -> int:
    """lseek with SEEK_DATA / SEEK_HOLE where the OS and file system have them."""
    how = getattr(os, whence, None)
    if how is None:
        return fallback
    try:
        return os.lseek(fd, at, how)
    except OSError as e:
        if e.errno == errno.ENXIO and whence == "SEEK_DATA":
            return 1 << 62  # no data after `at`: the rest is a hole
        return fallback


# --- an inline model written with its big tensors streamed from files ------------------------


def fsync_file(path: Path) -> None:
    """Wait until path's bytes are on disk (before a rename puts it in place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_streamed(model: onnx.ModelProto, target: Path, refs, sync: bool = True) -> Path:
    """model_bytes(model) with every main-graph initializer that refs(t) gives an ExternalRef
    for written inline from that file, into a temp file beside target (as write_temp): the same
    bytes as inlining them first and serializing, without the model's weights in memory twice.
    sync=False: not fsynced, only on its way to disk (as write_temp).

    The proto is serialized as it is (those tensors as small external references) and their
    entries are spliced: protobuf writes fields in field-number order, so an initializer's
    inline form is its fields below raw_data (9), raw_data, then those above."""
    inits = list(model.graph.initializer)
    plan = [(t, refs(t)) for t in inits]
    body = memoryview(model_bytes(model))
    gfield = [f for f in _fields(body) if f[0] == 7]
    if len(gfield) != 1:
        raise ValueError("a model's bytes with one graph field")
    _, g_start, g_pay, g_end = gfield[0]
    graph = body[g_pay:g_end]
    entries = [f for f in _fields(graph) if f[0] == 5]
    if len(entries) != len(inits):
        raise ValueError("one initializer entry per initializer")
    pieces: list = []  # bytes-like, or (ExternalRef) streamed
    at = 0
    for (_, start, _, end), (t, ref) in zip(entries, plan):
        if ref is None:
            continue
        low, high = _inline_parts(t)
        head = low + _tag_len(9, ref.length)
        pieces += [graph[at:start], _tag_len(5, len(head) + ref.length + len(high)) + head, ref,
                   high]
        at = end
    pieces.append(graph[at:])
    g_len = sum(p.length if isinstance(p, ExternalRef | HeldRef) else len(p) for p in pieces)
    pieces = [body[:g_start], _tag_len(7, g_len), *pieces, body[g_end:]]
    fd, tmp = _temp(target)
    try:
        pos = 0
        for p in pieces:
            if isinstance(p, ExternalRef):
                _copy(p, fd, pos)
                _start_writeback(fd, pos, p.length)
                pos += p.length
            elif isinstance(p, HeldRef):
                _pwrite_all(fd, memoryview(p.array).cast("B"), pos)
                _start_writeback(fd, pos, p.length)
                pos += p.length
            else:
                _pwrite_all(fd, p, pos)
                pos += len(p)
        os.ftruncate(fd, pos)  # a trailing run of zeros was skipped, not written
        if sync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        _usual_mode(tmp)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def _inline_parts(t: TensorProto) -> tuple[bytes, bytes]:
    """An external tensor's inline encoding around raw_data: (fields below 9, fields above)."""
    low, high = TensorProto(), TensorProto()
    for f, v in t.ListFields():
        if f.name in ("external_data", "data_location"):
            continue
        dst = low if f.number < 9 else high
        if _repeated(f):
            getattr(dst, f.name).extend(v)
        elif f.type == f.TYPE_MESSAGE:
            getattr(dst, f.name).CopyFrom(v)
        else:
            setattr(dst, f.name, v)
    return model_bytes(low), model_bytes(high)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _tag_len(number: int, length: int) -> bytes:
    return _varint(number << 3 | 2) + _varint(length)


def _read_varint(buf, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return n, i


def _fields(buf) -> list[tuple[int, int, int, int]]:
    """The top-level fields of a serialized message: (number, start, payload start, end)."""
    out, i = [], 0
    while i < len(buf):
        start = i
        key, i = _read_varint(buf, i)
        kind = key & 7
        if kind == 0:
            _, i = _read_varint(buf, i)
            pay = i
        elif kind == 2:
            n, pay = _read_varint(buf, i)
            i = pay + n
        elif kind in (1, 5):
            pay = i
            i += 8 if kind == 1 else 4
        else:
            raise ValueError(f"wire type {kind}")
        out.append((key >> 3, start, pay, i))
    return out
