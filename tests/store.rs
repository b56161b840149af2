//! The dataset store, the synthetic generator and split files: round trips, determinism, and a
//! clear error (naming the file and field) for every kind of corruption.

mod common;
use common::tolerance as tol;

use ptrag_engine::data::split::{Fold, SplitFile};
use ptrag_engine::data::store::Store;
use ptrag_engine::data::synth::{self, SynthConfig};
use std::path::Path;

fn tiny(dir: &Path) -> Store {
    let cfg = SynthConfig::preset("tiny", 7).unwrap();
    synth::generate(&cfg, dir, false, false).unwrap();
    Store::open(dir).unwrap()
}

fn err_of(dir: &Path) -> String {
    match Store::open(dir) {
        Ok(_) => panic!("opening {} should have failed", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn synth_store_opens_with_expected_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny(&tmp.path().join("s"));
    let cfg = SynthConfig::preset("tiny", 7).unwrap();
    assert_eq!(store.n_genes(), cfg.genes);
    assert_eq!(store.manifest.n_perturbations(), cfg.perturbations + 1);
    assert_eq!(store.manifest.cell_types.len(), 4);
    assert_eq!(store.manifest.perturbations[store.control_index as usize], "non-targeting");
    // every GenePT row is unit norm except the control's, which is zero
    for p in 0..store.manifest.n_perturbations() {
        let norm: f32 = store.genept_row(p).iter().map(|x| x * x).sum::<f32>().sqrt();
        let want = if p == store.control_index as usize { 0.0 } else { 1.0 };
        assert!((norm - want).abs() < tol::UNIT_NORM_F32 as f32, "perturbation {p}: norm {norm}");
    }
    // log-normalised expression: finite, non-negative, and not all zero
    let mut row = vec![0.0; store.n_genes()];
    let mut total = 0.0;
    for c in 0..store.n_cells() {
        store.expression_row(c, &mut row);
        assert!(row.iter().all(|v| v.is_finite() && *v >= 0.0));
        total += row.iter().sum::<f32>();
    }
    assert!(total > 0.0);
    assert!(!tmp.path().join("s.partial").exists(), "no partial directory left behind");
}

#[test]
fn synth_is_deterministic_per_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SynthConfig::preset("tiny", 3).unwrap();
    synth::generate(&cfg, &tmp.path().join("a"), false, false).unwrap();
    synth::generate(&cfg, &tmp.path().join("b"), false, false).unwrap();
    let other = SynthConfig { seed: 4, ..cfg };
    synth::generate(&other, &tmp.path().join("c"), false, false).unwrap();
    for f in ["expression.bin", "genept.f32", "cell_perturbation.u32", "cell_batch.u32", "split.toml"] {
        let read = |d: &str| std::fs::read(tmp.path().join(d).join(f)).unwrap();
        assert_eq!(read("a"), read("b"), "{f} differs between two runs with the same seed");
    }
    assert_ne!(std::fs::read(tmp.path().join("a/expression.bin")).unwrap(), std::fs::read(tmp.path().join("c/expression.bin")).unwrap());
}

#[test]
fn truncated_arrays_are_reported_with_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    tiny(&dir);
    for (file, field) in [("expression.bin", "expression"), ("genept.f32", "genept"), ("cell_type.u32", "cell_type")] {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let e = err_of(&dir);
        assert!(e.contains(file) && e.contains(field), "{file}: {e}");
        std::fs::write(&path, &bytes).unwrap();
    }
    Store::open(&dir).unwrap();
}

