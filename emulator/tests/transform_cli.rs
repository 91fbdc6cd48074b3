//! emulator/transform.rs from the command line, for the self-tests that build kernels outside cargo:
//! `transform_cli <module> <input .cu/.cuh> <output> [entry|=global ...]` (entries: the kernel names the
//! registry lists; `=name`: a module variable).
#[path = "../transform.rs"]
mod transform;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: transform_cli <module> <input> <output> [entry|=global ...]");
        std::process::exit(2);
    }
    let (entries, globals): (Vec<String>, Vec<String>) = args[3..].iter().cloned().partition(|a| !a.starts_with('='));
    let globals: Vec<String> = globals.iter().map(|g| g[1..].to_string()).collect();
    let source = std::fs::read_to_string(&args[1]).unwrap_or_else(|e| {
        eprintln!("{}: {e}", args[1]);
        std::process::exit(1)
    });
    match transform::host_source(&args[0], &source, &entries, &globals) {
        Ok(host) => std::fs::write(&args[2], host).unwrap_or_else(|e| {
            eprintln!("{}: {e}", args[2]);
            std::process::exit(1)
        }),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}
