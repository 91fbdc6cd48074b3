/* Self-test of the emulator's runtime (emulator/runtime.cpp) with the toy kernels of
   runtime_selftest_kernels.cu, built through transform.rs and the shim as build.rs builds the crate's kernels: a
   correct reduction (barriers and shuffles) gives exact results under every schedule, and each planted defect
   fails with its check's message. The kernels are compiled with -fsanitize=thread but linked without it: the
   runtime defines the __tsan_* hooks, and libtsan must not be loaded. Build and run from the repository root:

   D=/tmp/hgemu-runtime-selftest; mkdir -p $D
   rustc --edition 2021 -O emulator/tests/transform_cli.rs -o $D/transform_cli
   $D/transform_cli runtime_selftest emulator/tests/runtime_selftest_kernels.cu $D/kernels.cpp sum_f32 \
     sum_missing_sync_f32 scale_oob_f32 copy_f32 early_exit_f32 shuffle_after_exit_f32 dynamic_neighbour_f32 \
     atomics_and_votes misaligned_f32x4 coordinates =selftest_seed
   g++ -std=c++17 -O2 -fPIC -pthread -Wall -Wextra -Iemulator -shared emulator/runtime.cpp -o $D/libhgrt.so
   g++ -std=c++17 -O1 -fPIC -ffp-contract=off -fsanitize=thread --param=tsan-instrument-func-entry-exit=0 \
     -Wall -Wextra -Wno-unknown-pragmas -include emulator/shim/cuda_shim.h -Iemulator/shim -Iemulator \
     -c $D/kernels.cpp -o $D/kernels.o
   g++ -shared $D/kernels.o -o $D/libselftest_kernels.so -L$D -lhgrt
   g++ -std=c++17 -O2 -pthread -Wall -Wextra -Iemulator emulator/tests/runtime_selftest.cpp \
     -o $D/runtime_selftest -L$D -Wl,--no-as-needed -lselftest_kernels -lhgrt -Wl,-rpath,$D
   for s in inorder reversed random:7 skewed; do HOURGLASS_EMU_SCHEDULE=$s $D/runtime_selftest || exit 1; done
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <string>
#include <vector>

#include "hgemu.h"

static int g_failures = 0;

#define EXPECT(cond, ...)                                          \
    do {                                                           \
        if (!(cond)) {                                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);   \
            fprintf(stderr, __VA_ARGS__);                          \
            fprintf(stderr, "\n");                                 \
            ++g_failures;                                          \
        }                                                          \
    } while (0)

// Device memory as the driver makes it: a live region whose bytes start unwritten.
template <class T>
static T* device_alloc(size_t n, const char* what) {
    T* p = static_cast<T*>(aligned_alloc(256, (n * sizeof(T) + 255) / 256 * 256));
    hgemu_region_add(p, n * sizeof(T), HG_REGION_DEVICE, what);
    return p;
}

template <class T>
static void upload(T* dst, const std::vector<T>& src) {
    memcpy(dst, src.data(), src.size() * sizeof(T));
    hgemu_mark_written(dst, src.size() * sizeof(T));
}

static void device_free(void* p) {
    hgemu_region_remove(p);
    free(p);
}

struct Result {
    int rc;
    std::string msg;
};

// Launches `name` with the given parameter addresses.
static Result launch(const char* name, hg_dim3 grid, hg_dim3 block, unsigned dynamic, std::vector<void*> params) {
    const hg_kernel_entry* k = hgemu_find_kernel(name);
    if (!k) {
        fprintf(stderr, "FAIL: kernel %s is not registered\n", name);
        exit(1);
    }
    hg_launch l = {k, grid, block, dynamic, params.data()};
    char msg[1024] = "";
    const int rc = hgemu_run_grid(&l, msg, sizeof msg);
    return {rc, msg};
}

static bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

static void expect_finding(const Result& r, const char* prefix, std::initializer_list<const char*> parts) {
    EXPECT(r.rc != 0, "expected a %s finding, the launch succeeded", prefix);
    EXPECT(r.msg.rfind(prefix, 0) == 0, "expected a message starting %s, got: %s", prefix, r.msg.c_str());
    for (const char* p : parts) EXPECT(has(r.msg, p), "expected \"%s\" in: %s", p, r.msg.c_str());
    printf("  caught: %s\n", r.msg.c_str());
}

static void test_reduction() {
    const int n = 1000, blocks = 4;
    std::vector<float> x(n);
    for (int i = 0; i < n; ++i) x[i] = (float)(i % 17) - 3.0f;  // integers: every order of addition is exact
    float* dx = device_alloc<float>(n, "x");
    float* dout = device_alloc<float>(blocks, "out");
    upload(dx, x);
    int nn = n;
    Result r = launch("sum_f32", {blocks, 1, 1}, {256, 1, 1}, 0, {&dx, &dout, &nn});
    EXPECT(r.rc == 0, "sum_f32: %s", r.msg.c_str());
    for (int b = 0; b < blocks; ++b) {
        float want = 0.0f;
        for (int i = b * 256; i < std::min(n, b * 256 + 256); ++i) want += x[i];
        EXPECT(dout[b] == want, "sum_f32 block %d: %g, want %g", b, dout[b], want);
    }
    printf("  sum_f32: %g %g %g %g\n", dout[0], dout[1], dout[2], dout[3]);
    expect_finding(launch("sum_missing_sync_f32", {blocks, 1, 1}, {256, 1, 1}, 0, {&dx, &dout, &nn}), "racecheck",
                   {"kernel sum_missing_sync_f32", "block (", "at shared 0x", "races with a",
                    "since the last barrier"});
    device_free(dx);
    device_free(dout);
}

static void test_memcheck() {
    const int n = 100;
    float* dx = device_alloc<float>(128, "x");
    float* dy = device_alloc<float>(n, "y");
    upload(dx, std::vector<float>(128, 1.0f));
    int nn = n;
    expect_finding(launch("scale_oob_f32", {1, 1, 1}, {128, 1, 1}, 0, {&dx, &dy, &nn}), "memcheck",
                   {"kernel scale_oob_f32", "invalid global write of 4 bytes", "past the end of a 400-byte allocation",
                    "(y)"});
    expect_finding(launch("misaligned_f32x4", {1, 1, 1}, {16, 1, 1}, 0, {&dx, &dy}), "memcheck",
                   {"misaligned global read of 16 bytes", "16-byte aligned"});
    // A freed buffer.
    float* dz = device_alloc<float>(64, "z");
    device_free(dz);
    long n64 = 64;
    expect_finding(launch("copy_f32", {1, 1, 1}, {64, 1, 1}, 0, {&dx, &dz, &n64}), "memcheck",
                   {"invalid global write", "use after free", "(z)"});
    // The host-side check the driver and the GEMMs use.
    char msg[512];
    EXPECT(hgemu_check_range(dx, 512, 0, 1, msg, sizeof msg) == 0, "check_range of x: %s", msg);
    EXPECT(hgemu_check_range(dx, 516, 0, 0, msg, sizeof msg) != 0 && has(msg, "4 bytes of it past the end"), "%s",
           msg);
    float* fresh = device_alloc<float>(2, "fresh");
    EXPECT(hgemu_check_range(fresh, 8, 0, 1, msg, sizeof msg) != 0 && has(msg, "initcheck:"), "%s", msg);
    device_free(fresh);
    device_free(dx);
    device_free(dy);
}

static void test_initcheck() {
    float* dx = device_alloc<float>(256, "never written");
    float* dy = device_alloc<float>(256, "y");
    long n = 256;
    expect_finding(launch("copy_f32", {2, 1, 1}, {128, 1, 1}, 0, {&dx, &dy, &n}), "initcheck",
                   {"kernel copy_f32", "never been written", "(never written)"});
    upload(dx, std::vector<float>(256, 3.0f));
    Result r = launch("copy_f32", {2, 1, 1}, {128, 1, 1}, 0, {&dx, &dy, &n});
    EXPECT(r.rc == 0 && dy[255] == 3.0f, "copy_f32 after upload: %s", r.msg.c_str());
    device_free(dx);
    device_free(dy);
}

static void test_synccheck() {
    float* dy = device_alloc<float>(64, "y");
    expect_finding(launch("early_exit_f32", {1, 1, 1}, {64, 1, 1}, 0, {&dy}), "synccheck",
                   {"__syncthreads is not reached by every thread", "has exited"});
    expect_finding(launch("shuffle_after_exit_f32", {1, 1, 1}, {64, 1, 1}, 0, {&dy}), "synccheck",
                   {"__shfl_xor_sync", "lane 31", "has exited"});
    device_free(dy);
}

static void test_dynamic_shared() {
    float* dy = device_alloc<float>(64, "y");
    int overrun = 0;
    Result r = launch("dynamic_neighbour_f32", {1, 1, 1}, {64, 1, 1}, 64 * 4, {&dy, &overrun});
    EXPECT(r.rc == 0, "dynamic_neighbour_f32: %s", r.msg.c_str());
    for (int t = 0; t < 64; ++t) EXPECT(dy[t] == (float)((t + 1) % 64), "dynamic_neighbour_f32 y[%d] = %g", t, dy[t]);
    overrun = 1;
    expect_finding(launch("dynamic_neighbour_f32", {1, 1, 1}, {64, 1, 1}, 64 * 4, {&dy, &overrun}), "memcheck",
                   {"invalid shared read of 4 bytes", "past the end of the launch's 256 bytes of dynamic shared"});
    device_free(dy);
}

static void test_atomics_votes_coordinates() {
    unsigned* out = device_alloc<unsigned>(5, "out");
    Result r = launch("atomics_and_votes", {1, 1, 1}, {64, 1, 1}, 0, {&out});
    EXPECT(r.rc == 0, "atomics_and_votes: %s", r.msg.c_str());
    EXPECT(out[0] == 64 && out[1] == 7 && out[2] == 0x49249249u && out[3] == 1 && out[4] == 32,
           "atomics_and_votes: %u %u %#x %u %u", out[0], out[1], out[2], out[3], out[4]);
    device_free(out);

    const hg_global_entry* seed = hgemu_find_global_in("runtime_selftest", "selftest_seed");
    EXPECT(seed && seed->size == 8 && seed == hgemu_find_global("selftest_seed"), "selftest_seed is not registered");
    if (!seed) return;
    // As the driver does when it loads the module: the variable becomes memory kernels may read.
    hgemu_region_add(seed->addr, seed->size, HG_REGION_GLOBAL, seed->name);
    *static_cast<unsigned long long*>(seed->addr) = 5;
    const unsigned n = 3 * 2 * 4 * 2;
    unsigned* c = device_alloc<unsigned>(n, "coordinates");
    r = launch("coordinates", {3, 2, 1}, {4, 2, 1}, 0, {&c});
    EXPECT(r.rc == 0, "coordinates: %s", r.msg.c_str());
    for (unsigned by = 0; by < 2; ++by)
        for (unsigned bx = 0; bx < 3; ++bx)
            for (unsigned ty = 0; ty < 2; ++ty)
                for (unsigned tx = 0; tx < 4; ++tx) {
                    const unsigned b = by * 3 + bx, got = c[b * 8 + ty * 4 + tx];
                    EXPECT(got == 5 + b * 1000 + ty * 100 + tx, "coordinates (%u,%u)(%u,%u): %u", bx, by, tx, ty, got);
                }
    device_free(c);
}

// Not a check: how fast a barrier-and-shuffle kernel runs (the GPU suite's budget depends on it).
static void time_reduction() {
    const int n = 1 << 20, blocks = n / 256;
    float* dx = device_alloc<float>(n, "x");
    float* dout = device_alloc<float>(blocks, "out");
    upload(dx, std::vector<float>(n, 1.0f));
    int nn = n;
    timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    Result r = launch("sum_f32", {(unsigned)blocks, 1, 1}, {256, 1, 1}, 0, {&dx, &dout, &nn});
    clock_gettime(CLOCK_MONOTONIC, &b);
    EXPECT(r.rc == 0 && dout[blocks - 1] == 256.0f, "sum_f32 of 2^20: %s", r.msg.c_str());
    const double s = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    printf("  sum_f32 over 2^20 floats (%d blocks of 256): %.3f s, %.1f M threads/s\n", blocks, s, n / s / 1e6);
    // A grid-stride copy: the cost of a checked global load and store.
    float* dy = device_alloc<float>(n, "y");
    long ln = n;
    clock_gettime(CLOCK_MONOTONIC, &a);
    r = launch("copy_f32", {16, 1, 1}, {256, 1, 1}, 0, {&dx, &dy, &ln});
    clock_gettime(CLOCK_MONOTONIC, &b);
    EXPECT(r.rc == 0 && dy[n - 1] == 1.0f, "copy_f32 of 2^20: %s", r.msg.c_str());
    const double c = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    printf("  copy_f32 of 2^20 floats by 4096 threads: %.3f s, %.1f M elements/s\n", c, n / c / 1e6);
    device_free(dx);
    device_free(dy);
    device_free(dout);
}

int main() {
    const char* schedule = getenv("HOURGLASS_EMU_SCHEDULE");
    printf("runtime self-test, schedule %s\n", schedule ? schedule : "inorder");
    test_reduction();
    test_memcheck();
    test_initcheck();
    test_synccheck();
    test_dynamic_shared();
    test_atomics_votes_coordinates();
    time_reduction();
    if (g_failures) {
        printf("runtime self-test: %d failures\n", g_failures);
        return 1;
    }
    printf("runtime self-test: ok\n");
    return 0;
}
