"""An editable index over one ONNX graph: producers, consumers and constants of every value.

Plain protobuf underneath: untouched nodes, initializers and value_info keep their order, names
and bytes. "Who else uses this value" is `uses(name)`, counting reads from inside subgraphs.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper

from onnxfold.modelio import Spill, set_tensor, tensor_array

DEFAULT_DOMAINS = ("", "ai.onnx")
# Elementwise float ops a constant may be computed with (evaluated in the tensor's own dtype).
CONST_OPS = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Sqrt": np.sqrt,
    "Reciprocal": np.reciprocal,
    "Neg": np.negative,
    "Identity": np.array,
}


# Constant ops a computed constant may be built from, in a chain (a decomposed BN takes 3).
MAX_CONST_DEPTH = 64
_FLOAT_TYPES = (
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
)  # what numpy calls kind "f" (bfloat16 is not)


class Use(NamedTuple):
    node: int  # index into GraphIndex.nodes
    slot: int  # input position; -1 for a read from inside one of the node's subgraphs


def subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """(attribute name, graph) for every subgraph attribute of a node."""
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            yield a.name, a.g
        elif a.type == AttributeProto.GRAPHS:
            for g in a.graphs:
                yield a.name, g


def walk_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph nested in it, depth first."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        stack.extend(reversed([sg for n in g.node if may_have_subgraphs(n)
                               for _, sg in subgraphs(n)]))


# The default-domain ops with graph attributes; any other default-domain node has no subgraph,
# which saves scanning the attributes of every node of a big model.
SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def may_have_subgraphs(node: onnx.NodeProto) -> bool:
    return node.op_type in SUBGRAPH_OPS or node.domain not in DEFAULT_DOMAINS


def _names_read_by_subgraphs(node: onnx.NodeProto) -> set[str]:
    """Every name a node's subgraphs read; a superset of their outer-scope reads (conservative)."""
    names: set[str] = set()
    if not may_have_subgraphs(node):
        return names
    for _, sg in subgraphs(node):
        for g in walk_graphs(sg):
            names.update(i for n in g.node for i in n.input if i)
            names.update(o.name for o in g.output)
    return names


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name anywhere in the model, subgraphs and functions included."""
    names: set[str] = set()
    graphs = list(walk_graphs(model.graph))
    for f in model.functions:
        names.update(f.input)
        names.update(f.output)
        for n in f.node:
            names.update(n.input)
            names.update(n.output)
            for _, sg in subgraphs(n):
                graphs.extend(walk_graphs(sg))
    for g in graphs:
        for vis in (g.input, g.output, g.value_info):
            names.update(v.name for v in vis)
        names.update(t.name for t in g.initializer)
        names.update(t.values.name for t in g.sparse_initializer)
        for n in g.node:
            names.update(n.input)
            names.update(n.output)
    names.discard("")
    return names


def default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in DEFAULT_DOMAINS:
            return o.version
    return 0


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def describe(node: onnx.NodeProto) -> str:
    """How reports name a node: its name, or its op and first output when it has none."""
    if node.name:
        return f"{node.op_type} '{node.name}'"
    out = node.output[0] if node.output else "?"
    return f"{node.op_type} (unnamed, output '{out}')"


class GraphIndex:
    """Producers, uses and constants of one graph, with the edits the fold rules need."""

    def __init__(
        self,
        model: onnx.ModelProto,
        base_dir: str | None = None,
        body: onnx.GraphProto | onnx.FunctionProto | None = None,
        outer: GraphIndex | None = None,
        root: GraphIndex | None = None,
        spill: Spill | None = None,
    ) -> None:
        """Index the main graph, or `body`: a subgraph (names of the enclosing graphs, `outer`,
        are visible in it) or a model-local function. Indexes of one model share the main
        graph's (`root`'s) name set and ranks. `spill`: where new values of external tensors
        go (see modelio.Spill); None keeps them in memory."""
        self.model = model
        self.base_dir = base_dir  # where external data lives (the model file's folder)
        self.graph = model.graph if body is None else body
        self.outer = outer
        self.is_function = isinstance(self.graph, onnx.FunctionProto)
        self.is_main = body is None
        self.opset = default_opset(body if self.is_function else model) or default_opset(model)
        self.released: set[str] = set()  # outer names this body no longer reads
        if self.is_function:
            self.outputs, self.inputs = set(self.graph.output), set(self.graph.input)
            self.initializers: dict[str, onnx.TensorProto] = {}
        else:
            self.outputs = {o.name for o in self.graph.output}
            self.inputs = {i.name for i in self.graph.input}
            self.initializers = {t.name: t for t in self.graph.initializer}
        share = outer or root
        self._names = share.names if share is not None else None
        self._ranks = share._ranks if share is not None else None
        self.spill = share.spill if share is not None else spill
        self._computed: dict[str, np.ndarray] = {}  # values of computed constants
        self._removed_nodes: set[int] = set()
        self._new_constants: list[int] = []  # Constant nodes added to a function body
        self._dropped: set[str] = set()  # names whose initializer / value_info go away
        self._renamed: dict[str, str] = {}  # old tensor name -> new, for value_info
        self.nodes = list(self.graph.node)
        self._reindex()

    def _add_uses(self, i: int, n: onnx.NodeProto) -> None:
        for slot, name in enumerate(n.input):
            if name:
                self._uses[name].append(Use(i, slot))
        if may_have_subgraphs(n):
            for name in sorted(_names_read_by_subgraphs(n)):
                self._uses[name].append(Use(i, -1))

    # --- queries -------------------------------------------------------------------------
    def uses(self, name: str) -> list[Use]:
        return self._uses.get(name, [])

    def is_used_outside(self, name: str, node: int, slot: int) -> bool:
        """Does anything but (node, slot) read the value, or is it a graph output?"""
        return name in self.outputs or any(u != (node, slot) for u in self.uses(name))

    def other_user(self, name: str, node: int, slot: int) -> str:
        """Describe one reader of name other than (node, slot), for refusal messages."""
        if name in self.outputs:
            return "it is a graph output"
        for u in self.uses(name):
            if u != (node, slot):
                where = " inside a subgraph" if u.slot == -1 else ""
                return f"{describe(self.nodes[u.node])} also reads it{where}"
        return "nothing else reads it"

    def overridable(self, name: str) -> bool:
        # Initializers listed as graph inputs can be overridden at run time from IR 4 on;
        # before IR 4 every initializer had to be listed and ORT treats them as constants.
        return (
            self.is_main and name in self.initializers and name in self.inputs
            and self.model.ir_version >= 4
        )

    def is_local(self, name: str) -> bool:
        """Is name defined in this body (not in an enclosing graph)?"""
        return name in self.initializers or name in self.inputs or name in self.producer

    def _from_outer(self, name: str) -> bool:
        return self.outer is not None and not self.is_local(name)

    def why_not_constant(self, name: str, _depth: int = 0, _memo: dict | None = None) -> str | None:
        """None if name is a constant we may read and fold; otherwise why not.

        Computed constants are looked through at most MAX_CONST_DEPTH ops deep, each name once
        per question: a chain of 3000 Identity ops hit the recursion limit, and Adds that each
        read the previous one twice made 2^depth calls."""
        memo = {} if _memo is None else _memo
        if name not in memo:
            memo[name] = self._why_not_constant(name, _depth, memo)
        return memo[name]

    def _why_not_constant(self, name: str, depth: int, memo: dict) -> str | None:
        if self._from_outer(name):
            return self.outer.why_not_constant(name)
        if name in self.initializers:
            if self.overridable(name):
                return f"'{name}' is an overridable initializer (also a graph input)"
            return None
        if name in self.inputs:
            kind = "function" if self.is_function else "graph" if self.is_main else "subgraph"
            return f"'{name}' is a {kind} input"
        i = self.producer.get(name)
        if i is None:
            return f"'{name}' is not defined in this graph"
        n = self.nodes[i]
        if n.op_type == "Constant" and n.domain in DEFAULT_DOMAINS:
            if any(a.ref_attr_name for a in n.attribute):
                return f"'{name}' is a Constant set from an attribute of the function's caller"
            kinds = {a.name for a in n.attribute}
            if kinds & {"value", "value_float", "value_floats"}:
                return None
            return f"'{name}' is a Constant with a {'/'.join(sorted(kinds))} value"
        if n.op_type in CONST_OPS and depth >= MAX_CONST_DEPTH:
            return f"'{name}' is computed through more than {MAX_CONST_DEPTH} constant operations"
        if self._computed_constant(n, depth + 1, memo):
            return None
        return f"'{name}' is computed by {describe(n)}"

    def _computed_constant(self, n: onnx.NodeProto, depth: int = 0, memo: dict | None = None
                           ) -> bool:
        """Is n an elementwise float op over constants, e.g. Sqrt(Add(var, eps)) in a BN that an
        exporter decomposed? Checked recursively over its inputs."""
        if n.op_type not in CONST_OPS or n.domain not in DEFAULT_DOMAINS or len(n.output) != 1:
            return False
        if not n.input or not all(n.input):
            return False
        memo = {} if memo is None else memo
        return all(self.why_not_constant(x, depth, memo) is None and self._is_float(x)
                   for x in n.input)

    def _is_float(self, name: str) -> bool:
        """Is the constant a float tensor? Asked of an initializer without reading its data."""
        if name in self.initializers:
            return self.initializers[name].data_type in _FLOAT_TYPES
        if self._from_outer(name):
            return self.outer._is_float(name)
        return self.value(name).dtype.kind == "f"

    def is_stored(self, name: str) -> bool:
        """Is the constant stored as a tensor (initializer or Constant node) we may rewrite?"""
        if name in self.initializers:
            return True
        i = self.producer.get(name)
        return i is not None and self.nodes[i].op_type == "Constant"

    def value(self, name: str) -> np.ndarray:
        """The value of a constant (check why_not_constant first)."""
        if self._from_outer(name):
            return self.outer.value(name)
        if name in self.initializers:
            t = self.initializers[name]
            if self.spill is not None and self.spill.ref(t) is not None:
                return self.spill.read(t)
            return tensor_array(t, self.base_dir)
        n = self.nodes[self.producer[name]]
        if n.op_type in CONST_OPS:
            if name not in self._computed:
                # numpy's float ops are IEEE correctly rounded, as onnxruntime's are: same bits.
                args = (self.value(x) for x in n.input)
                with np.errstate(all="ignore"):  # an inf here is refused as not-finite
                    self._computed[name] = np.asarray(CONST_OPS[n.op_type](*args))
            return self._computed[name]
        for a in n.attribute:
            if a.name == "value":
                return tensor_array(a.t, self.base_dir)
            if a.name == "value_float":
                return np.array(a.f, dtype=np.float32)
            if a.name == "value_floats":
                return np.array(a.floats, dtype=np.float32)
        raise KeyError(name)

    def infer_ranks(self) -> None:
        """Learn tensor ranks model-wide from declared types and onnx shape inference; call
        before the first edit anywhere in the model (subgraph indexes share the result)."""
        ranks: dict[str, int] = {}
        graphs = list(walk_graphs(self.model.graph))
        with contextlib.suppress(Exception):  # best effort: an unknown rank is refused
            graphs += walk_graphs(onnx.shape_inference.infer_shapes(self.model).graph)
        infos = [vi for g in graphs for vi in (*g.input, *g.output, *g.value_info)]
        infos += [vi for f in self.model.functions for vi in getattr(f, "value_info", ())]
        for vi in infos:  # names are unique model-wide, subgraphs and functions included
            tt = vi.type.tensor_type
            if vi.type.WhichOneof("value") == "tensor_type" and tt.HasField("shape"):
                ranks.setdefault(vi.name, len(tt.shape.dim))
        for g in graphs:
            for t in g.initializer:
                ranks.setdefault(t.name, len(t.dims))
        self._ranks = ranks

    def rank(self, name: str) -> int | None:
        if self._ranks is None:
            raise RuntimeError("infer_ranks() was not called before the first edit")
        return self._ranks.get(name)

    @property
    def names(self) -> set[str]:
        if self._names is None:
            self._names = all_names(self.model)
        return self._names

    def fresh_name(self, base: str) -> str:
        """A tensor name used nowhere in the model (subgraphs and functions included)."""
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    # --- edits ---------------------------------------------------------------------------
    def set_value(self, name: str, array: np.ndarray) -> None:
        """Replace a constant's value in place (only when nothing else reads it)."""
        if name in self.initializers:
            t = self.initializers[name]
            if self.spill is not None and self.is_main and self.spill.takes(t, array):
                self.spill.put(t, array, name)
            else:
                set_tensor(t, array, name)
            return
        n = self.nodes[self.producer[name]]
        del n.attribute[:]
        tensor = numpy_helper.from_array(array, name)
        n.attribute.append(onnx.helper.make_attribute("value", tensor))

    def add_initializer(self, base: str, array: np.ndarray) -> str:
        """A new constant tensor in this body (a Constant node in a function, which has no
        initializers)."""
        name = self.fresh_name(base)
        if self.is_function:
            tensor = numpy_helper.from_array(array, name)
            node = onnx.helper.make_node("Constant", [], [name], value=tensor)
            self.nodes.append(node)
            self.producer[name] = len(self.nodes) - 1
            self._new_constants.append(len(self.nodes) - 1)
            return name
        tensor = self.graph.initializer.add()
        set_tensor(tensor, array, name)
        self.initializers[name] = tensor
        if self.is_main and self.model.ir_version < 4:  # before IR 4 initializers are inputs
            self.graph.input.append(
                onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims))
            )
            self.inputs.add(name)
        return name

    def set_input(self, node: int, slot: int, name: str) -> None:
        n = self.nodes[node]
        old = n.input[slot] if slot < len(n.input) else ""
        if old:
            self._uses[old].remove(Use(node, slot))
        while len(n.input) <= slot:
            n.input.append("")
        n.input[slot] = name
        self._uses[name].append(Use(node, slot))

    def rename_output(self, node: int, old: str, new: str) -> None:
        """Node `node` now writes `new` instead of `old` (whose readers are gone)."""
        n = self.nodes[node]
        n.output[list(n.output).index(old)] = new
        del self.producer[old]
        self.producer[new] = node
        self._renamed[old] = new
        self._dropped.discard(new)

    def remove_node(self, node: int) -> None:
        n = self.nodes[node]
        for slot, name in enumerate(n.input):
            if name:
                self._uses[name].remove(Use(node, slot))
        for name in _names_read_by_subgraphs(n):
            self._uses[name].remove(Use(node, -1))
        for name in n.output:
            if name and self.producer.get(name) == node:
                del self.producer[name]
                self._dropped.add(name)  # e.g. BatchNormalization's unused training outputs
        self._removed_nodes.add(node)

    def drop_if_unused(self, name: str) -> None:
        """Remove a constant nothing reads any more (initializer or Constant node); an enclosing
        graph's constant is noted in `released` for that graph to drop."""
        if not name or self.uses(name) or name in self.outputs:
            return
        if self._from_outer(name):
            self.released.add(name)
            return
        if name in self.initializers:
            if self.overridable(name):
                return
            del self.initializers[name]
            self._dropped.add(name)
        elif name in self.producer:
            i = self.producer[name]
            n = self.nodes[i]
            if n.op_type == "Constant":
                self.remove_node(i)
            elif n.op_type in CONST_OPS and i not in self._removed_nodes:
                inputs = list(n.input)
                self.remove_node(i)  # a computed constant nothing reads: so may be its inputs
                for x in inputs:
                    self.drop_if_unused(x)

    def commit(self, reindex: bool = True) -> None:
        """Write the edits back into the graph (or function), keeping the order of everything
        kept. With reindex (the default) the index stays valid for further queries and edits;
        without it the index is done (it saves a pass over a big graph)."""
        g = self.graph
        if self._new_constants:  # a function body: its new Constant nodes go first
            new = [self.nodes[i] for i in self._new_constants]
            rest = [
                n for i, n in enumerate(self.nodes)
                if i not in self._removed_nodes and i not in self._new_constants
            ]
            del g.node[:]
            g.node.extend(new + rest)
        elif self._removed_nodes:
            gone = {id(self.nodes[i]) for i in self._removed_nodes}
            _filter(g.node, lambda n: id(n) not in gone)
        self._removed_nodes, self._new_constants = set(), []
        if self._dropped and not self.is_function:
            dropped = self._dropped
            _filter(g.initializer, lambda t: t.name not in dropped)
            if self.is_main and self.model.ir_version < 4:
                _filter(g.input, lambda v: v.name not in dropped)
                self.inputs -= dropped
        value_info = getattr(g, "value_info", None)
        if value_info is not None:
            prune_value_info(value_info, self._dropped, self._renamed, self.outputs)
        self._dropped = set()
        self._renamed = {}
        # Repeated-field edits copy messages: index the live ones.
        self.nodes = list(g.node)
        if not self.is_function:
            self.initializers = {t.name: t for t in g.initializer}
        if reindex:
            self._reindex()

    def _reindex(self) -> None:
        self.producer = {}
        self._uses = defaultdict(list)
        for i, n in enumerate(self.nodes):
            self._add_uses(i, n)
            for name in n.output:
                if name:
                    self.producer[name] = i


