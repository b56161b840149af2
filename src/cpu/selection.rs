//! Straight-through Gumbel-Softmax, PT-RAG's differentiable candidate selection.
//!
//! Shapes: `logits, noise, soft, hard: [rows, classes]`. Forward: `soft = softmax((logits + noise) / tau)`,
//! `hard = one_hot(argmax soft)` (first index on ties): the forward value is exactly 0/1. Backward uses
//! the soft path's gradient (`hard - soft.detach() + soft`): `dlogits += (1/tau) * soft * (dy - <dy, soft>)`.
//! The noise is supplied (standard Gumbel samples), so tests and parity checks can fix it.

use crate::real::Real;

pub fn gumbel_st_forward<T: Real>(logits: &[T], noise: &[T], tau: f64, classes: usize, soft: &mut [T], hard: &mut [T]) {
    assert!(logits.len() == noise.len() && logits.len() == soft.len() && soft.len() == hard.len());
    let inv_tau = T::one() / T::f(tau);
    for (((l, g), s), h) in logits.chunks(classes).zip(noise.chunks(classes)).zip(soft.chunks_mut(classes)).zip(hard.chunks_mut(classes)) {
        let z: Vec<T> = l.iter().zip(g).map(|(&l, &g)| (l + g) * inv_tau).collect();
        let max = z.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
        let mut sum = T::zero();
        for (s, &z) in s.iter_mut().zip(&z) {
            *s = (z - max).exp();
            sum = sum + *s;
        }
        s.iter_mut().for_each(|s| *s = *s / sum);
        let arg = (0..classes).fold(0, |best, c| if z[c] > z[best] { c } else { best });
        h.iter_mut().enumerate().for_each(|(c, h)| *h = if c == arg { T::one() } else { T::zero() });
    }
}

pub fn gumbel_st_backward<T: Real>(soft: &[T], dy: &[T], tau: f64, classes: usize, dlogits: &mut [T]) {
    let inv_tau = T::one() / T::f(tau);
    for ((s, dy), dl) in soft.chunks(classes).zip(dy.chunks(classes)).zip(dlogits.chunks_mut(classes)) {
        let dot: T = s.iter().zip(dy).map(|(&s, &d)| s * d).sum();
        for ((dl, &s), &d) in dl.iter_mut().zip(s).zip(dy) {
            *dl = *dl + inv_tau * s * (d - dot);
        }
    }
}
