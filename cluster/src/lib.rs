//! The scoutfs-style clustered filesystem of scoutgw.
//!
//! Today this crate holds the persistent format and the offline tools that write and read it:
//!
//! * [`format`]: every on-disk structure above the block header — the super block, quorum
//!   blocks, item keys, btree blocks, allocator roots and alloc lists — as `zerocopy` structs
//!   with little-endian fields and compile-time size checks, plus the fixed device layout.
//! * [`mkfs`]: writing a new filesystem onto a pair of devices.
//! * [`inspect`]: reading a filesystem back for `scoutgw print` (super, quorum blocks, a
//!   summary of every tree), verifying every block it touches.
//!
//! Later issues add the COW btree, allocators, forest of log btrees, transactions, locks,
//! quorum, the server and the POSIX layer here.
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
