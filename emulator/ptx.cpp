// Inline PTX executed from its own text (hgemu.h: hgemu_asm). Each asm string is parsed once (cached by its
// pointer) into instructions with their operand lists as written, and executed against the statement's
// operands, so a wrong operand order, a missing qualifier or a wrong vector shows as it would on a GPU.
//
// Supported, exactly (anything else is a "ptx" finding naming the text):
//   mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32  d{4}, a{4}, b{2}, c{4}
//   ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].{shared,shared::cta}.b16  r{1,2,4}, [addr]
//   cp.async.{ca,cg}.{shared,shared::cta}.global  [dst], [src], cp-size[, src-size]
//   cp.async.commit_group, cp.async.wait_group N, cp.async.wait_all
// Fragment layouts are the PTX ISA's ("Matrix Fragments for mma.m16n8k16 with floating point type", and the
// ldmatrix fragment table): groupID = lane >> 2, threadID_in_group = lane % 4, the lower-indexed element of
// a .b32 register in its low half.
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "hgemu.h"

namespace {

// ---- Parsed form --------------------------------------------------------------------------------------------

enum class Op { Mma, Ldmatrix, CpAsync, CommitGroup, WaitGroup, WaitAll };

struct Arg {
    enum Kind { Reg, Imm, Vec, Addr } kind;
    int reg = -1;            // Reg; Addr's base (-1: an absolute address)
    long long imm = 0;       // Imm; Addr's offset
    std::vector<int> regs;   // Vec
};

struct Instr {
    Op op;
    std::string name;   // the opcode with its qualifiers, as written
    uint32_t sig = 0;   // hash of name: the lanes of a warp-wide instruction must agree on it
    bool f16 = false;   // mma: .f16 multiplicands (else .bf16)
    bool trans = false; // ldmatrix
    int num = 0;        // ldmatrix: matrices
    bool cg = false;    // cp.async: .cg (cp-size 16 only)
    std::vector<Arg> args;
};

struct Program {
    std::string error;  // non-empty: the text is not executable (reported at every execution)
    std::vector<Instr> instrs;
};

// ---- Findings -----------------------------------------------------------------------------------------------

// Not thread_local: libcuda.so's static TLS must stay tiny (runtime.cpp's t_cur is initial-exec), and kernels
// run one grid at a time under the runtime's lock.
char g_msg[1024];

[[noreturn]] __attribute__((format(printf, 2, 3))) void fail(const char* check, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    hgemu_fail(check, g_msg);
}

// The statement's text on one line, for messages.
std::string one_line(const char* text) {
    std::string s;
    for (const char* p = text; *p; ++p) s += (*p == '\n' || *p == '\t') ? ' ' : *p;
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s;
}

// ---- Parser -------------------------------------------------------------------------------------------------

std::string trim(const std::string& s) {
    size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
    return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    size_t start = 0;
    for (size_t i = 0; i <= s.size(); ++i)
        if (i == s.size() || s[i] == sep) {
            out.push_back(s.substr(start, i - start));
            start = i + 1;
        }
    return out;
}

bool parse_int(const std::string& s, long long& v) {
    std::string t = trim(s);
    bool neg = !t.empty() && t[0] == '-';
    if (neg) t = t.substr(1);
    if (t.empty()) return false;
    int base = 10;
    size_t i = 0;
    if (t.size() > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'X')) base = 16, i = 2;
    unsigned long long x = 0;
    for (; i < t.size(); ++i) {
        int d = isdigit((unsigned char)t[i]) ? t[i] - '0'
                : (base == 16 && isxdigit((unsigned char)t[i])) ? (tolower(t[i]) - 'a' + 10)
                                                                : -1;
        if (d < 0) return false;
        x = x * base + d;
    }
    v = neg ? -(long long)x : (long long)x;
    return true;
}

// "%N" -> N; -1 if not of that form.
int parse_ref(const std::string& s) {
    std::string t = trim(s);
    if (t.size() < 2 || t[0] != '%') return -1;
    int n = 0;
    for (size_t i = 1; i < t.size(); ++i) {
        if (!isdigit((unsigned char)t[i]) || n > 9999) return -1;
        n = n * 10 + (t[i] - '0');
    }
    return n;
}

