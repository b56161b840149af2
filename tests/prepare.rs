//! `prepare`: anndata-written files become the store they describe; the built-in data survives
//! export and prepare byte for byte; every validation error names the file and field and leaves
//! no store behind.

mod common;
use common::tolerance as tol;

use ptrag_engine::data::h5ad::{write_h5ad, AnnData};
use ptrag_engine::data::prepare::{export, prepare, Normalize, PrepareOptions};
use ptrag_engine::data::store::{ExprDtype, Store};
use ptrag_engine::data::synth::{self, SynthConfig};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real").join(name)
}

#[test]
fn synth_data_round_trips_through_h5ad_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let original = synth::generate(&SynthConfig::preset("tiny", 7).unwrap(), &dir.path().join("synth"), false, false).unwrap().dir;
    let store = Store::open(&original).unwrap();
    let files = export(&store, &dir.path().join("export")).unwrap();
    let err = export(&store, &dir.path().join("export")).unwrap_err().to_string();
    assert!(err.contains("data.h5ad exists"), "an export is never overwritten: {err}");
    let mut opts = PrepareOptions::new(files[0].clone(), files[1].clone(), dir.path().join("prepared"));
    opts.split = Some(files[2].clone());
    let report = prepare(&opts, false).unwrap();
    assert!(report.dropped_perturbations.is_empty() && report.dropped_cells == 0);
    for file in ["expression.bin", "cell_perturbation.u32", "cell_type.u32", "cell_batch.u32", "genept.f32", "split.toml"] {
        let (a, b) = (std::fs::read(original.join(file)).unwrap(), std::fs::read(report.store.join(file)).unwrap());
        assert!(a == b, "{file} differs after the round trip");
    }
    let (a, b) = (Store::open(&original).unwrap().manifest, Store::open(&report.store).unwrap().manifest);
    assert!(b.source.starts_with("h5ad "), "the prepared store says where it came from: {}", b.source);
    assert_eq!(
        ptrag_engine::data::store::Manifest { source: String::new(), ..a },
        ptrag_engine::data::store::Manifest { source: String::new(), ..b }
    );
}

