// The emulator's runtime: fibers, barriers, warp collectives and the launch loop (see
// cuda_emulation.h for what it is for). Each CUDA thread is a fiber with its own stack, entered the
// first time with setcontext and then switched with _setjmp/_longjmp (no system call per switch).
#include "cuda_emulation.h"

#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cstdarg>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace emu {

thread_local const ThreadView* current_view = nullptr;

namespace {

constexpr size_t kStackBytes = 128 * 1024;
constexpr unsigned kMaxThreadsPerBlock = 1024;

enum class State { Ready, AtBarrier, AtWarp, Done };

struct Fiber {
    ThreadView view;
    unsigned linear_id = 0;
    State state = State::Ready;
    bool started = false;
    uint64_t wait_generation = 0;
    uint64_t collective_result = 0;
    jmp_buf context;
    ucontext_t start;
    char* stack = nullptr;
};

struct Warp {
    unsigned arrived = 0;
    unsigned mask = 0;
    WarpOp op = WarpOp::Ballot;
    Site site{nullptr, 0};
    int width = 32;
    uint64_t generation = 0;
    uint64_t values[32] = {};
    int params[32] = {};
};

struct Worker {
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    unsigned char* shared = nullptr;
    size_t shared_bytes = 0;
    Entry entry = nullptr;
    void** params = nullptr;
    Fiber* running = nullptr;
    jmp_buf scheduler;
    unsigned barrier_arrived = 0;
    uint64_t barrier_generation = 0;
    Site barrier_site{nullptr, 0};
    bool failed = false;
    std::string error;
};

thread_local Worker* worker = nullptr;

bool same_site(Site a, Site b) { return a.line == b.line && std::strcmp(a.file, b.file) == 0; }

std::string describe(const Fiber& f) {
    char text[96];
    std::snprintf(text, sizeof text, "thread (%u,%u,%u) of block (%u,%u,%u)", f.view.thread_idx.x, f.view.thread_idx.y,
                  f.view.thread_idx.z, f.view.block_idx.x, f.view.block_idx.y, f.view.block_idx.z);
    return text;
}

// Leaves the running fiber and returns to its worker's scheduler.
void yield() {
    Worker* w = worker;
    if (!_setjmp(w->running->context)) _longjmp(w->scheduler, 1);
}

void fiber_main() {
    for (;;) {
        Worker* w = worker;
        w->entry(w->params);
        w->running->state = State::Done;
        yield();
    }
}

// Runs fiber `f` until it yields, finishes or fails.
__attribute__((noinline)) void resume(Worker* w, Fiber* f) {
    w->running = f;
    current_view = &f->view;
    f->state = State::Ready;
    if (!_setjmp(w->scheduler)) {
        if (!f->started) {
            f->started = true;
            setcontext(&f->start);
        }
        _longjmp(f->context, 1);
    }
    current_view = nullptr;
}

bool released(const Worker& w, const Fiber& f) {
    switch (f.state) {
        case State::Ready: return true;
        case State::AtBarrier: return w.barrier_generation != f.wait_generation;
        case State::AtWarp: return w.warps[f.linear_id / 32].generation != f.wait_generation;
        case State::Done: return false;
    }
    return false;
}

std::string deadlock_report(const Worker& w) {
    unsigned done = 0;
    for (const Fiber& f : w.fibers) done += f.state == State::Done;
    char text[512];
    if (w.barrier_arrived > 0) {
        std::snprintf(text, sizeof text,
                      "deadlock: __syncthreads at %s:%d reached by %u of %zu threads of block (%u,%u,%u); %u had returned "
                      "(a barrier in divergent code?)",
                      w.barrier_site.file, w.barrier_site.line, w.barrier_arrived, w.fibers.size(),
                      w.fibers[0].view.block_idx.x, w.fibers[0].view.block_idx.y, w.fibers[0].view.block_idx.z, done);
        return text;
    }
    for (size_t i = 0; i < w.warps.size(); ++i) {
        const Warp& warp = w.warps[i];
        if (warp.arrived) {
            std::snprintf(text, sizeof text, "deadlock: warp %zu's collective at %s:%d has lanes 0x%08x of mask 0x%08x (%u threads returned)",
                          i, warp.site.file, warp.site.line, warp.arrived, warp.mask, done);
            return text;
        }
    }
    return "deadlock: no thread can proceed";
}

// Runs every thread of the current block to completion, in forward or reverse order.
void run_block(Worker* w, bool reverse) {
    const size_t n = w->fibers.size();
    for (;;) {
        size_t resumed = 0, alive = 0;
        for (size_t k = 0; k < n; ++k) {
            Fiber* f = &w->fibers[reverse ? n - 1 - k : k];
            if (f->state == State::Done) continue;
            ++alive;
            if (!released(*w, *f)) continue;
            resume(w, f);
            ++resumed;
            if (w->failed) return;
        }
        if (alive == 0) return;
        if (resumed == 0) {
            w->failed = true;
            w->error = deadlock_report(*w);
            return;
        }
    }
}

bool prepare_fibers(Worker* w, const EmuLaunch& cfg) {
    const unsigned threads = cfg.block[0] * cfg.block[1] * cfg.block[2];
    w->fibers = std::vector<Fiber>(threads);
    w->warps = std::vector<Warp>((threads + 31) / 32);
    for (unsigned t = 0; t < threads; ++t) {
        Fiber& f = w->fibers[t];
        f.linear_id = t;
        f.view.thread_idx = {t % cfg.block[0], (t / cfg.block[0]) % cfg.block[1], t / (cfg.block[0] * cfg.block[1])};
        f.view.block_dim = {cfg.block[0], cfg.block[1], cfg.block[2]};
        f.view.grid_dim = {cfg.grid[0], cfg.grid[1], cfg.grid[2]};
        void* mem = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (mem == MAP_FAILED) return false;
        f.stack = static_cast<char*>(mem);
        mprotect(f.stack, 4096, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
        getcontext(&f.start);
        f.start.uc_stack.ss_sp = f.stack;
        f.start.uc_stack.ss_size = kStackBytes;
        f.start.uc_link = nullptr;
        makecontext(&f.start, fiber_main, 0);
    }
    return true;
}

void release_fibers(Worker* w) {
    for (Fiber& f : w->fibers) munmap(f.stack, kStackBytes);
    w->fibers.clear();
}

struct Launch {
    const EmuLaunch* cfg;
    Entry entry;
    void** params;
    std::atomic<uint64_t> next_block{0};
    std::atomic<bool> abort{false};
};

void work(Launch* launch, Worker* w) {
    worker = w;
    const EmuLaunch& cfg = *launch->cfg;
    if (!prepare_fibers(w, cfg)) {
        w->failed = true;
        w->error = "could not allocate fiber stacks";
        launch->abort = true;
        return;
    }
    std::vector<unsigned char> shared(cfg.shared_bytes + 16);
    w->shared = shared.data();
    w->shared_bytes = cfg.shared_bytes;
    w->entry = launch->entry;
    w->params = launch->params;
    const uint64_t blocks = uint64_t(cfg.grid[0]) * cfg.grid[1] * cfg.grid[2];
    for (uint64_t b; !launch->abort && (b = launch->next_block.fetch_add(1)) < blocks;) {
        if (cfg.reverse_order) b = blocks - 1 - b;
        const uint3 block_idx{unsigned(b % cfg.grid[0]), unsigned((b / cfg.grid[0]) % cfg.grid[1]), unsigned(b / (uint64_t(cfg.grid[0]) * cfg.grid[1]))};
        std::memset(w->shared, 0xFF, w->shared_bytes);  // NaN for floats, -1 for integers
        w->barrier_arrived = 0;
        for (Warp& warp : w->warps) warp.arrived = 0;
        for (Fiber& f : w->fibers) {
            f.view.block_idx = block_idx;
            f.state = State::Ready;
        }
        run_block(w, cfg.reverse_order != 0);
        if (w->failed) launch->abort = true;
    }
    release_fibers(w);
    worker = nullptr;
}

}  // namespace

void* dynamic_shared() { return worker->shared; }

void fail(const char* fmt, ...) {
    Worker* w = worker;
    char text[512];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    w->failed = true;
    w->error = describe(*w->running) + ": " + text;
    _longjmp(w->scheduler, 1);
}

void sync_threads(Site site) {
    Worker* w = worker;
    Fiber* f = w->running;
    if (w->barrier_arrived == 0) {
        w->barrier_site = site;
    } else if (!same_site(site, w->barrier_site)) {
        fail("__syncthreads at %s:%d while other threads wait at %s:%d (divergent barrier)", site.file, site.line,
             w->barrier_site.file, w->barrier_site.line);
    }
    f->wait_generation = w->barrier_generation;
    if (++w->barrier_arrived == w->fibers.size()) {
        w->barrier_arrived = 0;
        ++w->barrier_generation;
        return;
    }
    f->state = State::AtBarrier;
    yield();
}

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int param, int width, Site site) {
    Worker* w = worker;
    Fiber* f = w->running;
    const unsigned lane = f->linear_id % 32, warp_id = f->linear_id / 32;
    const unsigned lanes_here = std::min<size_t>(32, w->fibers.size() - warp_id * 32);
    const unsigned existing = lanes_here == 32 ? ~0u : (1u << lanes_here) - 1;
    if (!((mask >> lane) & 1)) fail("warp collective at %s:%d with mask 0x%08x that excludes the calling lane %u", site.file, site.line, mask, lane);
    if (mask & ~existing) fail("warp collective at %s:%d names lanes 0x%08x that this warp does not have", site.file, site.line, mask & ~existing);
    if (width < 1 || width > 32 || (width & (width - 1))) fail("warp collective at %s:%d with width %d", site.file, site.line, width);
    Warp& warp = w->warps[warp_id];
    if (warp.arrived == 0) {
        warp.op = op;
        warp.mask = mask;
        warp.site = site;
        warp.width = width;
    } else if (warp.op != op || warp.mask != mask || warp.width != width || !same_site(site, warp.site)) {
        fail("warp collective at %s:%d while lanes of its warp wait in another at %s:%d (divergent warp)", site.file, site.line,
             warp.site.file, warp.site.line);
    }
    warp.values[lane] = value;
    warp.params[lane] = param;
    warp.arrived |= 1u << lane;
    if (warp.arrived != mask) {
        f->wait_generation = warp.generation;
        f->state = State::AtWarp;
        yield();
        return f->collective_result;
    }
    // The last lane computes every participant's result.
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; ++l)
        if (((mask >> l) & 1) && warp.values[l]) ballot |= 1u << l;
    for (unsigned l = 0; l < 32; ++l) {
        if (!((mask >> l) & 1)) continue;
        const int segment = int(l) & ~(width - 1), p = warp.params[l];
        int source = int(l);
        switch (op) {
            case WarpOp::Ballot: break;
            case WarpOp::ShuffleIndex: source = segment + (p & (width - 1)); break;
            case WarpOp::ShuffleXor: source = int(l) ^ p; break;
            case WarpOp::ShuffleDown: source = int(l) + p < segment + width ? int(l) + p : int(l); break;
            case WarpOp::ShuffleUp: source = int(l) - p >= segment ? int(l) - p : int(l); break;
        }
        if (source < 0 || source > 31 || !((mask >> source) & 1))
            fail("warp shuffle at %s:%d: lane %u reads lane %d, which is not in mask 0x%08x", site.file, site.line, l, source, mask);
        w->fibers[warp_id * 32 + l].collective_result = op == WarpOp::Ballot ? ballot : warp.values[source];
    }
    warp.arrived = 0;
    ++warp.generation;
    return f->collective_result;
}

