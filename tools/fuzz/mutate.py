"""Structure-aware mutation of protobuf messages, driven by a hypothesis `data` object.

A random walk picks one message anywhere in the model (a node, a tensor, a subgraph's value
info...) and one of its fields, then breaks it the way real files break: a number set to an
edge value, a name swapped for another name of the model, bytes cut or grown, a repeated field
with an element dropped, duplicated or moved. Several such edits per input. Random bytes find
little past protobuf's decoder; this reaches the loader's checks, the fold rules and onnxruntime.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor as F
from google.protobuf.message import Message
from hypothesis import strategies as st

INTS = [0, 1, -1, 2, 3, 7, 64, 255, 2**31 - 1, 2**31, -(2**31), 2**32, 2**40, 2**62, 2**63 - 1,
        -(2**63)]
FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-45, 1e-8, 65504.0, 65520.0, 3.4e38, 1e300, float("inf"),
          float("-inf"), float("nan")]
_INT_TYPES = {F.TYPE_INT32: 32, F.TYPE_SINT32: 32, F.TYPE_SFIXED32: 32, F.TYPE_INT64: 64,
              F.TYPE_SINT64: 64, F.TYPE_SFIXED64: 64, F.TYPE_UINT32: -32, F.TYPE_FIXED32: -32,
              F.TYPE_UINT64: -64, F.TYPE_FIXED64: -64}


def messages(msg: Message, out: list[Message] | None = None) -> list[Message]:
    """msg and every message nested in it, depth first."""
    out = [] if out is None else out
    out.append(msg)
    for field, value in msg.ListFields():
        if field.type == F.TYPE_MESSAGE:
            for sub in (value if _repeated(field) else [value]):
                messages(sub, out)
    return out


def names(msg: Message) -> list[str]:
    """Every string value in the message tree: names to swap in for other names."""
    found: set[str] = set()
    for m in messages(msg):
        for field, value in m.ListFields():
            if field.type == F.TYPE_STRING:
                found.update(value if _repeated(field) else [value])
    return sorted(found)


def _repeated(field) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 6 (no .label in 7)
        return field.is_repeated
    return field.label == F.LABEL_REPEATED


def _fit(v: int, bits: int) -> int:
    """v as a protobuf integer of that width (negative bits: unsigned) accepts it."""
    if bits < 0:
        return v % (1 << -bits)
    half = 1 << (bits - 1)
    return (v + half) % (1 << bits) - half


def _value(data, field, pool: list[str], old):
    """A new value for one (scalar) field."""
    t = field.type
    if t in _INT_TYPES:
        v = data.draw(st.one_of(st.sampled_from(INTS), st.integers(-5, 70),
                                st.just(old + 1 if isinstance(old, int) else 1)))
        return _fit(v, _INT_TYPES[t])
    if t == F.TYPE_ENUM:  # closed enums: protobuf itself refuses other numbers
        return data.draw(st.sampled_from([v.number for v in field.enum_type.values]))
    if t == F.TYPE_BOOL:
        return not old
    if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return data.draw(st.one_of(st.sampled_from(FLOATS), st.floats(-10, 10)))
    if t == F.TYPE_STRING:
        return data.draw(st.one_of(st.sampled_from(pool or [""]), st.just(""),
                                   st.text(max_size=8), st.just((old or "x") * 2)))
    if t == F.TYPE_BYTES:
        old = old or b""
        how = data.draw(st.sampled_from(["cut", "grow", "flip", "empty", "random"]))
        if how == "cut":
            return old[: data.draw(st.integers(0, max(len(old) - 1, 0)))]
        if how == "grow":
            return old + bytes(data.draw(st.sampled_from([1, 2, 4, 8, 1024])))
        if how == "flip" and old:
            k = data.draw(st.integers(0, len(old) - 1))
            return old[:k] + bytes([old[k] ^ data.draw(st.integers(1, 255))]) + old[k + 1:]
        if how == "random":
            return data.draw(st.binary(max_size=64))
        return b""
    return old


def mutate_once(data, root: Message, pool: list[str]) -> str:
    """One edit somewhere in root; returns what it did (for the failure report)."""
    target = data.draw(st.sampled_from(messages(root)))
    fields = list(target.DESCRIPTOR.fields)
    field = data.draw(st.sampled_from(fields))
    where = f"{target.DESCRIPTOR.name}.{field.name}"
    if _repeated(field):
        items = getattr(target, field.name)
        n = len(items)
        ops = ["append"] + (["drop", "dup", "move", "edit", "clear"] if n else [])
        op = data.draw(st.sampled_from(ops))
        if op == "clear":
            del items[:]
        elif op == "drop":
            del items[data.draw(st.integers(0, n - 1))]
        elif field.type == F.TYPE_MESSAGE:
            if op == "dup":
                items.add().CopyFrom(items[data.draw(st.integers(0, n - 1))])
            elif op == "move":
                i, j = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, n - 1))
                a, b = type(items[i])(), type(items[j])()
                a.CopyFrom(items[i])
                b.CopyFrom(items[j])
                items[i].CopyFrom(b)
                items[j].CopyFrom(a)
            else:  # append an empty element, or edit: the walk may pick it next time
                items.add()
        else:
            if op in ("dup", "move", "edit"):
                k = data.draw(st.integers(0, n - 1))
                items[k] = items[k] if op == "dup" else _value(data, field, pool, items[k])
                if op == "dup":
                    items.append(items[k])
            else:
                items.append(_value(data, field, pool, None))
        return f"{where}: {op}"
    if field.type == F.TYPE_MESSAGE:
        if target.HasField(field.name) and data.draw(st.booleans()):
            target.ClearField(field.name)
            return f"{where}: clear"
        getattr(target, field.name).SetInParent()
        return f"{where}: set"
    old = getattr(target, field.name)
    setattr(target, field.name, _value(data, field, pool, old))
    return f"{where}: {old!r} -> {getattr(target, field.name)!r}"[:200]


def mutate(data, root: Message, max_edits: int = 4) -> list[str]:
    """1 to max_edits edits in place; the log of what was done."""
    pool = names(root)
    return [mutate_once(data, root, pool) for _ in range(data.draw(st.integers(1, max_edits)))]