#[test]
fn anndata_fixtures_prepare_into_the_store_they_describe() {
    let e: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    let col = |k: &str| -> Vec<String> { e[k].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect() };
    let x: Vec<f32> = e["x"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let (genes, perts, lines, batches) = (col("genes"), col("gene"), col("cell_line"), col("gem_group"));
    let dir = tempfile::tempdir().unwrap();
    for (h5ad, genept, expression) in [("dense_gzip.h5ad", "genept.pickle", "X"), ("sparse.h5ad", "genept_numpy.pickle", "obsm/X_hvg")] {
        let mut opts = PrepareOptions::new(fixture(h5ad), fixture(genept), dir.path().join(h5ad));
        opts.split = Some(fixture("split.toml"));
        let r = prepare(&opts, false).unwrap();
        assert_eq!(r.expression, expression, "{h5ad}: auto picks obsm X_hvg when present");
        assert_eq!(r.dropped_perturbations, ["NOVEC"], "{h5ad}");
        assert_eq!((r.dropped_cells, r.genept_coverage), (6, (4, 5)), "{h5ad}");
        let store = Store::open(&r.store).unwrap();
        let m = &store.manifest;
        assert_eq!(m.perturbations, ["non-targeting", "AARS", "BRCA1", "CDK1", "DDX3X"], "control first, then by name");
        let first_line = &lines[perts.iter().position(|p| p != "NOVEC").unwrap()];
        assert_eq!(&m.cell_types[0], first_line, "cell types in order of first appearance");
        assert_eq!(m.n_batches, 3);
        let hvg = col("hvg");
        let kept_genes: Vec<usize> =
            if expression == "X" { (0..6).collect() } else { hvg.iter().map(|h| genes.iter().position(|g| g == h).unwrap()).collect() };
        assert_eq!(m.genes, kept_genes.iter().map(|&g| genes[g].clone()).collect::<Vec<_>>(), "{h5ad}: gene symbols");
        // the kept cells in file order, every value (multiples of 1/8: exact in f16)
        let kept: Vec<usize> = (0..perts.len()).filter(|&i| perts[i] != "NOVEC").collect();
        assert_eq!(store.n_cells(), kept.len());
        let mut row = vec![0.0f32; m.n_genes()];
        for (cell, &i) in kept.iter().enumerate() {
            store.expression_row(cell, &mut row);
            let want: Vec<f32> = kept_genes.iter().map(|&g| x[i * 6 + g]).collect();
            assert_eq!(row, want, "{h5ad}: cell {cell}");
            assert_eq!(m.perturbations[store.cell_perturbation[cell] as usize], perts[i]);
            assert_eq!(m.cell_types[store.cell_type[cell] as usize], lines[i]);
            assert_eq!((store.cell_batch[cell] + 1).to_string(), batches[i], "gem groups 1..3 sorted numerically");
        }
        // GenePT rows: the control's zero, CDK1 found through `cdk1`
        assert!(store.genept_row(0).iter().all(|v| *v == 0.0));
        assert!(store.genept_row(3).iter().any(|v| *v != 0.0));
        let split = std::fs::read_to_string(store.split_path).unwrap();
        assert!(split.contains("test = [\"AARS\"]") && !split.contains("NOVEC"), "{split}");
    }
}

/// A small valid AnnData: 2 cell lines x (2 controls + A, B, C) cells, 3 genes.
fn base() -> AnnData {
    let mut a = AnnData { x: Vec::new(), obs_names: Vec::new(), var_names: vec!["G1".into(), "G2".into(), "G3".into()], obs: Vec::new() };
    let (mut genes, mut lines, mut batches) = (Vec::new(), Vec::new(), Vec::new());
    for line in ["K562", "RPE1"] {
        for p in ["non-targeting", "non-targeting", "A", "B", "C"] {
            a.obs_names.push(format!("c{}", a.obs_names.len()));
            a.x.extend([0.5, 0.0, 1.5]);
            genes.push(p.to_string());
            lines.push(line.to_string());
            batches.push("1".to_string());
        }
    }
    a.obs = vec![("gene".into(), genes), ("cell_line".into(), lines), ("gem_group".into(), batches)];
    a
}

const GENEPT: &str = "A\t1\t0\nB\t0\t1\nC\t1\t1\n";

/// `prepare` on `a` with `genept` (TSV) and an optional split; the error text.
fn failure(a: &AnnData, genept: &str, split: Option<&str>, tweak: impl Fn(&mut PrepareOptions)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (h5ad, g, s, out) =
        (dir.path().join("data.h5ad"), dir.path().join("genept.tsv"), dir.path().join("split.toml"), dir.path().join("store"));
    write_h5ad(&h5ad, a).unwrap();
    std::fs::write(&g, genept).unwrap();
    let mut opts = PrepareOptions::new(h5ad, g, out.clone());
    if let Some(text) = split {
        std::fs::write(&s, text).unwrap();
        opts.split = Some(s);
    }
    tweak(&mut opts);
    let err = prepare(&opts, false).expect_err("must fail").to_string();
    assert!(!out.exists() && !dir.path().join("store.partial").exists(), "no store left behind after: {err}");
    err
}

#[test]
fn the_base_case_prepares() {
    let dir = tempfile::tempdir().unwrap();
    let (h5ad, g) = (dir.path().join("data.h5ad"), dir.path().join("genept.tsv"));
    let mut a = base();
    // gem groups 10 and 9: sorted as numbers, 9 comes first
    a.obs[2].1 = (0..10).map(|i| if i % 2 == 0 { "10" } else { "9" }.to_string()).collect();
    write_h5ad(&h5ad, &a).unwrap();
    std::fs::write(&g, GENEPT).unwrap();
    let mut opts = PrepareOptions::new(h5ad, g, dir.path().join("store"));
    opts.dtype = ExprDtype::F32;
    let r = prepare(&opts, false).unwrap();
    assert_eq!((r.cells, r.genes, r.perturbations, r.batches), (10, 3, 4, 2));
    let store = Store::open(&r.store).unwrap();
    assert_eq!(store.cell_batch, [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]);
    let err = prepare(&opts, false).unwrap_err().to_string();
    assert!(err.contains("exists"), "an existing store is never overwritten: {err}");
    // without a batch column every cell is in one batch
    let opts = PrepareOptions { batch_col: None, out: dir.path().join("one-batch"), ..opts };
    assert_eq!(prepare(&opts, false).unwrap().batches, 1);
    assert!(Store::open(dir.path().join("one-batch")).unwrap().cell_batch.iter().all(|&b| b == 0));
}

#[test]
fn every_validation_error_names_file_field_and_expectation() {
    let ok = |_: &mut PrepareOptions| {};
    let e = failure(&base(), GENEPT, None, |o| o.pert_col = "target_gene".into());
    assert!(e.contains("data.h5ad") && e.contains("obs/target_gene") && e.contains("gene, cell_line, gem_group"), "missing column: {e}");
    let e = failure(&base(), GENEPT, None, |o| o.expression = "obsm:X_hvg".into());
    assert!(e.contains("obsm/X_hvg") && e.contains("not found"), "missing obsm key: {e}");
    let e = failure(&base(), GENEPT, None, |o| o.control = "DMSO_TF".into());
    assert!(e.contains("obs/gene") && e.contains("`DMSO_TF`") && e.contains("non-targeting"), "absent control: {e}");

    let mut a = base();
    a.obs[0].1[5] = "A".into();
    a.obs[0].1[6] = "A".into();
    let e = failure(&a, GENEPT, None, ok);
    assert!(e.contains("obs/cell_line") && e.contains("`RPE1` has none"), "cell type without controls: {e}");

    for (bad, what) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf"), (-0.5, "-0.5")] {
        let mut a = base();
        a.x[7 * 3 + 1] = bad;
        let e = failure(&a, GENEPT, None, ok);
        assert!(e.contains("field `X`") && e.contains("cell `c7` (row 7), gene `G2` has") && e.contains(what), "{what}: {e}");
    }
    // f16 would store 1e30 as infinity: refused for an f16 store, kept exactly in an f32 one.
    let mut a = base();
    a.x[4 * 3] = 1e30;
    let e = failure(&a, GENEPT, None, ok);
    assert!(e.contains("field `X`") && e.contains("cell `c4` (row 4), gene `G1`") && e.contains("--dtype f32"), "f16 overflow: {e}");
    let dir = tempfile::tempdir().unwrap();
    let (h5ad, g) = (dir.path().join("data.h5ad"), dir.path().join("genept.tsv"));
    write_h5ad(&h5ad, &a).unwrap();
    std::fs::write(&g, GENEPT).unwrap();
    let opts = PrepareOptions { dtype: ExprDtype::F32, ..PrepareOptions::new(h5ad, g, dir.path().join("store")) };
    let store = Store::open(prepare(&opts, false).unwrap().store).unwrap();
    let mut row = vec![0.0f32; 3];
    store.expression_row(4, &mut row);
    assert_eq!(row[0], 1e30);

    let mut a = base();
    a.var_names[2] = "G1".into();
    let e = failure(&a, GENEPT, None, ok);
    assert!(e.contains("field `var`") && e.contains("`G1` is gene 0 and gene 2"), "duplicate genes: {e}");
    let mut a = base();
    a.obs[0].1[3] = "a".into();
    let e = failure(&a, GENEPT, None, ok);
    assert!(e.contains("obs/gene") && e.contains("unique up to case"), "duplicate perturbations: {e}");

    let e = failure(&base(), "A\t1\t0\nB\t0\t1\t2\nC\t1\t1\n", None, ok);
    assert!(e.contains("genept.tsv") && e.contains("field `B`") && e.contains("2 values"), "GenePT dimension: {e}");

    let split = "[fewshot.\"d.k562\"]\nval = [\"A\"]\ntest = [\"B\", \"ZZZ\"]\n";
    let e = failure(&base(), GENEPT, Some(split), ok);
    assert!(e.contains("split.toml") && e.contains("fewshot.\"d.k562\".test") && e.contains("unknown: ZZZ"), "unknown split names: {e}");
    // the control is every fold's basal population, never a held-out condition
    let split = "[fewshot.\"d.k562\"]\nval = [\"non-targeting\"]\ntest = [\"B\"]\n";
    let e = failure(&base(), GENEPT, Some(split), ok);
    assert!(e.contains("fewshot.\"d.k562\".val") && e.contains("other than the control `non-targeting`"), "control held out: {e}");
    let split = "[fewshot.\"d.hepg2\"]\nval = [\"A\"]\ntest = [\"B\"]\n";
    let e = failure(&base(), GENEPT, Some(split), ok);
    assert!(e.contains("fewshot.\"d.hepg2\"") && e.contains("K562, RPE1"), "unknown cell line: {e}");
}

