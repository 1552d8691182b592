//! Multi-node harness: a cluster of `scoutgw serve` child processes on one pair of shared
//! device files (`mkfs -A -Q 0,IP0,P -Q 1,IP1,P ...`), each node with its own state folder,
//! config file and log (`<dir>/nI/node.log`, the node's stderr), NFS and HTTP on its own
//! slot address. Nodes can be started, killed with SIGKILL, stopped with SIGTERM and
//! restarted (same state folder, so the same rid); `/v1/cluster` tells the leader and the
//! mounted clients; `fsck` runs offline once every node is stopped.
//!
//! Also here: an NFS client that behaves like a real one when a node stalls or its
//! connection breaks ([`NfsClient`]: retransmits a call with the same xid after a timeout,
//! reconnects after a broken connection, skips stray replies), a plain HTTP GET with
//! timeouts, and a network-namespace lab ([`NetLab`]) to cut one node off the network.
//!
//! On a panic the cluster prints the end of every node's log before killing the nodes.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::{args, proc3, WriteOk, XdrReader, MIB, NFS};
use super::{bin, call_message, parse_read, parse_reply, parse_write, wcc, Cred, Reply};

/// Sizes of the shared device files (sparse).
pub const META_BYTES: u64 = 512 << 20;
pub const DATA_BYTES: u64 = 1 << 30;

/// How long a node may take from spawn to "serving".
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What cluster to make.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Each node's slot address (slot i = node i); NFS and HTTP bind there too.
    pub ips: Vec<Ipv4Addr>,
    /// The network namespace each node runs in (`None`: this one).
    pub netns: Vec<Option<String>>,
    /// Quorum/server port; NFS is `base_port + 1`, HTTP `base_port + 2` on every address.
    pub base_port: u16,
    /// Extra `[cluster]` keys, e.g. ("reconnect_timeout_ms", 2000).
    pub cluster: Vec<(String, u64)>,
}

impl Spec {
    /// `n` nodes on 127.0.0.1 … 127.0.0.n.
    pub fn loopback(n: usize, base_port: u16) -> Spec {
        Spec {
            ips: (0..n)
                .map(|i| Ipv4Addr::new(127, 0, 0, i as u8 + 1))
                .collect(),
            netns: vec![None; n],
            base_port,
            cluster: Vec::new(),
        }
    }

    /// Set a `[cluster]` key.
    pub fn with(mut self, key: &str, value: u64) -> Spec {
        self.cluster.retain(|(k, _)| k != key);
        self.cluster.push((key.to_string(), value));
        self
    }
}

/// One node of a [`Cluster`].
pub struct Member {
    pub slot: usize,
    pub ip: Ipv4Addr,
    pub nfs: SocketAddr,
    pub http: SocketAddr,
    /// Its state folder (rid, pid file) and log.
    pub dir: PathBuf,
    pub config: PathBuf,
    pub netns: Option<String>,
    child: Option<Child>,
    ready: Option<Receiver<String>>,
    /// How often it was started.
    pub starts: u32,
}

impl Member {
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }
}

/// What `/v1/cluster` says about the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    pub slot: usize,
    pub addr: String,
    pub term: u64,
    pub rid: String,
}

/// Several `scoutgw serve` processes on one pair of device files.
pub struct Cluster {
    dir: TempDir,
    pub meta: PathBuf,
    pub data: PathBuf,
    pub fence_dir: PathBuf,
    pub nodes: Vec<Member>,
    pub name: String,
}