int launch(const EmuLaunch* cfg, Entry entry, void** params, char* error, size_t error_len) {
    auto report = [&](const std::string& text) {
        if (error && error_len) std::snprintf(error, error_len, "%s", text.c_str());
        return 1;
    };
    const uint64_t threads = uint64_t(cfg->block[0]) * cfg->block[1] * cfg->block[2];
    const uint64_t blocks = uint64_t(cfg->grid[0]) * cfg->grid[1] * cfg->grid[2];
    if (threads == 0 || threads > kMaxThreadsPerBlock) return report("block of " + std::to_string(threads) + " threads (1 to 1024 allowed)");
    if (blocks == 0) return report("empty grid");
    unsigned workers = cfg->workers ? cfg->workers : std::max(1u, std::thread::hardware_concurrency());
    workers = unsigned(std::min<uint64_t>(workers, blocks));
    Launch launch{cfg, entry, params};
    std::vector<Worker> state(workers);
    std::vector<std::thread> helpers;
    for (unsigned i = 1; i < workers; ++i) helpers.emplace_back(work, &launch, &state[i]);
    work(&launch, &state[0]);
    for (std::thread& t : helpers) t.join();
    for (const Worker& w : state)
        if (w.failed) return report(w.error);
    return 0;
}

}  // namespace emu
