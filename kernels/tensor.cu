// The tape's own tensor operations, the glue between the layer kernels: elementwise arithmetic,
// per-row and per-column broadcasts and the reductions that are their gradients, row gathers,
// column copies, group sums, a global sum, and the scaling by a global standard deviation.
// Twins: src/cpu/tensor.rs (reference), src/cuda/tensor.rs (launchers).
// Shapes: x[rows, cols] row-major. Launches: elementwise kernels 1-D grid-stride (256 threads);
// column reductions one thread per column looping over the rows in order (deterministic);
// row reductions one warp per row; the global reductions (sum, std) one block.
// Forward kernels overwrite out; accumulate_f32, scatter_add_rows_f32 and *_backward add (+=).
#include "common.cuh"

extern "C" __global__ void add_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ out, long long n) {
    FOR_EACH_INDEX(i, n) out[i] = a[i] + b[i];
}

extern "C" __global__ void mul_f32(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ out, long long n) {
    FOR_EACH_INDEX(i, n) out[i] = a[i] * b[i];
}

extern "C" __global__ void scale_f32(const float* __restrict__ x, float factor, float* __restrict__ out, long long n) {
    FOR_EACH_INDEX(i, n) out[i] = x[i] * factor;
}

extern "C" __global__ void accumulate_f32(const float* __restrict__ src, float* __restrict__ dst, long long n) {
    FOR_EACH_INDEX(i, n) dst[i] += src[i];
}

// out[r, c] = x[r, c] + bias[c]
extern "C" __global__ void add_bias_f32(const float* __restrict__ x, const float* __restrict__ bias, int cols, float* __restrict__ out,
                                                long long n) {
    FOR_EACH_INDEX(i, n) out[i] = x[i] + bias[i % cols];
}

// out[r, c] = x[r, c] * w[r]
extern "C" __global__ void scale_rows_f32(const float* __restrict__ x, const float* __restrict__ w, int cols, float* __restrict__ out,
                                                  long long n) {
    FOR_EACH_INDEX(i, n) out[i] = x[i] * w[i / cols];
}

// out[r, c] = x[r, c] * v[c]
extern "C" __global__ void scale_cols_f32(const float* __restrict__ x, const float* __restrict__ v, int cols, float* __restrict__ out,
                                                  long long n) {
    FOR_EACH_INDEX(i, n) out[i] = x[i] * v[i % cols];
}

// out[c] = sum over r of a[r, c] * b[r, c] (b null: 1), one thread per column, rows in order.
extern "C" __global__ void column_dots_f32(const float* __restrict__ a, const float* __restrict__ b, int rows, int cols, float* __restrict__ out) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float sum = 0.0f;
    for (int r = 0; r < rows; ++r) {
        const long long i = (long long)r * cols + c;
        sum += b ? a[i] * b[i] : a[i];
    }
    out[c] = sum;
}

// out[r] = sum over c of a[r, c] * b[r, c], one warp per row.
extern "C" __global__ void row_dots_f32(const float* __restrict__ a, const float* __restrict__ b, int rows, int cols, float* __restrict__ out) {
    const int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (r >= rows) return;  // whole warps leave together: blockDim.x is a multiple of 32
    const long long base = (long long)r * cols;
    float sum = 0.0f;
    for (int c = lane; c < cols; c += 32) sum += a[base + c] * b[base + c];
    sum = warp_sum(sum);
    if (lane == 0) out[r] = sum;
}

// out[i, :] = table[index[i], :]
extern "C" __global__ void gather_rows_f32(const float* __restrict__ table, const int* __restrict__ index, int cols, float* __restrict__ out,
                                           long long n) {
    FOR_EACH_INDEX(i, n) out[i] = table[(long long)index[i / cols] * cols + i % cols];
}

// out[i, :] = table[index[i], :] from a table of IEEE half-precision bit patterns (the dataset's f16
// expression matrix), widened exactly to float.
extern "C" __global__ void gather_rows_f16(const unsigned short* __restrict__ table, const int* __restrict__ index, int cols,
                                           float* __restrict__ out, long long n) {
    FOR_EACH_INDEX(i, n) out[i] = half_bits_to_float(table[(long long)index[i / cols] * cols + i % cols]);
}

