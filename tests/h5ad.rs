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
    let err = f.dense_shape("obsm/X_hvg").unwrap_err().to_string();
    assert!(err.contains("obsm/X_hvg") && err.contains("dense 2-D matrix"), "{err}");

    let text = dir.path().join("notes.h5ad");
    std::fs::write(&text, "not an HDF5 file").unwrap();
    let err = H5ad::open(&text).err().unwrap().to_string();
    assert!(err.contains("notes.h5ad") && err.contains("HDF5"), "{err}");
}
