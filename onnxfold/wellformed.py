"""Is a parsed model well-formed enough to fold and run? Checked at load, before any tensor is
read: every problem is one OnnxfoldError naming the file, never a hang, an internal error or an
allocation the file's numbers ask for.

Narrower than onnx.checker on purpose (which also refuses, e.g., a graph with no name), and
wider where a fold could go wrong: versions the installed onnx knows, tensor data that matches
its dims, each name defined once before it is read (no cycles), operators with their schema's
input and output counts, and model-local functions that do not call themselves.
"""

from __future__ import annotations

import math
import os

import onnx
from onnx import AttributeProto, TensorProto

from onnxfold.errors import OnnxfoldError
from onnxfold.graph import DEFAULT_DOMAINS, SUBGRAPH_OPS, describe, subgraphs
from onnxfold.modelio import EXTERNAL, _nbytes, paused_gc, tensors

_PER_ELEMENT = {TensorProto.COMPLEX64: 2, TensorProto.COMPLEX128: 2}  # typed values
_PACKED = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
           if hasattr(TensorProto, n)}
_DTYPES = set(TensorProto.DataType.values())
_ATTR_TYPES = set(AttributeProto.AttributeType.values())
_VALID: set[tuple] = set()  # node signatures that passed _check_node
_RAW_ITEMSIZE = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.DOUBLE: 8,
                 TensorProto.BFLOAT16: 2, TensorProto.INT64: 8, TensorProto.INT32: 4,
                 TensorProto.INT8: 1, TensorProto.UINT8: 1, TensorProto.BOOL: 1}


def check(model: onnx.ModelProto, file: str | os.PathLike[str]) -> None:
    """Raise OnnxfoldError(file, ...) on the first thing that makes the model unsafe to use."""
    with paused_gc():
        _check_versions(model, file)
        for _, t in tensors(model):
            check_tensor(t, file)
        functions = _check_functions(model, file)
        _check_graph(model.graph, [], _imports(model.opset_import), functions, file)


def _imports(opsets) -> dict[str, int]:
    return {("" if o.domain == "ai.onnx" else o.domain): o.version for o in opsets}


def _check_versions(model: onnx.ModelProto, file) -> None:
    known_ir, known_opset = onnx.IR_VERSION, onnx.defs.onnx_opset_version()
    if model.ir_version > known_ir:
        raise OnnxfoldError(file, f"IR version at most {known_ir} (onnx {onnx.__version__})",
                            f"IR version {model.ir_version}")
    for opsets in (model.opset_import, *(f.opset_import for f in model.functions)):
        v = _imports(opsets).get("")
        if v is not None and not 1 <= v <= known_opset:
            raise OnnxfoldError(
                file, f"a default-domain opset from 1 to {known_opset} (onnx {onnx.__version__})",
                f"opset {v}",
            )


