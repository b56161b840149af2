"""Writes the small real-data fixtures of tests/fixtures/real/ with Python's anndata, h5py and numpy,
as users' files are written, so the Rust tests (which need no Python) read what those tools write.

    python3 -m venv .venv && .venv/bin/pip install anndata h5py numpy safetensors
    .venv/bin/python tools/make_h5ad_fixtures.py

Files:
- dense_gzip.h5ad: X dense float32, chunked and gzip-compressed; obs `gene` categorical (int8
  codes), `cell_line` a plain string column, `gem_group` integers; var index = gene symbols.
- sparse.h5ad: X CSR with int64 indices, gzip; `gene` codes rewritten as int16 and `cell_line`
  codes as int32; var index = Ensembl-like IDs with symbols in `gene_name`; obsm `X_hvg` = the
  dense matrix of the 4 genes flagged in var `highly_variable`.
- expected.json: what a reader must find (cells, genes, matrix, obs columns).
- genept.pickle (protocol 4, lists of floats), genept_numpy.pickle (protocol 2, numpy float32
  arrays), genept_numpy5.pickle (protocol 5, numpy float64 arrays), genept.npz, genept.safetensors,
  genept.tsv: the same vectors; lower-case `cdk1` checks upper-case matching, `NOVEC` has none.
- split.toml: a cell-load few-shot split naming the fixture's perturbations.
- csr_unsorted.h5ad, csr_duplicate.h5ad: sparse.h5ad with row 0's first two entries swapped
  (column indices out of order: valid CSR, the same matrix) and with row 0's second column index
  set to its first (a column twice in a row: malformed). `... make_h5ad_fixtures.py csr-variants`
  writes these alone, from sparse.h5ad, with h5py and numpy only.
- csr_huge_shape.h5ad: sparse.h5ad whose X declares 4e10 columns (its entries unchanged).
- csr_narrow.h5ad: sparse.h5ad whose X declares 5 columns for var's 6 genes (entries unchanged,
  so some column indices are out of range).
- raw_counts.h5ad: a Perturb-seq file as Cell Ranger users have it: X raw UMI counts (CSR float32),
  one cell line, `unassigned` cells, one perturbation with too few cells. raw_counts_expected.json
  holds what scanpy makes of it after the same filtering (`unassigned` dropped, conditions under 5
  cells dropped): `normalize_total(target_sum=1e4)`, `log1p`, then
  `highly_variable_genes(flavor="seurat", n_top_genes=8)`: the normalised matrix of all genes, the
  per-gene means, dispersions and normalised dispersions, and the chosen genes.
  `... make_h5ad_fixtures.py raw-counts` writes these alone (needs scanpy as well).
"""

import json
import pickle
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "real"
CONTROL = "non-targeting"
PERTS = ["AARS", "BRCA1", "CDK1", "DDX3X", "NOVEC"]
LINES = ["K562", "RPE1"]
GENES = ["AARS", "BRCA1", "CDK1", "DDX3X", "GAPDH", "MYC"]
DIM = 8


def cells():
    rng = np.random.default_rng(7)
    rows = []
    for line in LINES:
        for pert in [CONTROL] * 2 + PERTS:  # controls interleaved with perturbations
            for _ in range(3):
                rows.append((pert, line, int(rng.integers(1, 4))))
    rng.shuffle(rows)
    obs = pd.DataFrame(rows, columns=["gene", "cell_line", "gem_group"])
    obs.index = [f"cell{i}" for i in range(len(obs))]
    # log-normalised-looking: non-negative, many exact zeros, exactly representable in float16
    x = np.round(rng.gamma(1.0, 1.0, size=(len(obs), len(GENES))) * 8) / 8
    x[rng.random(x.shape) < 0.4] = 0.0
    return obs, x.astype(np.float32)


def string_column(path, name, values):
    """Replaces obs/<name> with a plain string-array column."""
    with h5py.File(path, "r+") as f:
        del f[f"obs/{name}"]
        d = f.create_dataset(f"obs/{name}", data=np.array(values, dtype=object), dtype=h5py.string_dtype())
        d.attrs["encoding-type"] = "string-array"
        d.attrs["encoding-version"] = "0.2.0"


