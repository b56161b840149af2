//! Statistics for calling differentially expressed genes and comparing models: Welch's t-test,
//! ranks, Mann-Whitney U and Benjamini-Hochberg.

use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// Mean and unbiased variance of a sample.
pub fn mean_var(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = if x.len() > 1 { x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var)
}

/// Two-sided p-value of Welch's unequal-variance t-test from each sample's mean, unbiased variance
/// and size. Both variances zero: p = 1 when the means are equal, 0 otherwise. Needs 2 values a side.
pub fn welch_t_test(a: (f64, f64, usize), b: (f64, f64, usize)) -> f64 {
    let ((ma, va, na), (mb, vb, nb)) = (a, b);
    if na < 2 || nb < 2 {
        return 1.0;
    }
    let (sa, sb) = (va / na as f64, vb / nb as f64);
    let se2 = sa + sb;
    if se2 <= 0.0 {
        return if ma == mb { 1.0 } else { 0.0 };
    }
    let t = (ma - mb) / se2.sqrt();
    // Welch-Satterthwaite degrees of freedom.
    let df = se2 * se2 / (sa * sa / (na - 1) as f64 + sb * sb / (nb - 1) as f64);
    let dist = StudentsT::new(0.0, 1.0, df).expect("positive degrees of freedom");
    (2.0 * dist.sf(t.abs())).min(1.0)
}

/// 1-based ranks, ties sharing the mean of their ranks; also the tie groups' sizes.
pub fn average_ranks(x: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut ties = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        order[i..=j].iter().for_each(|&k| ranks[k] = rank);
        ties.push(j - i + 1);
        i = j + 1;
    }
    (ranks, ties)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MannWhitney {
    /// U of the first sample: the number of (x, y) pairs with x > y, ties counting 1/2.
    pub u: f64,
    /// Two-sided p-value.
    pub p: f64,
}

/// Mann-Whitney U test, two-sided, with the normal approximation corrected for ties and for
/// continuity (SciPy's `method="asymptotic"`). Either sample empty, or all values tied: p = 1.
pub fn mann_whitney_u(x: &[f64], y: &[f64]) -> MannWhitney {
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let all: Vec<f64> = x.iter().chain(y).copied().collect();
    let (ranks, ties) = average_ranks(&all);
    let u = ranks[..x.len()].iter().sum::<f64>() - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let tie_term: f64 = ties.iter().map(|&t| (t as f64).powi(3) - t as f64).sum();
    let var = n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if x.is_empty() || y.is_empty() || var.is_nan() || var <= 0.0 {
        return MannWhitney { u, p: 1.0 };
    }
    let big = u.max(n1 * n2 - u);
    let z = (big - n1 * n2 / 2.0 - 0.5) / var.sqrt();
    let p = (2.0 * Normal::new(0.0, 1.0).expect("standard normal").sf(z)).clamp(0.0, 1.0);
    MannWhitney { u, p }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Wilcoxon {
    /// The smaller of the positive and the negative differences' rank sums.
    pub statistic: f64,
    /// Two-sided p-value.
    pub p: f64,
}

/// Wilcoxon signed-rank test of the paired samples `x` and `y`, two-sided: zero differences
/// dropped (SciPy's `zero_method="wilcox"`), tied absolute differences sharing their mean rank
/// with the variance corrected for them, and the normal approximation without continuity
/// correction (`method="approx"`; the samples here are dozens to hundreds of conditions). With no
/// nonzero difference, p = 1.
pub fn wilcoxon_signed_rank(x: &[f64], y: &[f64]) -> Wilcoxon {
    assert_eq!(x.len(), y.len(), "paired samples");
    let d: Vec<f64> = x.iter().zip(y).map(|(a, b)| a - b).filter(|d| *d != 0.0).collect();
    let (ranks, ties) = average_ranks(&d.iter().map(|v| v.abs()).collect::<Vec<_>>());
    let positive: f64 = ranks.iter().zip(&d).filter(|(_, v)| **v > 0.0).map(|(r, _)| r).sum();
    let negative: f64 = ranks.iter().zip(&d).filter(|(_, v)| **v < 0.0).map(|(r, _)| r).sum();
    let statistic = positive.min(negative);
    let n = d.len() as f64;
    let tie_term: f64 = ties.iter().map(|&t| (t as f64).powi(3) - t as f64).sum();
    let var = n * (n + 1.0) * (2.0 * n + 1.0) / 24.0 - tie_term / 48.0;
    if d.is_empty() || var.is_nan() || var <= 0.0 {
        return Wilcoxon { statistic, p: 1.0 };
    }
    let z = (statistic - n * (n + 1.0) / 4.0) / var.sqrt();
    let p = (2.0 * Normal::new(0.0, 1.0).expect("standard normal").sf(z.abs())).clamp(0.0, 1.0);
    Wilcoxon { statistic, p }
}

/// Benjamini-Hochberg adjusted p-values (q-values), in the input order:
/// `q_(i) = min over j >= i of m p_(j) / j`, at most 1.
pub fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut q = vec![0.0; m];
    let mut running = 1.0f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        running = running.min(p[i] * m as f64 / (rank + 1) as f64);
        q[i] = running;
    }
    q
}

/// The paper's Table 1 marks: `***` q < 0.01, `**` q < 0.05, `*` q < 0.1.
pub fn significance_mark(q: f64) -> &'static str {
    if q < 0.01 {
        "***"
    } else if q < 0.05 {
        "**"
    } else if q < 0.1 {
        "*"
    } else {
        ""
    }
}
