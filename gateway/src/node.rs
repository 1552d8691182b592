//! One gateway node at run time (`scoutgw serve`): the filesystem client, the server (a
//! one-node cluster leads its only quorum slot), the background merger, the periodic
//! committer and the NFS port, started in that order and stopped in reverse on SIGTERM or
//! SIGINT.
//!
//! Shutdown is graceful: stop accepting connections and reading requests, wait for the
//! requests in flight, commit, then unmount (farewell to the server) so the next start
//! finds a clean filesystem.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use scoutgw_blockdev::MetaDev;
use scoutgw_cluster::client::LocalServer;
use scoutgw_cluster::fs::{Fs, FsOptions};
use scoutgw_cluster::lock::LocalLocks;
use scoutgw_cluster::server::{Server, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use std::sync::atomic::{AtomicBool, Ordering};

use scoutgw_metrics::NodeMetrics;
use serde_json::json;

use crate::commands::open_device;
use crate::config::NodeConfig;
use crate::http::api::{Api, ClusterView};
use crate::http::server::HttpService;
use crate::metered::MeteredDevice;
use crate::nfs::server::{serve, NfsService, NODE_INFLIGHT};
use crate::CliError;

/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

fn node_err(what: &str) -> impl Fn(String) -> CliError + '_ {
    move |e| CliError::Node(format!("{what}: {e}"))
}