/// scanpy's view of `raw_counts.h5ad` (tools/make_h5ad_fixtures.py `raw-counts`, scanpy 1.11.5).
struct Scanpy {
    genes: Vec<String>,
    cells: usize,
    x_normalised: Vec<f64>,
    means: Vec<f64>,
    dispersions: Vec<f64>,
    dispersions_norm: Vec<f64>,
    hvg: Vec<String>,
}

fn scanpy_expected() -> Scanpy {
    let e: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("raw_counts_expected.json")).unwrap()).unwrap();
    let strings = |k: &str| -> Vec<String> { e[k].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect() };
    let floats = |k: &str| -> Vec<f64> { e[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap_or(f64::NAN)).collect() };
    Scanpy {
        genes: strings("genes"),
        cells: e["obs_names"].as_array().unwrap().len(),
        x_normalised: floats("x_normalised"),
        means: floats("means"),
        dispersions: floats("dispersions"),
        dispersions_norm: floats("dispersions_norm"),
        hvg: strings("hvg"),
    }
}

fn raw_counts_options(out: PathBuf) -> PrepareOptions {
    PrepareOptions {
        genept: None,
        batch_col: None,
        dtype: ExprDtype::F32,
        ..PrepareOptions::new(fixture("raw_counts.h5ad"), PathBuf::new(), out)
    }
}

