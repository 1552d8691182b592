//! The TCP transport between clients (mounts) and the server (the elected leader).
//!
//! It carries the typed messages of [`crate::msg`] and adds framing, not new semantics:
//!
//! * [`wire`]: the frame header and the hand-written little-endian codec of every
//!   [`Request`](crate::msg::Request), [`Response`](crate::msg::Response),
//!   [`ServerError`](crate::msg::ServerError), [`ServerCall`](crate::msg::ServerCall) and
//!   [`ClientReply`](crate::msg::ClientReply).
//! * [`client`]: [`NetClient`], a mount's end. It implements
//!   [`ServerLink`](crate::msg::ServerLink) (blocking calls multiplexed over one connection),
//!   sends lock requests without waiting for their grants, and delivers server calls. Every
//!   request stays queued until answered; when the connection breaks the client finds the
//!   leader again, greets it with the last server term it knew and resends the unanswered
//!   requests in id order (digest §7.2), so server handlers must be idempotent (seed 004).
//! * [`server`]: [`NetServer`], the leader's listener: one reader thread per connection,
//!   greetings first, answers now or later, and server calls kept in a per-rid outbox until the
//!   client replies, resent when that client reconnects.
//!
//! Both sides use std threads and blocking sockets with `TCP_NODELAY`; each sends a ping
//! after a quarter of the idle timeout without sending anything, and closes a connection
//! that stayed silent for the whole idle timeout.

pub mod client;
pub mod server;
pub mod wire;

pub use client::{ClientCalls, FindServer, NetClient, NetClientOptions};
pub use server::{NetServer, ServerCalls};

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Lock a mutex, ignoring poisoning: no lock in this module is held across a callback, so a
/// panic elsewhere leaves the protected state consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds since `base`, for timestamps kept in atomics.
fn millis(base: Instant) -> u64 {
    base.elapsed().as_millis() as u64
}

/// The ping interval for an idle timeout: a quarter of it, at least 1 ms.
fn ping_interval(idle: Duration) -> Duration {
    (idle / 4).max(Duration::from_millis(1))
}
