//! `.h5ad` writing and reading: what the writer puts in comes back through the reader, in the
//! layout anndata uses (categorical codes in the narrowest type, string indices), and bad files or
//! fields are errors that name them.

use ptrag_engine::data::h5ad::{write_h5ad, AnnData, H5ad};

fn sample(cells: usize, genes: usize, categories: usize) -> AnnData {
    AnnData {
        x: (0..cells * genes).map(|i| i as f32 * 0.25).collect(),
        obs_names: (0..cells).map(|i| format!("cell{i}")).collect(),
        var_names: (0..genes).map(|g| format!("GENE{g}")).collect(),
        obs: vec![
            ("gene".into(), (0..cells).map(|i| format!("P{:03}", i % categories)).collect()),
            ("cell_line".into(), vec!["K562".into(); cells]),
        ],
    }
}

#[test]
fn written_files_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // 3 categories (int8 codes) and 300 (int16 codes, past int8's 127)
    for categories in [3, 300] {
        let a = sample(600, 7, categories);
        let path = dir.path().join(format!("a{categories}.h5ad"));
        write_h5ad(&path, &a).unwrap();
        let f = H5ad::open(&path).unwrap();
        assert_eq!(f.read(&["gene", "cell_line"]).unwrap(), a);
        assert_eq!(f.dense_shape("X").unwrap(), (600, 7));
        assert_eq!(f.dense_rows("X", 10, 2).unwrap(), a.x[70..84].to_vec(), "a row window");
        assert!(!dir.path().join(format!("a{categories}.h5ad.tmp")).exists(), "no temporary left behind");
    }
}

#[test]
fn inconsistent_data_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.h5ad");
    let mut a = sample(4, 3, 2);
    a.x.pop();
    let err = write_h5ad(&path, &a).unwrap_err().to_string();
    assert!(err.contains("X has 11 values for 4 cells x 3 genes"), "{err}");
    let mut a = sample(4, 3, 2);
    a.obs[1].1.pop();
    let err = write_h5ad(&path, &a).unwrap_err().to_string();
    assert!(err.contains("obs column `cell_line` has 3 values for 4 cells"), "{err}");
    assert!(!path.exists(), "nothing written");
}

#[test]
fn missing_fields_and_non_hdf5_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.h5ad");
    write_h5ad(&path, &sample(4, 3, 2)).unwrap();
    let f = H5ad::open(&path).unwrap();
    let err = f.column("obs", "cell_type").unwrap_err().to_string();
    assert!(err.contains("a.h5ad") && err.contains("obs/cell_type"), "{err}");
    let m = f.matrix("X").unwrap();
    let err = f.rows(&m, 3, 2).unwrap_err().to_string();
    assert!(err.contains("rows 3..5 within its 4 rows"), "{err}");
    let err = f.dense_shape("obsm/X_hvg").unwrap_err().to_string();
    assert!(err.contains("obsm/X_hvg") && err.contains("not found"), "{err}");

    let text = dir.path().join("notes.h5ad");
    std::fs::write(&text, "not an HDF5 file").unwrap();
    let err = H5ad::open(&text).err().unwrap().to_string();
    assert!(err.contains("notes.h5ad") && err.contains("HDF5"), "{err}");
}

/// What `tools/make_h5ad_fixtures.py` wrote into tests/fixtures/real (with anndata and h5py).
fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real").join(name)
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[test]
fn anndata_files_read_as_written_dense_gzip_and_sparse() {
    let e = expected();
    let x: Vec<f32> = e["x"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    // dense_gzip: chunked gzip X, int8 codes, `cell_line` a plain string column, integer gem_group.
    // sparse: CSR X with int64 indices, int16 / int32 codes, symbols in var `gene_name`.
    for file in ["dense_gzip.h5ad", "sparse.h5ad"] {
        let f = H5ad::open(&fixture(file)).unwrap();
        let a = f.read(&["gene", "cell_line", "gem_group"]).unwrap();
        assert_eq!(a.x, x, "{file}: X");
        assert_eq!(a.obs_names, strings(&e["obs_names"]), "{file}");
        for (i, col) in ["gene", "cell_line", "gem_group"].iter().enumerate() {
            assert_eq!(a.obs[i].1, strings(&e[*col]), "{file}: obs {col}");
        }
        assert_eq!(f.columns("obs").unwrap(), ["gene", "cell_line", "gem_group"], "{file}");
        let m = f.matrix("X").unwrap();
        // a window in the middle, across CSR rows and gzip chunks
        assert_eq!(f.rows(&m, 5, 7).unwrap(), x[5 * 6..12 * 6].to_vec(), "{file}: rows 5..12");
    }
    let f = H5ad::open(&fixture("sparse.h5ad")).unwrap();
    assert_eq!(f.column("var", "gene_name").unwrap(), strings(&e["genes"]));
    assert_eq!(f.column("var", "highly_variable").unwrap(), ["True", "False", "True", "True", "False", "True"]);
    assert!(f.index("var").unwrap()[0].starts_with("ENSG"));
    let hvg = f.matrix("obsm/X_hvg").unwrap();
    assert_eq!((hvg.rows(), hvg.cols()), (42, 4));
    let cols = [0, 2, 3, 5];
    let want: Vec<f32> = (0..42).flat_map(|r| cols.iter().map(move |&c| (r, c))).map(|(r, c)| x[r * 6 + c]).collect();
    assert_eq!(f.rows(&hvg, 0, 42).unwrap(), want, "obsm X_hvg");
    let err = f.column("obs", "perturbation").unwrap_err().to_string();
    assert!(err.contains("sparse.h5ad") && err.contains("obs/perturbation") && err.contains("gene, cell_line, gem_group"), "{err}");
}

/// CSR rows whose column indices are out of order are valid and read as scipy reads them; a
/// column twice in a row is refused (tools/make_h5ad_fixtures.py, `csr-variants`).
#[test]
fn csr_rows_unsorted_are_read_and_with_a_repeated_column_are_refused() {
    let x: Vec<f32> = expected()["x"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let f = H5ad::open(&fixture("csr_unsorted.h5ad")).unwrap();
    assert_eq!(f.read(&["gene", "cell_line", "gem_group"]).unwrap().x, x);
    let f = H5ad::open(&fixture("csr_duplicate.h5ad")).unwrap();
    let m = f.matrix("X").unwrap();
    let err = f.rows(&m, 0, 3).unwrap_err().to_string();
    assert!(err.contains("csr_duplicate.h5ad") && err.contains("X/indices") && err.contains("twice"), "{err}");
}

/// Labels that are not UTF-8 are refused by name (they used to become U+FFFD without a word).
#[test]
fn labels_that_are_not_utf8_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.h5ad");
    let a = AnnData {
        x: vec![1.0, 2.0, 3.0, 4.0],
        obs_names: vec!["c0".into(), "c1".into()],
        var_names: vec!["G1".into(), "G2".into()],
        obs: vec![("gene".into(), vec!["non-targeting".into(), "QZQZQZ".into()]), ("cell_line".into(), vec!["K562".into(), "K562".into()])],
    };
    write_h5ad(&path, &a).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(6).position(|w| w == b"QZQZQZ").expect("the label's bytes");
    bytes[at..at + 6].copy_from_slice(b"Q\xe9Q\xe9QZ"); // Latin-1, not UTF-8
    std::fs::write(&path, &bytes).unwrap();
    let err = H5ad::open(&path).unwrap().read(&["gene", "cell_line"]).unwrap_err().to_string();
    assert!(err.contains("latin1.h5ad") && err.contains("obs/gene") && err.contains("not valid UTF-8"), "{err}");
}