#[test]
fn corrupt_manifest_and_codes_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    tiny(&dir);
    let mpath = dir.join("manifest.json");
    let manifest = std::fs::read_to_string(&mpath).unwrap();

    std::fs::write(&mpath, &manifest[..manifest.len() / 2]).unwrap();
    assert!(err_of(&dir).contains("manifest.json"));

    std::fs::write(&mpath, manifest.replace("\"control\": \"non-targeting\"", "\"control\": \"DMSO\"")).unwrap();
    let e = err_of(&dir);
    assert!(e.contains("control") && e.contains("DMSO"), "{e}");

    // a control label naming another perturbation of the store
    let other = serde_json::from_str::<serde_json::Value>(&manifest).unwrap()["perturbations"][1].as_str().unwrap().to_string();
    std::fs::write(&mpath, manifest.replace("\"control\": \"non-targeting\"", &format!("\"control\": \"{other}\""))).unwrap();
    let e = err_of(&dir);
    assert!(e.contains("manifest.json") && e.contains("control") && e.contains(&format!("`{other}` is perturbation 1")), "{e}");

    std::fs::write(&mpath, manifest.replace("\"version\": 1", "\"version\": 9")).unwrap();
    assert!(err_of(&dir).contains("version"));

    // Declared sizes checked before use: a cell count whose byte size wraps around to the real
    // one (n + 2^62), and more batch groups than cells.
    let n: u64 = serde_json::from_str::<serde_json::Value>(&manifest).unwrap()["n_cells"].as_u64().unwrap();
    let wrapped = manifest.replace(&format!("\"n_cells\": {n}"), &format!("\"n_cells\": {}", n + (1u64 << 62)));
    std::fs::write(&mpath, wrapped).unwrap();
    let e = err_of(&dir);
    assert!(e.contains("manifest.json") && e.contains("overflows"), "{e}");
    let batches: u64 = serde_json::from_str::<serde_json::Value>(&manifest).unwrap()["n_batches"].as_u64().unwrap();
    std::fs::write(&mpath, manifest.replace(&format!("\"n_batches\": {batches}"), "\"n_batches\": 1000000000000")).unwrap();
    let e = err_of(&dir);
    assert!(e.contains("n_batches") && e.contains("at most one batch group per cell"), "{e}");

    std::fs::write(&mpath, manifest.replace("\"GENE0001\"", "\"GENE0000\"")).unwrap();
    let e = err_of(&dir);
    assert!(e.contains("genes") && e.contains("twice"), "{e}");
    std::fs::write(&mpath, &manifest).unwrap();

    // a cell whose perturbation code is out of range
    let cpath = dir.join("cell_perturbation.u32");
    let mut codes = std::fs::read(&cpath).unwrap();
    codes[4..8].copy_from_slice(&1000u32.to_le_bytes());
    std::fs::write(&cpath, &codes).unwrap();
    let e = err_of(&dir);
    assert!(e.contains("cell_perturbation") && e.contains("cell 1 has 1000"), "{e}");

    std::fs::remove_file(&cpath).unwrap();
    assert!(err_of(&dir).contains("cell_perturbation.u32"));
}

#[test]
fn split_toml_round_trips_and_matches_cell_lines_case_insensitively() {
    let text = r#"
[datasets]
replogle = "/somewhere"
[training]
replogle = "train"
[zeroshot]
[fewshot]
[fewshot."replogle.k562"]
val = ['A', 'B']
test = ['C']
[fewshot."replogle.hepg2"]
val = []
test = ['D', 'E']
"#;
    let split = SplitFile::parse(Path::new("x.toml"), text).unwrap();
    assert_eq!(split.dataset, "replogle");
    assert_eq!(split.fewshot["k562"].val, vec!["A", "B"]);
    assert_eq!(split.fewshot["hepg2"].test, vec!["D", "E"]);
    let again = SplitFile::parse(Path::new("y.toml"), &split.to_toml()).unwrap();
    assert_eq!(again, split);

    let e = SplitFile::parse(Path::new("bad.toml"), "[fewshot.\"d.k562\"]\nval = [1]\ntest = []").unwrap_err().to_string();
    assert!(e.contains("bad.toml") && e.contains("fewshot.\"d.k562\".val"), "{e}");
    let e = SplitFile::parse(Path::new("bad.toml"), "[training]\n").unwrap_err().to_string();
    assert!(e.contains("fewshot"), "{e}");
    // Nothing silently accepted: a misspelt key, a name twice, no test list, a cell line twice.
    let refused = [
        ("[fewshot.\"d.k562\"]\nval = []\ntset = ['A']\ntest = ['B']", "fewshot.\"d.k562\".tset"),
        ("[fewshot.\"d.k562\"]\nval = ['A']\ntest = ['B', 'A']", "`A` again"),
        ("[fewshot.\"d.k562\"]\nval = ['A', 'A']\ntest = ['B']", "`A` again"),
        ("[fewshot.\"d.k562\"]\nval = ['A']\ntest = []", "fewshot.\"d.k562\".test"),
        ("[fewshot.\"d.k562\"]\nval = []\ntest = ['A']\n[fewshot.\"d.K562\"]\nval = []\ntest = ['B']", "has two"),
    ];
    for (text, want) in refused {
        let e = SplitFile::parse(Path::new("bad.toml"), text).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains(want), "{text}: {e}");
    }
}

