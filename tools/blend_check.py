"""Does a model carry information the strongest baseline lacks? Equal-weight blends of mean changes.

For each fold directory under MODEL, LINEAR and NEIGHBOURS (the output of `ptrag-engine predict RUN
--unclamped` and `predict RUN --baseline linear|neighbours --unclamped` for one run of every fold),
it computes the test MSE of the mean change of each perturbation for:
- the model, `linear` and `neighbours`;
- the blend of the model and `linear`, at a weight of 1/2 fixed in advance (nothing is chosen on test);
- the blend of `neighbours` and `linear`, the same without the model.

Predicted and real cells carry the same control cells, so the MSE of the means is the MSE of the
mean changes. Each row is tested against `linear` with Mann-Whitney U (two-sided, unpaired, as
`evaluate` does) and with the paired Wilcoxon signed-rank test; Benjamini-Hochberg runs over all
the tests of the table.

Usage:  python tools/blend_check.py MODEL_DIR LINEAR_DIR NEIGHBOURS_DIR [--pert-col gene] [--control non-targeting]
Needs anndata, numpy and scipy (1.11 or later).
"""
import argparse
import pathlib

import anndata
import numpy as np
from scipy import stats


def means(path, pert_col, control):
    a = anndata.read_h5ad(path)
    x = np.asarray(a.X, dtype=np.float64)
    labels = a.obs[pert_col].astype(str).to_numpy()
    return {p: x[labels == p].mean(0) for p in np.unique(labels) if p != control}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("linear")
    ap.add_argument("neighbours")
    ap.add_argument("--pert-col", default="gene")
    ap.add_argument("--control", default="non-targeting")
    args = ap.parse_args()
    rows = {k: [] for k in ["model", "linear", "neighbours", "model + linear", "neighbours + linear"]}
    for fold in sorted(p.name for p in pathlib.Path(args.model).iterdir() if (p / "pred.h5ad").exists()):
        real = means(pathlib.Path(args.model) / fold / "real.h5ad", args.pert_col, args.control)
        pred = {k: means(pathlib.Path(d) / fold / "pred.h5ad", args.pert_col, args.control)
                for k, d in [("model", args.model), ("linear", args.linear), ("neighbours", args.neighbours)]}
        for p, r in real.items():
            m, lin, nb = pred["model"][p], pred["linear"][p], pred["neighbours"][p]
            mse = lambda x: float(np.mean((x - r) ** 2))
            rows["model"].append(mse(m))
            rows["linear"].append(mse(lin))
            rows["neighbours"].append(mse(nb))
            rows["model + linear"].append(mse(0.5 * (m + lin)))
            rows["neighbours + linear"].append(mse(0.5 * (nb + lin)))
    ref = np.array(rows["linear"])
    names = [k for k in rows if k != "linear"]
    p_mw = [stats.mannwhitneyu(rows[k], ref, alternative="two-sided").pvalue for k in names]
    p_w = [stats.wilcoxon(rows[k], ref).pvalue for k in names]
    q = stats.false_discovery_control(p_mw + p_w, method="bh")
    q_mw, q_w = q[: len(names)], q[len(names):]
    print(f"{len(ref)} test conditions; test MSE of the mean change, each against `linear`\n")
    print("| prediction | mean MSE | difference from `linear` | Mann-Whitney q | paired Wilcoxon q | conditions better than `linear` |")
    print("|---|---|---|---|---|---|")
    print(f"| linear | {ref.mean():.4f} | | | | |")
    for k, a, b in zip(names, q_mw, q_w):
        v = np.array(rows[k])
        print(f"| {k} | {v.mean():.4f} | {v.mean() - ref.mean():+.4f} | {a:.2g} | {b:.2g} | {(v < ref).sum()} of {len(v)} |")


if __name__ == "__main__":
    main()
