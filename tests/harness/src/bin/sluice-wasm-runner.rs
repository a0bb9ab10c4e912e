//! cargo's runner for `--target wasm32-wasip1` (see `.cargo/config.toml`): runs the test binary
//! given as the first argument with the remaining arguments, and exits with its exit code.

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(wasm) = args.next() else {
        eprintln!("usage: sluice-wasm-runner MODULE.wasm [ARGS...]");
        std::process::exit(2);
    };
    let program = std::path::Path::new(&wasm).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let argv = std::iter::once(program).chain(args).collect();
    match sluice_harness::runner::run_command(std::path::Path::new(&wasm), argv) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sluice-wasm-runner: {e}");
            std::process::exit(101);
        }
    }
}