// One operand as written: %N, an integer, {%a, %b, ..}, [%N], [%N+imm], [imm].
bool parse_arg(const std::string& text, Arg& a) {
    std::string t = trim(text);
    if (t.empty()) return false;
    if (t[0] == '{') {
        if (t.back() != '}') return false;
        a.kind = Arg::Vec;
        for (const std::string& e : split(t.substr(1, t.size() - 2), ',')) {
            int r = parse_ref(e);
            if (r < 0) return false;
            a.regs.push_back(r);
        }
        return true;
    }
    if (t[0] == '[') {
        if (t.back() != ']') return false;
        a.kind = Arg::Addr;
        std::string in = trim(t.substr(1, t.size() - 2));
        size_t op = in.find_first_of("+-", 1);
        std::string base = trim(in.substr(0, op));
        if (base.empty()) return false;
        if (base[0] == '%') {
            a.reg = parse_ref(base);
            if (a.reg < 0) return false;
        } else if (!parse_int(base, a.imm)) {
            return false;
        }
        if (op != std::string::npos) {
            long long off;
            if (a.reg < 0 || !parse_int(in.substr(op + 1), off)) return false;
            a.imm = in[op] == '-' ? -off : off;
        }
        return true;
    }
    if (t[0] == '%') {
        a.kind = Arg::Reg;
        a.reg = parse_ref(t);
        return a.reg >= 0;
    }
    a.kind = Arg::Imm;
    return parse_int(t, a.imm);
}

uint32_t fnv1a(const std::string& s) {
    uint32_t h = 2166136261u;
    for (unsigned char c : s) h = (h ^ c) * 16777619u;
    return h;
}

// A register or an immediate (which %N may also be, with an "n" operand).
bool scalar(const Arg& a) { return a.kind == Arg::Reg || a.kind == Arg::Imm; }
bool vec(const Arg& a, size_t n) { return a.kind == Arg::Vec && a.regs.size() == n; }

// One statement (no trailing ';'): recognises the instruction and checks its operands' shapes. Returns an
// error message, empty when it is supported.
std::string parse_statement(const std::string& stmt, Instr& in) {
    size_t ws = stmt.find_first_of(" \t\r\n");
    in.name = stmt.substr(0, ws);
    std::string rest = ws == std::string::npos ? "" : trim(stmt.substr(ws));
    const std::vector<std::string> q = split(in.name, '.');

    auto is_shared = [](const std::string& s) { return s == "shared" || s == "shared::cta"; };
    if (q.size() == 10 && q[0] == "mma" && q[1] == "sync" && q[2] == "aligned" && q[3] == "m16n8k16" &&
        q[4] == "row" && q[5] == "col" && q[6] == "f32" && q[9] == "f32" && q[7] == q[8] &&
        (q[7] == "bf16" || q[7] == "f16")) {
        in.op = Op::Mma;
        in.f16 = q[7] == "f16";
    } else if ((q.size() == 7 || q.size() == 8) && q[0] == "ldmatrix" && q[1] == "sync" && q[2] == "aligned" &&
               q[3] == "m8n8" && (q[4] == "x1" || q[4] == "x2" || q[4] == "x4") &&
               (q.size() == 7 || q[5] == "trans") && is_shared(q[q.size() - 2]) && q.back() == "b16") {
        in.op = Op::Ldmatrix;
        in.num = q[4][1] - '0';
        in.trans = q.size() == 8;
    } else if (q.size() == 5 && q[0] == "cp" && q[1] == "async" && (q[2] == "ca" || q[2] == "cg") &&
               is_shared(q[3]) && q[4] == "global") {
        in.op = Op::CpAsync;
        in.cg = q[2] == "cg";
    } else if (in.name == "cp.async.commit_group") {
        in.op = Op::CommitGroup;
    } else if (in.name == "cp.async.wait_group") {
        in.op = Op::WaitGroup;
    } else if (in.name == "cp.async.wait_all") {
        in.op = Op::WaitAll;
    } else {
        return "unsupported instruction";
    }
    in.sig = fnv1a(in.name);

    // Operands, split at the commas outside braces and brackets.
    std::vector<std::string> parts;
    int depth = 0;
    std::string cur;
    for (char c : rest) {
        if (c == '{' || c == '[') ++depth;
        if (c == '}' || c == ']') --depth;
        if (c == ',' && depth == 0) {
            parts.push_back(cur);
            cur.clear();
        } else {
            cur += c;
        }
    }
    if (!trim(cur).empty() || !parts.empty()) parts.push_back(cur);
    for (size_t i = 0; i < parts.size(); ++i) {
        Arg a;
        if (!parse_arg(parts[i], a)) return "malformed operand " + std::to_string(i) + " '" + trim(parts[i]) + "'";
        in.args.push_back(a);
    }

    const std::vector<Arg>& a = in.args;
    switch (in.op) {
    case Op::Mma:
        if (a.size() != 4 || !vec(a[0], 4) || !vec(a[1], 4) || !vec(a[2], 2) || !vec(a[3], 4))
            return "mma.m16n8k16 takes {d0,d1,d2,d3}, {a0,a1,a2,a3}, {b0,b1}, {c0,c1,c2,c3}";
        break;
    case Op::Ldmatrix:
        if (a.size() != 2 || !vec(a[0], in.num) || a[1].kind != Arg::Addr)
            return "ldmatrix ." + q[4] + " takes {" + std::to_string(in.num) + " registers}, [address]";
        break;
    case Op::CpAsync:
        if ((a.size() != 3 && a.size() != 4) || a[0].kind != Arg::Addr || a[1].kind != Arg::Addr ||
            !scalar(a[2]) || (a.size() == 4 && !scalar(a[3])))
            return "cp.async takes [dst], [src], cp-size[, src-size]";
        break;
    case Op::CommitGroup:
    case Op::WaitAll:
        if (!a.empty()) return in.name + " takes no operands";
        break;
    case Op::WaitGroup:
        if (a.size() != 1 || !scalar(a[0])) return "cp.async.wait_group takes one immediate";
        break;
    }
    return "";
}

