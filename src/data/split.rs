//! The cross-cell-type few-shot protocol: split files and the folds built from them.
//!
//! Split files use the cell-load TOML layout users already have:
//! `[fewshot."<dataset>.<cellline>"]` with `val = [...]` and `test = [...]` perturbation lists
//! (cell-line names matched case-insensitively). For a target cell type, its val/test
//! perturbations are held out in that cell type only; every other (perturbation, cell type)
//! condition, controls included, is training data.

use super::store::Store;
use crate::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// Held-out perturbations of one target cell type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeldOut {
    pub val: Vec<String>,
    pub test: Vec<String>,
}

/// Per target cell line (lower-case), its held-out lists.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SplitFile {
    pub dataset: String,
    pub fewshot: BTreeMap<String, HeldOut>,
}

/// The proportions of the real Replogle-Nadig split files: 104 val and 624 test of 2024 perturbations.
pub const DEFAULT_VAL_FRACTION: f64 = 104.0 / 2024.0;
pub const DEFAULT_TEST_FRACTION: f64 = 624.0 / 2024.0;

impl SplitFile {
    pub fn read(path: &Path) -> Result<SplitFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<SplitFile> {
        let doc: toml::Table = text.parse().map_err(|e| Error::bad_file(path, "toml", format!("valid TOML: {e}")))?;
        let fewshot = doc
            .get("fewshot")
            .and_then(|v| v.as_table())
            .ok_or_else(|| Error::bad_file(path, "fewshot", "a [fewshot] table with \"dataset.cellline\" sections"))?;
        let mut out = SplitFile::default();
        // A cell line's name may hold dots (`Jurkat.E6-1`): the dataset is a name the [datasets]
        // table declares, else everything before the first dot.
        let datasets: Vec<&String> = doc.get("datasets").and_then(|v| v.as_table()).map(|t| t.keys().collect()).unwrap_or_default();
        for (key, section) in fewshot {
            let declared = datasets.iter().find_map(|d| key.strip_prefix(d.as_str())?.strip_prefix('.').map(|line| (d.as_str(), line)));
            let (dataset, line) = declared
                .or_else(|| key.split_once('.'))
                .ok_or_else(|| Error::bad_file(path, format!("fewshot.\"{key}\""), "a section name of the form \"dataset.cellline\""))?;
            out.dataset = dataset.to_string();
            let field_of = |f: &str| format!("fewshot.\"{key}\".{f}");
            let table = section.as_table().ok_or_else(|| Error::bad_file(path, field_of(""), "a table with val and test lists"))?;
            if let Some(other) = table.keys().find(|k| *k != "val" && *k != "test") {
                return Err(Error::bad_file(path, field_of(other), "only `val` and `test` lists in a section"));
            }
            let list = |field: &str| -> Result<Vec<String>> {
                let arr = section
                    .get(field)
                    .and_then(|v| v.as_array())
                    .ok_or_else(|| Error::bad_file(path, format!("fewshot.\"{key}\".{field}"), "a list of perturbation names"))?;
                arr.iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| Error::bad_file(path, format!("fewshot.\"{key}\".{field}"), "strings only"))
                    })
                    .collect()
            };
            let held = HeldOut { val: list("val")?, test: list("test")? };
            let mut seen = HashSet::new();
            for (field, name) in held.val.iter().map(|n| ("val", n)).chain(held.test.iter().map(|n| ("test", n))) {
                if !seen.insert(name) {
                    return Err(Error::bad_file(path, field_of(field), format!("each perturbation once in val and test; `{name}` again")));
                }
            }
            if held.test.is_empty() {
                return Err(Error::bad_file(path, field_of("test"), "at least one perturbation"));
            }
            if out.fewshot.insert(line.to_lowercase(), held).is_some() {
                return Err(Error::bad_file(
                    path,
                    format!("fewshot.\"{key}\""),
                    format!("one section per cell line (names match case-insensitively); `{line}` has two"),
                ));
            }
        }
        if out.fewshot.is_empty() {
            return Err(Error::bad_file(path, "fewshot", "at least one \"dataset.cellline\" section"));
        }
        Ok(out)
    }

    pub fn to_toml(&self) -> String {
        // Every name as a TOML string (quotes, backslashes and control characters escaped), so a label
        // can never break the file: a key or a list item alike.
        let quoted = |s: &str| toml_basic_string(s);
        let list = |v: &[String]| v.iter().map(|s| quoted(s)).collect::<Vec<_>>().join(", ");
        let dataset = quoted(&self.dataset);
        let mut s = format!(
            "# cell-load style few-shot split (written by ptrag-engine)\n[datasets]\n{dataset} = {dataset}\n\n[training]\n{dataset} = \"train\"\n\n[zeroshot]\n\n[fewshot]\n"
        );
        for (line, h) in &self.fewshot {
            let section = quoted(&format!("{}.{line}", self.dataset));
            s += &format!("\n[fewshot.{section}]\nval = [{}]\ntest = [{}]\n", list(&h.val), list(&h.test));
        }
        s
    }

    /// A seeded split with the real files' proportions: one shuffled list of non-control
    /// perturbations, the same order for every cell line (as in the real files); each cell line's
    /// val and test lists are drawn from it among the perturbations `measured` there, so that a
    /// file whose cell lines measured different perturbations gets folds that fit. A cell line with
    /// 3 or more measured perturbations gets at least one of each list and keeps one for training.
    pub fn generate(
        dataset: &str,
        perturbations: &[String],
        cell_types: &[String],
        measured: impl Fn(&str, &str) -> bool,
        val_fraction: f64,
        test_fraction: f64,
        seed: u64,
    ) -> Result<SplitFile> {
        if !(0.0..1.0).contains(&val_fraction) || !(0.0..1.0).contains(&test_fraction) || val_fraction + test_fraction >= 1.0 {
            return Err(Error::invalid(
                "split fractions",
                format!("val {val_fraction} and test {test_fraction} must be in [0, 1) and sum below 1"),
            ));
        }
        let mut names = perturbations.to_vec();
        names.sort();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        names.shuffle(&mut rng);
        let held_out = |cell_type: &String| {
            let here: Vec<String> = names.iter().filter(|p| measured(p, cell_type)).cloned().collect();
            let n = here.len();
            let at_least = |min: usize, fraction: f64| ((n as f64 * fraction).round() as usize).max(min);
            let n_val = if n >= 3 { at_least(1, val_fraction) } else { 0 };
            let n_test = if n >= 2 { at_least(1, test_fraction).min(n - n_val - 1) } else { 0 };
            HeldOut { val: here[..n_val].to_vec(), test: here[n_val..n_val + n_test].to_vec() }
        };
        Ok(SplitFile { dataset: dataset.to_string(), fewshot: cell_types.iter().map(|c| (c.to_lowercase(), held_out(c))).collect() })
    }
}

