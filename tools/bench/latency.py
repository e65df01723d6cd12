"""Inference latency of a model before and after folding, in onnxruntime with every graph
optimization off (the level onnxfold's check runs at): what the fold alone buys.

Usage: python -m tools.bench.latency MODEL.onnx FOLDED.onnx [--runs 30]
Prints the median of --runs timed runs after 3 warm-up runs, alternating the two sessions, with
one intra-op thread each (the machine is shared: fewer threads, less noise).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def latency(a: str, b: str, runs: int = 30) -> tuple[float, float]:
    import onnxruntime as ort

    def session(path: str):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.intra_op_num_threads = 1
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    sa, sb = session(a), session(b)
    i = sa.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in i.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    times: dict[int, list[float]] = {0: [], 1: []}
    for r in range(runs + 3):
        for k, s in enumerate((sa, sb)):
            t = time.perf_counter()
            s.run(None, {i.name: x})
            if r >= 3:
                times[k].append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("folded")
    p.add_argument("--runs", type=int, default=30)
    a = p.parse_args()
    before, after = latency(a.model, a.folded, a.runs)
    print(f"{a.model}: unfolded {before * 1e3:.2f} ms, folded {after * 1e3:.2f} ms, "
          f"folded/unfolded {after / before:.2f}x")


if __name__ == "__main__":
    main()