/// Strip terminal colour sequences (the node logs with tracing's ANSI colours).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Poll `f` every 50 ms until it gives `Some`, or fail after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run a command that must succeed (setup steps: mkfs, ip).
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} should succeed but exited {}:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Cluster {
    /// Make the devices, the filesystem and one config per node; start nothing.
    pub fn create(name: &str, spec: &Spec) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix(&format!("scoutgw-{name}-"))
            .tempdir()
            .expect("temp dir");
        let meta = dir.path().join("meta.dev");
        let data = dir.path().join("data.dev");
        File::create(&meta).unwrap().set_len(META_BYTES).unwrap();
        File::create(&data).unwrap().set_len(DATA_BYTES).unwrap();
        let mut mkfs = Command::new(bin());
        mkfs.args(["mkfs", "-A"]);
        for (i, ip) in spec.ips.iter().enumerate() {
            mkfs.arg("-Q").arg(format!("{i},{ip},{}", spec.base_port));
        }
        mkfs.arg(&meta).arg(&data);
        run_ok(&mut mkfs);
        let mut extra = String::new();
        for (k, v) in &spec.cluster {
            extra.push_str(&format!("{k} = {v}\n"));
        }
        let nodes = spec
            .ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let ndir = dir.path().join(format!("n{i}"));
                std::fs::create_dir_all(&ndir).unwrap();
                let config = dir.path().join(format!("n{i}.toml"));
                let nfs = SocketAddr::V4(SocketAddrV4::new(*ip, spec.base_port + 1));
                let http = SocketAddr::V4(SocketAddrV4::new(*ip, spec.base_port + 2));
                let toml = format!(
                    "[node]\n\
                     meta_device = {meta:?}\n\
                     data_device = {data:?}\n\
                     state_dir = {ndir:?}\n\
                     cache_mib = 32\n\
                     log = \"info\"\n\
                     [nfs]\n\
                     bind = \"{nfs}\"\n\
                     [export]\n\
                     clients = [\"*\"]\n\
                     [http]\n\
                     bind = \"{http}\"\n\
                     [cluster]\n\
                     quorum_slot = {i}\n\
                     {extra}",
                );
                std::fs::write(&config, toml).unwrap();
                Member {
                    slot: i,
                    ip: *ip,
                    nfs,
                    http,
                    dir: ndir,
                    config,
                    netns: spec.netns.get(i).cloned().flatten(),
                    child: None,
                    ready: None,
                    starts: 0,
                }
            })
            .collect();
        Cluster {
            fence_dir: dir.path().join("fence"),
            dir,
            meta,
            data,
            nodes,
            name: name.to_string(),
        }
    }

    /// Create and start every node; returns once all serve.
    pub fn start(name: &str, spec: &Spec) -> Cluster {
        let mut c = Cluster::create(name, spec);
        c.start_all();
        c
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Spawn every stopped node, then wait until all serve (a node serves only once a
    /// leader is elected, which needs a majority of them).
    pub fn start_all(&mut self) {
        let stopped: Vec<usize> = (0..self.len())
            .filter(|&i| self.nodes[i].child.is_none())
            .collect();
        for &i in &stopped {
            self.spawn(i);
        }
        for &i in &stopped {
            self.wait_ready(i);
        }
    }

    /// Start node `i` again (or for the first time) and wait until it serves.
    pub fn start_node(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready(i);
    }

    /// Spawn node `i` without waiting.
    pub fn spawn(&mut self, i: usize) {
        let m = &mut self.nodes[i];
        assert!(m.child.is_none(), "node {i} is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(m.log_path())
            .expect("node log");
        let _ = writeln!(
            &log,
            "===== test harness: start #{} of node {i} =====",
            m.starts + 1
        );
        let mut cmd = match &m.netns {
            None => Command::new(bin()),
            Some(ns) => {
                // `ip netns exec` execs the command itself: the child is the node.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin());
                c
            }
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&m.config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd.spawn().expect("spawn scoutgw serve");
        let rx = super::stdout_lines(&mut child);
        m.child = Some(child);
        m.ready = Some(rx);
        m.starts += 1;
    }

    /// Wait until spawned node `i` prints that it serves.
    pub fn wait_ready(&mut self, i: usize) {
        let rx = self.nodes[i].ready.take().expect("node was spawned");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with("scoutgw: serving NFSv3 on ") => {
                    let want = self.nodes[i].nfs.to_string();
                    assert!(
                        line.contains(&want),
                        "node {i} should serve NFS on {want}, but said {line:?}"
                    );
                    return;
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(status) = self.try_wait(i) {
                        panic!(
                            "node {i} exited with {status} before serving (expected it to serve)"
                        );
                    }
                    if Instant::now() > deadline {
                        panic!("node {i} should serve within {READY_TIMEOUT:?} of its start");
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.nodes[i].child.as_mut().map(|c| c.wait());
                    self.nodes[i].child = None;
                    panic!("node {i} exited ({status:?}) before serving (expected it to serve)");
                }
            }
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Indexes of the nodes this harness runs.
    pub fn running(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.is_running(i)).collect()
    }

    /// The node's exit status if it has exited (then it counts as stopped).
    pub fn try_wait(&mut self, i: usize) -> Option<ExitStatus> {
        let child = self.nodes[i].child.as_mut()?;
        match child.try_wait().expect("wait for node") {
            Some(status) => {
                self.nodes[i].child = None;
                Some(status)
            }
            None => None,
        }
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i].child.as_ref().expect("node running").id()
    }

    /// SIGKILL node `i` (a crash) and reap it.
    pub fn kill(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().expect("node is running");
        child.kill().expect("SIGKILL the node");
        child.wait().expect("reap the node");
    }

    /// Send SIGTERM to node `i` without waiting.
    pub fn sigterm(&self, i: usize) {
        let pid = self.pid(i);
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM {pid} should succeed");
    }

    /// Wait at most `timeout` for node `i` to exit; its status.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait(i) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("node {i} should exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM node `i` and wait for a clean exit (status 0).
    pub fn stop(&mut self, i: usize) {
        self.sigterm(i);
        let status = self.wait_exit(i, Duration::from_secs(60));
        assert!(
            status.success(),
            "node {i} should exit 0 after SIGTERM, exited {status}"
        );
    }

    /// Stop every running node cleanly, all at once: the server answers the farewells of
    /// the last quorum members only when they all leave together (a member leaving alone
    /// while no more than a majority of members stays mounted waits for the others).
    pub fn stop_all(&mut self) {
        let all = self.running();
        for &i in &all {
            self.sigterm(i);
        }
        for &i in &all {
            let status = self.wait_exit(i, Duration::from_secs(60));
            assert!(
                status.success(),
                "node {i} should exit 0 after SIGTERM (all nodes leaving together), exited \
                 {status}"
            );
        }
    }

    /// Node `i`'s rid (from its state folder; known once it started).
    pub fn rid(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("rid"))
            .expect("rid file of a started node")
            .trim()
            .to_string()
    }

    /// The fencing pid file of node `i` (`<fence_dir>/<rid>.pid`).
    pub fn fence_pid_file(&self, i: usize) -> PathBuf {
        self.fence_dir.join(format!("{}.pid", self.rid(i)))
    }

    /// Node `i`'s log so far (all its runs), colours removed.
    pub fn log(&self, i: usize) -> String {
        strip_ansi(&std::fs::read_to_string(self.nodes[i].log_path()).unwrap_or_default())
    }

    /// The last `lines` lines of every node's log.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for i in 0..self.len() {
            let log = self.log(i);
            let all: Vec<&str> = log.lines().collect();
            let from = all.len().saturating_sub(lines);
            out.push_str(&format!(
                "----- {} node {i} ({}) log, last {} of {} lines -----\n",
                self.name,
                self.nodes[i].ip,
                all.len() - from,
                all.len()
            ));
            for l in &all[from..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// `GET /v1/cluster` from node `i`.
    pub fn view(&self, i: usize) -> Result<Value, String> {
        let (status, body) = http_get(self.nodes[i].http, "/v1/cluster", Duration::from_secs(5))?;
        if status != 200 {
            return Err(format!(
                "GET /v1/cluster on node {i}: HTTP {status}: {body}"
            ));
        }
        serde_json::from_str(&body).map_err(|e| format!("/v1/cluster on node {i}: {e}: {body}"))
    }

    /// The leader `/v1/cluster` names, asked of the running nodes in turn.
    pub fn leader(&self) -> Result<LeaderView, String> {
        let mut why = String::from("no node running");
        for i in self.running() {
            match self.view(i) {
                Ok(v) => match leader_of(&v) {
                    Some(l) => return Ok(l),
                    None => why = format!("node {i} knows no leader"),
                },
                Err(e) => why = e,
            }
        }
        Err(why)
    }

    /// Wait until a running node reports itself as leader (role "leader") and every running
    /// node names that leader; returns it.
    pub fn wait_leader(&self, timeout: Duration) -> LeaderView {
        wait_for(
            "an elected leader every running node agrees on",
            timeout,
            || {
                let l = self.leader().ok()?;
                if !self.is_running(l.slot) {
                    return None;
                }
                let me = self.view(l.slot).ok()?;
                if me["this_node"]["role"] != "leader" {
                    return None;
                }
                for i in self.running() {
                    if leader_of(&self.view(i).ok()?)? != l {
                        return None;
                    }
                }
                Some(l)
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The rids `/v1/cluster` of node `i` lists as mounted clients.
    pub fn mounted(&self, i: usize) -> Result<Vec<String>, String> {
        let v = self.view(i)?;
        Ok(mounted_of(&v))
    }

    /// Wait until node `i` is connected to the server and its rid is a mounted client.
    pub fn wait_joined(&self, i: usize, timeout: Duration) {
        let rid = self.rid(i);
        wait_for(
            &format!("node {i} (rid {rid}) connected and listed in mounted_clients"),
            timeout,
            || {
                let v = self.view(i).ok()?;
                (v["this_node"]["connected"] == true && mounted_of(&v).contains(&rid)).then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `scoutgw fsck META DATA` (nodes must be stopped).
    pub fn fsck(&self) -> Output {
        Command::new(bin())
            .arg("fsck")
            .arg(&self.meta)
            .arg(&self.data)
            .output()
            .expect("run scoutgw fsck")
    }

    /// Run fsck and require it clean (exit 0, "clean").
    pub fn assert_fsck_clean(&self) {
        assert!(
            self.running().is_empty(),
            "fsck runs offline: every node should be stopped first"
        );
        let out = self.fsck();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("clean"),
            "fsck should find the filesystem clean (exit 0), got {}:\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A plain RPC connection to node `i`'s NFS port.
    pub fn rpc(&self, i: usize) -> super::Rpc {
        super::Rpc::connect(self.nodes[i].nfs)
    }

    /// A retrying NFS client of node `i`.
    pub fn client(&self, i: usize) -> NfsClient {
        NfsClient::new(self.nodes[i].nfs)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail(120));
        }
        for m in &mut self.nodes {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn leader_of(v: &Value) -> Option<LeaderView> {
    let l = v.get("leader")?.as_object()?;
    Some(LeaderView {
        slot: l.get("slot")?.as_u64()? as usize,
        addr: l.get("addr")?.as_str()?.to_string(),
        term: l.get("term")?.as_u64()?,
        rid: l.get("rid")?.as_str()?.to_string(),
    })
}

pub fn mounted_of(v: &Value) -> Vec<String> {
    v["mounted_clients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["rid"].as_str().map(str::to_string))
        .collect()
}

/// One HTTP/1.1 GET on a new connection with timeouts: (status, body).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end from {addr}"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line from {addr}: {head}"))?;
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("bad chunk")?;
            let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)
                .map_err(|e| format!("bad chunk size: {e}"))?;
            rest = &rest[eol + 2..];
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n + 2..];
        }
        body = out;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

// ------------------------------------------------------------------------------------------
// A retransmitting NFS client

/// Xid ranges of [`NfsClient`]s (apart from those of `Rpc`).
static XID_BASE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0x8000_0000);

/// An NFSv3 client that acts like a kernel client on TCP: a call without a reply within
/// `attempt` is retransmitted with the same xid (the node's duplicate-request cache answers
/// a retransmission of a completed call with the original reply); a broken connection is
/// reconnected and the call resent; replies to other xids (late answers to earlier
/// retransmissions) are skipped.
pub struct NfsClient {
    pub addr: SocketAddr,
    stream: Option<TcpStream>,
    xid: u32,
    pub cred: Cred,
    /// How long to wait for a reply before retransmitting.
    pub attempt: Duration,
    pub retransmits: u32,
    pub reconnects: u32,
    /// When set (the node was killed on purpose), calls give up instead of retrying.
    pub abort: Option<Arc<AtomicBool>>,
}

impl NfsClient {
    pub fn new(addr: SocketAddr) -> NfsClient {
        NfsClient {
            addr,
            stream: None,
            xid: XID_BASE.fetch_add(0x0010_0000, Ordering::Relaxed),
            cred: Cred::root(),
            attempt: Duration::from_secs(3),
            retransmits: 0,
            reconnects: 0,
            abort: None,
        }
    }

    fn aborted(&self) -> bool {
        self.abort
            .as_ref()
            .is_some_and(|a| a.load(Ordering::SeqCst))
    }

    fn connect(&mut self) -> Result<(), String> {
        if self.stream.is_some() {
            return Ok(());
        }
        let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1))
            .map_err(|e| format!("connect to {}: {e}", self.addr))?;
        s.set_nodelay(true).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        self.stream = Some(s);
        self.reconnects += 1;
        Ok(())
    }

    /// Read one record; `Ok(None)` when nothing at all arrived within `wait`.
    fn read_record(s: &mut TcpStream, wait: Duration) -> std::io::Result<Option<Vec<u8>>> {
        s.set_read_timeout(Some(wait))?;
        let mut first = [0u8; 1];
        match s.read(&mut first) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
        // A record has begun: read it whole.
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut out = Vec::new();
        let mut hdr = [0u8; 4];
        hdr[0] = first[0];
        s.read_exact(&mut hdr[1..])?;
        loop {
            let word = u32::from_be_bytes(hdr);
            let len = (word & !(1 << 31)) as usize;
            if len > 4 * MIB {
                return Err(std::io::Error::other(format!("fragment of {len} bytes")));
            }
            let at = out.len();
            out.resize(at + len, 0);
            s.read_exact(&mut out[at..])?;
            if word & 1 << 31 != 0 {
                return Ok(Some(out));
            }
            s.read_exact(&mut hdr)?;
        }
    }

    /// One NFSv3 call, retransmitted and resent until a reply comes or `deadline` passes.
    /// The results of an accepted, successful reply; other replies are errors.
    pub fn call(&mut self, procedure: u32, a: &[u8], deadline: Instant) -> Result<Vec<u8>, String> {
        self.xid = self.xid.wrapping_add(1);
        let xid = self.xid;
        let msg = call_message(xid, 2, NFS, 3, procedure, &self.cred, a);
        let mut rec = Vec::with_capacity(msg.len() + 4);
        rec.extend_from_slice(&(msg.len() as u32 | 1 << 31).to_be_bytes());
        rec.extend_from_slice(&msg);
        let mut last_err = String::from("no attempt");
        let mut sent_once = false;
        while Instant::now() < deadline {
            if self.aborted() {
                return Err(format!("aborted ({last_err})"));
            }
            if let Err(e) = self.connect() {
                last_err = e;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            if sent_once {
                self.retransmits += 1;
            }
            sent_once = true;
            let s = self.stream.as_mut().unwrap();
            if let Err(e) = s.write_all(&rec) {
                last_err = format!("send: {e}");
                self.stream = None;
                continue;
            }
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let s = self.stream.as_mut().unwrap();
                match Self::read_record(s, self.attempt.min(left)) {
                    Ok(None) => {
                        last_err = format!("no reply within {:?}", self.attempt);
                        break; // retransmit on the same connection
                    }
                    Ok(Some(reply)) => {
                        if reply.len() < 4 || reply[..4] != xid.to_be_bytes() {
                            continue; // a late reply to an earlier call
                        }
                        return match parse_reply(&reply).1 {
                            Reply::Success(body) => Ok(body),
                            other => Err(format!("RPC refused: {other:?}")),
                        };
                    }
                    Err(e) => {
                        last_err = format!("connection: {e}");
                        self.stream = None;
                        break;
                    }
                }
            }
        }
        Err(format!(
            "NFS procedure {procedure} to {}: no reply by the deadline ({last_err})",
            self.addr
        ))
    }

    /// WRITE: `Ok(Ok(..))` acknowledged, `Ok(Err(status))` refused by the server.
    pub fn write(
        &mut self,
        fh: &[u8],
        offset: u64,
        data: &[u8],
        stable: u32,
        deadline: Instant,
    ) -> Result<Result<WriteOk, u32>, String> {
        let body = self.call(
            proc3::WRITE,
            &args::write(fh, offset, data, stable),
            deadline,
        )?;
        Ok(parse_write(&body))
    }

    /// COMMIT of the whole file: the write verifier, or the status.
    pub fn commit(&mut self, fh: &[u8], deadline: Instant) -> Result<Result<[u8; 8], u32>, String> {
        let body = self.call(proc3::COMMIT, &args::commit(fh, 0, 0), deadline)?;
        let mut r = XdrReader::new(&body);
        let status = r.u32().expect("COMMIT status");
        wcc(&mut r);
        if status != 0 {
            return Ok(Err(status));
        }
        Ok(Ok(r.fixed(8).expect("COMMIT verifier").try_into().unwrap()))
    }

    /// READ.
    pub fn read(
        &mut self,
        fh: &[u8],
        offset: u64,
        count: u32,
        deadline: Instant,
    ) -> Result<Result<(Vec<u8>, bool), u32>, String> {
        let body = self.call(proc3::READ, &args::read(fh, offset, count), deadline)?;
        Ok(parse_read(&body))
    }
}

// ------------------------------------------------------------------------------------------
// Network namespaces

/// A network namespace joined to this one by a veth pair on a private /24:
/// `10.X.Y.1` … `10.X.Y.(n)` on the outer end (for nodes in this namespace), one address
/// `10.X.Y.(n+1)` on the inner end (for the node inside). Taking the inner end down cuts
/// the inside node off while the outer addresses keep working locally. Removed on drop.
pub struct NetLab {
    pub ns: String,
    outer: String,
    inner: String,
    pub outer_ips: Vec<Ipv4Addr>,
    pub inner_ip: Ipv4Addr,
}

fn ip_cmd(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("run ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?} exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetLab {
    /// Make the namespace and link; `Err` says why this host cannot (not root, no `ip`,
    /// no veth support).
    pub fn create(tag: &str, outer_count: usize) -> Result<NetLab, String> {
        let pid = std::process::id();
        let ns = format!("sgw-{tag}-{pid}");
        let outer = format!("sgw{}o", pid % 100_000);
        let inner = format!("sgw{}i", pid % 100_000);
        let (x, y) = (200 + (pid % 50) as u8, ((pid / 50) % 250) as u8 + 1);
        let lab = NetLab {
            ns: ns.clone(),
            outer: outer.clone(),
            inner: inner.clone(),
            outer_ips: (0..outer_count)
                .map(|k| Ipv4Addr::new(10, x, y, k as u8 + 1))
                .collect(),
            inner_ip: Ipv4Addr::new(10, x, y, outer_count as u8 + 1),
        };
        // From here on, Drop cleans up whatever was made.
        ip_cmd(&["netns", "add", &ns])?;
        ip_cmd(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip_cmd(&["link", "set", &inner, "netns", &ns])?;
        for a in &lab.outer_ips {
            ip_cmd(&["addr", "add", &format!("{a}/24"), "dev", &outer])?;
        }
        ip_cmd(&["link", "set", &outer, "up"])?;
        ip_cmd(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", lab.inner_ip),
            "dev",
            &inner,
        ])?;
        ip_cmd(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip_cmd(&["-n", &ns, "link", "set", &inner, "up"])?;
        Ok(lab)
    }

    /// Take the inside node's link down (`up = false`) or bring it back.
    pub fn set_link(&self, up: bool) {
        ip_cmd(&[
            "-n",
            &self.ns,
            "link",
            "set",
            &self.inner,
            if up { "up" } else { "down" },
        ])
        .unwrap_or_else(|e| panic!("setting the link {}: {e}", if up { "up" } else { "down" }));
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        let _ = ip_cmd(&["link", "del", &self.outer]);
        let _ = ip_cmd(&["netns", "del", &self.ns]);
    }
}