/// All cells of one perturbation in one cell type.
#[derive(Clone, Debug)]
pub struct Condition {
    pub perturbation: u32,
    pub cell_type: u32,
    pub cells: Vec<u32>,
}

/// The conditions of one target cell type's fold, and the control-cell pools per cell type.
pub struct Fold {
    pub target: usize,
    pub train: Vec<Condition>,
    pub val: Vec<Condition>,
    pub test: Vec<Condition>,
    pub controls: Vec<Vec<u32>>,
}

/// Groups the store's cells by (perturbation, cell type), in order of first appearance.
pub fn conditions(store: &Store) -> Vec<Condition> {
    let mut index: HashMap<(u32, u32), usize> = HashMap::new();
    let mut out: Vec<Condition> = Vec::new();
    for cell in 0..store.n_cells() {
        let key = (store.cell_perturbation[cell], store.cell_type[cell]);
        let i = *index.entry(key).or_insert_with(|| {
            out.push(Condition { perturbation: key.0, cell_type: key.1, cells: Vec::new() });
            out.len() - 1
        });
        out[i].cells.push(cell as u32);
    }
    out
}

impl Fold {
    pub fn new(store: &Store, split: &SplitFile, split_path: &Path, target: usize) -> Result<Fold> {
        let target_name = &store.manifest.cell_types[target];
        let held = split.fewshot.get(&target_name.to_lowercase()).ok_or_else(|| {
            Error::bad_file(
                split_path,
                "fewshot",
                format!(
                    "a section for cell type `{target_name}` (found: {})",
                    split.fewshot.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let resolve = |names: &[String], field: &str| -> Result<HashSet<u32>> {
            names
                .iter()
                .map(|n| {
                    store.perturbation_index(n).map(|i| i as u32).ok_or_else(|| {
                        Error::bad_file(
                            split_path,
                            format!("fewshot.{}.{field}", target_name.to_lowercase()),
                            format!("perturbations present in the store; `{n}` is not"),
                        )
                    })
                })
                .collect()
        };
        let (val, test) = (resolve(&held.val, "val")?, resolve(&held.test, "test")?);
        if val.contains(&store.control_index) || test.contains(&store.control_index) {
            return Err(Error::bad_file(
                split_path,
                format!("fewshot.{}", target_name.to_lowercase()),
                format!("held-out perturbations, not the control `{}`", store.manifest.control),
            ));
        }
        if let Some(p) = val.intersection(&test).next() {
            return Err(Error::bad_file(
                split_path,
                "fewshot",
                format!("disjoint val and test lists; `{}` is in both", store.manifest.perturbations[*p as usize]),
            ));
        }
        let mut fold = Fold { target, train: vec![], val: vec![], test: vec![], controls: vec![vec![]; store.manifest.cell_types.len()] };
        for c in conditions(store) {
            if c.perturbation == store.control_index {
                fold.controls[c.cell_type as usize].extend(&c.cells);
            }
            let in_target = c.cell_type as usize == target;
            if in_target && val.contains(&c.perturbation) {
                fold.val.push(c);
            } else if in_target && test.contains(&c.perturbation) {
                fold.test.push(c);
            } else {
                fold.train.push(c);
            }
        }
        if fold.test.is_empty() {
            // Listed perturbations without cells in the target cell type hold nothing out.
            return Err(Error::bad_file(
                split_path,
                format!("fewshot.{}.test", target_name.to_lowercase()),
                format!("at least one perturbation measured in `{target_name}`; none of the {} listed has cells there", held.test.len()),
            ));
        }
        for (ct, pool) in fold.controls.iter().enumerate() {
            if pool.is_empty() {
                return Err(Error::bad_file(
                    store.dir.join("manifest.json"),
                    "control",
                    format!(
                        "control cells (`{}`) in every cell type; `{}` has none",
                        store.manifest.control, store.manifest.cell_types[ct]
                    ),
                ));
            }
        }
        Ok(fold)
    }
}

/// `s` as a TOML basic string (one line, valid as a key too): quotes and backslashes escaped, line
/// breaks, tabs and other control characters as escapes.
fn toml_basic_string(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            '\n' => out += "\\n",
            '\r' => out += "\\r",
            '\t' => out += "\\t",
            c if c.is_control() => out += &format!("\\u{:04X}", c as u32),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names that break a hand-quoted TOML file (quotes, backslashes, line breaks, control
    /// characters, dots) are written as TOML strings and read back unchanged.
    #[test]
    fn hostile_names_survive_writing_and_reading_the_split() {
        let names = ["bad,\"line\"\r\nx", "/abs/path", "..", "jurkat.e6-1", "tab\there", "bell\u{7}\u{85}", "back\\slash"];
        let mut fewshot = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            let held = HeldOut { val: vec![format!("v{i}"), name.to_string()], test: vec![format!("\"t\"\n{name}")] };
            fewshot.insert(name.to_string(), held);
        }
        let split = SplitFile { dataset: "my.data\"set".to_string(), fewshot };
        let read = SplitFile::parse(Path::new("split.toml"), &split.to_toml()).unwrap();
        assert_eq!(read.dataset, split.dataset);
        assert_eq!(read.fewshot.keys().collect::<Vec<_>>(), split.fewshot.keys().collect::<Vec<_>>());
        for (name, held) in &split.fewshot {
            assert_eq!((&read.fewshot[name].val, &read.fewshot[name].test), (&held.val, &held.test), "{name:?}");
        }
    }
}
