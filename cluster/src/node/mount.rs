//! The glue between a node's link to the server and its lock client: server calls
//! (invalidations, lock recovery) and grants go from the link to the lock client, lock
//! requests and invalidation answers go from the lock client to the link; and the
//! filesystem is the lock client's cache.

use std::sync::{Arc, OnceLock, Weak};

use crate::format::Key;
use crate::fs::Fs;
use crate::lock::{LockError, LockMode};
use crate::lock_client::{LockCache, LockSender, NetLocks};
use crate::msg::{ClientReply, NetLock, ServerCall};
use crate::net::{ClientCalls, NetClient};

/// Both directions between [`NetClient`] and [`NetLocks`]; each is set once at mount.
#[derive(Default)]
pub(crate) struct MountLink {
    client: OnceLock<Weak<NetClient>>,
    locks: OnceLock<Weak<NetLocks>>,
}

impl MountLink {
    pub(crate) fn attach(&self, client: &Arc<NetClient>, locks: &Arc<NetLocks>) {
        let _ = self.client.set(Arc::downgrade(client));
        let _ = self.locks.set(Arc::downgrade(locks));
    }

    fn client(&self) -> Option<Arc<NetClient>> {
        self.client.get().and_then(Weak::upgrade)
    }

    fn locks(&self) -> Option<Arc<NetLocks>> {
        self.locks.get().and_then(Weak::upgrade)
    }
}

impl ClientCalls for MountLink {
    fn server_call(&self, call_id: u64, call: ServerCall) {
        match call {
            ServerCall::Invalidate(nl) => match self.locks() {
                Some(l) => l.invalidate(call_id, nl),
                // Not mounted yet (or gone): nothing is held, so nothing to give up.
                None => {
                    if let Some(c) = self.client() {
                        c.reply(
                            call_id,
                            ClientReply::Invalidated(NetLock {
                                old_mode: nl.old_mode,
                                new_mode: LockMode::Null,
                                ..nl
                            }),
                        );
                    }
                }
            },
            ServerCall::LockRecover { start } => {
                let held = self.locks().map(|l| l.recover(&start)).unwrap_or_default();
                if let Some(c) = self.client() {
                    c.reply(call_id, ClientReply::Recovered(held));
                }
            }
        }
    }

    fn lock_granted(&self, grant: NetLock) {
        if let Some(l) = self.locks() {
            l.granted(grant);
        }
    }

    fn connected(&self, server_term: u64, new_server: bool) {
        if new_server {
            tracing::info!("connected to the server of term {server_term}");
            if let Some(l) = self.locks() {
                l.server_changed();
            }
        }
    }
}

impl LockSender for MountLink {
    fn send_request(&self, req: NetLock) -> Result<(), LockError> {
        let c = self
            .client()
            .ok_or_else(|| LockError::Shutdown("link closed".into()))?;
        c.send_lock(req)
            .map_err(|e| LockError::Unavailable(e.to_string()))
    }

    fn send_invalidated(&self, call_id: u64, resp: NetLock) -> Result<(), LockError> {
        let c = self
            .client()
            .ok_or_else(|| LockError::Shutdown("link closed".into()))?;
        c.reply(call_id, ClientReply::Invalidated(resp));
        Ok(())
    }
}

impl LockCache for Fs {
    fn invalidate(
        &self,
        start: &Key,
        end: &Key,
        old: LockMode,
        new: LockMode,
    ) -> Result<(), LockError> {
        self.invalidate_lock(start, end, old, new)
            .map_err(|e| LockError::Unavailable(format!("giving up a lock: {e}")))
    }
}
