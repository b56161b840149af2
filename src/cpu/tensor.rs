//! The tape's own tensor operations, the glue between the layer kernels: elementwise arithmetic,
//! per-row and per-column broadcasts and the reductions that are their gradients, row gathers,
//! column copies, group sums, a global sum, and the scaling by a global standard deviation.
//! Twin of `kernels/tensor.cu` (and `src/cuda/tensor.rs`).
//!
//! Shapes: `x[rows, cols]` row-major; `rows` follows from the lengths. Forward operations overwrite
//! `out`; the ones named `*_backward` and `accumulate` add into their output.

use crate::scalar::Scalar;
use rayon::prelude::*;

/// Elements per parallel task (these ran on one thread while the pool waited, before).
const CHUNK: usize = 1 << 14;

/// `out[i] = f(i)` for every element, in parallel chunks.
fn fill<T: Scalar>(out: &mut [T], f: impl Fn(usize) -> T + Sync) {
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let start = c * CHUNK;
        for (i, o) in chunk.iter_mut().enumerate() {
            *o = f(start + i);
        }
    });
}

/// `f(r, row)` on every row `r` of `cols` elements, in parallel chunks of rows.
fn for_each_row<T: Scalar>(out: &mut [T], cols: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let cols = cols.max(1);
    let rows_per_task = CHUNK.div_ceil(cols);
    out.par_chunks_mut(rows_per_task * cols)
        .enumerate()
        .for_each(|(t, chunk)| chunk.chunks_mut(cols).enumerate().for_each(|(r, row)| f(t * rows_per_task + r, row)));
}

fn check(op: &str, what: &str, len: usize, expected: usize) {
    assert_eq!(len, expected, "{op}: {what} has {len} elements, expected {expected}");
}

/// `out = a + b`
pub fn add<T: Scalar>(a: &[T], b: &[T], out: &mut [T]) {
    check("add", "b", b.len(), a.len());
    check("add", "out", out.len(), a.len());
    fill(out, |i| a[i] + b[i]);
}

/// `out = a * b` (elementwise)
pub fn mul<T: Scalar>(a: &[T], b: &[T], out: &mut [T]) {
    check("mul", "b", b.len(), a.len());
    check("mul", "out", out.len(), a.len());
    fill(out, |i| a[i] * b[i]);
}

/// `out = x * factor`
pub fn scale<T: Scalar>(x: &[T], factor: T, out: &mut [T]) {
    check("scale", "out", out.len(), x.len());
    fill(out, |i| x[i] * factor);
}

/// `dst += src` (a gradient's second and later contributions)
pub fn accumulate<T: Scalar>(src: &[T], dst: &mut [T]) {
    check("accumulate", "dst", dst.len(), src.len());
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, &s)| *d = *d + s));
}

/// `out[r, c] = x[r, c] + bias[c]`
pub fn add_bias<T: Scalar>(x: &[T], bias: &[T], out: &mut [T]) {
    let cols = bias.len();
    check("add_bias", "out", out.len(), x.len());
    assert!(cols > 0 && x.len().is_multiple_of(cols), "add_bias: {} values in rows of {cols}", x.len());
    for_each_row(out, cols, |r, row| row.iter_mut().zip(&x[r * cols..]).zip(bias).for_each(|((o, &x), &b)| *o = x + b));
}

/// `out[r, c] = x[r, c] * w[r]`
pub fn scale_rows<T: Scalar>(x: &[T], w: &[T], out: &mut [T]) {
    check("scale_rows", "out", out.len(), x.len());
    assert!(!w.is_empty() && x.len().is_multiple_of(w.len()), "scale_rows: {} values, {} rows", x.len(), w.len());
    let cols = x.len() / w.len();
    for_each_row(out, cols, |r, row| row.iter_mut().zip(&x[r * cols..]).for_each(|(o, &v)| *o = v * w[r]));
}

