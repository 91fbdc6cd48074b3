// Runs the inline-PTX self-test (emulator/ptx_selftest.cpp, inside libcuda.so) and prints its report; exit status
// 0 when every case passes. Built beside the emulator by emulator/selftest.rs; run by tests/suite/emulator.rs.
#include <stddef.h>
#include <stdio.h>

extern "C" int hgemu_selftest_ptx(char* report, size_t len);

int main() {
    static char report[1 << 16];
    const int rc = hgemu_selftest_ptx(report, sizeof report);
    printf("%s", report);
    return rc == 0 ? 0 : 1;
}
