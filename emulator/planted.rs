//! Planted-bug variants of the real kernels (the emulator proves itself): each is one module's host build with
//! one defect a developer could make, made at build time from the current `kernels/` source (no checked-in
//! copies), so that tests/suite/emulator_planted.rs can show that the emulator catches it with the right check.
//!
//! A variant's library is `<emulator dir>/planted/<variant>/libhgemu_kernels_<module>.so`, loaded in place of the
//! real one by `HOURGLASS_EMU_KERNELS_FROM=<that dir>` (emulator/driver.cpp); the PTX stays the real module's
//! (no defect changes a kernel's signature). Beside it, `check` holds the check the defect must trip and a
//! phrase of its message.

use super::{
    compile_kernels, link_against_libcuda, ptx_entries, ptx_globals, run_parallel, transform,
    write_if_changed, Module,
};
use std::path::Path;
use std::process::Command;

/// One defect: the variant's name, the module built, the file of `kernels/` changed (the module's .cu or a .cuh
/// it includes), the exact text replaced (exactly one occurrence), its replacement, and what must catch it: a
/// sanitizer check and a phrase of its finding, or "parity" (the comparison with the CPU reference) where no
/// sanitizer can see the defect.
pub struct Variant {
    pub name: &'static str,
    pub module: &'static str,
    pub file: &'static str,
    pub find: &'static str,
    pub replace: &'static str,
    pub check: &'static str,
    pub phrase: &'static str,
}

pub const VARIANTS: &[Variant] = &[
    // The A operand's registers a1 and a2 swapped in the mma's operand list: rows g+8 and columns 2t+8 trade
    // places, every product is wrong, and every access is still valid.
    Variant {
        name: "mma_fragment_swapped",
        module: "attention_mma",
        file: "attention_mma.cu",
        find: "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, ",
        replace: "{%0,%1,%2,%3}, {%4,%6,%5,%7}, {%8,%9}, ",
        check: "parity",
        phrase: "against the bf16 CPU reference",
    },
    // The tuned kernels' transposed ldmatrix (V in P·V, Q and dO in dK/dV, K in dQ) without its `.trans`.
    Variant {
        name: "ldmatrix_missing_trans",
        module: "attention_mma",
        file: "attention_mma.cu",
        find: "\"ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\\n\"",
        replace: "\"ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\\n\"",
        check: "parity",
        phrase: "against the bf16 CPU reference",
    },
    // The barrier at the bottom of a tile's iteration removed: a warp that finishes a tile issues the copy of
    // the tile after next into the stage that slower warps are still reading.
    Variant {
        name: "syncthreads_removed",
        module: "attention_mma",
        file: "attention_mma.cu",
        find: "void leave(int r0, int end) {\n        __syncthreads();\n",
        replace: "void leave(int r0, int end) {\n",
        check: "racecheck",
        phrase: "since the last barrier",
    },
    // The wait for the current tile's copies left out: the tile is read while its cp.async copies are in flight.
    Variant {
        name: "cp_async_wait_group_missing",
        module: "attention_mma",
        file: "attention_mma.cu",
        find: "        cp_async_commit();\n        cp_async_wait<STAGES - 1>();\n",
        replace: "        cp_async_commit();\n",
        check: "racecheck",
        phrase: "is still in flight",
    },
    // `<=` for `<` in a staged tile's row bound: the row one past a head's last key is copied.
    Variant {
        name: "tile_bound_off_by_one",
        module: "attention_mma",
        file: "attention_mma.cu",
        find: "const bool valid = j < src.len && c * 8 < src.dh;",
        replace: "const bool valid = j <= src.len && c * 8 < src.dh;",
        check: "memcheck",
        phrase: "invalid global read",
    },
    // The shortened length as `seq / factor + 1` instead of a rounded-up division: one output row too many,
    // stored past the end of the output when the length is a multiple of the factor.
    Variant {
        name: "out_of_bounds_store",
        module: "shorten",
        file: "shorten.cu",
        find: "const long short_len = (seq + factor - 1) / factor;",
        replace: "const long short_len = seq / factor + 1;",
        check: "memcheck",
        phrase: "invalid global write",
    },
    // A block of the fused LayerNorm backward writes only the dgamma half of its partial sums; the last block
    // then reads the dbeta half, which nothing wrote.
    Variant {
        name: "unwritten_read",
        module: "layernorm",
        file: "layernorm.cu",
        find: "for (int i = threadIdx.x; i < 2 * d; i += blockDim.x) {\n        float total = 0.0f;\n        for (int w = 0;",
        replace: "for (int i = threadIdx.x; i < d; i += blockDim.x) {\n        float total = 0.0f;\n        for (int w = 0;",
        check: "initcheck",
        phrase: "has never been written",
    },
];