Program* parse(const char* text) {
    Program* prog = new Program;
    std::string s(text);
    // Comments are whitespace.
    for (size_t c; (c = s.find("//")) != std::string::npos;) s.erase(c, s.find('\n', c) - c);
    std::vector<std::string> stmts = split(s, ';');
    if (!trim(stmts.back()).empty()) {
        prog->error = "statement without ';': " + one_line(text);
        return prog;
    }
    stmts.pop_back();
    for (const std::string& raw : stmts) {
        std::string st = trim(raw);
        if (st.empty()) continue;
        Instr in;
        std::string err = parse_statement(st, in);
        if (!err.empty()) {
            prog->error = err + ": " + one_line(text);
            return prog;
        }
        prog->instrs.push_back(std::move(in));
    }
    if (prog->instrs.empty()) prog->error = "unsupported instruction: empty asm statement";
    return prog;
}

// The parse of `text`, made once per text pointer (string literals: the same pointer, the same text).
const Program& program_for(const char* text) {
    static struct {  // kernels run one at a time (see g_msg)
        const char* text;
        const Program* prog;
    } recent[64];
    auto& slot = recent[(reinterpret_cast<uintptr_t>(text) >> 2) & 63];
    if (slot.text == text) return *slot.prog;
    static std::mutex mu;
    static auto* cache = new std::unordered_map<const char*, std::unique_ptr<Program>>;
    std::lock_guard<std::mutex> lock(mu);
    std::unique_ptr<Program>& p = (*cache)[text];
    if (!p) p.reset(parse(text));
    slot.text = text;
    slot.prog = p.get();
    return *p;
}

// ---- Operands -----------------------------------------------------------------------------------------------

struct Ctx {
    const char* text;
    const Instr& in;
    const hg_operand* ops;
    size_t n;