/// `out[r, c] = x[r, c] * v[c]`
pub fn scale_cols<T: Scalar>(x: &[T], v: &[T], out: &mut [T]) {
    let cols = v.len();
    check("scale_cols", "out", out.len(), x.len());
    assert!(cols > 0 && x.len().is_multiple_of(cols), "scale_cols: {} values in rows of {cols}", x.len());
    for_each_row(out, cols, |r, row| row.iter_mut().zip(&x[r * cols..]).zip(v).for_each(|((o, &x), &f)| *o = x * f));
}

/// `out[c] = sum_r a[r, c] * b[r, c]` (`b` absent: plain column sums; the bias gradient), summed
/// over the rows in order.
pub fn column_dots<T: Scalar>(a: &[T], b: Option<&[T]>, out: &mut [T]) {
    let cols = out.len();
    assert!(cols > 0 && a.len().is_multiple_of(cols), "column_dots: {} values in rows of {cols}", a.len());
    out.iter_mut().for_each(|o| *o = T::zero());
    match b {
        None => a.chunks(cols).for_each(|r| out.iter_mut().zip(r).for_each(|(o, &v)| *o = *o + v)),
        Some(b) => {
            check("column_dots", "b", b.len(), a.len());
            for (ra, rb) in a.chunks(cols).zip(b.chunks(cols)) {
                out.iter_mut().zip(ra.iter().zip(rb)).for_each(|(o, (&a, &b))| *o = *o + a * b);
            }
        }
    }
}

/// `out[r] = sum_c a[r, c] * b[r, c]`
pub fn row_dots<T: Scalar>(a: &[T], b: &[T], out: &mut [T]) {
    check("row_dots", "b", b.len(), a.len());
    assert!(!out.is_empty() && a.len().is_multiple_of(out.len()), "row_dots: {} values, {} rows", a.len(), out.len());
    let cols = a.len() / out.len();
    out.par_iter_mut().enumerate().for_each(|(r, o)| *o = a[r * cols..][..cols].iter().zip(&b[r * cols..]).map(|(&a, &b)| a * b).sum());
}

/// `out[i, :] = table[index[i], :]` with rows of `cols`; every index must be below the table's row count.
pub fn gather_rows<T: Scalar>(table: &[T], cols: usize, index: &[usize], out: &mut [T]) {
    check("gather_rows", "out", out.len(), index.len() * cols);
    for_each_row(out, cols, |r, row| row.copy_from_slice(&table[index[r] * cols..][..cols]));
}

/// `out[i, :] = table[index[i], :]` from a table of f16 bit patterns (the dataset's f16 expression
/// matrix), widened to f32 exactly.
pub fn gather_rows_f16(table: &[u16], cols: usize, index: &[usize], out: &mut [f32]) {
    check("gather_rows_f16", "out", out.len(), index.len() * cols);
    for_each_row(out, cols, |r, row| {
        row.iter_mut().zip(&table[index[r] * cols..][..cols]).for_each(|(o, &h)| *o = half::f16::from_bits(h).to_f32())
    });
}

/// `dtable[index[i], :] += g[i, :]` (the gradient of `gather_rows`; repeated indices add up, in order).
pub fn scatter_add_rows<T: Scalar>(g: &[T], cols: usize, index: &[usize], dtable: &mut [T]) {
    check("scatter_add_rows", "g", g.len(), index.len() * cols);
    for (r, &i) in index.iter().enumerate() {
        dtable[i * cols..][..cols].iter_mut().zip(&g[r * cols..][..cols]).for_each(|(d, &v)| *d = *d + v);
    }
}

/// Columns `src_start..src_start + width` of `src[rows, src_cols]` into columns `dst_start..` of
/// `dst[rows, dst_cols]`, added when `accumulate` (concatenation and slicing, both ways).
#[allow(clippy::too_many_arguments)]
pub fn copy_cols<T: Scalar>(
    src: &[T],
    src_cols: usize,
    src_start: usize,
    dst: &mut [T],
    dst_cols: usize,
    dst_start: usize,
    width: usize,
    accumulate: bool,
) {
    assert!(src_start + width <= src_cols && dst_start + width <= dst_cols, "copy_cols: {width} columns out of range");
    check("copy_cols", "dst", dst.len(), src.len() / src_cols * dst_cols);
    for_each_row(dst, dst_cols, |r, row| {
        let (from, to) = (&src[r * src_cols + src_start..][..width], &mut row[dst_start..dst_start + width]);
        if accumulate {
            to.iter_mut().zip(from).for_each(|(d, &s)| *d = *d + s);
        } else {
            to.copy_from_slice(from);
        }
    });
}