def check_tensor(t: TensorProto, file) -> None:
    """An inline tensor's data must be exactly what its dtype and dims say: checked on the
    numbers, so dims that multiply to 2^40 are refused without allocating anything."""
    if t.data_location == EXTERNAL:
        return  # modelio.external_ref checks it, against its file
    raw = _RAW_ITEMSIZE.get(t.data_type)
    if raw is not None and t.HasField("raw_data") and not t.HasField("segment"):
        # The common case, without building a message: raw bytes of a whole-byte dtype.
        dims = t.dims
        if all(d >= 0 for d in dims) and len(t.raw_data) == math.prod(dims) * raw:
            return
    name = TensorProto.DataType.Name(t.data_type) if t.data_type in _DTYPES else None
    if name is None or t.data_type == TensorProto.UNDEFINED:
        raise OnnxfoldError(file, "a tensor of a known dtype",
                            f"tensor '{t.name}' with data_type {t.data_type}")
    if t.HasField("segment"):
        raise OnnxfoldError(file, "a tensor in one piece (onnx reads no segments)",
                            f"tensor '{t.name}' with a segment")
    if any(d < 0 for d in t.dims):
        raise OnnxfoldError(file, "tensor dims >= 0", f"tensor '{t.name}' with dims {list(t.dims)}")
    n = math.prod(t.dims)
    what = f"tensor '{t.name}' ({name} {'x'.join(map(str, t.dims)) or 'scalar'})"
    if t.HasField("raw_data"):
        need = _nbytes(t)
        if need is None:
            raise OnnxfoldError(file, f"{name} data in its typed field", f"{what} in raw_data")
        if len(t.raw_data) != need:
            raise OnnxfoldError(file, f"{need} bytes of raw_data for {what}",
                                f"{len(t.raw_data)} bytes")
        return
    try:
        field = onnx.helper.tensor_dtype_to_field(t.data_type)
    except (KeyError, ValueError):
        raise OnnxfoldError(file, "a tensor of a dtype onnx can store",
                            f"{what} with no typed field for it") from None
    packed = t.data_type in _PACKED  # int32_data holds their packed bytes
    need = _nbytes(t) if packed else n * _PER_ELEMENT.get(t.data_type, 1)
    have = len(getattr(t, field))
    if have != need:
        raise OnnxfoldError(file, f"{need} values in {field} for {what}", f"{have}")


def _check_functions(model: onnx.ModelProto, file) -> dict[tuple[str, str, str], object]:
    """Model-local functions by (domain, name, overload): each defined once, none calling
    itself through any chain of calls (onnx requires it; expanding one would never end)."""
    functions: dict[tuple[str, str, str], onnx.FunctionProto] = {}
    for f in model.functions:
        key = (f.domain, f.name, f.overload)
        if key in functions:
            raise OnnxfoldError(file, "each model-local function defined once",
                                f"function '{_fname(key)}' twice")
        functions[key] = f
    keys = sorted(functions)
    deps = [sorted({keys.index(c) for n in _all_nodes(functions[k].node)
                    if (c := _key(n)) in functions}) for k in keys]
    loop = _cycle(deps)
    if loop:
        raise OnnxfoldError(file, "model-local functions that do not call themselves",
                            " -> ".join(f"'{_fname(keys[k])}'" for k in loop))
    model_imports = _imports(model.opset_import)
    for f in model.functions:
        where = f"function '{_fname((f.domain, f.name, f.overload))}'"
        imports = {**model_imports, **_imports(f.opset_import)}
        _check_nodes(list(f.node), [set(f.input)], set(f.output), imports, functions, file,
                     where)
    return functions


def _fname(key: tuple[str, str, str]) -> str:
    domain, name, overload = key
    return f"{domain}.{name}" + (f":{overload}" if overload else "")


def _key(n: onnx.NodeProto) -> tuple[str, str, str]:
    return (n.domain, n.op_type, n.overload)


def _all_nodes(nodes):
    """Nodes and the nodes of their subgraphs, at any depth."""
    stack = list(nodes)
    while stack:
        n = stack.pop()
        yield n
        for _, g in subgraphs(n):
            stack.extend(g.node)


def _check_graph(g: onnx.GraphProto, outer: list[set[str]], imports: dict[str, int], functions,
                 file, where: str = "") -> None:
    """Names in g: each defined once (SSA), every read defined before it (by an input, an
    initializer, an earlier node or an enclosing graph: `outer`, innermost last), outputs
    defined."""
    for vi in (*g.input, *g.output, *g.value_info):
        _check_type(vi.type, f"'{vi.name}'{_in(where)}", file)
    defined: set[str] = set()
    inits = [t.name for t in g.initializer] + [t.values.name for t in g.sparse_initializer]
    for name in inits:
        if name in defined:
            raise OnnxfoldError(file, "each initializer name once",
                                f"initializer '{name}' twice{_in(where)}")
        defined.add(name)
    for vi in g.input:
        if vi.name in defined and vi.name not in inits:
            raise OnnxfoldError(file, "each graph input name once",
                                f"input '{vi.name}' twice{_in(where)}")
        defined.add(vi.name)
    _check_nodes(list(g.node), [*outer, defined], {o.name for o in g.output}, imports,
                 functions, file, where)


