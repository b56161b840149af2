//! The binary: errors are one line on stderr with a non-zero exit code; `synth` and `train` run.

mod common;
use common::tolerance as tol;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ptrag-engine"))
}

#[test]
fn missing_store_is_a_one_line_error() {
    let out = cli().args(["train", "--data", "/nonexistent/store", "--quiet"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/store/manifest.json"), "{err}");
}

#[test]
fn unknown_preset_and_cell_type_are_rejected() {
    let out = cli().args(["synth", "--preset", "huge", "--quiet"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tiny, small or replogle"));

    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("s");
    assert!(cli().args(["synth", "--preset", "tiny", "--quiet", "--out"]).arg(&store).status().unwrap().success());
    let out = cli().args(["train", "--quiet", "--target-cell-type", "Neuron", "--data"]).arg(&store).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Neuron"));
}

fn tiny_store(dir: &Path) -> PathBuf {
    let store = dir.join("s");
    assert!(cli().args(["synth", "--preset", "tiny", "--quiet", "--out"]).arg(&store).status().unwrap().success());
    store
}

/// The tiny store and a 2-step PT-RAG run on it (`dir/s`, `dir/pt-rag`).
fn tiny_pt_rag_run(dir: &Path) -> (PathBuf, PathBuf) {
    let store = tiny_store(dir);
    let run = dir.join("pt-rag");
    assert!(train(&store, &run, &["--model", "pt-rag", "--top-k", "4", "--steps", "2", "--val-every", "0"]).status.success());
    (store, run)
}

/// `train` on the tiny store with a small architecture.
fn train(store: &Path, run: &Path, extra: &[&str]) -> Output {
    train_like(store, run, "train", extra)
}

/// `export` of `store` into `out` (data.h5ad, genept.safetensors, split.toml), which must succeed.
fn export(store: &Path, out: &Path) {
    assert!(cli().args(["export", "--quiet", "--out"]).arg(out).arg(store).status().unwrap().success());
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn each_model_trains_and_writes_a_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    for model in ["state", "state-genept", "vanilla-rag", "pt-rag"] {
        let run = tmp.path().join(model);
        let mut args = vec!["--model", model, "--steps", "4", "--val-every", "2"];
        if model.ends_with("rag") {
            args.extend(["--top-k", "4"]);
        }
        let out = train(&store, &run, &args);
        assert!(out.status.success(), "{model}: {}", stderr(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("energy distance") && stdout.contains("control mean"), "{stdout}");
        assert!(stdout.contains("(the strongest baseline;"), "{stdout}");
        let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
        for b in ["control", "training-mean", "cross-cell-type", "neighbours", "linear"] {
            assert!(metrics["baselines_mse_change"][b].as_f64().is_some_and(f64::is_finite), "{model}: {b} in {metrics}");
        }
        // The control baseline's figure is the one `evaluate` has always printed beside the model.
        let control = metrics["baselines_mse_change"]["control"].as_f64().unwrap();
        assert!((control - metrics["test"]["mse_change_control_baseline"].as_f64().unwrap()).abs() < tol::SAME_VALUES);
        for f in ["config.toml", "log.jsonl", "metrics.json", "checkpoint-best.safetensors", "checkpoint-last.safetensors"] {
            assert!(run.join(f).exists(), "{model}: {f} missing");
        }
        assert_eq!(run.join("retrieval-test.jsonl").exists(), model.ends_with("rag"), "{model}: retrieval record");
        let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
        assert_eq!(log.lines().filter(|l| l.contains("\"loss\"")).count(), 4);
        assert_eq!(log.lines().filter(|l| l.contains("val_energy")).count(), 2);
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(config.contains(&format!("kind = \"{model}\"")), "{config}");
    }
}

#[test]
fn options_come_from_a_toml_file_with_flags_winning() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let options = tmp.path().join("run.toml");
    std::fs::write(&options, "model = \"pt-rag\"\ntop-k = 3\nsteps = 2\ncompat = \"reference\"\nsparsity = 0.5\n").unwrap();
    let run = tmp.path().join("run");
    let out = train(&store, &run, &["--config", options.to_str().unwrap(), "--sparsity", "0.25", "--frozen-backbone", "false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    for line in [
        "kind = \"pt-rag\"",
        "top_k = 3",
        "steps = 2",
        "sparsity = 0.25",
        "causal = true",
        "rope_theta = 10000.0",
        "frozen_backbone = false",
    ] {
        assert!(config.contains(line), "missing `{line}` in\n{config}");
    }
    for line in [
        "eval_selection = \"sampled\"",
        "retrieval_database = \"training\"",
        "self_exclusion = \"first-set-in-training\"",
        "reference_init = true",
    ] {
        assert!(config.contains(line), "compat reference should set `{line}` in\n{config}");
    }

    std::fs::write(&options, "modle = \"pt-rag\"\n").unwrap();
    let out = train(&store, &tmp.path().join("run2"), &["--config", options.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("run.toml") && stderr(&out).contains("modle"), "{}", stderr(&out));
    // a value of the wrong type is named by its key, among other keys, in both parts of the file
    for (text, key) in [("lr = 1e-3\nsteps = \"abc\"\n", "field `steps`"), ("candidate-context = \"bogus\"\n", "field `candidate-context`")]
    {
        std::fs::write(&options, text).unwrap();
        let out = train(&store, &tmp.path().join("run2"), &["--config", options.to_str().unwrap()]);
        assert!(out.status.code() == Some(1) && stderr(&out).contains("run.toml") && stderr(&out).contains(key), "{}", stderr(&out));
    }

    let out = train(&store, &tmp.path().join("run3"), &["--model", "state", "--top-k", "4"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--top-k") && stderr(&out).contains("not state"), "{}", stderr(&out));
}

#[test]
fn resume_extends_a_run_and_refuses_other_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let (short, straight) = (tmp.path().join("short"), tmp.path().join("straight"));
    assert!(train(&store, &short, &["--model", "pt-rag", "--top-k", "4", "--steps", "3", "--val-every", "0"]).status.success());
    assert!(train(&store, &straight, &["--model", "pt-rag", "--top-k", "4", "--steps", "5", "--val-every", "0"]).status.success());
    let out = cli().args(["train", "--quiet", "--resume"]).arg(&short).args(["--steps", "5"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let losses = |dir: &Path| -> Vec<String> {
        let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
        log.lines()
            .filter(|l| l.contains("\"loss\""))
            .map(|l| l.split("\"loss\":").nth(1).unwrap().split(',').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(losses(&short), losses(&straight), "steps 4 and 5 of the extended run repeat the straight run");

    let out = cli().args(["train", "--quiet", "--resume"]).arg(&short).args(["--lr", "0.1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("only --steps may change") && stderr(&out).contains("--lr"), "{}", stderr(&out));

    let out = train(&store, &short, &["--steps", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already holds a run"), "{}", stderr(&out));
}

#[test]
fn ctrl_c_checkpoints_and_the_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let run = tmp.path().join("run");
    let child = small_run(&store, &run, "train", &["--steps", "100000", "--val-every", "0"]).stderr(Stdio::piped()).spawn().unwrap();
    let log = run.join("log.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |l| l.lines().count()) < 3 {
        assert!(start.elapsed().as_secs() < 60, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap();
    assert!(last.contains("interrupted"), "{last}");
    let step: u64 = serde_json::from_str::<serde_json::Value>(last).unwrap()["step"].as_u64().unwrap();
    // Resume to a few steps past the interruption.
    let target = (step + 2).to_string();
    let out = cli().args(["train", "--quiet", "--resume"]).arg(&run).args(["--steps", &target]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().filter(|l| l.contains("\"loss\"")).count() as u64, step + 2);
}

/// The losses and validation energies of a run's log, in order, as written.
fn log_values(run: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| match (v.get("loss"), v.get("val_energy")) {
            (Some(loss), _) => Some(format!("{} loss {loss}", v["step"])),
            (_, Some(energy)) => Some(format!("{} val {energy}", v["step"])),
            _ => None,
        })
        .collect()
}

/// SIGKILL at instants spread over a run that checkpoints every step, then `--resume` (or, when
/// the kill came before the run was recorded, `train` again): every log is the uninterrupted run's,
/// bit for bit, and so is the test summary.
#[test]
fn a_run_killed_at_any_instant_resumes_to_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let args = ["--model", "pt-rag", "--top-k", "4", "--steps", "40", "--val-every", "1"];
    let full = tmp.path().join("full");
    let start = std::time::Instant::now();
    assert!(train(&store, &full, &args).status.success());
    let duration = start.elapsed();
    let (want, want_test) = (log_values(&full), std::fs::read_to_string(full.join("metrics.json")).unwrap());
    let test_of = |metrics: &str| serde_json::from_str::<serde_json::Value>(metrics).unwrap()["test"].clone();
    let kills = 8;
    for i in 0..kills {
        let run = tmp.path().join(format!("killed-{i}"));
        let mut child = small_run(&store, &run, "train", &args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(duration.mul_f64((i as f64 + 0.5) / kills as f64));
        let _ = child.kill(); // SIGKILL; the run may have finished already
        child.wait().unwrap();
        let out = if run.join("config.toml").exists() {
            cli().args(["train", "--quiet", "--resume"]).arg(&run).output().unwrap()
        } else {
            train(&store, &run, &args)
        };
        assert!(out.status.success(), "kill {i}: {}", stderr(&out));
        assert_eq!(log_values(&run), want, "kill {i}: the resumed run's log differs");
        let got_test = std::fs::read_to_string(run.join("metrics.json")).unwrap();
        assert_eq!(test_of(&got_test), test_of(&want_test), "kill {i}: the test results differ");
    }
    assert!(test_of(&want_test)["mse_change"].is_number(), "{want_test}");
    // A finished run resumed (a kill after its last checkpoint, before its summary) adds nothing.
    let out = cli().args(["train", "--quiet", "--resume"]).arg(&full).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(log_values(&full), want, "resuming the finished run changed its log");
}

/// A store records a fingerprint of its data; resuming a run against another store at the same
/// path is an error naming both.
#[test]
fn resume_refuses_a_store_replaced_by_another() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let run = tmp.path().join("run");
    assert!(train(&store, &run, &["--steps", "2", "--val-every", "0"]).status.success());
    let resume = || cli().args(["train", "--quiet", "--resume"]).arg(&run).args(["--steps", "3"]).output().unwrap();
    std::fs::remove_dir_all(&store).unwrap();
    let regenerate =
        |seed: &str| cli().args(["synth", "--preset", "tiny", "--quiet", "--seed", seed, "--out"]).arg(&store).output().unwrap().status;
    assert!(regenerate("12").success());
    let out = resume();
    assert!(!out.status.success() && stderr(&out).contains("fingerprint"), "{}", stderr(&out));
    // The same data written again is the same store.
    std::fs::remove_dir_all(&store).unwrap();
    assert!(regenerate("42").success()); // `synth`'s default seed, as `tiny_store`'s
    let out = resume();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn every_fold_runs_in_turn_with_results_kept_per_fold() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let run = tmp.path().join("all");
    let out = train(&store, &run, &["--target-cell-type", "all", "--steps", "2", "--val-every", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for ct in ["k562", "rpe1", "jurkat", "hepg2"] {
        assert!(run.join(ct).join("metrics.json").exists(), "{ct}");
    }
    let folds: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("folds.json")).unwrap()).unwrap();
    assert_eq!(folds.as_array().unwrap().len(), 4);
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("test split").count(), 4);
    // Resuming a finished run keeps its folds; extending it continues every fold.
    let before = std::fs::read_to_string(run.join("rpe1/log.jsonl")).unwrap();
    let out = cli().args(["train", "--quiet", "--resume"]).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(run.join("rpe1/log.jsonl")).unwrap(), before, "a finished fold is not re-run");
    let out = cli().args(["train", "--quiet", "--resume"]).arg(&run).args(["--steps", "3"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for ct in ["k562", "rpe1", "jurkat", "hepg2"] {
        let log = std::fs::read_to_string(run.join(ct).join("log.jsonl")).unwrap();
        assert_eq!(log.lines().filter(|l| l.contains("\"loss\"")).count(), 3, "{ct}");
    }
}

#[test]
fn a_diverging_run_stops_with_the_step_and_the_kept_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let out = train(&store, &tmp.path().join("run"), &["--steps", "20", "--lr", "1e30", "--clip-norm", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("training stopped at step") && err.contains("checkpoint-last.safetensors"), "{err}");
}

#[test]
fn evaluate_reports_every_model_and_the_five_baselines() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let (a, b) = (tmp.path().join("state"), tmp.path().join("pt-rag"));
    assert!(train(&store, &a, &["--steps", "2", "--val-every", "0"]).status.success());
    assert!(train(&store, &b, &["--model", "pt-rag", "--top-k", "4", "--steps", "2", "--val-every", "0"]).status.success());
    let out_dir = tmp.path().join("eval");
    let out = cli().args(["evaluate", "--quiet", "--pca-components", "5", "--out"]).arg(&out_dir).arg(&a).arg(&b).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = std::fs::read_to_string(out_dir.join("per_condition.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(header.starts_with("model,target,perturbation,cell_type,cells,pearson_deg"), "{header}");
    for model in ["state", "pt-rag", "control", "training-mean", "cross-cell-type", "neighbours", "linear"] {
        let n = csv.lines().filter(|l| l.starts_with(&format!("{model},"))).count();
        assert!(n > 0, "{model} rows missing");
    }
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(report.contains("Mann-Whitney") && report.contains("| pearson_deg"), "{report}");
    assert!(report.contains("Each model against the strongest baseline") && report.contains("neighbours k ="), "{report}");
    for figure in ["distributions.svg", "curves.svg"] {
        let svg = std::fs::read_to_string(out_dir.join(figure)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("pt-rag"), "{figure}");
        assert!(report.contains(figure), "{figure} not in the report");
    }
    let err = cli().args(["evaluate", "--quiet"]).arg(tmp.path().join("nowhere")).output().unwrap();
    assert_eq!(err.status.code(), Some(1));
    assert!(stderr(&err).contains("nowhere/config.toml"), "{}", stderr(&err));
}

#[test]
fn reproduce_trains_the_four_models_and_writes_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let root = tmp.path().join("repro");
    let out = train_like(&store, &root, "reproduce", &["--steps", "2", "--val-every", "0", "--top-k", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for model in ["state", "state-genept", "vanilla-rag", "pt-rag"] {
        assert!(root.join(model).join("metrics.json").exists(), "{model}");
    }
    let report = std::fs::read_to_string(root.join("report/report.md")).unwrap();
    for file in ["per_condition.csv", "summary.json", "summary.csv", "distributions.svg", "curves.svg", "retrieval.json"] {
        assert!(root.join("report").join(file).exists(), "{file} missing from the report");
    }
    let agg = std::fs::read_to_string(root.join("report/summary.csv")).unwrap();
    assert!(agg.starts_with("model,cell_type,metric,mean,sd,conditions\n") && agg.contains("\npt-rag,all,pearson_deg,"), "{agg}");
    for col in ["| control |", "| pt-rag |", "| state |", "| state-genept |", "| training-mean |", "| vanilla-rag |", "Retrieval analysis"]
    {
        assert!(report.contains(col.trim_start_matches("| ").trim_end_matches(" |")), "{col} missing from\n{report}");
    }
    // Run again: finished models are kept, the report is rewritten.
    let out = train_like(&store, &root, "reproduce", &["--steps", "2", "--val-every", "0", "--top-k", "4"]);
    assert!(out.status.success() && stderr(&out).contains("finished run kept"), "{}", stderr(&out));
}

/// PT-RAG's own options beyond the paper (`--tau-start`, `--soft-selection-steps`) train a PT-RAG
/// variant beside the paper's four, which run without them (they were refused for STATE before).
#[test]
fn reproduce_with_pt_rag_only_options_trains_the_variant() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let root = tmp.path().join("repro");
    let args = ["--steps", "2", "--val-every", "0", "--top-k", "4", "--tau-start", "2", "--soft-selection-steps", "1"];
    let out = train_like(&store, &root, "reproduce", &args);
    assert!(out.status.success(), "{}", stderr(&out));
    for model in ["state", "state-genept", "vanilla-rag", "pt-rag"] {
        let config = std::fs::read_to_string(root.join(model).join("config.toml")).unwrap();
        assert!(!config.contains("tau_start") && config.contains("soft_selection_steps = 0"), "{model}: {config}");
    }
    let variants: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("pt-rag+"))
        .collect();
    assert_eq!(variants.len(), 1, "{variants:?}");
    let config = std::fs::read_to_string(root.join(&variants[0]).join("config.toml")).unwrap();
    assert!(config.contains("tau_start = 2") && config.contains("soft_selection_steps = 1"), "{config}");
}

/// Every registered option beyond the paper, through `reproduce`: the paper's four run without it,
/// and each model it applies to is trained once more with it (the variant named by its suffix),
/// the others not. Each is run with its registry entry's example.
#[test]
fn reproduce_trains_a_variant_for_every_model_each_registered_option_applies_to() {
    use ptrag_engine::model::beyond::REGISTRY;
    use ptrag_engine::model::ModelKind;
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    for option in REGISTRY {
        let example = option.example;
        assert!(!example.is_empty(), "{}: the registry gives no example", option.flag_name());
        let needs_responses = example.contains(&"--candidate-context");
        let root = tmp.path().join(option.field);
        let mut args = vec!["--steps", "1", "--val-every", "0", "--top-k", "4", "--eval-draws", "1"];
        args.extend_from_slice(example);
        let out = train_like(&store, &root, "reproduce", &args);
        assert!(out.status.success(), "{}: {}", option.flag_name(), stderr(&out));
        let dirs: Vec<String> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        for kind in ModelKind::ALL {
            assert!(root.join(kind.name()).join("metrics.json").exists(), "{}: the paper's {}", option.flag_name(), kind.name());
            let variants: Vec<&String> = dirs.iter().filter(|d| d.starts_with(&format!("{}+", kind.name()))).collect();
            let applies = option.applies.to(kind) || (needs_responses && kind.retrieves());
            assert_eq!(variants.len(), applies as usize, "{}: {} variants {variants:?}", option.flag_name(), kind.name());
            if option.applies.to(kind) {
                let config = std::fs::read_to_string(root.join(variants[0]).join("config.toml")).unwrap();
                let run: toml::Table = toml::from_str(&config).unwrap();
                let model: ptrag_engine::model::ModelConfig = run["train"]["model"].clone().try_into().unwrap();
                let suffix =
                    (option.suffix)(&model).unwrap_or_else(|| panic!("{}: {} trained without it", option.flag_name(), variants[0]));
                assert!(variants[0].split('+').any(|s| s == suffix), "{}: {}", option.flag_name(), variants[0]);
            }
        }
    }
}

/// Options beyond the paper train the retrieval models once more beside the paper's four, which
/// stay as they are.
#[test]
fn reproduce_with_observed_responses_adds_the_variants_beside_the_papers_models() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let root = tmp.path().join("repro");
    let args = ["--steps", "2", "--val-every", "0", "--top-k", "4", "--candidate-context", "both", "--response-readout"];
    let out = train_like(&store, &root, "reproduce", &args);
    assert!(out.status.success(), "{}", stderr(&out));
    for model in ["state", "state-genept", "vanilla-rag", "pt-rag", "vanilla-rag+both", "pt-rag+both+readout"] {
        assert!(root.join(model).join("metrics.json").exists(), "{model}");
    }
    let config = std::fs::read_to_string(root.join("pt-rag/config.toml")).unwrap();
    assert!(config.contains("candidate_context = \"genept\"") && config.contains("response_readout = false"), "{config}");
    let report = std::fs::read_to_string(root.join("report/report.md")).unwrap();
    assert!(report.contains("| pt-rag+both+readout |") || report.contains("pt-rag+both+readout"), "{report}");
    assert!(report.contains("vanilla-rag+both"), "{report}");
}

#[test]
fn predict_writes_matching_predicted_and_real_h5ad_files() {
    use ptrag_engine::data::h5ad::H5ad;
    use ptrag_engine::data::store::Store;
    let tmp = tempfile::tempdir().unwrap();
    let (store_dir, run) = tiny_pt_rag_run(tmp.path());
    let out = cli().args(["predict", "--quiet", "--pert-col", "target_gene"]).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let read = |name: &str| H5ad::open(&run.join("predictions").join(name)).unwrap().read(&["target_gene", "cell_line"]).unwrap();
    let (pred, real) = (read("pred.h5ad"), read("real.h5ad"));

    let store = Store::open(&store_dir).unwrap();
    let m = &store.manifest;
    assert_eq!(pred.var_names, m.genes, "the store's genes in its order");
    assert_eq!(real.var_names, m.genes);
    assert_eq!(pred.obs, real.obs, "the same perturbation and cell type per row, so equal counts");
    assert_eq!(pred.obs_names, real.obs_names);
    assert!(pred.x.iter().all(|&v| v >= 0.0));
    let target = &m.cell_types[0];
    assert!(pred.obs[1].1.iter().all(|c| c == target), "only the target cell type");
    let perts = &pred.obs[0].1;
    assert!(perts.iter().any(|p| p == &m.control) && perts.iter().any(|p| p != &m.control), "controls and perturbed cells");

    // Every real row is a cell of the store with that perturbation in the target cell type, and
    // control rows are the same real cells in both files.
    let g = store.n_genes();
    let mut row = vec![0.0f32; g];
    let rows_of = |pert: &str, row: &mut Vec<f32>| -> Vec<Vec<f32>> {
        let (p, c) = (store.perturbation_index(pert).unwrap() as u32, store.cell_type_index(target).unwrap() as u32);
        (0..store.n_cells())
            .filter(|&i| store.cell_perturbation[i] == p && store.cell_type[i] == c)
            .map(|i| {
                store.expression_row(i, row);
                row.clone()
            })
            .collect()
    };
    for (i, pert) in perts.iter().enumerate() {
        let r = &real.x[i * g..(i + 1) * g];
        assert!(rows_of(pert, &mut row).iter().any(|c| c.as_slice() == r), "row {i} ({pert}) is not a real cell");
        if pert == &m.control {
            assert_eq!(&pred.x[i * g..(i + 1) * g], r, "control row {i}");
        }
    }

    // A baseline's predictions: the same cells and labels, its own values.
    let out = cli().args(["predict", "--quiet", "--pert-col", "target_gene", "--baseline", "neighbours"]).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let read =
        |name: &str| H5ad::open(&run.join("predictions-neighbours").join(name)).unwrap().read(&["target_gene", "cell_line"]).unwrap();
    let (base_pred, base_real) = (read("pred.h5ad"), read("real.h5ad"));
    assert_eq!(base_real.x, real.x, "the same real cells");
    assert_eq!(base_pred.obs, pred.obs);
    assert!(base_pred.x.iter().all(|&v| v >= 0.0) && base_pred.x != pred.x);
}

#[test]
fn prepare_inspect_and_train_on_an_anndata_file() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real");
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let out = cli()
        .args(["prepare", "--quiet", "--h5ad"])
        .arg(fixtures.join("sparse.h5ad"))
        .arg("--genept")
        .arg(fixtures.join("genept.pickle"))
        .arg("--split")
        .arg(fixtures.join("split.toml"))
        .arg("--out")
        .arg(&store)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("GenePT covers 4 of 5") && stdout.contains("dropped 1 perturbations") && stdout.contains("NOVEC"), "{stdout}");

    let out = cli().arg("inspect").arg(&store).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("K562: 18 cells, 6 controls, 4 perturbations"), "{text}");
    let out = cli().arg("inspect").arg(fixtures.join("sparse.h5ad")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("X: 42 x 6 CSR") && text.contains("obsm/X_hvg: 42 x 4 dense"), "{text}");
    assert!(!text.contains("prepare would refuse"), "{text}");
    // A CSR X declaring 4e10 columns: named, nothing allocated for it, the rest still reported.
    let out = cli().arg("inspect").arg(fixtures.join("csr_huge_shape.h5ad")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("at most 10000000 columns") && text.contains("obsm/X_hvg: 42 x 4"), "{text}");
    // A 50 KB CSR X declaring 5 million columns (under the 10 million refused outright): inspected on
    // fewer sampled rows, within 1 GB of address space (it asked for 840 MB at once before).
    let declared = std::fs::read(fixtures.join("csr_huge_shape.h5ad")).unwrap();
    let (huge, wide) = (40_000_000_000i64.to_le_bytes(), 5_000_000i64.to_le_bytes());
    let at = declared.windows(8).position(|w| w == huge).unwrap();
    let mut patched = declared.clone();
    patched[at..at + 8].copy_from_slice(&wide);
    let wide_file = tmp.path().join("csr_5m_columns.h5ad");
    std::fs::write(&wide_file, patched).unwrap();
    let (code, text, err) = bounded_run("inspect", &[wide_file.to_string_lossy().into_owned()], 1_000_000, 300);
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains("X: 42 x 5000000 CSR") && text.contains("prepare would refuse X: 5000000 columns"), "{text}");
    // X narrower than var: what prepare would refuse is said.
    let out = cli().arg("inspect").arg(fixtures.join("csr_narrow.h5ad")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("prepare would refuse X: 5 columns for the 6 genes of var"), "{text}");

    // the prepared store trains (K562's test perturbation AARS)
    let run = tmp.path().join("run");
    let out = train(&store, &run, &["--model", "pt-rag", "--top-k", "2", "--steps", "2", "--val-every", "0", "--target-cell-type", "K562"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = cli()
        .args(["prepare", "--quiet", "--h5ad", "x.h5ad", "--genept", "g.tsv", "--out"])
        .arg(tmp.path().join("s2"))
        .args(["--dtype", "f8"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--dtype") && stderr(&out).trim().lines().count() == 1, "{}", stderr(&out));
}

#[test]
fn profile_prints_table7_with_the_papers_parameter_counts() {
    let out = cli().args(["profile"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("| PT-RAG | 12223058 | 12223058 | 20973602 | 20973602 |"), "{text}");
    let out = cli().args(["profile", "--model", "state", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["reference_parameters"], 20_936_480);
}

/// `--device`: cuda is a one-line error where no GPU is usable, auto then says it trains on the
/// CPU, and the GPU path (here under the kernel emulator) trains and evaluates to what the CPU does.
#[test]
fn train_runs_on_the_device_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let gpu_usable =
        serde_json::from_slice::<serde_json::Value>(&cli().args(["info", "--json"]).output().unwrap().stdout).unwrap()["gpu"].is_object();
    let out = train(&store, &tmp.path().join("cuda"), &["--steps", "1", "--device", "cuda"]);
    if !gpu_usable {
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains("--device cpu or auto") && err.trim().lines().count() == 1, "{err}");
        let out = train(&store, &tmp.path().join("auto"), &["--steps", "1", "--device", "auto"]);
        assert!(out.status.success() && stderr(&out).contains("device: the CPU ("), "{}", stderr(&out));
    }
    let args = ["--model", "pt-rag", "--top-k", "4", "--steps", "5", "--val-every", "2"];
    let run = |device: &str| {
        let run = tmp.path().join(device);
        let out = train(&store, &run, &[&args[..], &["--device", device]].concat());
        assert!(out.status.success(), "{device}: {}", stderr(&out));
        let log: Vec<serde_json::Value> =
            std::fs::read_to_string(run.join("log.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let metrics = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
        (log, metrics["test"].clone())
    };
    let ((cpu_log, cpu), (emulated_log, emulated)) = (run("cpu"), run("emulated"));
    // The GPU's run loop queues a step before reading the previous one's statistics: the log must
    // still hold every step once, in order, with its own loss, and the validations after steps 2 and 4.
    let lines = |log: &[serde_json::Value]| -> Vec<(String, u64)> {
        log.iter().map(|r| (if r.get("loss").is_some() { "step" } else { "validation" }.to_string(), r["step"].as_u64().unwrap())).collect()
    };
    assert_eq!(lines(&emulated_log), lines(&cpu_log), "the order of the log's lines");
    let want: Vec<(String, u64)> =
        [("step", 1), ("step", 2), ("validation", 2), ("step", 3), ("step", 4), ("validation", 4), ("step", 5), ("validation", 5)]
            .map(|(a, b)| (a.to_string(), b))
            .to_vec();
    assert_eq!(lines(&cpu_log), want);
    for (a, b) in cpu_log.iter().zip(&emulated_log).filter(|(a, _)| a.get("loss").is_some()) {
        let (a, b) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!((a - b).abs() <= tol::TRAINING_LATER_STEPS.rtol * a.abs(), "logged loss {b} on the emulated GPU vs {a} on the CPU");
    }
    for key in ["energy", "mse_change", "mean_selected"] {
        let (a, b) = (cpu[key].as_f64().unwrap(), emulated[key].as_f64().unwrap());
        // f32 sums in different orders; Adam's first steps turn them into differences of up to lr.
        assert!((a - b).abs() <= tol::TRAINING_LATER_STEPS.rtol * a.abs(), "test {key}: {b} on the emulated GPU vs {a} on the CPU");
    }
}

/// `command` (train or reproduce) on the tiny store with a small architecture.
fn small_run(store: &Path, run: &Path, command: &str, extra: &[&str]) -> Command {
    let mut c = cli();
    c.args([command, "--quiet", "--sets-per-batch", "2", "--cells-per-set", "8"])
        .args(["--hidden", "16", "--layers", "1", "--heads", "2", "--head-dim", "4", "--mlp", "16", "--data"])
        .arg(store)
        .arg("--run-dir")
        .arg(run)
        .args(extra);
    c
}

fn train_like(store: &Path, run: &Path, command: &str, extra: &[&str]) -> Output {
    small_run(store, run, command, extra).output().unwrap()
}

#[test]
fn info_reports_the_kernels_and_why_no_gpu_is_used() {
    let out = cli().args(["info", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["emulated_kernels"], true);
    // Either a GPU is described, or the reason there is none is given (never a panic).
    assert!(info["gpu"].is_object() != info["gpu_unavailable"].is_string(), "{info}");
    let families = info["cuda_kernel_families"].as_array().unwrap();
    assert!(families.is_empty() || families.iter().any(|f| f == "attention"), "{info}");
}

#[test]
fn planted_truth_metrics_are_reported_on_synthetic_data_and_absent_without_a_truth() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let bare = tmp.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    for entry in std::fs::read_dir(&store).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "synth_truth.json" {
            std::fs::copy(&path, bare.join(path.file_name().unwrap())).unwrap();
        }
    }
    let args = ["--steps", "2", "--val-every", "1", "--top-k", "4"];
    let (rag, pt, pt_bare) = (tmp.path().join("rag"), tmp.path().join("pt"), tmp.path().join("pt-bare"));
    assert!(train(&store, &rag, &[&["--model", "vanilla-rag"][..], &args].concat()).status.success());
    assert!(train(&store, &pt, &[&["--model", "pt-rag"][..], &args].concat()).status.success());
    assert!(train(&bare, &pt_bare, &[&["--model", "pt-rag"][..], &args].concat()).status.success());
    let log = std::fs::read_to_string(pt.join("log.jsonl")).unwrap();
    assert!(log.contains("\"val_selection_precision\":") && log.contains("\"val_retrieval_precision\":"), "{log}");
    assert!(!std::fs::read_to_string(pt_bare.join("log.jsonl")).unwrap().contains("precision"));

    let evaluate = |out: &Path, runs: &[&PathBuf]| {
        let mut c = cli();
        c.args(["evaluate", "--quiet", "--pca-components", "5", "--out"]).arg(out);
        runs.iter().for_each(|r| {
            c.arg(r);
        });
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        (summary, std::fs::read_to_string(out.join("report.md")).unwrap())
    };
    let (summary, report) = evaluate(&tmp.path().join("eval"), &[&rag, &pt]);
    let k562 = &summary["planted"]["pt-rag"]["K562"];
    let precision = k562["selection_precision"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&precision) && k562["retrieval_precision"].as_f64().is_some(), "{k562}");
    assert!(summary["planted"]["vanilla-rag"]["K562"]["selection_precision"].is_null());
    assert!(report.contains("Planted-truth retrieval"), "{report}");
    let (summary, report) = evaluate(&tmp.path().join("eval-bare"), &[&pt_bare]);
    assert!(summary.get("planted").is_none() && !report.contains("Planted-truth"), "{summary}");
}

#[test]
fn learning_curve_draws_reports_of_several_lengths() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let mut reports = Vec::new();
    for steps in ["2", "3"] {
        let run = tmp.path().join(format!("state-{steps}"));
        assert!(train(&store, &run, &["--steps", steps, "--val-every", "0"]).status.success());
        let report = tmp.path().join(format!("eval-{steps}"));
        let out = cli().args(["evaluate", "--quiet", "--pca-components", "5", "--out"]).arg(&report).arg(&run).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        reports.push(report);
    }
    let svg = tmp.path().join("curve.svg");
    let out = cli().args(["learning-curve", "--out"]).arg(&svg).args(&reports).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("| 2 | state |") && table.contains("| 3 | state |") && table.contains(" than ") && table.contains(", q "),
        "{table}"
    );
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    let out = cli().args(["learning-curve", "--out"]).arg(&svg).arg(tmp.path().join("nowhere")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nowhere/summary.json"), "{}", stderr(&out));
}

#[test]
fn raw_counts_prepare_with_normalize_and_a_state_only_store_refuses_retrieval() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real");
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let prepare = |extra: &[&str]| {
        cli()
            .args(["prepare", "--quiet", "--genept", "none", "--batch-col", "none", "--h5ad"])
            .arg(fixtures.join("raw_counts.h5ad"))
            .arg("--out")
            .arg(&store)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = cli().arg("inspect").arg(fixtures.join("raw_counts.h5ad")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("X holds integer values (raw counts?): prepare needs --normalize"), "{text}");
    // a NaN among the values: inspect says prepare would refuse it
    let nan = tmp.path().join("nan.h5ad");
    let a = ptrag_engine::data::h5ad::AnnData {
        x: vec![0.5, f32::NAN, 1.5, 0.0],
        obs_names: vec!["c0".into(), "c1".into()],
        var_names: vec!["A".into(), "B".into()],
        obs: vec![("gene".into(), vec!["non-targeting".into(), "A".into()]), ("cell_line".into(), vec!["K562".into(), "K562".into()])],
    };
    ptrag_engine::data::h5ad::write_h5ad(&nan, &a).unwrap();
    let text = String::from_utf8_lossy(&cli().arg("inspect").arg(&nan).output().unwrap().stdout).into_owned();
    assert!(text.contains("prepare would refuse X: NaN among the sampled values"), "{text}");

    let out = prepare(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).trim().lines().count() == 1 && stderr(&out).contains("--normalize total-log1p"), "{}", stderr(&out));
    let out = prepare(&["--normalize", "total-log1p", "--hvg", "8", "--drop", "unassigned", "--min-cells", "5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("integer counts") && stdout.contains("8 highly variable genes"), "{stdout}");
    assert!(stdout.contains("dropped label `unassigned` (8 cells)") && stdout.contains("DDX3X in K562 (3)"), "{stdout}");

    let run = tmp.path().join("state");
    let out = train(&store, &run, &["--model", "state", "--steps", "2", "--val-every", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for model in ["pt-rag", "state-genept"] {
        let out = train(&store, &tmp.path().join(model), &["--model", model, "--steps", "2"]);
        assert_eq!(out.status.code(), Some(1), "{model}");
        let err = stderr(&out);
        assert!(err.trim().lines().count() == 1 && err.contains("--genept none") && err.contains(model), "{err}");
        assert!(!tmp.path().join(model).exists(), "nothing written for a refused run");
    }
}

#[test]
fn predict_screen_ranks_every_perturbation_from_the_same_control_cells() {
    use ptrag_engine::data::h5ad::H5ad;
    use ptrag_engine::data::store::Store;
    let tmp = tempfile::tempdir().unwrap();
    let (store_dir, run) = tiny_pt_rag_run(tmp.path());
    // a screen no machine could hold is refused up front, with the memory it needs
    let out = cli().args(["predict", "--quiet", "--screen", "--cells", "1000000000000"]).arg(&run).output().unwrap();
    let err = stderr(&out);
    assert!(out.status.code() == Some(1) && err.contains("--cells 1000000000000") && err.contains("GB of memory"), "{err}");
    let out = cli().args(["predict", "--quiet", "--screen", "--cells", "6"]).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let store = Store::open(&store_dir).unwrap();
    let m = &store.manifest;
    let target = m.cell_types[0].to_lowercase();
    let dir = run.join(format!("screen-{target}"));
    let a = H5ad::open(&dir.join("pred.h5ad")).unwrap().read(&["gene", "cell_line", "measured_in_target"]).unwrap();
    let g = store.n_genes();
    assert_eq!(a.var_names, m.genes);
    assert_eq!(a.obs_names.len(), 6 * m.n_perturbations(), "6 control cells, then 6 predicted cells per perturbation");
    assert!(a.x.iter().all(|&v| v >= 0.0));
    let csv = std::fs::read_to_string(dir.join("screen.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), m.n_perturbations() - 1, "every perturbation once");
    let effects: Vec<f64> = rows.iter().map(|r| r[5].parse().unwrap()).collect();
    assert!(effects.windows(2).all(|w| w[0] >= w[1]), "largest effect first");
    // The control rows are the target's real control cells; each effect is the norm of the
    // perturbation's predicted mean minus their mean, as written.
    let mean = |label: &str| -> Vec<f64> {
        let idx: Vec<usize> = (0..a.obs_names.len()).filter(|&i| a.obs[0].1[i] == label).collect();
        assert_eq!(idx.len(), 6, "{label}");
        (0..g).map(|j| idx.iter().map(|&i| a.x[i * g + j] as f64).sum::<f64>() / 6.0).collect()
    };
    let control = mean(&m.control);
    for r in &rows {
        let d: f64 = mean(r[1]).iter().zip(&control).map(|(p, c)| (p - c).powi(2)).sum::<f64>().sqrt();
        assert!((d - r[5].parse::<f64>().unwrap()).abs() < tol::SCREEN_EFFECT, "{}: {d} vs {}", r[1], r[5]);
        assert_eq!(r[3], "yes", "the tiny data measures every perturbation in every cell type");
    }
    let trained = rows.iter().filter(|r| r[4] == "yes").count();
    assert!(trained > 0 && trained < rows.len(), "held-out perturbations are not trained on: {trained} of {}", rows.len());
    let mut row = vec![0.0f32; g];
    let controls: Vec<Vec<f32>> = (0..store.n_cells())
        .filter(|&i| store.cell_perturbation[i] == store.control_index && store.cell_type[i] == 0)
        .map(|i| {
            store.expression_row(i, &mut row);
            row.clone()
        })
        .collect();
    assert!((0..6).all(|i| controls.iter().any(|c| c.as_slice() == &a.x[i * g..(i + 1) * g])), "control rows are real control cells");

    // A list of two: the same predictions for those two (the screen does not depend on what else is in it).
    let list = tmp.path().join("list.txt");
    std::fs::write(&list, format!("# two of them\n{}\n\n{}\n", rows[2][1], rows[0][1].to_lowercase())).unwrap();
    let out2 = tmp.path().join("two");
    let out = cli()
        .args(["predict", "--quiet", "--screen", "--cells", "6", "--perturbations"])
        .arg(&list)
        .arg("--out")
        .arg(&out2)
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let two = std::fs::read_to_string(out2.join("screen.csv")).unwrap();
    let lines: Vec<&str> = two.lines().skip(1).collect();
    assert_eq!(lines.len(), 2);
    for l in lines {
        let name = l.split(',').nth(1).unwrap();
        let full = csv.lines().find(|r| r.split(',').nth(1) == Some(name)).unwrap();
        assert_eq!(l.split(',').skip(1).collect::<Vec<_>>(), full.split(',').skip(1).collect::<Vec<_>>(), "{name}");
    }
    // A gene with a GenePT vector and no cells anywhere joins the screen with --genept; STATE refuses it.
    let table = store.genept_table();
    let d = m.embed_dim;
    let vector = |p: usize| table[p * d..(p + 1) * d].iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\t");
    let genept = tmp.path().join("genept.tsv");
    std::fs::write(&genept, format!("NEWGENE\t{}\n{}\t{}\n", vector(3), m.perturbations[3], vector(3))).unwrap();
    std::fs::write(&list, format!("NEWGENE\n{}\n", m.perturbations[3])).unwrap();
    let out3 = tmp.path().join("new");
    let screen_new = |run: &Path| {
        cli()
            .args(["predict", "--quiet", "--screen", "--cells", "6", "--perturbations"])
            .arg(&list)
            .arg("--genept")
            .arg(&genept)
            .arg("--out")
            .arg(&out3)
            .arg(run)
            .output()
            .unwrap()
    };
    let out = screen_new(&run);
    assert!(out.status.success(), "{}", stderr(&out));
    let new = std::fs::read_to_string(out3.join("screen.csv")).unwrap();
    let row = new.lines().find(|l| l.split(',').nth(1) == Some("NEWGENE")).unwrap_or_else(|| panic!("{new}"));
    let fields: Vec<&str> = row.split(',').collect();
    assert_eq!((fields[3], fields[4]), ("no", "no"), "never measured, never trained on: {row}");
    assert!(fields[5].parse::<f64>().unwrap().is_finite() && new.lines().count() == 3, "{new}");
    let state = tmp.path().join("state");
    assert!(train(&store_dir, &state, &["--model", "state", "--steps", "2", "--val-every", "0"]).status.success());
    let out = screen_new(&state);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--genept") && stderr(&out).contains("STATE"), "{}", stderr(&out));

    // An unknown name: the file and line.
    std::fs::write(&list, "GENE0001\nNOPE\n").unwrap();
    let out =
        cli().args(["predict", "--quiet", "--screen", "--perturbations"]).arg(&list).arg("--out").arg(&out2).arg(&run).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.trim().lines().count() == 1 && err.contains("list.txt") && err.contains("line 2") && err.contains("NOPE"), "{err}");
}

#[test]
fn evaluate_pred_real_reproduces_the_runs_evaluate_and_names_bad_input() {
    use ptrag_engine::data::h5ad::{write_h5ad, H5ad};
    let tmp = tempfile::tempdir().unwrap();
    let (_, run) = tiny_pt_rag_run(tmp.path());
    let files = tmp.path().join("files");
    let out = cli().args(["predict", "--quiet", "--unclamped", "--out"]).arg(&files).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let (pred, real) = (files.join("pred.h5ad"), files.join("real.h5ad"));
    let evaluate = |pred: &Path, real: &Path, out: &Path| {
        cli()
            .args(["evaluate", "--celltype-col", "cell_line", "--pred"])
            .arg(pred)
            .arg("--real")
            .arg(real)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let o = evaluate(&pred, &real, &tmp.path().join("by-files"));
    assert!(o.status.success(), "{}", stderr(&o));
    // One control draw: the files hold one predicted cell per real cell, the first draw's.
    let o = cli().args(["evaluate", "--quiet", "--eval-draws", "1", "--out"]).arg(tmp.path().join("by-run")).arg(&run).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    // per condition, every metric is the run's own (the PCA ones through real.h5ad's varm/PCs, in
    // float32), for the model; those of `control` without a PCA (its cells are drawn anew)
    let read = |dir: &str| -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(tmp.path().join(dir).join("per_condition.csv")).unwrap();
        text.lines().map(|l| l.split(',').map(str::to_string).collect()).collect()
    };
    let (by_files, by_run) = (read("by-files"), read("by-run"));
    let header = &by_run[0];
    let at = |name: &str| header.iter().position(|h| h == name).unwrap();
    let find = |rows: &[Vec<String>], model: &str, pert: &str| rows.iter().find(|r| r[0] == model && r[2] == pert).cloned();
    let mut compared = 0;
    for r in by_run.iter().skip(1).filter(|r| r[0] == "pt-rag") {
        let f = find(&by_files, "pred", &r[2]).unwrap_or_else(|| panic!("{} missing from the files' evaluation", r[2]));
        let c = (find(&by_run, "control", &r[2]).unwrap(), find(&by_files, "control", &r[2]).unwrap());
        for m in ["pearson_deg", "spearman_deg", "mse", "rmse", "mae", "degs", "mse_pca", "w1", "w2", "energy", "mmd"] {
            let (a, b) = (r[at(m)].parse::<f64>().unwrap(), f[at(m)].parse::<f64>().unwrap());
            let bound = if ["mse_pca", "w1", "w2", "energy", "mmd"].contains(&m) { tol::F32_FILE_DISTRIBUTIONAL } else { tol::SAME_VALUES };
            assert!((a - b).abs() <= bound * a.abs().max(1e-3), "{} {m}: run {a}, files {b}", r[2]);
        }
        for m in ["mse", "mae"] {
            let (a, b) = (c.0[at(m)].parse::<f64>().unwrap(), c.1[at(m)].parse::<f64>().unwrap());
            assert!((a - b).abs() <= tol::SAME_VALUES * a.abs().max(1.0), "control {} {m}: run {a}, files {b}", r[2]);
        }
        compared += 1;
    }
    assert!(compared > 0);

    // Bad inputs: one line naming the file and the field.
    let h = |p: &Path| H5ad::open(p).unwrap().read(&["gene", "cell_line"]).unwrap();
    let (p, r) = (h(&pred), h(&real));
    let check =
        |pred_a: &ptrag_engine::data::h5ad::AnnData, real_a: &ptrag_engine::data::h5ad::AnnData, file: &str, field: &str, says: &str| {
            let dir = tempfile::tempdir().unwrap();
            let (pp, rp) = (dir.path().join("p.h5ad"), dir.path().join("r.h5ad"));
            write_h5ad(&pp, pred_a).unwrap();
            write_h5ad(&rp, real_a).unwrap();
            let o = evaluate(&pp, &rp, &dir.path().join("out"));
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{says}");
            assert!(err.trim().lines().count() == 1 && err.contains(file) && err.contains(field) && err.contains(says), "{err}");
        };
    let mut genes = p.clone();
    genes.var_names[3] = "OTHER".into();
    check(&genes, &r, "p.h5ad", "var", "gene 3 is `OTHER` here");
    let without = |a: &ptrag_engine::data::h5ad::AnnData, drop: &dyn Fn(&str) -> bool| {
        let g = a.var_names.len();
        let keep: Vec<usize> = (0..a.obs_names.len()).filter(|&i| !drop(&a.obs[0].1[i])).collect();
        ptrag_engine::data::h5ad::AnnData {
            x: keep.iter().flat_map(|&i| a.x[i * g..(i + 1) * g].to_vec()).collect(),
            obs_names: keep.iter().map(|&i| a.obs_names[i].clone()).collect(),
            var_names: a.var_names.clone(),
            obs: a.obs.iter().map(|(c, v)| (c.clone(), keep.iter().map(|&i| v[i].clone()).collect())).collect(),
        }
    };
    check(&p, &without(&r, &|l| l == "non-targeting"), "r.h5ad", "obs/gene", "control cells");
    let victim = p.obs[0].1.iter().find(|l| *l != "non-targeting").unwrap().clone();
    check(&without(&p, &|l| l == victim), &r, "p.h5ad", "obs/gene", &format!("predicted cells of `{victim}`"));
    check(&p, &without(&r, &|l| l == victim), "r.h5ad", "obs/gene", &format!("`{victim}`"));
}

/// A report's rows by (model, perturbation): the values as written.
type ReportRows = std::collections::BTreeMap<(String, String), Vec<String>>;

/// Per-condition rows of a report, with the metric names: the values as written.
fn report_rows(dir: &Path) -> (Vec<String>, ReportRows) {
    let csv = std::fs::read_to_string(dir.join("per_condition.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    let rows = lines
        .map(|l| {
            let f: Vec<String> = l.split(',').map(String::from).collect();
            ((f[0].clone(), f[2].clone()), f[5..].to_vec())
        })
        .collect();
    (header[5..].to_vec(), rows)
}

/// On a store with planted means, `train` and `evaluate` give the noise floor, both oracles and every
/// figure against the truth; a store without them (the same cells) gives none of these. Averaging a
/// model over more control draws changes its mean-change figures only: its distributional figures,
/// every baseline's and every oracle's stay as they were, value for value.
#[test]
fn truth_floor_and_oracles_are_reported_with_planted_means_and_draws_move_only_a_models_mean() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let bare = tmp.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    for entry in std::fs::read_dir(&store).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("synth_") {
            std::fs::copy(&path, bare.join(path.file_name().unwrap())).unwrap();
        }
    }
    let (run, run_bare) = (tmp.path().join("state"), tmp.path().join("state-bare"));
    let out = train(&store, &run, &["--steps", "2", "--val-every", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("noise floor") && printed.contains("oracle-selection") && printed.contains("8 control draws"), "{printed}");
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert!(metrics["truth"]["floor"].as_f64().unwrap() > 0.0 && metrics["test"]["mse_change_truth"].is_f64(), "{metrics}");
    let out = train(&bare, &run_bare, &["--steps", "2", "--val-every", "0"]);
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("noise floor"));
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_bare.join("metrics.json")).unwrap()).unwrap();
    assert!(metrics.get("truth").is_none() && metrics["test"].get("mse_change_truth").is_none(), "{metrics}");

    let evaluate = |runs: &Path, out: &Path, draws: &str| {
        let o = cli()
            .args(["evaluate", "--quiet", "--pca-components", "5", "--eval-draws", draws, "--out"])
            .arg(out)
            .arg(runs)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read_to_string(out.join("report.md")).unwrap()
    };
    let report = evaluate(&run, &tmp.path().join("one"), "1");
    assert!(report.contains("noise floor and oracles") && report.contains("mse_truth"), "{report}");
    let bare_report = evaluate(&run_bare, &tmp.path().join("bare-eval"), "1");
    assert!(!bare_report.contains("oracle") && !bare_report.contains("mse_truth"), "{bare_report}");
    let (columns, bare_rows) = report_rows(&tmp.path().join("bare-eval"));
    let truth_column = columns.iter().position(|c| c == "mse_truth").unwrap();
    assert!(bare_rows.values().all(|v| v[truth_column].is_empty()), "absent, not zero, without planted means");

    evaluate(&run, &tmp.path().join("three"), "3");
    let (columns, one) = report_rows(&tmp.path().join("one"));
    let (_, three) = report_rows(&tmp.path().join("three"));
    assert_eq!(one.keys().collect::<Vec<_>>(), three.keys().collect::<Vec<_>>());
    for model in ["oracle-truth", "oracle-selection", "control", "linear"] {
        assert!(one.keys().any(|(m, _)| m == model), "{model} rows missing");
    }
    let oracle_truth = columns.iter().position(|c| c == "mse_truth").unwrap();
    let exact = |v: &str| v.parse::<f64>().unwrap().abs() < tol::SAME_VALUES;
    assert!(one.iter().filter(|((m, _), _)| m == "oracle-truth").all(|(_, v)| exact(&v[oracle_truth])), "oracle-truth is the truth");
    let (mse, energy) = (columns.iter().position(|c| c == "mse").unwrap(), columns.iter().position(|c| c == "energy").unwrap());
    let mut model_mse_moved = false;
    for (key, values) in &one {
        if key.0 == "state" {
            assert_eq!(values[energy], three[key][energy], "{key:?}: the cells are the first draw's");
            model_mse_moved |= values[mse] != three[key][mse];
        } else {
            assert_eq!(values, &three[key], "{key:?} depends on the number of draws");
        }
    }
    assert!(model_mse_moved, "more draws must move the model's mean change");
}

/// A run directory being trained is locked: a second `train` or `--resume` of it fails at once with
/// a one-line error naming the directory and the process holding it, and leaves the run intact.
#[test]
fn a_run_directory_being_trained_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let run = tmp.path().join("run");
    assert!(train(&store, &run, &["--steps", "2", "--val-every", "0"]).status.success());
    let metrics = std::fs::read(run.join("metrics.json")).unwrap();
    let held = ptrag_engine::data::lock::DirLock::acquire(&run, "test").unwrap();
    let out = cli().args(["train", "--quiet", "--steps", "3", "--resume"]).arg(&run).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&format!("process {}", std::process::id())) && err.contains(&*run.to_string_lossy()), "{err}");
    assert_eq!(std::fs::read(run.join("metrics.json")).unwrap(), metrics, "the run is intact");
    drop(held);
    let out = cli().args(["train", "--quiet", "--steps", "3", "--resume"]).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Labels are data, never paths (issue 37): a name that would break a CSV row, an absolute path,
/// `..` and a name with dots as cell types, and a perturbation named like a relative path with a
/// quote, a comma and a line break. Taken through `export`, `prepare`, `train --target-cell-type all`,
/// `predict`, `predict --screen` and `evaluate`: nothing is written outside the directories given,
/// each cell type's split section is found (the dotted name included) and every fold is tested on its
/// conditions, and the CSV outputs parse strictly with the labels whole. A label too long to name a
/// directory is refused by `prepare`, naming the column.
#[test]
fn hostile_labels_stay_inside_the_given_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let edited = tiny_store(tmp.path());
    let outside = tmp.path().join("outside");
    let csv_breaker = "Bad,\"Line\"\r\nX".to_string();
    let labels = [csv_breaker.clone(), outside.to_string_lossy().into_owned(), "..".to_string(), "Jurkat.E6-1".to_string()];
    let manifest_path = edited.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["cell_types"] = serde_json::json!(labels);
    let renamed = manifest["perturbations"][3].as_str().unwrap().to_string();
    let hostile_pert = format!("../p/e,\"vil\"\n{renamed}");
    manifest["perturbations"][3] = serde_json::json!(hostile_pert);
    // edited by hand, so its recorded fingerprint no longer holds: drop it, as in a store from
    // before fingerprints (which nothing checks)
    manifest.as_object_mut().unwrap().remove("fingerprint");
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    let split = std::fs::read_to_string(edited.join("split.toml")).unwrap();
    let toml_escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").replace('\r', "\\r");
    let split = ["k562", "rpe1", "jurkat", "hepg2"]
        .iter()
        .zip(&labels)
        .fold(split, |s, (old, new)| s.replace(&format!("\"synth.{old}\""), &format!("\"synth.{}\"", toml_escape(&new.to_lowercase()))));
    let split = split.replace(&format!("\"{renamed}\""), &format!("\"{}\"", toml_escape(&hostile_pert)));
    std::fs::write(edited.join("split.toml"), split).unwrap();

    // the labels as a user's files have them, prepared into a store
    let exported = tmp.path().join("exported");
    export(&edited, &exported);
    let store = tmp.path().join("store");
    let out = cli()
        .args(["prepare", "--quiet", "--h5ad"])
        .arg(exported.join("data.h5ad"))
        .arg("--genept")
        .arg(exported.join("genept.safetensors"))
        .arg("--split")
        .arg(exported.join("split.toml"))
        .arg("--out")
        .arg(&store)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let run = tmp.path().join("runs").join("all");
    let out = train(&store, &run, &["--steps", "1", "--val-every", "0", "--target-cell-type", "all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let entries: Vec<String> =
        std::fs::read_dir(tmp.path().join("runs")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(entries.iter().all(|e| e == "all" || e == ".all.lock"), "written beside the run directory: {entries:?}");
    let folds: Vec<std::path::PathBuf> =
        std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("metrics.json").exists()).collect();
    assert_eq!(folds.len(), 4, "{folds:?}");
    for fold in &folds {
        let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fold.join("metrics.json")).unwrap()).unwrap();
        assert!(metrics["test"]["conditions"].as_u64().unwrap() > 0, "{}: {metrics}", fold.display());
    }

    // predictions for every fold, and a screen in each hostile cell type, inside the run directory
    let out = cli().args(["predict", "--quiet"]).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let pairs: Vec<PathBuf> =
        std::fs::read_dir(run.join("predictions")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    assert_eq!(pairs.len(), 4, "{pairs:?}");
    assert!(pairs.iter().all(|p| p.join("pred.h5ad").is_file() && p.join("real.h5ad").is_file()), "{pairs:?}");
    for (label, fold) in labels.iter().zip(&folds) {
        let out = cli().args(["predict", "--quiet", "--screen", "--cells", "4", "--cell-type", label]).arg(fold).output().unwrap();
        assert!(out.status.success(), "{label:?}: {}", stderr(&out));
        let screens: Vec<PathBuf> =
            std::fs::read_dir(fold).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("screen.csv").is_file()).collect();
        let rows = strict_csv(&std::fs::read_to_string(screens.last().unwrap().join("screen.csv")).unwrap());
        assert!(rows.iter().all(|r| r.len() == rows[0].len()), "screen.csv: rows of different lengths");
        assert!(rows.iter().any(|r| r[1] == hostile_pert) && rows.iter().skip(1).all(|r| r[2] == *label), "screen.csv: labels not whole");
    }
    assert!(!outside.exists() && !tmp.path().join("p").exists(), "something was written where a label points");

    let out = cli()
        .args(["evaluate", "--quiet", "--pca-components", "5", "--eval-draws", "1", "--out"])
        .arg(tmp.path().join("eval"))
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The CSV outputs parse strictly, and the labels that would break a row come back whole.
    for file in ["per_condition.csv", "summary.csv"] {
        let rows = strict_csv(&std::fs::read_to_string(tmp.path().join("eval").join(file)).unwrap());
        assert!(rows.iter().all(|r| r.len() == rows[0].len()), "{file}: rows of different lengths");
        assert!(rows.iter().any(|r| r.contains(&csv_breaker)), "{file}: the label is not read back whole");
    }
    let mut names: Vec<String> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, [".eval.lock", ".s.lock", ".store.lock", "eval", "exported", "runs", "s", "store"]);

    // a cell type too long to name a directory: refused by prepare, naming the column
    manifest["cell_types"][0] = serde_json::json!("x".repeat(300));
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    let long = tmp.path().join("long");
    export(&edited, &long);
    let out = cli()
        .args(["prepare", "--quiet", "--h5ad"])
        .arg(long.join("data.h5ad"))
        .args(["--genept", "none", "--out"])
        .arg(tmp.path().join("long-store"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("obs/cell_line") && stderr(&out).contains("one of 300"), "{}", stderr(&out));
}

/// An RFC 4180 reader that refuses anything else (a quote inside an unquoted field, text after a
/// closing quote, an unclosed quote, a bare carriage return): rows of fields.
fn strict_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => {
                quoted = false;
                assert!(matches!(chars.peek(), None | Some(',') | Some('\n')), "text after a closing quote");
            }
            (true, c) => field.push(c),
            (false, '"') => {
                assert!(field.is_empty(), "a quote inside an unquoted field: {field}");
                quoted = true;
            }
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, '\r') => panic!("a bare carriage return outside quotes"),
            (false, c) => field.push(c),
        }
    }
    assert!(!quoted && field.is_empty() && row.is_empty(), "an unfinished row or quote");
    rows
}

/// Numeric options that used to divide by zero or print `inf`, or accepted NaN: a clean error.
#[test]
fn absurd_numbers_are_refused_up_front() {
    for args in [
        &["evaluate", "--pca-components", "0", "some-run"][..],
        &["profile", "--cells", "0"],
        &["predict", "some-run", "--screen", "--threshold", "nan"],
        &["predict", "some-run", "--screen", "--threshold=-1"],
        &["predict", "some-run", "--screen", "--threshold", "inf"],
    ] {
        let out = cli().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("invalid value") && !err.contains("panicked"), "{args:?}: {err}");
    }
}

/// A store whose expression was changed in place to a NaN or a negative value is refused by `train`,
/// naming the file, the first bad cell and gene (before: trained to NaN metrics written as null).
#[test]
fn train_refuses_non_finite_or_negative_expression_naming_the_cell_and_gene() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let path = store.join("expression.bin");
    let original = std::fs::read(&path).unwrap();
    let genes = 48;
    for (value, run) in [(f32::NAN, "nan"), (-1.0f32, "negative")] {
        let mut bytes = original.clone();
        let at = (7 * genes + 5) * 2; // cell 7, gene 5, f16
        bytes[at..at + 2].copy_from_slice(&half_bytes(value));
        std::fs::write(&path, &bytes).unwrap();
        let out = train(&store, &tmp.path().join(run), &["--steps", "1", "--val-every", "0"]);
        assert_eq!(out.status.code(), Some(1), "{run}");
        let err = stderr(&out);
        assert!(err.contains("expression.bin") && err.contains("cell 7") && err.contains("GENE0005"), "{err}");
    }
    std::fs::write(&path, &original).unwrap();
    assert!(train(&store, &tmp.path().join("clean"), &["--steps", "1", "--val-every", "0"]).status.success());
}

fn half_bytes(v: f32) -> [u8; 2] {
    // IEEE half: NaN 0x7E00; -1.0 0xBC00 (the only two values the test writes).
    if v.is_nan() {
        0x7E00u16.to_le_bytes()
    } else {
        assert_eq!(v, -1.0);
        0xBC00u16.to_le_bytes()
    }
}

/// Every numeric option of every command (`common::numeric_options`, which the binary's own test
/// checks against its parser) at every hostile value, 336 cases: a clean error (exit 1 or 2) whose
/// message names the option, or a run that finishes (exit 0) without a `NaN` or `inf` figure; never a
/// panic, an abort, or more than 4 GB of address space (`ulimit -v`). Only `--steps` of `train` and
/// `reproduce` at 10^12 may still be running when stopped after 5 s: a run that long is what was asked.
#[test]
fn every_numeric_option_of_every_command_at_hostile_values() {
    use common::numeric_options::{HOSTILE_VALUES, NUMERIC_OPTIONS};
    let tmp = tempfile::tempdir().unwrap();
    let (store, run) = tiny_pt_rag_run(tmp.path());
    let exported = tmp.path().join("exported");
    export(&store, &exported);
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let arch = "--steps 1 --sets-per-batch 2 --cells-per-set 8 --hidden 16 --layers 1 --heads 2 --head-dim 4 --mlp 16 --top-k 4 --val-every 0 --eval-draws 1";
    let mut cases = 0;
    for &(command, option) in NUMERIC_OPTIONS {
        for &value in HOSTILE_VALUES {
            let out_dir = path(&tmp.path().join(format!("case{cases}")));
            // The command's other arguments (small shapes, so a case that runs is quick), then the option under test.
            let (mut args, options): (Vec<String>, &str) = match command {
                "synth" => (vec!["--preset".into(), "tiny".into(), "--out".into(), out_dir], ""),
                "train" => (vec!["--model".into(), "pt-rag".into(), "--data".into(), path(&store), "--run-dir".into(), out_dir], arch),
                "reproduce" => (vec!["--data".into(), path(&store), "--run-dir".into(), out_dir], arch),
                "evaluate" => (vec![path(&run), "--out".into(), out_dir], "--pca-components 5 --eval-draws 1"),
                "prepare" => {
                    let file = |name: &str| path(&exported.join(name));
                    let args = [
                        "--h5ad",
                        &file("data.h5ad"),
                        "--genept",
                        &file("genept.safetensors"),
                        "--split",
                        &file("split.toml"),
                        "--out",
                        &out_dir,
                    ];
                    (args.map(String::from).to_vec(), "")
                }
                "bench" => (vec![], "--sets 2 --cells 8 --steps 1"),
                "profile" => (vec![], ""),
                "predict" => (vec![path(&run), "--screen".into(), "--out".into(), out_dir], "--cells 4"),
                other => panic!("no arguments for `{other}`: add them here"),
            };
            let given: Vec<&str> = options.split_whitespace().collect();
            for pair in given.chunks(2).filter(|pair| pair[0] != option) {
                args.extend(pair.iter().map(|s| s.to_string()));
            }
            args.push(format!("{option}={value}"));
            let case = format!("{command} {option}={value}");
            let may_run_on = command != "bench" && option == "--steps" && value == "1000000000000";
            let (code, stdout, stderr) = bounded_run(command, &args, 4_000_000, if may_run_on { 5 } else { 300 });
            assert!(!stderr.contains("panicked"), "{case}: {stderr}");
            match code {
                Some(0) => {
                    let figures = stdout.split_whitespace().filter(|w| ["NaN", "inf", "-inf"].contains(w)).count();
                    assert_eq!(figures, 0, "{case}: a NaN or inf figure printed:\n{stdout}");
                }
                Some(1 | 2) => {
                    let said = stderr.to_lowercase().replace(['-', '_'], " ");
                    assert!(
                        said.contains(&option.trim_start_matches('-').replace('-', " ")),
                        "{case}: the error does not name the option: {stderr}"
                    );
                }
                None if may_run_on => {}
                other => panic!("{case}: exit {other:?} (killed by a signal: an abort or over the memory bound)\n{stderr}"),
            }
            cases += 1;
        }
    }
    assert_eq!(cases, 336);
}

/// Runs `ptrag-engine --quiet COMMAND ARGS` under an address-space limit of `kb` kilobytes, stopped
/// after `seconds`: its exit code (None when a signal ended it, the stop included), stdout and stderr.
fn bounded_run(command: &str, args: &[String], kb: u64, seconds: u64) -> (Option<i32>, String, String) {
    let mut child = Command::new("bash")
        .args(["-c", &format!("ulimit -v {kb} && exec \"$0\" \"$@\"")])
        .arg(env!("CARGO_BIN_EXE_ptrag-engine"))
        .args(["--quiet", command])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let readers = [
        std::thread::spawn(move || std::io::read_to_string(&mut stdout).unwrap_or_default()),
        std::thread::spawn(move || std::io::read_to_string(&mut stderr).unwrap_or_default()),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let [out, err] = readers.map(|r| r.join().unwrap());
    (status.code(), out, err)
}

/// Model sizes a run record holds but no machine does: refused up front with the memory they need.
#[test]
fn absurd_model_sizes_are_refused_with_the_memory_they_need() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let base = [
        ("--steps", "1"),
        ("--sets-per-batch", "2"),
        ("--cells-per-set", "8"),
        ("--hidden", "16"),
        ("--layers", "1"),
        ("--heads", "2"),
        ("--head-dim", "4"),
        ("--mlp", "16"),
        ("--top-k", "4"),
        ("--val-every", "0"),
        ("--eval-draws", "1"),
    ];
    // Sizes a run record holds but no machine does (each needs over a petabyte): refused up front with the memory they need,
    // naming the option, before anything is allocated (an allocation that large aborts).
    let absurd = [
        ("--hidden", "1099511627776"),
        ("--mlp", "10000000000000"),
        ("--heads", "1000000000000"),
        ("--head-dim", "1000000000000"),
        ("--layers", "1000000000000"),
        ("--cells-per-set", "1000000000000"),
        ("--sets-per-batch", "1000000000000"),
    ];
    for (option, value) in absurd {
        let mut c = cli();
        c.args(["train", "--quiet", "--model", "pt-rag", "--data"]).arg(&store);
        c.arg("--run-dir").arg(tmp.path().join("absurd"));
        base.iter().filter(|(o, _)| *o != option).for_each(|(o, v)| {
            c.args([o, v]);
        });
        let out = c.args([option, value]).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{option} {value}: {err}");
        assert!(err.contains(&format!("{option} {value}")) && err.contains("GB of memory"), "{option} {value}: {err}");
        assert!(!tmp.path().join("absurd").exists(), "{option} {value}: nothing is written");
    }
}

/// A fold without validation conditions trains with a documented warning (the last weights are
/// kept, the baselines take their defaults) rather than failing.
#[test]
fn a_fold_without_validation_conditions_trains_with_a_warning() {
    use ptrag_engine::data::split::SplitFile;
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let mut split = SplitFile::read(&store.join("split.toml")).unwrap();
    split.fewshot.get_mut("k562").unwrap().val.clear();
    let path = tmp.path().join("no-val.toml");
    std::fs::write(&path, split.to_toml()).unwrap();
    let out =
        small_run(&store, &tmp.path().join("run"), "train", &["--steps", "1", "--eval-draws", "1", "--split"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: no validation perturbation measured in K562"), "{}", stderr(&out));
}

/// A store rewritten in place after it was written (one expression value changed to another valid
/// one) is refused by predict, evaluate and --resume, naming the manifest's fingerprint, and
/// `inspect` says so; restored, it is accepted again.
#[test]
fn a_store_changed_in_place_is_refused_by_fingerprint() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, run) = tiny_pt_rag_run(tmp.path());
    let inspect = |store: &Path| String::from_utf8_lossy(&cli().args(["inspect"]).arg(store).output().unwrap().stdout).into_owned();
    assert!(inspect(&store).contains("every file holds the data it was written with"), "{}", inspect(&store));
    let path = store.join("expression.bin");
    let original = std::fs::read(&path).unwrap();
    let mut changed = original.clone();
    // the first value of the first cell, as f16: another finite, non-negative value
    let v = half::f16::from_le_bytes([changed[0], changed[1]]).to_f32();
    changed[..2].copy_from_slice(&half::f16::from_f32(v + 1.0).to_le_bytes());
    std::fs::write(&path, &changed).unwrap();
    let runs = [
        vec!["predict".to_string(), run.display().to_string(), "--out".into(), tmp.path().join("p").display().to_string()],
        vec!["evaluate".to_string(), run.display().to_string(), "--out".into(), tmp.path().join("e").display().to_string()],
        vec!["train".to_string(), "--resume".into(), run.display().to_string(), "--steps".into(), "3".into()],
    ];
    for args in &runs {
        let out = cli().arg("--quiet").args(args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("manifest.json") && err.contains("fingerprint") && err.contains("changed in place"), "{args:?}: {err}");
    }
    assert!(!tmp.path().join("p").exists() && !tmp.path().join("e").exists(), "nothing written from changed data");
    assert!(inspect(&store).contains("fingerprint: CHANGED"), "{}", inspect(&store));
    std::fs::write(&path, &original).unwrap();
    let out = cli().args(["--quiet", "predict"]).arg(&run).arg("--out").arg(tmp.path().join("p")).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `predict`'s pair arrives whole or not at all: a failure after the files were written leaves the
/// older pair as it was; a killed writer's partial directory is removed by the next writer, a
/// user's directory of a similar name is not; a second process gets the lock error.
#[test]
fn predictions_arrive_whole_under_a_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let (_store, run) = tiny_pt_rag_run(tmp.path());
    let out = tmp.path().join("pred");
    let predict = |fault: bool| {
        let mut c = cli();
        c.args(["--quiet", "predict"]).arg(&run).arg("--out").arg(&out);
        if fault {
            c.env("PTRAG_FAULT_BEFORE_COMMIT", "1");
        }
        c.output().unwrap()
    };
    assert!(predict(false).status.success());
    for name in ["pred.h5ad", "real.h5ad"] {
        std::fs::write(out.join(name), b"older").unwrap();
    }
    let stale = out.join(".partial-4000000");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join(".ptrag-partial"), b"").unwrap();
    let users = out.join(".partial-notes");
    std::fs::create_dir_all(&users).unwrap();
    std::fs::write(users.join("notes.txt"), b"mine").unwrap();

    let failed = predict(true);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    for name in ["pred.h5ad", "real.h5ad"] {
        assert_eq!(std::fs::read(out.join(name)).unwrap(), b"older", "{name} kept after the failure");
    }
    let entries: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(!stale.exists() && users.join("notes.txt").exists(), "{entries:?}");
    assert_eq!(entries.len(), 3, "only the older pair and the user's directory: {entries:?}");

    {
        let _held = ptrag_engine::data::lock::DirLock::acquire(&out, "test").unwrap();
        let locked = predict(false);
        let err = stderr(&locked);
        assert!(locked.status.code() == Some(1) && err.contains("in use by process") && err.trim().lines().count() == 1, "{err}");
    }
    assert!(predict(false).status.success());
    for name in ["pred.h5ad", "real.h5ad"] {
        assert!(ptrag_engine::data::h5ad::H5ad::open(&out.join(name)).is_ok(), "{name} replaced by the new one");
    }
}

/// Every float of a run's configuration reads back exactly from its checkpoint: `--tau 1e-30` used
/// to train to the end, then fail to load its own best checkpoint (and `--resume` too).
#[test]
fn odd_floats_read_back_from_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let run = tmp.path().join("run");
    let args = ["--model", "pt-rag", "--top-k", "4", "--tau", "1e-30", "--lr", "3.0000000000000004e-4", "--val-every", "1"];
    let out = train(&store, &run, &[&args[..], &["--steps", "2"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli().args(["train", "--quiet", "--steps", "3", "--resume"]).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// One obs column named for two roles is refused before anything is read or written (an output
/// with equal names used to get duplicate HDF5 links).
#[test]
fn one_column_for_two_roles_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let cases: [&[&str]; 5] = [
        &["predict", "RUN", "--pert-col", "x", "--cell-type-col", "x"],
        &["predict", "RUN", "--screen", "--pert-col", "x", "--cell-type-col", "x"],
        &["inspect", "RUN", "--pert-col", "cell_line"],
        &["prepare", "--h5ad", "RUN", "--genept", "none", "--out", "RUN", "--batch-col", "gene"],
        &["evaluate", "--pred", "RUN", "--real", "RUN", "--pert-col", "c", "--celltype-col", "c"],
    ];
    for args in cases {
        let args: Vec<String> = args.iter().map(|a| if *a == "RUN" { missing.display().to_string() } else { a.to_string() }).collect();
        let out = cli().arg("--quiet").args(&args).output().unwrap();
        let err = stderr(&out);
        assert!(out.status.code() == Some(1) && err.contains("two different obs columns"), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing written");
}

/// Two `train` processes on one run directory, and two `prepare` processes to one store, started
/// together: exactly one proceeds, the other fails with a one-line error (the lock's, or the
/// finished run's or store's if it started late), and what the survivor wrote is whole.
#[test]
fn racing_processes_on_one_directory_leave_one_intact_result() {
    use std::process::Stdio;
    let piped = Stdio::piped;
    let tmp = tempfile::tempdir().unwrap();
    let store = tiny_store(tmp.path());
    let exactly_one = |outs: Vec<Output>, what: &str| {
        let ok = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(ok, 1, "{what}: {:?}", outs.iter().map(stderr).collect::<Vec<_>>());
        let failed = outs.iter().find(|o| !o.status.success()).unwrap();
        let err = stderr(failed);
        // its error is one line (train may have printed its header line before it)
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert!(failed.status.code() == Some(1) && errors.len() == 1 && err.trim_end().ends_with(errors[0]), "{what}: {err}");
    };
    let run = tmp.path().join("run");
    let children: Vec<_> = (0..2)
        .map(|_| small_run(&store, &run, "train", &["--steps", "60", "--val-every", "20"]).stdout(piped()).stderr(piped()).spawn().unwrap())
        .collect();
    exactly_one(children.into_iter().map(|c| c.wait_with_output().unwrap()).collect(), "train");
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert!(metrics["test"]["conditions"].as_u64().unwrap() > 0, "{metrics}");
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let train_steps = log.lines().filter(|l| l.contains("\"loss\"")).count();
    assert_eq!(train_steps, 60, "one writer's log, each step once");

    let exported = tmp.path().join("exported");
    assert!(cli().args(["export"]).arg(&store).arg("--out").arg(&exported).status().unwrap().success());
    let prepared = tmp.path().join("prepared");
    let children: Vec<_> = (0..2)
        .map(|_| {
            let mut c = cli();
            c.args(["--quiet", "prepare", "--h5ad"]).arg(exported.join("data.h5ad"));
            c.arg("--genept").arg(exported.join("genept.safetensors")).arg("--out").arg(&prepared);
            c.stdout(piped()).stderr(piped()).spawn().unwrap()
        })
        .collect();
    exactly_one(children.into_iter().map(|c| c.wait_with_output().unwrap()).collect(), "prepare");
    let store = ptrag_engine::data::store::Store::open(&prepared).unwrap();
    store.verify_fingerprint().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A disk that fills up mid-write (the test-only switch `PTRAG_FAULT_DISK_FULL_AFTER`: writes fail
/// with ENOSPC after so many bytes): `prepare`, `predict` and `evaluate` exit 1 naming the file and the
/// full disk, leave no store, no lone `pred.h5ad` or `per_condition.csv` and no partial directory, and
/// keep the older outputs of the same directory as they were.
#[test]
fn a_full_disk_leaves_nothing_half_there() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, run) = tiny_pt_rag_run(tmp.path());
    let exported = tmp.path().join("exported");
    export(&store, &exported);
    let full_after = |bytes: u64, args: &[&str], paths: &[&Path]| {
        let mut c = cli();
        c.env("PTRAG_FAULT_DISK_FULL_AFTER", bytes.to_string()).arg("--quiet").args(args).args(paths);
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        stderr(&out)
    };
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };

    // prepare: the disk fills while the expression matrix is written (157 KB in all)
    let prepared = tmp.path().join("prepared");
    let (h5ad, genept) = (exported.join("data.h5ad"), exported.join("genept.safetensors"));
    let args = ["prepare", "--h5ad", h5ad.to_str().unwrap(), "--genept", genept.to_str().unwrap(), "--out"];
    let err = full_after(100_000, &args, &[&prepared]);
    assert!(err.contains("expression.bin") && err.contains("No space left on device"), "{err}");
    assert!(!prepared.exists() && !names(tmp.path()).iter().any(|n| n.contains("partial")), "{:?}", names(tmp.path()));

    // predict into a directory holding an earlier pair: the disk fills after pred.h5ad, on real.h5ad
    let pairs = tmp.path().join("pairs");
    assert!(cli().args(["predict", "--quiet"]).arg(&run).arg("--out").arg(&pairs).status().unwrap().success());
    let before: Vec<Vec<u8>> = ["pred.h5ad", "real.h5ad"].iter().map(|f| std::fs::read(pairs.join(f)).unwrap()).collect();
    let pred_size = before[0].len() as u64;
    let err = full_after(pred_size + 1000, &["predict", "--unclamped", "--out"], &[&pairs, &run]);
    assert!(err.contains("real.h5ad") && err.contains("No space left on device"), "{err}");
    assert_eq!(names(&pairs), ["pred.h5ad", "real.h5ad"]);
    let after: Vec<Vec<u8>> = ["pred.h5ad", "real.h5ad"].iter().map(|f| std::fs::read(pairs.join(f)).unwrap()).collect();
    assert!(after == before, "the earlier pair was changed");
    let fresh = tmp.path().join("fresh");
    full_after(pred_size + 1000, &["predict", "--out"], &[&fresh, &run]);
    assert!(!fresh.exists(), "a lone pred.h5ad under {}", fresh.display());

    // evaluate: the disk fills after per_condition.csv
    let report = tmp.path().join("report");
    let eval_args = ["evaluate", "--eval-draws", "1", "--pca-components", "5", "--out"];
    assert!(cli().args(eval_args).arg(&report).arg(&run).arg("--quiet").status().unwrap().success());
    let csv_size = std::fs::metadata(report.join("per_condition.csv")).unwrap().len();
    std::fs::remove_dir_all(&report).unwrap();
    let err = full_after(csv_size + 10, &eval_args, &[&report, &run]);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!report.exists(), "a lone per_condition.csv under {}", report.display());
}

/// Every column of the report comes from the metric table: `per_condition.csv` has one column per
/// entry of `METRICS` after the condition's own, `summary.csv` one row per model and metric, and
/// `report.md` a row for each scoring metric, so a metric missing from any output fails here.
#[test]
fn every_report_output_has_every_metric_of_the_table() {
    use ptrag_engine::score::metrics::METRICS;
    let tmp = tempfile::tempdir().unwrap();
    let (_, run) = tiny_pt_rag_run(tmp.path());
    let report = tmp.path().join("report");
    let out =
        cli().args(["evaluate", "--quiet", "--eval-draws", "1", "--pca-components", "5", "--out"]).arg(&report).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = strict_csv(&std::fs::read_to_string(report.join("per_condition.csv")).unwrap());
    let expected: Vec<&str> =
        ["model", "target", "perturbation", "cell_type", "cells"].into_iter().chain(METRICS.iter().map(|m| m.name)).collect();
    assert_eq!(rows[0], expected);
    let summary = strict_csv(&std::fs::read_to_string(report.join("summary.csv")).unwrap());
    let pt_rag: std::collections::BTreeSet<&str> =
        summary.iter().filter(|r| r[0] == "pt-rag" && r[1] == "all").map(|r| r[2].as_str()).collect();
    assert_eq!(pt_rag, METRICS.iter().map(|m| m.name).collect());
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    for metric in METRICS.iter().filter(|m| !m.is_count) {
        assert!(md.contains(&format!("| {} (", metric.name)), "report.md has no row for {}", metric.name);
    }
}
