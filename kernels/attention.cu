// Flash-style multi-head attention within each set (the set transformer's mixing step, and Vanilla
// RAG's cross-attention from a set's cells to its candidates). Twins: src/cpu/attention.rs
// (reference), src/cuda/attention.rs (launchers).
//
// Shapes: q, out, dout, dq: [sets * cells, heads * head_dim]; k, v, dk, dv: [sets * keys, heads * head_dim];
// lse, delta: [sets, heads, cells]. Scores are scaled by 1/sqrt(head_dim); causal masks key j > query i
// (needs keys == cells). head_dim <= 128.
//
// One warp per row (a query row, or a key row in the dK/dV kernel); each lane holds head_dim/32
// slices (at most 4) of that row in registers. Blocks are (row tiles, heads, sets) with
// ROWS_PER_BLOCK warps; the other side (keys, or queries) is streamed through shared memory in tiles
// of TILE rows, and the softmax is computed online (running max and sum), so nothing S x S ever
// reaches global memory. Shared memory: forward/dQ 2 * TILE * head_dim floats; dK/dV
// (2 * head_dim + 2) * TILE floats.
//
// Forward overwrites out and lse; the backward kernels accumulate into dq, dk, dv. The dQ kernel
// also writes delta = rowsum(dout * out), which the dK/dV kernel (launched after it) reads.
#include "common.cuh"

#define TILE ATTENTION_TILE
#define SLOTS ATTENTION_SLOTS  // head_dim <= 32 * SLOTS

// Loads this lane's slices of row `row` (width head_dim) into registers, zero beyond head_dim.
__device__ __forceinline__ void load_row(const float* row, int head_dim, float (&r)[SLOTS]) {
#pragma unroll
    for (int t = 0; t < SLOTS; ++t) {
        const int d = threadIdx.x % 32 + 32 * t;
        r[t] = d < head_dim ? row[d] : 0.0f;
    }
}

__device__ __forceinline__ float warp_dot(const float (&a)[SLOTS], const float* b, int head_dim) {
    float s = 0.0f;
#pragma unroll
    for (int t = 0; t < SLOTS; ++t) {
        const int d = threadIdx.x % 32 + 32 * t;
        if (d < head_dim) s += a[t] * b[d];
    }
    return warp_sum(s);
}

// Copies rows [first, first + TILE) of one head of `src` (row stride `stride`) into `dst` [TILE, head_dim].
__device__ __forceinline__ void load_tile(const float* src, long long first, int count, int stride, int head_dim, float* dst) {
    for (int e = threadIdx.x; e < TILE * head_dim; e += blockDim.x) {
        const int r = e / head_dim, d = e % head_dim;
        dst[e] = r < count ? src[(first + r) * stride + d] : 0.0f;
    }
}

// Streams the K and V rows of one (set, head) through shared memory, TILE rows at a time, and calls
// visit(key_row, value_row) for every key that query row i sees. Every thread of the block must call
// it (it has barriers); inactive warps only help load.
template <class Visit>
__device__ __forceinline__ void for_each_visible_key(const float* k, const float* v, long long kv_base, int keys, int width, int head_dim,
                                                     float* k_tile, float* v_tile, bool active, int causal, int i, Visit visit) {
    for (int first = 0; first < keys; first += TILE) {
        const int count = min(TILE, keys - first);
        __syncthreads();  // the previous tile is no longer read
        load_tile(k + kv_base, first, count, width, head_dim, k_tile);
        load_tile(v + kv_base, first, count, width, head_dim, v_tile);
        __syncthreads();
        if (!active) continue;
        const int visible = causal ? min(count, i - first + 1) : count;
        for (int j = 0; j < visible; ++j) visit(k_tile + j * head_dim, v_tile + j * head_dim);
    }
}

