use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the C library's allocator: with a large item and block cache
/// resident, glibc's malloc spent 40% of a 1M-entry READDIRPLUS reply in its free-list
/// searches and consolidation (BENCHMARKS.md, "Directory operations with the item cache").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = scoutgw::cli::Cli::parse();
    match scoutgw::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scoutgw: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
