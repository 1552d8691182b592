//! The scoutfs-style clustered filesystem of scoutgw.
//!
//! It holds the persistent [`format`](mod@format) and the offline tools ([`mkfs`], [`inspect`],
//! [`fsck`]); the metadata engine: the COW [`btree`], the allocators ([`alloc`]), the
//! client's transactions over its log tree and the merged forest ([`client`], with its
//! [`item_cache`]), the [`server`] that hands out log trees and merges them into fs_root;
//! the cluster protocol: [`quorum`] election, [`fence`], cluster locks ([`lock`],
//! [`lock_client`], [`lock_server`], [`recovery`]), the message transport ([`msg`], [`net`])
//! and the [`node`] that runs them; and the POSIX layer on top ([`fs`]).
//!
//! Limits: names up to 255 bytes; files up to 2^60 bytes; xattr values up to 64 KiB; item
//! values up to 896 bytes; up to 15 quorum slots; inode numbers are 64-bit and never reused.
//! A metadata device must be at least 64 MiB. Near full, ENOSPC comes before the last blocks
//! are used: each mount keeps room for one operation and its commit, the server a reserve
//! (1/64 of the device, 64 to 256 blocks of 64 KiB) for its own requests and merges and
//! room for merging the finalized log trees, and operations that grow what is stored leave
//! 96 blocks for those that remove (see `Fs::reserve_meta`), so a full filesystem can be
//! cleaned up (with several mounts that all filled it, not yet always: ARCHITECTURE.md).
//!
//! This crate must not depend on NFS, HTTP, S3, configuration files or the CLI: the gateway
//! and archive crates depend on it, never the other way round. Block I/O goes through
//! `scoutgw-blockdev` only.

pub mod alloc;
pub mod btree;
pub mod client;
pub mod fence;
pub mod format;
pub mod fs;
pub mod fsck;
pub mod inspect;
pub mod item_cache;
pub mod lock;
pub mod lock_client;
pub mod lock_names;
pub mod lock_server;
pub mod mkfs;
pub mod msg;
pub mod net;
pub mod node;
pub mod quorum;
pub mod recovery;
pub mod server;

pub use format::FormatError;