extern "C" __global__ void attention_forward_f32(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                                 AttentionParams shape, float* __restrict__ out,
                                                 float* __restrict__ lse) {
    DYNAMIC_SHARED(float, shared);
    const int cells = shape.cells, keys = shape.keys, heads = shape.heads, head_dim = shape.head_dim, causal = shape.causal;
    float* k_tile = shared;
    float* v_tile = shared + TILE * head_dim;
    const int h = blockIdx.y, s = blockIdx.z, width = heads * head_dim;
    const int i = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;  // this warp's query row
    const bool active = i < cells;
    const float scale = rsqrtf((float)head_dim);
    float qr[SLOTS], acc[SLOTS] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (active) load_row(q + ((long long)s * cells + i) * width + h * head_dim, head_dim, qr);
    float running_max = -INFINITY, running_sum = 0.0f;
    const long long kv_base = (long long)s * keys * width + h * head_dim;
    for_each_visible_key(k, v, kv_base, keys, width, head_dim, k_tile, v_tile, active, causal, i, [&](const float* key, const float* value) {
        const float score = warp_dot(qr, key, head_dim) * scale;
        const float new_max = fmaxf(running_max, score);
        const float correction = expf(running_max - new_max), p = expf(score - new_max);
        running_sum = running_sum * correction + p;
#pragma unroll
        for (int t = 0; t < SLOTS; ++t) {
            const int d = threadIdx.x % 32 + 32 * t;
            acc[t] = acc[t] * correction + (d < head_dim ? p * value[d] : 0.0f);
        }
        running_max = new_max;
    });
    if (!active) return;
    float* o = out + ((long long)s * cells + i) * width + h * head_dim;
#pragma unroll
    for (int t = 0; t < SLOTS; ++t) {
        const int d = threadIdx.x % 32 + 32 * t;
        if (d < head_dim) o[d] = acc[t] / running_sum;
    }
    if (threadIdx.x % 32 == 0) lse[((long long)s * heads + h) * cells + i] = running_max + logf(running_sum);
}

// dq_i += scale * sum_j p_ij (dp_ij - delta_i) k_j, with p = exp(scale q.k - lse), dp = dout_i . v_j.
extern "C" __global__ void attention_backward_dq_f32(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                                     const float* __restrict__ out, const float* __restrict__ lse, const float* __restrict__ dout,
                                                     AttentionParams shape, float* __restrict__ dq,
                                                     float* __restrict__ delta) {
    DYNAMIC_SHARED(float, shared);
    const int cells = shape.cells, keys = shape.keys, heads = shape.heads, head_dim = shape.head_dim, causal = shape.causal;
    float* k_tile = shared;
    float* v_tile = shared + TILE * head_dim;
    const int h = blockIdx.y, s = blockIdx.z, width = heads * head_dim;
    const int i = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const bool active = i < cells;
    const float scale = rsqrtf((float)head_dim);
    const long long row = ((long long)s * cells + i) * width + h * head_dim;
    const long long stat = ((long long)s * heads + h) * cells + i;
    float qr[SLOTS], dor[SLOTS], acc[SLOTS] = {0.0f, 0.0f, 0.0f, 0.0f};
    float row_lse = 0.0f, row_delta = 0.0f;
    if (active) {
        float outr[SLOTS];
        load_row(q + row, head_dim, qr);
        load_row(dout + row, head_dim, dor);
        load_row(out + row, head_dim, outr);
        float d = 0.0f;
#pragma unroll
        for (int t = 0; t < SLOTS; ++t) d += dor[t] * outr[t];
        row_delta = warp_sum(d);
        row_lse = lse[stat];
        if (threadIdx.x % 32 == 0) delta[stat] = row_delta;
    }
    const long long kv_base = (long long)s * keys * width + h * head_dim;
    for_each_visible_key(k, v, kv_base, keys, width, head_dim, k_tile, v_tile, active, causal, i, [&](const float* key, const float* value) {
        const float p = expf(warp_dot(qr, key, head_dim) * scale - row_lse);
        const float ds = p * (warp_dot(dor, value, head_dim) - row_delta) * scale;
#pragma unroll
        for (int t = 0; t < SLOTS; ++t) {
            const int d = threadIdx.x % 32 + 32 * t;
            if (d < head_dim) acc[t] += ds * key[d];
        }
    });
    if (!active) return;
#pragma unroll
    for (int t = 0; t < SLOTS; ++t) {
        const int d = threadIdx.x % 32 + 32 * t;
        if (d < head_dim) dq[row + d] += acc[t];
    }
}