def _check_type(tp: onnx.TypeProto, what: str, file) -> None:
    """Element types in a value's type must be dtypes onnx knows (0: not given)."""
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        et = getattr(tp, kind).elem_type
        if et not in _DTYPES:
            raise OnnxfoldError(file, "value types of known dtypes",
                                f"{what} with elem_type {et}")
    elif kind in ("sequence_type", "optional_type"):
        _check_type(getattr(tp, kind).elem_type, what, file)
    elif kind == "map_type":
        _check_type(tp.map_type.value_type, what, file)


def _in(where: str) -> str:
    return f" in {where}" if where else ""


def _check_nodes(nodes: list[onnx.NodeProto], scopes: list[set[str]], outputs: set[str],
                 imports: dict[str, int], functions, file, where: str) -> None:
    """The nodes of one graph or function body, in order. `scopes`: the names defined so far in
    each enclosing body, this one's last (it grows as the nodes are read). Shared, not copied:
    a copy per subgraph made 10,000 If nodes over 40,000 names take 30 s."""
    local = scopes[-1]
    writer: dict[str, int] = {}
    outs = [n.output[:] for n in nodes]  # read once: each read makes new str objects
    for i, names in enumerate(outs):
        for name in names:
            if not name:
                continue
            if name in local or name in writer:
                first = (f"{describe(nodes[writer[name]])}" if name in writer
                         else "an input or initializer")
                raise OnnxfoldError(
                    file, "each tensor name written once (SSA form)",
                    f"'{name}' written by {describe(nodes[i])} and by {first}{_in(where)}",
                )
            writer[name] = i
    outer = scopes[:-1]
    for i, (n, names) in enumerate(zip(nodes, outs)):
        nested = _check_node(n, imports, functions, file, where)
        for name in n.input:
            if name not in local and name and not any(name in scope for scope in outer):
                raise _unordered(nodes, writer, i, name, file, where)
        if nested:  # other nodes' attributes were checked against their schema: no graphs
            for attr, sg in subgraphs(n):
                _check_graph(sg, scopes, imports, functions, file,
                             f"{describe(n)} {attr}" + (f" ({where})" if where else ""))
        local.update(names)
    local.discard("")
    for name in sorted(o for o in outputs if not any(o in names for names in scopes)):
        raise OnnxfoldError(file, "every graph output defined in the graph",
                            f"output '{name}', which nothing defines{_in(where)}")


def _unordered(nodes, writer: dict[str, int], i: int, name: str, file, where: str):
    """The error for node i reading `name` before anything defines it."""
    n = nodes[i]
    if name not in writer:
        return OnnxfoldError(
            file, "every node input defined by an input, an initializer or an earlier node",
            f"{describe(n)} reads '{name}', which nothing defines{_in(where)}",
        )
    cycle = _cycle([sorted({writer[x] for x in m.input if x in writer}) for m in nodes])
    if cycle:
        flow = " -> ".join(describe(nodes[k]) for k in reversed(cycle))  # writer -> reader
        return OnnxfoldError(file, "a graph without cycles", f"a cycle: {flow}{_in(where)}")
    return OnnxfoldError(
        file, "nodes in topological order (as ONNX requires)",
        f"{describe(n)} reads '{name}' before {describe(nodes[writer[name]])} writes it"
        + _in(where),
    )


def _cycle(deps: list[list[int]]) -> list[int]:
    """One cycle in a graph given as each vertex's dependencies: its vertexes with the first
    repeated at the end, or [] if there is none. Iterative: no recursion limit to hit."""
    state = [0] * len(deps)  # 0 new, 1 on the current path, 2 done
    for start in range(len(deps)):
        if state[start]:
            continue
        path, stack = [start], [iter(deps[start])]
        state[start] = 1
        while stack:
            k = next(stack[-1], None)
            if k is None:
                state[path.pop()] = 2
                stack.pop()
            elif state[k] == 1:
                return [*path[path.index(k):], k]
            elif state[k] == 0:
                state[k] = 1
                path.append(k)
                stack.append(iter(deps[k]))
    return []


