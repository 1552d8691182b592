//! Command-line syntax of `scoutgw`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use scoutgw_cluster::mkfs::QuorumSlot;

use crate::size::parse_size;

/// scoutgw: a clustered file gateway (scoutfs-style filesystem on shared block devices,
/// exported over NFSv3 and HTTP).
#[derive(Debug, Parser)]
#[command(name = "scoutgw", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a new filesystem onto a metadata device and a data device.
    ///
    /// Refuses to overwrite an existing scoutgw filesystem unless --force is given. Every
    /// check happens before anything is written: a refused mkfs leaves the devices untouched.
    // -V is the format version here (as in scoutfs mkfs); `scoutgw --version` still works.
    #[command(disable_version_flag = true)]
    Mkfs(MkfsArgs),

    /// Show the super block, quorum blocks and a summary of every tree of a filesystem.
    ///
    /// Every block read is verified; problems are listed and make the exit code 1.
    Print(PrintArgs),

    /// Check a filesystem offline: every tree readable and ordered, allocator totals right,
    /// every metadata and data block referenced or free exactly once.
    ///
    /// Exit codes follow e2fsck: 0 clean, 4 problems found, 8 could not check. Run it only
    /// while no node has the filesystem mounted.
    Fsck(FsckArgs),

    /// Set up a one-node filesystem on device files under a local folder and show it.
    ///
    /// Creates DIR/meta.dev and DIR/data.dev as sparse files if they are missing, makes a
    /// one-slot filesystem on them unless one is already there, and prints it. Running it
    /// again reuses the existing filesystem.
    Quickstart(QuickstartArgs),

    /// Run a gateway node: mount the filesystem and export it over NFSv3 until SIGTERM.
    ///
    /// The configuration file (TOML) is documented in packaging/scoutgw.toml; keys can be
    /// overridden with SCOUTGW_<SECTION>__<KEY> environment variables.
    Serve(ServeArgs),

    /// List (seq, inode) entries of the meta_seq or data_seq index from a node's HTTP API,
    /// in order, never above the stable horizon: inodes changed in [FIRST, LAST].
    WalkInodes(WalkInodesArgs),

    /// Show an inode's attributes with archive fields (data_version, online/offline
    /// blocks, meta_seq, data_seq, crtime) and its paths, from a node's HTTP API.
    Stat(StatArgs),

    /// List the inodes carrying a scoutfs.srch.* xattr, from a node's HTTP API.
    SearchXattrs(SearchXattrsArgs),

    /// Show the cluster as a node sees it: term, leader, quorum members and their events,
    /// mounted clients, and the node's own role, from its HTTP API.
    Cluster(ClusterArgs),
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where a node's HTTP API is.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The node's HTTP API.
    #[arg(long, env = "SCOUTGW_API", default_value = "http://127.0.0.1:8049")]
    pub api: String,

    /// Bearer token, when the node requires one.
    #[arg(long, env = "SCOUTGW_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct WalkInodesArgs {
    /// meta_seq or data_seq.
    #[arg(value_parser = ["meta_seq", "data_seq"])]
    pub index: String,
    /// First seq (inclusive).
    pub first: u64,
    /// Last seq (inclusive); -1 for up to the stable horizon.
    #[arg(allow_hyphen_values = true, value_parser = parse_last)]
    pub last: i64,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print one JSON document instead of "SEQ INO" lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatArgs {
    /// A path on a mount of the gateway, or an inode number.
    pub target: PathBuf,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SearchXattrsArgs {
    /// The xattr name (scoutfs.srch.*).
    pub name: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

fn parse_last(s: &str) -> Result<i64, String> {
    match s.parse::<i64>() {
        Ok(v) if v >= -1 => Ok(v),
        _ => Err(format!("{s:?}: a seq, or -1 for up to the stable horizon")),
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The node's configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct MkfsArgs {
    /// A quorum slot: NR,ADDR,PORT (slot 0-14, IPv4 address, UDP/TCP port). Repeat for
    /// each quorum member; a majority of the slots must be up to elect a leader.
    #[arg(short = 'Q', long = "quorum-slot", value_name = "NR,ADDR,PORT", required = true,
          value_parser = parse_slot)]
    pub slots: Vec<QuorumSlot>,

    /// Overwrite an existing scoutgw filesystem.
    #[arg(short = 'f', long)]
    pub force: bool,

    /// Allow devices smaller than 64 GiB (down to 64 MiB metadata, 16 MiB data), for tests.
    #[arg(short = 'A', long)]
    pub allow_small_size: bool,

    /// Use at most this much of the metadata device (e.g. 512G).
    #[arg(short = 'm', long, value_name = "SIZE", value_parser = parse_size)]
    pub max_meta_size: Option<u64>,

    /// Use at most this much of the data device (e.g. 10T).
    #[arg(short = 'd', long, value_name = "SIZE", value_parser = parse_size)]
    pub max_data_size: Option<u64>,

    /// Format version to write.
    #[arg(short = 'V', long, value_name = "VERSION",
          default_value_t = scoutgw_cluster::format::layout::FORMAT_VERSION_MAX)]
    pub format_version: u64,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,

    /// The metadata device (block device or file).
    pub meta_dev: PathBuf,

    /// The data device (block device or file).
    pub data_dev: PathBuf,
}

#[derive(Debug, Args)]
pub struct PrintArgs {
    /// The metadata device.
    pub meta_dev: PathBuf,

    /// Print as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FsckArgs {
    /// The metadata device.
    pub meta_dev: PathBuf,

    /// The data device.
    pub data_dev: PathBuf,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// Folder for the device files.
    #[arg(long, default_value = "scoutgw-data")]
    pub dir: PathBuf,

    /// Size of the metadata device file (sparse).
    #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = parse_size)]
    pub meta_size: u64,

    /// Size of the data device file (sparse).
    #[arg(long, value_name = "SIZE", default_value = "16G", value_parser = parse_size)]
    pub data_size: u64,

    /// Quorum address (UDP) and server port (TCP) of the single node, recorded in the
    /// filesystem as quorum slot 0. Port 0 picks a port free on ADDR when the filesystem is
    /// made (so several quickstarts on one host do not collide); `print` shows it.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:0")]
    pub quorum_addr: std::net::SocketAddrV4,

    /// Address of the NFS port (NFSv3, MOUNT v3 and portmapper GETPORT on one TCP port).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:2049")]
    pub nfs_bind: std::net::SocketAddr,

    /// Address of the HTTP API and /metrics.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8049")]
    pub http_bind: std::net::SocketAddr,

    /// Only create the devices, the filesystem and the configuration; do not serve.
    #[arg(long)]
    pub setup_only: bool,

    /// A cluster of N nodes on this host (1-15): node i owns quorum slot i, listens on
    /// 127.0.0.(i+1) (NFS and HTTP on the ports of --nfs-bind and --http-bind) and is
    /// configured in DIR/node<i>.toml; each runs as its own `scoutgw serve` process.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=15))]
    pub nodes: u8,
}

fn parse_slot(s: &str) -> Result<QuorumSlot, String> {
    s.parse()
        .map_err(|e: scoutgw_cluster::mkfs::MkfsError| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks (duplicate flags and the like) over every command.
    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
