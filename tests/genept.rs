//! GenePT files in every supported form give the same vectors (written by
//! `tools/make_h5ad_fixtures.py` with Python's pickle, numpy and safetensors); bad files are errors
//! naming the file and the gene or line.

mod common;
use common::tolerance as tol;

use ptrag_engine::data::genept::GenePt;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real").join(name)
}

#[test]
fn every_form_reads_the_same_vectors_with_upper_case_symbols() {
    let text = std::fs::read_to_string(fixture("genept_expected.json")).unwrap();
    let expected: std::collections::HashMap<String, Vec<f64>> = serde_json::from_str(&text).unwrap();
    // pickle protocol 4 of float lists, protocol 2 of float32 numpy arrays (bytes via
    // _codecs.encode), protocol 5 of float64 arrays (_frombuffer), compressed npz, safetensors, TSV
    for file in ["genept.pickle", "genept_numpy.pickle", "genept_numpy5.pickle", "genept.npz", "genept.safetensors", "genept.tsv"] {
        let g = GenePt::read(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(g.dim, 8, "{file}");
        assert_eq!(g.vectors.len(), expected.len(), "{file}");
        for (symbol, want) in &expected {
            let got = g.get(&symbol.to_lowercase()).unwrap_or_else(|| panic!("{file}: {symbol} missing"));
            for (a, b) in got.iter().zip(want) {
                assert!((*a as f64 - b).abs() < tol::F32_STORAGE, "{file}: {symbol}: {a} vs {b}");
            }
        }
        assert!(g.get("CDK1").is_some() && g.get("NOVEC").is_none(), "{file}: `cdk1` is CDK1; NOVEC has no vector");
    }
}

#[test]
fn bad_genept_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let err = |p: &Path| GenePt::read(p).unwrap_err().to_string();

    let e = err(&write("short.tsv", b"AARS\t1\t2\t3\nBRCA1\t1\t2\n"));
    assert!(e.contains("short.tsv") && e.contains("BRCA1") && e.contains("3 values"), "{e}");
    let e = err(&write("words.tsv", b"AARS\t1\tx\n"));
    assert!(e.contains("line 1") && e.contains("numbers"), "{e}");
    let e = err(&write("dup.tsv", b"aars\t1\t2\nAARS\t1\t3\n"));
    assert!(e.contains("AARS") && e.contains("two different"), "{e}");
    let e = err(&write("nan.tsv", b"AARS\t1\tnan\n"));
    assert!(e.contains("finite"), "{e}");
    let e = err(&write("genept.csv", b"AARS,1\n"));
    assert!(e.contains("genept.csv") && e.contains(".pickle"), "{e}");

    let pickle = std::fs::read(fixture("genept.pickle")).unwrap();
    let e = err(&write("cut.pickle", &pickle[..pickle.len() / 2]));
    assert!(e.contains("cut.pickle") && e.contains("ends early"), "{e}");
    // protocol 0 (text) pickles are refused with a way out
    let e = err(&write("p0.pickle", b"(dp0\nVAARS\np1\n(lp2\nF1.0\na."));
    assert!(e.contains("protocol 2 or later"), "{e}");
}

/// Pickles built to exhaust the reader: a "memo bomb" (a list doubled 40 times through memo
/// copies, 2^40 nodes from 330 bytes) and lists nested 200,000 deep (whose drop alone would
/// overflow the stack). Both are refused (without the limits the first exhausts memory and the
/// second aborts the process).
#[test]
fn hostile_pickles_are_refused_in_bounded_time_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let read = |name: &str, body: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, [&[0x80u8, 2][..], body, b"."].concat()).unwrap();
        GenePt::read(&path).expect_err("refused").to_string()
    };
    // L0 = []; L(i+1) = [L(i), L(i)], each memoised: EMPTY_LIST, GET i, APPEND, GET i, APPEND, MEMOIZE.
    let mut bomb = vec![b']', 0x94];
    for i in 0..40u8 {
        bomb.extend([b']', b'h', i, b'a', b'h', i, b'a', 0x94]);
    }
    let e = read("bomb.pickle", &bomb);
    assert!(e.contains("bomb.pickle") && e.contains("memo"), "{e}");
    let mut deep = vec![b']'; 200_000];
    deep.extend(std::iter::repeat_n(b'a', 199_999));
    let e = read("deep.pickle", &deep);
    assert!(e.contains("deep.pickle") && e.contains("nested at most"), "{e}");
}

/// An `.npz` with one entry `name` holding `data`, stored or deflated; then `patch` on its bytes.
fn npz_with(name: &str, data: &[u8], deflate: bool) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    w.start_file(name, zip::write::SimpleFileOptions::default().compression_method(method)).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap().into_inner()
}

