"""Plot tools/bench/results/results.json: fold time against node count, log-log, every tool.

Usage: python -m tools.bench.plot [results.json] [out.png]   (needs matplotlib: run it with the
peers' environment, e.g. /work/venv-peers/bin/python -m tools.bench.plot)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOOLS = ("floor", "onnxfold", "onnxoptimizer", "onnxsim", "onnxslim", "onnxscript", "ort-basic")
COLORS = {"floor": "black", "onnxfold": "tab:red", "onnxoptimizer": "tab:blue",
          "onnxsim": "tab:orange", "onnxslim": "tab:green", "onnxscript": "tab:purple",
          "ort-basic": "tab:brown"}


def plot(results: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(results.read_text())
    fig, ax = plt.subplots(figsize=(7, 5))
    chains = sorted((v["nodes"], k) for k, v in res["models"].items() if k.startswith("chain-"))
    for i, tool in enumerate(TOOLS):
        xs, ys, capped = [], [], []
        for n, k in chains:
            s = res["models"][k]["tools"].get(tool)
            if s is None:
                continue
            if s["capped"]:
                capped.append(n)
            elif s["ok"]:
                xs.append(n)
                ys.append(s["time"])
        if not xs and not capped:
            continue
        style = {"floor": dict(linestyle="--"), "onnxfold": dict(linewidth=2.5)}.get(tool, {})
        ax.plot(xs, ys, marker="o", label=tool, color=COLORS[tool], **style)
        if capped:  # drawn at the cap, hollow, a little apart per tool: the real time is higher
            ax.plot(capped, [res["cap"] * 1.08 ** i] * len(capped), marker="^",
                    linestyle="none", markerfacecolor="none", color=COLORS[tool])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes in the model (chains of Conv+BN+Relu)")
    ax.set_ylabel("wall time of the whole process, s (median)")
    ax.set_title(f"Folding BatchNormalization: load, fold, save (cap {res['cap']:.0f} s, "
                 "hollow ▲ = capped)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    args = sys.argv[1:]
    src = Path(args[0]) if args else HERE / "results" / "results.json"
    dst = Path(args[1]) if len(args) > 1 else HERE / "results" / "fold-time.png"
    plot(src, dst)
    print(dst)
