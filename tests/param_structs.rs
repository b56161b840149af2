//! The parameter structs and launch constants of `kernels/params.h` (which the kernels read) and
//! their Rust twins in `src/cuda/params.rs` (written from it by bindgen, which the launchers fill)
//! agree: gcc compiles a program that prints the header's sizes, alignments, field offsets and
//! kinds and the constants' values, and each is compared with the Rust side. A field added to the
//! header and not to `params.rs` (`tools/param_structs.sh` not run) fails here.

use ptrag_engine::cuda::params::*;
use std::any::TypeId;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::process::Command;

/// A struct's layout: size, alignment, and each field's offset and kind ("int", "float"), in order.
#[derive(Debug, PartialEq)]
struct Layout {
    size: usize,
    align: usize,
    fields: Vec<(String, usize, &'static str)>,
}

fn kind_of<S, T: 'static>(_field: fn(&S) -> &T) -> &'static str {
    match TypeId::of::<T>() {
        t if t == TypeId::of::<i32>() => "int",
        t if t == TypeId::of::<f32>() => "float",
        _ => "other",
    }
}

macro_rules! rust_layout {
    ($s:ident: $($f:ident),*) => {
        (stringify!($s).to_string(), Layout {
            size: std::mem::size_of::<$s>(),
            align: std::mem::align_of::<$s>(),
            fields: vec![$((stringify!($f).to_string(), std::mem::offset_of!($s, $f), kind_of(|s: &$s| &s.$f))),*],
        })
    };
}

/// The header's structs: name -> field names, in order (`typedef struct X { int a; float b; } X;`).
fn header_structs(header: &str) -> BTreeMap<String, Vec<String>> {
    let mut structs = BTreeMap::new();
    for part in header.split("typedef struct").skip(1) {
        let (open, close) = (part.find('{').unwrap(), part.find('}').unwrap());
        let name = part[close + 1..].split(';').next().unwrap().trim();
        let fields = part[open + 1..close].split(';').filter_map(|d| d.split_whitespace().last()).map(String::from).collect();
        structs.insert(name.to_string(), fields);
    }
    structs
}

/// The names of the header's `#define NAME value` constants (not the include guard, which has no value).
fn header_constants(header: &str) -> Vec<String> {
    let defines = header.lines().filter_map(|l| l.strip_prefix("#define "));
    defines.map(|l| l.split_whitespace().collect::<Vec<_>>()).filter(|w| w.len() >= 2).map(|w| w[0].to_string()).collect()
}

#[test]
fn parameter_structs_and_constants_agree_with_the_c_header() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header_path = root.join("kernels/params.h");
    let header = std::fs::read_to_string(&header_path).unwrap();
    let structs = header_structs(&header);
    let constants = header_constants(&header);
    assert!(!structs.is_empty() && !constants.is_empty(), "kernels/params.h: no struct or constant found");

    // A C program that prints what gcc makes of the header.
    let mut program = format!("#include <stdio.h>\n#include <stddef.h>\n#include \"{}\"\nint main(void) {{\n", header_path.display());
    for (s, fields) in &structs {
        writeln!(program, "    printf(\"S {s} %zu %zu\\n\", sizeof({s}), _Alignof({s}));").unwrap();
        for f in fields {
            // a floating field keeps 0.5; an integer one truncates it to 0
            writeln!(
                program,
                "    printf(\"F {s} {f} %zu %s\\n\", offsetof({s}, {f}), (__typeof__((({s}*)0)->{f}))0.5 != 0 ? \"float\" : \"int\");"
            )
            .unwrap();
        }
    }
    for c in &constants {
        writeln!(program, "    printf(\"D {c} %lld\\n\", (long long)({c}));").unwrap();
    }
    program.push_str("    return 0;\n}\n");
    let dir = tempfile::tempdir().unwrap();
    let (source, binary) = (dir.path().join("layout.c"), dir.path().join("layout"));
    std::fs::write(&source, &program).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc).arg("-std=c11").arg(&source).arg("-o").arg(&binary).output().expect("running the C compiler");
    assert!(built.status.success(), "{cc}: {}\n{program}", String::from_utf8_lossy(&built.stderr));
    let printed = String::from_utf8(Command::new(&binary).output().unwrap().stdout).unwrap();

    let mut c_layouts: BTreeMap<String, Layout> = BTreeMap::new();
    let mut c_constants = BTreeMap::new();
    for line in printed.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w[0] {
            "S" => {
                let layout = Layout { size: w[2].parse().unwrap(), align: w[3].parse().unwrap(), fields: vec![] };
                c_layouts.insert(w[1].to_string(), layout);
            }
            "F" => {
                let kind = if w[4] == "float" { "float" } else { "int" };
                c_layouts.get_mut(w[1]).unwrap().fields.push((w[2].to_string(), w[3].parse().unwrap(), kind));
            }
            _ => {
                c_constants.insert(w[1].to_string(), w[2].parse::<i64>().unwrap());
            }
        }
    }

    let rust_layouts: BTreeMap<String, Layout> = [
        rust_layout!(AttentionParams: cells, keys, heads, head_dim, causal),
        rust_layout!(TripletLayoutParams: cells, rows, k),
        rust_layout!(AdamParams: lr, beta1, beta2, eps, weight_decay, bias1, bias2_sqrt),
    ]
    .into_iter()
    .collect();
    assert_eq!(c_layouts.keys().collect::<Vec<_>>(), rust_layouts.keys().collect::<Vec<_>>(), "the structs of kernels/params.h");
    for (name, c) in &c_layouts {
        assert_eq!(&rust_layouts[name], c, "{name}: Rust (left) and C (right) layouts; run tools/param_structs.sh");
    }
    let rust_constants: BTreeMap<String, i64> = [
        ("ATTENTION_ROWS_PER_BLOCK", ATTENTION_ROWS_PER_BLOCK as i64),
        ("ATTENTION_TILE", ATTENTION_TILE as i64),
        ("ATTENTION_SLOTS", ATTENTION_SLOTS as i64),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .collect();
    assert_eq!(rust_constants, c_constants, "launch constants: Rust (left) and kernels/params.h (right); run tools/param_structs.sh");
}
