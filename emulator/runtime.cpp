// The emulated device's runtime (part of libcuda.so; see hgemu.h): the registry of host-built kernels, the
// threads of a block as fibers under a scheduler, barriers and warp collectives, and the sanitizer that every
// load and store of a kernel reaches through the -fsanitize=thread hooks defined here (no libtsan):
//   memcheck   an access outside every live allocation (past an end, freed, nowhere), or misaligned;
//   racecheck  two threads touching a shared-memory byte between two barriers, one of them writing; any access
//              to the destination of a cp.async that has not landed (no cp.async.wait_group covered it yet);
//   synccheck  a barrier or warp collective that some thread of it never reaches (exited, or waiting elsewhere);
//   initcheck  a read of device memory that nothing has written.
// A finding ends the grid: the failing fiber jumps back to the scheduler and is never resumed.
//
// Fibers: stacks from mmap with a guard page, entered once through makecontext/swapcontext; after that every
// switch is GCC's __builtin_setjmp/__builtin_longjmp (what its SJLJ exceptions use: a frame, stack and resume
// address), since swapcontext makes a sigprocmask system call per switch, and a block of attention does
// millions of switches. Grids run one at a time under one lock (g_mu), which also guards the
// region map, so the hot path of a kernel's access takes no lock.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#define HGEMU_SHIM_ABI_ONLY
#include "shim/cuda_shim.h"

