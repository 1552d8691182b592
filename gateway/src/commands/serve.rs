//! `scoutgw serve --config FILE`: run one gateway node until SIGTERM.

use crate::cli::ServeArgs;
use crate::config::NodeConfig;
use crate::CliError;

pub fn run(a: &ServeArgs) -> Result<(), CliError> {
    let cfg = NodeConfig::load(&a.config)?;
    crate::node::run(&cfg, |s| {
        println!(
            "scoutgw: serving NFSv3 on {} and HTTP on {} (filesystem {:016x})",
            s.nfs, s.http, s.fsid
        );
    })
}
