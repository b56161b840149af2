// PT-RAG's stage two. Twins: src/cpu/selection.rs (reference), src/cuda/selection.rs (launchers).
//
// Straight-through Gumbel-Softmax. logits, noise, soft, hard, dy, dlogits: [rows, classes]; one
// thread per row. Forward: soft = softmax((logits + noise) / tau), hard = one_hot(argmax) (first
// index on ties), both overwritten. Backward (the soft path): dlogits += (1/tau) soft (dy - <dy, soft>).
// gumbel_noise_f32 draws the noise: out[i] = -ln(-ln(u_i)), u_i from the top 53 bits of
// counter_draw(key, i), in double and rounded once (1-D grid-stride over elements).
//
// The triplet kernels score and project every (cell, candidate) triplet [c_i; p_s; k_sj] without
// forming it (the (N K, 3H) tensor): triplet t = i * k + j reads cell i, row s = i / (cells / rows)
// and candidate s * k + j.
// - triplet_stats: LayerNorm statistics stats[t] = (mean, rstd) over the 3H columns from the parts'
//   row sums and sums of squares. Forward one thread per triplet; backward one thread per part row,
//   each summing over the triplets that read it (deterministic, no atomics).
// - triplet_assemble: out[t, e] = rstd_t (a_c[i, e] + a_p[s, e] + a_k[sj, e] - mean_t v[e]) + c[e], a
//   linear layer on the LayerNorm of the triplet, from the parts' projections. Forward one thread per
//   output element. Backward: triplet_assemble_backward_stats (one warp per triplet, the dots over e),
//   triplet_assemble_backward_parts (one thread per part element, summing over the triplets that read
//   it; row threads also write per-row partials of dv, dc), triplet_assemble_backward_vectors (one
//   thread per e, summing the partials over rows in order).
// Forward kernels overwrite; backward kernels accumulate (+=).
#include "common.cuh"

// The perturbation row and the candidate that triplet t reads (see params.h).
__device__ __forceinline__ int row_of(const TripletLayoutParams& l, int t) { return (t / l.k) / (l.cells / l.rows); }
__device__ __forceinline__ int candidate_of(const TripletLayoutParams& l, int t) { return row_of(l, t) * l.k + t % l.k; }

extern "C" __global__ void gumbel_st_forward_f32(const float* __restrict__ logits, const float* __restrict__ noise, float tau, int rows,
                                                 int classes, float* __restrict__ soft, float* __restrict__ hard) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const long long base = (long long)r * classes;
    const float inv_tau = 1.0f / tau;
    float max = -INFINITY;
    int arg = 0;
    for (int c = 0; c < classes; ++c) {
        const float z = (logits[base + c] + noise[base + c]) * inv_tau;
        if (z > max) {
            max = z;
            arg = c;
        }
    }
    float sum = 0.0f;
    for (int c = 0; c < classes; ++c) {
        const float e = expf((logits[base + c] + noise[base + c]) * inv_tau - max);
        soft[base + c] = e;
        sum += e;
    }
    for (int c = 0; c < classes; ++c) {
        soft[base + c] /= sum;
        hard[base + c] = c == arg ? 1.0f : 0.0f;
    }
}

extern "C" __global__ void gumbel_st_backward_f32(const float* __restrict__ soft, const float* __restrict__ dy, float tau, int rows, int classes,
                                                  float* __restrict__ dlogits) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const long long base = (long long)r * classes;
    float dot = 0.0f;
    for (int c = 0; c < classes; ++c) dot += soft[base + c] * dy[base + c];
    for (int c = 0; c < classes; ++c) dlogits[base + c] += soft[base + c] * (dy[base + c] - dot) / tau;
}