namespace {

// ---- Registry -------------------------------------------------------------------------------------------

struct Registry {
    std::mutex mu;
    std::unordered_map<std::string, const hg_kernel_entry*> kernels;
    std::unordered_map<std::string, const hg_global_entry*> globals;     // by name: the first registered
    std::unordered_map<std::string, const hg_global_entry*> globals_in;  // by "module/name"
};
Registry& registry() {
    static Registry& r = *new Registry;  // never destroyed: see g_regions
    return r;
}

// ---- Shared memory: the dynamic buffer, and the static arena that holds every __shared__ declaration ------

// Racecheck state of one shared byte. Epochs are global barrier generations (a new one at every block start
// and every completed barrier), so state from an earlier block or barrier interval never matches the current
// one and nothing needs clearing. `coll` numbers order lanes of one warp: a thread whose last completed warp
// collective is later than an access of another lane of its warp is ordered after that access.
struct Shadow {
    uint32_t w_epoch, w_coll;  // the last write
    uint32_t r_epoch, r_coll;  // the reads since it (r_coll: the latest reader's collective number)
    uint16_t w_tid, r_tid;     // the writer; the first reader
    uint16_t r_other;          // another reader (0xffff: none), one of another warp than r_tid's if any
    uint16_t f_tid;            // the thread whose cp.async into this byte is in flight (when f_block matches)
    uint32_t f_block;          // g_block then (0: none): a copy left in flight by an earlier block is void
    uint32_t f_group;          // that copy's commit group (the issuing thread's count of commits before it)
};

// Each declaration gets its own bytes of the arena for the process's lifetime (transform.rs, shim:
// hg_shared_static): blocks run one at a time, so one copy serves every block of every kernel.
struct SharedSpace {
    uintptr_t lo = 0;
    size_t size = 0;      // its reservation: an address inside it is shared memory
    size_t used = 0;      // the static arena: bytes handed out
    uint32_t window = 0;  // its first 32-bit shared address
    Shadow* shadow = nullptr;
    size_t dirty_lo = SIZE_MAX, dirty_hi = 0;  // bytes written since the last poisoning
    bool dynamic = false;
};

constexpr size_t kDynamicReserve = 256 * 1024;  // above the 227 KiB opt-in maximum of an H100
constexpr size_t kStaticReserve = 4 << 20;      // every kernel's static shared memory together
constexpr uint32_t kStaticWindow = 0x01000000;  // the arena's shared addresses; the dynamic buffer's start at 0

// ---- Memory regions ---------------------------------------------------------------------------------------

struct Region {
    uintptr_t base;
    size_t size;
    int kind;
    std::string what;
    uint8_t* init;  // one bit a byte, set once written; null: every byte counts as written
    ~Region() { free(init); }
};
struct Freed {
    size_t size;
    std::string what;
};

// ---- Fibers and the grid ----------------------------------------------------------------------------------

enum FiberState : uint8_t { RUNNABLE, AT_BARRIER, AT_COLLECTIVE, EXITED };

struct Collective;

typedef void* JumpBuf[5];  // __builtin_setjmp's buffer

struct Fiber {
    JumpBuf ctx;   // where a blocked thread resumes
    JumpBuf home;  // the loop in fiber_main that starts each new thread
    char* map = nullptr;
    size_t map_size = 0;
    uintptr_t stack_lo = 0;  // the whole mapping: an access inside it is the thread's own stack
    unsigned tid = 0, lane = 0, warp = 0;
    hg_dim3 idx = {0, 0, 0};
    bool started = false;
    uint32_t last_coll = 0;
    Collective* held = nullptr;     // the completed collective whose data this lane may still read
    Collective* waiting = nullptr;  // the collective it waits in
    std::vector<uint8_t> scratch;
    bool scratch_live = false;
};

struct Collective {
    unsigned mask = 0, arrived = 0;
    size_t size = 0;
    const char* what = "";
    int refs = 0;  // lanes holding the completed data
    std::vector<uint8_t> data;
};

struct Grid {
    const hg_kernel_entry* kernel = nullptr;
    hg_dim3 grid{}, block{}, block_idx{};
    unsigned nthreads = 0, nwarps = 0, dynamic_bytes = 0;
    void** params = nullptr;
    // Per thread, contiguous (the scheduler scans them): its FiberState.
    std::vector<uint8_t> state;
    std::vector<unsigned> exited;  // per warp: lanes that have exited
    unsigned bar_arrived = 0;
    int bar_count = 0, bar_result = 0;  // the barrier's predicates so far; the last completed barrier's result
    bool failed = false;
    std::string msg;
    std::vector<std::vector<Collective*>> pending;  // per warp: collectives not yet complete
    std::vector<std::unique_ptr<Collective>> colls;
    std::vector<Collective*> free_colls;
};

enum Schedule { INORDER, REVERSED, RANDOM, SKEWED };

// ---- Global state (guarded by g_mu while a grid runs; fibers only touch it on the grid's thread) ----------

std::mutex g_mu;
std::mutex g_space_mu;  // creating the shared spaces, handing out static shared storage
SharedSpace* g_dynamic = nullptr;  // both created together, then never changed
SharedSpace* g_static = nullptr;
// The state that outlives main (none of it is destroyed): at exit, stream workers may still be freeing memory
// or running a grid while static destructors run.
std::map<uintptr_t, Region*>& g_regions = *new std::map<uintptr_t, Region*>;
std::map<uintptr_t, Freed>& g_freed = *new std::map<uintptr_t, Freed>;
constexpr size_t kFreedKept = 1 << 16;
// Direct-mapped by 4 KiB page, the region last found there: most accesses hit it without the map.
struct CacheSlot {
    uintptr_t base;
    size_t size;  // 0: empty
    Region* r;
};
constexpr unsigned kCacheSlots = 1024;
CacheSlot g_cache[kCacheSlots];
std::vector<Fiber*>& g_fibers = *new std::vector<Fiber*>;
Grid& g_grid = *new Grid;
JumpBuf g_sched;
uint32_t g_epoch = 1, g_coll = 1;
uint32_t g_block = 0;  // numbers every block run, for the in-flight marks of cp.async (Shadow::f_block)
Schedule g_schedule = INORDER;
uint64_t g_seed = 1;
// The running fiber's stack (size 0 outside a fiber): the hooks skip its accesses with one compare, before
// reading any thread-local. Another OS thread's access there would be skipped as outside a kernel anyway.
uintptr_t g_stack_lo = 0;
size_t g_stack_size = 0;

__thread Fiber* t_cur __attribute__((tls_model("initial-exec")));

// A fiber resumed on another OS thread than the one that suspended it (the next grid may run on another
// stream's worker) must not use a TLS address computed before: fiber_main reads t_cur through this call.
__attribute__((noinline)) Fiber* current_fiber() { return t_cur; }

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

void copy_msg(const std::string& s, char* msg, size_t len) {
    if (msg && len) snprintf(msg, len, "%s", s.c_str());
}

std::string thread_name(unsigned tid) {
    const hg_dim3 b = g_grid.block;
    return fmt("(%u,%u,%u)", tid % b.x, tid / b.x % b.y, tid / (b.x * b.y));
}

// Records a finding for thread `tid` of the current block (the first one wins).
void record_finding(unsigned tid, const char* check, const std::string& detail) {
    if (g_grid.failed) return;
    g_grid.failed = true;
    const hg_dim3 b = g_grid.block_idx;
    g_grid.msg = fmt("%s: kernel %s, block (%u,%u,%u), thread %s: %s", check, g_grid.kernel->name, b.x, b.y, b.z,
                     thread_name(tid).c_str(), detail.c_str());
}

// Separate from every __builtin_setjmp, as GCC requires.
[[noreturn]] __attribute__((noinline)) void jump(void** buf) { __builtin_longjmp(buf, 1); }

[[noreturn]] void fail_current(const char* check, const std::string& detail) {
    Fiber* f = t_cur;
    if (!f) {
        fprintf(stderr, "hgemu: %s outside a kernel: %s\n", check, detail.c_str());
        abort();
    }
    record_finding(f->tid, check, detail);
    jump(g_sched);
}

// A pass of the scheduler offers the threads the processor in g_order; a thread that blocks or exits hands it
// straight to the next runnable one after it (g_pos: the running one's index in g_order), without a round
// trip through the scheduler, which gets it back at the end of the pass.
std::vector<unsigned>& g_order = *new std::vector<unsigned>;
size_t g_pos = 0;
bool g_ran = false;  // some thread ran in this pass

[[noreturn]] void enter(Fiber* f) {
    t_cur = f;
    g_stack_lo = f->stack_lo;
    g_stack_size = f->map_size;
    g_ran = true;
    if (f->started) jump(f->ctx);
    f->started = true;
    jump(f->home);
}

// Runs the first runnable thread at index `from` of g_order or later; none: back to the scheduler.
[[noreturn]] void switch_from(size_t from) {
    const uint8_t* state = g_grid.state.data();
    for (size_t i = from, n = g_order.size(); i < n; ++i)
        if (state[g_order[i]] == RUNNABLE) {
            g_pos = i;
            enter(g_fibers[g_order[i]]);
        }
    jump(g_sched);
}

// The functions that call __builtin_setjmp are `noipa`: never inlined, and no caller assumes (IPA register
// allocation) that they leave caller-saved registers alone, which the fibers that run in between do not.
// They use nothing after the jump back but globals; GCC saves every callee-saved register in their prologues.
__attribute__((noipa)) void yield(Fiber* f, FiberState why) {
    g_grid.state[f->tid] = why;
    if (__builtin_setjmp(f->ctx) == 0) switch_from(g_pos + 1);
}

// ---- Region map (callers hold g_mu) -----------------------------------------------------------------------

void invalidate_cache() { memset(g_cache, 0, sizeof g_cache); }

__attribute__((noinline)) Region* find_region_in_map(uintptr_t a) {
    auto it = g_regions.upper_bound(a);
    if (it == g_regions.begin()) return nullptr;
    --it;
    Region* r = it->second;
    if (a - r->base >= r->size) return nullptr;
    g_cache[(a >> 12) % kCacheSlots] = {r->base, r->size, r};
    return r;
}

inline Region* find_region(uintptr_t a) {
    const CacheSlot& c = g_cache[(a >> 12) % kCacheSlots];
    if (a - c.base < c.size) return c.r;
    return find_region_in_map(a);
}

// Bytes [off, off + n) with (off & 7) + n <= 64 as one little-endian word of the init bitmap, read at
// byte off / 8 (the bitmap has 8 bytes of slack at its end for that).
uint64_t init_word(const uint8_t* init, size_t off) {
    uint64_t w;
    memcpy(&w, init + (off >> 3), 8);
    return w;
}
uint64_t init_mask(size_t off, size_t n) { return (n >= 64 ? ~0ull : (1ull << n) - 1) << (off & 7); }

void set_written(Region* r, size_t off, size_t n) {
    if (!r->init) return;
    if ((off & 7) + n <= 64) {
        const uint64_t w = init_word(r->init, off) | init_mask(off, n);
        memcpy(r->init + (off >> 3), &w, 8);
        return;
    }
    size_t i = off, end = off + n;
    for (; i < end && (i & 7); ++i) r->init[i >> 3] |= (uint8_t)(1u << (i & 7));
    if (end - i >= 8) {
        memset(r->init + (i >> 3), 0xff, (end - i) >> 3);
        i += (end - i) & ~(size_t)7;
    }
    for (; i < end; ++i) r->init[i >> 3] |= (uint8_t)(1u << (i & 7));
}

// The first byte of [off, off + n) never written, or SIZE_MAX.
size_t first_unwritten(const Region* r, size_t off, size_t n) {
    if (!r->init) return SIZE_MAX;
    if ((off & 7) + n <= 64) {
        const uint64_t want = init_mask(off, n);
        if ((init_word(r->init, off) & want) == want) return SIZE_MAX;
    }
    for (size_t i = off; i < off + n; ++i)
        if (!(r->init[i >> 3] & (1u << (i & 7)))) return i;
    return SIZE_MAX;
}

std::string region_name(const Region* r) {
    return fmt("a %zu-byte allocation at 0x%lx (%s)", r->size, (unsigned long)r->base, r->what.c_str());
}

// Why [a, a + n) is not inside one live region.
std::string describe_outside(uintptr_t a, size_t n) {
    if (Region* r = find_region(a))
        return fmt("%zu bytes of it past the end of %s", a + n - (r->base + r->size), region_name(r).c_str());
    auto f = g_freed.upper_bound(a);
    if (f != g_freed.begin()) {
        --f;
        if (a - f->first < f->second.size)
            return fmt("use after free: offset %zu of a %zu-byte allocation at 0x%lx (%s) that has been freed",
                       (size_t)(a - f->first), f->second.size, (unsigned long)f->first, f->second.what.c_str());
    }
    auto above = g_regions.upper_bound(a);
    const Region* below = above == g_regions.begin() ? nullptr : std::prev(above)->second;
    const size_t gap_below = below ? a - (below->base + below->size) : SIZE_MAX;
    const size_t gap_above = above != g_regions.end() ? above->first - a : SIZE_MAX;
    constexpr size_t kNear = 1 << 20;
    if (gap_below <= gap_above && gap_below < kNear)
        return gap_below ? fmt("%zu bytes past the end of %s", gap_below, region_name(below).c_str())
                         : "just past the end of " + region_name(below);
    if (gap_above < kNear)
        return fmt("%zu bytes before the start of %s", gap_above, region_name(above->second).c_str());
    return "address outside every allocation";
}

// ---- Shared memory ----------------------------------------------------------------------------------------

void poison_dirty() {
    for (SharedSpace* s : {g_dynamic, g_static}) {
        if (s->dirty_hi > s->dirty_lo) memset((void*)(s->lo + s->dirty_lo), 0xff, s->dirty_hi - s->dirty_lo);
        s->dirty_lo = SIZE_MAX;
        s->dirty_hi = 0;
    }
}

SharedSpace* find_space(uintptr_t a) {
    if (!g_dynamic) return nullptr;
    if (a - g_dynamic->lo < g_dynamic->size) return g_dynamic;
    if (a - g_static->lo < g_static->size) return g_static;
    return nullptr;
}

SharedSpace* make_space(size_t size, uint32_t window, bool dynamic) {
    auto* s = new SharedSpace;
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    s->shadow = (Shadow*)calloc(size, sizeof(Shadow));
    if (p == MAP_FAILED || !s->shadow) {
        fprintf(stderr, "hgemu: cannot reserve %zu bytes of shared memory\n", size);
        abort();
    }
    s->lo = (uintptr_t)p;
    s->size = size;
    s->window = window;
    s->dynamic = dynamic;
    if (dynamic) memset(p, 0xff, size);
    return s;
}

void ensure_spaces() {
    if (__atomic_load_n(&g_dynamic, __ATOMIC_ACQUIRE)) return;
    std::lock_guard<std::mutex> lock(g_space_mu);
    if (g_dynamic) return;
    g_static = make_space(kStaticReserve, kStaticWindow, false);
    __atomic_store_n(&g_dynamic, make_space(kDynamicReserve, 0, true), __ATOMIC_RELEASE);
}

enum AccessKind { READ = 0, WRITE = 1, ATOMIC = 2 };

const char* kind_word(int kind) { return kind == READ ? "read" : kind == WRITE ? "write" : "atomic"; }

[[noreturn]] void race(int kind, size_t n, uint32_t addr, bool other_wrote, unsigned other) {
    fail_current("racecheck", fmt("%s of %zu bytes at shared 0x%04x races with a %s by thread %s since the last "
                                  "barrier", kind_word(kind), n, addr, other_wrote ? "write" : "read",
                                  thread_name(other).c_str()));
}

[[noreturn]] void in_flight(int kind, size_t n, uint32_t addr, const Shadow& h) {
    fail_current("racecheck", fmt("%s of %zu bytes at shared 0x%04x while a cp.async by thread %s into it (its "
                                  "commit group %u) is still in flight (no cp.async.wait_group covers it)",
                                  kind_word(kind), n, addr, thread_name(h.f_tid).c_str(), h.f_group));
}

void shared_access(Fiber* f, SharedSpace* s, uintptr_t a, size_t n, int kind) {
    const size_t off = a - s->lo;
    const uint32_t addr = s->window + (uint32_t)off;
    if (s->dynamic && off + n > g_grid.dynamic_bytes)
        fail_current("memcheck", fmt("invalid shared %s of %zu bytes at shared 0x%04x: %zu bytes past the end of "
                                     "the launch's %u bytes of dynamic shared memory", kind_word(kind), n, addr,
                                     off + n - g_grid.dynamic_bytes, g_grid.dynamic_bytes));
    if (!s->dynamic && off + n > s->used)
        fail_current("memcheck", fmt("invalid shared %s of %zu bytes at shared 0x%04x: past the end of every "
                                     "__shared__ variable", kind_word(kind), n, addr));
    s->dirty_lo = std::min(s->dirty_lo, off);
    s->dirty_hi = std::max(s->dirty_hi, off + n);
    if (kind == ATOMIC) {
        for (size_t i = 0; i < n; ++i)
            if (s->shadow[off + i].f_block == g_block) in_flight(kind, n, addr, s->shadow[off + i]);
        return;
    }
    const uint32_t e = g_epoch, tid = f->tid, coll = f->last_coll, warp = f->warp;
    for (size_t i = 0; i < n; ++i) {
        Shadow& h = s->shadow[off + i];
        if (h.f_block == g_block) in_flight(kind, n, addr, h);
        // The last write, by another thread, in this interval and not ordered by a warp collective.
        if (h.w_epoch == e && h.w_tid != tid && !(h.w_tid / 32 == warp && coll > h.w_coll))
            race(kind, n, addr, true, h.w_tid);
        if (kind == WRITE) {
            if (h.r_epoch == e) {
                // A reader of another warp races; readers of this warp only if no collective came since.
                if (h.r_tid != tid && h.r_tid / 32 != warp) race(kind, n, addr, false, h.r_tid);
                if (h.r_other != 0xffff && h.r_other != tid && h.r_other / 32 != warp)
                    race(kind, n, addr, false, h.r_other);
                const unsigned other = h.r_tid != tid ? h.r_tid : h.r_other;
                if (other != 0xffff && coll <= h.r_coll) race(kind, n, addr, false, other);
            }
            h.w_epoch = e;
            h.w_tid = (uint16_t)tid;
            h.w_coll = coll;
            h.r_epoch = 0;
        } else if (h.r_epoch != e) {
            h.r_epoch = e;
            h.r_tid = (uint16_t)tid;
            h.r_other = 0xffff;
            h.r_coll = coll;
        } else {
            if (h.r_tid != tid && (h.r_other == 0xffff || (h.r_other / 32 == h.r_tid / 32 && warp != h.r_tid / 32)))
                h.r_other = (uint16_t)tid;
            h.r_coll = std::max(h.r_coll, coll);
        }
    }
}

// ---- The sanitizer's entry: every access of a kernel -----------------------------------------------------

__attribute__((noinline)) void slow_access(uintptr_t a, size_t n, int kind, size_t align) {
    Fiber* f = t_cur;
    if (!f) return;  // not inside a kernel (a library constructor, the host)
    if (SharedSpace* s = find_space(a)) {
        if (align > 1 && (a & (align - 1)))
            fail_current("memcheck", fmt("misaligned shared %s of %zu bytes at shared 0x%04x: must be %zu-byte "
                                         "aligned", kind_word(kind), n, s->window + (uint32_t)(a - s->lo), align));
        shared_access(f, s, a, n, kind);
        return;
    }
    Region* r = find_region(a);
    if (!r || a + n - r->base > r->size)
        fail_current("memcheck", fmt("invalid global %s of %zu bytes at 0x%lx: %s", kind_word(kind), n,
                                     (unsigned long)a, describe_outside(a, n).c_str()));
    if (align > 1 && (a & (align - 1)))
        fail_current("memcheck", fmt("misaligned global %s of %zu bytes at 0x%lx: must be %zu-byte aligned",
                                     kind_word(kind), n, (unsigned long)a, align));
    const size_t off = a - r->base;
    if (kind != WRITE) {
        const size_t bad = first_unwritten(r, off, n);
        if (bad != SIZE_MAX)
            fail_current("initcheck", fmt("%s of %zu bytes at 0x%lx reads uninitialized memory: byte %zu of %s has "
                                          "never been written", kind == READ ? "read" : "atomic", n,
                                          (unsigned long)a, bad, region_name(r).c_str()));
    }
    if (kind != READ) set_written(r, off, n);
}

inline void check(const void* p, size_t n, int kind, size_t align) {
    const uintptr_t a = (uintptr_t)p;
    if (a - g_stack_lo < g_stack_size) return;  // the thread's own stack: registers and local memory
    slow_access(a, n, kind, align);
}

// ---- Fibers -----------------------------------------------------------------------------------------------

constexpr size_t kStackSize = 256 * 1024;

void run_thread() {
    Fiber* f = current_fiber();
    const hg_kernel_entry* k = g_grid.kernel;
    // The parameters are copied onto this stack, so the kernel's reads of them are reads of its own stack.
    const unsigned np = k->nparams;
    void** ptrs = (void**)alloca((np + 1) * sizeof(void*));
    size_t total = 0;
    for (unsigned i = 0; i < np; ++i) total += (k->param_sizes[i] + 15) & ~(size_t)15;
    char* buf = (char*)(((uintptr_t)alloca(total + 16) + 15) & ~(uintptr_t)15);
    for (unsigned i = 0, off = 0; i < np; ++i) {
        memcpy(buf + off, g_grid.params[i], k->param_sizes[i]);
        ptrs[i] = buf + off;
        off += (k->param_sizes[i] + 15) & ~15u;
    }
    k->invoke(ptrs);
    f = current_fiber();
    g_grid.state[f->tid] = EXITED;
    g_grid.exited[f->warp] |= 1u << f->lane;
    if (f->held && --f->held->refs == 0) g_grid.free_colls.push_back(f->held);
    f->held = nullptr;
}

__attribute__((noipa)) void fiber_main() {
    for (;;) {
        // Parked until a thread starts; a thread that has run (not a new fiber) hands on the processor.
        if (__builtin_setjmp(current_fiber()->home) == 0) {
            if (current_fiber()->started) switch_from(g_pos + 1);
            jump(g_sched);
        }
        run_thread();
    }
}

// Enters a new fiber once: fiber_main records its home and jumps back here.
__attribute__((noipa)) void enter_first(Fiber* f, ucontext_t* uc) {
    static ucontext_t unused;
    t_cur = f;
    if (__builtin_setjmp(g_sched) == 0) swapcontext(&unused, uc);
}

Fiber* make_fiber() {
    auto* f = new Fiber;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    f->map_size = kStackSize + page;
    f->map = (char*)mmap(nullptr, f->map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                         -1, 0);
    if (f->map == MAP_FAILED) abort();
    mprotect(f->map, page, PROT_NONE);  // guard page: an overflow faults instead of corrupting a neighbour
    f->stack_lo = (uintptr_t)f->map;
    // Used once: the fiber never returns to it, so it need not outlive this call (and Fibers stay small).
    ucontext_t uc;
    getcontext(&uc);
    uc.uc_stack.ss_sp = f->map + page;
    uc.uc_stack.ss_size = kStackSize;
    uc.uc_link = nullptr;
    makecontext(&uc, fiber_main, 0);
    enter_first(f, &uc);
    t_cur = nullptr;
    return f;
}

// One pass over g_order; returns when every thread in it has had its turn, or at a finding.
__attribute__((noipa)) void run_pass() {
    if (__builtin_setjmp(g_sched) == 0) switch_from(0);
    t_cur = nullptr;
    g_stack_size = 0;
}

// ---- Barriers and warp collectives ------------------------------------------------------------------------

Fiber* in_kernel(const char* what) {
    Fiber* f = t_cur;
    if (!f) {
        fprintf(stderr, "hgemu: %s called outside a kernel\n", what);
        abort();
    }
    return f;
}

int barrier(int op, int pred) {
    Fiber* f = in_kernel("__syncthreads");
    g_grid.bar_count += pred;
    if (++g_grid.bar_arrived < g_grid.nthreads) {
        // The result stays until the next barrier completes, which needs this thread: it reads it first.
        yield(f, AT_BARRIER);
        return g_grid.bar_result;
    }
    const int count = g_grid.bar_count;
    g_grid.bar_result = op == HG_BAR_COUNT ? count : op == HG_BAR_AND ? count == (int)g_grid.nthreads : count > 0;
    memset(g_grid.state.data(), RUNNABLE, g_grid.nthreads);
    g_grid.bar_arrived = 0;
    g_grid.bar_count = 0;
    ++g_epoch;
    return g_grid.bar_result;
}

const char* waits_where(const Fiber* g) {
    static std::string s;
    const uint8_t state = g_grid.state[g->tid];
    if (state == EXITED) return "has exited";
    if (state == AT_BARRIER) return "waits at __syncthreads";
    if (state == AT_COLLECTIVE) {
        s = fmt("waits in %s with mask 0x%08x", g->waiting->what, g->waiting->mask);
        return s.c_str();
    }
    return "is running";
}

Collective* take_collective(unsigned mask, size_t size, const char* what) {
    Collective* c;
    if (g_grid.free_colls.empty()) {
        g_grid.colls.push_back(std::make_unique<Collective>());
        c = g_grid.colls.back().get();
    } else {
        c = g_grid.free_colls.back();
        g_grid.free_colls.pop_back();
    }
    c->mask = mask;
    c->arrived = 0;
    c->size = size;
    c->what = what;
    c->refs = 0;
    if (mask == ~0u)
        c->data.resize(32 * size);  // every lane writes its part before anyone reads
    else
        c->data.assign(32 * size, 0);
    return c;
}

const void* collective(unsigned mask, const void* contribution, size_t size, const char* what) {
    Fiber* f = in_kernel(what);
    const unsigned lane = f->lane, warp = f->warp;
    if (!(mask >> lane & 1))
        fail_current("synccheck", fmt("%s with mask 0x%08x, which excludes the calling lane %u", what, mask, lane));
    if (f->held && --f->held->refs == 0) g_grid.free_colls.push_back(f->held);
    f->held = nullptr;
    const unsigned base = warp * 32;
    const unsigned lanes = g_grid.nthreads - base >= 32 ? ~0u : (1u << (g_grid.nthreads - base)) - 1;
    if (mask & ~lanes)
        fail_current("synccheck", fmt("%s with mask 0x%08x names lane %u, which a block of %u threads does not have",
                                      what, mask, (unsigned)__builtin_ctz(mask & ~lanes), g_grid.nthreads));
    if (mask & g_grid.exited[warp]) {
        const unsigned l = (unsigned)__builtin_ctz(mask & g_grid.exited[warp]);
        fail_current("synccheck", fmt("%s with mask 0x%08x: lane %u (thread %s) has exited", what, mask, l,
                                      thread_name(base + l).c_str()));
    }
    std::vector<Collective*>& pending = g_grid.pending[warp];
    Collective* c = nullptr;
    for (Collective* p : pending)
        if (p->mask == mask) c = p;
    if (!c) {
        c = take_collective(mask, size, what);
        pending.push_back(c);
    } else if (c->size != size || (c->what != what && strcmp(c->what, what) != 0)) {
        const unsigned other = base + (unsigned)__builtin_ctz(c->arrived);
        fail_current("synccheck", fmt("%s with mask 0x%08x while thread %s waits in %s with the same mask", what, mask,
                                      thread_name(other).c_str(), c->what));
    }
    if (size) memcpy(c->data.data() + lane * size, contribution, size);
    c->arrived |= 1u << lane;
    if (c->arrived == mask) {
        pending.erase(std::find(pending.begin(), pending.end(), c));
        c->refs = __builtin_popcount(mask);
        const uint32_t seq = ++g_coll;
        for (unsigned l = 0; l < 32; ++l) {
            if (!(mask >> l & 1)) continue;
            Fiber* g = g_fibers[base + l];
            g->last_coll = seq;
            g->held = c;
            g->waiting = nullptr;
            g_grid.state[base + l] = RUNNABLE;
        }
    } else {
        f->waiting = c;
        yield(f, AT_COLLECTIVE);
    }
    return c->data.data();
}

// Nothing can run and some thread has not exited: a barrier or collective that some thread never reaches.
void report_deadlock() {
    for (unsigned t = 0; t < g_grid.nthreads; ++t) {
        const Fiber* f = g_fibers[t];
        if (g_grid.state[t] != AT_COLLECTIVE) continue;
        const Collective* c = f->waiting;
        const unsigned missing = (unsigned)__builtin_ctz(c->mask & ~c->arrived);
        const Fiber* g = g_fibers[f->warp * 32 + missing];
        record_finding(t, "synccheck", fmt("%s with mask 0x%08x never completes: lane %u (thread %s) %s", c->what,
                                           c->mask, missing, thread_name(g->tid).c_str(), waits_where(g)));
        return;
    }
    unsigned waiting = 0;
    for (unsigned t = 0; t < g_grid.nthreads; ++t) waiting += g_grid.state[t] == AT_BARRIER;
    for (unsigned t = 0; t < g_grid.nthreads; ++t) {
        const Fiber* g = g_fibers[t];
        if (g_grid.state[t] == AT_BARRIER) continue;
        unsigned first = 0;
        while (g_grid.state[first] != AT_BARRIER) ++first;
        record_finding(first, "synccheck", fmt("__syncthreads is not reached by every thread of the block: %u of %u "
                                               "threads wait at it, and thread %s %s", waiting, g_grid.nthreads,
                                               thread_name(t).c_str(), waits_where(g)));
        return;
    }
}

// ---- Scheduling -------------------------------------------------------------------------------------------

void read_schedule() {
    const char* s = getenv("HOURGLASS_EMU_SCHEDULE");
    if (!s || !*s || !strcmp(s, "inorder")) return;
    if (!strcmp(s, "reversed")) {
        g_schedule = REVERSED;
    } else if (!strcmp(s, "skewed")) {
        g_schedule = SKEWED;
    } else if (!strncmp(s, "random", 6) && (s[6] == 0 || s[6] == ':')) {
        g_schedule = RANDOM;
        if (s[6] == ':') g_seed = strtoull(s + 7, nullptr, 0);
    } else {
        fprintf(stderr, "hgemu: HOURGLASS_EMU_SCHEDULE=%s is not inorder, reversed, random[:SEED] or skewed; "
                        "running in order\n", s);
    }
}

uint64_t splitmix(uint64_t& x) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The order in which pass `pass` of block `block` offers the threads the processor.
void thread_order(std::vector<unsigned>& order, uint64_t block, unsigned pass) {
    const unsigned n = g_grid.nthreads;
    order.resize(n);
    switch (g_schedule) {
    case INORDER:
        for (unsigned t = 0; t < n; ++t) order[t] = t;
        break;
    case REVERSED:
        for (unsigned t = 0; t < n; ++t) order[t] = n - 1 - t;
        break;
    case RANDOM: {
        uint64_t x = g_seed ^ (block * 0x2545F4914F6CDD1Dull) ^ ((uint64_t)pass << 40);
        for (unsigned t = 0; t < n; ++t) order[t] = t;
        for (unsigned t = n; t > 1; --t) std::swap(order[t - 1], order[splitmix(x) % t]);
        break;
    }
    case SKEWED: {
        // Warps in an order rotated per block and per pass; every other warp's lanes backwards.
        const unsigned nw = g_grid.nwarps, rot = (unsigned)((block + pass) % nw);
        unsigned k = 0;
        for (unsigned i = 0; i < nw; ++i) {
            const unsigned w = (i + rot) % nw, lo = w * 32, hi = std::min(n, lo + 32);
            for (unsigned t = lo; t < hi; ++t) order[k++] = (i & 1) ? hi - 1 - (t - lo) : t;
        }
        break;
    }
    }
}

// The order of the blocks: linear index of the i-th block to run.
uint64_t block_at(uint64_t i, uint64_t count) {
    switch (g_schedule) {
    case REVERSED:
        return count - 1 - i;
    case RANDOM: {
        uint64_t x = g_seed;
        const uint64_t start = splitmix(x) % count;
        return (start + i) % count;
    }
    case SKEWED:
        return (i + count / 2) % count;
    default:
        return i;
    }
}

bool run_block(uint64_t linear) {
    const hg_dim3 gd = g_grid.grid, bd = g_grid.block;
    g_grid.block_idx = {(unsigned)(linear % gd.x), (unsigned)(linear / gd.x % gd.y), (unsigned)(linear / gd.x / gd.y)};
    const unsigned n = g_grid.nthreads;
    for (unsigned t = 0; t < n; ++t) {
        Fiber* f = g_fibers[t];
        f->tid = t;
        f->lane = t % 32;
        f->warp = t / 32;
        f->idx = {t % bd.x, t / bd.x % bd.y, t / (bd.x * bd.y)};
        f->started = false;
        f->last_coll = 0;
        f->held = f->waiting = nullptr;
        f->scratch_live = false;
    }
    memset(g_grid.state.data(), RUNNABLE, n);
    std::fill(g_grid.exited.begin(), g_grid.exited.end(), 0u);
    g_grid.bar_arrived = 0;
    g_grid.bar_count = 0;
    g_grid.free_colls.clear();
    for (auto& c : g_grid.colls) g_grid.free_colls.push_back(c.get());
    for (auto& p : g_grid.pending) p.clear();
    poison_dirty();
    ++g_epoch;
    ++g_block;
    const uint8_t* state = g_grid.state.data();
    for (unsigned pass = 0;; ++pass) {
        if (pass == 0 || g_schedule == RANDOM || g_schedule == SKEWED) thread_order(g_order, linear, pass);
        g_ran = false;
        run_pass();
        if (g_grid.failed) return false;
        if (!g_ran) break;
    }
    for (unsigned t = 0; t < n; ++t)
        if (state[t] != EXITED) {
            report_deadlock();
            return false;
        }
    return true;
}

}  // namespace

