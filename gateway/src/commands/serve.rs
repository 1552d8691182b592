//! `scoutgw serve --config FILE`: run one gateway node until SIGTERM.

use crate::cli::ServeArgs;
use crate::config::NodeConfig;
use crate::CliError;

pub fn run(a: &ServeArgs) -> Result<(), CliError> {
    let cfg = NodeConfig::load(&a.config)?;
    crate::node::run(&cfg, |addr, fsid| {
        println!("scoutgw: serving NFSv3 on {addr} (filesystem {fsid:016x})");
    })
}