    const hg_operand& at(int r) const {
        if (r < 0 || (size_t)r >= n)
            fail("ptx", "%s: operand %%%d does not exist (the statement has %zu): %s", in.name.c_str(), r, n,
                 one_line(text).c_str());
        return ops[r];
    }
    [[noreturn]] void wrong(int r, const char* want) const {
        const hg_operand& o = ops[r];
        fail("ptx", "%s: operand %%%d must be %s, not \"%s%c\" (%u bytes): %s", in.name.c_str(), r, want,
             o.output ? (o.input ? "+" : "=") : "", o.constraint, o.size, one_line(text).c_str());
    }
    // A 32-bit register input of constraint `c` ('r' or 'f').
    uint32_t in32(int r, char c) const {
        const hg_operand& o = at(r);
        if (o.constraint != c || !o.input || o.size != 4)
            wrong(r, c == 'r' ? "a 32-bit input \"r\"" : "an f32 input \"f\"");
        return (uint32_t)o.bits;
    }
    void out32(int r, char c, uint32_t v) const {
        const hg_operand& o = at(r);
        if (o.constraint != c || !o.output || o.size != 4 || !o.ptr)
            wrong(r, c == 'r' ? "a 32-bit output \"=r\"" : "an f32 output \"=f\" or \"+f\"");
        memcpy(o.ptr, &v, 4);
    }
    // An integer that must be a constant: a literal, or %N of an "n" operand.
    long long imm(const Arg& a, const char* what) const {
        if (a.kind == Arg::Imm) return a.imm;
        const hg_operand& o = at(a.reg);
        if (o.constraint != 'n') wrong(a.reg, what);
        return o.size == 4 ? (long long)(int32_t)o.bits : (long long)o.bits;  // an int constant
    }
    // An integer that may be a register ("r", "n") or a literal.
    long long value(const Arg& a, const char* what) const {
        if (a.kind == Arg::Imm) return a.imm;
        const hg_operand& o = at(a.reg);
        if ((o.constraint != 'r' && o.constraint != 'n') || !o.input) wrong(a.reg, what);
        return (long long)o.bits;
    }
    // The address in [..]: base register ("r" or "l"; `global` ones must be 64-bit) plus offset.
    uint64_t address(const Arg& a, bool global) const {
        if (a.reg < 0) return (uint64_t)a.imm;
        const hg_operand& o = at(a.reg);
        if (!o.input || !(o.constraint == 'l' || (!global && o.constraint == 'r')))
            wrong(a.reg, global ? "a 64-bit address \"l\"" : "a shared address \"r\" or \"l\"");
        return o.bits + (uint64_t)a.imm;
    }
    // A shared-window address -> its host pointer.
    char* shared(const Arg& a, const char* what) const {
        uint64_t addr = address(a, false);
        void* p = addr >> 32 ? nullptr : hgemu_shared_pointer((uint32_t)addr);
        if (!p)
            fail("memcheck", "%s: %s 0x%llx is not a shared memory address", in.name.c_str(), what,
                 (unsigned long long)addr);
        return static_cast<char*>(p);
    }
};

// ---- Warp-wide instructions ---------------------------------------------------------------------------------

// What a lane brings to a warp-wide instruction: one size for all of them, so that lanes at different ones
// still meet and the signature tells them apart.
struct WarpContribution {
    uint32_t sig;
    uint32_t w[7];  // mma: a0..a3, b0, b1; ldmatrix: the 16-byte row this lane addressed
};

// The contributions of the 32 lanes; every lane must be at the same instruction (.aligned).
const WarpContribution* rendezvous(const Instr& in, const WarpContribution& mine) {
    const auto* all = static_cast<const WarpContribution*>(
        hgemu_warp_collective(0xffffffffu, &mine, sizeof mine, in.name.c_str()));
    for (unsigned l = 0; l < 32; ++l)
        if (all[l].sig != mine.sig)
            fail("synccheck", "%s: lane %u of the warp is at a different warp-wide instruction", in.name.c_str(), l);
    return all;
}