// ---- The interface (hgemu.h, cuda_shim.h) -----------------------------------------------------------------

extern "C" {

void hgemu_register_kernel(const hg_kernel_entry* kernel) {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    if (!r.kernels.emplace(kernel->name, kernel).second)
        fprintf(stderr, "hgemu: kernel %s of module %s is already registered (module %s); keeping the first\n",
                kernel->name, kernel->module, r.kernels[kernel->name]->module);
}

// Its memory becomes a region when a module that uses it is loaded (driver.cpp).
void hgemu_register_global(const hg_global_entry* global) {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    r.globals.emplace(global->name, global);
    r.globals_in.emplace(std::string(global->module ? global->module : "") + "/" + global->name, global);
}

const hg_kernel_entry* hgemu_find_kernel(const char* name) {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.kernels.find(name);
    return it == r.kernels.end() ? nullptr : it->second;
}

const hg_global_entry* hgemu_find_global(const char* name) {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.globals.find(name);
    return it == r.globals.end() ? nullptr : it->second;
}

const hg_global_entry* hgemu_find_global_in(const char* module, const char* name) {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.globals_in.find(std::string(module) + "/" + name);
    return it == r.globals_in.end() ? nullptr : it->second;
}

void* hgemu_shared_static(size_t size, size_t align) {
    ensure_spaces();
    std::lock_guard<std::mutex> lock(g_space_mu);
    SharedSpace* s = g_static;
    align = std::max<size_t>(align, 16);  // as nvcc places them: a vector access to any of them is aligned
    const size_t at = (s->used + align - 1) & ~(align - 1);
    if (at + size > s->size) {
        fprintf(stderr, "hgemu: the kernels' __shared__ variables need more than %zu bytes\n", s->size);
        abort();
    }
    memset((void*)(s->lo + at), 0xff, size);
    s->used = at + size;
    return (void*)(s->lo + at);
}

void hgemu_region_add(void* base, size_t size, int kind, const char* what) {
    std::lock_guard<std::mutex> lock(g_mu);
    const uintptr_t b = (uintptr_t)base;
    // Freed regions that the new one reuses are forgotten (their addresses are live again).
    for (auto it = g_freed.lower_bound(b); it != g_freed.end() && it->first < b + size;) it = g_freed.erase(it);
    auto before = g_freed.lower_bound(b);
    if (before != g_freed.begin() && std::prev(before)->first + std::prev(before)->second.size > b) g_freed.erase(std::prev(before));
    auto* r = new Region{b, size, kind, what ? what : "", nullptr};
    if (kind == HG_REGION_DEVICE) {
        r->init = (uint8_t*)calloc(size / 8 + 9, 1);
        if (!r->init) abort();
    }
    auto old = g_regions.find(b);
    if (old != g_regions.end()) {
        delete old->second;  // the same variable registered again (module load after registration)
        old->second = r;
    } else {
        g_regions.emplace(b, r);
    }
    invalidate_cache();
}

void hgemu_region_remove(void* base) {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_regions.find((uintptr_t)base);
    if (it == g_regions.end()) return;
    Region* r = it->second;
    if (g_freed.size() >= kFreedKept) g_freed.erase(g_freed.begin());
    g_freed[r->base] = Freed{r->size, r->what};
    g_regions.erase(it);
    delete r;
    invalidate_cache();
}

void hgemu_mark_written(const void* p, size_t n) {
    std::lock_guard<std::mutex> lock(g_mu);
    uintptr_t a = (uintptr_t)p;
    const uintptr_t end = a + n;
    while (a < end) {
        Region* r = find_region(a);
        if (!r) {
            auto next = g_regions.upper_bound(a);
            if (next == g_regions.end()) return;
            a = next->first;
            continue;
        }
        const size_t len = std::min<uintptr_t>(end, r->base + r->size) - a;
        set_written(r, a - r->base, len);
        a += len;
    }
}

int hgemu_check_range(const void* p, size_t n, int write, int require_init, char* msg, size_t msg_len) {
    std::lock_guard<std::mutex> lock(g_mu);
    const uintptr_t a = (uintptr_t)p;
    const char* verb = write ? "write" : "read";
    Region* r = find_region(a);
    if (!r || a + n - r->base > r->size) {
        copy_msg(fmt("memcheck: %s of %zu bytes at 0x%lx: %s", verb, n, (unsigned long)a,
                     describe_outside(a, n).c_str()), msg, msg_len);
        return 1;
    }
    if (require_init && n) {
        const size_t bad = first_unwritten(r, a - r->base, n);
        if (bad != SIZE_MAX) {
            copy_msg(fmt("initcheck: %s of %zu bytes at 0x%lx reads uninitialized memory: byte %zu of %s has never "
                         "been written", verb, n, (unsigned long)a, bad, region_name(r).c_str()), msg, msg_len);
            return 1;
        }
    }
    return 0;
}

int hgemu_run_grid(const hg_launch* launch, char* msg, size_t msg_len) {
    static std::once_flag schedule_once;
    std::call_once(schedule_once, read_schedule);
    const hg_dim3 gd = launch->grid, bd = launch->block;
    const unsigned n = bd.x * bd.y * bd.z;
    const uint64_t blocks = (uint64_t)gd.x * gd.y * gd.z;
    if (!launch->kernel || n == 0 || n > 1024 || blocks == 0) {
        copy_msg(fmt("hgemu_run_grid: invalid launch of %s (block of %u threads, %llu blocks)",
                     launch->kernel ? launch->kernel->name : "(null)", n, (unsigned long long)blocks), msg, msg_len);
        return 1;
    }
    if (launch->dynamic_shared_bytes > kDynamicReserve) {
        copy_msg(fmt("hgemu_run_grid: %u bytes of dynamic shared memory for %s exceed the emulator's %zu",
                     launch->dynamic_shared_bytes, launch->kernel->name, kDynamicReserve), msg, msg_len);
        return 1;
    }
    ensure_spaces();
    std::lock_guard<std::mutex> lock(g_mu);
    while (g_fibers.size() < n) g_fibers.push_back(make_fiber());
    g_grid.kernel = launch->kernel;
    g_grid.grid = gd;
    g_grid.block = bd;
    g_grid.nthreads = n;
    g_grid.nwarps = (n + 31) / 32;
    g_grid.dynamic_bytes = launch->dynamic_shared_bytes;
    g_grid.params = launch->params;
    g_grid.failed = false;
    g_grid.msg.clear();
    g_grid.pending.assign(g_grid.nwarps, {});
    g_grid.state.assign(n, EXITED);
    g_grid.exited.assign(g_grid.nwarps, 0);
    for (uint64_t i = 0; i < blocks; ++i) {
        if (!run_block(block_at(i, blocks))) {
            copy_msg(g_grid.msg, msg, msg_len);
            return 1;
        }
    }
    return 0;
}

unsigned hgemu_lane(void) { return in_kernel("hgemu_lane")->lane; }
unsigned hgemu_warp(void) { return in_kernel("hgemu_warp")->warp; }

const void* hgemu_warp_collective(unsigned mask, const void* contribution, size_t size, const char* what) {
    return collective(mask, contribution, size, what);
}

void hgemu_access(const void* p, size_t n, int write, size_t align) {
    if (n) check(p, n, write ? WRITE : READ, align);
}

void hgemu_fail(const char* check_name, const char* detail) { fail_current(check_name, detail); }

uint32_t hgemu_shared_address(const void* p) {
    const uintptr_t a = (uintptr_t)p;
    if (SharedSpace* s = find_space(a)) return s->window + (uint32_t)(a - s->lo);
    if (t_cur) fail_current("memcheck", fmt("__cvta_generic_to_shared of 0x%lx, which is not shared memory",
                                            (unsigned long)a));
    return UINT32_MAX;
}

void* hgemu_shared_pointer(uint32_t address) {
    for (SharedSpace* s : {g_dynamic, g_static})
        if (s && address - s->window < s->size) return (void*)(s->lo + (address - s->window));
    if (t_cur) fail_current("memcheck", fmt("shared address 0x%04x is outside the block's shared memory", address));
    return nullptr;
}

void* hgemu_thread_scratch(size_t size) {
    Fiber* f = in_kernel("hgemu_thread_scratch");
    if (!f->scratch_live) {
        f->scratch.assign(std::max(size, f->scratch.size()), 0);
        f->scratch_live = true;
    } else if (size > f->scratch.size()) {
        fail_current("ptx", fmt("hgemu_thread_scratch(%zu) after a smaller block of %zu bytes", size,
                                f->scratch.size()));
    }
    return f->scratch.data();
}

void hgemu_cp_async_issued(void* p, size_t n, unsigned group) {
    Fiber* f = in_kernel("hgemu_cp_async_issued");
    const uintptr_t a = (uintptr_t)p;
    SharedSpace* s = find_space(a);
    if (!s || a + n - s->lo > s->size) fail_current("memcheck", "cp.async into memory that is not shared");
    for (size_t i = a - s->lo, end = i + n; i < end; ++i) {
        Shadow& h = s->shadow[i];
        h.f_block = g_block;
        h.f_tid = (uint16_t)f->tid;
        h.f_group = group;
    }
}

void hgemu_cp_async_landed(void* p, size_t n) {
    in_kernel("hgemu_cp_async_landed");
    const uintptr_t a = (uintptr_t)p;
    SharedSpace* s = find_space(a);
    if (!s || a + n - s->lo > s->size) return;
    for (size_t i = a - s->lo, end = i + n; i < end; ++i) s->shadow[i].f_block = 0;
}

// ---- The shim's calls -------------------------------------------------------------------------------------

hg_dim3 hgemu_thread_idx(void) {
    const Fiber* f = t_cur;
    return f ? f->idx : hg_dim3{0, 0, 0};
}
hg_dim3 hgemu_block_idx(void) { return g_grid.block_idx; }
hg_dim3 hgemu_block_dim(void) { return g_grid.block; }
hg_dim3 hgemu_grid_dim(void) { return g_grid.grid; }

void* hgemu_dynamic_shared(void) {
    ensure_spaces();
    return (void*)g_dynamic->lo;
}

void hgemu_syncthreads(void) { barrier(HG_BAR_COUNT, 0); }
int hgemu_syncthreads_op(int op, int predicate) { return barrier(op, predicate); }

void hgemu_syncwarp(unsigned mask) { collective(mask, nullptr, 0, "__syncwarp"); }

void hgemu_shfl(unsigned mask, int mode, const void* value, void* result, unsigned size, int lane_arg, int width) {
    static const char* const names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};
    const char* what = names[mode & 3];
    if (width <= 0 || width > 32 || (width & (width - 1)))
        fail_current("synccheck", fmt("%s with width %d, which is not a power of two up to 32", what, width));
    const uint8_t* all = (const uint8_t*)collective(mask, value, size, what);
    // shfl.sync's lane arithmetic (PTX ISA): a segment of `width` lanes, clamped at its ends.
    const int lane = (int)t_cur->lane, seg = (32 - width) & 31, min_lane = lane & seg;
    const int max_lane = min_lane | (31 & ~seg);
    int src;
    bool ok;
    switch (mode) {
    case HG_SHFL_UP:
        src = lane - lane_arg;
        ok = src >= min_lane;
        break;
    case HG_SHFL_DOWN:
        src = lane + lane_arg;
        ok = src <= max_lane;
        break;
    case HG_SHFL_XOR:
        src = lane ^ lane_arg;
        ok = src <= max_lane;
        break;
    default:
        src = min_lane | (lane_arg & ~seg & 31);
        ok = src <= max_lane;
        break;
    }
    if (!ok) src = lane;
    memcpy(result, all + (size_t)src * size, size);
}

