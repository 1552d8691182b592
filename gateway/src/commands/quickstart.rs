//! `scoutgw quickstart`: a one-node filesystem on device files under a local folder.

use std::fs::OpenOptions;
use std::net::SocketAddrV4;
use std::path::Path;

use scoutgw_cluster::format::super_block::existing_fsid;
use scoutgw_cluster::inspect::inspect;
use scoutgw_cluster::mkfs::{mkfs, MkfsOptions, QuorumSlot};

use super::open_device;
use crate::cli::QuickstartArgs;
use crate::config::NodeConfig;
use crate::CliError;

/// Create `path` as a sparse file of `bytes` if it does not exist yet.
fn ensure_device_file(path: &Path, bytes: u64) -> Result<bool, CliError> {
    let io = |source| CliError::Io {
        path: path.to_path_buf(),
        source,
    };
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(f) => {
            f.set_len(bytes).map_err(io)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io(e)),
    }
}

/// `addr`, with port 0 replaced by a port that is free for both UDP (votes) and TCP (the
/// server) on its address right now.
fn quorum_addr(addr: SocketAddrV4) -> Result<SocketAddrV4, CliError> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let busy = |e: std::io::Error| CliError::Node(format!("finding a free port on {addr}: {e}"));
    for _ in 0..64 {
        let tcp = std::net::TcpListener::bind(addr).map_err(busy)?;
        let port = tcp.local_addr().map_err(busy)?.port();
        let candidate = SocketAddrV4::new(*addr.ip(), port);
        if std::net::UdpSocket::bind(candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(CliError::Node(format!(
        "no port free for both UDP and TCP on {addr}"
    )))
}

/// The loopback address of node `i` of a local cluster.
fn node_ip(i: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, i + 1)
}

/// Quorum slots of a local cluster: node i on 127.0.0.(i+1), all on one port (`port`, or
/// one free for UDP and TCP on every node's address when 0).
fn cluster_slots(nodes: u8, port: u16) -> Result<Vec<QuorumSlot>, CliError> {
    let free_everywhere = |p: u16| {
        (0..nodes).all(|i| {
            let sa = SocketAddrV4::new(node_ip(i), p);
            std::net::TcpListener::bind(sa).is_ok() && std::net::UdpSocket::bind(sa).is_ok()
        })
    };
    let port = if port != 0 {
        port
    } else {
        (0..64)
            .filter_map(|_| quorum_addr(SocketAddrV4::new(node_ip(0), 0)).ok())
            .map(|sa| sa.port())
            .find(|p| free_everywhere(*p))
            .ok_or_else(|| CliError::Node("no quorum port free on every node address".into()))?
    };
    Ok((0..nodes)
        .map(|i| QuorumSlot {
            nr: i,
            addr: SocketAddrV4::new(node_ip(i), port),
        })
        .collect())
}

