"""Time onnxfold and its peers on the benchmark models: each run its own process, wall time and
peak RSS (the child's ru_maxrss from wait4, as /usr/bin/time reports it), tools interleaved in
rounds, medians, ratios to the load+save floor; then which of issue 10's targets are met.

Usage:
  python -m tools.bench.run [--quick] [--models a,b] [--tools a,b] [--rounds 3] [--cap 120]
                            [--dir /tmp/onnxfold-bench] [--peers-python PY]
--quick: chains of 100 and 1000 blocks and ResNet-50 at 1x, one round (about 2 minutes).
Results go to tools/bench/results/results.json and results.md; plot with tools.bench.plot.
The peers run in their own environment (--peers-python, default /work/venv-peers/bin/python or
$ONNXFOLD_PEERS_PYTHON): pip install onnxoptimizer onnxsim onnxslim onnxscript onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tools.bench.models import MODELS, generate

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TOOLS = ("floor", "onnxfold", "onnxoptimizer", "onnxsim", "onnxslim", "onnxscript", "ort-basic")
FULL = ("chain-100", "chain-1000", "chain-5000", "chain-20000", "resnet50-w1", "resnet50-w1-ext",
        "resnet50-w3.5", "resnet50-w3.5-ext")
QUICK = ("chain-100", "chain-1000", "resnet50-w1")


def command(tool: str, src: Path, out: Path, peers_python: str) -> list[str]:
    if tool == "onnxfold":
        return [sys.executable, "-m", "onnxfold", "fuse", "--no-check", "--force", "-q", str(src),
                "-o", str(out)]
    return [peers_python, str(HERE / "peers.py"), tool, str(src), str(out)]


def measure(cmd: list[str], cap: float) -> dict:
    """Run cmd; its wall time, peak RSS (MB) and exit status, or capped."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        wall = time.perf_counter() - t0
        if pid:
            break
        if wall > cap:
            os.killpg(p.pid, signal.SIGKILL)
            os.wait4(p.pid, 0)
            return {"capped": True, "time": wall, "rss_mb": None, "ok": False}
        time.sleep(0.02)
    p.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait on it again
    err = p.stderr.read().decode(errors="replace").strip().splitlines()
    p.stderr.close()
    return {"capped": False, "time": wall, "rss_mb": usage.ru_maxrss / 1024,
            "ok": p.returncode == 0, "error": err[-1] if p.returncode and err else ""}