/// Sets the uncompressed size of the archive's only entry, in its local header and in the central
/// directory, to `size`.
fn declare_size(zip: &mut [u8], size: u32) {
    let find = |zip: &[u8], sig: &[u8; 4]| (0..zip.len() - 4).find(|&i| &zip[i..i + 4] == sig).unwrap();
    let local = find(zip, b"PK\x03\x04");
    zip[local + 22..local + 26].copy_from_slice(&size.to_le_bytes());
    let central = find(zip, b"PK\x01\x02");
    zip[central + 24..central + 28].copy_from_slice(&size.to_le_bytes());
}

#[test]
fn npz_sizes_are_bounded_before_anything_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let npy = |values: usize| {
        let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({values},), }}");
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend((header.len() as u16).to_le_bytes());
        v.extend(header.as_bytes());
        v.extend(std::iter::repeat_n(0u8, values * 4));
        v
    };
    let read = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        GenePt::read(&p).map(|g| g.dim).map_err(|e| e.to_string())
    };
    assert_eq!(read("ok.npz", &npz_with("AARS.npy", &npy(8), false)), Ok(8));
    // an entry declaring 4 GB: refused from the header, nothing allocated
    let mut zip = npz_with("AARS.npy", &npy(8), false);
    declare_size(&mut zip, 0xFFFF_FFF0);
    let err = read("declared.npz", &zip).unwrap_err();
    assert!(err.contains("declared.npz") && err.contains("AARS") && err.contains("4294967280 bytes"), "{err}");
    // a deflate bomb: 2 MB of zeros in a few KB, declared as it is: refused from the header
    let mut zip = npz_with("AARS.npy", &npy(512 * 1024), true);
    assert!(zip.len() < 16 * 1024, "{}", zip.len());
    let err = read("bomb.npz", &zip).unwrap_err();
    assert!(err.contains("bomb.npz") && err.contains("AARS") && err.contains("at most 1048576 bytes"), "{err}");
    // declaring 100 bytes: reading stops where the declared size ends, a clean error
    declare_size(&mut zip, 100);
    let err = read("lying.npz", &zip).unwrap_err();
    assert!(err.contains("lying.npz") && err.contains("AARS") && err.contains("larger than its declared"), "{err}");
}

/// An array is read as a vector only when it is one: a 2-D pickled array is refused (it used to be
/// flattened), as is an array whose data disagrees with its declared shape or has bytes left over;
/// a TSV's byte-order mark is not part of its first symbol.
#[test]
fn arrays_must_be_the_vectors_they_declare() {
    let dir = tempfile::tempdir().unwrap();
    let read = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        GenePt::read(&p).map_err(|e| e.to_string())
    };
    // the protocol-2 numpy fixture's first array state: version 1, shape (8,) as K 8 TUPLE1
    let pickle = std::fs::read(fixture("genept_numpy.pickle")).unwrap();
    let patched = |to: &[u8]| {
        let from = b"K\x01K\x08\x85";
        let at = pickle.windows(from.len()).position(|w| w == from).expect("the fixture's first shape");
        [&pickle[..at], to, &pickle[at + from.len()..]].concat()
    };
    assert!(read("ok.pickle", &patched(b"K\x01K\x08\x85")).is_ok());
    let e = read("2d.pickle", &patched(b"K\x01K\x02K\x04\x86")).unwrap_err();
    assert!(e.contains("2d.pickle") && e.contains("AARS") && e.contains("1-D vector") && e.contains("[2, 4]"), "{e}");
    let e = read("nine.pickle", &patched(b"K\x01K\x09\x85")).unwrap_err();
    assert!(e.contains("nine.pickle") && e.contains("the 9 values its shape declares, found 8"), "{e}");

    // .npy entries of an .npz: a shape that disagrees with the data, and trailing bytes
    let npy = |shape: usize, data: usize| {
        let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({shape},), }}");
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend((header.len() as u16).to_le_bytes());
        v.extend(header.as_bytes());
        v.extend(std::iter::repeat_n(0x3fu8, data));
        v
    };
    assert_eq!(read("ok.npz", &npz_with("AARS.npy", &npy(8, 32), false)).map(|g| g.dim), Ok(8));
    let e = read("shape.npz", &npz_with("AARS.npy", &npy(8, 36), false)).unwrap_err();
    assert!(e.contains("shape.npz") && e.contains("AARS") && e.contains("the 8 values its shape declares, found 9"), "{e}");
    let e = read("trailing.npz", &npz_with("AARS.npy", &npy(8, 34), false)).unwrap_err();
    assert!(e.contains("trailing.npz") && e.contains("whole 4-byte values, found 34 bytes"), "{e}");

    let g = read("bom.tsv", b"\xef\xbb\xbfAARS\t1\t2\nBRCA1\t3\t4\n").unwrap();
    assert!(g.get("AARS").is_some() && g.vectors.len() == 2, "{:?}", g.vectors.keys().collect::<Vec<_>>());
}
