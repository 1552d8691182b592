//! One gateway node at run time (`scoutgw serve`): the cluster member
//! ([`ClusterNode`]: quorum agent, the server while it leads, the mount), the periodic
//! committer, the NFS port and the HTTP port, started in that order and stopped in reverse
//! on SIGTERM or SIGINT.
//!
//! Shutdown is graceful: stop accepting connections and reading requests, wait for the
//! requests in flight, commit, then unmount (farewell to the server) so the next start
//! finds a clean filesystem.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use scoutgw_blockdev::{BlockDevice, MetaDev};
use scoutgw_cluster::fence::{CommandFencer, Fencer, PidFileFencer};
use scoutgw_cluster::format::super_block::SuperBlock;
use scoutgw_cluster::fs::{Fs, FsOptions};
use scoutgw_cluster::node::{ClusterNode, NodeOptions, NodeStatus, ServerStatus};
use scoutgw_cluster::quorum::{QuorumOptions, Role};
use scoutgw_cluster::server::ServerConfig;
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

/// The node's cluster options from its configuration.
fn node_options(cfg: &NodeConfig, rid: u64, cache_bytes: u64) -> Result<NodeOptions, CliError> {
    let c = &cfg.cluster;
    let ms = Duration::from_millis;
    let fencer: Arc<dyn Fencer> = if c.fence_command.trim().is_empty() {
        Arc::new(PidFileFencer::new(c.fence_dir_for(&cfg.node.meta_device)))
    } else {
        Arc::new(CommandFencer {
            command: c.fence_command.clone(),
            timeout: ms(c.fence_timeout_ms),
        })
    };
    Ok(NodeOptions {
        rid,
        quorum_slot: c.quorum_slot,
        quorum: QuorumOptions {
            heartbeat_timeout: ms(c.heartbeat_timeout_ms.max(500)),
            ..QuorumOptions::default()
        },
        server: ServerConfig {
            cache_bytes,
            ..ServerConfig::default()
        },
        fs: FsOptions {
            max_dirty_items: cfg.fs.max_dirty_items,
            data_wait_timeout: Duration::from_secs(cfg.fs.data_wait_timeout_secs),
            item_cache_bytes: (cfg.node.item_cache_mib << 20) as usize,
            ..FsOptions::default()
        },
        cache_bytes,
        fencer,
        recovery_timeout: ms(c.recovery_timeout_ms),
        reconnect_timeout: ms(c.reconnect_timeout_ms),
        idle_timeout: ms(c.idle_timeout_ms.max(1000)),
        fence_timeout: ms(c.fence_timeout_ms),
        merge_interval: ms(cfg.fs.merge_interval_ms.max(1)),
    })
}

/// What `GET /v1/cluster` reports: the quorum slots with their recorded events (read from
/// the device each time), the leader and term they show, the mounted clients of the last
/// committed super block, and this node's own view (rid, slot, role, server term).
fn cluster_view(node: &Arc<ClusterNode>, meta: Arc<dyn BlockDevice>) -> ClusterView {
    let node = node.clone();
    Arc::new(move || {
        let st = node.status();
        let sb = SuperBlock::read_current(&*meta)
            .map_err(|e| format!("reading the super block: {e}"))?
            .sb;
        // Uncached: other nodes write these blocks.
        let md = MetaDev::new(meta.clone(), sb.fsid(), 0);
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
        let clients = scoutgw_cluster::btree::range(&md, None, &sb.mounted_clients, &first, &last)
            .map_err(|e| format!("reading mounted clients: {e}"))?;
        let mounted: Vec<_> = clients
            .iter()
            .map(|it| json!({ "rid": format!("{:016x}", it.key.first.get()) }))
            .collect();
        let leader = st.leader.map(|l| {
            json!({
                "slot": l.slot,
                "addr": l.addr.to_string(),
                "term": l.term,
                "rid": format!("{:016x}", l.rid),
            })
        });
        let lock_server = node.lock_server_report(10).map(|r| {
            let busiest: Vec<_> = r
                .busiest
                .iter()
                .map(|(k, c)| {
                    json!({
                        "lock": format!(
                            "{}:{}:{}:{}",
                            scoutgw_cluster::format::key::zone::name(k.zone),
                            k.first.get(),
                            k.ty,
                            k.second.get()
                        ),
                        "requests": c.requests,
                        "grants": c.grants,
                        "invalidations": c.invalidations,
                        "invalidation_responses": c.invalidation_responses,
                    })
                })
                .collect();
            json!({ "lock_objects": r.lock_objects, "busiest": busiest })
        });
        Ok(json!({
            "fsid": format!("{:016x}", sb.fsid()),
            "term": term,
            "leader": leader,
            "lock_server": lock_server,
            "quorum_slots": slots,
            "mounted_clients": mounted,
            "this_node": {
                "rid": format!("{:016x}", st.rid),
                "role": role_of(&st),
                "quorum_slot": st.quorum_slot,
                "server_term": st.server_term,
                "connected": st.connected,
            },
        }))
    })
}