#[test]
fn raw_counts_are_refused_without_normalize() {
    let dir = tempfile::tempdir().unwrap();
    let err = prepare(&raw_counts_options(dir.path().join("s")), false).unwrap_err().to_string();
    assert!(err.contains("raw_counts.h5ad") && err.contains("X") && err.contains("integer counts"), "{err}");
    assert!(err.contains("--normalize total-log1p") && err.contains("--normalize none"), "the error names the options: {err}");
    assert!(!dir.path().join("s").exists());
    // said explicitly, the counts are stored as they are
    let opts = PrepareOptions { normalize: Some(Normalize::None), ..raw_counts_options(dir.path().join("s")) };
    let r = prepare(&opts, false).unwrap();
    assert!(r.values_found.starts_with("integer counts"), "{}", r.values_found);
    let store = Store::open(&r.store).unwrap();
    let mut row = vec![0.0; store.n_genes()];
    store.expression_row(0, &mut row);
    assert!(row.iter().all(|v| v.fract() == 0.0) && row.iter().any(|&v| v > 1.0), "{row:?}");
}

#[test]
fn normalize_and_hvg_equal_scanpy_on_the_raw_count_fixture() {
    let s = scanpy_expected();
    let dir = tempfile::tempdir().unwrap();
    let opts = PrepareOptions {
        normalize: Some(Normalize::parse("total-log1p", 1e4).unwrap()),
        hvg: Some(8),
        drop: vec!["unassigned".into()],
        min_cells: 5,
        ..raw_counts_options(dir.path().join("s"))
    };
    let r = prepare(&opts, false).unwrap();
    assert_eq!(r.dropped_labels, [("unassigned".to_string(), 8)]);
    assert_eq!(r.dropped_conditions, [("DDX3X".to_string(), "K562".to_string(), 3)]);
    assert_eq!(r.perturbations_without_cells, ["DDX3X"]);
    assert_eq!((r.genes_in_file, r.embed_dim, r.cells), (40, 0, s.cells));
    let store = Store::open(&r.store).unwrap();
    assert_eq!(store.manifest.genes, s.hvg, "the chosen genes, in the file's order");
    assert!(!store.has_genept());
    assert_eq!(store.manifest.perturbations, ["non-targeting", "AARS", "BRCA1", "CDK1"]);
    let columns: Vec<usize> = s.hvg.iter().map(|g| s.genes.iter().position(|x| x == g).unwrap()).collect();
    let mut row = vec![0.0; store.n_genes()];
    for cell in 0..s.cells {
        store.expression_row(cell, &mut row);
        for (j, &g) in columns.iter().enumerate() {
            let want = s.x_normalised[cell * s.genes.len() + g];
            assert!(
                (row[j] as f64 - want).abs() <= tol::F32_STORAGE * want.max(1.0),
                "cell {cell} gene {}: {} vs scanpy {want}",
                s.hvg[j],
                row[j]
            );
        }
    }
}