// dtable[index[i], :] += g[i, :]; atomics, as indices repeat (the order of the additions varies).
extern "C" __global__ void scatter_add_rows_f32(const float* __restrict__ g, const int* __restrict__ index, int cols, float* __restrict__ dtable,
                                                long long n) {
    FOR_EACH_INDEX(i, n) atomicAdd(&dtable[(long long)index[i / cols] * cols + i % cols], g[i]);
}

// Columns src_start.. of src[rows, src_cols] into columns dst_start.. of dst[rows, dst_cols]
// (width of them), added when accumulate. n = rows * width.
extern "C" __global__ void copy_cols_f32(const float* __restrict__ src, int src_cols, int src_start, float* __restrict__ dst, int dst_cols,
                                         int dst_start, int width, int accumulate, long long n) {
    FOR_EACH_INDEX(i, n) {
        const long long r = i / width;
        const int c = (int)(i % width);
        const float v = src[r * src_cols + src_start + c];
        float* d = &dst[r * dst_cols + dst_start + c];
        *d = accumulate ? *d + v : v;
    }
}

// out[r, c] = sum over j < group of x[r * group + j, c], in order. n = out rows * cols.
extern "C" __global__ void sum_groups_forward_f32(const float* __restrict__ x, int cols, int group, float* __restrict__ out, long long n) {
    FOR_EACH_INDEX(i, n) {
        const long long r = i / cols, c = i % cols;
        float sum = 0.0f;
        for (int j = 0; j < group; ++j) sum += x[(r * group + j) * cols + c];
        out[i] = sum;
    }
}

// dx[r, c] += dy[r / group, c]. n = dx rows * cols.
extern "C" __global__ void sum_groups_backward_f32(const float* __restrict__ dy, int cols, int group, float* __restrict__ dx, long long n) {
    FOR_EACH_INDEX(i, n) dx[i] += dy[i / cols / group * cols + i % cols];
}

// out[0] = sum of x; one block.
extern "C" __global__ void sum_f32(const float* __restrict__ x, long long n, float* __restrict__ out) {
    DYNAMIC_SHARED(float, scratch);
    float s = 0.0f;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[0] = s;
}

// dx += dy[0]
extern "C" __global__ void sum_backward_f32(const float* __restrict__ dy, float* __restrict__ dx, long long n) {
    FOR_EACH_INDEX(i, n) dx[i] += dy[0];
}

// out = x / s, s = max(std(x), floor) with the unbiased std over all n elements; one block, two
// passes (mean, then the variance around it). stats = [mean, s, 1 if clamped else 0].
extern "C" __global__ void std_scale_forward_f32(const float* __restrict__ x, long long n, float floor, float* __restrict__ out,
                                                 float* __restrict__ stats) {
    DYNAMIC_SHARED(float, scratch);
    float s = 0.0f;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    const float mean = block_sum(s, scratch) / n;
    float v = 0.0f;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) v += (x[i] - mean) * (x[i] - mean);
    const float std = sqrtf(block_sum(v, scratch) / (n - 1));
    const bool clamped = std < floor;
    const float scale = clamped ? floor : std;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) out[i] = x[i] / scale;
    if (threadIdx.x == 0) {
        stats[0] = mean;
        stats[1] = scale;
        stats[2] = clamped ? 1.0f : 0.0f;
    }
}

// dx += dy / s - c (x - mean), c = sum(dy x) / (s^3 (n - 1)), or 0 when s was clamped; one block.
extern "C" __global__ void std_scale_backward_f32(const float* __restrict__ x, const float* __restrict__ stats, const float* __restrict__ dy,
                                                  long long n, float* __restrict__ dx) {
    DYNAMIC_SHARED(float, scratch);
    const float mean = stats[0], scale = stats[1];
    float gx = 0.0f;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) gx += dy[i] * x[i];
    gx = block_sum(gx, scratch);
    const float c = stats[2] != 0.0f ? 0.0f : gx / (scale * scale * scale * (n - 1));
    for (long long i = threadIdx.x; i < n; i += blockDim.x) dx[i] += dy[i] / scale - c * (x[i] - mean);
}
