//! The NFS port: one TCP listener answering NFSv3, MOUNT v3 and the portmapper's GETPORT.
//!
//! [`NfsService::handle`] turns one RPC record into its reply (synchronously: it runs on a
//! blocking thread because `Fs` calls block); [`serve`] is the tokio shell around it: accept
//! connections, read records, run each on the blocking pool (so several requests of one
//! client are in flight at once, as the Linux client sends them), and write replies back in
//! completion order. Non-idempotent NFS calls go through the duplicate-request cache.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use scoutgw_cluster::fs::Fs;
use scoutgw_metrics::NodeMetrics;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use super::drc::{DrcKey, DuplicateCache, Seen};
use super::export::ExportOptions;
use super::mount::{portmap_call, Mount, MOUNT_PROGRAM, MOUNT_V3, PORTMAP_PROGRAM, PORTMAP_V2};
use super::nfs3::{is_non_idempotent, Nfs3, ProcError, NFS_PROGRAM, NFS_V3};
use super::record::{read_record, write_record, RecordError};
use super::rpc::{accepted, denied_auth, parse_call, Accept, AuthStat};

/// The largest record accepted: a 1 MiB WRITE plus its header and credentials.
pub const MAX_RECORD: usize = (1 << 20) + 64 * 1024;
/// Requests of one connection running at once.
const PER_CONNECTION_INFLIGHT: usize = 64;
/// Requests of the whole node running at once (shutdown waits for all of them).
pub const NODE_INFLIGHT: u32 = 1024;

/// Everything a request needs: the programs, the export and the duplicate-request cache.
pub struct NfsService {
    nfs: Nfs3,
    mount: Mount,
    drc: DuplicateCache,
    export: Arc<ExportOptions>,
    port: AtomicU16,
    metrics: Arc<NodeMetrics>,
}

const NFS_PROC_NAMES: [&str; 22] = [
    "NULL",
    "GETATTR",
    "SETATTR",
    "LOOKUP",
    "ACCESS",
    "READLINK",
    "READ",
    "WRITE",
    "CREATE",
    "MKDIR",
    "SYMLINK",
    "MKNOD",
    "REMOVE",
    "RMDIR",
    "RENAME",
    "LINK",
    "READDIR",
    "READDIRPLUS",
    "FSSTAT",
    "FSINFO",
    "PATHCONF",
    "COMMIT",
];
const MOUNT_PROC_NAMES: [&str; 6] = ["MOUNT_NULL", "MNT", "DUMP", "UMNT", "UMNTALL", "EXPORT"];

/// The metric label of a call's procedure.
fn procedure_label(prog: u32, procedure: u32) -> &'static str {
    let pick = |names: &[&'static str]| names.get(procedure as usize).copied().unwrap_or("unknown");
    match prog {
        NFS_PROGRAM => pick(&NFS_PROC_NAMES),
        MOUNT_PROGRAM => pick(&MOUNT_PROC_NAMES),
        PORTMAP_PROGRAM => match procedure {
            0 => "PMAP_NULL",
            3 => "GETPORT",
            _ => "unknown",
        },
        _ => "unknown",
    }
}

/// The metric label of a reply's outcome: the NFS status of an answered NFS call, else
/// the RPC accept or reject state.
fn status_label(prog: u32, reply: &[u8]) -> &'static str {
    let word = |at: usize| {
        reply
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    if word(8) != Some(0) {
        return "RPC_DENIED";
    }
    match word(20) {
        Some(0) if prog == NFS_PROGRAM => word(24).map_or("SUCCESS", super::status::status_name),
        Some(0) => "SUCCESS",
        Some(1) => "PROG_UNAVAIL",
        Some(2) => "PROG_MISMATCH",
        Some(3) => "PROC_UNAVAIL",
        Some(4) => "GARBAGE_ARGS",
        _ => "SYSTEM_ERR",
    }
}

impl NfsService {
    pub fn new(
        fs: Arc<Fs>,
        fsid: u64,
        export: ExportOptions,
        write_verf: [u8; 8],
        drc_entries: usize,
        metrics: Arc<NodeMetrics>,
    ) -> Self {
        let export = Arc::new(export);
        Self {
            nfs: Nfs3::new(fs, fsid, export.clone(), write_verf, metrics.clone()),
            mount: Mount::new(export.clone()),
            drc: DuplicateCache::new(drc_entries),
            export,
            port: AtomicU16::new(0),
            metrics,
        }
    }

    /// The port GETPORT answers with (set once the listener is bound).
    pub fn set_port(&self, port: u16) {
        self.port.store(port, Ordering::Relaxed);
    }