float bf16_to_float(uint32_t h) {
    uint32_t b = h << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

float f16_to_float(uint32_t h) {
    uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, b;
    if (exp == 0x1f) {
        b = sign | 0x7f800000u | (man << 13);
    } else if (exp) {
        b = sign | ((exp + 112) << 23) | (man << 13);
    } else {
        float f = (float)man * (1.0f / 16777216.0f);  // subnormal: man * 2^-24, exact in f32
        return sign ? -f : f;
    }
    float f;
    memcpy(&f, &b, 4);
    return f;
}

// The two 16-bit elements of a .b32 register (the lower index in the low half) as floats.
template <bool F16>
void unpack(uint32_t w, float* out) {
    out[0] = F16 ? f16_to_float(w & 0xffff) : bf16_to_float(w & 0xffff);
    out[1] = F16 ? f16_to_float(w >> 16) : bf16_to_float(w >> 16);
}

// This lane's rows of A and columns of B, from all lanes' fragments:
//   A (16x16, row): register i of lane 4*groupID + tig holds row groupID (+8 for i = 1, 3), columns
//   2*tig + {0,1} (+8 for i = 2, 3); so row g + 8h is in registers h and h + 2 of lanes 4g .. 4g+3.
//   B (16x8, col): register i of lane 4*groupID + tig holds rows 2*tig + {0,1} (+8 for i = 1), column
//   groupID; so column n is in lanes 4n .. 4n+3.
template <bool F16>
void gather(const WarpContribution* all, unsigned g, unsigned t, float (&a)[2][16], float (&b)[2][16]) {
    for (unsigned q = 0; q < 4; ++q)
        for (unsigned h = 0; h < 2; ++h) {
            const uint32_t* w = all[4 * g + q].w;
            unpack<F16>(w[h], &a[h][2 * q]);
            unpack<F16>(w[h + 2], &a[h][2 * q + 8]);
            const uint32_t* v = all[4 * (2 * t + h) + q].w;
            unpack<F16>(v[4], &b[h][2 * q]);
            unpack<F16>(v[5], &b[h][2 * q + 8]);
        }
}

// D = A·B + C, 16x8x16, for this lane's four elements of D (C/D: c0, c1 at row groupID, columns
// 2*tig + {0,1}; c2, c3 at row groupID + 8). Each element is C plus the 16 products in ascending k, every
// addition rounded to f32 (products of bf16 / f16 are exact in f32). The tensor cores' own order is not
// specified by the ISA and differs; results can differ from a GPU in the last bit.
void exec_mma(const Ctx& c) {
    const std::vector<Arg>& a = c.in.args;
    WarpContribution mine{c.in.sig, {}};
    float acc[4];
    for (int i = 0; i < 4; ++i) mine.w[i] = c.in32(a[1].regs[i], 'r');
    for (int i = 0; i < 2; ++i) mine.w[4 + i] = c.in32(a[2].regs[i], 'r');
    for (int i = 0; i < 4; ++i) {
        uint32_t bits = c.in32(a[3].regs[i], 'f');
        memcpy(&acc[i], &bits, 4);
    }
    for (int i = 0; i < 4; ++i) c.at(a[0].regs[i]);  // a missing output fails before the rendezvous
    const WarpContribution* all = rendezvous(c.in, mine);
    const unsigned lane = hgemu_lane(), g = lane >> 2, t = lane & 3;
    float arow[2][16], bcol[2][16];
    if (c.in.f16)
        gather<true>(all, g, t, arow, bcol);
    else
        gather<false>(all, g, t, arow, bcol);
    for (int i = 0; i < 4; ++i) {
        const float* x = arow[i >> 1];
        const float* y = bcol[i & 1];
        float d = acc[i];
        for (int k = 0; k < 16; ++k) d += x[k] * y[k];
        uint32_t bits;
        memcpy(&bits, &d, 4);
        c.out32(a[0].regs[i], 'f', bits);
    }
}

// Lanes 8i .. 8i+7 address the rows of matrix i (each row read by the lane that addressed it); lane l
// receives in register i the elements (row l/4, columns 2*(l%4) + {0,1}) of matrix i, or with .trans those
// of its transpose: (rows 2*(l%4) + {0,1}, column l/4).
void exec_ldmatrix(const Ctx& c) {
    const std::vector<Arg>& a = c.in.args;
    const unsigned lane = hgemu_lane();
    WarpContribution mine{c.in.sig, {}};
    if ((int)lane < 8 * c.in.num) {
        const char* row = c.shared(a[1], "row address");
        hgemu_access(row, 16, 0, 16);
        memcpy(mine.w, row, 16);
    } else {
        c.address(a[1], false);  // unused, but still an operand of the right kind
    }
    for (int i = 0; i < c.in.num; ++i) c.at(a[0].regs[i]);
    const WarpContribution* all = rendezvous(c.in, mine);
    // Element j (0..7) of the row lane `l` addressed.
    auto el = [&](unsigned l, unsigned j) { return (all[l].w[j >> 1] >> (16 * (j & 1))) & 0xffff; };
    for (int i = 0; i < c.in.num; ++i) {
        const unsigned m = 8 * i, lo_row = c.in.trans ? m + 2 * (lane & 3) : m + (lane >> 2);
        const uint32_t lo = c.in.trans ? el(lo_row, lane >> 2) : el(lo_row, 2 * (lane & 3));
        const uint32_t hi = c.in.trans ? el(lo_row + 1, lane >> 2) : el(lo_row, 2 * (lane & 3) + 1);
        c.out32(a[0].regs[i], 'r', lo | (hi << 16));
    }
}

// ---- cp.async -----------------------------------------------------------------------------------------------

// Copies issued and not yet landed, per thread. A copy lands (reads its source, writes shared memory) only
// when a wait_group / wait_all of this thread covers its group; a copy never waited for never lands, and a
// thread that ends with copies pending just drops them (the scratch dies with the thread). Until it lands, its
// destination is marked in flight: any access to it is a racecheck finding (one wait_group too few).
constexpr unsigned kMaxPending = 128;

struct PendingCopy {
    char* dst;
    const char* src;
    uint32_t group;  // the group it belongs to (== open_group while uncommitted)
    uint8_t size, src_size;
};

struct CpAsyncState {
    uint32_t open_group;  // id of the group still open; committed groups have smaller ids
    uint32_t count;
    PendingCopy copies[kMaxPending];
};

CpAsyncState& cp_state() { return *static_cast<CpAsyncState*>(hgemu_thread_scratch(sizeof(CpAsyncState))); }

void exec_cp_async(const Ctx& c) {
    const std::vector<Arg>& a = c.in.args;
    const long long size = c.imm(a[2], "an immediate cp-size (\"n\")");
    if (size != 4 && size != 8 && size != 16)
        fail("ptx", "%s: cp-size %lld is not 4, 8 or 16: %s", c.in.name.c_str(), size, one_line(c.text).c_str());
    if (c.in.cg && size != 16)
        fail("ptx", "%s: .cg takes cp-size 16 only, not %lld: %s", c.in.name.c_str(), size, one_line(c.text).c_str());
    const long long src_size = a.size() == 4 ? c.value(a[3], "a src-size register \"r\" or immediate") : size;
    if (src_size < 0 || src_size > size)
        fail("ptx", "%s: src-size %lld is not within cp-size %lld: %s", c.in.name.c_str(), src_size, size,
             one_line(c.text).c_str());
    char* dst = c.shared(a[0], "destination");
    const char* src = reinterpret_cast<const char*>(c.address(a[1], true));
    if (reinterpret_cast<uintptr_t>(dst) % size)
        fail("memcheck", "%s: misaligned destination shared 0x%x for a %lld-byte copy", c.in.name.c_str(),
             hgemu_shared_address(dst), size);
    if (reinterpret_cast<uintptr_t>(src) % size)
        fail("memcheck", "%s: misaligned source %p for a %lld-byte copy", c.in.name.c_str(), (const void*)src, size);
    // The copy may land any time from now on: its accesses are checked now (racecheck sees the shared
    // write against accesses since the last barrier), and again when it lands.
    if (src_size) hgemu_access(src, src_size, 0, size);
    hgemu_access(dst, size, 1, size);
    CpAsyncState& s = cp_state();
    if (s.count == kMaxPending)
        fail("ptx", "%s: more than %u cp.async copies pending in this thread (a missing cp.async.wait_group?)",
             c.in.name.c_str(), kMaxPending);
    s.copies[s.count++] = {dst, src, s.open_group, (uint8_t)size, (uint8_t)src_size};
    hgemu_cp_async_issued(dst, size, s.open_group);
}

// Lands, in issue order, every pending copy of a group older than `limit`.
void land_before(uint32_t limit) {
    CpAsyncState& s = cp_state();
    unsigned kept = 0;
    for (unsigned i = 0; i < s.count; ++i) {
        const PendingCopy& p = s.copies[i];
        if (p.group >= limit) {
            s.copies[kept++] = p;
            continue;
        }
        char buf[16] = {0};  // bytes past src-size are zeros
        if (p.src_size) {
            hgemu_access(p.src, p.src_size, 0, p.size);
            memcpy(buf, p.src, p.src_size);
        }
        hgemu_cp_async_landed(p.dst, p.size);
        hgemu_access(p.dst, p.size, 1, p.size);
        memcpy(p.dst, buf, p.size);
    }
    s.count = kept;
}

void exec_wait_group(const Ctx& c) {
    const long long n = c.imm(c.in.args[0], "an immediate (\"n\")");
    if (n < 0) fail("ptx", "%s: negative group count %lld: %s", c.in.name.c_str(), n, one_line(c.text).c_str());
    CpAsyncState& s = cp_state();
    // All but the newest n committed groups complete; the open group is not committed, so it is not waited.
    if ((long long)s.open_group > n) land_before(s.open_group - (uint32_t)n);
}

}  // namespace

void hgemu_asm(const char* text, std::initializer_list<hg_operand> operands) {
    const Program& prog = program_for(text);
    if (!prog.error.empty()) hgemu_fail("ptx", prog.error.c_str());
    for (const Instr& in : prog.instrs) {
        const Ctx c{text, in, operands.begin(), operands.size()};
        switch (in.op) {
        case Op::Mma:
            exec_mma(c);
            break;
        case Op::Ldmatrix:
            exec_ldmatrix(c);
            break;
        case Op::CpAsync:
            exec_cp_async(c);
            break;
        case Op::CommitGroup:
            ++cp_state().open_group;
            break;
        case Op::WaitGroup:
            exec_wait_group(c);
            break;
        case Op::WaitAll:  // = cp.async.commit_group; cp.async.wait_group 0
            land_before(++cp_state().open_group);
            break;
        }
    }
}
