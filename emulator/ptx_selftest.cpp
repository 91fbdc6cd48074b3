// Self-tests of ptx.cpp against cases worked by hand from the PTX ISA, run as a kernel through the emulator's
// own runtime (hgemu_run_grid): `extern "C" int hgemu_selftest_ptx(char* report, size_t len)`, exported from
// libcuda.so; 0 when every check passes, else nonzero with the failures in `report`.
//
// The kernel (one launch per case, 2 warps) builds its fragments from the ISA's tables, written here
// independently of ptx.cpp, runs the asm text as the kernels write it, and stores what it got; the host side
// compares with the expected matrices. The rejection cases each launch a kernel that must fail with the
// named check. To run it: dlopen libcuda.so, dlsym "hgemu_selftest_ptx", call it and print the report.
#include <stdio.h>
#include <string.h>
#include <mutex>
#include <string>
#include <vector>

#include "hgemu.h"

namespace {

constexpr unsigned kThreads = 64;      // 2 warps: each runs its own data, so a mix-up between warps shows
constexpr unsigned kWords = 128;       // results per thread
constexpr unsigned kShared = 8192;     // dynamic shared bytes: 4 KiB per warp
constexpr unsigned kSlots = 6;         // cp.async: 16-byte shared slots per thread
constexpr unsigned kSnapshots = 5;     // cp.async: contents of the slots at five points

enum Case {
    MMA_IDENTITY,   // A = I: D = B + C, each element distinct
    MMA_SELECT,     // B selects one column of A per output column
    MMA_PRODUCT,    // small integers: a full product
    MMA_F16,        // the .f16 variant, A = I
    LDMATRIX,       // x1, x2, x4, with and without .trans, .shared and .shared::cta
    LDMATRIX_MMA,   // fragments loaded by ldmatrix (as kernels/attention_mma.cu does) and multiplied
    CP_ASYNC,       // copies land at wait_group only, group counts honoured, zero fill, wait_all
    FIRST_REJECTED  // from here: cases that must fail
};

struct Rejected {
    const char* name;
    const char* check;   // the finding's check
    const char* phrase;  // and a phrase of its message
};

const Rejected kRejected[] = {
    {"mma with a 3-register D vector", "ptx", "takes {d0,d1,d2,d3}"},
    {"mma with A given as \"f\" operands", "ptx", "must be a 32-bit input"},
    {"ldmatrix naming an operand the statement lacks", "ptx", "does not exist"},
    {"ldmatrix .b8 (unsupported)", "ptx", "unsupported instruction"},
    {"bar.sync in asm (unsupported)", "ptx", "unsupported instruction"},
    {"cp.async src-size over cp-size", "ptx", "src-size"},
    {"cp.async.cg with cp-size 8", "ptx", "cp-size 16 only"},
    {"cp.async.wait_group with a register count", "ptx", "immediate"},
    {"cp.async to a misaligned shared address", "memcheck", "misaligned"},
    {"ldmatrix row address not 16-byte aligned", "memcheck", ""},
    {"lanes of a warp at mma and ldmatrix", "synccheck", ""},
    {"a read of a cp.async destination before its wait_group", "racecheck", "still in flight"},
};
constexpr int kCases = FIRST_REJECTED + (int)(sizeof kRejected / sizeof kRejected[0]);

struct Results {
    uint32_t out[kThreads][kWords];
};

// Operands as transform.rs builds them.
hg_operand in_r(uint32_t v) { return {'r', false, true, nullptr, v, 4}; }
hg_operand in_l(const void* p) { return {'l', false, true, nullptr, (uint64_t)(uintptr_t)p, 8}; }
hg_operand in_n(uint64_t v) { return {'n', false, true, nullptr, v, sizeof(int)}; }
hg_operand in_f(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return {'f', false, true, nullptr, b, 4};
}
hg_operand out_r(uint32_t& v) { return {'r', true, false, &v, 0, 4}; }
hg_operand inout_f(float& f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return {'f', true, true, &f, b, 4};
}

uint32_t bits_of(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}
// bf16 of a float exactly representable in bf16.
uint32_t bf16(float f) { return bits_of(f) >> 16; }
// f16 of a float exactly representable in f16 (normal range or zero).
uint32_t f16(float f) {
    uint32_t b = bits_of(f), sign = (b >> 16) & 0x8000, exp = (b >> 23) & 0xff;
    return exp == 0 ? sign : sign | ((exp - 112) << 10) | ((b >> 13) & 0x3ff);
}

// ---- The matrices of each case (element functions of the warp w) ---------------------------------------------

float mma_a(int c, unsigned w, int r, int k) {
    switch (c) {
    case MMA_IDENTITY:
    case MMA_F16:
        return r == k ? 1.0f : 0.0f;
    case MMA_SELECT:
        return (float)(16 * r + k);  // up to 255: exact in bf16
    default:
        return (float)((int)((r * 3 + k * 5 + w) % 11) - 5);
    }
}
float mma_b(int c, unsigned w, int k, int n) {
    switch (c) {
    case MMA_IDENTITY:
        return (float)(8 * k + n + 1 + 128 * w);  // up to 256
    case MMA_F16:
        return (n & 1 ? -0.25f : 0.5f) * (float)(8 * k + n + 1 + 128 * w);
    case MMA_SELECT:
        return k == (int)((3 * n + 1 + w) % 16) ? 1.0f : 0.0f;
    default:
        return (float)((int)((k * 7 + n * 3 + w) % 9) - 4);
    }
}
float mma_c(int c, unsigned w, int r, int n) {
    switch (c) {
    case MMA_IDENTITY:
    case MMA_F16:
        return 1000.0f * (float)(r * 8 + n + 1) + 0.5f * (float)w;
    case MMA_SELECT:
        return -(float)n;
    case MMA_PRODUCT:
        return (float)(r - n);
    default:
        return 0.0f;
    }
}
float mma_expected(int c, unsigned w, int r, int n) {
    double d = mma_c(c, w, r, n);
    for (int k = 0; k < 16; ++k) d += (double)mma_a(c, w, r, k) * mma_b(c, w, k, n);
    return (float)d;  // every partial sum of these cases is exact in f32
}

// ldmatrix: element (row r, column c) of matrix m, distinct per warp.
uint16_t ld_elem(unsigned w, int m, int r, int c) { return (uint16_t)(256 * w + 64 * m + 8 * r + c); }
// Row r of matrix m lives in slot ld_slot(m, r) (rows permuted, so only the lanes' addresses can find them).
int ld_slot(int m, int r) { return 8 * m + ((5 * r + 3) & 7); }

// cp.async: byte b of the source of slot j of thread th.
uint8_t cp_src(unsigned th, int j, int b) { return (uint8_t)(th * 7 + j * 31 + b * 3 + 1); }
constexpr uint8_t kMarker = 0xAB;  // what the slots hold before any copy lands

// ---- The kernel ---------------------------------------------------------------------------------------------

// ISA layouts (groupID g = lane >> 2, threadID_in_group t = lane % 4).
int a_row(unsigned lane, int i) { return (int)(lane >> 2) + ((i % 4) >= 2 ? 8 : 0); }  // a0..a7, i < 2 || 4 <= i < 6
int a_col(unsigned lane, int i) { return (int)(lane % 4) * 2 + (i & 1) + (i >= 4 ? 8 : 0); }
int b_row(unsigned lane, int i) { return (int)(lane % 4) * 2 + (i & 1) + (i >= 2 ? 8 : 0); }  // b0..b3
int b_col(unsigned lane) { return (int)(lane >> 2); }
int c_row(unsigned lane, int i) { return (int)(lane >> 2) + (i >= 2 ? 8 : 0); }  // c0..c3
int c_col(unsigned lane, int i) { return (int)(lane % 4) * 2 + (i & 1); }

const char* const kMmaBf16 =
    "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
    "{%0,%1,%2,%3};\n";
const char* const kMmaF16 =
    "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n";

void mma(const char* text, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    hgemu_asm(text, {inout_f(d[0]), inout_f(d[1]), inout_f(d[2]), inout_f(d[3]), in_r(a[0]), in_r(a[1]),
                     in_r(a[2]), in_r(a[3]), in_r(b[0]), in_r(b[1])});
}

void run_mma(int c, unsigned w, unsigned lane, uint32_t* out) {
    uint32_t (*cvt)(float) = c == MMA_F16 ? f16 : bf16;
    uint32_t a[4], b[2];
    float d[4];
    for (int r = 0; r < 4; ++r)  // register r holds elements 2r (low half) and 2r + 1
        a[r] = cvt(mma_a(c, w, a_row(lane, 2 * r), a_col(lane, 2 * r))) |
               cvt(mma_a(c, w, a_row(lane, 2 * r + 1), a_col(lane, 2 * r + 1))) << 16;
    for (int r = 0; r < 2; ++r)
        b[r] = cvt(mma_b(c, w, b_row(lane, 2 * r), b_col(lane))) |
               cvt(mma_b(c, w, b_row(lane, 2 * r + 1), b_col(lane))) << 16;
    for (int i = 0; i < 4; ++i) d[i] = mma_c(c, w, c_row(lane, i), c_col(lane, i));
    mma(c == MMA_F16 ? kMmaF16 : kMmaBf16, d, a, b);
    for (int i = 0; i < 4; ++i) out[i] = bits_of(d[i]);
}

// Writes 16 bytes of shared memory as this thread (the sanitizer sees it).
void shared_write(char* p, const void* data) {
    hgemu_access(p, 16, 1, 16);
    memcpy(p, data, 16);
}

void run_ldmatrix(char* base, unsigned w, unsigned lane, uint32_t* out) {
    const int m = lane / 8, r = lane % 8;
    uint16_t row[8];
    for (int c = 0; c < 8; ++c) row[c] = ld_elem(w, m, r, c);
    char* mine = base + 16 * ld_slot(m, r);
    shared_write(mine, row);
    const uint32_t addr = hgemu_shared_address(mine);
    // Lanes that supply no address for .x1 / .x2 pass one that is no shared address at all.
    const uint32_t x1 = lane < 8 ? addr : 0xfffffff0u, x2 = lane < 16 ? addr : 0xfffffff0u;
    uint32_t* o = out;
    hgemu_asm("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n", {out_r(o[0]), in_r(x1)});
    hgemu_asm("ldmatrix.sync.aligned.m8n8.x2.shared::cta.b16 {%0,%1}, [%2];\n", {out_r(o[1]), out_r(o[2]), in_r(x2)});
    hgemu_asm("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n",
              {out_r(o[3]), out_r(o[4]), out_r(o[5]), out_r(o[6]), in_r(addr)});
    hgemu_asm("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n", {out_r(o[7]), in_r(x1)});
    hgemu_asm("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n", {out_r(o[8]), out_r(o[9]), in_r(x2)});
    hgemu_asm("ldmatrix.sync.aligned.m8n8.x4.trans.shared::cta.b16 {%0,%1,%2,%3}, [%4];\n",
              {out_r(o[10]), out_r(o[11]), out_r(o[12]), out_r(o[13]), in_r(addr)});
}

// A (16x16, row-major) by ldmatrix.x4; B (16x8) by ldmatrix.x2.trans from B stored [k][n], and by
// ldmatrix.x2 from Bᵀ stored [n][k]: the two ways kernels/attention_mma.cu reads B from shared memory.
void run_ldmatrix_mma(char* base, unsigned w, unsigned lane, uint32_t* out) {
    const int c = LDMATRIX_MMA;  // MMA_PRODUCT's A and B, C = 0
    char *sa = base, *sb = base + 512, *sbt = base + 768;
    uint16_t row[8];
    // A: lane l addresses row (l/8 % 2)*8 + l%8, columns (l/16)*8 ..: matrices a0..a3 of the fragment.
    const int ar = (lane / 8 % 2) * 8 + lane % 8, ac = lane / 16 * 8;
    for (int j = 0; j < 8; ++j) row[j] = (uint16_t)bf16(mma_a(c, w, ar, ac + j));
    shared_write(sa + ar * 32 + ac * 2, row);
    // B [k][n]: lanes 0-15 address row k = lane % 16.
    const int bk = lane % 16;
    if (lane < 16) {
        for (int n = 0; n < 8; ++n) row[n] = (uint16_t)bf16(mma_b(c, w, bk, n));
        shared_write(sb + bk * 16, row);
    }
    // Bᵀ [n][k]: lanes 0-15 address row n = lane % 8, columns k (lane / 8 % 2) * 8 ...
    const int tn = lane % 8, tk = lane / 8 % 2 * 8;
    if (lane < 16) {
        for (int j = 0; j < 8; ++j) row[j] = (uint16_t)bf16(mma_b(c, w, tk + j, tn));
        shared_write(sbt + tn * 32 + tk * 2, row);
    }
    uint32_t a[4], b[2], bt[2];
    hgemu_asm("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n",
              {out_r(a[0]), out_r(a[1]), out_r(a[2]), out_r(a[3]), in_r(hgemu_shared_address(sa + ar * 32 + ac * 2))});
    hgemu_asm("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n",
              {out_r(b[0]), out_r(b[1]), in_r(hgemu_shared_address(sb + bk * 16))});
    hgemu_asm("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n",
              {out_r(bt[0]), out_r(bt[1]), in_r(hgemu_shared_address(sbt + tn * 32 + tk * 2))});
    float d[4] = {0, 0, 0, 0}, e[4] = {0, 0, 0, 0};
    mma(kMmaBf16, d, a, b);
    mma(kMmaBf16, e, a, bt);
    for (int i = 0; i < 4; ++i) out[i] = bits_of(d[i]), out[4 + i] = bits_of(e[i]);
}

// Slots 0-5 of this thread: 0 (group 0: one 16-byte .cg copy), 1 (group 1: an 8-byte and a 4-byte .ca copy
// at offsets 0 and 8), 2 (group 1: 16 bytes with src-size 5 from a register), 3 (group 2: src-size 0),
// 4 (issued, not committed), 5 (never copied). Snapshots: after issue, after wait_group 2 (group 0 landed),
// wait_group 1 (group 1), wait_group 0 (group 2; the uncommitted copy not), wait_all (all).
void run_cp_async(char* base, const char* src, unsigned th, uint32_t* out) {
    char* slot = base + th * kSlots * 16;
    const char* g = src + th * kSlots * 16;
    uint8_t marker[16];
    memset(marker, kMarker, 16);
    for (unsigned j = 0; j < kSlots; ++j) shared_write(slot + 16 * j, marker);
    auto sa = [&](int j) { return hgemu_shared_address(slot + 16 * j); };
    auto snapshot = [&](int s) { memcpy(out + s * kSlots * 4, slot, kSlots * 16); };
    hgemu_asm("cp.async.cg.shared.global [%0], [%1], 16;\n", {in_r(sa(0)), in_l(g)});
    hgemu_asm("cp.async.commit_group;\n", {});
    hgemu_asm("cp.async.ca.shared.global [%0], [%1], 8;\n", {in_r(sa(1)), in_l(g + 16)});
    hgemu_asm("cp.async.ca.shared.global [%0+8], [%1+8], %2;\n", {in_r(sa(1)), in_l(g + 16), in_n(4)});
    hgemu_asm("cp.async.cg.shared.global [%0], [%1], 16, %2;\n", {in_r(sa(2)), in_l(g + 32), in_r(5)});
    hgemu_asm("cp.async.commit_group;\n", {});
    hgemu_asm("cp.async.cg.shared.global [%0], [%1], 16, 0;\n", {in_r(sa(3)), in_l(g + 48)});
    hgemu_asm("cp.async.commit_group;\n", {});
    hgemu_asm("cp.async.ca.shared::cta.global [%0], [%1], 16;\n", {in_l((const void*)(uintptr_t)sa(4)), in_l(g + 64)});
    snapshot(0);
    hgemu_asm("cp.async.wait_group %0;\n", {in_n(2)});
    snapshot(1);
    hgemu_asm("cp.async.wait_group 1;\n", {});
    snapshot(2);
    hgemu_asm("cp.async.wait_group %0;\n", {in_n(0)});
    snapshot(3);
    hgemu_asm("cp.async.wait_all;\n", {});
    snapshot(4);
    // Left pending at the kernel's end: never lands, and is no error.
    hgemu_asm("cp.async.cg.shared.global [%0], [%1], 16;\n", {in_r(sa(5)), in_l(g + 80)});
    hgemu_asm("cp.async.commit_group;\n", {});
}

void run_rejected(int which, char* base, const char* src, unsigned lane) {
    uint32_t r[4] = {0, 0, 0, 0}, a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float d[4] = {0, 0, 0, 0};
    const uint32_t row = hgemu_shared_address(base + 16 * (lane % 8));
    switch (which) {
    case 0:
        hgemu_asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2}, {%3,%4,%5,%6}, {%7,%8}, "
                  "{%0,%1,%2};\n",
                  {inout_f(d[0]), inout_f(d[1]), inout_f(d[2]), in_r(a[0]), in_r(a[1]), in_r(a[2]), in_r(a[3]),
                   in_r(b[0]), in_r(b[1])});
        break;
    case 1:
        hgemu_asm(kMmaBf16, {inout_f(d[0]), inout_f(d[1]), inout_f(d[2]), inout_f(d[3]), in_f(0), in_f(0),
                             in_f(0), in_f(0), in_r(b[0]), in_r(b[1])});
        break;
    case 2:
        hgemu_asm("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n", {out_r(r[0]), in_r(row)});
        break;
    case 3:
        hgemu_asm("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b8 {%0,%1}, [%2];\n",
                  {out_r(r[0]), out_r(r[1]), in_r(row)});
        break;
    case 4:
        hgemu_asm("bar.sync 0;\n", {});
        break;
    case 5:
        hgemu_asm("cp.async.ca.shared.global [%0], [%1], 8, 12;\n", {in_r(row), in_l(src)});
        break;
    case 6:
        hgemu_asm("cp.async.cg.shared.global [%0], [%1], 8;\n", {in_r(row), in_l(src)});
        break;
    case 7:
        hgemu_asm("cp.async.wait_group %0;\n", {in_r(0)});
        break;
    case 8:
        hgemu_asm("cp.async.cg.shared.global [%0], [%1], 16;\n", {in_r(row + 4), in_l(src)});
        break;
    case 9:
        hgemu_asm("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n", {out_r(r[0]), in_r(row + 2)});
        break;
    case 10:
        if (lane < 16)
            mma(kMmaBf16, d, a, b);
        else
            hgemu_asm("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n", {out_r(r[0]), in_r(row)});
        break;
    case 11:
        hgemu_asm("cp.async.cg.shared.global [%0], [%1], 16;\n", {in_r(hgemu_shared_address(base + 16 * lane)),
                                                                  in_l(src + 16 * lane)});
        hgemu_asm("cp.async.commit_group;\n", {});
        hgemu_access(base + 16 * lane, 16, 0, 16);
        break;
    }
}

