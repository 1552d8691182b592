//! The HTTP API of a node, driven over real sockets against `scoutgw serve` child processes
//! with real content (issue 6): index paging with cursors through 100 k entries (also while
//! NFS clients change inodes between pages), inode status with paths and archive fields,
//! xattr search, error answers, the bearer token, and the CLI clients (`walk-inodes`,
//! `stat`, `search-xattrs`).
//!
//! Content is made offline, before the node starts, through the library (`Fs` on the
//! device files `quickstart --setup-only` made), then unmounted cleanly; changes while the
//! node runs go through its NFS port (the raw NFSv3 client of `common`). The HTTP client is
//! a plain HTTP/1.1 request over a `TcpStream` (`Connection: close`), independent of the
//! gateway's hyper code. Ports 16000-16099.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scoutgw_blockdev::{BlockDevice, DeviceOptions, FileDevice, MetaDev};
use scoutgw_cluster::client::LocalServer;
use scoutgw_cluster::format::inode::ROOT_INO;
use scoutgw_cluster::fs::{FileType, Fs, FsOptions, NewNode, XattrSet};
use scoutgw_cluster::lock::LocalLocks;
use scoutgw_cluster::server::{Server, ServerConfig};
use serde_json::Value;
use tempfile::TempDir;

use common::{Rpc, Sattr};

// ------------------------------------------------------------------------------------------
// A node with content made offline

const CACHE_BYTES: u64 = 256 << 20;

fn open_dev(path: &Path) -> Arc<dyn BlockDevice> {
    Arc::new(FileDevice::open(path, DeviceOptions::default()).expect("open device file"))
}

/// A folder with device files and `scoutgw.toml` from `quickstart --setup-only`.
fn setup(meta_size: &str, data_size: &str) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(common::bin())
        .args(["quickstart", "--dir"])
        .arg(dir.path())
        .args([
            "--setup-only",
            "--meta-size",
            meta_size,
            "--data-size",
            data_size,
        ])
        .output()
        .expect("run scoutgw quickstart");
    assert!(
        out.status.success(),
        "quickstart failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Mount the folder's filesystem in this process, let `f` fill it, unmount (farewell) and
/// merge the finalized log trees, as a node's merger would.
fn offline<T>(dir: &Path, f: impl FnOnce(&Fs) -> T) -> T {
    let meta = open_dev(&dir.join("meta.dev"));
    let cfg = ServerConfig {
        cache_bytes: CACHE_BYTES,
        client_meta_fill: 8_000,
        client_meta_low: 4_000,
        ..ServerConfig::default()
    };
    let server = Arc::new(LocalServer::new(
        Server::open(meta.clone(), cfg).expect("open the server"),
    ));
    let fsid = server.with(|s| s.fsid());
    let md = Arc::new(MetaDev::new(meta, fsid, CACHE_BYTES));
    let fs = Fs::mount(
        md,
        open_dev(&dir.join("data.dev")),
        server.clone(),
        Arc::new(LocalLocks::new()),
        0x0ff1_13e0,
        FsOptions::default(),
    )
    .expect("mount offline");
    let out = f(&fs);
    fs.unmount().expect("unmount offline");
    while server
        .with(|s| s.merge_finalized())
        .expect("merge finalized log trees")
        > 0
    {}
    out
}

fn file() -> NewNode {
    NewNode {
        kind: FileType::Regular,
        perm: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
    }
}

/// `scoutgw serve` on a folder from [`setup`]; killed on drop if still running.
struct ApiNode {
    dir: TempDir,
    nfs: u16,
    http: u16,
    child: Option<Child>,
}

impl ApiNode {
    fn serve(dir: TempDir, nfs: u16, http: u16, env: &[(&str, &str)]) -> ApiNode {
        let log = File::options()
            .create(true)
            .append(true)
            .open(dir.path().join("node.log"))
            .expect("node log");
        let mut cmd = Command::new(common::bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(dir.path().join("scoutgw.toml"))
            .env("SCOUTGW_NFS__BIND", format!("127.0.0.1:{nfs}"))
            .env("SCOUTGW_HTTP__BIND", format!("127.0.0.1:{http}"))
            .env("SCOUTGW_NODE__LOG", "warn")
            .env_remove("SCOUTGW_HTTP__TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn scoutgw serve");
        let rx = common::stdout_lines(&mut child);
        let mut node = ApiNode {
            dir,
            nfs,
            http,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with("scoutgw: serving NFSv3 on ") => {
                    assert!(
                        line.contains(&format!("HTTP on 127.0.0.1:{http}")),
                        "{line:?} does not name the HTTP port {http}"
                    );
                    return node;
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    let child = node.child.as_mut().expect("child");
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("node exited with {status} before serving:\n{}", node.log());
                    }
                    assert!(
                        Instant::now() < deadline,
                        "node not serving after 60 s:\n{}",
                        node.log()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = node.child.as_mut().expect("child").wait();
                    panic!("node exited ({status:?}) before serving:\n{}", node.log());
                }
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    fn nfs_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nfs))
    }

    fn get(&self, path: &str) -> Resp {
        http_get(self.http, path, None)
    }

    /// GET that must answer 200 with JSON.
    fn json(&self, path: &str) -> Value {
        self.get(path).ok_json(path)
    }

    /// SIGTERM, and the node must stop cleanly.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "node exited {status}:\n{}", self.log());
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node did not stop 60 s after SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run the `scoutgw` CLI with `--api` pointing at this node.
    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(common::bin());
        cmd.args(args)
            .args(["--api", &self.api()])
            .env_remove("SCOUTGW_API")
            .env_remove("SCOUTGW_TOKEN");
        cmd.output().expect("run scoutgw")
    }
}

