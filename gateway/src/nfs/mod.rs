//! The NFSv3 export, from the wire up: XDR primitives ([`xdr`]), RPC record marking over TCP
//! ([`record`]), ONC RPC calls and replies with AUTH_SYS credentials ([`rpc`]), the
//! duplicate-request cache ([`drc`]), file handles ([`handle`]), export options and
//! permission checks ([`export`]), errors to NFS status codes ([`status`]), the NFSv3
//! procedures over `Fs` ([`nfs3`]), MOUNT v3 and portmapper GETPORT ([`mount`]), and the
//! TCP listener that ties them together ([`server`]).
//!
//! The reply types (`fattr3`, `wcc_data`, ...) are those of the crate `nfsserve`; the RPC
//! dispatch is ours, because the crate's loses data (no COMMIT/LINK/MKNOD, retransmissions
//! dropped, handles that change on every restart).

pub mod drc;
pub mod export;
pub mod handle;
pub mod mount;
pub mod nfs3;
pub mod record;
pub mod rpc;
pub mod server;
pub mod status;
pub mod xdr;