    /// The reply to one RPC record from `client`, or `None` when nothing is to be sent
    /// (not a call; a retransmission of a request still running).
    pub fn handle(&self, client: SocketAddr, record: &[u8]) -> Option<Vec<u8>> {
        let start = std::time::Instant::now();
        let call = match parse_call(record) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.nfs_bad_records.inc();
                return e.reply();
            }
        };
        let (prog, procedure) = (call.prog, call.procedure);
        let reply = self.handle_call(client, record, call);
        if let Some(r) = &reply {
            let name = procedure_label(prog, procedure);
            self.metrics
                .nfs_requests
                .with_label_values(&[name, status_label(prog, r)])
                .inc();
            self.metrics
                .nfs_request_seconds
                .with_label_values(&[name])
                .observe(start.elapsed().as_secs_f64());
        }
        reply
    }

    fn handle_call(
        &self,
        client: SocketAddr,
        record: &[u8],
        call: super::rpc::Call<'_>,
    ) -> Option<Vec<u8>> {
        let xid = call.xid;
        let reply = |res: Result<Vec<u8>, ProcError>| match res {
            Ok(body) => accepted(xid, Accept::Success, &body),
            Err(ProcError::ProcUnavail) => accepted(xid, Accept::ProcUnavail, &[]),
            Err(ProcError::GarbageArgs(_)) => accepted(xid, Accept::GarbageArgs, &[]),
        };
        match (call.prog, call.vers) {
            (NFS_PROGRAM, NFS_V3) => {
                if !self.export.admits(client.ip()) {
                    return Some(denied_auth(xid, AuthStat::TooWeak));
                }
                let caller = self.export.caller(&call.cred);
                let run = || {
                    catch_unwind(AssertUnwindSafe(|| {
                        self.nfs.call(call.procedure, call.args, &caller)
                    }))
                };
                if !is_non_idempotent(call.procedure) {
                    return Some(match run() {
                        Ok(res) => reply(res),
                        Err(_) => accepted(xid, Accept::SystemErr, &[]),
                    });
                }
                let key = DrcKey::new(client.ip(), xid, record);
                match self.drc.begin(key) {
                    Seen::New => {}
                    Seen::InProgress => {
                        return None;
                    }
                    Seen::Replay(r) => {
                        self.metrics.nfs_drc_replays.inc();
                        return Some((*r).clone());
                    }
                }
                match run() {
                    Ok(res) => {
                        let out = reply(res);
                        self.drc.finish(key, out.clone());
                        Some(out)
                    }
                    Err(_) => {
                        self.drc.abandon(key);
                        Some(accepted(xid, Accept::SystemErr, &[]))
                    }
                }
            }
            (NFS_PROGRAM, _) => Some(accepted(
                xid,
                Accept::ProgMismatch {
                    low: NFS_V3,
                    high: NFS_V3,
                },
                &[],
            )),
            (MOUNT_PROGRAM, MOUNT_V3) => Some(reply(self.mount.call(
                call.procedure,
                call.args,
                client.ip(),
                |names| self.nfs.dir_handle(names),
            ))),
            (MOUNT_PROGRAM, _) => Some(accepted(
                xid,
                Accept::ProgMismatch {
                    low: MOUNT_V3,
                    high: MOUNT_V3,
                },
                &[],
            )),
            (PORTMAP_PROGRAM, PORTMAP_V2) => Some(reply(portmap_call(
                call.procedure,
                call.args,
                self.port.load(Ordering::Relaxed),
            ))),
            (PORTMAP_PROGRAM, _) => Some(accepted(
                xid,
                Accept::ProgMismatch {
                    low: PORTMAP_V2,
                    high: PORTMAP_V2,
                },
                &[],
            )),
            _ => Some(accepted(xid, Accept::ProgUnavail, &[])),
        }
    }
}

/// Accept connections until `shutdown` turns true. Every request holds a permit of
/// `inflight` while it runs, so the caller can wait for in-flight requests to finish by
/// acquiring all [`NODE_INFLIGHT`] permits.
pub async fn serve(
    listener: TcpListener,
    svc: Arc<NfsService>,
    inflight: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, peer, svc.clone(), inflight.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!("nfs: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// The permits a request holds until its reply is on the socket.
type Permits = (
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::OwnedSemaphorePermit,
);

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    svc: Arc<NfsService>,
    inflight: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut rd, mut wr) = stream.into_split();
    // Replies travel with the request's permits: a request counts as in flight until its
    // reply is written to the socket, so a shutdown drain sends every reply it executed.
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, Permits)>(PER_CONNECTION_INFLIGHT);
    let writer = tokio::spawn(async move {
        while let Some((reply, permits)) = rx.recv().await {
            let written = write_record(&mut wr, &reply).await;
            drop(permits);
            if written.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let per_conn = Arc::new(Semaphore::new(PER_CONNECTION_INFLIGHT));
    loop {
        let record = tokio::select! {
            r = read_record(&mut rd, MAX_RECORD) => r,
            _ = shutdown.changed() => break,
        };
        let record = match record {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(RecordError::TooLarge { len, max }) => {
                svc.metrics.nfs_bad_records.inc();
                tracing::warn!("nfs: {peer}: record of {len} bytes (limit {max}); closing");
                break;
            }
            Err(e) => {
                tracing::debug!("nfs: {peer}: {e}");
                break;
            }
        };
        let Ok(conn_permit) = per_conn.clone().acquire_owned().await else {
            break;
        };
        let Ok(node_permit) = inflight.clone().acquire_owned().await else {
            break;
        };
        let svc = svc.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let out = tokio::task::spawn_blocking(move || svc.handle(peer, &record)).await;
            if let Ok(Some(reply)) = out {
                let _ = tx.send((reply, (conn_permit, node_permit))).await;
            }
        });
    }
    drop(tx);
    let _ = writer.await;
}