impl Drop for ApiNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ------------------------------------------------------------------------------------------
// HTTP/1.1 over a TcpStream

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    fn ok_json(&self, what: &str) -> Value {
        assert_eq!(self.status, 200, "GET {what}: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "GET {what}"
        );
        self.json()
    }
}

/// One GET on a new connection; the whole response (read to EOF).
fn http_get(port: u16, path: &str, auth: Option<&str>) -> Resp {
    http_req(port, "GET", path, auth)
}

/// One request without a body on a new connection; the whole response (read to EOF).
fn http_req(port: u16, method: &str, path: &str, auth: Option<&str>) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP port");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Length: 0\r\n"
    );
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = std::str::from_utf8(&raw[..split]).expect("ASCII headers");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line:?}");
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    } else if let Some((_, len)) = headers
        .iter()
        .filter(|_| method != "HEAD")
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        let len: usize = len.parse().expect("content-length");
        assert_eq!(
            body.len(),
            len,
            "{method} {path}: body length vs content-length"
        );
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16)
            .expect("hex chunk size");
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A 400 naming `param`.
fn assert_bad_param(node: &ApiNode, path: &str, param: &str) {
    let r = node.get(path);
    assert_eq!(r.status, 400, "GET {path}: {}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["status"], 400, "GET {path}: {v}");
    assert_eq!(
        v["error"]["parameter"], param,
        "GET {path} must name the parameter: {v}"
    );
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

// ------------------------------------------------------------------------------------------
// Index walks

#[derive(Debug, Default)]
struct Walk {
    entries: Vec<(u64, u64)>,
    /// `last` of the final page: what the walk covered.
    covered: u64,
    pages: usize,
}

/// Walk `/v1/index/{index}` from `first` to `last` (None: -1) in pages of `limit`,
/// checking each page (order, cap at its horizon, page size) and calling `between` after
/// each page but the last.
fn walk(
    node: &ApiNode,
    index: &str,
    first: u64,
    last: Option<u64>,
    limit: usize,
    mut between: impl FnMut(usize),
) -> Walk {
    let mut w = Walk::default();
    let mut after: Option<String> = None;
    let last_q = last.map_or("-1".to_string(), |l| l.to_string());
    loop {
        let mut path = format!("/v1/index/{index}?first={first}&last={last_q}&limit={limit}");
        if let Some(c) = &after {
            path.push_str(&format!("&after={c}"));
        }
        let p = node.json(&path);
        w.pages += 1;
        assert_eq!(p["index"], index);
        assert_eq!(p["first"], first);
        assert_eq!(p["limit"], limit as u64, "{path}");
        let horizon = p["horizon"].as_u64().expect("horizon");
        let page_last = p["last"].as_u64().expect("last");
        assert_eq!(
            page_last,
            last.unwrap_or(u64::MAX).min(horizon),
            "{path}: last must be the requested last capped at the horizon"
        );
        let entries = p["entries"].as_array().expect("entries");
        assert!(entries.len() <= limit, "{path}: {} entries", entries.len());
        for e in entries {
            let se = (e["seq"].as_u64().unwrap(), e["ino"].as_u64().unwrap());
            assert!(
                se.0 >= first && se.0 <= page_last,
                "{path}: entry {se:?} outside [{first}, {page_last}] (horizon {horizon})"
            );
            if let Some(prev) = w.entries.last() {
                assert!(
                    *prev < se,
                    "{path}: {se:?} after {prev:?}: not in (seq, ino) order"
                );
            }
            w.entries.push(se);
        }
        w.covered = page_last;
        match p["next"].as_str() {
            Some(c) => {
                let last_e = w.entries.last().expect("a next cursor after no entry");
                assert_eq!(
                    c,
                    format!("{}-{}", last_e.0, last_e.1),
                    "{path}: next cursor"
                );
                assert!(
                    !entries.is_empty(),
                    "{path}: a next cursor on an empty page"
                );
                between(w.pages);
                after = Some(c.to_string());
            }
            None => {
                assert!(p["next"].is_null(), "{path}: next {}", p["next"]);
                return w;
            }
        }
    }
}

fn count_env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (a) 100 k inodes made offline: the meta_seq index walked in pages of 1000 returns each
/// once in (seq, ino) order, capped at the horizon; then a walk with NFS changes between
/// pages, resumed from its checkpoint, sees every changed inode at its new seq and nothing
/// above the horizon.
#[test]
fn index_pages_return_every_inode_once_and_resume_from_a_checkpoint() {
    let files = count_env("HTTP_API_TEST_FILES", 100_000);
    let per_dir = 10_000;
    let dir = setup("2G", "256M");
    let t0 = Instant::now();
    let (dirs, file_inos) = offline(dir.path(), |fs| {
        let mut dirs = Vec::new();
        let mut inos = Vec::with_capacity(files);
        for i in 0..files {
            if i % per_dir == 0 {
                let d = fs
                    .mkdir(
                        ROOT_INO,
                        format!("d{}", i / per_dir).as_bytes(),
                        0o755,
                        0,
                        0,
                    )
                    .expect("mkdir");
                dirs.push(d.ino);
            }
            let a = fs
                .create(
                    *dirs.last().unwrap(),
                    format!("f{i:07}").as_bytes(),
                    &file(),
                    true,
                )
                .expect("create");
            inos.push(a.ino);
        }
        (dirs, inos)
    });
    eprintln!("offline: {files} files in {:?}", t0.elapsed());
    let mut node = ApiNode::serve(dir, 16010, 16011, &[]);

    // A quiet walk: every inode exactly once.
    let t1 = Instant::now();
    let w = walk(&node, "meta_seq", 0, None, 1000, |_| {});
    eprintln!(
        "walk of {} entries in {} pages: {:?}",
        w.entries.len(),
        w.pages,
        t1.elapsed()
    );
    let seen: Vec<u64> = w.entries.iter().map(|e| e.1).collect();
    let unique: HashSet<u64> = seen.iter().copied().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "an inode appears twice in one quiet walk"
    );
    let expect: HashSet<u64> = file_inos
        .iter()
        .chain(dirs.iter())
        .copied()
        .chain([ROOT_INO])
        .collect();
    let missing: Vec<_> = expect.difference(&unique).take(10).collect();
    let extra: Vec<_> = unique.difference(&expect).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "walk vs created inodes: missing {missing:?}, extra {extra:?}"
    );
    assert!(w.pages > files / 1000, "pages of at most 1000");
    let horizon = w.covered;
    assert!(w.entries.iter().all(|e| e.0 <= horizon));

    // The same walk with an explicit last below and above the horizon.
    let mid = w.entries[w.entries.len() / 2].0;
    let lower = walk(&node, "meta_seq", 0, Some(mid), 5000, |_| {});
    assert_eq!(lower.covered, mid);
    let want: Vec<_> = w.entries.iter().copied().filter(|e| e.0 <= mid).collect();
    assert_eq!(lower.entries, want, "walk with last={mid}");
    let upper = walk(&node, "meta_seq", mid, Some(u64::MAX - 1), 7000, |_| {});
    assert!(
        upper.covered >= horizon && upper.covered < u64::MAX - 1,
        "last capped"
    );
    let want: Vec<_> = w.entries.iter().copied().filter(|e| e.0 >= mid).collect();
    assert_eq!(upper.entries, want, "walk from first={mid}");
    // Page size is capped (http.max_page, 10000 by default).
    let big = node.json("/v1/index/meta_seq?limit=1000000");
    assert_eq!(big["limit"], 10_000);
    assert_eq!(big["entries"].as_array().unwrap().len(), 10_000);

    // A walk with NFS changes between its pages: a chmod of files already passed and of
    // files not reached yet, and new files.
    let mut rpc = Rpc::connect(node.nfs_addr());
    let root = rpc.root();
    let dir_fh: Vec<Vec<u8>> = (0..dirs.len())
        .map(|d| {
            rpc.lookup(&root, format!("d{d}").as_bytes())
                .expect("LOOKUP dir")
                .0
        })
        .collect();
    // Files in meta_seq order: position k of the quiet walk.
    let by_ino: HashMap<u64, usize> = file_inos
        .iter()
        .enumerate()
        .map(|(i, ino)| (*ino, i))
        .collect();
    let order: Vec<usize> = w
        .entries
        .iter()
        .filter_map(|e| by_ino.get(&e.1).copied())
        .collect();
    let mut changed: BTreeSet<u64> = BTreeSet::new();
    let mut created = 0;
    let n = order.len();
    let pages = w.pages;
    let first_walk = walk(&node, "meta_seq", 0, None, 1000, |page| {
        if page % (pages / 8).max(1) != 0 {
            return;
        }
        // Around the walk's position: behind it, just ahead, and far ahead.
        let pos = (page * 1000).min(n - 1);
        for k in [
            pos / 2,
            pos.saturating_sub(1),
            (pos + 1).min(n - 1),
            (pos + n) / 2,
            n - 1,
        ] {
            let i = order[k];
            let (fh, _) = rpc
                .lookup(&dir_fh[i / per_dir], format!("f{i:07}").as_bytes())
                .expect("LOOKUP file");
            rpc.setattr(&fh, &Sattr::mode(0o600 + (page as u32 % 0o100)))
                .expect("SETATTR");
            changed.insert(file_inos[i]);
        }
        let fh = rpc.create_file(&dir_fh[0], format!("new{created}").as_bytes(), 0o644);
        let (_, attr) = rpc
            .lookup(&dir_fh[0], format!("new{created}").as_bytes())
            .expect("LOOKUP new");
        let _ = fh;
        changed.insert(attr.expect("attributes").fileid);
        changed.insert(dirs[0]); // its mtime and ctime changed
        created += 1;
    });
    assert!(changed.len() > 20, "{} changed", changed.len());
    let checkpoint = first_walk.covered;
    // A few more changes after the walk ended, then resume from the checkpoint.
    for i in [3usize, per_dir + 5, files - 1] {
        let (fh, _) = rpc
            .lookup(&dir_fh[i / per_dir], format!("f{i:07}").as_bytes())
            .expect("LOOKUP file");
        rpc.setattr(&fh, &Sattr::mode(0o640)).expect("SETATTR");
        changed.insert(file_inos[i]);
    }
    let resumed = walk(&node, "meta_seq", checkpoint + 1, None, 1000, |_| {});
    assert!(resumed.entries.iter().all(|e| e.0 > checkpoint));
    let seen: HashSet<(u64, u64)> = first_walk
        .entries
        .iter()
        .chain(resumed.entries.iter())
        .copied()
        .collect();
    for ino in &changed {
        let a = node.json(&format!("/v1/inodes/{ino}"));
        let seq = a["meta_seq"].as_u64().unwrap();
        assert!(
            seen.contains(&(seq, *ino)),
            "changed inode {ino} at meta_seq {seq} seen by neither the walk nor its resumption \
             (checkpoint {checkpoint}, resumed to {})",
            resumed.covered
        );
        assert!(seq <= resumed.covered);
    }
    // Every inode of the first walk that was not changed is seen exactly once; changed ones
    // at most twice (before and after their change) over both walks.
    let mut count: HashMap<u64, usize> = HashMap::new();
    for e in first_walk.entries.iter().chain(resumed.entries.iter()) {
        *count.entry(e.1).or_default() += 1;
    }
    for (ino, c) in &count {
        let limit = if changed.contains(ino) { 2 } else { 1 };
        assert!(*c <= limit, "inode {ino} seen {c} times");
    }
    for ino in &expect {
        assert!(
            count.contains_key(ino),
            "inode {ino} not seen by either walk"
        );
    }
    // The resumed walk holds only changed inodes (nothing else changed).
    for e in &resumed.entries {
        assert!(
            changed.contains(&e.1),
            "unchanged inode {} after the checkpoint",
            e.1
        );
    }
    drop(rpc);
    node.stop();
}