struct Params {
    int which;
    Results* results;
    const char* src;  // cp.async sources, a device region
};

void selftest_kernel(void** params) {
    const Params& p = *static_cast<const Params*>(params[0]);
    const unsigned lane = hgemu_lane(), w = hgemu_warp(), th = 32 * w + lane;
    char* base = static_cast<char*>(hgemu_dynamic_shared());
    uint32_t* out = p.results->out[th];
    if (p.which >= FIRST_REJECTED) {
        if (w == 0) run_rejected(p.which - FIRST_REJECTED, base, p.src, lane);
        return;
    }
    switch (p.which) {
    case LDMATRIX:
        run_ldmatrix(base + 4096 * w, w, lane, out);
        break;
    case LDMATRIX_MMA:
        run_ldmatrix_mma(base + 4096 * w, w, lane, out);
        break;
    case CP_ASYNC:
        run_cp_async(base, p.src, th, out);
        break;
    default:
        run_mma(p.which, w, lane, out);
    }
}

const unsigned kParamSizes[] = {sizeof(Params)};
const hg_kernel_entry kEntry = {"hgemu_selftest_ptx_kernel", selftest_kernel, 1, kParamSizes, "ptx_selftest"};

// ---- Host side: expected values -----------------------------------------------------------------------------

struct Report {
    std::string text;
    int checks = 0, failures = 0;
    void check(bool ok, const char* what, unsigned th, unsigned word, uint32_t got, uint32_t want) {
        ++checks;
        if (ok) return;
        if (++failures <= 20) {
            char line[256];
            snprintf(line, sizeof line, "FAIL %s: thread %u word %u: got 0x%08x, want 0x%08x\n", what, th, word, got,
                     want);
            text += line;
        }
    }
    void note(const std::string& line) {
        ++checks;
        ++failures;
        text += "FAIL " + line + "\n";
    }
};

