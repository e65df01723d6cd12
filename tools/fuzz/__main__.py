"""Fuzz onnxfold: `python -m tools.fuzz [--examples N | --seconds S] [--target T ...]`.

hypothesis generates the inputs (structure-aware mutations of tests/corpus/*.onnx, byte-level
damage, .npz files); `--engine atheris` feeds the same strategies from atheris's
coverage-guided engine instead (pip install atheris; extra arguments go to libFuzzer).
The process's address space is limited (--memory), so an input that asks for terabytes fails
with MemoryError, a finding, instead of taking the machine down. Exit 1 on the first finding,
with the input that shows it (shrunk by hypothesis); exit 0 with counts per target otherwise.
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import sys
import time
import traceback
import zipfile

import numpy as np
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import seed as hseed
from hypothesis import strategies as st


def strategies_and_tests(targets, mutate):
    """One function per target, drawing its input from a hypothesis `data` object."""
    seeds = targets.seed_models()
    blobs = [m.SerializeToString() for m in seeds]

    def mutated(data):
        m = type(seeds[0])()
        m.CopyFrom(data.draw(st.sampled_from(seeds)))
        note(mutate.mutate(data, m))
        try:
            return m, m.SerializeToString()
        except Exception:  # protobuf refuses some edits at serialization (invalid UTF-8)
            return m, None

    def onnx_mutated(data):
        _, blob = mutated(data)
        if blob is not None:
            targets.onnx_bytes(blob)

    def onnx_damaged(data):
        blob = data.draw(st.sampled_from(blobs))
        how = data.draw(st.sampled_from(["truncate", "flip", "insert", "random"]))
        if how == "truncate":
            blob = blob[: data.draw(st.integers(0, len(blob)))]
        elif how == "flip":
            for k in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=8)):
                blob = blob[:k] + bytes([blob[k] ^ data.draw(st.integers(1, 255))]) + blob[k + 1:]
        elif how == "insert":
            k = data.draw(st.integers(0, len(blob)))
            blob = blob[:k] + data.draw(st.binary(min_size=1, max_size=16)) + blob[k:]
        else:
            blob = data.draw(st.binary(max_size=2048))
        targets.onnx_bytes(blob, parity=False)

    def fuse_file(data):
        m, _ = mutated(data)
        side = bytearray()
        for t in [t for t in m.graph.initializer if t.HasField("raw_data")]:
            if data.draw(st.booleans()):  # external, in m.onnx.data, as onnx saves it
                offset = len(side)
                side += t.raw_data
                t.ClearField("raw_data")
                t.data_location = 1
                for k, v in (("location", "m.onnx.data"), ("offset", str(offset)),
                             ("length", str(len(side) - offset))):
                    e = t.external_data.add()
                    e.key, e.value = k, v
        note(mutate.mutate(data, m, max_edits=2))  # and break some of it
        try:
            blob = m.SerializeToString()
        except Exception:
            return
        targets.fuse_cli(blob, bytes(side))

    def npz(data):
        arrays = {f"a{k}": np.zeros(data.draw(st.lists(st.integers(0, 4), max_size=3)),
                                    data.draw(st.sampled_from(["<f4", "<i8", "|b1", "<f2"])))
                  for k in range(data.draw(st.integers(0, 2)))}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        blob = buf.getvalue()
        edits = data.draw(st.lists(st.tuples(st.integers(0, max(len(blob) - 1, 0)),
                                             st.integers(0, 255)), max_size=6))
        for k, v in edits:
            if k < len(blob):
                blob = blob[:k] + bytes([v]) + blob[k + 1:]
        if data.draw(st.booleans()):
            blob = blob[: data.draw(st.integers(0, len(blob)))]
        if data.draw(st.booleans()):  # a hand-made header: shapes and dtypes of any size
            blob = _npy_zip(data)
        targets.npz_bytes(blob)

    def darknet_cfg(data):
        lines = targets.SEED_CFG.decode().split("\n")
        for _ in range(data.draw(st.integers(1, 4))):
            _edit_cfg_line(data, lines)
        text = "\n".join(lines).encode()
        if data.draw(st.integers(0, 9)) == 0:  # bytes no text editor would write
            k = data.draw(st.integers(0, len(text)))
            text = text[:k] + data.draw(st.sampled_from(CFG_BYTES)) + text[k:]
        targets.darknet(text, None, data.draw(st.booleans()),
                        data.draw(st.sampled_from(["darknet", "raw"])))

    def darknet_weights(data):
        floats = np.random.default_rng(0).uniform(0.5, 1.5, WEIGHTS_FLOATS).astype("<f4")
        major, minor, rev = (data.draw(st.sampled_from([0, 1, 2, 999, 1000, -1, 2**31 - 1,
                                                        -(2**31)])) for _ in range(3))
        head = np.array([major, minor, rev], "<i4").tobytes()
        head += data.draw(st.sampled_from([b"\0" * 8, b"\0" * 4, b"\xff" * 8]))
        blob = bytearray(head + floats.tobytes())
        how = data.draw(st.sampled_from(["as-is", "cut", "grow", "flip", "nan"]))
        if how == "cut":
            del blob[data.draw(st.integers(0, len(blob))):]
        elif how == "grow":
            blob += data.draw(st.binary(min_size=1, max_size=9))
        elif how in ("flip", "nan"):
            k = data.draw(st.integers(0, len(blob) - 4))
            blob[k:k + 4] = (b"\x00\x00\xc0\x7f" if how == "nan"
                             else bytes(x ^ 0xFF for x in blob[k:k + 4]))
        targets.darknet(WEIGHTS_CFG, bytes(blob), data.draw(st.booleans()), "raw")

    return {"onnx-mutated": onnx_mutated, "onnx-damaged": onnx_damaged,
            "fuse-file": fuse_file, "npz": npz, "darknet-cfg": darknet_cfg,
            "darknet-weights": darknet_weights}


# A conv 3->4 (3x3, BN) and a conv 4->2 (1x1): 134 floats after the header.
WEIGHTS_CFG = (b"[net]\nwidth=8\nheight=8\nchannels=3\n\n[convolutional]\nbatch_normalize=1\n"
               b"filters=4\nsize=3\npad=1\nactivation=leaky\n\n[convolutional]\nfilters=2\n"
               b"size=1\nactivation=linear\n")
WEIGHTS_FLOATS = 134
CFG_VALUES = ["0", "1", "-1", "2", "3", "7", "-2", "-99", "2147483648", "2000000000", "1e9", "abc",
              "1,2", ",", "nan", "inf", "0x10", "+3", "1.5", "99999999999999999999"]
CFG_LINES = ["groups=2", "stride=0", "layers=5", "layers=-99", "layers=", "batch_normalize=0",
             "pad=0", "padding=7", "foo=1", "[bogus]", "[route]", "[convolutional]", "[net]",
             "[maxpool]", "[reorg]", "[region]", "activation=mish", "dilation=2", "size=0",
             "filters=2000000000", "anchors=", "num=0", "classes=-1", "=", "[", "[]", "#x",
             "\tsize = 3 ", "width=0", "stride_x=2", "coords=5", "softmax=0", "size=2"]
CFG_BYTES = [b"\xff", b"\xef\xbb\xbf", b"\r", b"\x00", b"\xe9", b"\t", b"\r\n"]


def _edit_cfg_line(data, lines: list[str]) -> None:
    k = data.draw(st.integers(0, len(lines) - 1))
    how = data.draw(st.sampled_from(["value", "drop", "dup", "insert", "swap"]))
    if how == "value" and "=" in lines[k]:
        lines[k] = lines[k].split("=")[0] + "=" + data.draw(st.sampled_from(CFG_VALUES))
    elif how == "drop":
        del lines[k]
    elif how == "dup":
        lines.insert(k, lines[k])
    elif how == "insert":
        lines.insert(k, data.draw(st.sampled_from(CFG_LINES)))
    else:
        j = data.draw(st.integers(0, len(lines) - 1))
        lines[k], lines[j] = lines[j], lines[k]


def _npy_zip(data) -> bytes:
    shape = tuple(data.draw(st.lists(st.sampled_from([0, 1, 3, 2**20, 2**31, 2**40]),
                                     max_size=3)))
    descr = data.draw(st.sampled_from(["<f4", "<f8", "|O", "<U3", "|V4", ">i4", "<c8"]))
    header = repr({"descr": descr, "fortran_order": data.draw(st.booleans()), "shape": shape})
    header = header.encode().ljust(118) + b"\n"
    payload = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    payload += data.draw(st.binary(max_size=64))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(data.draw(st.sampled_from(["X.npy", "X", "../X.npy"])), payload)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--target", action="append", help="run only these targets (repeatable)")
    p.add_argument("--examples", type=int, help="inputs per target (deterministic with --seed)")
    p.add_argument("--seconds", type=float, help="total time budget, split over the targets")
    p.add_argument("--seed", type=int, help="hypothesis seed (default: random)")
    p.add_argument("--memory", type=int, default=4096, help="address space limit, MiB")
    p.add_argument("--engine", choices=["hypothesis", "atheris"], default="hypothesis")
    args, rest = p.parse_known_args(argv)
    limit = args.memory << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    if args.engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=["onnxfold"]):
            from tools.fuzz import mutate, targets
    else:
        from tools.fuzz import mutate, targets
    targets.quiet()
    tests = strategies_and_tests(targets, mutate)
    names = args.target or list(tests)
    unknown = set(names) - set(tests)
    if unknown:
        p.error(f"unknown target(s) {sorted(unknown)}; targets: {', '.join(tests)}")

    if args.engine == "atheris":
        if len(names) != 1:
            p.error("--engine atheris fuzzes one --target")
        test = given(st.data())(tests[names[0]])
        atheris.Setup([sys.argv[0], *rest], test.hypothesis.fuzz_one_input)
        atheris.Fuzz()
        return 0

    base = dict(database=None, deadline=None, phases=[Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck), print_blob=True)
    start = time.monotonic()
    rng = random.Random(args.seed)
    for k, name in enumerate(names):
        test = tests[name]
        if args.seconds is None:
            runs = [(args.examples or 200, args.seed)]
        else:
            runs = None
            stop = start + args.seconds * (k + 1) / len(names)
        while True:
            if runs is not None:
                if not runs:
                    break
                n, s = runs.pop()
            else:
                if time.monotonic() >= stop:
                    break
                n, s = 50, rng.randrange(2**32)
            t = settings(max_examples=n, **base)(given(st.data())(test))
            if s is not None:
                t = hseed(s)(t)
            try:
                t()
            except Exception as e:
                for sub in getattr(e, "exceptions", [e]):  # hypothesis: one per distinct bug
                    print(f"FINDING in {name}:", file=sys.stderr)
                    traceback.print_exception(sub, limit=-3, file=sys.stderr)
                _report(targets, time.monotonic() - start)
                return 1
    _report(targets, time.monotonic() - start)
    return 0


def _report(targets, seconds: float) -> None:
    for key in sorted(targets.STATS):
        print(f"  {key}: {targets.STATS[key]}")
    total = sum(v for k, v in targets.STATS.items() if k.endswith(": inputs"))
    print(f"fuzz: {total} inputs in {seconds:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
