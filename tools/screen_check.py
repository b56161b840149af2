"""How well an in-silico screen ranks perturbations whose effect was measured but held out: for the
target cell type's test perturbations of a store (the built-in data measures every perturbation
everywhere), Spearman's correlation between the screen's predicted effect (`screen.csv`
effect_norm) and the measured one (norm of the real mean change against the cell type's control
mean), beside the baselines' rankings from `predict RUN --baseline NAME --unclamped` files (their
k and ridge penalty chosen on validation by the engine), with a bootstrap CI of each difference.

    python tools/screen_check.py STORE_DIR SCREEN.csv CELL_TYPE [NAME=BASELINE_PRED.h5ad ...]
    (numpy, scipy, anndata)
"""

import csv
import json
import sys
import tomllib

import numpy as np
from scipy.stats import spearmanr


def main():
    store, screen, target, *baselines = sys.argv[1:]
    m = json.load(open(f"{store}/manifest.json"))
    g, n = len(m["genes"]), m["n_cells"]
    dtype = np.float16 if m["expression_dtype"] == "f16" else np.float32
    x = np.fromfile(f"{store}/expression.bin", dtype=dtype).reshape(n, g).astype(np.float64)
    p = np.fromfile(f"{store}/cell_perturbation.u32", dtype=np.uint32)
    t = np.fromfile(f"{store}/cell_type.u32", dtype=np.uint32)
    ct = m["cell_types"].index(target)
    ctrl = x[(p == 0) & (t == ct)].mean(0)
    split = tomllib.load(open(f"{store}/split.toml", "rb"))
    test = next(v["test"] for k, v in split["fewshot"].items() if k.endswith("." + target.lower()))
    rows = {r["perturbation"]: r for r in csv.DictReader(open(screen))}
    real = np.array([np.linalg.norm(x[(p == m["perturbations"].index(name)) & (t == ct)].mean(0) - ctrl) for name in test])
    pred = np.array([float(rows[name]["effect_norm"]) for name in test])
    r = spearmanr(pred, real)
    top = len(set(np.argsort(pred)[-10:]) & set(np.argsort(real)[-10:]))
    print(f"test perturbations {len(test)}: screen Spearman {r.statistic:.3f} (p = {r.pvalue:.1e}); top-10 overlap {top}/10")
    rng = np.random.default_rng(0)
    draws = [rng.integers(0, len(real), len(real)) for _ in range(2000)]
    for spec in baselines:
        import anndata as ad
        name, path = spec.split("=", 1)
        a = ad.read_h5ad(path)
        values, labels = np.asarray(a.X, dtype=np.float64), a.obs["gene"].astype(str).values
        control = values[labels == m["control"]].mean(0)
        base = np.array([np.linalg.norm(values[labels == pert].mean(0) - control) for pert in test])
        rb = spearmanr(base, real)
        diffs = [spearmanr(pred[s], real[s]).statistic - spearmanr(base[s], real[s]).statistic for s in draws]
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        print(f"{name}: Spearman {rb.statistic:.3f} (p = {rb.pvalue:.1e}); screen - {name} {r.statistic - rb.statistic:+.3f}, "
              f"bootstrap 95% CI [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()