def prune_value_info(value_info, dropped: set[str], renamed: dict[str, str],
                     outputs: set[str]) -> None:
    """value_info after a fold: entries of dropped names go; a renamed tensor's entry takes its
    new name, unless that name has one already (or is a graph output: its type is there)."""
    dropped_or_renamed = dropped | set(renamed)
    if not dropped_or_renamed:
        return
    vis = list(value_info)  # alive while their ids are compared below
    have = {v.name for v in vis} | outputs
    kept_vi = set()
    for v in vis:
        if v.name in renamed and renamed[v.name] not in have:
            v.name = renamed[v.name]  # the same tensor, now under its new name
            have.add(v.name)
            kept_vi.add(id(v))
        elif v.name not in dropped_or_renamed:
            kept_vi.add(id(v))
    _filter(value_info, lambda v: id(v) in kept_vi)


def _filter(repeated, keep) -> None:
    """Remove the elements keep() rejects from a repeated message field, keeping the order of
    the rest (see remove)."""
    items = list(repeated)  # the wrappers, alive (so their ids stay theirs) until it is done
    remove(repeated, {id(x) for x in items if not keep(x)})


def remove(repeated, gone: set[int]) -> None:
    """Remove the elements whose id() is in `gone` from a repeated message field, keeping the
    order of the rest. In place: a stable sort moves the kept ones to the front (protobuf moves
    pointers) and the tail is cut; rebuilding the field deep-copied every kept node and
    initializer, which doubled a big model's memory. The caller keeps the removed elements'
    wrappers alive (so their ids stay theirs) until this returns."""
    if gone:
        n = len(repeated)
        repeated.sort(key=lambda x: id(x) in gone)
        del repeated[n - len(gone):]