unsigned hgemu_vote(unsigned mask, int mode, int predicate) {
    static const char* const names[] = {"__ballot_sync", "__any_sync", "__all_sync"};
    const int* all = (const int*)collective(mask, &predicate, sizeof(int), names[mode % 3]);
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; ++l)
        if ((mask >> l & 1) && all[l]) ballot |= 1u << l;
    return mode == HG_VOTE_BALLOT ? ballot : mode == HG_VOTE_ANY ? ballot != 0 : ballot == mask;
}

unsigned hgemu_warp_reduce(unsigned mask, int op, unsigned value) {
    static const char* const names[] = {"__reduce_add_sync", "__reduce_min_sync", "__reduce_max_sync",
                                        "__reduce_min_sync", "__reduce_max_sync", "__reduce_and_sync",
                                        "__reduce_or_sync", "__reduce_xor_sync"};
    const unsigned* all = (const unsigned*)collective(mask, &value, sizeof value, names[op & 7]);
    bool first = true;
    unsigned r = 0;
    for (unsigned l = 0; l < 32; ++l) {
        if (!(mask >> l & 1)) continue;
        const unsigned v = all[l];
        if (first) {
            r = v;
            first = false;
            continue;
        }
        switch (op) {
        case HG_RED_ADD: r += v; break;
        case HG_RED_MIN_U: r = std::min(r, v); break;
        case HG_RED_MAX_U: r = std::max(r, v); break;
        case HG_RED_MIN_S: r = (unsigned)std::min((int)r, (int)v); break;
        case HG_RED_MAX_S: r = (unsigned)std::max((int)r, (int)v); break;
        case HG_RED_AND: r &= v; break;
        case HG_RED_OR: r |= v; break;
        default: r ^= v; break;
        }
    }
    return r;
}