#[test]
fn folds_hold_out_only_the_target_cell_type() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny(&tmp.path().join("s"));
    let split = SplitFile::read(&store.split_path).unwrap();
    let fold = Fold::new(&store, &split, &store.split_path, 0).unwrap();
    let held = &split.fewshot["k562"];
    assert!(!fold.test.is_empty() && !fold.val.is_empty());
    for c in fold.val.iter().chain(&fold.test) {
        assert_eq!(c.cell_type, 0);
    }
    for c in &fold.train {
        let name = &store.manifest.perturbations[c.perturbation as usize];
        assert!(c.cell_type != 0 || !(held.val.contains(name) || held.test.contains(name)), "{name} leaked into training");
    }
    // the held-out perturbations are still trained on in the other cell types
    let test_pert = fold.test[0].perturbation;
    assert!(fold.train.iter().any(|c| c.perturbation == test_pert && c.cell_type != 0));
    // every cell is in exactly one condition
    let total: usize = fold.train.iter().chain(&fold.val).chain(&fold.test).map(|c| c.cells.len()).sum();
    assert_eq!(total, store.n_cells());

    let mut bad = split.clone();
    bad.fewshot.get_mut("k562").unwrap().test.push("NOT_A_GENE".into());
    let e = Fold::new(&store, &bad, Path::new("my_split.toml"), 0).err().unwrap().to_string();
    assert!(e.contains("my_split.toml") && e.contains("NOT_A_GENE") && e.contains("k562.test"), "{e}");
    // The control held out would be both the control pool and a test condition.
    let mut bad = split.clone();
    bad.fewshot.get_mut("k562").unwrap().test.push(store.manifest.control.clone());
    let e = Fold::new(&store, &bad, Path::new("my_split.toml"), 0).err().unwrap().to_string();
    assert!(e.contains("my_split.toml") && e.contains("not the control"), "{e}");
}

/// The store writer itself refuses a value its dtype cannot hold (callers check with their file's
/// context first), and an abandoned writer leaves nothing behind.
#[test]
fn the_writer_refuses_values_its_dtype_cannot_hold() {
    use ptrag_engine::data::store::{ExprDtype, StoreWriter};
    let tmp = tempfile::tempdir().unwrap();
    for (dtype, bad) in [(ExprDtype::F16, 1e30f32), (ExprDtype::F16, f32::NAN), (ExprDtype::F32, f32::INFINITY)] {
        let dir = tmp.path().join("w");
        let mut w = StoreWriter::create(&dir, 3, dtype).unwrap();
        w.push_cell(&[1.0, 2.0, 3.0], 0, 0, 0).unwrap();
        let e = w.push_cell(&[0.5, bad, 1.0], 0, 0, 0).unwrap_err().to_string();
        assert!(e.contains("cell 1, gene 1") && e.contains(&format!("{bad}")), "{dtype:?} {bad}: {e}");
        drop(w);
        assert!(!dir.exists() && !tmp.path().join("w.partial").exists());
    }
}

/// Labels become one safe path component each: no separator, no leading dot, distinct labels stay
/// distinct, ordinary names keep their lowercase form (the fold directories of existing runs).
#[test]
fn labels_become_safe_distinct_path_components() {
    use ptrag_engine::data::path_component;
    assert_eq!(path_component("K562").unwrap(), "k562");
    assert_eq!(path_component("Jurkat.E6-1").unwrap(), "jurkat.e6-1");
    let hostile = ["/etc/passwd", "..", ".", "a/../b", "a\\b", "line\nbreak", "comma,semi;", "Ünïcode", "%2F", "/"];
    let names: Vec<String> = hostile.iter().map(|l| path_component(l).unwrap()).collect();
    for (label, name) in hostile.iter().zip(&names) {
        assert!(!name.contains('/') && !name.contains('\\') && !name.starts_with('.') && !name.contains('\n'), "{label:?} -> {name}");
        assert_eq!(std::path::Path::new(name).components().count(), 1, "{label:?} -> {name}");
    }
    let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "{names:?}");
    assert!(path_component("").is_err() && path_component(&"x".repeat(300)).is_err());
}

/// A test list whose perturbations have no cells in the target cell type holds nothing out: an
/// error naming the split's field, not a fold that tests nothing.
#[test]
fn a_fold_without_test_conditions_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny(&tmp.path().join("s"));
    let mut split = SplitFile::read(&store.split_path).unwrap();
    // A perturbation of the store with no K562 cells: write a copy without them.
    let held = split.fewshot["k562"].test[0].clone();
    let p = store.perturbation_index(&held).unwrap() as u32;
    let g = store.n_genes();
    let mut w = ptrag_engine::data::store::StoreWriter::create(tmp.path().join("t"), g, store.manifest.expression_dtype).unwrap();
    let mut row = vec![0.0f32; g];
    for c in 0..store.n_cells() {
        if store.cell_perturbation[c] == p && store.cell_type[c] == 0 {
            continue;
        }
        store.expression_row(c, &mut row);
        w.push_cell(&row, store.cell_perturbation[c], store.cell_type[c], store.cell_batch[c]).unwrap();
    }
    split.fewshot.get_mut("k562").unwrap().test = vec![held];
    let text = split.to_toml();
    let other = Store::open(w.finish(store.manifest.clone(), &store.genept_table(), &text, &[]).unwrap()).unwrap();
    let Err(e) = Fold::new(&other, &split, &other.split_path, 0) else { panic!("a fold without test conditions") };
    let e = e.to_string();
    assert!(e.contains("fewshot.k562.test") && e.contains("none of the 1 listed"), "{e}");
}