def retype(path, dataset, dtype):
    with h5py.File(path, "r+") as f:
        data, attrs = f[dataset][()], dict(f[dataset].attrs)
        del f[dataset]
        d = f.create_dataset(dataset, data=data.astype(dtype), compression="gzip", chunks=True)
        d.attrs.update(attrs)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    obs, x = cells()
    obs_cat = obs.assign(gene=pd.Categorical(obs.gene), cell_line=pd.Categorical(obs.cell_line))

    a = ad.AnnData(X=x, obs=obs_cat, var=pd.DataFrame(index=GENES))
    a.write_h5ad(OUT / "dense_gzip.h5ad", compression="gzip")
    string_column(OUT / "dense_gzip.h5ad", "cell_line", list(obs.cell_line))

    csr = sp.csr_matrix(x)
    csr.indices = csr.indices.astype(np.int64)
    csr.indptr = csr.indptr.astype(np.int64)
    var = pd.DataFrame({"gene_name": GENES, "highly_variable": [True, False, True, True, False, True]},
                       index=[f"ENSG{i:05d}" for i in range(len(GENES))])
    b = ad.AnnData(X=csr, obs=obs_cat, var=var)
    b.obsm["X_hvg"] = x[:, var.highly_variable.values]
    b.write_h5ad(OUT / "sparse.h5ad", compression="gzip")
    retype(OUT / "sparse.h5ad", "X/indices", np.int64)
    retype(OUT / "sparse.h5ad", "obs/gene/codes", np.int16)
    retype(OUT / "sparse.h5ad", "obs/cell_line/codes", np.int32)

    with h5py.File(OUT / "sparse.h5ad") as f:
        assert f["X/indices"].dtype == np.int64 and f["obs/gene/codes"].dtype == np.int16
    with h5py.File(OUT / "dense_gzip.h5ad") as f:
        assert f["X"].compression == "gzip" and f["obs/gene/codes"].dtype == np.int8

    expected = {
        "obs_names": list(obs.index),
        "gene": list(obs.gene),
        "cell_line": list(obs.cell_line),
        "gem_group": [str(v) for v in obs.gem_group],
        "genes": GENES,
        "x": [float(v) for v in x.ravel()],
        "hvg": [g for g, h in zip(GENES, var.highly_variable) if h],
    }
    (OUT / "expected.json").write_text(json.dumps(expected))

    rng = np.random.default_rng(11)
    vectors = {g: rng.normal(size=DIM).round(4) for g in ["AARS", "BRCA1", "DDX3X", "GAPDH"]}
    vectors["cdk1"] = rng.normal(size=DIM).round(4)  # upper-case matching: CDK1
    with open(OUT / "genept.pickle", "wb") as f:
        pickle.dump({k: [float(x) for x in v] for k, v in vectors.items()}, f, protocol=4)
    with open(OUT / "genept_numpy.pickle", "wb") as f:
        pickle.dump({k: v.astype(np.float32) for k, v in vectors.items()}, f, protocol=2)
    with open(OUT / "genept_numpy5.pickle", "wb") as f:
        pickle.dump({k: v.astype(np.float64) for k, v in vectors.items()}, f, protocol=5)
    np.savez_compressed(OUT / "genept.npz", **{k: v.astype(np.float32) for k, v in vectors.items()})
    from safetensors.numpy import save_file
    save_file({k: v.astype(np.float32) for k, v in vectors.items()}, OUT / "genept.safetensors")
    with open(OUT / "genept.tsv", "w") as f:
        for k, v in vectors.items():
            f.write(k + "\t" + "\t".join(repr(float(x)) for x in v) + "\n")
    (OUT / "genept_expected.json").write_text(json.dumps({k.upper(): [float(x) for x in v] for k, v in vectors.items()}))

    (OUT / "split.toml").write_text(
        '[datasets]\nfixture = "fixture"\n\n[training]\nfixture = "train"\n\n[zeroshot]\n\n[fewshot]\n\n'
        '[fewshot."fixture.k562"]\nval = ["BRCA1"]\ntest = ["AARS", "NOVEC"]\n\n'
        '[fewshot."fixture.rpe1"]\nval = ["DDX3X"]\ntest = ["CDK1"]\n'
    )