/// This node's rid: read from `state_dir/rid`, or chosen at random and written there on
/// first start, so a restarted node resumes its own log trees.
fn node_rid(state_dir: &Path) -> Result<u64, CliError> {
    let path = state_dir.join("rid");
    let io = |source| CliError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => u64::from_str_radix(s.trim(), 16)
            .ok()
            .filter(|r| *r != 0)
            .ok_or_else(|| CliError::Usage(format!("{}: not a rid", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut rid = 0u64;
            while rid == 0 {
                let mut b = [0u8; 8];
                getrandom::fill(&mut b).map_err(|e| CliError::Node(format!("random rid: {e}")))?;
                rid = u64::from_le_bytes(b);
            }
            std::fs::write(&path, format!("{rid:016x}\n")).map_err(io)?;
            Ok(rid)
        }
        Err(e) => Err(io(e)),
    }
}

fn init_logging(level: &str) {
    let level = level.parse().unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Addresses a started node serves on.
#[derive(Debug, Clone, Copy)]
pub struct Serving {
    pub nfs: SocketAddr,
    pub http: SocketAddr,
    pub fsid: u64,
}

/// What `GET /v1/cluster` reports: the quorum slots with their recorded events, the
/// mounted clients, and this node's role. A one-node cluster: this node runs the server in
/// process, so it leads its only slot.
fn cluster_view(server: &Arc<LocalServer>, rid: u64) -> ClusterView {
    let server = server.clone();
    Arc::new(move || {
        server.with(|s| {
            let sb = *s.stable_super();
            let md = s.meta_dev().clone();
            let mut term = 0;
            let mut slots = Vec::new();
            for (slot, addr) in sb.qconf.present() {
                let rep = scoutgw_cluster::inspect::quorum_report(&md, slot, addr.to_string());
                term = rep.events.iter().map(|e| e.term).fold(term, u64::max);
                slots.push(json!({
                    "slot": slot,
                    "addr": addr.to_string(),
                    "events": rep.events,
                }));
            }
            let first = scoutgw_cluster::format::log_trees::mounted_client_key(0);
            let last = scoutgw_cluster::format::log_trees::mounted_client_key(u64::MAX);
            let clients =
                scoutgw_cluster::btree::range(&md, None, &sb.mounted_clients, &first, &last)
                    .map_err(|e| format!("reading mounted clients: {e}"))?;
            let mounted: Vec<_> = clients
                .iter()
                .map(|it| json!({ "rid": format!("{:016x}", it.key.first.get()) }))
                .collect();
            let leader = sb
                .qconf
                .present()
                .next()
                .map(|(slot, addr)| json!({ "slot": slot, "addr": addr.to_string() }));
            Ok(json!({
                "fsid": format!("{:016x}", sb.fsid()),
                "term": term,
                "leader": leader,
                "quorum_slots": slots,
                "mounted_clients": mounted,
                "this_node": { "rid": format!("{rid:016x}"), "role": "leader" },
            }))
        })
    })
}

/// Start a node, call `on_ready` once it serves, and run until SIGTERM or SIGINT.
pub fn run(cfg: &NodeConfig, on_ready: impl FnOnce(Serving)) -> Result<(), CliError> {
    init_logging(&cfg.node.log);
    let export = cfg.export_options()?;
    std::fs::create_dir_all(&cfg.node.state_dir).map_err(|source| CliError::Io {
        path: cfg.node.state_dir.clone(),
        source,
    })?;
    let rid = node_rid(&cfg.node.state_dir)?;
    let pid_path = cfg.node.state_dir.join("scoutgw.pid");
    std::fs::write(&pid_path, format!("{}\n", std::process::id())).map_err(|source| {
        CliError::Io {
            path: pid_path.clone(),
            source,
        }
    })?;

    let metrics = Arc::new(NodeMetrics::new());
    let cache_bytes = cfg.node.cache_mib << 20;
    let meta = MeteredDevice::wrap(
        open_device(&cfg.node.meta_device, false)?,
        "meta",
        metrics.clone(),
    );
    let data = MeteredDevice::wrap(
        open_device(&cfg.node.data_device, false)?,
        "data",
        metrics.clone(),
    );
    let server = Server::open(
        meta.clone(),
        ServerConfig {
            cache_bytes,
            ..ServerConfig::default()
        },
    )
    .map_err(|e| node_err("starting the server")(e.to_string()))?;
    let fsid = server.fsid();
    let server = Arc::new(LocalServer::new(server));
    let md = Arc::new(MetaDev::new(meta, fsid, cache_bytes));
    let locks = Arc::new(LocalLocks::new());
    let fs = Fs::mount(
        md.clone(),
        data,
        server.clone(),
        locks.clone(),
        rid,
        FsOptions {
            max_dirty_items: cfg.fs.max_dirty_items,
            data_wait_timeout: Duration::from_secs(cfg.fs.data_wait_timeout_secs),
            ..FsOptions::default()
        },
    )
    .map_err(|e| node_err("mounting")(e.to_string()))?;
    let fs = Arc::new(fs);
    let merger = server.spawn_merger(Duration::from_millis(cfg.fs.merge_interval_ms.max(1)));

    let mut verf = [0u8; 8];
    getrandom::fill(&mut verf).map_err(|e| CliError::Node(format!("write verifier: {e}")))?;
    let svc = Arc::new(NfsService::new(
        fs.clone(),
        fsid,
        export,
        verf,
        cfg.nfs.drc_entries,
        metrics.clone(),
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let http_svc = Arc::new(HttpService {
        api: Arc::new(Api {
            fs: fs.clone(),
            cluster: cluster_view(&server, rid),
            max_page: cfg.http.max_page.max(1),
        }),
        token: cfg.http.token.clone().filter(|t| !t.is_empty()),
        metrics: metrics.clone(),
        ready: ready.clone(),
        refresh_metrics: {
            let (metrics, server, md) = (metrics.clone(), server.clone(), md.clone());
            let locks = locks.clone();
            Box::new(move || refresh_metrics(&metrics, &server, &md, &locks))
        },
    });
    metrics.set_role("leader");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("scoutgw")
        .max_blocking_threads(64)
        .build()
        .map_err(|e| node_err("starting the runtime")(e.to_string()))?;
    let served = rt.block_on(async {
        let listener = TcpListener::bind(cfg.nfs.bind).await.map_err(|e| {
            node_err(&format!(
                "binding NFS to {} (set nfs.bind, SCOUTGW_NFS__BIND or quickstart --nfs-bind)",
                cfg.nfs.bind
            ))(e.to_string())
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| node_err("NFS address")(e.to_string()))?;
        svc.set_port(addr.port());
        let http_listener = TcpListener::bind(cfg.http.bind).await.map_err(|e| {
            node_err(&format!(
                "binding HTTP to {} (set http.bind, SCOUTGW_HTTP__BIND or quickstart --http-bind)",
                cfg.http.bind
            ))(e.to_string())
        })?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|e| node_err("HTTP address")(e.to_string()))?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let inflight = Arc::new(Semaphore::new(NODE_INFLIGHT as usize));
        let nfs_task = tokio::spawn(serve(
            listener,
            svc.clone(),
            inflight.clone(),
            stop_rx.clone(),
        ));
        let http_task = tokio::spawn(crate::http::server::serve(
            http_listener,
            http_svc.clone(),
            stop_rx.clone(),
        ));
        let committer = tokio::spawn(commit_periodically(
            fs.clone(),
            cfg.commit_interval(),
            metrics.clone(),
            stop_rx,
        ));
        tracing::info!(
            "serving NFSv3 on {addr}, HTTP on {http_addr} (fsid {fsid:016x}, rid {rid:016x})"
        );
        ready.store(true, Ordering::Relaxed);
        on_ready(Serving {
            nfs: addr,
            http: http_addr,
            fsid,
        });

        wait_for_signal().await;
        tracing::info!("shutting down: no new requests; waiting for those in flight");
        ready.store(false, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        let _ = nfs_task.await;
        let _ = http_task.await;
        match tokio::time::timeout(DRAIN_TIMEOUT, inflight.acquire_many(NODE_INFLIGHT)).await {
            Ok(_) => {}
            Err(_) => tracing::warn!("requests still running after {DRAIN_TIMEOUT:?}"),
        }
        let _ = committer.await;
        Ok::<(), CliError>(())
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(svc);
    drop(http_svc);
    let result = match Arc::try_unwrap(fs) {
        Ok(fs) => fs
            .unmount()
            .map_err(|e| node_err("unmounting")(e.to_string())),
        Err(fs) => {
            tracing::warn!("requests still hold the filesystem; committing without farewell");
            fs.sync()
                .map_err(|e| node_err("final commit")(e.to_string()))
        }
    };
    drop(merger);
    drop(server);
    let _ = std::fs::remove_file(&pid_path);
    served?;
    result?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Copy values other crates keep into the metrics, just before a scrape.
fn refresh_metrics(m: &NodeMetrics, server: &LocalServer, client_md: &MetaDev, locks: &LocalLocks) {
    for (mode, c) in locks.counts() {
        m.set_locks(mode.name(), c.requests, c.grants, c.invalidations);
    }
    let c = client_md.cache_stats();
    m.set_block_cache("client", c.hits, c.misses, c.bytes);
    let (sc, backlog, merged) = server.with(|s| {
        let roots = s.roots();
        let backlog = scoutgw_cluster::server::all_log_trees(s.meta_dev(), None, &roots.logs_root)
            .map(|lts| lts.iter().filter(|lt| lt.is_finalized()).count() as u64)
            .unwrap_or(0);
        (s.meta_dev().cache_stats(), backlog, s.trees_merged())
    });
    m.set_block_cache("server", sc.hits, sc.misses, sc.bytes);
    m.set_merge(backlog, merged);
    // One node: it leads, so no heartbeat is awaited.
    m.quorum_heartbeat_age_seconds.set(0.0);
}

async fn commit_periodically(
    fs: Arc<Fs>,
    every: Duration,
    metrics: Arc<NodeMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let fs = fs.clone();
        let m = metrics.clone();
        let commit = move || {
            let start = std::time::Instant::now();
            let r = fs.sync();
            m.commits.inc();
            m.commit_seconds.observe(start.elapsed().as_secs_f64());
            r
        };
        match tokio::task::spawn_blocking(commit).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("periodic commit failed: {e}"),
            Err(e) => tracing::error!("periodic commit panicked: {e}"),
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