extern "C" __global__ void triplet_stats_forward_f32(const float* __restrict__ sum_c, const float* __restrict__ sum_p, const float* __restrict__ sum_k,
                                                     const float* __restrict__ sq_c, const float* __restrict__ sq_p, const float* __restrict__ sq_k,
                                                     TripletLayoutParams l, int width, float eps, float* __restrict__ stats) {
    const int cells = l.cells, k = l.k;
    FOR_EACH_INDEX(t, (long long)cells * k) {
        const int i = t / k, s = row_of(l, t), c = candidate_of(l, t);
        const float mean = (sum_c[i] + sum_p[s] + sum_k[c]) / width;
        const float var = fmaxf((sq_c[i] + sq_p[s] + sq_k[c]) / width - mean * mean, 0.0f);
        stats[2 * t] = mean;
        stats[2 * t + 1] = rsqrtf(var + eps);
    }
}

// The gradient of one triplet's statistics with respect to each part's sum and sum of squares
// (the same for all three parts): r = (q/w - mean^2 + eps)^(-1/2).
__device__ __forceinline__ void stats_gradient(const float* stats, const float* dstats, long long t, int width, float& d_sum, float& d_square) {
    const float mean = stats[2 * t], r = stats[2 * t + 1], r3 = r * r * r;
    d_sum = (dstats[2 * t] + dstats[2 * t + 1] * r3 * mean) / width;
    d_square = -dstats[2 * t + 1] * r3 / (2.0f * width);
}

// Threads [0, cells) own a cell, [cells, cells + rows) a row, then rows * k candidates.
extern "C" __global__ void triplet_stats_backward_f32(const float* __restrict__ stats, const float* __restrict__ dstats, TripletLayoutParams l,
                                                      int width, float* __restrict__ dsum_c, float* __restrict__ dsum_p, float* __restrict__ dsum_k,
                                                      float* __restrict__ dsq_c, float* __restrict__ dsq_p, float* __restrict__ dsq_k) {
    const int cells = l.cells, rows = l.rows, k = l.k;
    const int per_row = cells / rows;
    FOR_EACH_INDEX(u, cells + rows + (long long)rows * k) {
        float ds = 0.0f, dq = 0.0f, a, b;
        if (u < cells) {
            for (int j = 0; j < k; ++j) {
                stats_gradient(stats, dstats, u * k + j, width, a, b);
                ds += a;
                dq += b;
            }
            dsum_c[u] += ds;
            dsq_c[u] += dq;
        } else if (u < cells + rows) {
            const int s = u - cells;
            for (long long t = (long long)s * per_row * k; t < (long long)(s + 1) * per_row * k; ++t) {
                stats_gradient(stats, dstats, t, width, a, b);
                ds += a;
                dq += b;
            }
            dsum_p[s] += ds;
            dsq_p[s] += dq;
        } else {
            const int c = u - cells - rows, s = c / k, j = c % k;
            for (int i = s * per_row; i < (s + 1) * per_row; ++i) {
                stats_gradient(stats, dstats, (long long)i * k + j, width, a, b);
                ds += a;
                dq += b;
            }
            dsum_k[c] += ds;
            dsq_k[c] += dq;
        }
    }
}

extern "C" __global__ void triplet_assemble_forward_f32(const float* __restrict__ a_c, const float* __restrict__ a_p, const float* __restrict__ a_k,
                                                        const float* __restrict__ stats, const float* __restrict__ v, const float* __restrict__ c,
                                                        TripletLayoutParams l, int h, float* __restrict__ out) {
    const int cells = l.cells, k = l.k;
    FOR_EACH_INDEX(x, (long long)cells * k * h) {
        const long long t = x / h;
        const int e = x % h, i = t / k;
        const float sum = a_c[(long long)i * h + e] + a_p[(long long)row_of(l, t) * h + e] + a_k[(long long)candidate_of(l, t) * h + e];
        out[x] = stats[2 * t + 1] * (sum - stats[2 * t] * v[e]) + c[e];
    }
}

