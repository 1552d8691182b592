//! Allocators of metadata blocks and data extents.
//!
//! * [`list`]: alloc lists, loaded into memory for one transaction. A transaction allocates
//!   metadata blocks from its `avail` list and records the committed blocks it stops using in
//!   its `freed` list ([`ListAlloc`], the [`crate::btree::MetaAlloc`] of every transaction).
//!   Freed blocks become reusable only after the transaction that freed them is durable: the
//!   server moves a committed `freed` list back into circulation at the next transaction.
//! * [`extent`]: free-extent btrees (`meta_alloc`, `data_alloc`, a client's `data_avail` and
//!   `data_freed`): extents indexed by position (to merge neighbours and catch double frees)
//!   and by size (to hand out the largest first).

pub mod extent;
pub mod list;

pub use list::{ListAlloc, MetaList};
