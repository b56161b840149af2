// RMSNorm and LayerNorm over the last dimension, with their backward passes.
// Twins: src/cpu/norm.rs (reference), src/cuda/norm.rs (launchers).
// Shapes: x, y, dy, dx: [rows, cols]; w, b, dw, db: [cols]; mean, rstd: [rows].
// Row kernels: one block per row, blockDim.x threads (a multiple of 32), dynamic shared memory of
// blockDim.x / 32 floats. Weight-gradient kernels: one thread per column looping over the rows in
// order, so the sums are deterministic.
// Forward overwrites y and the saved statistics; backward accumulates (+=) into dx, dw, db.
#include "common.cuh"

extern "C" __global__ void rmsnorm_forward_f32(const float* __restrict__ x, const float* __restrict__ w, float eps, int cols,
                                               float* __restrict__ y, float* __restrict__ rstd) {
    DYNAMIC_SHARED(float, scratch);
    const float* xr = x + (long long)blockIdx.x * cols;
    float* yr = y + (long long)blockIdx.x * cols;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) sq += xr[c] * xr[c];
    const float r = rsqrtf(block_sum(sq, scratch) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = w[c] * xr[c] * r;
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
}

// dx += r * (dy * w - x * r * mean(dy * w * x * r))
extern "C" __global__ void rmsnorm_backward_f32(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ rstd,
                                                const float* __restrict__ dy, int cols, float* __restrict__ dx) {
    DYNAMIC_SHARED(float, scratch);
    const long long base = (long long)blockIdx.x * cols;
    const float r = rstd[blockIdx.x];
    float dot = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dot += dy[base + c] * w[c] * x[base + c] * r;
    dot = block_sum(dot, scratch) / cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) dx[base + c] += r * (dy[base + c] * w[c] - x[base + c] * r * dot);
}

// dw[c] += sum over rows of dy * x * rstd
extern "C" __global__ void rmsnorm_backward_weight_f32(const float* __restrict__ x, const float* __restrict__ rstd, const float* __restrict__ dy,
                                                       int rows, int cols, float* __restrict__ dw) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float sum = 0.0f;
    for (int r = 0; r < rows; ++r) sum += dy[(long long)r * cols + c] * x[(long long)r * cols + c] * rstd[r];
    dw[c] += sum;
}

// Two passes over the row (mean, then variance around it), as the reference does, for accuracy.
extern "C" __global__ void layernorm_forward_f32(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b, float eps,
                                                 int cols, float* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd) {
    DYNAMIC_SHARED(float, scratch);
    const float* xr = x + (long long)blockIdx.x * cols;
    float* yr = y + (long long)blockIdx.x * cols;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c];
    const float mu = block_sum(s, scratch) / cols;
    float v = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) v += (xr[c] - mu) * (xr[c] - mu);
    const float r = rsqrtf(block_sum(v, scratch) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = (xr[c] - mu) * r * w[c] + b[c];
    if (threadIdx.x == 0) {
        mean[blockIdx.x] = mu;
        rstd[blockIdx.x] = r;
    }
}

// g = dy * w; dx += r * (g - mean(g) - xhat * mean(g * xhat))
extern "C" __global__ void layernorm_backward_f32(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ mean,
                                                  const float* __restrict__ rstd, const float* __restrict__ dy, int cols, float* __restrict__ dx) {
    DYNAMIC_SHARED(float, scratch);
    const long long base = (long long)blockIdx.x * cols;
    const float mu = mean[blockIdx.x], r = rstd[blockIdx.x];
    float g_sum = 0.0f, gx_sum = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float g = dy[base + c] * w[c];
        g_sum += g;
        gx_sum += g * (x[base + c] - mu) * r;
    }
    const float g_mean = block_sum(g_sum, scratch) / cols;
    const float gx_mean = block_sum(gx_sum, scratch) / cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float xhat = (x[base + c] - mu) * r;
        dx[base + c] += r * (dy[base + c] * w[c] - g_mean - xhat * gx_mean);
    }
}

// dw[c] += sum over rows of dy * xhat; db[c] += sum over rows of dy
extern "C" __global__ void layernorm_backward_weight_f32(const float* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ rstd,
                                                         const float* __restrict__ dy, int rows, int cols, float* __restrict__ dw,
                                                         float* __restrict__ db) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float sw = 0.0f, sb = 0.0f;
    for (int r = 0; r < rows; ++r) {
        const float g = dy[(long long)r * cols + c];
        sw += g * (x[(long long)r * cols + c] - mean[r]) * rstd[r];
        sb += g;
    }
    dw[c] += sw;
    db[c] += sb;
}