// dstats[t] += (-rstd <g, v>, <g, a_c + a_p + a_k - mean v>), one warp per triplet.
extern "C" __global__ void triplet_assemble_backward_stats_f32(const float* __restrict__ a_c, const float* __restrict__ a_p, const float* __restrict__ a_k,
                                                               const float* __restrict__ stats, const float* __restrict__ v, const float* __restrict__ dout,
                                                               TripletLayoutParams l, int h, float* __restrict__ dstats) {
    const int cells = l.cells, k = l.k;
    const long long triplets = (long long)cells * k;
    const long long warps = (long long)gridDim.x * blockDim.x / 32;
    for (long long t = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32; t < triplets; t += warps) {
        const float mean = stats[2 * t], r = stats[2 * t + 1];
        const float* a = a_c + (long long)(t / k) * h;
        const float* b = a_p + (long long)row_of(l, t) * h;
        const float* d = a_k + (long long)candidate_of(l, t) * h;
        const float* g = dout + t * h;
        float gv = 0.0f, gx = 0.0f;
        for (int e = threadIdx.x % 32; e < h; e += 32) {
            gv += g[e] * v[e];
            gx += g[e] * (a[e] + b[e] + d[e] - mean * v[e]);
        }
        gv = warp_sum(gv);
        gx = warp_sum(gx);
        if (threadIdx.x % 32 == 0) {
            dstats[2 * t] += -r * gv;
            dstats[2 * t + 1] += gx;
        }
    }
}

// Threads own one element of a part: cells * h, then rows * h (which also write the row's partial
// sums of -rstd mean g and g for dv and dc), then rows * k * h candidates.
extern "C" __global__ void triplet_assemble_backward_parts_f32(const float* __restrict__ stats, const float* __restrict__ dout, TripletLayoutParams l,
                                                               int h, float* __restrict__ da_c, float* __restrict__ da_p, float* __restrict__ da_k, float* __restrict__ partial_v, float* __restrict__ partial_c) {
    const int cells = l.cells, rows = l.rows, k = l.k;
    const int per_row = cells / rows;
    const long long cell_elems = (long long)cells * h, row_elems = (long long)rows * h;
    FOR_EACH_INDEX(x, cell_elems + row_elems + row_elems * k) {
        if (x < cell_elems) {
            const long long i = x / h;
            const int e = x % h;
            float sum = 0.0f;
            for (int j = 0; j < k; ++j) sum += stats[2 * (i * k + j) + 1] * dout[(i * k + j) * h + e];
            da_c[x] += sum;
        } else if (x < cell_elems + row_elems) {
            const long long y = x - cell_elems, s = y / h;
            const int e = y % h;
            float sum = 0.0f, sum_v = 0.0f, sum_c = 0.0f;
            for (long long t = s * per_row * k; t < (s + 1) * per_row * k; ++t) {
                const float g = dout[t * h + e], rg = stats[2 * t + 1] * g;
                sum += rg;
                sum_v -= rg * stats[2 * t];
                sum_c += g;
            }
            da_p[y] += sum;
            partial_v[y] = sum_v;
            partial_c[y] = sum_c;
        } else {
            const long long y = x - cell_elems - row_elems, cand = y / h, s = cand / k, j = cand % k;
            const int e = y % h;
            float sum = 0.0f;
            for (long long i = s * per_row; i < (s + 1) * per_row; ++i) sum += stats[2 * (i * k + j) + 1] * dout[(i * k + j) * h + e];
            da_k[y] += sum;
        }
    }
}

// dv[e] += sum over rows of partial_v[s, e]; dc likewise. One thread per e.
extern "C" __global__ void triplet_assemble_backward_vectors_f32(const float* __restrict__ partial_v, const float* __restrict__ partial_c, int rows,
                                                                 int h, float* __restrict__ dv, float* __restrict__ dc) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= h) return;
    float sv = 0.0f, sc = 0.0f;
    for (int s = 0; s < rows; ++s) {
        sv += partial_v[(long long)s * h + e];
        sc += partial_c[(long long)s * h + e];
    }
    dv[e] += sv;
    dc[e] += sc;
}

extern "C" __global__ void gumbel_noise_f32(float* __restrict__ out, long long n, unsigned long long key) {
    FOR_EACH_INDEX(i, n) {
        const double u = ((double)(counter_draw(key, (unsigned long long)i) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
        out[i] = (float)(-log(-log(u)));
    }
}
