"""How well an in-silico screen ranks perturbations whose effect was measured but held out: for the
target cell type's test perturbations of a store (the built-in data measures every perturbation
everywhere), Spearman's correlation between the screen's predicted effect (`screen.csv`
effect_norm) and the measured one (norm of the real mean change against the cell type's control
mean), beside the `neighbours` baseline's ranking (mean change of the 10 nearest GenePT neighbours
among the target's training perturbations), with a bootstrap CI of the difference.

    python tools/screen_check.py STORE_DIR SCREEN.csv CELL_TYPE     (numpy, scipy)
"""
import csv, json, sys, tomllib
import numpy as np
from scipy.stats import spearmanr
store, screen, target = sys.argv[1], sys.argv[2], sys.argv[3]
m = json.load(open(f"{store}/manifest.json"))
g = len(m["genes"]); n = m["n_cells"]
x = np.fromfile(f"{store}/expression.bin", dtype=np.float16 if m["expression_dtype"] == "f16" else np.float32).reshape(n, g).astype(np.float64)
p = np.fromfile(f"{store}/cell_perturbation.u32", dtype=np.uint32); t = np.fromfile(f"{store}/cell_type.u32", dtype=np.uint32)
ct = m["cell_types"].index(target)
ctrl = x[(p == 0) & (t == ct)].mean(0)
split = tomllib.load(open(f"{store}/split.toml", "rb"))
test = next(v["test"] for k, v in split["fewshot"].items() if k.endswith("." + target.lower()))
rows = {r["perturbation"]: r for r in csv.DictReader(open(screen))}
pred, real = [], []
for name in test:
    i = m["perturbations"].index(name)
    real.append(np.linalg.norm(x[(p == i) & (t == ct)].mean(0) - ctrl)); pred.append(float(rows[name]["effect_norm"]))
r = spearmanr(pred, real)
print(f"test perturbations {len(test)}: Spearman(predicted effect, measured effect) = {r.statistic:.3f} (p = {r.pvalue:.1e}); top-10 overlap {len(set(np.argsort(pred)[-10:]) & set(np.argsort(real)[-10:]))}/10")
# the neighbours baseline's ranking: mean change of the 10 nearest GenePT neighbours among the target's training perturbations
d = m["embed_dim"]; P = len(m["perturbations"])
emb = np.fromfile(f"{store}/genept.f32", dtype=np.float32).reshape(P, d).astype(np.float64)
emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
held = set(test) | set(next(v["val"] for k, v in split["fewshot"].items() if k.endswith("." + target.lower())))
train = [i for i in range(1, P) if m["perturbations"][i] not in held and ((p == i) & (t == ct)).any()]
change = {i: x[(p == i) & (t == ct)].mean(0) - ctrl for i in train}
base = []
for name in test:
    i = m["perturbations"].index(name)
    sims = sorted(train, key=lambda j: -emb[i] @ emb[j])[:10]
    base.append(np.linalg.norm(np.mean([change[j] for j in sims], 0)))
rb = spearmanr(base, real)
rng = np.random.default_rng(0); pred, base, real = map(np.array, (pred, base, real)); diffs = []
for _ in range(2000):
    s = rng.integers(0, len(real), len(real))
    diffs.append(spearmanr(pred[s], real[s]).statistic - spearmanr(base[s], real[s]).statistic)
lo, hi = np.percentile(diffs, [2.5, 97.5])
print(f"neighbours baseline: Spearman {rb.statistic:.3f} (p = {rb.pvalue:.1e}); model - baseline {r.statistic - rb.statistic:+.3f}, bootstrap 95% CI [{lo:+.3f}, {hi:+.3f}]")