// ------------------------------------------------------------------------------------------
// A small tree for the inode, search and CLI tests

const TAGGED: usize = 2500;

/// What [`small_tree`] made.
struct Small {
    /// `/a/data`, also linked as `/b/hardlink`: 10 blocks, the first 4 released.
    file: u64,
    dir_a: u64,
    /// Every file in `/tags` carries `scoutfs.srch.tag`...
    tagged: BTreeSet<u64>,
    /// ...every third also `scoutfs.srch.other`.
    other: BTreeSet<u64>,
    /// `/plain/p*` carry only `user.tag` (not indexed).
    plain: BTreeSet<u64>,
    /// `/odd name`, with `scoutfs.srch.sp ace` (a name that needs escaping in a query).
    spaced: u64,
}

fn small_tree(fs: &Fs) -> Small {
    let dir_a = fs.mkdir(ROOT_INO, b"a", 0o755, 0, 0).unwrap().ino;
    let dir_b = fs.mkdir(ROOT_INO, b"b", 0o755, 0, 0).unwrap().ino;
    let f = fs.create(dir_a, b"data", &file(), true).unwrap();
    let data: Vec<u8> = (0..40960u32).map(|i| (i * 7 % 251) as u8).collect();
    let a = fs.write(f.ino, 0, &data).unwrap();
    fs.link(f.ino, dir_b, b"hardlink").unwrap();
    fs.release(f.ino, 0, 16384, a.data_version).unwrap();
    let tags = fs.mkdir(ROOT_INO, b"tags", 0o755, 0, 0).unwrap().ino;
    let (mut tagged, mut other) = (BTreeSet::new(), BTreeSet::new());
    for i in 0..TAGGED {
        let t = fs
            .create(tags, format!("t{i:05}").as_bytes(), &file(), true)
            .unwrap();
        fs.set_xattr(
            t.ino,
            b"scoutfs.srch.tag",
            format!("v{i}").as_bytes(),
            XattrSet::Any,
        )
        .unwrap();
        tagged.insert(t.ino);
        if i % 3 == 0 {
            fs.set_xattr(t.ino, b"scoutfs.srch.other", b"x", XattrSet::Any)
                .unwrap();
            other.insert(t.ino);
        }
    }
    let p = fs.mkdir(ROOT_INO, b"plain", 0o755, 0, 0).unwrap().ino;
    let mut plain = BTreeSet::new();
    for i in 0..50 {
        let t = fs
            .create(p, format!("p{i}").as_bytes(), &file(), true)
            .unwrap();
        fs.set_xattr(t.ino, b"user.tag", b"v", XattrSet::Any)
            .unwrap();
        plain.insert(t.ino);
    }
    let spaced = fs.create(ROOT_INO, b"odd name", &file(), true).unwrap().ino;
    fs.set_xattr(spaced, b"scoutfs.srch.sp ace", b"1", XattrSet::Any)
        .unwrap();
    Small {
        file: f.ino,
        dir_a,
        tagged,
        other,
        plain,
        spaced,
    }
}

