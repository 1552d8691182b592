//! One module per command.

pub mod api_client;
pub mod fsck;
pub mod mkfs;
pub mod print;
pub mod quickstart;
pub mod serve;

use std::path::Path;
use std::sync::Arc;

use scoutgw_blockdev::{BlockDevice, DeviceOptions, FileDevice};

use crate::cli::{Cli, Command};
use crate::CliError;

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Mkfs(a) => mkfs::run(&a),
        Command::Print(a) => print::run(&a),
        Command::Fsck(a) => fsck::run(&a),
        Command::Quickstart(a) => quickstart::run(&a),
        Command::Serve(a) => serve::run(&a),
        Command::WalkInodes(a) => api_client::walk_inodes(&a),
        Command::Stat(a) => api_client::stat(&a),
        Command::SearchXattrs(a) => api_client::search_xattrs(&a),
        Command::Cluster(a) => api_client::cluster(&a),
    }
}

/// Open a device file or block device.
pub(crate) fn open_device(path: &Path, read_only: bool) -> Result<Arc<dyn BlockDevice>, CliError> {
    let dev = FileDevice::open(
        path,
        DeviceOptions {
            read_only,
            direct: false,
        },
    )?;
    Ok(Arc::new(dev))
}