def _check_node(n: onnx.NodeProto, imports: dict[str, int], functions, file, where: str) -> bool:
    """Its domain imported, each attribute once, and for a known operator the input and output
    counts its schema allows. True if the node may have subgraphs (they are not checked here:
    the caller checks them, with their scopes)."""
    nd, op = n.domain, n.op_type
    domain = "" if nd == "ai.onnx" else nd
    if domain not in imports:
        raise OnnxfoldError(file, "an opset_import for the domain of every node",
                            f"{describe(n)} in domain '{nd}', which is not imported"
                            f"{_in(where)}")
    # Everything checked below depends only on this signature: a model's thousands of alike
    # nodes are checked against the schema once.
    key = (nd, op, n.overload)
    sig = (key, imports[domain], len(n.input), len(n.output),
           tuple([(a.name, a.type) for a in n.attribute]), bool(functions) and key in functions)
    if sig not in _VALID:
        _check_node_schema(n, domain, imports, functions, file, where)
        if len(_VALID) > 100_000:
            _VALID.clear()
        _VALID.add(sig)
    return op in SUBGRAPH_OPS or domain not in DEFAULT_DOMAINS


def _check_node_schema(n: onnx.NodeProto, domain: str, imports: dict[str, int], functions, file,
                       where: str) -> None:
    seen: set[str] = set()
    for a in n.attribute:
        if a.name in seen:
            raise OnnxfoldError(file, "each attribute of a node once",
                                f"{describe(n)} with '{a.name}' twice{_in(where)}")
        seen.add(a.name)
    if _key(n) in functions or domain not in DEFAULT_DOMAINS:
        return  # a custom operator: onnxfold does not fold it; onnxruntime may know it
    try:
        s = onnx.defs.get_schema(n.op_type, imports[domain], n.domain)
    except onnx.defs.SchemaError:
        raise OnnxfoldError(file, f"an operator of the default domain at opset {imports[domain]}",
                            f"{describe(n)}{_in(where)}") from None
    for a in n.attribute:
        spec = s.attributes.get(a.name)
        op = f"{n.op_type} (opset {s.since_version})"
        if spec is None:
            raise OnnxfoldError(file, f"attributes {op} defines",
                                f"{describe(n)} with '{a.name}'{_in(where)}")
        if a.type != int(spec.type.value):
            kind = AttributeProto.AttributeType.Name(a.type) if a.type in _ATTR_TYPES else a.type
            raise OnnxfoldError(file, f"'{a.name}' of type {spec.type.name} for {op}",
                                f"{describe(n)} with '{a.name}' of type {kind}{_in(where)}")
    for name in sorted(k for k, spec in s.attributes.items() if spec.required):
        if name not in seen:
            raise OnnxfoldError(file, f"attribute '{name}' for {n.op_type} (opset "
                                f"{s.since_version})", f"{describe(n)} without it{_in(where)}")
    if n.op_type == "Constant" and len(seen) != 1:  # its attributes are each optional
        raise OnnxfoldError(file, "a Constant with exactly one value attribute",
                            f"{describe(n)} with {len(seen)}{_in(where)}")
    for kind, count, lo, hi in (("inputs", len(n.input), s.min_input, s.max_input),
                                ("outputs", len(n.output), s.min_output, s.max_output)):
        if not lo <= count <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}" if hi < 2**31 - 1 else f"{lo} or more"
            kind = kind[:-1] if want == "1" else kind
            raise OnnxfoldError(
                file, f"{want} {kind} for {n.op_type} (opset {s.since_version})",
                f"{describe(n)} with {count}{_in(where)}",
            )

