// The emulated CUDA driver API (part of libcuda.so): what cudarc calls, on the CPU.
//
// One device, one (primary) context. Device memory is host memory registered with the sanitizer
// (hgemu_region_*). Every stream has a worker thread that runs its queued work in order, asynchronously to the
// host; device work of all streams is serialised (one op at a time), as the runtime runs one grid at a time.
// A failure of queued work (a sanitizer finding, a GEMM error) is sticky, as a kernel fault is on a GPU.
// Stream capture records the queued work as graph nodes that a graph launch replays in order.
//
// The C ABI (names, _v2 suffixes, enum values, struct layouts) follows cudarc 0.19's bindings for CUDA 13.0;
// there is no cuda.h here, so the few declarations needed are written out below.
#include "hgemu.h"

#include <dirent.h>
#include <elf.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

// Per module variables: the registry keys them by name, and two modules may both define one (the attention
// modules' `attention_dropout_seed`). Weak, so that a runtime without it still links (then: by name alone).
extern "C" const hg_global_entry* hgemu_find_global_in(const char* module, const char* name) __attribute__((weak));

// ---- The ABI ------------------------------------------------------------------------------------------------

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_NO_BINARY_FOR_GPU = 209,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_PTX = 218,
    CUDA_ERROR_SHARED_OBJECT_INIT_FAILED = 303,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_ILLEGAL_STATE = 401,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED = 712,
    CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED = 713,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
    CUDA_ERROR_CAPTURED_EVENT = 907,
    CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD = 908,
};

enum { CU_STREAM_NON_BLOCKING = 1 };
enum { CU_EVENT_DISABLE_TIMING = 2 };
enum { CU_STREAM_CAPTURE_MODE_GLOBAL = 0, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1, CU_STREAM_CAPTURE_MODE_RELAXED = 2 };
enum { CU_STREAM_CAPTURE_STATUS_NONE = 0, CU_STREAM_CAPTURE_STATUS_ACTIVE = 1, CU_STREAM_CAPTURE_STATUS_INVALIDATED = 2 };
enum {
    CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK = 0,
    CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES = 1,
    CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES = 2,
    CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES = 3,
    CU_FUNC_ATTRIBUTE_NUM_REGS = 4,
    CU_FUNC_ATTRIBUTE_PTX_VERSION = 5,
    CU_FUNC_ATTRIBUTE_BINARY_VERSION = 6,
    CU_FUNC_ATTRIBUTE_CACHE_MODE_CA = 7,
    CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8,
    CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT = 9,
    CU_FUNC_ATTRIBUTE_MAX = 16,
};
enum {
    CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES = 1,
    CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC = 2,
    CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES = 3,
    CU_MEMPOOL_ATTR_RELEASE_THRESHOLD = 4,
    CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT = 5,
    CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH = 6,
    CU_MEMPOOL_ATTR_USED_MEM_CURRENT = 7,
    CU_MEMPOOL_ATTR_USED_MEM_HIGH = 8,
};
enum {
    CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT = 0,
    CU_GRAPH_MEM_ATTR_USED_MEM_HIGH = 1,
    CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT = 2,
    CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH = 3,
};
enum {
    CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH = 1,
    CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD = 2,
    CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH = 4,
    CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY = 8,
};
enum { CU_LAUNCH_ATTRIBUTE_COOPERATIVE = 2, CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4 };

struct CUlaunchAttribute {
    unsigned id;
    char pad[4];
    union {
        char bytes[64];
        struct {
            unsigned x, y, z;
        } dim;
        int value;
    } value;
};
struct CUlaunchConfig {
    unsigned gridDimX, gridDimY, gridDimZ;
    unsigned blockDimX, blockDimY, blockDimZ;
    unsigned sharedMemBytes;
    struct CUstream_st* hStream;
    CUlaunchAttribute* attrs;
    unsigned numAttrs;
};
struct CUuuid {
    char bytes[16];
};

// ---- Limits of the emulated device (an H100 SXM) ------------------------------------------------------------

