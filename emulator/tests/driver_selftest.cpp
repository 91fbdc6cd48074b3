// Self-test of the emulated driver (emulator/driver.cpp): loads a built libcuda.so by path and calls the driver
// API as cudarc does. Its kernels are its own (registered through hgemu_register_kernel, their accesses made with
// hgemu_access), so it runs against the real runtime or a stand-in. Build and run (from the repository root):
//
//   g++ -std=c++17 -O1 -pthread -Wall -Wextra -I emulator emulator/tests/driver_selftest.cpp -o /tmp/driver_selftest -ldl
//   /tmp/driver_selftest target/<profile>/build/hourglass-*/out/emulator/libcuda.so
//
// It prints one line per check and exits nonzero if any fails. The sticky-error checks come last: after them the
// emulated device is unusable, as a GPU is after a kernel fault.
#include "hgemu.h"

#include <dlfcn.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

namespace {

typedef unsigned long long Ptr;
typedef void* Handle;

// The driver API as the self-test calls it (the CUDA 13 ABI: cudarc's bindings).
#define API(name, ...) int (*name)(__VA_ARGS__)
API(cuInit, unsigned);
API(cuGetErrorString, int, const char**);
API(cuDeviceGetCount, int*);
API(cuDeviceGet, int*, int);
API(cuDeviceGetName, char*, int, int);
API(cuDeviceGetAttribute, int*, int, int);
API(cuDeviceTotalMem_v2, size_t*, int);
API(cuDevicePrimaryCtxRetain, Handle*, int);
API(cuCtxSetCurrent, Handle);
API(cuCtxSynchronize, void);
API(cuMemGetInfo_v2, size_t*, size_t*);
API(cuStreamCreate, Handle*, unsigned);
API(cuStreamSynchronize, Handle);
API(cuStreamDestroy_v2, Handle);
API(cuMemAlloc_v2, Ptr*, size_t);
API(cuMemFree_v2, Ptr);
API(cuMemAllocAsync, Ptr*, size_t, Handle);
API(cuMemFreeAsync, Ptr, Handle);
API(cuMemHostAlloc, void**, size_t, unsigned);
API(cuMemFreeHost, void*);
API(cuMemcpyHtoD_v2, Ptr, const void*, size_t);
API(cuMemcpyDtoH_v2, void*, Ptr, size_t);
API(cuMemcpyHtoDAsync_v2, Ptr, const void*, size_t, Handle);
API(cuMemcpyDtoHAsync_v2, void*, Ptr, size_t, Handle);
API(cuMemcpyDtoDAsync_v2, Ptr, Ptr, size_t, Handle);
API(cuMemsetD8Async, Ptr, unsigned char, size_t, Handle);
API(cuMemsetD32Async, Ptr, unsigned, size_t, Handle);
API(cuDeviceGetDefaultMemPool, Handle*, int);
API(cuMemPoolGetAttribute, Handle, int, void*);
API(cuMemPoolSetAttribute, Handle, int, void*);
API(cuDeviceGetGraphMemAttribute, int, int, void*);
API(cuModuleLoadData, Handle*, const void*);
API(cuModuleGetFunction, Handle*, Handle, const char*);
API(cuModuleGetGlobal_v2, Ptr*, size_t*, Handle, const char*);
API(cuFuncGetAttribute, int*, int, Handle);
API(cuFuncSetAttribute, Handle, int, int);
API(cuLaunchKernel, Handle, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, Handle, void**, void**);
API(cuLaunchHostFunc, Handle, void (*)(void*), void*);
API(cuEventCreate, Handle*, unsigned);
API(cuEventRecord, Handle, Handle);
API(cuEventSynchronize, Handle);
API(cuEventQuery, Handle);
API(cuEventElapsedTime_v2, float*, Handle, Handle);
API(cuStreamBeginCapture_v2, Handle, int);
API(cuStreamEndCapture, Handle, Handle*);
API(cuStreamIsCapturing, Handle, int*);
API(cuGraphInstantiateWithFlags, Handle*, Handle, unsigned long long);
API(cuGraphUpload, Handle, Handle);
API(cuGraphLaunch, Handle, Handle);
API(cuGraphExecDestroy, Handle);
API(cuGraphDestroy, Handle);
#undef API
void (*register_kernel)(const hg_kernel_entry*);
void (*register_global)(const hg_global_entry*);
unsigned (*lane)(void);
unsigned (*warp)(void);
void (*access)(const void*, size_t, int, size_t);

enum {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    NOT_READY = 600,
    ILLEGAL_ADDRESS = 700,
    STREAM_CAPTURE_UNSUPPORTED = 900,
    STREAM_CAPTURE_INVALIDATED = 901,
};

int failures = 0;

void check(bool ok, const char* what) {
    printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) ++failures;
}

