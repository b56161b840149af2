//! GenePT gene embeddings as users have them: the authors' Python pickle (a dict from gene symbol
//! to a list of floats or a numpy array), or `.npz` / `.safetensors` (one array per symbol), or a
//! TSV (symbol, then the values, one gene per line). Symbols are matched upper-case.

use crate::{Error, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Upper-case symbol -> vector, all of one dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct GenePt {
    pub dim: usize,
    pub vectors: HashMap<String, Vec<f32>>,
}

impl GenePt {
    /// Reads `path` by its extension: `.pickle`/`.pkl`, `.npz`, `.safetensors`, `.tsv`/`.txt`.
    pub fn read(path: &Path) -> Result<GenePt> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_lowercase();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let pairs = match ext.as_str() {
            "pickle" | "pkl" => pickle::dict_of_vectors(&bytes).map_err(|e| Error::bad_file(path, "pickle", e))?,
            "npz" => npz(path, &bytes)?,
            "safetensors" => safetensors_vectors(path, &bytes)?,
            "tsv" | "txt" => tsv(path, &bytes)?,
            _ => {
                return Err(Error::bad_file(path, "extension", "a GenePT file: .pickle/.pkl, .npz, .safetensors or .tsv/.txt"));
            }
        };
        Self::from_pairs(path, pairs)
    }

    fn from_pairs(path: &Path, pairs: Vec<(String, Vec<f32>)>) -> Result<GenePt> {
        let Some(dim) = pairs.first().map(|p| p.1.len()) else {
            return Err(Error::bad_file(path, "genes", "at least one gene vector"));
        };
        let mut vectors: HashMap<String, Vec<f32>> = HashMap::with_capacity(pairs.len());
        for (symbol, v) in pairs {
            if v.len() != dim || dim == 0 {
                return Err(Error::bad_file(path, &symbol, format!("a vector of {dim} values like the first gene's, found {}", v.len())));
            }
            if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                return Err(Error::bad_file(path, &symbol, format!("finite values; element {i} is {x}")));
            }
            let key = symbol.to_uppercase();
            match vectors.get(&key) {
                Some(old) if *old != v => {
                    return Err(Error::bad_file(
                        path,
                        &symbol,
                        format!("one vector per upper-case symbol; `{key}` has two different ones"),
                    ));
                }
                _ => {
                    vectors.insert(key, v);
                }
            }
        }
        Ok(GenePt { dim, vectors })
    }

    pub fn get(&self, symbol: &str) -> Option<&[f32]> {
        self.vectors.get(&symbol.to_uppercase()).map(Vec::as_slice)
    }
}

fn tsv(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Vec<f32>)>> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::bad_file(path, "text", "UTF-8 text"))?;
    // a byte-order mark (as some editors write) is not part of the first symbol
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let mut fields = line.split('\t');
            let symbol = fields.next().unwrap_or_default().trim().to_string();
            let values = fields
                .map(|f| f.trim().parse::<f32>())
                .collect::<std::result::Result<Vec<f32>, _>>()
                .map_err(|_| Error::bad_file(path, format!("line {}", i + 1), "a symbol, then tab-separated numbers"))?;
            Ok((symbol, values))
        })
        .collect()
}