/// "leader" while this node's server is up, "candidate" while it runs for election or its
/// server starts, "follower" for other quorum members, "client" for non-members.
fn role_of(st: &NodeStatus) -> &'static str {
    match (&st.quorum, st.server) {
        (_, ServerStatus::Up { .. }) => "leader",
        (_, ServerStatus::Starting { .. }) => "candidate",
        (Some(q), _) if q.role == Role::Candidate => "candidate",
        (Some(_), _) => "follower",
        (None, _) => "client",
    }
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
    let fence_dir = cfg.cluster.fence_dir_for(&cfg.node.meta_device);
    std::fs::create_dir_all(&fence_dir).map_err(|source| CliError::Io {
        path: fence_dir.clone(),
        source,
    })?;
    // Other nodes fence this one through it (the default fencer); removed on a clean stop.
    let pid_file =
        scoutgw_cluster::fence::write_pid_file(&fence_dir, rid).map_err(|source| CliError::Io {
            path: fence_dir.clone(),
            source,
        })?;
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
    let cache_bytes = cache_bytes.max(1 << 20);
    let node = ClusterNode::start(meta.clone(), data, node_options(cfg, rid, cache_bytes)?)
        .map_err(|e| node_err("joining the cluster")(e.to_string()))?;
    let fsid = node.fsid();
    let fs = node.fs().clone();
    let node = Arc::new(node);
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
            cluster: cluster_view(&node, meta.clone()),
            max_page: cfg.http.max_page.max(1),
        }),
        token: cfg.http.token.clone().filter(|t| !t.is_empty()),
        metrics: metrics.clone(),
        ready: ready.clone(),
        refresh_metrics: {
            let (metrics, node) = (metrics.clone(), node.clone());
            Box::new(move || refresh_metrics(&metrics, &node))
        },
    });

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

        let fenced = tokio::select! {
            _ = wait_for_signal() => None,
            why = watch_fenced(node.clone()) => Some(why),
        };
        if let Some(why) = &fenced {
            tracing::error!("this node can no longer use the filesystem ({why}); stopping");
        }
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
        match fenced {
            Some(why) => Err(CliError::Node(format!("left the cluster: {why}"))),
            None => Ok::<(), CliError>(()),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(svc);
    drop(http_svc);
    drop(fs);
    let result = match Arc::try_unwrap(node) {
        Ok(node) => node
            .shutdown()
            .map_err(|e| node_err("leaving the cluster")(e.to_string())),
        Err(node) => {
            tracing::warn!("requests still hold the filesystem; committing without farewell");
            node.fs()
                .sync()
                .map_err(|e| node_err("final commit")(e.to_string()))
        }
    };
    drop(pid_file);
    let _ = std::fs::remove_file(&pid_path);
    served?;
    result?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Copy values other crates keep into the metrics, just before a scrape.
fn refresh_metrics(m: &NodeMetrics, node: &ClusterNode) {
    for (mode, c) in node.lock_counts() {
        m.set_locks(mode.name(), c.requests, c.grants, c.invalidations);
    }
    let c = node.fs().meta_cache_stats();
    m.set_block_cache("client", c.hits, c.misses, c.bytes);
    let i = node.fs().item_cache_stats();
    m.set_item_cache(
        &[
            ("hit", i.hits),
            ("miss", i.misses),
            ("fill", i.fills),
            ("eviction", i.evictions),
            ("invalidation", i.invalidations),
        ],
        i.items,
        i.bytes,
    );
    if let Some(sc) = node.server_cache_stats() {
        m.set_block_cache("server", sc.hits, sc.misses, sc.bytes);
    }
    let st = node.status();
    if let Some(s) = st.server_stats {
        m.set_merge(s.merge_backlog, s.trees_merged);
    }
    m.set_role(role_of(&st));
    if let Some(q) = &st.quorum {
        m.quorum_term.set(q.term as i64);
        let age = match st.server {
            // The leader sends the heartbeats; it awaits none.
            ServerStatus::Up { .. } => 0.0,
            _ => q.heartbeat_age.map_or(-1.0, |a| a.as_secs_f64()),
        };
        m.quorum_heartbeat_age_seconds.set(age);
    } else {
        m.quorum_term.set(st.server_term as i64);
    }
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
        // `Fs::sync` also closes the empty transaction a sync export's last commit opened
        // (`Fs::sync_and_continue`): an idle mount holds back the stable seq horizon of
        // index walks for at most one interval.
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

/// Resolves once the cluster fenced this node (its link to the server stopped for good).
async fn watch_fenced(node: Arc<ClusterNode>) -> String {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        if let Some(why) = node.fenced() {
            return why.to_string();
        }
    }
}

pub(crate) async fn wait_for_signal() {
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