#[test]
fn hvg_statistics_equal_scanpy_gene_by_gene() {
    use ptrag_engine::data::hvg::HvgAccumulator;
    let s = scanpy_expected();
    let g = s.genes.len();
    let mut acc = HvgAccumulator::new(g);
    for row in s.x_normalised.chunks(g) {
        acc.push(&row.iter().map(|&v| v as f32).collect::<Vec<_>>());
    }
    let r = acc.finish(8).unwrap();
    let close = |a: f64, b: f64| (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol::F32_STORAGE * b.abs().max(1.0);
    for i in 0..g {
        assert!(close(r.means[i], s.means[i]), "{}: mean {} vs {}", s.genes[i], r.means[i], s.means[i]);
        assert!(close(r.dispersions[i], s.dispersions[i]), "{}: dispersion {} vs {}", s.genes[i], r.dispersions[i], s.dispersions[i]);
        assert!(
            close(r.dispersions_norm[i], s.dispersions_norm[i]),
            "{}: normalised dispersion {} vs {}",
            s.genes[i],
            r.dispersions_norm[i],
            s.dispersions_norm[i]
        );
    }
    let chosen: Vec<&String> = r.selected().iter().map(|&i| &s.genes[i]).collect();
    assert_eq!(chosen, s.hvg.iter().collect::<Vec<_>>());
    assert!(s.dispersions_norm.iter().filter(|v| **v == 1.0).count() >= 1, "the fixture has a one-gene bin");
    assert!(s.dispersions.iter().any(|v| v.is_nan()), "and genes never seen");
}

#[test]
fn drop_and_min_cells_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let base = || PrepareOptions { normalize: Some(Normalize::None), ..raw_counts_options(dir.path().join("s")) };
    let err = prepare(&PrepareOptions { drop: vec!["unasigned".into()], ..base() }, false).unwrap_err().to_string();
    assert!(err.contains("raw_counts.h5ad") && err.contains("obs/gene") && err.contains("`unasigned`"), "{err}");
    let err = prepare(&PrepareOptions { drop: vec!["non-targeting".into()], ..base() }, false).unwrap_err().to_string();
    assert!(err.contains("--drop") && err.contains("control"), "{err}");
    let err = prepare(&PrepareOptions { min_cells: 1000, ..base() }, false).unwrap_err().to_string();
    assert!(err.contains("--min-cells") && err.contains("1000"), "{err}");
    let err = prepare(&PrepareOptions { hvg: Some(0), ..base() }, false).unwrap_err().to_string();
    assert!(err.contains("--hvg"), "{err}");
    assert!(!dir.path().join("s").exists(), "no store is left behind");
}

#[test]
fn export_refuses_a_damaged_store_with_nan() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = synth::generate(&SynthConfig::preset("tiny", 7).unwrap(), &dir.path().join("synth"), false, false).unwrap().dir;
    let path = store_dir.join("expression.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    // cell 1, gene 2 of an f16 store: the NaN bit pattern
    let g = Store::open(&store_dir).unwrap().n_genes();
    let at = (g + 2) * 2;
    bytes[at..at + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let store = Store::open(&store_dir).unwrap();
    let err = export(&store, &dir.path().join("out")).unwrap_err().to_string();
    assert!(err.contains("expression.bin") && err.contains("cell 1") && err.contains("NaN"), "{err}");
    assert!(!dir.path().join("out/data.h5ad").exists());
}

/// Exclusive access to a store being written (issue 37): a second writer of the same store fails
/// at once, naming the holder; a user's `X.partial` directory is never touched; what a killed
/// writer left (marked as the engine's) is cleaned; a directory that is not a store is never
/// replaced.
#[test]
fn a_store_being_written_is_locked_and_only_the_engines_partial_directories_are_removed() {
    use ptrag_engine::data::lock::DirLock;
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig::preset("tiny", 7).unwrap();
    let out = dir.path().join("store");
    let user = dir.path().join("store.partial");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("my_notes.txt"), "mine").unwrap();
    let stale = dir.path().join("store.partial-4000000");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join(".ptrag-partial"), "").unwrap();
    let foreign = dir.path().join("store.partial-notes");
    std::fs::create_dir(&foreign).unwrap();

    let held = DirLock::acquire(&out, "test").unwrap();
    let err = synth::generate(&cfg, &out, false, false).unwrap_err().to_string();
    assert!(err.contains(&format!("process {}", std::process::id())) && err.contains("store"), "{err}");
    assert!(!out.exists());
    drop(held);
    synth::generate(&cfg, &out, false, false).unwrap();
    assert_eq!(std::fs::read_to_string(user.join("my_notes.txt")).unwrap(), "mine");
    assert!(!stale.exists(), "a killed writer's partial directory is cleaned");
    assert!(foreign.exists(), "a directory without the engine's mark is never removed");
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("store.partial-") && n != "store.partial-notes")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(!out.join(".ptrag-partial").exists());

    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("data.txt"), "keep").unwrap();
    let err = synth::generate(&cfg, &mine, false, false).unwrap_err().to_string();
    assert!(err.contains("not a store"), "{err}");
    assert_eq!(std::fs::read_to_string(mine.join("data.txt")).unwrap(), "keep");
}