/// `quickstart --nodes N`: a configuration per node, then (unless --setup-only) one
/// `scoutgw serve` process per node until Ctrl-C or SIGTERM, which stops them all cleanly.
fn cluster(a: &QuickstartArgs) -> Result<(), CliError> {
    let slots = {
        let meta = open_device(&a.dir.join("meta.dev"), false)?;
        scoutgw_cluster::format::super_block::SuperBlock::read(&*meta)?
            .qconf
            .present()
            .count()
    };
    if slots != a.nodes as usize {
        return Err(CliError::Usage(format!(
            "{} holds a filesystem with {slots} quorum slot(s), not {}; use another --dir",
            a.dir.display(),
            a.nodes
        )));
    }
    let mut configs = Vec::new();
    for i in 0..a.nodes {
        let path = a.dir.join(format!("node{i}.toml"));
        if !path.exists() {
            let nfs = std::net::SocketAddr::new(node_ip(i).into(), a.nfs_bind.port());
            let http = std::net::SocketAddr::new(node_ip(i).into(), a.http_bind.port());
            write_node_config(&path, &a.dir, i, nfs, http)?;
            println!("wrote {}", path.display());
        }
        configs.push(path);
    }
    if a.setup_only {
        println!();
        println!("Next: start every node (each its own process):");
        for c in &configs {
            println!("  scoutgw serve --config {} &", c.display());
        }
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| CliError::Node(format!("own path: {e}")))?;
    let mut children = Vec::new();
    for c in &configs {
        let child = std::process::Command::new(&exe)
            .arg("serve")
            .arg("--config")
            .arg(c)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| CliError::Node(format!("starting a node for {}: {e}", c.display())))?;
        children.push(child);
    }
    println!(
        "scoutgw: {} nodes starting (NFS and HTTP on 127.0.0.1..{}); Ctrl-C stops them all.",
        a.nodes,
        node_ip(a.nodes - 1)
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Node(format!("runtime: {e}")))?;
    rt.block_on(crate::node::wait_for_signal());
    for c in &children {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    let mut failed = 0;
    for mut c in children {
        if !c.wait().is_ok_and(|s| s.success()) {
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(CliError::Node(format!(
            "{failed} node(s) did not stop cleanly"
        )));
    }
    Ok(())
}

/// Configuration of node `i` of a local cluster under `dir`.
fn write_node_config(
    path: &Path,
    dir: &Path,
    i: u8,
    nfs: std::net::SocketAddr,
    http: std::net::SocketAddr,
) -> Result<(), CliError> {
    let io = |source| CliError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = std::fs::canonicalize(dir).map_err(io)?;
    let text = format!(
        "# Node {i} of a local cluster, written by `scoutgw quickstart --nodes`; every key is\n\
         # described in packaging/scoutgw.toml.\n\
         [node]\n\
         meta_device = {meta:?}\n\
         data_device = {data:?}\n\
         state_dir = {state:?}\n\
         \n\
         [nfs]\n\
         bind = \"{nfs}\"\n\
         \n\
         [http]\n\
         bind = \"{http}\"\n\
         \n\
         [export]\n\
         clients = [\"127.0.0.0/8\"]\n\
         \n\
         [cluster]\n\
         quorum_slot = {i}\n",
        meta = dir.join("meta.dev"),
        data = dir.join("data.dev"),
        state = dir.join(format!("node{i}")),
    );
    std::fs::write(path, text).map_err(io)
}

pub fn run(a: &QuickstartArgs) -> Result<(), CliError> {
    std::fs::create_dir_all(&a.dir).map_err(|source| CliError::Io {
        path: a.dir.clone(),
        source,
    })?;
    let meta_path = a.dir.join("meta.dev");
    let data_path = a.dir.join("data.dev");
    for (path, bytes) in [(&meta_path, a.meta_size), (&data_path, a.data_size)] {
        if ensure_device_file(path, bytes)? {
            println!("created {} ({} bytes, sparse)", path.display(), bytes);
        }
    }
    let meta = open_device(&meta_path, false)?;
    let data = open_device(&data_path, false)?;
    if let Some(fsid) = existing_fsid(&*meta) {
        if existing_fsid(&*data) != Some(fsid) {
            return Err(CliError::Usage(format!(
                "{} holds filesystem {fsid:016x} but {} does not belong to it; move the \
                 folder aside or use another --dir",
                meta_path.display(),
                data_path.display()
            )));
        }
        println!(
            "{} already holds filesystem {fsid:016x}; using it",
            meta_path.display()
        );
    } else {
        let opts = MkfsOptions {
            slots: if a.nodes == 1 {
                vec![QuorumSlot {
                    nr: 0,
                    addr: quorum_addr(a.quorum_addr)?,
                }]
            } else {
                cluster_slots(a.nodes, a.quorum_addr.port())?
            },
            allow_small_size: true,
            ..MkfsOptions::default()
        };
        let summary = mkfs(meta.clone(), data, &opts)?;
        super::mkfs::print_summary(&summary, &meta_path, &data_path);
    }
    let report = inspect(meta)?;
    print!("{}", super::print::render(&report));
    if !report.errors.is_empty() {
        return Err(CliError::Damaged(report.errors.len()));
    }
    if a.nodes > 1 {
        return cluster(a);
    }
    let config_path = a.dir.join("scoutgw.toml");
    if !config_path.exists() {
        write_config(&config_path, &a.dir)?;
        println!("wrote {}", config_path.display());
    }
    if a.setup_only {
        println!();
        println!(
            "Next: `scoutgw serve --config {}` exports it over NFS.",
            config_path.display()
        );
        return Ok(());
    }
    let mut cfg = NodeConfig::load(&config_path)?;
    // Folders from before clusters: the one node owns slot 0.
    cfg.cluster.quorum_slot.get_or_insert(0);
    cfg.nfs.bind = a.nfs_bind;
    cfg.http.bind = a.http_bind;
    crate::node::run(&cfg, |s| {
        let (ip, port) = (s.nfs.ip(), s.nfs.port());
        println!();
        println!(
            "scoutgw: serving NFSv3 on {} and HTTP on {}; Ctrl-C stops it cleanly.",
            s.nfs, s.http
        );
        println!("Mount it from Linux:");
        println!(
            "  sudo mkdir -p /mnt/scoutgw && sudo mount -t nfs -o vers=3,proto=tcp,port={port},mountport={port},mountproto=tcp,nolock {ip}:/ /mnt/scoutgw"
        );
        println!("Mount it from macOS:");
        println!(
            "  sudo mkdir -p /Volumes/scoutgw && sudo mount -t nfs -o vers=3,tcp,port={port},mountport={port},nolocks {ip}:/ /Volumes/scoutgw"
        );
        println!("Or with libnfs: nfs-ls 'nfs://{ip}/?version=3&nfsport={port}&mountport={port}'");
        println!(
            "HTTP API: curl http://{}/v1/cluster (OpenAPI at /v1/openapi.json, metrics at /metrics)",
            s.http
        );
    })
}

/// A one-node configuration for the devices under `dir` (absolute paths).
fn write_config(path: &Path, dir: &Path) -> Result<(), CliError> {
    let io = |source| CliError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = std::fs::canonicalize(dir).map_err(io)?;
    let text = format!(
        "# scoutgw node configuration written by `scoutgw quickstart`; every key is\n\
         # described in packaging/scoutgw.toml.\n\
         [node]\n\
         meta_device = {meta:?}\n\
         data_device = {data:?}\n\
         state_dir = {state:?}\n\
         \n\
         [nfs]\n\
         bind = \"127.0.0.1:2049\"\n\
         \n\
         [export]\n\
         clients = [\"127.0.0.0/8\"]\n\
         \n\
         [cluster]\n\
         # This node owns the filesystem's only quorum slot: it elects itself and runs the\n\
         # server.\n\
         quorum_slot = 0\n",
        meta = dir.join("meta.dev"),
        data = dir.join("data.dev"),
        state = dir.join("node"),
    );
    std::fs::write(path, text).map_err(io)
}
