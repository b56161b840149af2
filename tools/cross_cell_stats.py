"""Cross-cell-type statistics, computed the same way on real signatures and on a dataset store.

How much does a perturbation's response transfer from one cell type to another? Two statistics:

1. Top up-regulated genes: for each perturbation and cell type, the k genes whose mean expression
   rises most, k a fixed fraction of the genes measured. For each pair of cell types, the mean
   Jaccard index of the same perturbation's two sets, against the mean over pairs of different
   perturbations (random pairs), and their ratio.
2. Effect strength: the Spearman correlation, over perturbations, of the norm of the mean change in
   two cell types (a store only: the real value, 0.59 for K562 vs RPE1, is the quoted TRADE figure
   of Nadig et al. 2025, whose table is not available here).

Real: Replogle 2022 K562 and RPE1 (`replogle2022_k562_rpe1_up_signatures_sigrecon.json.gz`: 585
knock-downs, ranked lists of the top 1,000 up-regulated genes). The real lists come from about 8,500
genes measured per line (the assumed universe, `--universe`): a fraction f of the genes is the top
round(f x universe) of each ranked list. The store: the observed mean change (cells minus the cell
type's controls), and with `--planted` the planted one (`synth_means.f32`).

Usage:
  .venv/bin/python tools/cross_cell_stats.py --real PATH.json.gz [--universe 8500]
  .venv/bin/python tools/cross_cell_stats.py --store data/synth-small [--planted]
Needs numpy and scipy.
"""
import argparse
import gzip
import json
import pathlib

import numpy as np
from scipy import sparse, stats

FRACTIONS = [0.006, 0.02, 0.05]


def jaccard_same_vs_random(sets_a, sets_b):
    """Rows of two 0/1 matrices [perturbations, genes] (same perturbation order): mean Jaccard of
    the same row in both, and of different rows."""
    a, b = sets_a.astype(np.float64), sets_b.astype(np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    j = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    same = np.diag(j).mean()
    off = ~np.eye(len(j), dtype=bool)
    return same, j[off].mean()


def top_k_sets(changes, k):
    """0/1 [perturbations, genes]: each row's k largest entries."""
    out = np.zeros(changes.shape, dtype=bool)
    idx = np.argpartition(-changes, k - 1, axis=1)[:, :k]
    np.put_along_axis(out, idx, True, axis=1)
    return out


def real_stats(path, universe):
    data = json.loads(gzip.open(path, "rt").read())["signatures"]
    kds = sorted(data)
    vocab = {g: i for i, g in enumerate(sorted({g for kd in kds for line in ("K562", "RPE1") for g in data[kd][line]["up_full_top1000"]}))}
    rows = []
    native = [np.zeros((len(kds), len(vocab)), dtype=bool) for _ in range(2)]
    for line_i, line in enumerate(("K562", "RPE1")):
        for r, kd in enumerate(kds):
            native[line_i][r, [vocab[g] for g in data[kd][line]["up"] if g in vocab]] = True
    same, rand = jaccard_same_vs_random(*native)
    rows.append(("real K562 vs RPE1, native 'up' lists (46 / 52 genes)", same, rand))
    for f in FRACTIONS:
        k = max(1, round(f * universe))
        mats = []
        for line in ("K562", "RPE1"):
            m = np.zeros((len(kds), len(vocab)), dtype=bool)
            for r, kd in enumerate(kds):
                m[r, [vocab[g] for g in data[kd][line]["up_full_top1000"][:k]]] = True
            mats.append(m)
        same, rand = jaccard_same_vs_random(*mats)
        rows.append((f"real K562 vs RPE1, top {f:.1%} (k = {k} of {universe})", same, rand))
    return rows, []


def store_changes(store, planted):
    d = pathlib.Path(store)
    m = json.loads((d / "manifest.json").read_text())
    g, cts, perts = len(m["genes"]), m["cell_types"], m["perturbations"]
    control = perts.index(m["control"])
    if planted:
        raw = np.fromfile(d / "synth_means.f32", dtype="<f4")
        return raw[len(cts) * g :].reshape(len(cts), len(perts), g).astype(np.float64), cts, perts, control
    dtype = {"f16": "<f2", "f32": "<f4"}[m["expression_dtype"]]
    n = m["n_cells"]
    x = np.memmap(d / "expression.bin", dtype=dtype, mode="r", shape=(n, g))
    group = np.fromfile(d / "cell_type.u32", dtype="<u4").astype(np.int64) * len(perts) + np.fromfile(
        d / "cell_perturbation.u32", dtype="<u4"
    )
    sums = np.zeros((len(cts) * len(perts), g))
    for start in range(0, n, 65536):
        rows = group[start : start + 65536]
        onehot = sparse.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(sums.shape[0], len(rows)))
        sums += onehot @ np.asarray(x[start : start + 65536], dtype=np.float64)
    counts = np.bincount(group, minlength=sums.shape[0]).astype(np.float64)
    means = (sums / np.maximum(counts, 1)[:, None]).reshape(len(cts), len(perts), g)
    measured = counts.reshape(len(cts), len(perts)) > 0
    if not measured.all():
        raise SystemExit(f"{store}: every perturbation must be measured in every cell type for these statistics")
    return means - means[:, control : control + 1, :], cts, perts, control


def store_stats(store, planted):
    changes, cts, perts, control = store_changes(store, planted)
    keep = [i for i in range(len(perts)) if i != control]
    changes = changes[:, keep, :]
    g = changes.shape[2]
    what = "planted" if planted else "observed"
    jac, strength = [], []
    for f in FRACTIONS:
        k = max(1, round(f * g))
        sets = [top_k_sets(changes[c], k) for c in range(len(cts))]
        pairs = [jaccard_same_vs_random(sets[a], sets[b]) for a in range(len(cts)) for b in range(a + 1, len(cts))]
        same, rand = np.mean([p[0] for p in pairs]), np.mean([p[1] for p in pairs])
        jac.append((f"{pathlib.Path(store).name} ({what}), top {f:.1%} (k = {k} of {g}), mean of {len(pairs)} pairs", same, rand))
    norms = np.linalg.norm(changes, axis=2)
    for a in range(len(cts)):
        for b in range(a + 1, len(cts)):
            strength.append((f"{cts[a]} vs {cts[b]}", stats.spearmanr(norms[a], norms[b]).statistic))
    return jac, strength


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real")
    ap.add_argument("--universe", type=int, default=8500)
    ap.add_argument("--store")
    ap.add_argument("--planted", action="store_true")
    args = ap.parse_args()
    if bool(args.real) == bool(args.store):
        raise SystemExit("give one of --real or --store")
    jac, strength = real_stats(args.real, args.universe) if args.real else store_stats(args.store, args.planted)
    print("| top up-regulated genes | same perturbation | random pairs | ratio |\n|---|---|---|---|")
    for name, same, rand in jac:
        print(f"| {name} | {same:.3f} | {rand:.3f} | {same / rand:.1f} |")
    if strength:
        rho = [r for _, r in strength]
        print(f"\n| effect strength (Spearman of the change's norm) | rho |\n|---|---|")
        for name, r in strength:
            print(f"| {name} | {r:.2f} |")
        print(f"| mean of {len(rho)} pairs | {np.mean(rho):.2f} |")


if __name__ == "__main__":
    main()
