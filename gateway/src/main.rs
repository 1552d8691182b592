use std::process::ExitCode;

use clap::Parser;

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