/// `out[r, :] = sum_{j < group} x[r * group + j, :]` with rows of `cols`, summed in order.
pub fn sum_groups_forward<T: Scalar>(x: &[T], cols: usize, group: usize, out: &mut [T]) {
    assert!(
        group > 0 && cols > 0 && x.len().is_multiple_of(group * cols),
        "sum_groups: {} values in groups of {group} rows of {cols}",
        x.len()
    );
    check("sum_groups", "out", out.len(), x.len() / group);
    for_each_row(out, cols, |r, row| {
        row.iter_mut().for_each(|o| *o = T::zero());
        for member in x[r * group * cols..][..group * cols].chunks(cols) {
            row.iter_mut().zip(member).for_each(|(o, &v)| *o = *o + v);
        }
    });
}

/// `dx[r * group + j, :] += dy[r, :]` for every `j < group`.
pub fn sum_groups_backward<T: Scalar>(dy: &[T], cols: usize, group: usize, dx: &mut [T]) {
    check("sum_groups backward", "dx", dx.len(), dy.len() * group);
    for_each_row(dx, cols, |r, row| row.iter_mut().zip(&dy[r / group * cols..][..cols]).for_each(|(d, &g)| *d = *d + g));
}

/// `out[0] = sum(x)`, in order.
pub fn sum<T: Scalar>(x: &[T], out: &mut [T]) {
    check("sum", "out", out.len(), 1);
    out[0] = x.iter().copied().sum();
}

/// `dx += dy[0]` (the gradient of `sum`).
pub fn sum_backward<T: Scalar>(dy: &[T], dx: &mut [T]) {
    check("sum backward", "dy", dy.len(), 1);
    dx.par_chunks_mut(CHUNK).for_each(|d| d.iter_mut().for_each(|d| *d = *d + dy[0]));
}

/// `out = x / s` with `s = max(std(x), floor)`, the unbiased standard deviation over all elements
/// (PyTorch's `x / x.std().clamp(min=floor)`); `stats = [mean, s, 1 if clamped else 0]` for the backward.
pub fn std_scale_forward<T: Scalar>(x: &[T], floor: f64, out: &mut [T], stats: &mut [T]) {
    let n = x.len();
    assert!(n > 1, "std_scale: needs at least two elements");
    check("std_scale", "out", out.len(), n);
    check("std_scale", "stats", stats.len(), 3);
    let mean = x.iter().copied().sum::<T>() / T::f(n as f64);
    let var = x.iter().map(|&x| (x - mean) * (x - mean)).sum::<T>() / T::f((n - 1) as f64);
    let clamped = var.sqrt() < T::f(floor);
    let std = if clamped { T::f(floor) } else { var.sqrt() };
    fill(out, |i| x[i] / std);
    stats.copy_from_slice(&[mean, std, if clamped { T::one() } else { T::zero() }]);
}

/// `dx += d(x / s)/dx` dy, through the standard deviation unless it was clamped
/// (`ds/dx_i = (x_i - mean) / ((n - 1) s)`).
pub fn std_scale_backward<T: Scalar>(x: &[T], stats: &[T], dy: &[T], dx: &mut [T]) {
    check("std_scale backward", "dy", dy.len(), x.len());
    check("std_scale backward", "dx", dx.len(), x.len());
    let (mean, std, clamped) = (stats[0], stats[1], stats[2] != T::zero());
    let c = if clamped {
        T::zero()
    } else {
        let gx: T = dy.iter().zip(x).map(|(&g, &x)| g * x).sum();
        gx / (std * std * std * T::f((x.len() - 1) as f64))
    };
    dx.iter_mut().zip(dy.iter().zip(x)).for_each(|(d, (&g, &x))| *d = *d + (g / std - c * (x - mean)));
}
