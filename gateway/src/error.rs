//! CLI errors and their exit codes.
//!
//! | exit code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the command ran and failed: device I/O error, corruption found, no filesystem |
//! | 2 | the request was refused: bad arguments, invalid quorum slots, devices too small, an existing filesystem without `--force` (also clap's code for unparsable arguments) |
//!
//! `scoutgw fsck` uses the e2fsck codes instead: 0 clean, 4 problems found, 8 could not check.

use scoutgw_blockdev::BlockError;
use scoutgw_cluster::mkfs::MkfsError;
use scoutgw_cluster::FormatError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("mkfs: {0}")]
    Mkfs(#[from] MkfsError),

    #[error("{0}")]
    Format(#[from] FormatError),

    #[error("{0}")]
    Block(#[from] BlockError),

    #[error("{0}")]
    Usage(String),

    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0} problem(s) found on the filesystem (listed above)")]
    Damaged(usize),

    #[error("fsck: {0} problem(s) found (listed above)")]
    FsckProblems(usize),

    #[error("fsck: cannot check: {0}")]
    FsckFailed(String),

    #[error("{0}")]
    Node(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Mkfs(e) if e.is_usage() => 2,
            CliError::Usage(_) => 2,
            CliError::FsckProblems(_) => 4,
            CliError::FsckFailed(_) => 8,
            _ => 1,
        }
    }
}