const char* case_name(int c) {
    static const char* names[] = {"mma bf16 A=I", "mma bf16 select", "mma bf16 product", "mma f16 A=I",
                                  "ldmatrix",     "ldmatrix+mma",    "cp.async"};
    return names[c];
}

void check_case(int c, const Results& res, Report& rep) {
    for (unsigned th = 0; th < kThreads; ++th) {
        const unsigned w = th / 32, l = th % 32;
        const uint32_t* o = res.out[th];
        auto want = [&](unsigned word, uint32_t v) { rep.check(o[word] == v, case_name(c), th, word, o[word], v); };
        if (c <= MMA_F16) {
            for (int i = 0; i < 4; ++i) want(i, bits_of(mma_expected(c, w, c_row(l, i), c_col(l, i))));
        } else if (c == LDMATRIX) {
            // Without .trans: register i = matrix i (row l/4, columns 2(l%4), 2(l%4)+1); .trans: the
            // transpose, (rows 2(l%4), 2(l%4)+1, column l/4). Words: x1, x2 (2), x4 (4), then the same .trans.
            auto pair = [&](int m, bool t) {
                const int r = l / 4, k = 2 * (l % 4);
                return t ? ld_elem(w, m, k, r) | (uint32_t)ld_elem(w, m, k + 1, r) << 16
                         : ld_elem(w, m, r, k) | (uint32_t)ld_elem(w, m, r, k + 1) << 16;
            };
            for (int t = 0; t < 2; ++t) {
                const unsigned at = 7 * t;
                want(at, pair(0, t));
                for (int m = 0; m < 2; ++m) want(at + 1 + m, pair(m, t));
                for (int m = 0; m < 4; ++m) want(at + 3 + m, pair(m, t));
            }
            // Worked by hand: lane 5 of warp 0: row 1, columns 2, 3 = 10, 11; transposed: rows 2, 3, column 1
            // = 17, 25.
            if (th == 5) want(0, 0x000b000au), want(7, 0x00190011u);
        } else if (c == LDMATRIX_MMA) {
            for (int i = 0; i < 4; ++i) {
                const uint32_t v = bits_of(mma_expected(LDMATRIX_MMA, w, c_row(l, i), c_col(l, i)));
                want(i, v);
                want(4 + i, v);
            }
        } else {  // CP_ASYNC: per snapshot, which slots hold which bytes
            for (unsigned s = 0; s < kSnapshots; ++s) {
                uint8_t slots[kSlots][16];
                memset(slots, kMarker, sizeof slots);
                auto land = [&](int j, int from, int n, int src_n) {
                    for (int b = from; b < from + n; ++b) slots[j][b] = b - from < src_n ? cp_src(th, j, b) : 0;
                };
                if (s >= 1) land(0, 0, 16, 16);
                if (s >= 2) land(1, 0, 8, 8), land(1, 8, 4, 4), land(2, 0, 16, 5);
                if (s >= 3) land(3, 0, 16, 0);
                if (s >= 4) land(4, 0, 16, 16);
                uint32_t words[kSlots * 4];
                memcpy(words, slots, sizeof words);
                for (unsigned i = 0; i < kSlots * 4; ++i) want(s * kSlots * 4 + i, words[i]);
            }
        }
    }
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int hgemu_selftest_ptx(char* report, size_t len) {
    // Registered on first use rather than by a static constructor: the runtime's registry may not be
    // constructed yet when this file's constructors run.
    static std::once_flag registered;
    std::call_once(registered, [] { hgemu_register_kernel(&kEntry); });

    std::vector<char> src(kThreads * kSlots * 16 + 64);
    char* g = src.data() + (16 - (uintptr_t)src.data() % 16) % 16;
    for (unsigned th = 0; th < kThreads; ++th)
        for (unsigned j = 0; j < kSlots; ++j)
            for (int b = 0; b < 16; ++b) g[(th * kSlots + j) * 16 + b] = (char)cp_src(th, j, b);
    hgemu_region_add(g, kThreads * kSlots * 16, HG_REGION_DEVICE, "ptx selftest sources");
    hgemu_mark_written(g, kThreads * kSlots * 16);

    Report rep;
    std::vector<Results> results(1);
    for (int c = 0; c < kCases; ++c) {
        memset(&results[0], 0, sizeof(Results));
        Params p{c, &results[0], g};
        void* params[] = {&p};
        const bool rejected = c >= FIRST_REJECTED;
        hg_launch launch{&kEntry, {1, 1, 1}, {rejected ? 32u : kThreads, 1, 1}, kShared, params};
        char msg[1024] = "";
        const int rc = hgemu_run_grid(&launch, msg, sizeof msg);
        if (!rejected) {
            if (rc) rep.note(std::string(case_name(c)) + ": the launch failed: " + msg);
            else check_case(c, results[0], rep);
            continue;
        }
        const Rejected& r = kRejected[c - FIRST_REJECTED];
        if (!rc)
            rep.note(std::string(r.name) + ": accepted, want a " + r.check + " finding");
        else if (!strstr(msg, r.check) || !strstr(msg, r.phrase))
            rep.note(std::string(r.name) + ": want " + r.check + " '" + r.phrase + "', got: " + msg);
        else
            ++rep.checks;
    }
    hgemu_region_remove(g);

    char tail[128];
    snprintf(tail, sizeof tail, "ptx selftest: %d checks, %d failed\n", rep.checks, rep.failures);
    rep.text += tail;
    if (report && len) snprintf(report, len, "%s", rep.text.c_str());
    return rep.failures ? 1 : 0;
}