std::string error_text(int code) {
    const char* s = nullptr;
    cuGetErrorString(code, &s);
    return s ? s : "";
}

// ---- The self-test's kernels (one block; the linear thread index is warp * 32 + lane) ----------------------

unsigned tid() { return warp() * 32 + lane(); }

template <class T>
T param(void** params, int i) {
    T v;
    memcpy(&v, params[i], sizeof v);
    return v;
}

void add_one(void** params) {
    float* p = param<float*>(params, 0);
    unsigned n = param<unsigned>(params, 1);
    unsigned i = tid();
    if (i >= n) return;
    access(p + i, 4, 0, 4);
    float v = p[i];
    access(p + i, 4, 1, 4);
    p[i] = v + 1;
}

unsigned long long st_seed = 0;

void copy_seed(void** params) {
    auto* out = param<unsigned long long*>(params, 0);
    if (tid() != 0) return;
    access(&st_seed, 8, 0, 8);
    access(out, 8, 1, 8);
    *out = st_seed;
}

struct Pair {
    float* out;
    float value;
};

void store_pair(void** params) {
    Pair pair = param<Pair>(params, 0);
    if (tid() != 0) return;
    access(pair.out, 4, 1, 4);
    *pair.out = pair.value;
}

void nothing(void**) {}

const unsigned kPtrU32[] = {8, 4};
const unsigned kPtr[] = {8};
const unsigned kPairSize[] = {16};
const hg_kernel_entry kKernels[] = {
    {"st_add_one", add_one, 2, kPtrU32, "driver_selftest"},
    {"st_copy_seed", copy_seed, 1, kPtr, "driver_selftest"},
    {"st_store_pair", store_pair, 1, kPairSize, "driver_selftest"},
    {"st_shared", nothing, 1, kPtr, "driver_selftest"},
    {"st_bounded", nothing, 1, kPtr, "driver_selftest"},
};
const hg_global_entry kSeed = {"st_seed", &st_seed, sizeof st_seed, "driver_selftest"};

// What nvcc would make of those kernels, as far as the driver reads PTX.
const char kPtx[] = R"(
//
// Generated for the driver self-test
//
.version 9.0
.target sm_90
.address_size 64

.visible .const .align 8 .u64 st_seed;
.const .align 8 .u64 st_internal;
.extern .shared .align 16 .b8 st_dyn[];

.visible .entry st_add_one(
	.param .u64 .ptr .global .align 4 st_add_one_param_0,
	.param .u32 st_add_one_param_1
)
{
	ret;
}

.visible .entry st_copy_seed(
	.param .u64 st_copy_seed_param_0
)
{
	ld.const.u64 	%rd1, [st_seed];
	ret;
}

.visible .entry st_store_pair(
	.param .align 8 .b8 st_store_pair_param_0[16]
)
{
	ret;
}

.visible .entry st_shared(
	.param .u64 st_shared_param_0
)
{
	.reg .b32 	%r<3>;
	.loc	1 186 0
	// demoted variable
	.shared .align 1 .u8 _ZZ9st_sharedE4last;
	st.shared.u8 	[_ZZ9st_sharedE4last], %rs1;
	mov.u32 	%r1, st_dyn;
	ret;
}