fn small_node(nfs: u16, http: u16, env: &[(&str, &str)]) -> (ApiNode, Small) {
    let dir = setup("1G", "256M");
    let small = offline(dir.path(), small_tree);
    (ApiNode::serve(dir, nfs, http, env), small)
}

fn time_obj(v: &Value, what: &str) {
    assert!(
        v[what]["sec"].as_i64().is_some_and(|s| s > 0),
        "{what}: {v}"
    );
    assert!(
        v[what]["nsec"].as_u64().is_some_and(|n| n < 1_000_000_000),
        "{what}: {v}"
    );
}

/// (b) Inode status: a hard-linked file lists both paths, with the archive fields; 404
/// for unknown inodes; 400 naming the parameter for bad ones.
#[test]
fn inodes_list_every_path_and_archive_fields_and_bad_requests_name_the_parameter() {
    let (mut node, small) = small_node(16020, 16021, &[]);

    let v = node.json(&format!("/v1/inodes/{}", small.file));
    assert_eq!(v["ino"], small.file);
    assert_eq!(v["type"], "file");
    assert_eq!(v["mode"], 0o100644);
    assert_eq!(v["permissions"], "0644");
    assert_eq!(v["nlink"], 2);
    assert_eq!(v["size"], 40960);
    let mut paths: Vec<&str> = v["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    paths.sort();
    assert_eq!(paths, ["/a/data", "/b/hardlink"], "{v}");
    assert_eq!(v["online_blocks"], 6, "{v}");
    assert_eq!(v["offline_blocks"], 4, "{v}");
    assert!(v["data_version"].as_u64().is_some_and(|d| d >= 1), "{v}");
    assert!(v["meta_seq"].as_u64().is_some_and(|s| s >= 1), "{v}");
    assert!(v["data_seq"].as_u64().is_some_and(|s| s >= 1), "{v}");
    assert!(v["generation"].as_u64().is_some(), "{v}");
    for t in ["atime", "mtime", "ctime", "crtime"] {
        time_obj(&v, t);
    }
    // The data_seq index holds the file at its data_seq.
    let w = walk(&node, "data_seq", 0, None, 100, |_| {});
    assert!(w
        .entries
        .contains(&(v["data_seq"].as_u64().unwrap(), small.file)));

    let root = node.json("/v1/inodes/1");
    assert_eq!(root["type"], "directory");
    assert_eq!(root["paths"], serde_json::json!(["/"]));
    let a = node.json(&format!("/v1/inodes/{}", small.dir_a));
    assert_eq!(a["paths"], serde_json::json!(["/a"]));
    assert_eq!(a["permissions"], "0755");
    let odd = node.json(&format!("/v1/inodes/{}", small.spaced));
    assert_eq!(odd["paths"], serde_json::json!(["/odd name"]));

    for path in ["/v1/inodes/999999999", "/v1/inodes/18446744073709551615"] {
        let r = node.get(path);
        assert_eq!(r.status, 404, "GET {path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "not_found");
        assert_eq!(r.json()["error"]["status"], 404);
    }
    for path in [
        "/v1/inodes/abc",
        "/v1/inodes/0",
        "/v1/inodes/-1",
        "/v1/inodes/1x",
    ] {
        assert_bad_param(&node, path, "ino");
    }
    for index in ["meta_seq", "data_seq"] {
        let base = format!("/v1/index/{index}");
        assert_bad_param(&node, &format!("{base}?first=abc"), "first");
        assert_bad_param(&node, &format!("{base}?first=-1"), "first");
        assert_bad_param(&node, &format!("{base}?limit=0"), "limit");
        assert_bad_param(&node, &format!("{base}?limit=ten"), "limit");
        assert_bad_param(&node, &format!("{base}?after=garbage"), "after");
        assert_bad_param(&node, &format!("{base}?after=12"), "after");
        assert_bad_param(&node, &format!("{base}?last=abc"), "last");
        assert_bad_param(&node, &format!("{base}?last=-2"), "last");
        assert_bad_param(&node, &format!("{base}?first=9&last=3"), "first");
    }
    assert_bad_param(&node, "/v1/search/xattrs", "name");
    assert_bad_param(&node, "/v1/search/xattrs?name=user.tag", "name");
    assert_bad_param(
        &node,
        "/v1/search/xattrs?name=scoutfs.srch.tag&after=x",
        "after",
    );
    assert_bad_param(
        &node,
        "/v1/search/xattrs?name=scoutfs.srch.tag&limit=0",
        "limit",
    );
    // Unknown or repeated parameters, unknown routes and indexes, other methods.
    for path in [
        "/v1/index/meta_seq?frist=1",
        "/v1/index/meta_seq?limit=1&limit=2",
        "/v1/data_waiting?x=1",
    ] {
        let r = node.get(path);
        assert_eq!(r.status, 400, "GET {path}: {}", r.text());
        assert_eq!(r.json()["error"]["status"], 400);
    }
    for path in ["/v1/index/foo", "/v1/nothing", "/nothing"] {
        let r = node.get(path);
        assert_eq!(r.status, 404, "GET {path}: {}", r.text());
        assert_eq!(r.json()["error"]["status"], 404);
    }
    let r = http_req(node.http, "POST", "/v1/index/meta_seq", None);
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("GET"));

    // The other routes answer with their documented shapes.
    let dw = node.json("/v1/data_waiting");
    assert_eq!(dw["waiters"], serde_json::json!([]));
    let c = node.json("/v1/cluster");
    assert_eq!(c["this_node"]["role"], "leader", "{c}");
    let rid = c["this_node"]["rid"].as_str().unwrap().to_string();
    assert!(
        c["mounted_clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["rid"] == rid.as_str()),
        "the node's own mount is listed: {c}"
    );
    let doc = node.json("/v1/openapi.json");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(node.json("/healthz")["status"], "ok");
    assert_eq!(node.json("/readyz")["status"], "ready");
    node.stop();
}

/// Page through `/v1/search/xattrs` for `name` (already escaped) with `limit`.
fn search_all(node: &ApiNode, name: &str, limit: usize) -> (Vec<u64>, usize) {
    let (mut out, mut pages, mut after) = (Vec::new(), 0, 0u64);
    loop {
        let path = format!("/v1/search/xattrs?name={name}&limit={limit}&after={after}");
        let p = node.json(&path);
        pages += 1;
        let inos: Vec<u64> = p["inodes"]
            .as_array()
            .expect("inodes")
            .iter()
            .map(|i| i.as_u64().unwrap())
            .collect();
        assert!(inos.len() <= limit, "{path}");
        for i in &inos {
            assert!(*i > after, "{path}: {i} not after {after}");
            if let Some(prev) = out.last() {
                assert!(i > prev, "{path}: {i} after {prev}: not in inode order");
            }
            out.push(*i);
        }
        match p["next"].as_u64() {
            Some(n) => {
                assert_eq!(Some(&n), inos.last(), "{path}: next is the last inode");
                after = n;
            }
            None => {
                assert!(p["next"].is_null(), "{path}");
                return (out, pages);
            }
        }
    }
}

/// (c) xattr search finds exactly the inodes carrying a scoutfs.srch.* xattr set offline,
/// in pages.
#[test]
fn xattr_search_finds_the_tagged_inodes_in_pages() {
    let (mut node, small) = small_node(16030, 16031, &[]);
    let (found, pages) = search_all(&node, "scoutfs.srch.tag", 1000);
    assert_eq!(found, small.tagged.iter().copied().collect::<Vec<_>>());
    assert_eq!(pages, TAGGED.div_ceil(1000));
    let (found, _) = search_all(&node, "scoutfs.srch.other", 300);
    assert_eq!(found, small.other.iter().copied().collect::<Vec<_>>());
    let (found, pages) = search_all(&node, "scoutfs.srch.nothing", 1000);
    assert!(found.is_empty() && pages == 1);
    let (found, _) = search_all(&node, "scoutfs.srch.sp%20ace", 10);
    assert_eq!(found, [small.spaced]);
    let (found, _) = search_all(&node, "scoutfs.srch.sp+ace", 10);
    assert_eq!(found, [small.spaced]);
    // A page starting mid-way, and the default page size.
    let mid = *small.tagged.iter().nth(1234).unwrap();
    let p = node.json(&format!(
        "/v1/search/xattrs?name=scoutfs.srch.tag&after={mid}&limit=5"
    ));
    let want: Vec<u64> = small.tagged.range(mid + 1..).take(5).copied().collect();
    assert_eq!(p["inodes"], serde_json::json!(want));
    let p = node.json("/v1/search/xattrs?name=scoutfs.srch.tag");
    assert_eq!(p["inodes"].as_array().unwrap().len(), 1000);
    assert_eq!(p["name"], "scoutfs.srch.tag");
    // user.* xattrs are not indexed; those inodes are in no search.
    assert!(small.plain.is_disjoint(&small.tagged));
    // A change through NFS: a new file with the xattr is not possible over NFSv3, but
    // removing a tagged file takes it out of the search.
    let victim = *small.tagged.iter().next().unwrap();
    let mut rpc = Rpc::connect(node.nfs_addr());
    let root = rpc.root();
    let (tags, _) = rpc.lookup(&root, b"tags").expect("LOOKUP tags");
    assert_eq!(rpc.remove(&tags, b"t00000"), common::st::OK);
    let (found, _) = search_all(&node, "scoutfs.srch.tag", 1000);
    assert_eq!(found.len(), TAGGED - 1);
    assert!(!found.contains(&victim));
    drop(rpc);
    node.stop();
}

const PATHS: [&str; 7] = [
    "/v1/index/meta_seq",
    "/v1/index/data_seq?limit=5",
    "/v1/inodes/1",
    "/v1/search/xattrs?name=scoutfs.srch.tag",
    "/v1/data_waiting",
    "/v1/cluster",
    "/v1/openapi.json",
];

/// (d) With http.token set, /v1/* and /metrics need the bearer token; health never does.
#[test]
fn the_bearer_token_guards_everything_but_health() {
    let token = "s3cret-Token_42";
    let (mut node, _small) = small_node(16040, 16041, &[("SCOUTGW_HTTP__TOKEN", token)]);
    let good = format!("Bearer {token}");
    let wrong = [
        None,
        Some("Bearer wrong".to_string()),
        Some(format!("Bearer {token}x")),
        Some(format!("Bearer {}", &token[..token.len() - 1])),
        Some("Bearer ".to_string()),
        Some(format!("Basic {token}")),
        Some(token.to_string()),
    ];
    for path in PATHS.iter().copied().chain(["/metrics", "/v1/nothing"]) {
        for auth in &wrong {
            let r = http_get(node.http, path, auth.as_deref());
            assert_eq!(r.status, 401, "GET {path} with {auth:?}: {}", r.text());
            assert_eq!(r.header("www-authenticate"), Some("Bearer"), "GET {path}");
            let v = r.json();
            assert_eq!(v["error"]["status"], 401);
            assert_eq!(v["error"]["code"], "unauthorized");
        }
        let r = http_get(node.http, path, Some(&good));
        let want = if path == "/v1/nothing" { 404 } else { 200 };
        assert_eq!(r.status, want, "GET {path} with the token: {}", r.text());
    }
    for path in ["/healthz", "/readyz"] {
        for auth in wrong.iter().cloned().chain([Some(good.clone())]) {
            let r = http_get(node.http, path, auth.as_deref());
            assert_eq!(r.status, 200, "GET {path} with {auth:?}: {}", r.text());
        }
    }
    // The scrape with the token is Prometheus text and counted the refused requests.
    let r = http_get(node.http, "/metrics", Some(&good));
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = r.text();
    assert!(
        text.contains("scoutgw_http_requests_total{route=\"/v1/cluster\",status=\"401\"}"),
        "{text}"
    );
    // The CLI: refused without the token (exit 2), served with --token or SCOUTGW_TOKEN.
    let out = node.cli(&["walk-inodes", "meta_seq", "0", "-1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token"),
        "{out:?}"
    );
    let out = node.cli(&["stat", "1", "--token", token]);
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(common::bin())
        .args(["stat", "1", "--api", &node.api()])
        .env("SCOUTGW_TOKEN", token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("path: /"));
    node.stop();
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

/// (e) The CLI clients against a node: walk-inodes, stat, search-xattrs, exit codes. The
/// node's page cap is 1000, so the CLI's pages of 10000 are cut and it must follow cursors.
#[test]
fn cli_walk_inodes_stat_and_search_xattrs_ask_the_node() {
    let (mut node, small) = small_node(16050, 16051, &[("SCOUTGW_HTTP__MAX_PAGE", "1000")]);

    let all = walk(&node, "meta_seq", 0, None, 1000, |_| {});
    assert!(all.pages >= 3, "{} pages", all.pages);
    let text = stdout(&node.cli(&["walk-inodes", "meta_seq", "0", "-1"]));
    let lines: Vec<(u64, u64)> = text
        .lines()
        .map(|l| {
            let (s, i) = l.split_once(' ').unwrap_or_else(|| panic!("line {l:?}"));
            (s.parse().unwrap(), i.parse().unwrap())
        })
        .collect();
    assert_eq!(lines, all.entries, "walk-inodes lines vs the API's pages");
    // A range: only seqs within it.
    let mid = all.entries[all.entries.len() / 2].0;
    let text = stdout(&node.cli(&[
        "walk-inodes",
        "meta_seq",
        &mid.to_string(),
        &mid.to_string(),
    ]));
    let want: Vec<String> = all
        .entries
        .iter()
        .filter(|e| e.0 == mid)
        .map(|e| format!("{} {}", e.0, e.1))
        .collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), want);
    let v: Value = serde_json::from_str(&stdout(&node.cli(&[
        "walk-inodes",
        "data_seq",
        "0",
        "-1",
        "--json",
    ])))
    .expect("--json output");
    assert_eq!(v["index"], "data_seq");
    assert!(v["horizon"].as_u64().is_some());
    assert!(v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["ino"] == small.file));

    let text = stdout(&node.cli(&["stat", &small.file.to_string()]));
    for want in [
        format!("ino: {}", small.file),
        "type: file".to_string(),
        "nlink: 2".to_string(),
        "size: 40960".to_string(),
        "online_blocks: 6".to_string(),
        "offline_blocks: 4".to_string(),
        "permissions: 0644".to_string(),
        "path: /a/data".to_string(),
        "path: /b/hardlink".to_string(),
    ] {
        assert!(text.lines().any(|l| l == want), "{want:?} not in\n{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("crtime: ")), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("data_version: ")),
        "{text}"
    );
    let v: Value = serde_json::from_str(&stdout(&node.cli(&[
        "stat",
        &small.file.to_string(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(v["nlink"], 2);

    let text = stdout(&node.cli(&["search-xattrs", "scoutfs.srch.tag"]));
    let found: BTreeSet<u64> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(found, small.tagged);
    assert_eq!(text.lines().count(), TAGGED, "each inode once");
    let text = stdout(&node.cli(&["search-xattrs", "scoutfs.srch.sp ace"]));
    assert_eq!(text.trim(), small.spaced.to_string());
    let text = stdout(&node.cli(&["search-xattrs", "scoutfs.srch.none"]));
    assert!(text.is_empty());

    // Exit codes: unknown inode 1 (the node answered 404), refused requests 2, an
    // unreachable node 1.
    let code = |out: Output| {
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (c, err) = code(node.cli(&["stat", "999999999"]));
    assert_eq!(c, Some(1), "{err}");
    assert!(err.contains("999999999"), "{err}");
    let (c, err) = code(node.cli(&["stat", "/no/such/path"]));
    assert_eq!(c, Some(2), "{err}");
    let (c, err) = code(node.cli(&["search-xattrs", "user.tag"]));
    assert_eq!(c, Some(2), "{err}");
    let (c, err) = code(node.cli(&["walk-inodes", "meta_seq", "5", "3"]));
    assert_eq!(c, Some(2), "{err}");
    let (c, err) = code(node.cli(&["walk-inodes", "size", "0", "-1"]));
    assert_eq!(c, Some(2), "{err}");
    let dead = Command::new(common::bin())
        .args([
            "walk-inodes",
            "meta_seq",
            "0",
            "-1",
            "--api",
            "http://127.0.0.1:16059",
        ])
        .output()
        .unwrap();
    assert_eq!(dead.status.code(), Some(1), "{dead:?}");
    node.stop();
}

/// The value of the sample `name{labels}` (labels exactly as the exposition writes them),
/// or of `name` without labels.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Sum of every sample of `name` whose labels contain all of `with`.
fn sum_samples(text: &str, name: &str, with: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            with.iter()
                .all(|w| labels.split(',').any(|l| l == *w))
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// (f) /metrics has every family the issue lists, and they count the traffic a node saw.
#[test]
fn metrics_count_nfs_http_commits_devices_and_locks() {
    let (mut node, small) = small_node(16060, 16061, &[]);
    let mut rpc = Rpc::connect(node.nfs_addr());
    let root = rpc.root();
    let fh = rpc.create_file(&root, b"metered", 0o644);
    let data = common::pattern(7, 300_000);
    rpc.write_all(&fh, &data);
    assert_eq!(rpc.read_all(&fh), data);
    let (a, _) = rpc.lookup(&root, b"a").expect("LOOKUP a");
    rpc.setattr(&a, &Sattr::mode(0o700)).expect("SETATTR");
    for _ in 0..7 {
        node.json("/v1/index/meta_seq?limit=10");
    }
    node.json(&format!("/v1/inodes/{}", small.file));
    assert_eq!(node.get("/v1/inodes/999999").status, 404);
    assert_eq!(node.get("/v1/index/meta_seq?limit=0").status, 400);

    let r = node.get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    for family in [
        "scoutgw_nfs_requests_total counter",
        "scoutgw_nfs_request_duration_seconds histogram",
        "scoutgw_nfs_read_bytes_total counter",
        "scoutgw_nfs_write_bytes_total counter",
        "scoutgw_lock_events_total counter",
        "scoutgw_quorum_term gauge",
        "scoutgw_quorum_role gauge",
        "scoutgw_quorum_heartbeat_age_seconds gauge",
        "scoutgw_transaction_commits_total counter",
        "scoutgw_transaction_commit_duration_seconds histogram",
        "scoutgw_log_merge_backlog_trees gauge",
        "scoutgw_block_cache_hits_total counter",
        "scoutgw_block_cache_misses_total counter",
        "scoutgw_item_cache_events_total counter",
        "scoutgw_item_cache_items gauge",
        "scoutgw_item_cache_bytes gauge",
        "scoutgw_device_io_bytes_total counter",
        "scoutgw_device_io_duration_seconds histogram",
        "scoutgw_http_requests_total counter",
        "scoutgw_http_request_duration_seconds histogram",
    ] {
        assert!(
            text.lines().any(|l| l == format!("# TYPE {family}")),
            "no {family} family in\n{text}"
        );
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("scoutgw_"), "{line}");
    }
    let writes = sum_samples(
        &text,
        "scoutgw_nfs_requests_total",
        &["procedure=\"WRITE\""],
    );
    assert!(writes >= 1.0, "WRITE requests: {writes}\n{text}");
    assert!(
        sum_samples(
            &text,
            "scoutgw_nfs_requests_total",
            &["procedure=\"SETATTR\""]
        ) >= 1.0
    );
    let wb = sample(&text, "scoutgw_nfs_write_bytes_total").expect("write bytes");
    assert!(wb >= data.len() as f64, "write bytes {wb}");
    let rb = sample(&text, "scoutgw_nfs_read_bytes_total").expect("read bytes");
    assert!(rb >= data.len() as f64, "read bytes {rb}");
    let seq_ok = sample(
        &text,
        "scoutgw_http_requests_total{route=\"/v1/index/meta_seq\",status=\"200\"}",
    )
    .unwrap_or(0.0);
    assert!(seq_ok >= 7.0, "meta_seq 200s: {seq_ok}\n{text}");
    let bad = sample(
        &text,
        "scoutgw_http_requests_total{route=\"/v1/index/meta_seq\",status=\"400\"}",
    );
    assert_eq!(bad, Some(1.0), "{text}");
    let notfound = sample(
        &text,
        "scoutgw_http_requests_total{route=\"/v1/inodes/{ino}\",status=\"404\"}",
    );
    assert_eq!(notfound, Some(1.0), "{text}");
    assert!(
        sum_samples(
            &text,
            "scoutgw_http_request_duration_seconds_count",
            &["route=\"/v1/index/meta_seq\""]
        ) >= 8.0
    );
    assert!(sample(&text, "scoutgw_transaction_commits_total").unwrap_or(0.0) >= 1.0);
    assert!(
        sample(&text, "scoutgw_transaction_commit_duration_seconds_count").unwrap_or(0.0) >= 1.0
    );
    assert!(
        sum_samples(
            &text,
            "scoutgw_device_io_bytes_total",
            &["device=\"data\"", "op=\"write\""]
        ) >= data.len() as f64,
        "{text}"
    );
    assert!(
        sum_samples(&text, "scoutgw_device_io_bytes_total", &["device=\"meta\""]) > 0.0,
        "{text}"
    );
    assert!(
        sum_samples(&text, "scoutgw_block_cache_hits_total", &[])
            + sum_samples(&text, "scoutgw_block_cache_misses_total", &[])
            > 0.0
    );
    assert!(
        sum_samples(&text, "scoutgw_item_cache_events_total", &["event=\"hit\""]) > 0.0,
        "no item cache hits counted\n{text}"
    );
    assert!(
        sum_samples(&text, "scoutgw_lock_events_total", &[]) > 0.0,
        "no lock events counted\n{text}"
    );
    assert_eq!(
        sample(&text, "scoutgw_quorum_role{role=\"leader\"}"),
        Some(1.0)
    );
    // The term the metrics report is the one /v1/cluster reports.
    let term = node.json("/v1/cluster")["term"].as_f64().expect("term");
    assert_eq!(sample(&text, "scoutgw_quorum_term"), Some(term), "{text}");
    drop(rpc);
    node.stop();
}

/// RFC 9110 §11.1: the authentication scheme is case-insensitive, so `bearer TOKEN` and
/// `BEARER TOKEN` are the same credentials as `Bearer TOKEN`.
#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let (mut node, _small) = small_node(16070, 16071, &[("SCOUTGW_HTTP__TOKEN", "tok")]);
    for auth in ["Bearer tok", "bearer tok", "BEARER tok"] {
        let r = http_get(node.http, "/v1/cluster", Some(auth));
        assert_eq!(r.status, 200, "{auth:?}: {}", r.text());
    }
    node.stop();
}

/// RFC 9110 §9.1: a server supports HEAD wherever it supports GET (load balancers and
/// uptime checks probe health routes with HEAD).
#[test]
fn head_is_answered_like_get() {
    let (mut node, _small) = small_node(16080, 16081, &[]);
    for path in ["/healthz", "/readyz", "/v1/cluster"] {
        let r = http_req(node.http, "HEAD", path, None);
        assert_eq!(r.status, 200, "HEAD {path}: {r:?}");
        assert!(r.body.is_empty(), "HEAD {path}: a body");
    }
    node.stop();
}

/// Issue 5: a READ of released (offline) data answers NFS3ERR_JUKEBOX while staging is
/// pending (the client retries later), the waiting reader is listed by /v1/data_waiting
/// meanwhile, and the file's online blocks still read.
#[test]
fn reads_of_released_data_get_jukebox_and_are_listed_as_waiting() {
    const JUKEBOX: u32 = 10008;
    let dir = setup("1G", "256M");
    let ino = offline(dir.path(), |fs| {
        let a = fs.create(ROOT_INO, b"archived", &file(), true).unwrap();
        fs.write(a.ino, 0, &[7u8; 3 * 4096]).unwrap();
        let dv = fs.stat_more(a.ino).unwrap().data_version;
        fs.release(a.ino, 4096, 8192, dv).unwrap();
        a.ino
    });
    let mut node = ApiNode::serve(dir, 16090, 16091, &[]);
    let mut rpc = Rpc::connect(node.nfs_addr());
    let root = rpc.root();
    let (fh, _) = rpc.lookup(&root, b"archived").expect("LOOKUP archived");
    let (online, _) = rpc.read(&fh, 0, 4096).expect("READ of the online block");
    assert_eq!(online, vec![7u8; 4096]);

    let addr = node.nfs_addr();
    let offline_fh = fh.clone();
    let reader = std::thread::spawn(move || Rpc::connect(addr).read(&offline_fh, 4096, 4096));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut listed = false;
    while !listed && Instant::now() < deadline && !reader.is_finished() {
        let w = node.json("/v1/data_waiting");
        listed = w["waiters"]
            .as_array()
            .expect("waiters")
            .iter()
            .any(|x| x["ino"] == ino);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        listed,
        "the blocked READ was never listed in /v1/data_waiting"
    );
    assert_eq!(reader.join().unwrap().unwrap_err(), JUKEBOX);
    let w = node.json("/v1/data_waiting");
    assert!(
        w["waiters"].as_array().unwrap().is_empty(),
        "the reader left the list when it gave up: {w}"
    );
    drop(rpc);
    node.stop();
}