namespace {

constexpr int kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlock[3] = {1024, 1024, 64};
constexpr unsigned kMaxGrid[3] = {2147483647u, 65535u, 65535u};
constexpr unsigned kSharedPerBlock = 48 * 1024;
constexpr unsigned kSharedOptin = 232448;  // 227 KiB
constexpr size_t kMemoryCap = 80ull * 1000 * 1000 * 1000;
constexpr size_t kQuarantineBytes = 256ull << 20;
constexpr size_t kAlign = 256;
const char kDeviceName[] = "Emulated CUDA device (hourglass, H100-like)";

// The emulated device's compute capability as major * 10 + minor: 9.0 (an H100), or
// HOURGLASS_EMU_COMPUTE_CAPABILITY=M.m, which decides which of the crate's cubins, if any, loads (cuModuleLoadData).
int compute_capability() {
    const char* v = getenv("HOURGLASS_EMU_COMPUTE_CAPABILITY");
    unsigned major = 0, minor = 0;
    if (v && sscanf(v, "%u.%u", &major, &minor) == 2 && major >= 1 && minor <= 9) return int(major * 10 + minor);
    return 90;
}

int device_attribute(int attr) {
    switch (attr) {
        case 1: return kMaxThreadsPerBlock;
        case 2: return int(kMaxBlock[0]);
        case 3: return int(kMaxBlock[1]);
        case 4: return int(kMaxBlock[2]);
        case 5: return int(kMaxGrid[0]);
        case 6: return int(kMaxGrid[1]);
        case 7: return int(kMaxGrid[2]);
        case 8: return int(kSharedPerBlock);
        case 9: return 65536;                   // constant memory
        case 10: return 32;                     // warp size
        case 11: return 2147483647;             // max pitch
        case 12: return 65536;                  // registers per block
        case 13: return 1980000;                // clock rate, kHz
        case 14: return 512;                    // texture alignment
        case 15: return 1;                      // gpu overlap
        case 16: return 132;                    // SMs
        case 19: return 1;                      // can map host memory
        case 30: return 512;                    // surface alignment
        case 31: return 1;                      // concurrent kernels
        case 32: return 1;                      // ECC
        case 36: return 2619000;                // memory clock, kHz
        case 37: return 5120;                   // bus width
        case 38: return 50 * 1024 * 1024;       // L2
        case 39: return 2048;                   // threads per SM
        case 40: return 2;                      // async engines
        case 41: return 1;                      // unified addressing
        case 51: return 32;                     // texture pitch alignment
        case 75: return compute_capability() / 10;
        case 76: return compute_capability() % 10;
        case 78: return 1;                      // stream priorities
        case 79: return 1;                      // global L1
        case 80: return 1;                      // local L1
        case 81: return 233472;                 // shared memory per SM
        case 82: return 65536;                  // registers per SM
        case 87: return 2;                      // single/double perf ratio
        case 90: return 1;                      // compute preemption
        case 91: return 1;                      // host pointer usable for registered memory
        case 97: return int(kSharedOptin);      // shared memory per block, opt-in
        case 99: return 1;                      // host register
        case 106: return 32;                    // blocks per SM
        case 111: return 1024;                  // reserved shared memory per block
        case 115: return 1;                     // memory pools
        case 126: return 4;                     // memory sync domains
        default: return 0;                      // a feature this emulator does not have
    }
}

// ---- Error texts -------------------------------------------------------------------------------------------

struct ErrorText {
    int code;
    const char* name;
    const char* text;
};
const ErrorText kErrors[] = {
    {0, "CUDA_SUCCESS", "no error"},
    {1, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {3, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {4, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {5, "CUDA_ERROR_PROFILER_DISABLED", "profiler disabled while using external profiling tool"},
    {6, "CUDA_ERROR_PROFILER_NOT_INITIALIZED", "profiler not initialized"},
    {7, "CUDA_ERROR_PROFILER_ALREADY_STARTED", "profiler already started"},
    {8, "CUDA_ERROR_PROFILER_ALREADY_STOPPED", "profiler already stopped"},
    {34, "CUDA_ERROR_STUB_LIBRARY", "CUDA driver is a stub library"},
    {36, "CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER", "the call requires a newer driver"},
    {46, "CUDA_ERROR_DEVICE_UNAVAILABLE", "CUDA-capable device(s) is/are busy or unavailable"},
    {100, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {101, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {102, "CUDA_ERROR_DEVICE_NOT_LICENSED", "device doesn't have valid Grid license"},
    {200, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {201, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {202, "CUDA_ERROR_CONTEXT_ALREADY_CURRENT", "context already current"},
    {205, "CUDA_ERROR_MAP_FAILED", "mapping of buffer object failed"},
    {206, "CUDA_ERROR_UNMAP_FAILED", "unmapping of buffer object failed"},
    {207, "CUDA_ERROR_ARRAY_IS_MAPPED", "array is mapped"},
    {208, "CUDA_ERROR_ALREADY_MAPPED", "resource already mapped"},
    {209, "CUDA_ERROR_NO_BINARY_FOR_GPU", "no kernel image is available for execution on the device"},
    {210, "CUDA_ERROR_ALREADY_ACQUIRED", "resource already acquired"},
    {211, "CUDA_ERROR_NOT_MAPPED", "resource not mapped"},
    {212, "CUDA_ERROR_NOT_MAPPED_AS_ARRAY", "resource not mapped as array"},
    {213, "CUDA_ERROR_NOT_MAPPED_AS_POINTER", "resource not mapped as pointer"},
    {214, "CUDA_ERROR_ECC_UNCORRECTABLE", "uncorrectable ECC error encountered"},
    {215, "CUDA_ERROR_UNSUPPORTED_LIMIT", "limit is not supported on this architecture"},
    {216, "CUDA_ERROR_CONTEXT_ALREADY_IN_USE", "exclusive-thread device already in use by a different thread"},
    {217, "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED", "peer access is not supported between these two devices"},
    {218, "CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"},
    {219, "CUDA_ERROR_INVALID_GRAPHICS_CONTEXT", "invalid OpenGL or DirectX context"},
    {220, "CUDA_ERROR_NVLINK_UNCORRECTABLE", "uncorrectable NVLink error detected during the execution"},
    {221, "CUDA_ERROR_JIT_COMPILER_NOT_FOUND", "PTX JIT compiler library not found"},
    {222, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION", "the provided PTX was compiled with an unsupported toolchain"},
    {223, "CUDA_ERROR_JIT_COMPILATION_DISABLED", "PTX JIT compilation was disabled"},
    {224, "CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY", "the provided execution affinity is not supported"},
    {225, "CUDA_ERROR_UNSUPPORTED_DEVSIDE_SYNC", "the provided PTX contains unsupported call to cudaDeviceSynchronize"},
    {226, "CUDA_ERROR_CONTAINED", "an exception occurred on the device that is now contained by the GPU's error containment capability"},
    {300, "CUDA_ERROR_INVALID_SOURCE", "device kernel image is invalid"},
    {301, "CUDA_ERROR_FILE_NOT_FOUND", "file not found"},
    {302, "CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND", "shared object symbol not found"},
    {303, "CUDA_ERROR_SHARED_OBJECT_INIT_FAILED", "shared object initialization failed"},
    {304, "CUDA_ERROR_OPERATING_SYSTEM", "OS call failed or operation not supported on this OS"},
    {400, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {401, "CUDA_ERROR_ILLEGAL_STATE", "the operation cannot be performed in the present state"},
    {402, "CUDA_ERROR_LOSSY_QUERY", "attempted introspection would be semantically lossy"},
    {500, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {600, "CUDA_ERROR_NOT_READY", "device not ready"},
    {700, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", "too many resources requested for launch"},
    {702, "CUDA_ERROR_LAUNCH_TIMEOUT", "the launch timed out and was terminated"},
    {703, "CUDA_ERROR_LAUNCH_INCOMPATIBLE_TEXTURING", "launch uses incompatible texturing mode"},
    {704, "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED", "peer access is already enabled"},
    {705, "CUDA_ERROR_PEER_ACCESS_NOT_ENABLED", "peer access has not been enabled"},
    {708, "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE", "cannot set while device is active in this process"},
    {709, "CUDA_ERROR_CONTEXT_IS_DESTROYED", "context is destroyed"},
    {710, "CUDA_ERROR_ASSERT", "device-side assert triggered"},
    {711, "CUDA_ERROR_TOO_MANY_PEERS", "peer mapping resources exhausted"},
    {712, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED", "part or all of the requested memory range is already mapped"},
    {713, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED", "pointer does not correspond to a registered memory region"},
    {714, "CUDA_ERROR_HARDWARE_STACK_ERROR", "hardware stack error"},
    {715, "CUDA_ERROR_ILLEGAL_INSTRUCTION", "an illegal instruction was encountered"},
    {716, "CUDA_ERROR_MISALIGNED_ADDRESS", "misaligned address"},
    {717, "CUDA_ERROR_INVALID_ADDRESS_SPACE", "operation not supported on global/shared address space"},
    {718, "CUDA_ERROR_INVALID_PC", "invalid program counter"},
    {719, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {720, "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE", "too many blocks in cooperative launch"},
    {721, "CUDA_ERROR_TENSOR_MEMORY_LEAK", "tensor memory not completely freed"},
    {800, "CUDA_ERROR_NOT_PERMITTED", "operation not permitted"},
    {801, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {802, "CUDA_ERROR_SYSTEM_NOT_READY", "system not yet initialized"},
    {803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH", "system has unsupported display driver / cuda driver combination"},
    {804, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", "forward compatibility was attempted on non supported HW"},
    {805, "CUDA_ERROR_MPS_CONNECTION_FAILED", "MPS client failed to connect to the MPS control daemon or the MPS server"},
    {806, "CUDA_ERROR_MPS_RPC_FAILURE", "the remote procedural call between the MPS server and the MPS client failed"},
    {807, "CUDA_ERROR_MPS_SERVER_NOT_READY", "MPS server is not ready to accept new MPS client requests"},
    {808, "CUDA_ERROR_MPS_MAX_CLIENTS_REACHED", "the hardware resources required to create MPS client have been exhausted"},
    {809, "CUDA_ERROR_MPS_MAX_CONNECTIONS_REACHED", "the hardware resources required to support device connections have been exhausted"},
    {810, "CUDA_ERROR_MPS_CLIENT_TERMINATED", "the MPS client has been terminated by the server"},
    {811, "CUDA_ERROR_CDP_NOT_SUPPORTED", "the module is using CUDA Dynamic Parallelism, but the current configuration does not support it"},
    {812, "CUDA_ERROR_CDP_VERSION_MISMATCH", "the module uses an unsupported version of CUDA Dynamic Parallelism"},
    {900, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED", "operation not permitted when stream is capturing"},
    {901, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED", "operation failed due to a previous error during capture"},
    {902, "CUDA_ERROR_STREAM_CAPTURE_MERGE", "operation would result in a merge of separate capture sequences"},
    {903, "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED", "capture was not ended in the same stream as it began"},
    {904, "CUDA_ERROR_STREAM_CAPTURE_UNJOINED", "capturing stream has unjoined work"},
    {905, "CUDA_ERROR_STREAM_CAPTURE_ISOLATION", "dependency created on uncaptured work in another stream"},
    {906, "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT", "operation would make the legacy stream depend on a capturing blocking stream"},
    {907, "CUDA_ERROR_CAPTURED_EVENT", "operation not permitted on an event last recorded in a capturing stream"},
    {908, "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD", "attempt to terminate a thread-local capture sequence from another thread"},
    {909, "CUDA_ERROR_TIMEOUT", "wait operation timed out"},
    {910, "CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE", "the graph update was not performed because it included changes which violated constraints specific to instantiated graph update"},
    {911, "CUDA_ERROR_EXTERNAL_DEVICE", "an async error has occurred in a device outside of CUDA"},
    {912, "CUDA_ERROR_INVALID_CLUSTER_SIZE", "a kernel launch error has occurred due to cluster misconfiguration"},
    {913, "CUDA_ERROR_FUNCTION_NOT_LOADED", "the function handle is not loaded when calling an API that requires a loaded function"},
    {914, "CUDA_ERROR_INVALID_RESOURCE_TYPE", "one or more resources passed in are not valid resource types for the operation"},
    {915, "CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION", "one or more resources are insufficient or non-applicable for the operation"},
    {916, "CUDA_ERROR_KEY_ROTATION", "an error happened during the key rotation sequence"},
    {999, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

const ErrorText* error_entry(int code) {
    for (const ErrorText& e : kErrors)
        if (e.code == code) return &e;
    return nullptr;
}

// The text cuGetErrorString gives for a code, when the emulator knows more than the code says (a refused
// launch, a missing host build, the sticky finding). Strings are never freed: a caller may still hold one.
std::atomic<const char*> g_error_text[1000];
// The first failure of queued work: from then on every synchronising call and every new piece of work fails.
std::atomic<int> g_sticky{0};
std::mutex g_sticky_mutex;

// An error the emulator explains: printed once to stderr and kept for cuGetErrorString.
CUresult explain(CUresult code, const std::string& text) {
    fprintf(stderr, "hourglass emulator: %s\n", text.c_str());
    if (code > 0 && code < 1000 && code != g_sticky.load()) g_error_text[code] = strdup(text.c_str());
    return code;
}

// An error with the driver's own text (clears an explanation left by an earlier error of that code).
CUresult plain(CUresult code) {
    if (code > 0 && code < 1000 && code != g_sticky.load()) g_error_text[code] = nullptr;
    return code;
}

void set_sticky(int code, const char* text) {
    std::lock_guard<std::mutex> lock(g_sticky_mutex);
    if (g_sticky.load() != 0) return;
    if (code <= 0 || code >= 1000) code = CUDA_ERROR_LAUNCH_FAILED;
    fprintf(stderr, "hourglass emulator: %s\n", text);
    g_error_text[code] = strdup(text);
    g_sticky = code;
}

// A sanitizer finding names its check first; memcheck is an illegal address, anything else a launch failure.
int finding_code(const char* msg) {
    return strncmp(msg, "memcheck", 8) == 0 ? CUDA_ERROR_ILLEGAL_ADDRESS : CUDA_ERROR_LAUNCH_FAILED;
}

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

// ---- Streams, work, events, captures -------------------------------------------------------------------------

// One piece of device work. `run` may run more than once (a graph node is replayed).
struct Node {
    std::string what;
    std::function<int(char* msg, size_t msg_len)> run;
    bool device = true;  // touches memory (serialised with all other device work); false: a wait, a timestamp
};
using NodePtr = std::shared_ptr<const Node>;

struct Capture;
struct GraphAlloc;

}  // namespace

struct CUstream_st {
    unsigned flags = 0;
    int priority = 0;
    bool legacy = false;
    std::deque<std::pair<uint64_t, NodePtr>> queue;
    uint64_t submitted = 0, completed = 0;
    bool destroyed = false;
    std::condition_variable work;
    Capture* capture = nullptr;
};

struct CUevent_st {
    unsigned flags = 0;
    std::shared_ptr<CUstream_st> stream;  // where it was last recorded (outside a capture)
    uint64_t seq = 0;                     // ... and the stream's position then
    uint64_t generation = 0;              // re-recording makes an earlier record's timestamp moot
    bool stamped = false;
    std::chrono::steady_clock::time_point when;
    uint64_t capture_id = 0;  // nonzero: last recorded in that capture
};

namespace {

struct Capture {
    uint64_t id;
    CUstream_st* stream;
    int mode;
    std::thread::id thread;
    bool invalidated = false;
    std::vector<NodePtr> nodes;
    std::vector<std::shared_ptr<GraphAlloc>> allocs;
};

// State guarded by g.mutex: queues, sequence numbers, events, captures, handle sets.
struct Global {
    std::mutex mutex;
    std::condition_variable progress;  // some stream completed work
    std::map<CUstream_st*, std::shared_ptr<CUstream_st>> streams;
    std::shared_ptr<CUstream_st> legacy;
    std::set<CUevent_st*> events;
    std::vector<Capture*> captures;
    uint64_t next_capture_id = 1;
    std::mutex device;  // held while device work runs: one op at a time across streams
};
Global& g = *new Global;  // never destroyed: workers may outlive static destructors

thread_local int t_capture_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;

void worker(std::shared_ptr<CUstream_st> s) {
    // Not thread_local: libcuda.so's TLS must stay small (runtime.cpp uses the initial-exec model).
    std::vector<char> buffer(16384);
    char* msg = buffer.data();
    std::unique_lock<std::mutex> lock(g.mutex);
    for (;;) {
        s->work.wait(lock, [&] { return !s->queue.empty() || s->destroyed; });
        if (s->queue.empty()) return;
        auto [seq, node] = s->queue.front();
        s->queue.pop_front();
        lock.unlock();
        if (!node->device || g_sticky.load() == 0) {
            msg[0] = 0;
            int rc;
            if (node->device) {
                std::lock_guard<std::mutex> device(g.device);
                rc = node->run(msg, buffer.size());
            } else {
                rc = node->run(msg, buffer.size());
            }
            if (rc != 0) set_sticky(rc, msg[0] ? msg : (node->what + " failed").c_str());
        }
        node.reset();
        lock.lock();
        s->completed = seq;
        g.progress.notify_all();
    }
}

std::shared_ptr<CUstream_st> new_stream(unsigned flags, int priority, bool legacy) {
    auto s = std::make_shared<CUstream_st>();
    s->flags = flags;
    s->priority = priority;
    s->legacy = legacy;
    std::thread(worker, s).detach();
    return s;
}

// The stream a handle names (NULL, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD: the legacy stream). Needs g.mutex.
std::shared_ptr<CUstream_st> stream_of(CUstream_st* h) {
    if (h == nullptr || h == reinterpret_cast<CUstream_st*>(1) || h == reinterpret_cast<CUstream_st*>(2))
        return g.legacy;
    auto it = g.streams.find(h);
    return it == g.streams.end() ? nullptr : it->second;
}

// Queues a node (g.mutex held). The legacy stream waits for all blocking streams and they for it.
void push(const std::shared_ptr<CUstream_st>& s, NodePtr node);

void push_wait(const std::shared_ptr<CUstream_st>& s, const std::shared_ptr<CUstream_st>& on, uint64_t seq) {
    auto wait = std::make_shared<Node>();
    wait->what = "stream wait";
    wait->device = false;
    wait->run = [on, seq](char*, size_t) {
        std::unique_lock<std::mutex> lock(g.mutex);
        g.progress.wait(lock, [&] { return on->completed >= seq; });
        return 0;
    };
    s->queue.emplace_back(++s->submitted, std::move(wait));
}

void push(const std::shared_ptr<CUstream_st>& s, NodePtr node) {
    if (s->legacy) {
        for (auto& [h, other] : g.streams)
            if (!(other->flags & CU_STREAM_NON_BLOCKING) && other->completed < other->submitted)
                push_wait(s, other, other->submitted);
    } else if (!(s->flags & CU_STREAM_NON_BLOCKING) && g.legacy->completed < g.legacy->submitted) {
        push_wait(s, g.legacy, g.legacy->submitted);
    }
    s->queue.emplace_back(++s->submitted, std::move(node));
    s->work.notify_one();
}

void wait_for(const std::shared_ptr<CUstream_st>& s, uint64_t seq, std::unique_lock<std::mutex>& lock) {
    g.progress.wait(lock, [&] { return s->completed >= seq; });
}

// Whether the calling thread may not make "potentially unsafe" calls because of an ongoing capture; if so,
// those captures are invalidated and the refusal explained.
CUresult refuse_if_capturing(const char* api) {
    std::lock_guard<std::mutex> lock(g.mutex);
    if (t_capture_mode == CU_STREAM_CAPTURE_MODE_RELAXED) return CUDA_SUCCESS;
    std::vector<Capture*> hit;
    for (Capture* c : g.captures) {
        bool mine = c->thread == std::this_thread::get_id();
        if ((mine && c->mode != CU_STREAM_CAPTURE_MODE_RELAXED) ||
            (!mine && c->mode == CU_STREAM_CAPTURE_MODE_GLOBAL && t_capture_mode == CU_STREAM_CAPTURE_MODE_GLOBAL))
            hit.push_back(c);
    }
    if (hit.empty()) return CUDA_SUCCESS;
    for (Capture* c : hit) c->invalidated = true;
    return explain(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                   format("%s refused: stream %p is being captured (%s mode), which forbids it; the capture is "
                          "invalidated",
                          api, static_cast<void*>(hit[0]->stream),
                          hit[0]->mode == CU_STREAM_CAPTURE_MODE_GLOBAL ? "global" : "thread-local"));
}

// An operation that may not be captured: invalidates the capture of `s` (g.mutex held).
CUresult refuse_in_capture(CUstream_st* s, const std::string& why) {
    s->capture->invalidated = true;
    return explain(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                   format("%s refused: stream %p is being captured; the capture is invalidated", why.c_str(),
                          static_cast<void*>(s)));
}

// Queues `node` on stream `h`, or records it while `h` is captured. The usual entry point for device work.
CUresult enqueue(CUstream_st* h, NodePtr node, uint64_t* seq_out = nullptr) {
    if (int sticky = g_sticky.load()) return sticky;
    std::lock_guard<std::mutex> lock(g.mutex);
    auto s = stream_of(h);
    if (!s) return plain(CUDA_ERROR_INVALID_HANDLE);
    if (s->capture) {
        if (s->capture->invalidated) return plain(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        s->capture->nodes.push_back(std::move(node));
        return CUDA_SUCCESS;
    }
    push(s, std::move(node));
    if (seq_out) *seq_out = s->submitted;
    return CUDA_SUCCESS;
}

// Waits until the work queued on `h` so far has run; returns the sticky error if any.
CUresult drain(CUstream_st* h) {
    std::unique_lock<std::mutex> lock(g.mutex);
    auto s = stream_of(h);
    if (!s) return plain(CUDA_ERROR_INVALID_HANDLE);
    wait_for(s, s->submitted, lock);
    return g_sticky.load();
}

// Queues on `h` and waits for it: the synchronous calls.
CUresult run_sync(CUstream_st* h, NodePtr node) {
    uint64_t seq = 0;
    if (CUresult rc = enqueue(h, std::move(node), &seq)) return rc;
    std::unique_lock<std::mutex> lock(g.mutex);
    auto s = stream_of(h);
    if (s) wait_for(s, seq, lock);
    return g_sticky.load();
}

NodePtr make_node(std::string what, std::function<int(char*, size_t)> run, bool device = true) {
    auto n = std::make_shared<Node>();
    n->what = std::move(what);
    n->run = std::move(run);
    n->device = device;
    return n;
}

// ---- Memory -------------------------------------------------------------------------------------------------

enum BlockKind { kSync, kPool, kGraph, kPinned, kRegistered };

struct Block {
    void* base = nullptr;
    size_t size = 0;    // as asked
    size_t mapped = 0;  // backing bytes (0: registered memory, not ours)
    BlockKind kind = kSync;
    bool free_pending = false;  // a stream-ordered free is queued
};

// A graph allocation: its address is fixed at capture; each replay's alloc node makes the region live, the
// free node (in the graph or after it) ends it. The backing lives as long as a graph or a live region needs it.
struct GraphAlloc {
    Block block;
    bool live = false;         // device view: the alloc node ran and no free has yet
    bool outstanding = false;  // host view: launched and not freed (a relaunch must wait for a free)
    bool freed_in_graph = false;
    ~GraphAlloc();
};

struct Memory {
    std::mutex mutex;
    size_t total = 0;
    std::map<uintptr_t, Block> device;  // cuMemAlloc and pool allocations, by base
    std::map<uintptr_t, Block> host;    // pinned and registered host memory
    std::map<uintptr_t, std::shared_ptr<GraphAlloc>> graph;  // graph allocations not yet freed after a launch
    std::deque<Block> quarantine;
    size_t quarantined = 0;
    size_t sync_used = 0;
    // The default pool.
    size_t pool_used = 0, pool_used_high = 0, pool_cached = 0, pool_reserved_high = 0;
    uint64_t release_threshold = 0;
    int reuse[4] = {0, 1, 1, 1};
    // Graph allocations.
    size_t graph_used = 0, graph_used_high = 0, graph_reserved_high = 0;

    size_t pool_reserved() const { return pool_used + pool_cached; }
    size_t in_use() const { return sync_used + pool_reserved() + graph_used; }
    void note_highs() {
        pool_used_high = std::max(pool_used_high, pool_used);
        pool_reserved_high = std::max(pool_reserved_high, pool_reserved());
        graph_used_high = std::max(graph_used_high, graph_used);
        graph_reserved_high = std::max(graph_reserved_high, graph_used);
    }
    // What the pool gives back to the system at a synchronisation point: everything above the threshold.
    void release_to_threshold() {
        if (pool_reserved() > release_threshold)
            pool_cached -= std::min(pool_cached, pool_reserved() - release_threshold);
    }
};
Memory& mem = *new Memory;

size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

void release_backing(const Block& b) {
    if (b.mapped >= (64u << 10))
        munmap(b.base, b.mapped);
    else if (b.mapped)
        free(b.base);
}

// Freed memory is kept mapped for a while, so that a late access is reported as a use after free of that
// allocation rather than landing in a newer one.
void quarantine(const Block& b) {
    std::vector<Block> evicted;
    {
        std::lock_guard<std::mutex> lock(mem.mutex);
        mem.quarantine.push_back(b);
        mem.quarantined += b.mapped;
        while (mem.quarantined > kQuarantineBytes && !mem.quarantine.empty()) {
            evicted.push_back(mem.quarantine.front());
            mem.quarantined -= mem.quarantine.front().mapped;
            mem.quarantine.pop_front();
        }
    }
    for (const Block& e : evicted) release_backing(e);
}

// Backing for `size` bytes, 256-byte aligned and zeroed; large ones mapped lazily.
void* new_backing(size_t size, size_t* mapped) {
    size_t bytes = round_up(std::max<size_t>(size, 1), kAlign);
    void* p;
    if (bytes >= (64u << 10)) {
        p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return nullptr;
    } else {
        p = aligned_alloc(kAlign, bytes);
        if (!p) return nullptr;
        memset(p, 0, bytes);
    }
    *mapped = bytes;
    return p;
}

const char* region_name(BlockKind k) {
    switch (k) {
        case kSync: return "cuMemAlloc allocation";
        case kPool: return "cuMemAllocAsync allocation";
        case kGraph: return "graph allocation (cuMemAllocAsync during capture)";
        case kPinned: return "pinned host allocation (cuMemHostAlloc)";
        case kRegistered: return "registered host memory (cuMemHostRegister)";
    }
    return "allocation";
}

GraphAlloc::~GraphAlloc() {
    if (live) hgemu_region_remove(block.base);
    {
        std::lock_guard<std::mutex> lock(mem.mutex);
        mem.graph_used -= block.mapped;
    }
    quarantine(block);
}

// A device allocation of `size` bytes (sync or pool), registered with the sanitizer at once.
CUresult alloc_device(CUdeviceptr* dptr, size_t size, BlockKind kind) {
    if (!dptr) return plain(CUDA_ERROR_INVALID_VALUE);
    Block b;
    b.size = size;
    b.kind = kind;
    {
        std::lock_guard<std::mutex> lock(mem.mutex);
        size_t reuse = kind == kPool ? std::min(mem.pool_cached, size) : 0;
        if (mem.in_use() - reuse + size > mem.total) return plain(CUDA_ERROR_OUT_OF_MEMORY);
    }
    b.base = new_backing(size, &b.mapped);
    if (!b.base) return plain(CUDA_ERROR_OUT_OF_MEMORY);
    if (size) hgemu_region_add(b.base, size, HG_REGION_DEVICE, region_name(kind));
    {
        std::lock_guard<std::mutex> lock(mem.mutex);
        if (kind == kPool) {
            // A pool serves from what it holds before it grows.
            mem.pool_cached -= std::min(mem.pool_cached, size);
            mem.pool_used += size;
        } else {
            mem.sync_used += size;
        }
        mem.note_highs();
        mem.device[reinterpret_cast<uintptr_t>(b.base)] = b;
    }
    *dptr = reinterpret_cast<CUdeviceptr>(b.base);
    return CUDA_SUCCESS;
}

// Ends a device allocation (on the stream's worker for a stream-ordered free).
void end_device_block(uintptr_t base) {
    Block b;
    {
        std::lock_guard<std::mutex> lock(mem.mutex);
        auto it = mem.device.find(base);
        if (it == mem.device.end()) return;
        b = it->second;
        mem.device.erase(it);
        if (b.kind == kPool) {
            mem.pool_used -= b.size;
            mem.pool_cached += b.size;
        } else {
            mem.sync_used -= b.size;
        }
    }
    if (b.size) hgemu_region_remove(b.base);
    quarantine(b);
}

// A graph allocation ended by a free node or a free after the launch.
void end_graph_alloc(const std::shared_ptr<GraphAlloc>& a) {
    if (a->live) {
        hgemu_region_remove(a->block.base);
        a->live = false;
    }
}

// The pinned (or registered) host block that holds [p, p+n), if any.
bool is_pinned(const void* p, size_t n) {
    std::lock_guard<std::mutex> lock(mem.mutex);
    auto it = mem.host.upper_bound(reinterpret_cast<uintptr_t>(p));
    if (it == mem.host.begin()) return false;
    --it;
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    return a >= it->first && a + n <= it->first + it->second.size;
}

// The device side of a copy or memset, as a finding when it is not inside one live allocation.
int check_device(const void* p, size_t n, bool write, const std::string& what, char* msg, size_t len) {
    char detail[2048];
    if (hgemu_check_range(p, n, write ? 1 : 0, 0, detail, sizeof detail) == 0) return 0;
    snprintf(msg, len, "%s (%s %zu bytes at %p)", detail, what.c_str(), n, p);
    return CUDA_ERROR_ILLEGAL_ADDRESS;
}

// ---- Modules ------------------------------------------------------------------------------------------------

}  // namespace

struct CUfunc_st;

// A loaded module's own copy of its variables. On a GPU every load of a module has its own __constant__ and
// __device__ storage, but a host build has one variable per process: cuModuleGetGlobal hands out the copy, and
// each launch swaps the copy into the host variable and back out (grids run one at a time), so two loads of
// one module (two backends in one process) never see each other's values.
struct ModuleVars {
    struct Var {
        const hg_global_entry* host;
        void* copy;
    };
    std::vector<Var> vars;
    void swap_in() const {
        for (const Var& v : vars) memcpy(v.host->addr, v.copy, v.host->size);
    }
    void swap_out() const {
        for (const Var& v : vars) memcpy(v.copy, v.host->addr, v.host->size);
    }
    ~ModuleVars() {
        for (const Var& v : vars) {
            hgemu_region_remove(v.copy);
            free(v.copy);
        }
    }
};

struct CUmod_st {
    std::string module;  // the kernels/<module>.cu of its host builds
    std::map<std::string, std::unique_ptr<CUfunc_st>> functions;
    std::shared_ptr<ModuleVars> vars = std::make_shared<ModuleVars>();  // held by queued launches too
    std::map<std::string, void*> var_copies;                             // PTX name -> this load's copy
    std::map<std::string, const hg_global_entry*> globals;  // PTX .const/.global names -> host variables
    std::vector<std::string> missing_globals;
    std::set<std::string> hidden_globals;  // not .visible: kernels use them, cuModuleGetGlobal does not find them
    size_t const_bytes = 0;
    int ptx_version = 0;
};

struct CUfunc_st {
    std::string name;
    CUmod_st* module = nullptr;
    const hg_kernel_entry* kernel = nullptr;
    std::vector<unsigned> param_sizes;  // from the PTX
    unsigned max_threads = kMaxThreadsPerBlock;
    unsigned static_shared = 0;
    int max_dynamic_shared = 0;  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    bool dynamic_raised = false;
    int carveout = -1;
};

namespace {

std::mutex g_modules_mutex;
std::set<CUmod_st*>& g_modules = *new std::set<CUmod_st*>;  // all never destroyed, as `g`
std::set<CUfunc_st*>& g_functions = *new std::set<CUfunc_st*>;
std::map<void*, int>& g_global_refs = *new std::map<void*, int>;  // module variables registered as regions, by address: loads using them
// Each host variable's value before any launch could change it: what a newly loaded module's copy starts as.
std::map<const hg_global_entry*, std::vector<unsigned char>>& g_initial_values =
    *new std::map<const hg_global_entry*, std::vector<unsigned char>>;

bool ident_char(char c) { return isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$'; }

std::string strip_comments(const char* text) {
    std::string out;
    for (const char* p = text; *p;) {
        if (p[0] == '/' && p[1] == '/') {
            while (*p && *p != '\n') ++p;
        } else if (p[0] == '/' && p[1] == '*') {
            const char* e = strstr(p + 2, "*/");
            p = e ? e + 2 : p + strlen(p);
            out += ' ';
        } else if (*p == '"') {
            out += *p++;
            while (*p && *p != '"') out += *p++;
            if (*p) out += *p++;
        } else {
            out += *p++;
        }
    }
    return out;
}

std::vector<std::string> words(const std::string& s) {
    std::vector<std::string> w;
    size_t i = 0;
    while (i < s.size()) {
        while (i < s.size() && (isspace(static_cast<unsigned char>(s[i])) || s[i] == ',')) ++i;
        size_t j = i;
        while (j < s.size() && !isspace(static_cast<unsigned char>(s[j])) && s[j] != ',') ++j;
        if (j > i) w.push_back(s.substr(i, j - i));
        i = j;
    }
    return w;
}

unsigned type_bytes(const std::string& t) {
    static const std::map<std::string, unsigned> sizes = {
        {".b8", 1},  {".u8", 1},  {".s8", 1},  {".b16", 2}, {".u16", 2}, {".s16", 2}, {".f16", 2},
        {".bf16", 2}, {".b32", 4}, {".u32", 4}, {".s32", 4}, {".f32", 4}, {".f16x2", 4}, {".bf16x2", 4},
        {".b64", 8}, {".u64", 8}, {".s64", 8}, {".f64", 8}, {".b128", 16}, {".pred", 1},
    };
    auto it = sizes.find(t);
    return it == sizes.end() ? 0 : it->second;
}

// A variable declaration `[.extern] .space [.align A] .type NAME[N]...[= init]`: name, size (0 for `[]`),
// alignment (the element size when not given).
struct Decl {
    std::string name;
    size_t size = 0;
    size_t align = 0;
    bool is_extern = false;
    bool unsized = false;
    bool visible = false;  // `.visible`: a symbol the driver finds by name
};

bool parse_decl(const std::string& stmt, Decl* d) {
    std::string s = stmt.substr(0, stmt.find('='));
    std::vector<std::string> w = words(s);
    unsigned elem = 0;
    size_t i = 0;
    for (; i < w.size(); ++i) {
        if (w[i] == ".extern") d->is_extern = true;
        if (w[i] == ".visible") d->visible = true;
        if (w[i] == ".align" && i + 1 < w.size()) d->align = strtoul(w[++i].c_str(), nullptr, 10);
        else if (unsigned b = type_bytes(w[i])) {
            elem = b;
            ++i;
            break;
        }
    }
    if (!elem || i >= w.size()) return false;
    // The name (with any [N]) follows the type; state spaces and attributes (.ptr .global .align 16) may come
    // between.
    std::string rest;
    for (; i < w.size(); ++i) {
        if (w[i] == ".align") ++i;
        else if (w[i][0] != '.') rest += w[i];
    }
    size_t br = rest.find('[');
    d->name = rest.substr(0, br);
    size_t count = 1;
    while (br != std::string::npos) {
        size_t close = rest.find(']', br);
        if (close == std::string::npos) return false;
        std::string n = rest.substr(br + 1, close - br - 1);
        if (n.empty()) d->unsized = true;
        else count *= strtoull(n.c_str(), nullptr, 10);
        br = rest.find('[', close);
    }
    d->size = d->unsized ? 0 : elem * count;
    if (!d->align) d->align = elem;
    while (!d->name.empty() && !ident_char(d->name.back())) d->name.pop_back();
    return !d->name.empty();
}

bool mentions(const std::string& body, const std::string& name) {
    for (size_t at = body.find(name); at != std::string::npos; at = body.find(name, at + 1)) {
        bool before = at == 0 || !ident_char(body[at - 1]);
        bool after = at + name.size() >= body.size() || !ident_char(body[at + name.size()]);
        if (before && after) return true;
    }
    return false;
}

// What loading a PTX module needs to know of each .entry.
struct PtxEntry {
    std::string name;
    std::vector<std::pair<std::string, unsigned>> params;
    unsigned max_threads = 0;  // 0: no .maxntid / .reqntid
    unsigned static_shared = 0;
};
struct PtxModule {
    int version = 0;
    int target = 0;  // .target sm_XX, as XX
    std::vector<PtxEntry> entries;
    std::vector<Decl> variables;  // .const and .global
};

// The parameters of `.entry NAME( ... )`.
bool parse_params(const std::string& list, PtxEntry* e, std::string* err) {
    size_t start = 0;
    int depth = 0;
    for (size_t i = 0; i <= list.size(); ++i) {
        if (i < list.size() && list[i] == '[') ++depth;
        if (i < list.size() && list[i] == ']') --depth;
        if (i < list.size() && !(list[i] == ',' && depth == 0)) continue;
        std::string p = list.substr(start, i - start);
        start = i + 1;
        if (p.find_first_not_of(" \t\r\n") == std::string::npos) continue;
        Decl d;
        if (!parse_decl(p, &d)) {
            *err = format(".entry %s: cannot read parameter \"%s\"", e->name.c_str(), p.c_str());
            return false;
        }
        e->params.emplace_back(d.name, unsigned(d.size));
    }
    return true;
}

bool parse_ptx(const char* image, PtxModule* m, std::string* err) {
    std::string text = strip_comments(image);
    // Directives without a semicolon (.version, .target, .address_size) are read on their own.
    size_t version = text.find(".version");
    if (version != std::string::npos) m->version = int(strtod(text.c_str() + version + 8, nullptr) * 10 + 0.5);
    size_t target = text.find(".target sm_");
    if (target != std::string::npos) m->target = atoi(text.c_str() + target + 11);
    std::vector<Decl> shared;      // module-scope .shared, in order
    std::vector<Decl> dyn_shared;  // module-scope .extern .shared NAME[]
    struct Body {
        std::string header, body;
    };
    std::vector<Body> functions;
    std::string cur;
    int depth = 0;
    for (char c : text) {
        cur += c;
        if (c == '{') ++depth;
        if (c == '}') {
            --depth;
            size_t open = cur.find('{');
            std::string head = cur.substr(0, open);
            bool is_function = head.find(".entry") != std::string::npos || head.find(".func") != std::string::npos;
            if (depth == 0 && is_function && head.find('=') == std::string::npos) {
                functions.push_back({cur.substr(0, open), cur.substr(open)});
                cur.clear();
            }
        }
        if (c == ';' && depth == 0) {
            std::string stmt = cur.substr(0, cur.size() - 1);
            cur.clear();
            std::vector<std::string> w = words(stmt);
            if (w.empty()) continue;
            bool is_shared = false, is_var = false;
            for (const std::string& x : w) {
                if (x == ".shared") is_shared = true;
                if (x == ".const" || x == ".global") is_var = true;
                if (x == ".func" || x == ".entry") is_shared = is_var = false;
            }
            Decl d;
            if ((is_shared || is_var) && parse_decl(stmt, &d)) {
                if (is_shared) (d.is_extern || d.unsized ? dyn_shared : shared).push_back(d);
                else m->variables.push_back(d);
            }
        }
    }
    for (const Body& f : functions) {
        size_t at = f.header.find(".entry");
        if (at == std::string::npos) continue;
        PtxEntry e;
        size_t name_start = at + 6;
        while (name_start < f.header.size() && isspace(static_cast<unsigned char>(f.header[name_start]))) ++name_start;
        size_t name_end = name_start;
        while (name_end < f.header.size() && ident_char(f.header[name_end])) ++name_end;
        e.name = f.header.substr(name_start, name_end - name_start);
        size_t open = f.header.find('(', name_end);
        size_t close = open == std::string::npos ? std::string::npos : f.header.find(')', open);
        if (e.name.empty() || close == std::string::npos) {
            *err = "cannot read an .entry header: " + f.header.substr(at, 80);
            return false;
        }
        if (!parse_params(f.header.substr(open + 1, close - open - 1), &e, err)) return false;
        std::vector<std::string> dirs = words(f.header.substr(close + 1));
        for (size_t i = 0; i < dirs.size(); ++i) {
            if (dirs[i] != ".maxntid" && dirs[i] != ".reqntid") continue;
            unsigned n = 1;
            for (size_t k = i + 1; k < dirs.size() && k <= i + 3 && isdigit(static_cast<unsigned char>(dirs[k][0])); ++k)
                n *= unsigned(strtoul(dirs[k].c_str(), nullptr, 10));
            e.max_threads = e.max_threads ? std::min(e.max_threads, n) : n;
        }
        // Static shared memory: the module's .shared variables this entry names and its own, laid out as ptxas
        // does (largest alignment first), then padded to the dynamic buffer's alignment when it uses one.
        std::vector<Decl> used;
        for (const Decl& d : shared)
            if (mentions(f.body, d.name)) used.push_back(d);
        for (size_t p = f.body.find(".shared"); p != std::string::npos; p = f.body.find(".shared", p + 1)) {
            // A declaration, not an instruction's state space (st.shared): nothing is attached before it.
            if (p > 0 && !isspace(static_cast<unsigned char>(f.body[p - 1])) && f.body[p - 1] != ';' &&
                f.body[p - 1] != '{' && f.body[p - 1] != '}')
                continue;
            size_t end = f.body.find(';', p);
            Decl d;
            if (end != std::string::npos && parse_decl(f.body.substr(p, end - p), &d) && !d.unsized) used.push_back(d);
        }
        std::stable_sort(used.begin(), used.end(), [](const Decl& a, const Decl& b) { return a.align > b.align; });
        size_t offset = 0;
        for (const Decl& d : used) offset = round_up(offset, std::max<size_t>(d.align, 1)) + d.size;
        for (const Decl& d : dyn_shared)
            if (offset && mentions(f.body, d.name)) offset = round_up(offset, std::max<size_t>(d.align, 1));
        e.static_shared = unsigned(offset);
        m->entries.push_back(std::move(e));
    }
    return true;
}

// A cubin (ELF, EM_CUDA): what loading needs, as parse_ptx reads it from PTX. Entries are the FUNC symbols marked
// as entries (st_other bit 0x10), their parameters the EIATTR_KPARAM_INFO records of `.nv.info.<entry>`, their
// thread limit EIATTR_MAX_THREADS, their static shared memory the size of `.nv.shared.<entry>` less the 1 KiB
// that sm_90 and later reserve in it (device attribute 111: ptxas reports and the driver checks the rest);
// variables are the OBJECT symbols of the constant and global sections, visible when bound GLOBAL. `arch` is
// the SM the code is for (e_flags, ELF ABI version 8).
bool parse_cubin(const unsigned char* image, PtxModule* m, unsigned* arch, std::string* err) {
    const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(image);
    if (eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_machine != 190 || eh->e_ident[EI_ABIVERSION] != 8 ||
        eh->e_shentsize != sizeof(Elf64_Shdr) || eh->e_shstrndx >= eh->e_shnum) {
        *err = "not a 64-bit CUDA ELF of ABI version 8";
        return false;
    }
    *arch = (eh->e_flags >> 8) & 0xff;
    const auto* sections = reinterpret_cast<const Elf64_Shdr*>(image + eh->e_shoff);
    auto text = [&](const Elf64_Shdr& table, size_t at) {
        return std::string(reinterpret_cast<const char*>(image + table.sh_offset + at));
    };
    auto section_name = [&](size_t i) { return text(sections[eh->e_shstrndx], sections[i].sh_name); };
    auto section = [&](const std::string& name) -> const Elf64_Shdr* {
        for (size_t i = 0; i < eh->e_shnum; ++i)
            if (section_name(i) == name) return &sections[i];
        return nullptr;
    };
    const Elf64_Shdr* symtab = section(".symtab");
    if (!symtab || symtab->sh_link >= eh->e_shnum) {
        *err = "no symbol table";
        return false;
    }
    const auto* symbols = reinterpret_cast<const Elf64_Sym*>(image + symtab->sh_offset);
    for (size_t i = 0; i < symtab->sh_size / sizeof(Elf64_Sym); ++i) {
        const Elf64_Sym& sym = symbols[i];
        std::string name = text(sections[symtab->sh_link], sym.st_name);
        if (ELF64_ST_TYPE(sym.st_info) == STT_OBJECT && sym.st_shndx < eh->e_shnum) {
            std::string in = section_name(sym.st_shndx);
            if (in.rfind(".nv.constant3", 0) == 0 || in.rfind(".nv.global", 0) == 0) {
                Decl d;
                d.name = name;
                d.size = sym.st_size;
                d.visible = ELF64_ST_BIND(sym.st_info) == STB_GLOBAL;
                m->variables.push_back(d);
            }
        }
        if (ELF64_ST_TYPE(sym.st_info) != STT_FUNC || !(sym.st_other & 0x10)) continue;
        PtxEntry e;
        e.name = name;
        const Elf64_Shdr* info = section(".nv.info." + name);
        std::map<unsigned, unsigned> param_size;  // ordinal -> bytes
        for (size_t at = 0; info && at + 4 <= info->sh_size;) {
            const unsigned char* record = image + info->sh_offset + at;
            unsigned format = record[0], attribute = record[1], value = record[2] | record[3] << 8;
            at += 4;
            if (format != 0x04) continue;  // EIFMT_SVAL: `value` bytes of payload follow
            const unsigned char* payload = record + 4;
            auto word = [&](size_t k) {
                uint32_t w;
                memcpy(&w, payload + k, 4);
                return w;
            };
            if (attribute == 0x17 && value >= 12)  // EIATTR_KPARAM_INFO: index, ordinal:16, offset:16, flags
                param_size[word(4) & 0xffff] = word(8) >> 18;
            if (attribute == 0x05 && value >= 12)  // EIATTR_MAX_THREADS: x, y, z
                e.max_threads = word(0) * word(4) * word(8);
            at += value;
        }
        for (unsigned k = 0; k < param_size.size(); ++k) {
            auto it = param_size.find(k);
            if (it == param_size.end()) {
                *err = format("%s: no EIATTR_KPARAM_INFO for parameter %u", name.c_str(), k);
                return false;
            }
            e.params.push_back({format("%s_param_%u", name.c_str(), k), it->second});
        }
        if (const Elf64_Shdr* shared = section(".nv.shared." + name)) {
            size_t reserved = *arch >= 90 ? std::min<size_t>(shared->sh_size, size_t(device_attribute(111))) : 0;
            e.static_shared = unsigned(shared->sh_size - reserved);
        }
        m->entries.push_back(std::move(e));
    }
    return true;
}

CUfunc_st* function_of(CUfunc_st* f) {
    std::lock_guard<std::mutex> lock(g_modules_mutex);
    return g_functions.count(f) ? f : nullptr;
}

// ---- Launches -----------------------------------------------------------------------------------------------

CUresult launch(CUfunc_st* f, hg_dim3 grid, hg_dim3 block, unsigned dynamic_shared, CUstream_st* stream,
                void** params, void** extra) {
    if (!f) return plain(CUDA_ERROR_INVALID_HANDLE);
    if (int sticky = g_sticky.load()) return sticky;
    const char* name = f->name.c_str();
    auto refuse = [&](const std::string& why) {
        return explain(CUDA_ERROR_INVALID_VALUE, format("launch of %s refused: %s", name, why.c_str()));
    };
    if (extra && extra[0]) return refuse("kernel parameters through `extra` are not supported by the emulator");
    if (!params && !f->param_sizes.empty()) return refuse("no kernel parameters given");
    unsigned b[3] = {block.x, block.y, block.z}, gr[3] = {grid.x, grid.y, grid.z};
    const char* axis = "xyz";
    for (int i = 0; i < 3; ++i) {
        if (b[i] == 0 || b[i] > kMaxBlock[i])
            return refuse(format("block dimension %c = %u is outside 1..%u", axis[i], b[i], kMaxBlock[i]));
        if (gr[i] == 0 || gr[i] > kMaxGrid[i])
            return refuse(format("grid dimension %c = %u is outside 1..%u", axis[i], gr[i], kMaxGrid[i]));
    }
    unsigned long long threads = 1ull * b[0] * b[1] * b[2];
    if (threads > unsigned(kMaxThreadsPerBlock))
        return refuse(format("a block of %llu threads (%u x %u x %u) exceeds the device's %d", threads, b[0], b[1],
                             b[2], kMaxThreadsPerBlock));
    if (threads > f->max_threads)
        return refuse(format("a block of %llu threads exceeds the kernel's .maxntid (__launch_bounds__) of %u",
                             threads, f->max_threads));
    unsigned total = f->static_shared + dynamic_shared;
    if (!f->dynamic_raised && total > kSharedPerBlock)
        return refuse(format("%u bytes of shared memory (%u static + %u dynamic) exceed the 48 KiB a launch gets "
                             "unless CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES is raised",
                             total, f->static_shared, dynamic_shared));
    if (f->dynamic_raised && int(dynamic_shared) > f->max_dynamic_shared)
        return refuse(format("%u bytes of dynamic shared memory exceed the %d that "
                             "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES allows",
                             dynamic_shared, f->max_dynamic_shared));
    if (total > kSharedOptin)
        return refuse(format("%u bytes of shared memory (%u static + %u dynamic) exceed the device's %u", total,
                             f->static_shared, dynamic_shared, kSharedOptin));

    // The arguments are copied now, as the driver does: the caller may reuse its storage at once.
    std::vector<size_t> offsets;
    size_t bytes = 0;
    for (unsigned size : f->param_sizes) {
        bytes = round_up(bytes, 16);
        offsets.push_back(bytes);
        bytes += size;
    }
    auto blob = std::make_shared<std::vector<unsigned char>>(bytes + 16);
    for (size_t i = 0; i < f->param_sizes.size(); ++i) {
        if (!params[i]) return refuse(format("parameter %zu is a null pointer", i));
        memcpy(blob->data() + offsets[i], params[i], f->param_sizes[i]);
    }
    const hg_kernel_entry* kernel = f->kernel;
    std::string what = "kernel " + f->name;
    std::shared_ptr<const ModuleVars> vars = f->module->vars;
    auto run = [kernel, grid, block, dynamic_shared, blob, offsets, vars](char* msg, size_t len) {
        // 16-byte aligned copies of the arguments, made per run: a replayed node runs more than once.
        std::vector<unsigned char> storage(blob->size() + 16);
        unsigned char* base = reinterpret_cast<unsigned char*>(round_up(reinterpret_cast<uintptr_t>(storage.data()), 16));
        memcpy(base, blob->data(), blob->size() - 16);
        std::vector<void*> ptrs;
        for (size_t off : offsets) ptrs.push_back(base + off);
        hg_launch l;
        l.kernel = kernel;
        l.grid = grid;
        l.block = block;
        l.dynamic_shared_bytes = dynamic_shared;
        l.params = ptrs.data();
        vars->swap_in();
        const int failed = hgemu_run_grid(&l, msg, len);
        vars->swap_out();
        return failed ? finding_code(msg) : 0;
    };
    return enqueue(stream, make_node(what, run));
}

// ---- Events, captures ---------------------------------------------------------------------------------------

CUevent_st* event_of(CUevent_st* e) { return g.events.count(e) ? e : nullptr; }  // g.mutex held

Capture* capture_by_id(uint64_t id) {  // g.mutex held
    for (Capture* c : g.captures)
        if (c->id == id) return c;
    return nullptr;
}

}  // namespace

// ---- Graphs -----------------------------------------------------------------------------------------------------

struct CUgraph_st {
    std::vector<NodePtr> nodes;
    std::vector<std::shared_ptr<GraphAlloc>> allocs;
    bool instantiated = false;
};
struct CUgraphExec_st {
    std::shared_ptr<const std::vector<NodePtr>> nodes;
    std::vector<std::shared_ptr<GraphAlloc>> allocs;
    bool auto_free = false;
};

namespace {
std::set<CUgraph_st*>& g_graphs = *new std::set<CUgraph_st*>;          // g.mutex
std::set<CUgraphExec_st*>& g_graph_execs = *new std::set<CUgraphExec_st*>;  // g.mutex

struct PoolHandle {};
PoolHandle g_default_pool;

struct Context {
    int retained = 0;
    unsigned flags = 0;
    size_t limits[10] = {1024, 1 << 20, 8 << 20, 2, 2048, 0, 0, 0, 0, 0};
    int cache_config = 0;
};
Context g_context;
thread_local std::vector<Context*> t_context_stack;

std::once_flag g_init_once;
CUresult g_init_result = CUDA_ERROR_NOT_INITIALIZED;
std::atomic<bool> g_initialized{false};

size_t host_available_memory() {
    FILE* f = fopen("/proc/meminfo", "r");
    size_t kb = 0;
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %zu kB", &kb) == 1) break;
        fclose(f);
    }
    return std::min(kb * 1024, kMemoryCap);
}

// Loads every libhgemu_kernels_*.so beside this library: their constructors register the kernels' host builds.
// HOURGLASS_EMU_KERNELS_FROM=<dir>: a library of the same name in that directory is loaded instead (the planted-bug
// tests' variants of a module, tests/suite/emulator_planted.rs).
CUresult load_kernel_libraries() {
    Dl_info info;
    if (!dladdr(reinterpret_cast<void*>(&load_kernel_libraries), &info) || !info.dli_fname)
        return explain(CUDA_ERROR_SHARED_OBJECT_INIT_FAILED, "cannot find the directory of libcuda.so (dladdr)");
    std::string dir = info.dli_fname;
    size_t slash = dir.rfind('/');
    dir = slash == std::string::npos ? "." : dir.substr(0, slash);
    DIR* d = opendir(dir.c_str());
    if (!d) return explain(CUDA_ERROR_SHARED_OBJECT_INIT_FAILED, "cannot list " + dir);
    std::vector<std::string> names;
    while (dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (n.rfind("libhgemu_kernels_", 0) == 0 && n.size() > 3 && n.compare(n.size() - 3, 3, ".so") == 0)
            names.push_back(n);
    }
    closedir(d);
    const char* from = getenv("HOURGLASS_EMU_KERNELS_FROM");
    for (const std::string& n : names) {
        std::string path = dir + "/" + n;
        if (from && *from) {
            const std::string other = std::string(from) + "/" + n;
            if (access(other.c_str(), F_OK) == 0) {
                fprintf(stderr, "hourglass emulator: HOURGLASS_EMU_KERNELS_FROM: loading %s instead of %s\n",
                        other.c_str(), path.c_str());
                path = other;
            }
        }
        if (!dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL))
            return explain(CUDA_ERROR_SHARED_OBJECT_INIT_FAILED,
                           "cannot load the kernels' host build " + path + ": " + dlerror());
    }
    return CUDA_SUCCESS;
}

#define REQUIRE_INIT() \
    if (!g_initialized.load()) return plain(CUDA_ERROR_NOT_INITIALIZED)

CUresult valid_device(CUdevice dev) {
    REQUIRE_INIT();
    return dev == 0 ? CUDA_SUCCESS : plain(CUDA_ERROR_INVALID_DEVICE);
}

// The work of a copy, run on the worker (or inline-checked host side): device ranges checked, bytes marked.
struct CopySides {
    bool src_device, dst_device;
};

NodePtr copy_node(const char* api, void* dst, const void* src, size_t n, CopySides sides,
                  std::shared_ptr<std::vector<unsigned char>> snapshot = nullptr) {
    std::string what = api;
    return make_node(what, [=](char* msg, size_t len) {
        if (n == 0) return 0;
        if (sides.src_device)
            if (int rc = check_device(src, n, false, std::string(api) + " reading", msg, len)) return rc;
        if (sides.dst_device)
            if (int rc = check_device(dst, n, true, std::string(api) + " writing", msg, len)) return rc;
        memmove(dst, snapshot ? snapshot->data() : src, n);
        if (sides.dst_device) hgemu_mark_written(dst, n);
        return 0;
    });
}

// A copy between the host and the device: pinned host memory is read or written when the stream gets there;
// pageable memory is read at once (HtoD) or the call waits for the copy (DtoH), as CUDA documents.
CUresult copy_host(const char* api, void* dst, const void* src, size_t n, CUstream_st* stream, bool to_device,
                   bool synchronous) {
    if (n && (!dst || !src)) return plain(CUDA_ERROR_INVALID_VALUE);
    if (synchronous) {
        if (CUresult rc = refuse_if_capturing(api)) return rc;
        return run_sync(nullptr, copy_node(api, dst, src, n, {!to_device, to_device}));
    }
    const void* host = to_device ? src : dst;
    bool pinned = is_pinned(host, n);
    {
        std::lock_guard<std::mutex> lock(g.mutex);
        auto s = stream_of(stream);
        if (!s) return plain(CUDA_ERROR_INVALID_HANDLE);
        if (s->capture && !pinned && n)
            return refuse_in_capture(s.get(), format("%s of %zu bytes %s pageable host memory %p", api, n,
                                                     to_device ? "from" : "to", host));
    }
    if (pinned) return enqueue(stream, copy_node(api, dst, src, n, {!to_device, to_device}));
    if (to_device) {
        auto snapshot = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src),
                                                                     static_cast<const unsigned char*>(src) + n);
        return enqueue(stream, copy_node(api, dst, src, n, {false, true}, snapshot));
    }
    return run_sync(stream, copy_node(api, dst, src, n, {true, false}));
}

CUresult memset_device(const char* api, CUdeviceptr dst, unsigned value, size_t count, unsigned elem,
                       CUstream_st* stream, bool synchronous) {
    if (synchronous)
        if (CUresult rc = refuse_if_capturing(api)) return rc;
    void* p = reinterpret_cast<void*>(dst);
    size_t n = count * elem;
    std::string what = api;
    auto node = make_node(what, [=](char* msg, size_t len) {
        if (n == 0) return 0;
        if (int rc = check_device(p, n, true, what + " writing", msg, len)) return rc;
        unsigned char* b = static_cast<unsigned char*>(p);
        for (size_t i = 0; i < count; ++i) memcpy(b + i * elem, &value, elem);
        hgemu_mark_written(p, n);
        return 0;
    });
    return synchronous ? run_sync(nullptr, node) : enqueue(stream, node);
}

extern "C" CUresult cuCtxSynchronize(void);

CUresult free_device(CUdeviceptr dptr, CUstream_st* h, bool synchronous) {
    if (dptr == 0) return CUDA_SUCCESS;
    uintptr_t base = uintptr_t(dptr);
    if (synchronous) {
        if (CUresult rc = refuse_if_capturing("cuMemFree")) return rc;
        if (CUresult rc = cuCtxSynchronize()) return rc;  // cuMemFree waits for the device
        std::shared_ptr<GraphAlloc> ga;
        {
            std::lock_guard<std::mutex> lock(mem.mutex);
            auto it = mem.device.find(base);
            if (it != mem.device.end()) {
                if (it->second.free_pending) return plain(CUDA_ERROR_INVALID_VALUE);
            } else {
                auto gi = mem.graph.find(base);
                if (gi == mem.graph.end()) return plain(CUDA_ERROR_INVALID_VALUE);
                ga = gi->second;
                ga->outstanding = false;
                mem.graph.erase(gi);
            }
        }
        if (ga) end_graph_alloc(ga);
        else end_device_block(base);
        return CUDA_SUCCESS;
    }
    if (int sticky = g_sticky.load()) return sticky;
    {
        std::lock_guard<std::mutex> lock(g.mutex);
        auto s = stream_of(h);
        if (!s) return plain(CUDA_ERROR_INVALID_HANDLE);
        if (Capture* c = s->capture) {
            // During capture: a free node, for an allocation of this capture only.
            for (auto& a : c->allocs) {
                if (reinterpret_cast<uintptr_t>(a->block.base) != base || a->freed_in_graph) continue;
                a->freed_in_graph = true;
                std::weak_ptr<GraphAlloc> weak = a;
                c->nodes.push_back(make_node("graph free", [weak](char*, size_t) {
                    if (auto a = weak.lock()) end_graph_alloc(a);
                    return 0;
                }));
                return CUDA_SUCCESS;
            }
            c->invalidated = true;
            return explain(CUDA_ERROR_INVALID_VALUE,
                           format("cuMemFreeAsync of %p during the capture of stream %p: a freed address must come "
                                  "from a graph allocation of the capture; the capture is invalidated",
                                  reinterpret_cast<void*>(base), static_cast<void*>(s.get())));
        }
    }
    std::shared_ptr<GraphAlloc> ga;
    {
        std::lock_guard<std::mutex> lock(mem.mutex);
        auto it = mem.device.find(base);
        if (it != mem.device.end()) {
            if (it->second.free_pending) return plain(CUDA_ERROR_INVALID_VALUE);
            it->second.free_pending = true;
        } else {
            auto gi = mem.graph.find(base);
            if (gi == mem.graph.end()) return plain(CUDA_ERROR_INVALID_VALUE);
            ga = gi->second;
            ga->outstanding = false;
            mem.graph.erase(gi);
        }
    }
    if (ga) return enqueue(h, make_node("cuMemFreeAsync", [ga](char*, size_t) {
                               end_graph_alloc(ga);
                               return 0;
                           }));
    return enqueue(h, make_node("cuMemFreeAsync", [base](char*, size_t) {
                       end_device_block(base);
                       return 0;
                   }));
}

// Unified-address copies: each side is device memory when it is not host memory the driver knows as pinned and
// not pageable (any address outside the emulator's allocations is taken as pageable host memory).
bool is_device_side(const void* p) {
    std::lock_guard<std::mutex> lock(mem.mutex);
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto in = [a](const std::map<uintptr_t, Block>& m) {
        auto it = m.upper_bound(a);
        return it != m.begin() && a < std::prev(it)->first + std::max<size_t>(std::prev(it)->second.size, 1);
    };
    if (in(mem.device)) return true;
    for (auto& [b, ga] : mem.graph)
        if (a >= b && a < b + ga->block.size) return true;
    return false;
}

}  // namespace

// ===== The exported API =======================================================================================

extern "C" {

// ---- Errors, init, version ----------------------------------------------------------------------------------

CUresult cuGetErrorString(CUresult error, const char** str) {
    if (!str) return CUDA_ERROR_INVALID_VALUE;
    const ErrorText* e = error_entry(error);
    if (!e) {
        *str = nullptr;
        return CUDA_ERROR_INVALID_VALUE;
    }
    const char* text = error > 0 && error < 1000 ? g_error_text[error].load() : nullptr;
    *str = text ? text : e->text;
    return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult error, const char** str) {
    if (!str) return CUDA_ERROR_INVALID_VALUE;
    const ErrorText* e = error_entry(error);
    *str = e ? e->name : nullptr;
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuInit(unsigned flags) {
    if (flags != 0) return plain(CUDA_ERROR_INVALID_VALUE);
    std::call_once(g_init_once, [] {
        mem.total = host_available_memory();
        {
            std::lock_guard<std::mutex> lock(g.mutex);
            g.legacy = new_stream(0, 0, true);
        }
        g_init_result = load_kernel_libraries();
        g_initialized = g_init_result == CUDA_SUCCESS;
    });
    return g_init_result;
}

CUresult cuDriverGetVersion(int* version) {
    if (!version) return plain(CUDA_ERROR_INVALID_VALUE);
    *version = 13000;
    return CUDA_SUCCESS;
}

CUresult cuProfilerStart(void) { return CUDA_SUCCESS; }
CUresult cuProfilerStop(void) { return CUDA_SUCCESS; }

// ---- Device ---------------------------------------------------------------------------------------------------

CUresult cuDeviceGetCount(int* count) {
    REQUIRE_INIT();
    if (!count) return plain(CUDA_ERROR_INVALID_VALUE);
    *count = 1;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice* dev, int ordinal) {
    REQUIRE_INIT();
    if (!dev) return plain(CUDA_ERROR_INVALID_VALUE);
    if (ordinal != 0) return plain(CUDA_ERROR_INVALID_DEVICE);
    *dev = 0;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
    if (CUresult rc = valid_device(dev)) return rc;
    if (!name || len <= 0) return plain(CUDA_ERROR_INVALID_VALUE);
    snprintf(name, size_t(len), "%s", kDeviceName);
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetUuid(CUuuid* uuid, CUdevice dev) {
    if (CUresult rc = valid_device(dev)) return rc;
    if (!uuid) return plain(CUDA_ERROR_INVALID_VALUE);
    memcpy(uuid->bytes, "hourglass-emu-00", 16);
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetUuid_v2(CUuuid* uuid, CUdevice dev) { return cuDeviceGetUuid(uuid, dev); }

CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
    if (CUresult rc = valid_device(dev)) return rc;
    if (!bytes) return plain(CUDA_ERROR_INVALID_VALUE);
    *bytes = mem.total;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int* value, int attr, CUdevice dev) {
    if (CUresult rc = valid_device(dev)) return rc;
    if (!value || attr < 1 || attr >= 148) return plain(CUDA_ERROR_INVALID_VALUE);
    *value = device_attribute(attr);
    return CUDA_SUCCESS;
}

CUresult cuDeviceComputeCapability(int* major, int* minor, CUdevice dev) {
    if (CUresult rc = valid_device(dev)) return rc;
    if (!major || !minor) return plain(CUDA_ERROR_INVALID_VALUE);
    *major = compute_capability() / 10;
    *minor = compute_capability() % 10;
    return CUDA_SUCCESS;
}

// ---- Context ----------------------------------------------------------------------------------------------

CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice dev) {
    if (CUresult rc = valid_device(dev)) return rc;
    if (!ctx) return plain(CUDA_ERROR_INVALID_VALUE);
    std::lock_guard<std::mutex> lock(g.mutex);
    ++g_context.retained;
    *ctx = &g_context;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    if (CUresult rc = valid_device(dev)) return rc;
    std::lock_guard<std::mutex> lock(g.mutex);
    if (g_context.retained == 0) return plain(CUDA_ERROR_INVALID_CONTEXT);
    --g_context.retained;  // the context (and its memory) stays: one process, one emulated device
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned* flags, int* active) {
    if (CUresult rc = valid_device(dev)) return rc;
    if (!flags || !active) return plain(CUDA_ERROR_INVALID_VALUE);
    std::lock_guard<std::mutex> lock(g.mutex);
    *flags = g_context.flags;
    *active = g_context.retained > 0;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned flags) {
    if (CUresult rc = valid_device(dev)) return rc;
    g_context.flags = flags;
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(void* ctx) {
    REQUIRE_INIT();
    if (ctx && ctx != &g_context) return plain(CUDA_ERROR_INVALID_CONTEXT);
    if (t_context_stack.empty()) t_context_stack.push_back(nullptr);
    t_context_stack.back() = static_cast<Context*>(ctx);
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(void** ctx) {
    REQUIRE_INIT();
    if (!ctx) return plain(CUDA_ERROR_INVALID_VALUE);
    *ctx = t_context_stack.empty() ? nullptr : t_context_stack.back();
    return CUDA_SUCCESS;
}

CUresult cuCtxPushCurrent_v2(void* ctx) {
    REQUIRE_INIT();
    if (ctx != &g_context) return plain(CUDA_ERROR_INVALID_CONTEXT);
    t_context_stack.push_back(static_cast<Context*>(ctx));
    return CUDA_SUCCESS;
}

CUresult cuCtxPopCurrent_v2(void** ctx) {
    REQUIRE_INIT();
    if (t_context_stack.empty() || !t_context_stack.back()) return plain(CUDA_ERROR_INVALID_CONTEXT);
    if (ctx) *ctx = t_context_stack.back();
    t_context_stack.pop_back();
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice* dev) {
    REQUIRE_INIT();
    if (!dev) return plain(CUDA_ERROR_INVALID_VALUE);
    if (t_context_stack.empty() || !t_context_stack.back()) return plain(CUDA_ERROR_INVALID_CONTEXT);
    *dev = 0;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetApiVersion(void*, unsigned* version) {
    if (!version) return plain(CUDA_ERROR_INVALID_VALUE);
    *version = 13000;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetId(void* ctx, unsigned long long* id) {
    if (!id || (ctx && ctx != &g_context)) return plain(CUDA_ERROR_INVALID_VALUE);
    *id = 1;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetFlags(unsigned* flags) {
    if (!flags) return plain(CUDA_ERROR_INVALID_VALUE);
    *flags = g_context.flags;
    return CUDA_SUCCESS;
}

CUresult cuCtxSetFlags(unsigned flags) {
    g_context.flags = flags;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetLimit(size_t* value, int limit) {
    if (!value || limit < 0 || limit >= 10) return plain(CUDA_ERROR_INVALID_VALUE);
    *value = g_context.limits[limit];
    return CUDA_SUCCESS;
}

CUresult cuCtxSetLimit(int limit, size_t value) {
    if (limit < 0 || limit >= 10) return plain(CUDA_ERROR_INVALID_VALUE);
    g_context.limits[limit] = value;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCacheConfig(int* config) {
    if (!config) return plain(CUDA_ERROR_INVALID_VALUE);
    *config = g_context.cache_config;
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCacheConfig(int config) {
    if (config < 0 || config > 3) return plain(CUDA_ERROR_INVALID_VALUE);
    g_context.cache_config = config;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize(void) {
    REQUIRE_INIT();
    if (CUresult rc = refuse_if_capturing("cuCtxSynchronize")) return rc;
    std::unique_lock<std::mutex> lock(g.mutex);
    for (auto& [h, s] : g.streams)
        if (s->capture) return refuse_in_capture(s.get(), "cuCtxSynchronize");
    wait_for(g.legacy, g.legacy->submitted, lock);
    for (auto& [h, s] : g.streams) wait_for(s, s->submitted, lock);
    lock.unlock();
    {
        std::lock_guard<std::mutex> m(mem.mutex);
        mem.release_to_threshold();
    }
    return g_sticky.load();
}

CUresult cuCtxCreate_v4(void**, void*, unsigned, CUdevice) { return plain(CUDA_ERROR_NOT_SUPPORTED); }
CUresult cuCtxCreate_v3(void**, void*, int, unsigned, CUdevice) { return plain(CUDA_ERROR_NOT_SUPPORTED); }
CUresult cuCtxCreate_v2(void**, unsigned, CUdevice) { return plain(CUDA_ERROR_NOT_SUPPORTED); }
CUresult cuCtxDestroy_v2(void*) { return plain(CUDA_ERROR_NOT_SUPPORTED); }

// ---- Streams ------------------------------------------------------------------------------------------------

CUresult cuStreamCreateWithPriority(CUstream_st** out, unsigned flags, int priority) {
    REQUIRE_INIT();
    if (!out || flags > 1) return plain(CUDA_ERROR_INVALID_VALUE);
    auto s = new_stream(flags, std::max(-5, std::min(0, priority)), false);
    std::lock_guard<std::mutex> lock(g.mutex);
    g.streams[s.get()] = s;
    *out = s.get();
    return CUDA_SUCCESS;
}

CUresult cuStreamCreate(CUstream_st** out, unsigned flags) { return cuStreamCreateWithPriority(out, flags, 0); }

CUresult cuStreamDestroy_v2(CUstream_st* h) {
    std::lock_guard<std::mutex> lock(g.mutex);
    auto it = g.streams.find(h);
    if (it == g.streams.end()) return plain(CUDA_ERROR_INVALID_HANDLE);
    auto s = it->second;
    if (s->capture) {  // a capture in progress ends with its stream
        Capture* c = s->capture;
        g.captures.erase(std::find(g.captures.begin(), g.captures.end(), c));
        delete c;
        s->capture = nullptr;
    }
    s->destroyed = true;  // the worker finishes what is queued, then exits
    s->work.notify_one();
    g.streams.erase(it);
    return CUDA_SUCCESS;
}

// What cuStreamSynchronize and cuStreamQuery refuse: an unknown stream, or one (or any, in global mode) being
// captured.
static CUresult check_waitable_stream(CUstream_st* h, const char* api) {
    {
        std::lock_guard<std::mutex> lock(g.mutex);
        auto s = stream_of(h);
        if (!s) return plain(CUDA_ERROR_INVALID_HANDLE);
        if (s->capture) return refuse_in_capture(s.get(), api);
    }
    return refuse_if_capturing(api);
}

CUresult cuStreamSynchronize(CUstream_st* h) {
    REQUIRE_INIT();
    if (CUresult rc = check_waitable_stream(h, "cuStreamSynchronize")) return rc;
    CUresult rc = drain(h);
    {
        std::lock_guard<std::mutex> m(mem.mutex);
        mem.release_to_threshold();
    }
    return rc;
}

CUresult cuStreamQuery(CUstream_st* h) {
    REQUIRE_INIT();
    if (CUresult rc = check_waitable_stream(h, "cuStreamQuery")) return rc;
    std::lock_guard<std::mutex> lock(g.mutex);
    auto s = stream_of(h);
    if (int sticky = g_sticky.load()) return sticky;
    return s->completed >= s->submitted ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

CUresult cuStreamGetFlags(CUstream_st* h, unsigned* flags) {
    std::lock_guard<std::mutex> lock(g.mutex);
    auto s = stream_of(h);
    if (!s || !flags) return plain(s ? CUDA_ERROR_INVALID_VALUE : CUDA_ERROR_INVALID_HANDLE);
    *flags = s->flags;
    return CUDA_SUCCESS;
}

CUresult cuStreamGetPriority(CUstream_st* h, int* priority) {
    std::lock_guard<std::mutex> lock(g.mutex);
    auto s = stream_of(h);
    if (!s || !priority) return plain(s ? CUDA_ERROR_INVALID_VALUE : CUDA_ERROR_INVALID_HANDLE);
    *priority = s->priority;
    return CUDA_SUCCESS;
}

CUresult cuStreamGetCtx(CUstream_st* h, void** ctx) {
    std::lock_guard<std::mutex> lock(g.mutex);
    if (!stream_of(h) || !ctx) return plain(CUDA_ERROR_INVALID_HANDLE);
    *ctx = &g_context;
    return CUDA_SUCCESS;
}

CUresult cuStreamWaitEvent(CUstream_st* h, CUevent_st* e, unsigned flags) {
    if (flags > 1) return plain(CUDA_ERROR_INVALID_VALUE);
    if (int sticky = g_sticky.load()) return sticky;
    std::lock_guard<std::mutex> lock(g.mutex);
    auto s = stream_of(h);
    if (!s || !event_of(e)) return plain(CUDA_ERROR_INVALID_HANDLE);
    if (e->capture_id && capture_by_id(e->capture_id)) {
        // An event of a capture: the same capture's stream is already ordered after it; another stream would
        // have to join the capture, which the emulator does not model.
        if (s->capture && s->capture->id == e->capture_id) return CUDA_SUCCESS;
        return explain(CUDA_ERROR_NOT_SUPPORTED,
                       "cuStreamWaitEvent: waiting on an event recorded in another stream's capture (joining a "
                       "capture across streams) is not supported by the emulator");
    }
    // Outside a capture: the stream waits for the recorded work. In a capture, work from before the capture
    // is not a dependency the graph can hold, so the wait is not recorded.
    if (s->capture || !e->stream) return CUDA_SUCCESS;
    if (e->stream->completed < e->seq) push_wait(s, e->stream, e->seq);
    s->work.notify_one();
    return CUDA_SUCCESS;
}

CUresult cuLaunchHostFunc(CUstream_st* h, void (*fn)(void*), void* data) {
    if (!fn) return plain(CUDA_ERROR_INVALID_VALUE);
    return enqueue(h, make_node("host function", [fn, data](char*, size_t) {
                       fn(data);
                       return 0;
                   }));
}

CUresult cuStreamAttachMemAsync(CUstream_st*, CUdeviceptr, size_t, unsigned) {
    return plain(CUDA_ERROR_NOT_SUPPORTED);
}

// ---- Stream capture -----------------------------------------------------------------------------------------

CUresult cuStreamBeginCapture_v2(CUstream_st* h, int mode) {
    REQUIRE_INIT();
    if (mode < 0 || mode > 2) return plain(CUDA_ERROR_INVALID_VALUE);
    std::lock_guard<std::mutex> lock(g.mutex);
    auto s = stream_of(h);
    if (!s) return plain(CUDA_ERROR_INVALID_HANDLE);
    if (s->legacy)
        return explain(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamBeginCapture: the legacy stream cannot be captured");
    if (s->capture) return plain(CUDA_ERROR_ILLEGAL_STATE);
    Capture* c = new Capture;
    c->id = g.next_capture_id++;
    c->stream = s.get();
    c->mode = mode;
    c->thread = std::this_thread::get_id();
    s->capture = c;
    g.captures.push_back(c);
    return CUDA_SUCCESS;
}

CUresult cuStreamBeginCapture(CUstream_st* h, int mode) { return cuStreamBeginCapture_v2(h, mode); }

CUresult cuStreamEndCapture(CUstream_st* h, CUgraph_st** graph) {
    if (!graph) return plain(CUDA_ERROR_INVALID_VALUE);
    std::lock_guard<std::mutex> lock(g.mutex);
    auto s = stream_of(h);
    if (!s) return plain(CUDA_ERROR_INVALID_HANDLE);
    Capture* c = s->capture;
    if (!c) return plain(CUDA_ERROR_ILLEGAL_STATE);
    if (c->mode != CU_STREAM_CAPTURE_MODE_RELAXED && c->thread != std::this_thread::get_id())
        return plain(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD);
    s->capture = nullptr;
    g.captures.erase(std::find(g.captures.begin(), g.captures.end(), c));
    std::unique_ptr<Capture> done(c);
    *graph = nullptr;
    if (c->invalidated) return plain(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    CUgraph_st* gr = new CUgraph_st;
    gr->nodes = std::move(c->nodes);
    gr->allocs = std::move(c->allocs);
    g_graphs.insert(gr);
    *graph = gr;
    return CUDA_SUCCESS;
}

CUresult cuStreamIsCapturing(CUstream_st* h, int* status) {
    if (!status) return plain(CUDA_ERROR_INVALID_VALUE);
    std::lock_guard<std::mutex> lock(g.mutex);
    auto s = stream_of(h);
    if (!s) return plain(CUDA_ERROR_INVALID_HANDLE);
    *status = !s->capture ? CU_STREAM_CAPTURE_STATUS_NONE
              : s->capture->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                                        : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    return CUDA_SUCCESS;
}

CUresult cuStreamGetCaptureInfo_v3(CUstream_st* h, int* status, unsigned long long* id, CUgraph_st** graph,
                                   const void** deps, const void** edges, size_t* ndeps) {
    if (CUresult rc = cuStreamIsCapturing(h, status)) return rc;
    std::lock_guard<std::mutex> lock(g.mutex);
    auto s = stream_of(h);
    if (id) *id = s->capture ? s->capture->id : 0;
    if (graph) *graph = nullptr;  // the graph under construction is not exposed
    if (deps) *deps = nullptr;
    if (edges) *edges = nullptr;
    if (ndeps) *ndeps = 0;
    return CUDA_SUCCESS;
}

CUresult cuStreamGetCaptureInfo_v2(CUstream_st* h, int* status, unsigned long long* id, CUgraph_st** graph,
                                   const void** deps, size_t* ndeps) {
    return cuStreamGetCaptureInfo_v3(h, status, id, graph, deps, nullptr, ndeps);
}

CUresult cuThreadExchangeStreamCaptureMode(int* mode) {
    if (!mode || *mode < 0 || *mode > 2) return plain(CUDA_ERROR_INVALID_VALUE);
    std::swap(*mode, t_capture_mode);
    return CUDA_SUCCESS;
}

// ---- Graphs -------------------------------------------------------------------------------------------------

CUresult cuGraphInstantiateWithFlags(CUgraphExec_st** exec, CUgraph_st* graph, unsigned long long flags) {
    if (!exec) return plain(CUDA_ERROR_INVALID_VALUE);
    std::lock_guard<std::mutex> lock(g.mutex);
    if (!g_graphs.count(graph)) return plain(CUDA_ERROR_INVALID_HANDLE);
    if (flags & ~0xFull) return plain(CUDA_ERROR_INVALID_VALUE);
    if ((flags & CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH) && (flags & CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH))
        return plain(CUDA_ERROR_INVALID_VALUE);
    if (!graph->allocs.empty() && graph->instantiated)
        return explain(CUDA_ERROR_INVALID_VALUE,
                       "cuGraphInstantiate: a graph with memory allocation nodes may be instantiated only once");
    graph->instantiated = true;
    CUgraphExec_st* e = new CUgraphExec_st;
    e->nodes = std::make_shared<const std::vector<NodePtr>>(graph->nodes);
    e->allocs = graph->allocs;
    e->auto_free = flags & CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH;
    g_graph_execs.insert(e);
    *exec = e;
    return CUDA_SUCCESS;
}

CUresult cuGraphInstantiate(CUgraphExec_st** exec, CUgraph_st* graph, unsigned long long flags) {
    return cuGraphInstantiateWithFlags(exec, graph, flags);
}

CUresult cuGraphUpload(CUgraphExec_st* exec, CUstream_st* h) {
    if (int sticky = g_sticky.load()) return sticky;
    std::lock_guard<std::mutex> lock(g.mutex);
    if (!g_graph_execs.count(exec) || !stream_of(h)) return plain(CUDA_ERROR_INVALID_HANDLE);
    return CUDA_SUCCESS;  // graph memory is backed from the capture on
}

CUresult cuGraphLaunch(CUgraphExec_st* exec, CUstream_st* h) {
    if (int sticky = g_sticky.load()) return sticky;
    std::shared_ptr<const std::vector<NodePtr>> nodes;
    {
        std::lock_guard<std::mutex> lock(g.mutex);
        if (!g_graph_execs.count(exec)) return plain(CUDA_ERROR_INVALID_HANDLE);
        auto s = stream_of(h);
        if (!s) return plain(CUDA_ERROR_INVALID_HANDLE);
        if (s->capture)
            return explain(CUDA_ERROR_NOT_SUPPORTED,
                           "cuGraphLaunch into a capturing stream (a child graph) is not supported by the emulator");
        nodes = exec->nodes;
    }
    {
        std::lock_guard<std::mutex> lock(mem.mutex);
        for (auto& a : exec->allocs) {
            if (a->outstanding && !exec->auto_free)
                return explain(CUDA_ERROR_INVALID_VALUE,
                               format("cuGraphLaunch refused: the graph's allocation %p (%zu bytes) from its last "
                                      "launch has not been freed",
                                      a->block.base, a->block.size));
        }
        for (auto& a : exec->allocs) {
            a->outstanding = !a->freed_in_graph;
            if (a->outstanding) mem.graph[reinterpret_cast<uintptr_t>(a->block.base)] = a;
        }
    }
    // Auto-free: an allocation still live from the last launch is freed before this one allocates it again.
    bool auto_free = exec->auto_free;
    auto allocs = exec->allocs;
    auto node = make_node("graph launch", [nodes, allocs, auto_free](char* msg, size_t len) {
        if (auto_free)
            for (auto& a : allocs) end_graph_alloc(a);
        for (const NodePtr& n : *nodes) {
            if (g_sticky.load()) return 0;
            msg[0] = 0;
            if (int rc = n->run(msg, len)) {
                if (!msg[0]) snprintf(msg, len, "%s failed (in a graph launch)", n->what.c_str());
                return rc;
            }
        }
        return 0;
    });
    return enqueue(h, node);
}

CUresult cuGraphExecDestroy(CUgraphExec_st* exec) {
    std::lock_guard<std::mutex> lock(g.mutex);
    if (!g_graph_execs.erase(exec)) return plain(CUDA_ERROR_INVALID_HANDLE);
    delete exec;  // a launch in flight holds its own references to the nodes
    return CUDA_SUCCESS;
}

CUresult cuGraphDestroy(CUgraph_st* graph) {
    std::lock_guard<std::mutex> lock(g.mutex);
    if (!g_graphs.erase(graph)) return plain(CUDA_ERROR_INVALID_HANDLE);
    delete graph;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetGraphMemAttribute(CUdevice dev, int attr, void* value) {
    if (CUresult rc = valid_device(dev)) return rc;
    if (!value) return plain(CUDA_ERROR_INVALID_VALUE);
    std::lock_guard<std::mutex> lock(mem.mutex);
    uint64_t v;
    switch (attr) {
        case CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT:
        case CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT: v = mem.graph_used; break;
        case CU_GRAPH_MEM_ATTR_USED_MEM_HIGH: v = mem.graph_used_high; break;
        case CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH: v = mem.graph_reserved_high; break;
        default: return plain(CUDA_ERROR_INVALID_VALUE);
    }
    memcpy(value, &v, sizeof v);
    return CUDA_SUCCESS;
}

CUresult cuDeviceSetGraphMemAttribute(CUdevice dev, int attr, void* value) {
    if (CUresult rc = valid_device(dev)) return rc;
    if (!value) return plain(CUDA_ERROR_INVALID_VALUE);
    uint64_t v;
    memcpy(&v, value, sizeof v);
    if (v != 0) return plain(CUDA_ERROR_INVALID_VALUE);
    std::lock_guard<std::mutex> lock(mem.mutex);
    if (attr == CU_GRAPH_MEM_ATTR_USED_MEM_HIGH) mem.graph_used_high = mem.graph_used;
    else if (attr == CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH) mem.graph_reserved_high = mem.graph_used;
    else return plain(CUDA_ERROR_INVALID_VALUE);
    return CUDA_SUCCESS;
}

CUresult cuDeviceGraphMemTrim(CUdevice dev) {
    return valid_device(dev);  // graph memory is held by graphs alone: nothing cached to trim
}

// ---- Events -------------------------------------------------------------------------------------------------

CUresult cuEventCreate(CUevent_st** out, unsigned flags) {
    REQUIRE_INIT();
    if (!out || flags > 7) return plain(CUDA_ERROR_INVALID_VALUE);
    CUevent_st* e = new CUevent_st;
    e->flags = flags;
    std::lock_guard<std::mutex> lock(g.mutex);
    g.events.insert(e);
    *out = e;
    return CUDA_SUCCESS;
}

CUresult cuEventDestroy_v2(CUevent_st* e) {
    std::lock_guard<std::mutex> lock(g.mutex);
    if (!g.events.erase(e)) return plain(CUDA_ERROR_INVALID_HANDLE);
    // A timestamp node may still point at it; it checks the set first.
    delete e;
    return CUDA_SUCCESS;
}

CUresult cuEventRecord(CUevent_st* e, CUstream_st* h) {
    if (int sticky = g_sticky.load()) return sticky;
    std::lock_guard<std::mutex> lock(g.mutex);
    auto s = stream_of(h);
    if (!s || !event_of(e)) return plain(CUDA_ERROR_INVALID_HANDLE);
    if (s->capture) {
        e->capture_id = s->capture->id;
        e->stream = nullptr;
        return CUDA_SUCCESS;
    }
    e->capture_id = 0;
    uint64_t generation = ++e->generation;
    e->stamped = false;
    bool timed = !(e->flags & CU_EVENT_DISABLE_TIMING);
    push(s, make_node("event record", [e, generation, timed](char*, size_t) {
             if (!timed) return 0;
             auto now = std::chrono::steady_clock::now();
             std::lock_guard<std::mutex> lock(g.mutex);
             if (g.events.count(e) && e->generation == generation) {
                 e->when = now;
                 e->stamped = true;
             }
             return 0;
         }, false));
    e->stream = s;
    e->seq = s->submitted;
    return CUDA_SUCCESS;
}

CUresult cuEventRecordWithFlags(CUevent_st* e, CUstream_st* h, unsigned flags) {
    if (flags != 0) return plain(CUDA_ERROR_NOT_SUPPORTED);  // external event nodes are not modelled
    return cuEventRecord(e, h);
}

// Whether the event may be queried or waited on now: not during a capture that forbids it, nor one it is in.
CUresult event_checks(CUevent_st* e, const char* api) {
    if (CUresult rc = refuse_if_capturing(api)) return rc;
    std::lock_guard<std::mutex> lock(g.mutex);
    if (!event_of(e)) return plain(CUDA_ERROR_INVALID_HANDLE);
    if (Capture* c = e->capture_id ? capture_by_id(e->capture_id) : nullptr) {
        c->invalidated = true;
        return explain(CUDA_ERROR_CAPTURED_EVENT,
                       format("%s refused: the event was last recorded in the capture of stream %p, which is "
                              "invalidated",
                              api, static_cast<void*>(c->stream)));
    }
    return CUDA_SUCCESS;
}

CUresult cuEventQuery(CUevent_st* e) {
    if (CUresult rc = event_checks(e, "cuEventQuery")) return rc;
    std::lock_guard<std::mutex> lock(g.mutex);
    if (int sticky = g_sticky.load()) return sticky;
    if (!e->stream) return CUDA_SUCCESS;
    return e->stream->completed >= e->seq ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

CUresult cuEventSynchronize(CUevent_st* e) {
    if (CUresult rc = event_checks(e, "cuEventSynchronize")) return rc;
    std::unique_lock<std::mutex> lock(g.mutex);
    if (e->stream) {
        auto s = e->stream;
        uint64_t seq = e->seq;
        wait_for(s, seq, lock);
    }
    return g_sticky.load();
}

CUresult cuEventElapsedTime_v2(float* ms, CUevent_st* start, CUevent_st* end) {
    if (!ms) return plain(CUDA_ERROR_INVALID_VALUE);
    std::lock_guard<std::mutex> lock(g.mutex);
    if (!event_of(start) || !event_of(end)) return plain(CUDA_ERROR_INVALID_HANDLE);
    if ((start->flags | end->flags) & CU_EVENT_DISABLE_TIMING) return plain(CUDA_ERROR_INVALID_HANDLE);
    if (!start->stream || !end->stream) return plain(CUDA_ERROR_INVALID_HANDLE);
    if (start->stream->completed < start->seq || end->stream->completed < end->seq) return CUDA_ERROR_NOT_READY;
    if (!start->stamped || !end->stamped) return plain(CUDA_ERROR_INVALID_HANDLE);
    *ms = std::chrono::duration<float, std::milli>(end->when - start->when).count();
    return CUDA_SUCCESS;
}

CUresult cuEventElapsedTime(float* ms, CUevent_st* start, CUevent_st* end) {
    return cuEventElapsedTime_v2(ms, start, end);
}

// ---- Memory -------------------------------------------------------------------------------------------------

CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    REQUIRE_INIT();
    if (!free_bytes || !total) return plain(CUDA_ERROR_INVALID_VALUE);
    std::lock_guard<std::mutex> lock(mem.mutex);
    *total = mem.total;
    *free_bytes = mem.total - std::min(mem.total, mem.in_use());
    return CUDA_SUCCESS;
}

CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t size) {
    REQUIRE_INIT();
    if (CUresult rc = refuse_if_capturing("cuMemAlloc")) return rc;
    if (int sticky = g_sticky.load()) return sticky;
    if (size == 0) return plain(CUDA_ERROR_INVALID_VALUE);
    return alloc_device(dptr, size, kSync);
}

CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t size, CUstream_st* h) {
    REQUIRE_INIT();
    if (!dptr) return plain(CUDA_ERROR_INVALID_VALUE);
    if (int sticky = g_sticky.load()) return sticky;
    std::unique_lock<std::mutex> lock(g.mutex);
    auto s = stream_of(h);
    if (!s) return plain(CUDA_ERROR_INVALID_HANDLE);
    if (!s->capture) {
        lock.unlock();
        return alloc_device(dptr, size, kPool);
    }
    if (s->capture->invalidated) return plain(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    // A graph allocation: backed now, at a fixed address; live from its node's run on each replay.
    auto a = std::make_shared<GraphAlloc>();
    a->block.size = size;
    a->block.kind = kGraph;
    a->block.base = new_backing(size, &a->block.mapped);
    if (!a->block.base) return plain(CUDA_ERROR_OUT_OF_MEMORY);
    {
        std::lock_guard<std::mutex> m(mem.mutex);
        mem.graph_used += a->block.mapped;
        mem.note_highs();
    }
    std::weak_ptr<GraphAlloc> weak = a;
    s->capture->nodes.push_back(make_node("graph allocation", [weak](char*, size_t) {
        auto a = weak.lock();
        if (!a) return 0;
        if (a->live) hgemu_region_remove(a->block.base);  // auto-free on relaunch
        if (a->block.size) hgemu_region_add(a->block.base, a->block.size, HG_REGION_DEVICE, region_name(kGraph));
        a->live = a->block.size > 0;
        return 0;
    }));
    s->capture->allocs.push_back(a);
    *dptr = reinterpret_cast<CUdeviceptr>(a->block.base);
    return CUDA_SUCCESS;
}

CUresult cuMemAllocFromPoolAsync(CUdeviceptr* dptr, size_t size, void* pool, CUstream_st* h) {
    if (pool != &g_default_pool) return plain(CUDA_ERROR_INVALID_VALUE);
    return cuMemAllocAsync(dptr, size, h);
}


CUresult cuMemFree_v2(CUdeviceptr dptr) { return free_device(dptr, nullptr, true); }
CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream_st* h) { return free_device(dptr, h, false); }

CUresult cuMemAllocManaged(CUdeviceptr*, size_t, unsigned) { return plain(CUDA_ERROR_NOT_SUPPORTED); }

CUresult cuMemHostAlloc(void** pp, size_t size, unsigned flags) {
    REQUIRE_INIT();
    if (!pp || size == 0 || flags > 7) return plain(CUDA_ERROR_INVALID_VALUE);
    if (CUresult rc = refuse_if_capturing("cuMemHostAlloc")) return rc;
    Block b;
    b.size = size;
    b.kind = kPinned;
    b.base = new_backing(size, &b.mapped);
    if (!b.base) return plain(CUDA_ERROR_OUT_OF_MEMORY);
    hgemu_region_add(b.base, size, HG_REGION_HOST, region_name(kPinned));
    {
        std::lock_guard<std::mutex> lock(mem.mutex);
        mem.host[reinterpret_cast<uintptr_t>(b.base)] = b;
    }
    *pp = b.base;
    return CUDA_SUCCESS;
}

CUresult cuMemAllocHost_v2(void** pp, size_t size) { return cuMemHostAlloc(pp, size, 0); }

CUresult cuMemFreeHost(void* p) {
    REQUIRE_INIT();
    if (CUresult rc = refuse_if_capturing("cuMemFreeHost")) return rc;
    Block b;
    {
        std::lock_guard<std::mutex> lock(mem.mutex);
        auto it = mem.host.find(reinterpret_cast<uintptr_t>(p));
        if (it == mem.host.end() || it->second.kind != kPinned) return plain(CUDA_ERROR_INVALID_VALUE);
        b = it->second;
        mem.host.erase(it);
    }
    hgemu_region_remove(b.base);
    quarantine(b);
    return CUDA_SUCCESS;
}

CUresult cuMemHostRegister_v2(void* p, size_t size, unsigned flags) {
    REQUIRE_INIT();
    if (!p || size == 0 || flags > 15) return plain(CUDA_ERROR_INVALID_VALUE);
    if (CUresult rc = refuse_if_capturing("cuMemHostRegister")) return rc;
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    {
        std::lock_guard<std::mutex> lock(mem.mutex);
        auto it = mem.host.upper_bound(a + size - 1);
        if (it != mem.host.begin() && std::prev(it)->first + std::prev(it)->second.size > a)
            return plain(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
        Block b;
        b.base = p;
        b.size = size;
        b.kind = kRegistered;
        mem.host[a] = b;
    }
    hgemu_region_add(p, size, HG_REGION_HOST, region_name(kRegistered));
    return CUDA_SUCCESS;
}

CUresult cuMemHostRegister(void* p, size_t size, unsigned flags) { return cuMemHostRegister_v2(p, size, flags); }

CUresult cuMemHostUnregister(void* p) {
    REQUIRE_INIT();
    if (CUresult rc = refuse_if_capturing("cuMemHostUnregister")) return rc;
    {
        std::lock_guard<std::mutex> lock(mem.mutex);
        auto it = mem.host.find(reinterpret_cast<uintptr_t>(p));
        if (it == mem.host.end() || it->second.kind != kRegistered)
            return plain(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED);
        mem.host.erase(it);
    }
    hgemu_region_remove(p);
    return CUDA_SUCCESS;
}

CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr* dptr, void* p, unsigned flags) {
    if (!dptr || flags != 0) return plain(CUDA_ERROR_INVALID_VALUE);
    if (!is_pinned(p, 1)) return plain(CUDA_ERROR_INVALID_VALUE);
    *dptr = reinterpret_cast<CUdeviceptr>(p);  // unified addressing: the same address
    return CUDA_SUCCESS;
}

CUresult cuMemHostGetFlags(unsigned* flags, void* p) {
    if (!flags || !is_pinned(p, 1)) return plain(CUDA_ERROR_INVALID_VALUE);
    *flags = 0;
    return CUDA_SUCCESS;
}

// Copies. Sync ones run on the legacy stream and wait; the Async ones follow the pinned/pageable rules.
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    return copy_host("cuMemcpyHtoD", reinterpret_cast<void*>(dst), src, n, nullptr, true, true);
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    return copy_host("cuMemcpyDtoH", dst, reinterpret_cast<const void*>(src), n, nullptr, false, true);
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream_st* h) {
    return copy_host("cuMemcpyHtoDAsync", reinterpret_cast<void*>(dst), src, n, h, true, false);
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream_st* h) {
    return copy_host("cuMemcpyDtoHAsync", dst, reinterpret_cast<const void*>(src), n, h, false, false);
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    if (CUresult rc = refuse_if_capturing("cuMemcpyDtoD")) return rc;
    return run_sync(nullptr, copy_node("cuMemcpyDtoD", reinterpret_cast<void*>(dst),
                                       reinterpret_cast<const void*>(src), n, {true, true}));
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream_st* h) {
    return enqueue(h, copy_node("cuMemcpyDtoDAsync", reinterpret_cast<void*>(dst),
                                reinterpret_cast<const void*>(src), n, {true, true}));
}


CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream_st* h) {
    void* d = reinterpret_cast<void*>(dst);
    const void* s = reinterpret_cast<const void*>(src);
    bool dd = is_device_side(d), sd = is_device_side(s);
    if (dd && sd) return cuMemcpyDtoDAsync_v2(dst, src, n, h);
    if (dd) return copy_host("cuMemcpyAsync", d, s, n, h, true, false);
    if (sd) return copy_host("cuMemcpyAsync", d, s, n, h, false, false);
    return enqueue(h, copy_node("cuMemcpyAsync", d, s, n, {false, false}));
}

CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    if (CUresult rc = refuse_if_capturing("cuMemcpy")) return rc;
    void* d = reinterpret_cast<void*>(dst);
    const void* s = reinterpret_cast<const void*>(src);
    return run_sync(nullptr, copy_node("cuMemcpy", d, s, n, {is_device_side(s), is_device_side(d)}));
}

CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    return memset_device("cuMemsetD8", dst, v, n, 1, nullptr, true);
}
CUresult cuMemsetD16_v2(CUdeviceptr dst, unsigned short v, size_t n) {
    return memset_device("cuMemsetD16", dst, v, n, 2, nullptr, true);
}
CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned v, size_t n) {
    return memset_device("cuMemsetD32", dst, v, n, 4, nullptr, true);
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream_st* h) {
    return memset_device("cuMemsetD8Async", dst, v, n, 1, h, false);
}
CUresult cuMemsetD16Async(CUdeviceptr dst, unsigned short v, size_t n, CUstream_st* h) {
    return memset_device("cuMemsetD16Async", dst, v, n, 2, h, false);
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, CUstream_st* h) {
    return memset_device("cuMemsetD32Async", dst, v, n, 4, h, false);
}

CUresult cuMemPrefetchAsync_v2(CUdeviceptr, size_t, int, unsigned, CUstream_st*) {
    return plain(CUDA_ERROR_NOT_SUPPORTED);
}
CUresult cuMemAdvise_v2(CUdeviceptr, size_t, int, int) { return plain(CUDA_ERROR_NOT_SUPPORTED); }
CUresult cuMemcpyPeerAsync(CUdeviceptr, void*, CUdeviceptr, void*, size_t, CUstream_st*) {
    return plain(CUDA_ERROR_NOT_SUPPORTED);
}

// ---- Memory pools ---------------------------------------------------------------------------------------------

CUresult cuDeviceGetDefaultMemPool(void** pool, CUdevice dev) {
    if (CUresult rc = valid_device(dev)) return rc;
    if (!pool) return plain(CUDA_ERROR_INVALID_VALUE);
    *pool = &g_default_pool;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetMemPool(void** pool, CUdevice dev) { return cuDeviceGetDefaultMemPool(pool, dev); }
CUresult cuDeviceSetMemPool(CUdevice dev, void* pool) {
    if (CUresult rc = valid_device(dev)) return rc;
    return pool == &g_default_pool ? CUDA_SUCCESS : plain(CUDA_ERROR_NOT_SUPPORTED);
}
CUresult cuMemPoolCreate(void**, const void*) { return plain(CUDA_ERROR_NOT_SUPPORTED); }
CUresult cuMemPoolDestroy(void*) { return plain(CUDA_ERROR_NOT_SUPPORTED); }

CUresult cuMemPoolGetAttribute(void* pool, int attr, void* value) {
    if (pool != &g_default_pool) return plain(CUDA_ERROR_INVALID_HANDLE);
    if (!value) return plain(CUDA_ERROR_INVALID_VALUE);
    std::lock_guard<std::mutex> lock(mem.mutex);
    if (attr >= CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES && attr <= CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES) {
        memcpy(value, &mem.reuse[attr], sizeof(int));
        return CUDA_SUCCESS;
    }
    uint64_t v;
    switch (attr) {
        case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: v = mem.release_threshold; break;
        case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: v = mem.pool_reserved(); break;
        case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: v = mem.pool_reserved_high; break;
        case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: v = mem.pool_used; break;
        case CU_MEMPOOL_ATTR_USED_MEM_HIGH: v = mem.pool_used_high; break;
        default: return plain(CUDA_ERROR_INVALID_VALUE);
    }
    memcpy(value, &v, sizeof v);
    return CUDA_SUCCESS;
}

CUresult cuMemPoolSetAttribute(void* pool, int attr, void* value) {
    if (pool != &g_default_pool) return plain(CUDA_ERROR_INVALID_HANDLE);
    if (!value) return plain(CUDA_ERROR_INVALID_VALUE);
    std::lock_guard<std::mutex> lock(mem.mutex);
    if (attr >= CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES && attr <= CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES) {
        memcpy(&mem.reuse[attr], value, sizeof(int));
        return CUDA_SUCCESS;
    }
    uint64_t v;
    memcpy(&v, value, sizeof v);
    switch (attr) {
        case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: mem.release_threshold = v; return CUDA_SUCCESS;
        case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH:
            if (v != 0) return plain(CUDA_ERROR_INVALID_VALUE);
            mem.pool_reserved_high = mem.pool_reserved();
            return CUDA_SUCCESS;
        case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
            if (v != 0) return plain(CUDA_ERROR_INVALID_VALUE);
            mem.pool_used_high = mem.pool_used;
            return CUDA_SUCCESS;
        default: return plain(CUDA_ERROR_INVALID_VALUE);
    }
}

CUresult cuMemPoolTrimTo(void* pool, size_t keep) {
    if (pool != &g_default_pool) return plain(CUDA_ERROR_INVALID_HANDLE);
    std::lock_guard<std::mutex> lock(mem.mutex);
    if (mem.pool_reserved() > keep) mem.pool_cached -= std::min(mem.pool_cached, mem.pool_reserved() - keep);
    return CUDA_SUCCESS;
}

// ---- Modules --------------------------------------------------------------------------------------------------

CUresult cuModuleLoadData(CUmod_st** out, const void* image) {
    REQUIRE_INIT();
    if (!out || !image) return plain(CUDA_ERROR_INVALID_VALUE);
    const unsigned char* bytes = static_cast<const unsigned char*>(image);
    if (bytes[0] == 0x50 && bytes[1] == 0xed && bytes[2] == 0x55 && bytes[3] == 0xba)
        return explain(CUDA_ERROR_NOT_SUPPORTED, "cuModuleLoadData: the emulator loads PTX or a cubin, not fatbins");
    PtxModule ptx;
    std::string err;
    if (memcmp(bytes, ELFMAG, SELFMAG) == 0) {
        unsigned arch = 0;
        if (!parse_cubin(bytes, &ptx, &arch, &err)) return explain(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: " + err);
        // The driver's binary compatibility: the same major version, a minor not above the device's.
        int cc = compute_capability();
        if (int(arch) / 10 != cc / 10 || int(arch) % 10 > cc % 10)
            return explain(CUDA_ERROR_NO_BINARY_FOR_GPU,
                           format("cuModuleLoadData: an sm_%u cubin on a device of compute capability %d.%d", arch,
                                  cc / 10, cc % 10));
    } else if (!parse_ptx(static_cast<const char*>(image), &ptx, &err)) {
        return explain(CUDA_ERROR_INVALID_PTX, "cuModuleLoadData: " + err);
    } else if (ptx.target > compute_capability()) {
        return explain(CUDA_ERROR_NO_BINARY_FOR_GPU,
                       format("cuModuleLoadData: PTX for sm_%d on a device of compute capability %d.%d", ptx.target,
                              compute_capability() / 10, compute_capability() % 10));
    }
    auto m = std::make_unique<CUmod_st>();
    m->ptx_version = ptx.version;
    for (const PtxEntry& e : ptx.entries) {
        const hg_kernel_entry* k = hgemu_find_kernel(e.name.c_str());
        if (!k) return explain(CUDA_ERROR_NOT_FOUND, "no host build for .entry " + e.name);
        if (k->nparams != e.params.size())
            return explain(CUDA_ERROR_NOT_FOUND,
                           format("the host build of .entry %s takes %u parameters, its PTX %zu", e.name.c_str(),
                                  k->nparams, e.params.size()));
        for (size_t i = 0; i < e.params.size(); ++i)
            if (k->param_sizes[i] != e.params[i].second)
                return explain(CUDA_ERROR_NOT_FOUND,
                               format("the host build of .entry %s has %u bytes for parameter %zu (%s), its PTX %u",
                                      e.name.c_str(), k->param_sizes[i], i, e.params[i].first.c_str(),
                                      e.params[i].second));
        if (m->module.empty() && k->module) m->module = k->module;
        auto f = std::make_unique<CUfunc_st>();
        f->name = e.name;
        f->module = m.get();
        f->kernel = k;
        for (auto& p : e.params) f->param_sizes.push_back(p.second);
        f->max_threads = e.max_threads ? std::min<unsigned>(e.max_threads, kMaxThreadsPerBlock) : kMaxThreadsPerBlock;
        f->static_shared = e.static_shared;
        if (f->static_shared > kSharedPerBlock)
            return explain(CUDA_ERROR_INVALID_PTX, format(".entry %s uses %u bytes of static shared memory, over 48 KiB",
                                                          e.name.c_str(), f->static_shared));
        f->max_dynamic_shared = int(kSharedPerBlock - f->static_shared);
        m->functions[e.name] = std::move(f);
    }
    for (const Decl& v : ptx.variables) {
        m->const_bytes += v.size;
        const hg_global_entry* entry = nullptr;
        if (hgemu_find_global_in && !m->module.empty()) entry = hgemu_find_global_in(m->module.c_str(), v.name.c_str());
        else if ((entry = hgemu_find_global(v.name.c_str())) && !m->module.empty() && entry->module &&
                 m->module != entry->module)
            entry = nullptr;  // another module's variable of that name
        if (entry) m->globals[v.name] = entry;
        else m->missing_globals.push_back(v.name);
        if (!v.visible) m->hidden_globals.insert(v.name);
    }
    std::lock_guard<std::mutex> lock(g_modules_mutex);
    for (auto& [name, entry] : m->globals) {
        if (g_global_refs[entry->addr]++ == 0)
            hgemu_region_add(entry->addr, entry->size, HG_REGION_GLOBAL, entry->name);
        auto initial = g_initial_values.try_emplace(entry).first;
        if (initial->second.empty()) {
            const unsigned char* bytes = static_cast<const unsigned char*>(entry->addr);
            initial->second.assign(bytes, bytes + entry->size);
        }
        void* copy = aligned_alloc(256, round_up(std::max<size_t>(entry->size, 1), 256));
        if (!copy) return plain(CUDA_ERROR_OUT_OF_MEMORY);
        memcpy(copy, initial->second.data(), entry->size);
        hgemu_region_add(copy, entry->size, HG_REGION_GLOBAL, entry->name);
        m->vars->vars.push_back({entry, copy});
        m->var_copies[name] = copy;
    }
    for (auto& [name, f] : m->functions) g_functions.insert(f.get());
    *out = m.release();
    g_modules.insert(*out);
    return CUDA_SUCCESS;
}

CUresult cuModuleLoadDataEx(CUmod_st** out, const void* image, unsigned, void*, void**) {
    return cuModuleLoadData(out, image);  // JIT options do not apply
}

CUresult cuModuleLoad(CUmod_st**, const char*) { return plain(CUDA_ERROR_NOT_SUPPORTED); }

CUresult cuModuleUnload(CUmod_st* m) {
    std::lock_guard<std::mutex> lock(g_modules_mutex);
    if (!g_modules.erase(m)) return plain(CUDA_ERROR_INVALID_HANDLE);
    for (auto& [name, entry] : m->globals)
        if (--g_global_refs[entry->addr] == 0) {
            g_global_refs.erase(entry->addr);
            hgemu_region_remove(entry->addr);
        }
    for (auto& [name, f] : m->functions) g_functions.erase(f.get());
    delete m;  // a queued launch holds the kernel entry, not the function
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunc_st** out, CUmod_st* m, const char* name) {
    if (!out || !name) return plain(CUDA_ERROR_INVALID_VALUE);
    std::lock_guard<std::mutex> lock(g_modules_mutex);
    if (!g_modules.count(m)) return plain(CUDA_ERROR_INVALID_HANDLE);
    auto it = m->functions.find(name);
    if (it == m->functions.end()) return plain(CUDA_ERROR_NOT_FOUND);
    *out = it->second.get();
    return CUDA_SUCCESS;
}

CUresult cuModuleGetGlobal_v2(CUdeviceptr* dptr, size_t* bytes, CUmod_st* m, const char* name) {
    if (!name) return plain(CUDA_ERROR_INVALID_VALUE);
    std::lock_guard<std::mutex> lock(g_modules_mutex);
    if (!g_modules.count(m)) return plain(CUDA_ERROR_INVALID_HANDLE);
    if (m->hidden_globals.count(name))
        return explain(CUDA_ERROR_NOT_FOUND,
                       format("cuModuleGetGlobal: %s is not .visible (nvcc's whole-program PTX gives module variables "
                              "internal linkage, a LOCAL symbol in the cubin); no driver promises to find it by name",
                              name));
    auto it = m->globals.find(name);
    if (it == m->globals.end()) {
        bool in_ptx = std::find(m->missing_globals.begin(), m->missing_globals.end(), name) != m->missing_globals.end();
        if (in_ptx)
            return explain(CUDA_ERROR_NOT_FOUND, format("cuModuleGetGlobal: the module's variable %s has no host build "
                                                        "(kernels/%s.cu)",
                                                        name, m->module.c_str()));
        return plain(CUDA_ERROR_NOT_FOUND);
    }
    if (dptr) *dptr = reinterpret_cast<CUdeviceptr>(m->var_copies.at(name));
    if (bytes) *bytes = it->second->size;
    return CUDA_SUCCESS;
}

CUresult cuModuleGetLoadingMode(int* mode) {
    if (!mode) return plain(CUDA_ERROR_INVALID_VALUE);
    *mode = 1;  // eager
    return CUDA_SUCCESS;
}

CUresult cuFuncGetAttribute(int* value, int attr, CUfunc_st* h) {
    CUfunc_st* f = function_of(h);
    if (!f) return plain(CUDA_ERROR_INVALID_HANDLE);
    if (!value) return plain(CUDA_ERROR_INVALID_VALUE);
    switch (attr) {
        case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *value = int(f->max_threads); break;
        case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: *value = int(f->static_shared); break;
        case CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES: *value = int(f->module->const_bytes); break;
        case CU_FUNC_ATTRIBUTE_PTX_VERSION: *value = f->module->ptx_version; break;
        case CU_FUNC_ATTRIBUTE_BINARY_VERSION: *value = 90; break;
        case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *value = f->max_dynamic_shared; break;
        case CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: *value = f->carveout; break;
        default:
            if (attr < 0 || attr >= CU_FUNC_ATTRIBUTE_MAX) return plain(CUDA_ERROR_INVALID_VALUE);
            *value = 0;  // local memory, registers, cache mode, clusters: not modelled
    }
    return CUDA_SUCCESS;
}

CUresult cuFuncSetAttribute(CUfunc_st* h, int attr, int value) {
    CUfunc_st* f = function_of(h);
    if (!f) return plain(CUDA_ERROR_INVALID_HANDLE);
    if (attr == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) {
        int limit = int(kSharedOptin - f->static_shared);
        if (value < 0 || value > limit)
            return explain(CUDA_ERROR_INVALID_VALUE,
                           format("cuFuncSetAttribute(%s, MAX_DYNAMIC_SHARED_SIZE_BYTES, %d): at most %d bytes (%u "
                                  "opt-in - %u static)",
                                  f->name.c_str(), value, limit, kSharedOptin, f->static_shared));
        f->max_dynamic_shared = value;
        f->dynamic_raised = true;
        return CUDA_SUCCESS;
    }
    if (attr == CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT) {
        if (value < -1 || value > 100) return plain(CUDA_ERROR_INVALID_VALUE);
        f->carveout = value;
        return CUDA_SUCCESS;
    }
    return plain(attr >= 0 && attr < CU_FUNC_ATTRIBUTE_MAX ? CUDA_ERROR_NOT_SUPPORTED : CUDA_ERROR_INVALID_VALUE);
}

CUresult cuFuncSetCacheConfig(CUfunc_st* h, int config) {
    if (!function_of(h)) return plain(CUDA_ERROR_INVALID_HANDLE);
    return config >= 0 && config <= 3 ? CUDA_SUCCESS : plain(CUDA_ERROR_INVALID_VALUE);
}

CUresult cuFuncSetSharedMemConfig(CUfunc_st* h, int) {
    return function_of(h) ? CUDA_SUCCESS : plain(CUDA_ERROR_INVALID_HANDLE);
}

CUresult cuFuncGetName(const char** name, CUfunc_st* h) {
    CUfunc_st* f = function_of(h);
    if (!f || !name) return plain(CUDA_ERROR_INVALID_HANDLE);
    *name = f->name.c_str();
    return CUDA_SUCCESS;
}

CUresult cuFuncGetModule(CUmod_st** m, CUfunc_st* h) {
    CUfunc_st* f = function_of(h);
    if (!f || !m) return plain(CUDA_ERROR_INVALID_HANDLE);
    *m = f->module;
    return CUDA_SUCCESS;
}

// ---- Launches -----------------------------------------------------------------------------------------------

CUresult cuLaunchKernel(CUfunc_st* h, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, CUstream_st* stream, void** params, void** extra) {
    return launch(function_of(h), {gx, gy, gz}, {bx, by, bz}, shared, stream, params, extra);
}

CUresult cuLaunchKernelEx(const CUlaunchConfig* config, CUfunc_st* h, void** params, void** extra) {
    if (!config) return plain(CUDA_ERROR_INVALID_VALUE);
    for (unsigned i = 0; i < config->numAttrs; ++i) {
        const CUlaunchAttribute& a = config->attrs[i];
        bool trivial_cluster = a.id == CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION && a.value.dim.x * a.value.dim.y * a.value.dim.z <= 1;
        if (a.id == CU_LAUNCH_ATTRIBUTE_COOPERATIVE || (a.id == CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION && !trivial_cluster))
            return explain(CUDA_ERROR_NOT_SUPPORTED,
                           format("cuLaunchKernelEx: launch attribute %u (cooperative launch or clusters) is not "
                                  "supported by the emulator",
                                  a.id));
    }
    return launch(function_of(h), {config->gridDimX, config->gridDimY, config->gridDimZ},
                  {config->blockDimX, config->blockDimY, config->blockDimZ}, config->sharedMemBytes, config->hStream,
                  params, extra);
}

CUresult cuLaunchCooperativeKernel(CUfunc_st*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                   CUstream_st*, void**) {
    return explain(CUDA_ERROR_NOT_SUPPORTED, "cooperative launches are not supported by the emulator");
}

// Occupancy is not modelled: no numbers rather than invented ones.
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int*, CUfunc_st*, int, size_t) {
    return plain(CUDA_ERROR_NOT_SUPPORTED);
}
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int*, CUfunc_st*, int, size_t, unsigned) {
    return plain(CUDA_ERROR_NOT_SUPPORTED);
}
CUresult cuOccupancyMaxPotentialBlockSize(int*, int*, CUfunc_st*, void*, size_t, int) {
    return plain(CUDA_ERROR_NOT_SUPPORTED);
}
CUresult cuOccupancyMaxPotentialBlockSizeWithFlags(int*, int*, CUfunc_st*, void*, size_t, int, unsigned) {
    return plain(CUDA_ERROR_NOT_SUPPORTED);
}
CUresult cuOccupancyAvailableDynamicSMemPerBlock(size_t* bytes, CUfunc_st* h, int, int) {
    CUfunc_st* f = function_of(h);
    if (!f || !bytes) return plain(CUDA_ERROR_INVALID_VALUE);
    *bytes = kSharedOptin - f->static_shared;
    return CUDA_SUCCESS;
}

}  // extern "C"

// ---- For blas.cpp -------------------------------------------------------------------------------------------

int hgemu_stream_enqueue(void* stream, const char* what, std::function<int(char* msg, size_t msg_len)> work) {
    return enqueue(static_cast<CUstream_st*>(stream), make_node(what ? what : "library call", std::move(work)));
}