unsigned hgemu_activemask(void) {
    const Fiber* f = in_kernel("__activemask");
    unsigned m = 0;
    for (unsigned l = 0; l < 32 && f->warp * 32 + l < g_grid.nthreads; ++l) m |= 1u << l;
    return m & ~g_grid.exited[f->warp];
}

void hgemu_atomic_check(const void* p, size_t n) { check(p, n, ATOMIC, n); }

// ---- The -fsanitize=thread hooks: every load and store of the kernels' host build ------------------------

void __tsan_init(void) {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit(void) {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}

#define HG_TSAN_SIZED(N)                                                                   \
    void __tsan_read##N(void* p) { check(p, N, READ, N); }                                \
    void __tsan_write##N(void* p) { check(p, N, WRITE, N); }                              \
    void __tsan_unaligned_read##N(void* p) { check(p, N, READ, 1); }                      \
    void __tsan_unaligned_write##N(void* p) { check(p, N, WRITE, 1); }                    \
    void __tsan_volatile_read##N(void* p) { check(p, N, READ, N); }                       \
    void __tsan_volatile_write##N(void* p) { check(p, N, WRITE, N); }                     \
    void __tsan_unaligned_volatile_read##N(void* p) { check(p, N, READ, 1); }             \
    void __tsan_unaligned_volatile_write##N(void* p) { check(p, N, WRITE, 1); }
HG_TSAN_SIZED(1)
HG_TSAN_SIZED(2)
HG_TSAN_SIZED(4)
HG_TSAN_SIZED(8)
HG_TSAN_SIZED(16)
#undef HG_TSAN_SIZED

void __tsan_read_range(void* p, size_t n) {
    if (n) check(p, n, READ, 1);
}
void __tsan_write_range(void* p, size_t n) {
    if (n) check(p, n, WRITE, 1);
}

// Atomics in instrumented code (std::atomic, __atomic builtins): checked as atomics, then done.
void __tsan_atomic_thread_fence(int) {}
void __tsan_atomic_signal_fence(int) {}
#define HG_TSAN_ATOMIC(N, T)                                                                                   \
    T __tsan_atomic##N##_load(const volatile T* a, int) {                                                     \
        check((const void*)a, sizeof(T), ATOMIC, sizeof(T));                                                   \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                           \
    }                                                                                                          \
    void __tsan_atomic##N##_store(volatile T* a, T v, int) {                                                  \
        check((const void*)a, sizeof(T), ATOMIC, sizeof(T));                                                   \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                              \
    }                                                                                                          \
    T __tsan_atomic##N##_exchange(volatile T* a, T v, int) {                                                  \
        check((const void*)a, sizeof(T), ATOMIC, sizeof(T));                                                   \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                    \
    }                                                                                                          \
    T __tsan_atomic##N##_fetch_add(volatile T* a, T v, int) {                                                 \
        check((const void*)a, sizeof(T), ATOMIC, sizeof(T));                                                   \
        return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                     \
    }                                                                                                          \
    T __tsan_atomic##N##_fetch_sub(volatile T* a, T v, int) {                                                 \
        check((const void*)a, sizeof(T), ATOMIC, sizeof(T));                                                   \
        return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                     \
    }                                                                                                          \
    T __tsan_atomic##N##_fetch_and(volatile T* a, T v, int) {                                                 \
        check((const void*)a, sizeof(T), ATOMIC, sizeof(T));                                                   \
        return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                     \
    }                                                                                                          \
    T __tsan_atomic##N##_fetch_or(volatile T* a, T v, int) {                                                  \
        check((const void*)a, sizeof(T), ATOMIC, sizeof(T));                                                   \
        return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                      \
    }                                                                                                          \
    T __tsan_atomic##N##_fetch_xor(volatile T* a, T v, int) {                                                 \
        check((const void*)a, sizeof(T), ATOMIC, sizeof(T));                                                   \
        return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                     \
    }                                                                                                          \
    T __tsan_atomic##N##_fetch_nand(volatile T* a, T v, int) {                                                \
        check((const void*)a, sizeof(T), ATOMIC, sizeof(T));                                                   \
        return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                                    \
    }                                                                                                          \
    int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {                      \
        check((const void*)a, sizeof(T), ATOMIC, sizeof(T));                                                   \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                \
    }                                                                                                          \
    int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                        \
        check((const void*)a, sizeof(T), ATOMIC, sizeof(T));                                                   \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                \
    }                                                                                                          \
    T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                            \
        check((const void*)a, sizeof(T), ATOMIC, sizeof(T));                                                   \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                      \
        return c;                                                                                              \
    }
HG_TSAN_ATOMIC(8, char)
HG_TSAN_ATOMIC(16, short)
HG_TSAN_ATOMIC(32, int)
HG_TSAN_ATOMIC(64, long)
#undef HG_TSAN_ATOMIC

}  // extern "C"
