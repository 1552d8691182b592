//! The scoutgw gateway node: the `scoutgw` command line, and (in later issues) configuration,
//! the NFSv3 export, the HTTP API and the wiring of one node's runtime.
//!
//! Today it holds the offline commands (`mkfs`, `print`, `fsck`, `quickstart`) and the first
//! layers of the NFS export ([`nfs`]: XDR, RPC record marking, RPC calls with AUTH_SYS, the
//! duplicate-request cache). Each command is a module of [`commands`] that turns parsed
//! arguments into calls on `scoutgw-cluster` and formats the result; [`error::CliError`] maps
//! every failure to a message and an exit code.
//!
//! This crate is the edge: it may depend on every other scoutgw crate, and nothing depends on
//! it. Filesystem logic does not belong here.

pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod group_commit;
pub mod http;
pub mod metered;
pub mod nfs;
pub mod node;
pub mod size;

pub use error::CliError;
