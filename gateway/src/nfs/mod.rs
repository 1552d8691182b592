//! The NFSv3 export, from the wire up: XDR primitives ([`xdr`]), RPC record marking over TCP
//! ([`record`]), ONC RPC calls and replies with AUTH_SYS credentials ([`rpc`]) and the
//! duplicate-request cache ([`drc`]).
//!
//! The NFSv3 and MOUNT procedures on top of the filesystem's `Fs` handle come next (issue 5);
//! they will use the NFSv3 types of the crate `nfsserve` where they fit.

pub mod drc;
pub mod record;
pub mod rpc;
pub mod xdr;