fn safetensors_vectors(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Vec<f32>)>> {
    use safetensors::Dtype;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| Error::bad_file(path, "safetensors", e.to_string()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F64 => data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
            other => return Err(Error::bad_file(path, &name, format!("an F32 or F64 vector, found {other:?}"))),
        };
        if view.shape().len() != 1 {
            return Err(Error::bad_file(path, &name, format!("a 1-D vector, found shape {:?}", view.shape())));
        }
        out.push((name, values));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The largest `.npy` entry of an `.npz` read (131,072 float64 values: far beyond any embedding).
const MAX_NPY_BYTES: u64 = 1 << 20;

/// `.npz`: a zip of `.npy` arrays (stored or deflated), one 1-D float array per symbol.
fn npz(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Vec<f32>)>> {
    let bad = |field: &str, e: String| Error::bad_file(path, field, e);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| bad("zip", format!("an .npz (zip) archive ({e})")))?;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad("zip", e.to_string()))?;
        let name = entry.name().map_err(|e| bad("zip", e.to_string()))?.trim_end_matches(".npy").to_string();
        let too_big = |size: u64| {
            bad(&name, format!("one vector of at most {MAX_NPY_BYTES} bytes (a GenePT vector is a few KB), found {size} bytes"))
        };
        if entry.size() > MAX_NPY_BYTES {
            return Err(too_big(entry.size()));
        }
        // The declared size may lie (a deflate bomb): never read past the limit.
        let mut npy = Vec::with_capacity(entry.size() as usize);
        (&mut entry).take(MAX_NPY_BYTES + 1).read_to_end(&mut npy).map_err(|e| bad(&name, e.to_string()))?;
        if npy.len() as u64 > MAX_NPY_BYTES {
            return Err(too_big(npy.len() as u64));
        }
        out.push((name.clone(), npy_vector(&npy).map_err(|e| bad(&name, e))?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// One `.npy` 1-D float32/float64 array (format versions 1-3).
fn npy_vector(npy: &[u8]) -> std::result::Result<Vec<f32>, String> {
    if npy.len() < 10 || &npy[..6] != b"\x93NUMPY" {
        return Err("a .npy array".into());
    }
    let (len, start) = match npy[6] {
        1 => (u16::from_le_bytes([npy[8], npy[9]]) as usize, 10),
        2 | 3 if npy.len() >= 12 => (u32::from_le_bytes([npy[8], npy[9], npy[10], npy[11]]) as usize, 12),
        v => return Err(format!("a .npy array of format 1-3, found {v}")),
    };
    let header = npy.get(start..start + len).and_then(|h| std::str::from_utf8(h).ok()).ok_or("a readable .npy header")?;
    let descr = header.split("'descr':").nth(1).and_then(|s| s.split('\'').nth(1)).ok_or("a .npy header with descr")?;
    let shape = header.split("'shape':").nth(1).and_then(|s| s.split(')').next()).ok_or("a .npy header with shape")?;
    let dims: Vec<&str> = shape.trim_start_matches([' ', '(']).split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if dims.len() != 1 {
        return Err(format!("a 1-D vector, found shape ({})", dims.join(", ")));
    }
    let n: usize = dims[0].parse().map_err(|_| format!("a .npy shape of whole numbers, found ({})", dims[0]))?;
    let values = decode_floats(descr, &npy[start + len..])?;
    if values.len() != n {
        return Err(format!("the {n} values its shape declares, found {} (its data disagrees with its shape)", values.len()));
    }
    Ok(values)
}

/// Little- or big-endian float32/float64 values as f32 (`descr` as numpy writes it: `<f4`, `>f8`,
/// `f4`); bytes that are not a whole number of values are an error, never dropped.
fn decode_floats(descr: &str, data: &[u8]) -> std::result::Result<Vec<f32>, String> {
    let big = descr.starts_with('>');
    let size = match descr.trim_start_matches(['<', '>', '=', '|']) {
        "f4" => 4,
        "f8" => 8,
        _ => 1,
    };
    if !data.len().is_multiple_of(size) {
        return Err(format!("whole {size}-byte values, found {} bytes", data.len()));
    }
    match descr.trim_start_matches(['<', '>', '=', '|']) {
        "f4" => Ok(data
            .chunks_exact(4)
            .map(|b| {
                let b = [b[0], b[1], b[2], b[3]];
                if big {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            })
            .collect()),
        "f8" => Ok(data
            .chunks_exact(8)
            .map(|b| {
                let b: [u8; 8] = b.try_into().expect("8 bytes");
                (if big { f64::from_be_bytes(b) } else { f64::from_le_bytes(b) }) as f32
            })
            .collect()),
        other => Err(format!("float32 or float64 values, found dtype `{other}`")),
    }
}

/// A small pickle reader: enough of the pickle machine (protocols 2-5) to load a dict from
/// strings to lists of numbers or numpy arrays, without running any Python. Unknown classes are
/// never called; numpy arrays are decoded from their pickled state.
mod pickle {
    use super::decode_floats;

    #[derive(Clone, Debug)]
    enum V {
        None,
        Bool,
        Int(i64),
        Float(f64),
        Str(String),
        Bytes(Vec<u8>),
        List(Vec<V>),
        Tuple(Vec<V>),
        Dict(Vec<(V, V)>),
        /// `module.name`
        Global(String),
        /// A REDUCE (callable, args), then the state a BUILD gave it.
        Call(Box<V>, Box<V>, Option<Box<V>>),
        Mark,
    }

    type R<T> = std::result::Result<T, String>;

    struct Reader<'a> {
        b: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> R<&'a [u8]> {
            let end = self.pos.checked_add(n).ok_or("a complete pickle (it ends early)")?;
            let s = self.b.get(self.pos..end).ok_or("a complete pickle (it ends early)")?;
            self.pos += n;
            Ok(s)
        }
        fn uint(&mut self, n: usize) -> R<usize> {
            Ok(self.take(n)?.iter().rev().fold(0usize, |acc, &x| (acc << 8) | x as usize))
        }
        fn line(&mut self) -> R<String> {
            let rest = &self.b[self.pos..];
            let end = rest.iter().position(|&c| c == b'\n').ok_or("a newline-terminated name")?;
            self.pos += end + 1;
            Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
        }
    }

    /// The deepest nesting a value may have (a GenePT dict of lists is 2 deep; numpy arrays 4).
    const MAX_DEPTH: usize = 64;

    /// Values made by copying memo entries may total at most this many nodes: a "memo bomb" of a
    /// few hundred bytes otherwise doubles a list 40 times (2^40 nodes). Legitimate pickles copy
    /// small things (a dtype, a class name) once per vector.
    fn copy_budget(file_len: usize) -> usize {
        file_len.saturating_mul(16).saturating_add(1_000_000)
    }

    /// The nodes of `v` (counted up to just past `cap`) and its depth, without recursion.
    fn measure(v: &V, cap: usize) -> (usize, usize) {
        let (mut todo, mut nodes, mut depth) = (vec![(v, 1usize)], 0usize, 0usize);
        while let Some((x, d)) = todo.pop() {
            nodes += 1;
            depth = depth.max(d);
            if nodes > cap {
                break;
            }
            match x {
                V::List(a) | V::Tuple(a) => todo.extend(a.iter().map(|c| (c, d + 1))),
                V::Dict(a) => todo.extend(a.iter().flat_map(|(k, v)| [(k, d + 1), (v, d + 1)])),
                V::Call(f, args, state) => {
                    todo.extend([(&**f, d + 1), (&**args, d + 1)]);
                    todo.extend(state.as_deref().map(|s| (s, d + 1)));
                }
                _ => {}
            }
        }
        (nodes, depth)
    }

    /// Refuses a value that would nest too deeply as a child of another.
    fn nestable(v: &V) -> R<()> {
        if measure(v, usize::MAX).1 >= MAX_DEPTH {
            return Err(format!("values nested at most {MAX_DEPTH} deep"));
        }
        Ok(())
    }

    fn utf8(b: &[u8]) -> R<String> {
        String::from_utf8(b.to_vec()).map_err(|_| "UTF-8 strings".to_string())
    }

    fn run(bytes: &[u8]) -> R<V> {
        let mut r = Reader { b: bytes, pos: 0 };
        let mut stack: Vec<V> = Vec::new();
        let mut memo: std::collections::HashMap<usize, V> = std::collections::HashMap::new();
        let mut budget = copy_budget(bytes.len());
        // A memo copy, charged to the budget.
        let mut copy = |v: &V| -> R<V> {
            let (nodes, _) = measure(v, budget);
            if nodes > budget {
                return Err(format!("a pickle whose memo copies stay within {} values (a memo bomb?)", copy_budget(bytes.len())));
            }
            budget -= nodes;
            Ok(v.clone())
        };
        let pop = |stack: &mut Vec<V>| stack.pop().ok_or_else(|| "a well-formed pickle (stack underflow)".to_string());
        let pop_mark = |stack: &mut Vec<V>| -> R<Vec<V>> {
            let at = stack.iter().rposition(|v| matches!(v, V::Mark)).ok_or("a well-formed pickle (no MARK)")?;
            let items = stack.split_off(at + 1);
            stack.pop();
            Ok(items)
        };
        loop {
            let op = r.take(1)?[0];
            match op {
                0x80 => {
                    r.take(1)?; // PROTO
                }
                0x95 => {
                    r.take(8)?; // FRAME: a length hint
                }
                b'.' => return pop(&mut stack),           // STOP
                b'(' => stack.push(V::Mark),              // MARK
                b'}' => stack.push(V::Dict(Vec::new())),  // EMPTY_DICT
                b']' => stack.push(V::List(Vec::new())),  // EMPTY_LIST
                b')' => stack.push(V::Tuple(Vec::new())), // EMPTY_TUPLE
                b'N' => stack.push(V::None),
                0x88 | 0x89 => stack.push(V::Bool),
                b'J' => stack.push(V::Int(i32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes")) as i64)),
                b'K' => stack.push(V::Int(r.uint(1)? as i64)),
                b'M' => stack.push(V::Int(r.uint(2)? as i64)),
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes
                    let n = r.uint(1)?;
                    let b = r.take(n)?;
                    if n > 8 {
                        return Err("integers of at most 64 bits".into());
                    }
                    let mut v = b.iter().rev().fold(0i64, |acc, &x| (acc << 8) | x as i64);
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    stack.push(V::Int(v));
                }
                b'G' => stack.push(V::Float(f64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes")))),
                // length-prefixed text (BINUNICODE, SHORT_BINUNICODE, BINUNICODE8)
                b'X' | 0x8c | 0x8d => {
                    let n = r.uint(match op {
                        0x8c => 1,
                        b'X' => 4,
                        _ => 8,
                    })?;
                    stack.push(V::Str(utf8(r.take(n)?)?))
                }
                // length-prefixed bytes: Python 2 byte strings (latin-1), bytes and bytearray
                b'U' | b'C' | b'T' | b'B' | 0x8e | 0x96 => {
                    let n = r.uint(match op {
                        b'U' | b'C' => 1,
                        b'T' | b'B' => 4,
                        _ => 8,
                    })?;
                    stack.push(V::Bytes(r.take(n)?.to_vec()))
                }
                b'a' => {
                    let v = pop(&mut stack)?;
                    nestable(&v)?;
                    match stack.last_mut() {
                        Some(V::List(l)) => l.push(v),
                        _ => return Err("APPEND to a list".into()),
                    }
                }
                b'e' => {
                    let items = pop_mark(&mut stack)?;
                    items.iter().try_for_each(nestable)?;
                    match stack.last_mut() {
                        Some(V::List(l)) => l.extend(items),
                        _ => return Err("APPENDS to a list".into()),
                    }
                }
                b's' => {
                    let (v, k) = (pop(&mut stack)?, pop(&mut stack)?);
                    nestable(&v)?;
                    nestable(&k)?;
                    match stack.last_mut() {
                        Some(V::Dict(d)) => d.push((k, v)),
                        _ => return Err("SETITEM on a dict".into()),
                    }
                }
                b'u' => {
                    let items = pop_mark(&mut stack)?;
                    items.iter().try_for_each(nestable)?;
                    let Some(V::Dict(d)) = stack.last_mut() else { return Err("SETITEMS on a dict".into()) };
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.push((k, v));
                    }
                }
                b't' => {
                    let items = pop_mark(&mut stack)?;
                    items.iter().try_for_each(nestable)?;
                    stack.push(V::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if stack.len() < n {
                        return Err("a well-formed pickle (short tuple)".into());
                    }
                    let items = stack.split_off(stack.len() - n);
                    items.iter().try_for_each(nestable)?;
                    stack.push(V::Tuple(items))
                }
                b'c' => {
                    let (module, name) = (r.line()?, r.line()?);
                    stack.push(V::Global(format!("{module}.{name}")))
                }
                0x93 => {
                    let (name, module) = (pop(&mut stack)?, pop(&mut stack)?);
                    match (module, name) {
                        (V::Str(m), V::Str(n)) => stack.push(V::Global(format!("{m}.{n}"))),
                        _ => return Err("STACK_GLOBAL with string names".into()),
                    }
                }
                b'R' | 0x81 => {
                    // REDUCE (callable, args) and NEWOBJ (class, args): recorded, never run
                    let (args, f) = (pop(&mut stack)?, pop(&mut stack)?);
                    nestable(&args)?;
                    stack.push(V::Call(Box::new(f), Box::new(args), None))
                }
                b'b' => {
                    let state = pop(&mut stack)?;
                    nestable(&state)?;
                    match stack.last_mut() {
                        Some(V::Call(_, _, s)) => *s = Some(Box::new(state)),
                        _ => return Err("BUILD on an object".into()),
                    }
                }
                0x94 => {
                    let top = copy(stack.last().ok_or("MEMOIZE of a value")?)?;
                    memo.insert(memo.len(), top);
                }
                b'q' | b'r' => {
                    let i = r.uint(if op == b'q' { 1 } else { 4 })?;
                    memo.insert(i, copy(stack.last().ok_or("PUT of a value")?)?);
                }
                b'h' | b'j' => {
                    let i = r.uint(if op == b'h' { 1 } else { 4 })?;
                    stack.push(copy(memo.get(&i).ok_or("a memo entry that was stored")?)?)
                }
                other => return Err(format!("a pickle of protocol 2 or later (opcode 0x{other:02x} is not supported)")),
            }
        }
    }

    fn bytes_of(v: &V) -> R<Vec<u8>> {
        match v {
            V::Bytes(b) => Ok(b.clone()),
            // protocol 2 pickles numpy's bytes as `_codecs.encode(text, "latin1")`
            V::Call(f, args, _) if matches!(&**f, V::Global(g) if g == "_codecs.encode") => match &**args {
                V::Tuple(a) => match a.first() {
                    Some(V::Str(s)) => Ok(s.chars().map(|c| c as u32 as u8).collect()),
                    _ => Err("latin-1 encoded text".into()),
                },
                _ => Err("latin-1 encoded text".into()),
            },
            _ => Err("raw array bytes".into()),
        }
    }

    /// numpy's dtype object: `numpy.dtype("f4", False, True)` with an optional state
    /// `(3, "<", ...)` giving the byte order; as a numpy descr like `<f4`.
    fn descr_of(v: &V) -> R<String> {
        let V::Call(f, args, state) = v else { return Err("a numpy dtype".into()) };
        if !matches!(&**f, V::Global(g) if g.ends_with(".dtype")) {
            return Err("a numpy dtype".into());
        }
        let Some(V::Str(kind)) = (match &**args {
            V::Tuple(a) => a.first(),
            _ => None,
        }) else {
            return Err("a numpy dtype name".into());
        };
        let order = match state.as_deref() {
            Some(V::Tuple(s)) => match s.get(1) {
                Some(V::Str(o)) => o.clone(),
                _ => "<".into(),
            },
            _ => "<".into(),
        };
        Ok(format!("{order}{kind}"))
    }

    fn vector(v: &V) -> R<Vec<f32>> {
        match v {
            V::List(items) | V::Tuple(items) => items
                .iter()
                .map(|x| match x {
                    V::Float(f) => Ok(*f as f32),
                    V::Int(i) => Ok(*i as f32),
                    // a numpy scalar: numpy.core.multiarray.scalar(dtype, bytes)
                    V::Call(f, args, _) if matches!(&**f, V::Global(g) if g.ends_with("multiarray.scalar")) => match &**args {
                        V::Tuple(a) if a.len() == 2 => {
                            Ok(decode_floats(&descr_of(&a[0])?, &bytes_of(&a[1])?)?.first().copied().unwrap_or(f32::NAN))
                        }
                        _ => Err("a numpy scalar".into()),
                    },
                    _ => Err("numbers".to_string()),
                })
                .collect(),
            V::Call(f, args, state) => {
                let V::Global(g) = &**f else { return Err("a list of numbers or a numpy array".into()) };
                if g.ends_with("multiarray._reconstruct") {
                    // state: (version, shape, dtype, is_fortran, raw bytes)
                    let Some(V::Tuple(s)) = state.as_deref() else { return Err("a numpy array with its state".into()) };
                    if s.len() < 5 {
                        return Err("a numpy array state of 5 fields".into());
                    }
                    one_dimensional(&s[1], decode_floats(&descr_of(&s[2])?, &bytes_of(&s[4])?)?)
                } else if g.ends_with("numeric._frombuffer") {
                    // protocol 5: _frombuffer(buffer, dtype, shape, order)
                    let V::Tuple(a) = &**args else { return Err("numpy _frombuffer arguments".into()) };
                    match (a.first(), a.get(1), a.get(2)) {
                        (Some(buf), Some(dtype), Some(shape)) => one_dimensional(shape, decode_floats(&descr_of(dtype)?, &bytes_of(buf)?)?),
                        _ => Err("numpy _frombuffer arguments".into()),
                    }
                } else {
                    Err(format!("a list of numbers or a numpy array, found a `{g}` object"))
                }
            }
            _ => Err("a list of numbers or a numpy array".into()),
        }
    }

    /// `values` when the pickled `shape` is one dimension of their length: a 2-D array is not a
    /// vector, and is never flattened into one.
    fn one_dimensional(shape: &V, values: Vec<f32>) -> R<Vec<f32>> {
        let dims: Vec<i64> = match shape {
            V::Tuple(d) | V::List(d) => {
                d.iter().map(|x| if let V::Int(i) = x { Ok(*i) } else { Err("a numpy shape of integers".to_string()) }).collect::<R<_>>()?
            }
            V::Int(i) => vec![*i],
            _ => return Err("a numpy shape".into()),
        };
        match dims[..] {
            [n] if n as usize == values.len() => Ok(values),
            [n] => Err(format!("the {n} values its shape declares, found {}", values.len())),
            _ => Err(format!("a 1-D vector, found shape {dims:?}")),
        }
    }

    /// The pickle's top-level dict as (key, vector) pairs in file order.
    pub fn dict_of_vectors(bytes: &[u8]) -> R<Vec<(String, Vec<f32>)>> {
        match run(bytes)? {
            V::Dict(items) => items
                .into_iter()
                .map(|(k, v)| {
                    let V::Str(k) = k else { return Err("string keys (gene symbols)".to_string()) };
                    let vec = vector(&v).map_err(|e| format!("gene `{k}`: {e}"))?;
                    Ok((k, vec))
                })
                .collect(),
            _ => Err("a dict from gene symbol to vector at the top level".into()),
        }
    }
}