def csr_variants():
    import shutil
    for name in ("csr_unsorted.h5ad", "csr_duplicate.h5ad"):
        shutil.copy(OUT / "sparse.h5ad", OUT / name)
    with h5py.File(OUT / "csr_unsorted.h5ad", "r+") as f:
        lo, hi = f["X/indptr"][0], f["X/indptr"][1]
        assert hi - lo >= 2
        for key in ("X/indices", "X/data"):
            v = f[key][...]
            v[lo], v[lo + 1] = v[lo + 1], v[lo]
            f[key][...] = v
    shutil.copy(OUT / "sparse.h5ad", OUT / "csr_huge_shape.h5ad")
    with h5py.File(OUT / "csr_huge_shape.h5ad", "r+") as f:
        f["X"].attrs["shape"] = np.array([f["X"].attrs["shape"][0], 40_000_000_000], dtype=np.int64)
    shutil.copy(OUT / "sparse.h5ad", OUT / "csr_narrow.h5ad")
    with h5py.File(OUT / "csr_narrow.h5ad", "r+") as f:
        f["X"].attrs["shape"] = np.array([f["X"].attrs["shape"][0], 5], dtype=np.int64)
    with h5py.File(OUT / "csr_duplicate.h5ad", "r+") as f:
        lo = f["X/indptr"][0]
        v = f["X/indices"][...]
        v[lo + 1] = v[lo]
        f["X/indices"][...] = v


def raw_counts():
    import scanpy as sc
    rng = np.random.default_rng(23)
    n_genes = 40
    genes = [f"G{i:02d}" for i in range(n_genes)]
    labels = ["non-targeting"] * 30 + ["AARS"] * 12 + ["BRCA1"] * 12 + ["CDK1"] * 12 + ["DDX3X"] * 3 + ["unassigned"] * 8
    rng.shuffle(labels)
    obs = pd.DataFrame({"gene": pd.Categorical(labels), "cell_line": pd.Categorical(["K562"] * len(labels)),
                        "gem_group": rng.integers(1, 3, size=len(labels))},
                       index=[f"AAAC{i:04d}-1" for i in range(len(labels))])
    # negative-binomial-like counts with gene-specific means and overdispersion; 3 genes never seen
    mu = np.exp(rng.normal(0.5, 1.3, size=n_genes))
    shape = rng.uniform(0.3, 5.0, size=n_genes)
    depth = rng.uniform(0.5, 2.0, size=(len(labels), 1))
    counts = rng.poisson(rng.gamma(shape, mu / shape, size=(len(labels), n_genes)) * depth).astype(np.float32)
    counts[:, [5, 17, 33]] = 0
    a = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))
    a.write_h5ad(OUT / "raw_counts.h5ad", compression="gzip")

    b = ad.read_h5ad(OUT / "raw_counts.h5ad")
    b = b[b.obs.gene != "unassigned"].copy()
    sizes = b.obs.groupby(["gene", "cell_line"], observed=True).size()
    small = {g for (g, _), n in sizes.items() if n < 5 and g != "non-targeting"}
    b = b[~b.obs.gene.isin(small)].copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    sc.pp.highly_variable_genes(b, flavor="seurat", n_top_genes=8)
    x = b.X.toarray()
    nan_none = lambda v: None if np.isnan(v) else float(v)
    expected = {
        "scanpy": __import__("importlib.metadata").metadata.version("scanpy"),
        "dropped_conditions": sorted(small),
        "obs_names": list(b.obs_names),
        "genes": genes,
        "x_normalised": [float(v) for v in x.ravel()],
        "means": [float(v) for v in b.var.means],
        "dispersions": [nan_none(v) for v in b.var.dispersions],
        "dispersions_norm": [nan_none(v) for v in b.var.dispersions_norm],
        "hvg": list(b.var_names[b.var.highly_variable]),
    }
    (OUT / "raw_counts_expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["raw-counts"]:
        raw_counts()
    elif sys.argv[1:] == ["csr-variants"]:
        csr_variants()
    else:
        main()
        csr_variants()
        raw_counts()
