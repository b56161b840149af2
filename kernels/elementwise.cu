// Elementwise activations: SiLU, exact (erf) GELU, ReLU, the fused SwiGLU gate silu(gate) * up,
// the row softmax, and dropout with a recomputed (never stored) mask.
// Twins: src/cpu/elementwise.rs (reference), src/cuda/elementwise.rs (launchers).
// Shapes: every array [n], any n; the softmax's [rows, cols]. Launch: 1-D grid-stride, 256 threads
// per block, over elements (the softmax: over rows, one thread per row, as its rows are short).
// Forward overwrites y; backward accumulates dx += dy * f'(x). Dropout is its own backward pass
// (dx = dropout(dy), overwriting).
#include "common.cuh"

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

extern "C" __global__ void silu_forward_f32(const float* __restrict__ x, float* __restrict__ y, long long n) {
    FOR_EACH_INDEX(i, n) y[i] = x[i] * sigmoid(x[i]);
}

extern "C" __global__ void silu_backward_f32(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx, long long n) {
    FOR_EACH_INDEX(i, n) {
        const float s = sigmoid(x[i]);
        dx[i] += dy[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}

extern "C" __global__ void gelu_forward_f32(const float* __restrict__ x, float* __restrict__ y, long long n) {
    FOR_EACH_INDEX(i, n) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

extern "C" __global__ void gelu_backward_f32(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx, long long n) {
    FOR_EACH_INDEX(i, n) {
        const float v = x[i];
        const float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        const float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        dx[i] += dy[i] * (cdf + v * pdf);
    }
}

extern "C" __global__ void relu_forward_f32(const float* __restrict__ x, float* __restrict__ y, long long n) {
    FOR_EACH_INDEX(i, n) y[i] = fmaxf(x[i], 0.0f);
}

extern "C" __global__ void relu_backward_f32(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx, long long n) {
    FOR_EACH_INDEX(i, n) if (x[i] > 0.0f) dx[i] += dy[i];
}

// SwiGLU without storing silu(gate): dgate += dy * up * silu'(gate), dup += dy * silu(gate).
extern "C" __global__ void swiglu_forward_f32(const float* __restrict__ gate, const float* __restrict__ up, float* __restrict__ y,
                                              long long n) {
    FOR_EACH_INDEX(i, n) y[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

extern "C" __global__ void swiglu_backward_f32(const float* __restrict__ gate, const float* __restrict__ up, const float* __restrict__ dy,
                                               float* __restrict__ dgate, float* __restrict__ dup, long long n) {
    FOR_EACH_INDEX(i, n) {
        const float g = gate[i], s = sigmoid(g);
        dgate[i] += dy[i] * up[i] * s * (1.0f + g * (1.0f - s));
        dup[i] += dy[i] * g * s;
    }
}

// Element i of a mask keyed by `key` is dropped when the high half of counter_draw(key, i) is
// below `threshold` (p * 2^32): the CPU twin (DropoutMask) drops exactly the same elements.
extern "C" __global__ void dropout_f32(const float* __restrict__ x, float* __restrict__ y, long long n, unsigned long long key,
                                       unsigned int threshold, float scale) {
    FOR_EACH_INDEX(i, n) {
        const unsigned int draw = (unsigned int)(counter_draw(key, (unsigned long long)i) >> 32);
        y[i] = draw >= threshold ? x[i] * scale : 0.0f;
    }
}

// y[r, :] = softmax(x[r, :])
extern "C" __global__ void softmax_forward_f32(const float* __restrict__ x, int cols, float* __restrict__ y, long long rows) {
    FOR_EACH_INDEX(r, rows) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        float max = -INFINITY, sum = 0.0f;
        for (int c = 0; c < cols; ++c) max = fmaxf(max, xr[c]);
        for (int c = 0; c < cols; ++c) {
            yr[c] = expf(xr[c] - max);
            sum += yr[c];
        }
        for (int c = 0; c < cols; ++c) yr[c] /= sum;
    }
}

// dx += y * (dy - sum(dy * y)) per row
extern "C" __global__ void softmax_backward_f32(const float* __restrict__ y, const float* __restrict__ dy, int cols, float* __restrict__ dx,
                                                long long rows) {
    FOR_EACH_INDEX(r, rows) {
        const long long base = r * cols;
        float dot = 0.0f;
        for (int c = 0; c < cols; ++c) dot += y[base + c] * dy[base + c];
        for (int c = 0; c < cols; ++c) dx[base + c] += y[base + c] * (dy[base + c] - dot);
    }
}
