"""Writes a dataset store (e.g. `synth --preset replogle`) as an .h5ad laid out like the real
Replogle-Nadig file: expression in obsm/X_hvg (dense float32, chunked, gzip), categorical obs
`gene`, `cell_line`, `gem_group`, gene symbols as the var index; plus the GenePT vectors as .npz.
Rows stream through in blocks, so memory stays small whatever the size. Used to measure `prepare`
at full size (docs/reference.md, "Real data"); needs numpy and h5py.

    .venv/bin/python tools/make_large_h5ad.py STORE_DIR OUT.h5ad OUT_genept.npz
"""

import json
import sys

import h5py
import numpy as np


def strings(group, name, values):
    d = group.create_dataset(name, data=np.array(values, dtype=object), dtype=h5py.string_dtype())
    d.attrs["encoding-type"] = "string-array"
    d.attrs["encoding-version"] = "0.2.0"


def categorical(group, name, codes, categories):
    g = group.create_group(name)
    g.attrs["encoding-type"] = "categorical"
    g.attrs["encoding-version"] = "0.2.0"
    g.attrs["ordered"] = False
    dtype = np.int8 if len(categories) < 128 else np.int16 if len(categories) < 32768 else np.int32
    g.create_dataset("codes", data=codes.astype(dtype), compression="gzip")
    strings(g, "categories", categories)


def main(store, out, genept_out):
    m = json.load(open(f"{store}/manifest.json"))
    n, g = m["n_cells"], len(m["genes"])
    dtype = np.float16 if m["expression_dtype"] == "f16" else np.float32
    expr = np.memmap(f"{store}/expression.bin", dtype=dtype, mode="r", shape=(n, g))
    codes = {k: np.fromfile(f"{store}/{k}.u32", dtype="<u4") for k in ["cell_perturbation", "cell_type", "cell_batch"]}
    with h5py.File(out, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        obs = f.create_group("obs")
        obs.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": "_index"})
        obs.attrs["column-order"] = np.array(["gene", "cell_line", "gem_group"], dtype=object)
        strings(obs, "_index", [f"cell{i}" for i in range(n)])
        categorical(obs, "gene", codes["cell_perturbation"], m["perturbations"])
        categorical(obs, "cell_line", codes["cell_type"], m["cell_types"])
        categorical(obs, "gem_group", codes["cell_batch"], [str(b) for b in range(m["n_batches"])])
        var = f.create_group("var")
        var.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": "_index"})
        var.attrs["column-order"] = np.array([], dtype="float64")  # what anndata writes for no columns
        strings(var, "_index", m["genes"])
        for name in ["obsm", "varm", "obsp", "varp", "layers", "uns"]:
            f.create_group(name).attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        x = f["obsm"].create_dataset("X_hvg", shape=(n, g), dtype=np.float32, chunks=(1024, g), compression="gzip", compression_opts=4)
        x.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        for lo in range(0, n, 16384):
            x[lo:lo + 16384] = expr[lo:lo + 16384].astype(np.float32)
    d = m["embed_dim"]
    table = np.fromfile(f"{store}/genept.f32", dtype="<f4").reshape(-1, d)
    np.savez(genept_out, **{p: table[i] for i, p in enumerate(m["perturbations"]) if i > 0})


if __name__ == "__main__":
    main(*sys.argv[1:4])
