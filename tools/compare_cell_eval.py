"""`evaluate --pred/--real` side by side with Arc Institute's `cell-eval run` on the same pair of
files: wall time of each, and per perturbation the largest difference on the metrics both compute
(MSE and MAE of the mean expression, pred against real). Needs `pip install cell-eval`.

    python tools/compare_cell_eval.py ENGINE PRED.h5ad REAL.h5ad OUT_DIR [--pert-col gene]
"""

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path


def timed(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser()
    p.add_argument("engine")
    p.add_argument("pred")
    p.add_argument("real")
    p.add_argument("out")
    p.add_argument("--pert-col", default="gene")
    p.add_argument("--control-pert", default="non-targeting")
    a = p.parse_args()
    out = Path(a.out)
    ours = timed([a.engine, "evaluate", "--pred", a.pred, "--real", a.real, "--pert-col", a.pert_col,
                  "--control-pert", a.control_pert, "--out", str(out / "engine")])
    cell_eval = Path(sys.executable).parent / "cell-eval"
    theirs = timed([str(cell_eval), "run", "-ap", a.pred, "-ar", a.real, "--pert-col", a.pert_col,
                    "--control-pert", a.control_pert, "--num-threads", "2", "-o", str(out / "cell-eval")])
    model = Path(a.pred).stem
    mine = {r["perturbation"]: r for r in csv.DictReader(open(out / "engine" / "per_condition.csv")) if r["model"] == model}
    ce = {r["perturbation"]: r for r in csv.DictReader(open(out / "cell-eval" / "results.csv"))}
    if set(mine) != set(ce):
        sys.exit(f"the two evaluated different perturbations: {sorted(set(mine) ^ set(ce))[:5]}")
    print(f"{len(mine)} perturbations; engine {ours:.1f} s, cell-eval {theirs:.1f} s (2 threads)")
    for metric in ("mse", "mae"):
        worst = max(abs(float(mine[k][metric]) - float(ce[k][metric])) for k in mine)
        print(f"{metric}: largest absolute difference {worst:.2e}")


if __name__ == "__main__":
    main()