.visible .entry st_bounded(
	.param .u64 st_bounded_param_0
)
.maxntid 128, 1, 1
.minnctapersm 3
{
	ret;
}
)";

const char kPtxMissing[] = R"(
.version 9.0
.target sm_90
.address_size 64
.visible .entry st_no_such_kernel(
	.param .u64 st_no_such_kernel_param_0
)
{
	ret;
}
)";

const char kPtxDrifted[] = R"(
.version 9.0
.target sm_90
.address_size 64
.visible .entry st_add_one(
	.param .u64 st_add_one_param_0,
	.param .u64 st_add_one_param_1
)
{
	ret;
}
)";

// A host function that holds its stream until released: what follows it on the stream has not run yet.
std::atomic<bool> gate_open{false};
void gate(void*) {
    while (!gate_open.load()) std::this_thread::yield();
}

bool load(void* lib) {
    bool ok = true;
#define LOAD(name)                                                              \
    name = reinterpret_cast<decltype(name)>(dlsym(lib, #name));                 \
    if (!name) {                                                                \
        fprintf(stderr, "libcuda.so has no %s\n", #name);                       \
        ok = false;                                                             \
    }
    LOAD(cuInit) LOAD(cuGetErrorString) LOAD(cuDeviceGetCount) LOAD(cuDeviceGet) LOAD(cuDeviceGetName)
    LOAD(cuDeviceGetAttribute) LOAD(cuDeviceTotalMem_v2) LOAD(cuDevicePrimaryCtxRetain) LOAD(cuCtxSetCurrent)
    LOAD(cuCtxSynchronize) LOAD(cuMemGetInfo_v2) LOAD(cuStreamCreate) LOAD(cuStreamSynchronize)
    LOAD(cuStreamDestroy_v2) LOAD(cuMemAlloc_v2) LOAD(cuMemFree_v2) LOAD(cuMemAllocAsync) LOAD(cuMemFreeAsync)
    LOAD(cuMemHostAlloc) LOAD(cuMemFreeHost) LOAD(cuMemcpyHtoD_v2) LOAD(cuMemcpyDtoH_v2) LOAD(cuMemcpyHtoDAsync_v2)
    LOAD(cuMemcpyDtoHAsync_v2) LOAD(cuMemcpyDtoDAsync_v2) LOAD(cuMemsetD8Async) LOAD(cuMemsetD32Async)
    LOAD(cuDeviceGetDefaultMemPool) LOAD(cuMemPoolGetAttribute) LOAD(cuMemPoolSetAttribute)
    LOAD(cuDeviceGetGraphMemAttribute) LOAD(cuModuleLoadData) LOAD(cuModuleGetFunction) LOAD(cuModuleGetGlobal_v2)
    LOAD(cuFuncGetAttribute) LOAD(cuFuncSetAttribute) LOAD(cuLaunchKernel) LOAD(cuLaunchHostFunc) LOAD(cuEventCreate)
    LOAD(cuEventRecord) LOAD(cuEventSynchronize) LOAD(cuEventQuery) LOAD(cuEventElapsedTime_v2)
    LOAD(cuStreamBeginCapture_v2) LOAD(cuStreamEndCapture) LOAD(cuStreamIsCapturing)
    LOAD(cuGraphInstantiateWithFlags) LOAD(cuGraphUpload) LOAD(cuGraphLaunch) LOAD(cuGraphExecDestroy)
    LOAD(cuGraphDestroy)
#undef LOAD
#define LOAD_AS(var, name)                                                      \
    var = reinterpret_cast<decltype(var)>(dlsym(lib, name));                    \
    if (!var) {                                                                 \
        fprintf(stderr, "libcuda.so has no %s\n", name);                        \
        ok = false;                                                             \
    }
    LOAD_AS(register_kernel, "hgemu_register_kernel")
    LOAD_AS(register_global, "hgemu_register_global")
    LOAD_AS(lane, "hgemu_lane")
    LOAD_AS(warp, "hgemu_warp")
    LOAD_AS(access, "hgemu_access")
#undef LOAD_AS
    return ok;
}

int launch(Handle f, unsigned threads, Handle stream, void** args, unsigned dynamic_shared = 0) {
    return cuLaunchKernel(f, 1, 1, 1, threads, 1, 1, dynamic_shared, stream, args, nullptr);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s path/to/libcuda.so\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
    if (!lib) {
        fprintf(stderr, "%s\n", dlerror());
        return 2;
    }
    if (!load(lib)) return 2;
    for (const hg_kernel_entry& k : kKernels) register_kernel(&k);
    register_global(&kSeed);

    // Device and context.
    check(cuInit(0) == SUCCESS, "cuInit");
    int count = 0, dev = -1, value = 0;
    char name[256] = "";
    check(cuDeviceGetCount(&count) == SUCCESS && count == 1, "one device");
    check(cuDeviceGet(&dev, 0) == SUCCESS && dev == 0, "cuDeviceGet(0)");
    check(cuDeviceGetName(name, sizeof name, 0) == SUCCESS && strstr(name, "Emulated"), name);
    check(cuDeviceGetAttribute(&value, 115, 0) == SUCCESS && value == 1, "memory pools supported");
    check(cuDeviceGetAttribute(&value, 97, 0) == SUCCESS && value == 232448, "opt-in shared memory 227 KiB");
    check(cuDeviceGetAttribute(&value, 75, 0) == SUCCESS && value == 9, "compute capability 9.x");
    Handle ctx = nullptr, stream = nullptr;
    check(cuDevicePrimaryCtxRetain(&ctx, 0) == SUCCESS && cuCtxSetCurrent(ctx) == SUCCESS, "primary context");
    check(cuStreamCreate(&stream, 1) == SUCCESS, "cuStreamCreate");
    size_t free0 = 0, total = 0, total_mem = 0;
    check(cuMemGetInfo_v2(&free0, &total) == SUCCESS && cuDeviceTotalMem_v2(&total_mem, 0) == SUCCESS &&
              total == total_mem && free0 <= total && total > 0,
          "cuMemGetInfo / cuDeviceTotalMem");

    // Allocation, copies, a launch.
    const unsigned n = 64;
    Ptr buf = 0;
    check(cuMemAllocAsync(&buf, n * 4, stream) == SUCCESS && buf % 256 == 0, "cuMemAllocAsync, 256-byte aligned");
    size_t free1 = 0;
    cuMemGetInfo_v2(&free1, &total);
    check(free1 + n * 4 <= free0, "cuMemGetInfo counts the allocation");
    Handle pool = nullptr;
    unsigned long long used = 0;
    check(cuDeviceGetDefaultMemPool(&pool, 0) == SUCCESS && cuMemPoolGetAttribute(pool, 7, &used) == SUCCESS &&
              used == n * 4,
          "pool USED_MEM_CURRENT");
    float host[n], back[n];
    for (unsigned i = 0; i < n; ++i) host[i] = float(i);
    check(cuMemcpyHtoDAsync_v2(buf, host, sizeof host, stream) == SUCCESS, "cuMemcpyHtoDAsync from pageable memory");
    host[0] = -1;  // pageable: copied at the call, so this does not reach the device
    Handle module = nullptr, add = nullptr, seed_fn = nullptr, pair_fn = nullptr, shared_fn = nullptr,
           bounded = nullptr;
    check(cuModuleLoadData(&module, kPtx) == SUCCESS, "cuModuleLoadData");
    cuModuleGetFunction(&add, module, "st_add_one");
    cuModuleGetFunction(&seed_fn, module, "st_copy_seed");
    cuModuleGetFunction(&pair_fn, module, "st_store_pair");
    cuModuleGetFunction(&shared_fn, module, "st_shared");
    cuModuleGetFunction(&bounded, module, "st_bounded");
    check(add && seed_fn && pair_fn && shared_fn && bounded, "cuModuleGetFunction");
    void* add_args[] = {&buf, const_cast<unsigned*>(&n)};
    check(launch(add, 64, stream, add_args) == SUCCESS, "launch st_add_one");
    check(cuMemcpyDtoHAsync_v2(back, buf, sizeof back, stream) == SUCCESS, "cuMemcpyDtoHAsync to pageable memory");
    bool all = true;
    for (unsigned i = 0; i < n; ++i) all = all && back[i] == float(i) + 1;
    check(all, "the kernel ran, and the pageable DtoH returned after the copy");

    // Function attributes and the launch limits.
    check(cuFuncGetAttribute(&value, 1, shared_fn) == SUCCESS && value == 16,
          "static shared memory: 1 byte, padded to the dynamic buffer's 16");
    check(cuFuncGetAttribute(&value, 0, bounded) == SUCCESS && value == 128, "MAX_THREADS_PER_BLOCK from .maxntid");
    check(cuFuncGetAttribute(&value, 8, shared_fn) == SUCCESS && value == 49152 - 16, "MAX_DYNAMIC_SHARED default");
    void* one_arg[] = {&buf};
    int rc = launch(shared_fn, 32, stream, one_arg, 49152);
    check(rc == INVALID_VALUE && error_text(rc).find("49168 bytes of shared memory (16 static + 49152 dynamic)") !=
                                     std::string::npos,
          "a launch over 48 KiB of shared memory is refused, with the reason");
    check(cuFuncSetAttribute(shared_fn, 8, 232448) == INVALID_VALUE, "MAX_DYNAMIC_SHARED above opt-in - static");
    check(cuFuncSetAttribute(shared_fn, 8, 49152) == SUCCESS && launch(shared_fn, 32, stream, one_arg, 49152) == SUCCESS,
          "... and allowed once the attribute is raised");
    check(launch(shared_fn, 32, stream, one_arg, 49153) == INVALID_VALUE, "... up to the attribute");
    check(launch(bounded, 256, stream, one_arg) == INVALID_VALUE, "a block over .maxntid is refused");
    check(cuLaunchKernel(add, 1, 1, 1, 0, 1, 1, 0, stream, add_args, nullptr) == INVALID_VALUE, "a block dimension 0");
    check(cuLaunchKernel(add, 1, 1, 1, 1024, 2, 1, 0, stream, add_args, nullptr) == INVALID_VALUE, "2048 threads");
    check(cuLaunchKernel(add, 1, 65536, 1, 32, 1, 1, 0, stream, add_args, nullptr) == INVALID_VALUE, "grid y 65536");

    // Modules whose PTX and host build disagree.
    Handle bad = nullptr;
    rc = cuModuleLoadData(&bad, kPtxMissing);
    check(rc == NOT_FOUND && error_text(rc) == "no host build for .entry st_no_such_kernel",
          "an .entry without a host build fails the load");
    rc = cuModuleLoadData(&bad, kPtxDrifted);
    check(rc == NOT_FOUND && error_text(rc).find("parameter 1") != std::string::npos,
          "a parameter size that differs from the host build fails the load");

    // A module variable and a by-value struct parameter.
    Ptr seed_addr = 0, out = 0;
    size_t seed_size = 0;
    unsigned long long seed = 0x1234567890abcdefull, got = 0;
    check(cuModuleGetGlobal_v2(&seed_addr, &seed_size, module, "st_seed") == SUCCESS && seed_addr != 0 &&
              seed_addr != Ptr(&st_seed) && seed_size == 8,
          "cuModuleGetGlobal gives the load's own copy of the variable (swapped in around its launches)");
    rc = cuModuleGetGlobal_v2(&out, &seed_size, module, "st_internal");
    check(rc == NOT_FOUND && error_text(rc).find("is not .visible") != std::string::npos,
          "a module variable without .visible is not found by name");
    cuMemAllocAsync(&out, 8, stream);
    cuMemcpyHtoDAsync_v2(seed_addr, &seed, 8, stream);
    void* seed_args[] = {&out};
    launch(seed_fn, 32, stream, seed_args);
    check(cuMemcpyDtoHAsync_v2(&got, out, 8, stream) == SUCCESS && got == seed, "a kernel reads the module variable");
    Pair pair = {reinterpret_cast<float*>(out), 2.5f};
    void* pair_args[] = {&pair};
    launch(pair_fn, 32, stream, pair_args);
    pair.value = 0;  // the arguments were copied at the launch
    float pair_out = 0;
    cuMemcpyDtoHAsync_v2(&pair_out, out, 4, stream);
    check(pair_out == 2.5f, "a .param .b8[16] argument is copied at the launch");

    // Pinned memory: asynchronous copies see the buffer as it is when the stream reaches them.
    float* pinned = nullptr;
    check(cuMemHostAlloc(reinterpret_cast<void**>(&pinned), n * 4, 0) == SUCCESS, "cuMemHostAlloc");
    for (unsigned i = 0; i < n; ++i) pinned[i] = -7;
    gate_open = false;
    cuLaunchHostFunc(stream, gate, nullptr);
    cuMemcpyDtoHAsync_v2(pinned, buf, n * 4, stream);
    check(pinned[0] == -7, "a host read of a pinned buffer before its DtoH copy has run sees the old bytes");
    float staged[n];
    for (unsigned i = 0; i < n; ++i) staged[i] = 100;
    cuMemcpyHtoDAsync_v2(buf, pinned, n * 4, stream);  // runs after the DtoH: copies back what it brought
    gate_open = true;
    cuStreamSynchronize(stream);
    check(pinned[0] == 1, "... and the copied bytes after synchronising");
    gate_open = false;
    cuLaunchHostFunc(stream, gate, nullptr);
    for (unsigned i = 0; i < n; ++i) pinned[i] = 5;
    cuMemcpyHtoDAsync_v2(buf, pinned, n * 4, stream);
    for (unsigned i = 0; i < n; ++i) pinned[i] = 6;  // before the stream reaches the copy: this is what goes up
    gate_open = true;
    cuMemcpyDtoHAsync_v2(staged, buf, n * 4, stream);
    check(staged[0] == 6, "a pinned HtoD copy reads the buffer when the stream reaches it");

    // Events.
    Handle start = nullptr, stop = nullptr, untimed = nullptr;
    float ms = -1;
    cuEventCreate(&start, 0);
    cuEventCreate(&stop, 0);
    cuEventCreate(&untimed, 2);
    cuEventRecord(start, stream);
    launch(add, 64, stream, add_args);
    cuEventRecord(stop, stream);
    cuEventRecord(untimed, stream);
    check(cuEventSynchronize(stop) == SUCCESS && cuEventQuery(stop) == SUCCESS, "event synchronize and query");
    check(cuEventElapsedTime_v2(&ms, start, stop) == SUCCESS && ms >= 0, "elapsed time");
    check(cuEventElapsedTime_v2(&ms, start, untimed) == INVALID_HANDLE, "no elapsed time with DISABLE_TIMING");

    // Capture and replay: a memset, a kernel, a graph allocation freed in the graph.
    int status = -1;
    Handle graph = nullptr, exec = nullptr;
    check(cuStreamBeginCapture_v2(stream, 1) == SUCCESS, "cuStreamBeginCapture (thread-local)");
    check(cuStreamIsCapturing(stream, &status) == SUCCESS && status == 1, "cuStreamIsCapturing");
    cuMemsetD32Async(buf, 0x40000000u, n, stream);  // 2.0f
    launch(add, 64, stream, add_args);
    Ptr scratch = 0;
    check(cuMemAllocAsync(&scratch, 1024, stream) == SUCCESS, "cuMemAllocAsync during capture");
    cuMemcpyDtoDAsync_v2(scratch, buf, n * 4, stream);
    cuMemcpyDtoDAsync_v2(buf, scratch, n * 4, stream);
    cuMemFreeAsync(scratch, stream);
    for (unsigned i = 0; i < n; ++i) back[i] = 0;
    check(cuStreamEndCapture(stream, &graph) == SUCCESS && graph, "cuStreamEndCapture");
    cuMemcpyDtoHAsync_v2(back, buf, 4, stream);
    check(back[0] == 7, "nothing captured ran at capture time");
    check(cuGraphInstantiateWithFlags(&exec, graph, 0) == SUCCESS && cuGraphUpload(exec, stream) == SUCCESS,
          "instantiate, upload");
    unsigned long long graph_mem = 0;
    check(cuDeviceGetGraphMemAttribute(0, 1, &graph_mem) == SUCCESS && graph_mem >= 1024, "graph memory high water");
    for (int replay = 0; replay < 2; ++replay) {
        check(cuGraphLaunch(exec, stream) == SUCCESS, "cuGraphLaunch");
        for (unsigned i = 0; i < n; ++i) back[i] = 0;
        cuMemcpyDtoHAsync_v2(back, buf, sizeof back, stream);
        all = true;
        for (unsigned i = 0; i < n; ++i) all = all && back[i] == 3;
        check(all, "the replay ran the captured work in order");
    }

    // What a capture refuses: the call fails and the capture is invalidated.
    Ptr plain_alloc = 0;
    cuStreamBeginCapture_v2(stream, 1);
    check(cuStreamSynchronize(stream) == STREAM_CAPTURE_UNSUPPORTED, "cuStreamSynchronize during capture is refused");
    check(cuStreamIsCapturing(stream, &status) == SUCCESS && status == 2, "... and invalidates the capture");
    Handle none = reinterpret_cast<Handle>(1);
    check(cuStreamEndCapture(stream, &none) == STREAM_CAPTURE_INVALIDATED && none == nullptr,
          "cuStreamEndCapture reports the invalidated capture");
    cuStreamBeginCapture_v2(stream, 1);
    check(cuMemAlloc_v2(&plain_alloc, 256) == STREAM_CAPTURE_UNSUPPORTED, "cuMemAlloc during capture is refused");
    cuStreamEndCapture(stream, &none);
    cuStreamBeginCapture_v2(stream, 1);
    check(cuMemcpyHtoDAsync_v2(buf, host, 4, stream) == STREAM_CAPTURE_UNSUPPORTED,
          "a copy from pageable memory during capture is refused");
    cuStreamEndCapture(stream, &none);
    cuStreamBeginCapture_v2(stream, 1);
    check(cuEventQuery(stop) == STREAM_CAPTURE_UNSUPPORTED, "cuEventQuery during capture is refused");
    cuStreamEndCapture(stream, &none);
    check(cuStreamSynchronize(stream) == SUCCESS, "the stream works after the refused captures");

    // Sticky errors: a captured kernel on a buffer freed before the replay is a use after free.
    Ptr victim = 0;
    Handle graph2 = nullptr, exec2 = nullptr;
    cuMemAllocAsync(&victim, n * 4, stream);
    cuMemsetD8Async(victim, 0, n * 4, stream);
    void* victim_args[] = {&victim, const_cast<unsigned*>(&n)};
    cuStreamBeginCapture_v2(stream, 1);
    launch(add, 64, stream, victim_args);
    cuStreamEndCapture(stream, &graph2);
    cuGraphInstantiateWithFlags(&exec2, graph2, 0);
    cuGraphLaunch(exec2, stream);
    check(cuStreamSynchronize(stream) == SUCCESS, "the replay on a live buffer runs");
    cuMemFreeAsync(victim, stream);
    check(cuGraphLaunch(exec2, stream) == SUCCESS, "a replay is queued asynchronously");
    rc = cuStreamSynchronize(stream);
    std::string text = error_text(rc);
    check(rc == ILLEGAL_ADDRESS, "... and its use after free fails the stream with CUDA_ERROR_ILLEGAL_ADDRESS");
    check(text.find("memcheck") != std::string::npos && text.find("st_add_one") != std::string::npos,
          ("cuGetErrorString names the check and the kernel: " + text).c_str());
    check(launch(add, 64, stream, add_args) == ILLEGAL_ADDRESS, "later launches fail with the sticky error");
    check(cuCtxSynchronize() == ILLEGAL_ADDRESS, "... and so does cuCtxSynchronize");

    printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
    return failures ? 1 : 0;
}
