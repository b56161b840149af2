// CPU emulation of the CUDA subset our kernels use, force-included (g++ -include) when build.rs
// compiles a kernels/*.cu a second time for `cargo test` on machines without a GPU.
//
// Every CUDA thread of a block runs as a fiber on one worker thread (runtime.cpp); blocks are spread
// over the workers. A fiber runs until it reaches a __syncthreads or a warp collective, where it
// yields; the runtime releases a barrier only when every thread of the block is at the SAME one, and a
// warp collective when every lane named in its mask has arrived, so missing or divergent barriers and
// deadlocks are reported as errors, never hangs. Shared memory is only dynamic (DYNAMIC_SHARED) and is
// filled with NaN bytes before each block, so reading what no thread wrote shows up in the results.
// What this cannot see: FMA contraction and fast-math rounding, real concurrency races, speed.
#pragma once
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <climits>
#include <cmath>
#include <math.h>
#include <utility>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define CUDA_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
// `__shared__` is deliberately left undefined: shared memory goes through DYNAMIC_SHARED so the
// emulator can give every block fresh, poisoned storage.
#define DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(emu::dynamic_shared())

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace emu {

// Where a barrier or collective was called from, to name it in an error.
struct Site {
    const char* file;
    int line;
};

// The built-in variables of the CUDA thread running now on this worker.
struct ThreadView {
    uint3 thread_idx;
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
};
extern thread_local const ThreadView* current_view;
inline const ThreadView& view() { return *current_view; }

void* dynamic_shared();
void sync_threads(Site site);
// A warp collective: every participating lane gives `value`; the result for this lane is computed
// by `op` from all lanes' values once the last lane of `mask` arrives.
enum class WarpOp { ShuffleIndex, ShuffleXor, ShuffleDown, ShuffleUp, Ballot };
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int param, int width, Site site);
[[noreturn]] void fail(const char* fmt, ...);

template <class T>
uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffle of a type wider than 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    return bits;
}
template <class T>
T from_bits(uint64_t bits) {
    T v;
    std::memcpy(&v, &bits, sizeof(T));
    return v;
}
}  // namespace emu

#define threadIdx (emu::view().thread_idx)
#define blockIdx (emu::view().block_idx)
#define blockDim (emu::view().block_dim)
#define gridDim (emu::view().grid_dim)
#define warpSize 32
#define __syncthreads() emu::sync_threads(emu::Site{__FILE__, __LINE__})

#define __shfl_sync(mask, v, src, ...) emu_shuffle(emu::WarpOp::ShuffleIndex, mask, v, src, ##__VA_ARGS__)
#define __shfl_xor_sync(mask, v, lanes, ...) emu_shuffle(emu::WarpOp::ShuffleXor, mask, v, lanes, ##__VA_ARGS__)
#define __shfl_down_sync(mask, v, delta, ...) emu_shuffle(emu::WarpOp::ShuffleDown, mask, v, delta, ##__VA_ARGS__)
#define __shfl_up_sync(mask, v, delta, ...) emu_shuffle(emu::WarpOp::ShuffleUp, mask, v, delta, ##__VA_ARGS__)
#define __ballot_sync(mask, pred) \
    static_cast<unsigned>(emu::warp_collective(emu::WarpOp::Ballot, mask, (pred) ? 1 : 0, 0, 32, emu::Site{__FILE__, __LINE__}))
#define emu_shuffle(op, mask, v, param, ...) emu_shuffle_at(op, mask, v, param, emu::Site{__FILE__, __LINE__}, ##__VA_ARGS__)

template <class T>
inline T emu_shuffle_at(emu::WarpOp op, unsigned mask, T v, int param, emu::Site site, int width = 32) {
    return emu::from_bits<T>(emu::warp_collective(op, mask, emu::to_bits(v), param, width, site));
}

// Atomics: blocks run concurrently on several workers, so these are real atomics.
template <class T>
inline T atomicAdd(T* address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value);
}
template <class T>
inline T atomicMax(T* address, T value) {
    std::atomic_ref<T> a(*address);
    T old = a.load();
    while (old < value && !a.compare_exchange_weak(old, value)) {
    }
    return old;
}

// Device math with the host library's (correctly rounded or nearly) results.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __int_as_float(int x) { return emu::from_bits<float>(static_cast<uint32_t>(x)); }
inline int __float_as_int(float x) { return static_cast<int>(static_cast<uint32_t>(emu::to_bits(x))); }
using std::max;
using std::min;

template <class T>
inline T __ldg(const T* p) { return *p; }

// The launch interface the generated entry points use (see build.rs).
extern "C" {
struct EmuLaunch {
    uint32_t grid[3];
    uint32_t block[3];
    uint32_t shared_bytes;
    uint32_t reverse_order;  // run threads (and blocks) last-to-first
    uint32_t workers;        // 0: one per core
};
}
namespace emu {
using Entry = void (*)(void** params);
int launch(const EmuLaunch* config, Entry entry, void** params, char* error, size_t error_len);

template <class... A, size_t... I>
void invoke(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(params[I])...);
}
template <class... A>
void invoke(void (*kernel)(A...), void** params) {
    invoke(kernel, params, std::index_sequence_for<A...>{});
}
}  // namespace emu

// One C entry point per kernel, `emu_<kernel>`, generated by build.rs after the .cu is included.
#define EMULATE_KERNEL(name)                                                                                 \
    extern "C" int emu_##name(const EmuLaunch* config, void** params, char* error, size_t error_len) {       \
        return emu::launch(config, [](void** p) { emu::invoke(name, p); }, params, error, error_len);        \
    }