/// Builds every variant under `dir/planted` (`dir`: the emulator's directory, holding libcuda.so; `src`: the
/// transformed real sources, whose headers a variant of a .cu file includes). `Err` names the variant whose
/// text is not found exactly once, so that a kernel edit that moves it is noticed.
pub fn build(
    cxx: &str,
    root: &Path,
    emu: &Path,
    dir: &Path,
    src: &Path,
    modules: &[Module],
) -> Result<(), String> {
    let mut jobs = Vec::new();
    let mut links = Vec::new();
    for v in VARIANTS {
        let fail = |why: String| format!("planted-bug variant {}: {why}", v.name);
        let module = modules
            .iter()
            .find(|m| m.name == v.module)
            .ok_or_else(|| fail(format!("no kernels module {}", v.module)))?;
        let path = root.join("kernels").join(v.file);
        let text =
            std::fs::read_to_string(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let found = text.matches(v.find).count();
        if found != 1 {
            return Err(fail(format!(
                "its text occurs {found} times in kernels/{} (exactly once needed; update emulator/planted.rs): {:?}",
                v.file, v.find
            )));
        }
        let changed = text.replacen(v.find, v.replace, 1);
        let ptx = std::fs::read_to_string(&module.ptx)
            .map_err(|e| fail(format!("{}: {e}", module.ptx.display())))?;
        let out = dir.join("planted").join(v.name);
        std::fs::create_dir_all(&out).map_err(|e| fail(format!("{}: {e}", out.display())))?;
        // The module's .cpp, and the changed header beside it where the defect is in a header: an include
        // looks in the including file's directory first, then in the real transformed sources.
        let cpp = out.join(format!("{}.cpp", v.module));
        if v.file.ends_with(".cu") {
            let host =
                transform::host_source(v.module, &changed, &ptx_entries(&ptx), &ptx_globals(&ptx))
                    .map_err(|e| fail(format!("transforming: {e}")))?;
            write_if_changed(&cpp, &host)?;
        } else {
            let stem = v.file.trim_end_matches(".cuh");
            let header = transform::host_source(stem, &changed, &[], &[])
                .map_err(|e| fail(format!("transforming: {e}")))?;
            write_if_changed(&out.join(v.file), &header)?;
            let real = std::fs::read_to_string(src.join(format!("{}.cpp", v.module)))
                .map_err(|e| fail(e.to_string()))?;
            write_if_changed(&cpp, &real)?;
        }
        write_if_changed(&out.join("check"), &format!("{}\n{}\n", v.check, v.phrase))?;
        let o = out.join(format!("{}.o", v.module));
        let c = compile_kernels(cxx, emu, &[&out, src], &cpp, &o);
        jobs.push((
            format!("planted-bug variant {} (kernels/{})", v.name, v.file),
            c,
        ));
        let mut l = Command::new(cxx);
        l.arg("-shared")
            .arg(&o)
            .arg("-o")
            .arg(out.join(format!("libhgemu_kernels_{}.so", v.module)));
        // libcuda.so is in the emulator directory, two levels up.
        link_against_libcuda(&mut l, dir);
        l.arg("-Wl,-rpath,$ORIGIN/../..");
        links.push((format!("linking planted-bug variant {}", v.name), l));
    }
    run_parallel(jobs)?;
    run_parallel(links)
}