/// Without `--split`, the generated split fits the file: a cell line's val and test lists hold
/// only perturbations measured there (a file whose cell lines measured different perturbations,
/// like K562 beside glioblastoma lines in a real one), and each line keeps one for training.
#[test]
fn a_generated_split_draws_each_cell_lines_lists_from_what_it_measured() {
    use ptrag_engine::data::split::SplitFile;
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..30).map(|i| format!("P{i:02}")).collect();
    let mut a = AnnData { x: Vec::new(), obs_names: Vec::new(), var_names: vec!["G1".into(), "G2".into()], obs: Vec::new() };
    let (mut genes, mut lines) = (Vec::new(), Vec::new());
    // K562 measured all 30, A172 the last 9, T98G only 3
    for (line, from) in [("K562", 0), ("A172", 21), ("T98G", 27)] {
        for p in std::iter::once("non-targeting").chain(names[from..].iter().map(String::as_str)) {
            a.obs_names.push(format!("c{}", a.obs_names.len()));
            a.x.extend([0.5, 1.0]);
            genes.push(p.to_string());
            lines.push(line.to_string());
        }
    }
    a.obs = vec![("gene".into(), genes), ("cell_line".into(), lines)];
    let (h5ad, g) = (dir.path().join("data.h5ad"), dir.path().join("genept.tsv"));
    write_h5ad(&h5ad, &a).unwrap();
    std::fs::write(&g, names.iter().enumerate().map(|(i, n)| format!("{n}\t{i}\t1\n")).collect::<String>()).unwrap();
    let mut opts = PrepareOptions::new(h5ad, g, dir.path().join("store"));
    opts.batch_col = None;
    let store = Store::open(prepare(&opts, false).unwrap().store).unwrap();
    let split = SplitFile::read(&store.split_path).unwrap();
    for (line, measured) in [("k562", &names[..]), ("a172", &names[21..]), ("t98g", &names[27..])] {
        let held = &split.fewshot[line];
        assert!(!held.val.is_empty() && !held.test.is_empty(), "{line}: {held:?}");
        assert!(held.val.iter().chain(&held.test).all(|p| measured.contains(p)), "{line} lists a perturbation it never measured: {held:?}");
        assert!(held.val.len() + held.test.len() < measured.len(), "{line} keeps one for training: {held:?}");
    }
    // a line that measured everything gets the real files' proportions
    assert_eq!(split.fewshot["k562"].test.len(), (30.0 * 624.0 / 2024.0f64).round() as usize);
}

/// `inspect` runs `prepare`'s own checks over the whole file, writing nothing: what prepare would
/// refuse (here a cell type without controls, duplicate genes, a NaN beyond the first cells) is
/// said, and an acceptable file is said to be so.
#[test]
fn inspect_says_what_prepare_would_refuse() {
    use ptrag_engine::data::inspect::inspect;
    let dir = tempfile::tempdir().unwrap();
    let look = |name: &str, a: &AnnData| {
        let path = dir.path().join(name);
        write_h5ad(&path, a).unwrap();
        inspect(&path, "gene", "cell_line", "non-targeting").unwrap()
    };
    let text = look("ok.h5ad", &base());
    assert!(text.contains("prepare (--genept none, --batch-col gem_group) would accept it: 10 cells x 3 genes"), "{text}");
    let mut a = base();
    a.obs[0].1[5] = "A".into();
    a.obs[0].1[6] = "A".into();
    let text = look("no-controls.h5ad", &a);
    assert!(text.contains("prepare would refuse this") && text.contains("`RPE1` has none"), "{text}");
    let mut a = base();
    a.var_names[2] = "G1".into();
    let text = look("duplicate-genes.h5ad", &a);
    assert!(text.contains("prepare would refuse this") && text.contains("G1"), "{text}");
    let mut a = base();
    a.x[9 * 3 + 2] = f32::NAN;
    let text = look("nan.h5ad", &a);
    assert!(text.contains("prepare would refuse this") && text.contains("cell `c9`") && text.contains("NaN"), "{text}");
    // accepted, but with a warning: every value zero
    let mut a = base();
    a.x.iter_mut().for_each(|v| *v = 0.0);
    let text = look("zeros.h5ad", &a);
    assert!(text.contains("would accept it") && text.contains("warning: every expression value of the 10 kept cells is zero"), "{text}");
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries.len(), 5, "nothing written beside the files: {entries:?}");
}