// For key row j: dv_j += sum_i p_ij dout_i; dk_j += scale * sum_i p_ij (dp_ij - delta_i) q_i.
extern "C" __global__ void attention_backward_dkdv_f32(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                                       const float* __restrict__ lse, const float* __restrict__ delta,
                                                       const float* __restrict__ dout, AttentionParams shape, float* __restrict__ dk, float* __restrict__ dv) {
    DYNAMIC_SHARED(float, shared);
    const int cells = shape.cells, keys = shape.keys, heads = shape.heads, head_dim = shape.head_dim, causal = shape.causal;
    float* q_tile = shared;
    float* do_tile = shared + TILE * head_dim;
    float* lse_tile = do_tile + TILE * head_dim;
    float* delta_tile = lse_tile + TILE;
    const int h = blockIdx.y, s = blockIdx.z, width = heads * head_dim;
    const int j = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;  // this warp's key row
    const bool active = j < keys;
    const float scale = rsqrtf((float)head_dim);
    const long long row = ((long long)s * keys + j) * width + h * head_dim;
    float kr[SLOTS], vr[SLOTS], dk_acc[SLOTS] = {0.0f, 0.0f, 0.0f, 0.0f}, dv_acc[SLOTS] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (active) {
        load_row(k + row, head_dim, kr);
        load_row(v + row, head_dim, vr);
    }
    const long long q_base = (long long)s * cells * width + h * head_dim;
    const long long stat_base = ((long long)s * heads + h) * cells;
    for (int first = 0; first < cells; first += TILE) {
        const int count = min(TILE, cells - first);
        __syncthreads();
        load_tile(q + q_base, first, count, width, head_dim, q_tile);
        load_tile(dout + q_base, first, count, width, head_dim, do_tile);
        for (int e = threadIdx.x; e < TILE; e += blockDim.x) {
            lse_tile[e] = e < count ? lse[stat_base + first + e] : 0.0f;
            delta_tile[e] = e < count ? delta[stat_base + first + e] : 0.0f;
        }
        __syncthreads();
        if (!active) continue;
        for (int r = causal ? max(0, j - first) : 0; r < count; ++r) {
            const float p = expf(warp_dot(kr, q_tile + r * head_dim, head_dim) * scale - lse_tile[r]);
            const float ds = p * (warp_dot(vr, do_tile + r * head_dim, head_dim) - delta_tile[r]) * scale;
#pragma unroll
            for (int t = 0; t < SLOTS; ++t) {
                const int d = threadIdx.x % 32 + 32 * t;
                if (d < head_dim) {
                    dv_acc[t] += p * do_tile[r * head_dim + d];
                    dk_acc[t] += ds * q_tile[r * head_dim + d];
                }
            }
        }
    }
    if (!active) return;
#pragma unroll
    for (int t = 0; t < SLOTS; ++t) {
        const int d = threadIdx.x % 32 + 32 * t;
        if (d < head_dim) {
            dk[row + d] += dk_acc[t];
            dv[row + d] += dv_acc[t];
        }
    }
}

// Rotary position encoding (src/cpu/attention.rs's rope_forward): x, out: [rows, heads * head_dim], a
// row's position is its index within its set of `cells`; the pair (x[i], x[i + head_dim/2]) of every
// head is rotated by position * theta^(-2i / head_dim), backwards when `inverse`. The sines and
// cosines come from the reference's f64 table, sin_cos[cells, head_dim / 2, 2], rounded to f32
// (double sin/cos would spill to local memory). One element per (row, head, i); overwrites out, or
// adds into it when `accumulate`.
__device__ __forceinline__ void rope_rotate(const float* __restrict__ x, const float* __restrict__ sin_cos, int cells, int heads, int head_dim,
                                            bool inverse, bool accumulate, float* __restrict__ out, long long pairs) {
    const int half = head_dim / 2;
    FOR_EACH_INDEX(p, pairs) {
        const int i = (int)(p % half);
        const long long head_row = p / half;
        const long long base = head_row * head_dim + i;  // (row * heads + head) * head_dim + i
        const float* angle = sin_cos + ((head_row / heads) % cells * half + i) * 2;
        const float sin_a = inverse ? -angle[0] : angle[0], cos_a = angle[1];
        const float a = x[base], b = x[base + half];
        const float ya = a * cos_a - b * sin_a, yb = b * cos_a + a * sin_a;
        out[base] = accumulate ? out[base] + ya : ya;
        out[base + half] = accumulate ? out[base + half] + yb : yb;
    }
}

// Forward: rotates x into y (overwrites).
extern "C" __global__ void rope_forward_f32(const float* __restrict__ x, const float* __restrict__ sin_cos, int cells, int heads, int head_dim,
                                            float* __restrict__ y, long long pairs) {
    rope_rotate(x, sin_cos, cells, heads, head_dim, false, false, y, pairs);
}

// Backward: the inverse rotation of dy (a rotation's transpose), added into dx.
extern "C" __global__ void rope_backward_f32(const float* __restrict__ dy, const float* __restrict__ sin_cos, int cells, int heads, int head_dim,
                                             float* __restrict__ dx, long long pairs) {
    rope_rotate(dy, sin_cos, cells, heads, head_dim, true, true, dx, pairs);
}