def nodes_of(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def size_of(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def run(models: list[str], tools: list[str], rounds: int, cap: float, work: Path,
        peers_python: str) -> dict:
    paths = generate(work / "models", models)
    out_dir = work / "out"
    runs: dict[str, dict[str, list[dict]]] = {m: {t: [] for t in tools} for m in models}
    for r in range(rounds):
        for m, src in zip(models, paths):
            # Rotate the order each round: no tool always runs right after a heavy one.
            order = tools[r % len(tools):] + tools[:r % len(tools)]
            for tool in order:
                done = runs[m][tool]
                if done and done[0]["capped"]:
                    continue  # capped once: not again
                if _capped_on_smaller(runs, models, m, tool):
                    done.append({"capped": True, "time": cap, "rss_mb": None, "ok": False})
                    print(f"round {r + 1}  {m:<18} {tool:<14} > cap (capped on a smaller chain)")
                    continue
                shutil.rmtree(out_dir, ignore_errors=True)
                out_dir.mkdir(parents=True)
                res = measure(command(tool, src, out_dir / "out.onnx", peers_python), cap)
                done.append(res)
                shown = "> cap" if res["capped"] else f"{res['time']:.2f} s"
                rss = "" if res["rss_mb"] is None else f", {res['rss_mb']:.0f} MB"
                bad = "" if res["ok"] or res["capped"] else f"  FAILED: {res['error'][:100]}"
                print(f"round {r + 1}  {m:<18} {tool:<14} {shown}{rss}{bad}", flush=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    table = {}
    for m, src in zip(models, paths):
        table[m] = {"nodes": nodes_of(src), "bytes": size_of(src), "tools": {}}
        for tool in tools:
            table[m]["tools"][tool] = summarize(runs[m][tool])
        floor = table[m]["tools"].get("floor")
        for s in table[m]["tools"].values():
            if floor and floor["time"] and s["time"] and not s["capped"]:
                s["time_ratio"] = s["time"] / floor["time"]
                s["rss_ratio"] = s["rss_mb"] / floor["rss_mb"]
    return {"cap": cap, "rounds": rounds, "models": table, "machine": machine()}


def _capped_on_smaller(runs: dict, models: list[str], model: str, tool: str) -> bool:
    """A chain is no faster than a shorter one: a tool capped on one is not run on longer."""
    if not model.startswith("chain-"):
        return False
    n = int(model[6:])
    return any(k.startswith("chain-") and int(k[6:]) < n and runs[k][tool]
               and runs[k][tool][0]["capped"] for k in models)


def summarize(results: list[dict]) -> dict:
    if not results:
        return {"capped": False, "time": None, "rss_mb": None, "ok": False}
    if results[0]["capped"]:
        return {"capped": True, "time": None, "rss_mb": None, "ok": False}
    ok = [r for r in results if r["ok"]]
    if not ok:
        return {"capped": False, "time": None, "rss_mb": None, "ok": False,
                "error": results[0].get("error", "")}
    return {"capped": False, "ok": True, "runs": len(ok),
            "time": statistics.median(r["time"] for r in ok),
            "rss_mb": statistics.median(r["rss_mb"] for r in ok)}


def machine() -> str:
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def targets(res: dict) -> list[tuple[str, bool | None, str]]:
    """(target, met or None when not measured, the numbers behind it)."""
    out = []
    m = res["models"]

    def t(model: str, tool: str) -> dict | None:
        s = m.get(model, {}).get("tools", {}).get(tool)
        return s if s and s.get("time") else None

    chains = sorted((v["nodes"], k) for k, v in m.items() if k.startswith("chain-"))
    rows = [(n, k, t(k, "onnxfold"), t(k, "floor")) for n, k in chains]
    rows = [r for r in rows if r[2] and r[3]]
    if rows:
        worst = max(r[2]["time"] / r[3]["time"] for r in rows)
        out.append(("chains: within 2x the load+save floor at every size", worst <= 2.0,
                    f"worst {worst:.2f}x"))
        if len(rows) >= 2:
            (n0, _, a, _), (n1, _, b, _) = rows[-2], rows[-1]
            # time proportional to N: the per-node cost at the largest size within 1.5x of the
            # one before (process start-up makes small sizes cheaper per node, not dearer).
            grow = (b["time"] / n1) / (a["time"] / n0)
            out.append((f"chains: linear (time per node at {n1} vs {n0} nodes)", grow <= 1.5,
                        f"{grow:.2f}x"))
    big = "chain-20000"
    a, o = t(big, "onnxfold"), m.get(big, {}).get("tools", {}).get("ort-basic")
    if a and o:
        if o["capped"]:
            speed, txt = res["cap"] / a["time"], f"> {res['cap'] / a['time']:.0f}x (ORT capped)"
        else:
            speed = o["time"] / a["time"]
            txt = f"{speed:.1f}x"
        out.append(("chain-20000: >= 10x faster than onnxruntime basic", speed >= 10, txt))
    for k in ("resnet50-w1", "resnet50-w3.5"):
        s = t(k, "onnxfold")
        if s and "time_ratio" in s:
            ok = s["time_ratio"] <= 1.3 and s["rss_ratio"] <= 1.3
            out.append((f"{k}: within 1.3x the floor in time and peak RSS", ok,
                        f"time {s['time_ratio']:.2f}x, RSS {s['rss_ratio']:.2f}x"))
    for k in ("resnet50-w1-ext", "resnet50-w3.5-ext"):
        s, sc = t(k, "onnxfold"), t(k, "onnxscript")
        # The target is for a 1.2 GB model: on 100 MB a process's ~50 MB of Python, numpy and
        # onnx alone is half the model.
        if s and m[k]["bytes"] >= 1 << 30:
            size_mb = m[k]["bytes"] / 2**20
            rss = s["rss_mb"] / size_mb
            ok = rss < 0.5
            txt = f"peak RSS {rss:.2f}x the model's size"
            if sc:
                ok = ok and s["time"] <= sc["time"]
                txt += f", time {s['time']:.2f} s vs onnxscript {sc['time']:.2f} s"
            out.append((f"{k}: streams (RSS < 0.5x size), time <= onnxscript's", ok, txt))
    return out


def markdown(res: dict) -> str:
    tools = [t for t in TOOLS if any(t in v["tools"] for v in res["models"].values())]
    lines = [f"Median of {res['rounds']} interleaved round(s); wall time of the whole process "
             f"(load, fold, save) / peak RSS / time ratio to the floor. Cap {res['cap']:.0f} s. "
             f"{res['machine']}.", "",
             "| model | nodes | size MB | " + " | ".join(tools) + " |",
             "|---|---:|---:|" + "---|" * len(tools)]
    for k, v in res["models"].items():
        cells = []
        for tool in tools:
            s = v["tools"].get(tool)
            if s is None:
                cells.append("")
            elif s["capped"]:
                cells.append(f"> {res['cap']:.0f} s")
            elif not s["ok"]:
                cells.append("failed")
            else:
                ratio = f" ({s['time_ratio']:.2f}x)" if "time_ratio" in s else ""
                cells.append(f"{s['time']:.2f} s / {s['rss_mb']:.0f} MB{ratio}")
        lines.append(f"| {k} | {v['nodes']} | {v['bytes'] / 1e6:.0f} | " + " | ".join(cells)
                     + " |")
    lines += ["", "| target | met | measured |", "|---|---|---|"]
    for name, ok, txt in targets(res):
        lines.append(f"| {name} | {'yes' if ok else 'NO'} | {txt} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--quick", action="store_true")
    a.add_argument("--models", help=f"comma-separated, of {', '.join(MODELS)} or chain-N")
    a.add_argument("--tools", help=f"comma-separated, of {', '.join(TOOLS)}")
    a.add_argument("--rounds", type=int)
    a.add_argument("--cap", type=float, default=120.0)
    a.add_argument("--dir", type=Path, default=Path("/tmp/onnxfold-bench"))
    a.add_argument("--peers-python", default=os.environ.get(
        "ONNXFOLD_PEERS_PYTHON", "/work/venv-peers/bin/python"))
    a.add_argument("--results", type=Path, default=RESULTS)
    a.add_argument("--from-json", type=Path, help="only rewrite results.md from this JSON")
    args = a.parse_args(argv)
    if args.from_json:
        text = markdown(json.loads(args.from_json.read_text()))
        (args.results / "results.md").write_text(text)
        print(text)
        return 0
    models = args.models.split(",") if args.models else list(QUICK if args.quick else FULL)
    tools = args.tools.split(",") if args.tools else list(TOOLS)
    if "floor" not in tools:
        tools.insert(0, "floor")
    rounds = args.rounds or (1 if args.quick else 3)
    res = run(models, tools, rounds, args.cap, args.dir, args.peers_python)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "results.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    text = markdown(res)
    (args.results / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
