//! Index walk vs namespace walk (issue 6): on a tree of 1 M files of which 10 k changed
//! since a checkpoint, find the changed files (a) with one `scoutgw walk-inodes meta_seq
//! CHECKPOINT+1 -1` pass through a node's HTTP API and (b) with a full namespace walk over
//! NFS comparing every file's mtime to the checkpoint time, the way a tool without the index
//! must. Both must find exactly the changed files; prints both times and the ratio.
//!
//! Run through `scripts/bench-index.sh` (or `cargo bench -p scoutgw --bench index_walk`).
//! Knobs (environment; not `SCOUTGW_*`, which the node's configuration would read):
//! `INDEX_WALK_FILES` (1000000), `INDEX_WALK_PER_DIR` (10000 files per directory),
//! `INDEX_WALK_CHANGED` (10000), `INDEX_WALK_ROUNDS` (3, alternating which walk goes first),
//! `INDEX_WALK_NFS_CONNS` (4: the namespace walk reads that many directories at once, one
//! NFS connection each), `INDEX_WALK_PORT` (16300: NFS; HTTP is the next port),
//! `INDEX_WALK_DIR` (`<target>/bench-tmp`).
//!
//! Setup, not timed: `scoutgw quickstart --setup-only` (sparse 16 GiB metadata and 2 GiB
//! data device files); the files are created **offline** through the library (`Fs::mkdir`,
//! `Fs::create` on the device files, directories `d0000`, `d0001`, ... of `f0000000`-style
//! names), unmounted and the log trees merged; then `scoutgw serve` (release build) with
//! `export.sync = false` and commits every 200 ms. Checkpoint = the `horizon` that
//! `/v1/index/meta_seq` reports; checkpoint time = the clock just after. The changed files
//! (spread over all directories by a fixed pseudo-random choice) get a SETATTR of mtime to
//! the server's time over NFS (LOOKUP + SETATTR each); then the bench waits until the
//! horizon covers them.
//!
//! (a) the CLI as a child process (`walk-inodes` pages of 10000 through the API; process
//! start included), its `SEQ INO` lines parsed. (b) MOUNT, then READDIRPLUS (maxcount
//! 1 MiB) of the root and of every directory found, `INDEX_WALK_NFS_CONNS` directories at a
//! time, each entry's mtime compared with the checkpoint time (entries without attributes
//! would get a GETATTR). Own raw NFSv3 client (`tests/common`), no kernel mount.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeSet, VecDeque};
use std::error::Error;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use scoutgw::nfs::xdr::XdrWriter;
use scoutgw_blockdev::{BlockDevice, DeviceOptions, FileDevice, MetaDev};
use scoutgw_cluster::client::LocalServer;
use scoutgw_cluster::format::inode::ROOT_INO;
use scoutgw_cluster::fs::{FileType, Fs, FsOptions, NewNode};
use scoutgw_cluster::lock::LocalLocks;
use scoutgw_cluster::server::{Server, ServerConfig};
use serde_json::Value;

use common::{ftype, proc3, Rpc};

type BenchResult<T> = Result<T, Box<dyn Error>>;

const CACHE_BYTES: u64 = 1 << 30;
const DIR_MAXCOUNT: u32 = 1 << 20;
/// Enough dircount for the entries that fit 1 MiB with attributes and handles (~6700 of
/// 8-byte names), so the server does not read far more entries than it sends.
const DIR_DIRCOUNT: u32 = 180_000;

fn env_num(name: &str, default: usize) -> BenchResult<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}={v:?}: expected a number").into()),
    }
}

struct Knobs {
    files: usize,
    per_dir: usize,
    changed: usize,
    rounds: usize,
    /// Namespace walks to time each round, by number of NFS connections.
    conns: Vec<usize>,
    port: u16,
}

fn main() -> BenchResult<()> {
    let k = Knobs {
        files: env_num("INDEX_WALK_FILES", 1_000_000)?,
        per_dir: env_num("INDEX_WALK_PER_DIR", 10_000)?,
        changed: env_num("INDEX_WALK_CHANGED", 10_000)?,
        rounds: env_num("INDEX_WALK_ROUNDS", 5)?,
        conns: std::env::var("INDEX_WALK_NFS_CONNS")
            .unwrap_or_else(|_| "4,1".into())
            .split(',')
            .map(|c| c.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| "INDEX_WALK_NFS_CONNS: a list of numbers, like 4,1")?,
        port: env_num("INDEX_WALK_PORT", 16300)? as u16,
    };
    if k.files == 0
        || k.per_dir == 0
        || k.changed == 0
        || k.changed > k.files
        || k.rounds == 0
        || k.conns.is_empty()
        || k.conns.contains(&0)
    {
        return Err(
            "need files > 0, per_dir > 0, 0 < changed <= files, rounds > 0, \
                    connection counts > 0"
                .into(),
        );
    }
    let base = match std::env::var_os("INDEX_WALK_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp"),
    };
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new()
        .prefix("index_walk-")
        .tempdir_in(&base)?;
    let dir = tmp.path();
    println!("index_walk: walk-inodes through the HTTP API vs an NFS namespace walk");
    println!("  dir:     {}", dir.display());
    println!(
        "  tree:    {} files in {} directories of {}; {} changed; {} round(s); \
         namespace walks over {:?} NFS connection(s)",
        k.files,
        k.files.div_ceil(k.per_dir),
        k.per_dir,
        k.changed,
        k.rounds,
        k.conns
    );

    let out = Command::new(common::bin())
        .args(["quickstart", "--dir"])
        .arg(dir)
        .args(["--setup-only", "--meta-size", "16G", "--data-size", "2G"])
        .output()?;
    if !out.status.success() {
        return Err(format!("quickstart: {}", String::from_utf8_lossy(&out.stderr)).into());
    }

    let t = Instant::now();
    let inos = create_offline(dir, k.files, k.per_dir)?;
    let created = t.elapsed();
    println!(
        "  offline: created {} files in {:.1} s ({:.0}/s), merged",
        k.files,
        created.as_secs_f64(),
        k.files as f64 / created.as_secs_f64()
    );

    let mut node = Node::start(dir, k.port, k.port + 1)?;
    let result = run(&k, &node, &inos);
    if let Ok(secs) = std::env::var("INDEX_WALK_HOLD_SECS") {
        // For poking at the node by hand after the rounds.
        println!(
            "  holding the node on {} / {} for {secs} s",
            node.nfs, node.http
        );
        std::thread::sleep(Duration::from_secs(secs.parse()?));
    }
    node.stop()?;
    let rounds = result?;
    report(&k, &rounds);
    Ok(())
}

/// One round's times.
struct Round {
    /// `scoutgw walk-inodes` as a process.
    cli: Duration,
    /// The same API pages asked from the bench process.
    api: Duration,
    /// One namespace walk per entry of `Knobs::conns`.
    ns: Vec<Duration>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn report(k: &Knobs, rounds: &[Round]) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ratio = |ns: Duration, idx: Duration| ns.as_secs_f64() / idx.as_secs_f64();
    println!();
    let mut head = "| round | walk-inodes CLI (ms) | API pages (ms) |".to_string();
    let mut rule = "|---:|---:|---:|".to_string();
    for c in &k.conns {
        head.push_str(&format!(" namespace walk, {c} conn (s) | ratio |"));
        rule.push_str("---:|---:|");
    }
    println!("{head}\n{rule}");
    let row = |label: &str, r: &Round| {
        let mut line = format!("| {label} | {:.1} | {:.1} |", ms(r.cli), ms(r.api));
        for ns in &r.ns {
            line.push_str(&format!(
                " {:.2} | {:.0}x |",
                ns.as_secs_f64(),
                ratio(*ns, r.cli)
            ));
        }
        line
    };
    for (i, r) in rounds.iter().enumerate() {
        println!("{}", row(&(i + 1).to_string(), r));
    }
    let med = Round {
        cli: median(rounds.iter().map(|r| r.cli).collect()),
        api: median(rounds.iter().map(|r| r.api).collect()),
        ns: (0..k.conns.len())
            .map(|j| median(rounds.iter().map(|r| r.ns[j]).collect()))
            .collect(),
    };
    println!("{}", row("median", &med));
    for (c, ns) in k.conns.iter().zip(&med.ns) {
        println!(
            "median: walk-inodes {:.1} ms vs namespace walk over {c} connection(s) {:.2} s: \
             ratio {:.0}x (aim >= 100x); API pages alone {:.1} ms: {:.0}x",
            ms(med.cli),
            ns.as_secs_f64(),
            ratio(*ns, med.cli),
            ms(med.api),
            ratio(*ns, med.api)
        );
    }
}

fn open_dev(path: &Path) -> BenchResult<Arc<dyn BlockDevice>> {
    Ok(Arc::new(FileDevice::open(path, DeviceOptions::default())?))
}

/// The tree, made through the library on the device files; the files' inode numbers.
fn create_offline(dir: &Path, files: usize, per_dir: usize) -> BenchResult<Vec<u64>> {
    let meta = open_dev(&dir.join("meta.dev"))?;
    let cfg = ServerConfig {
        cache_bytes: CACHE_BYTES,
        client_meta_fill: 8_000,
        client_meta_low: 4_000,
        ..ServerConfig::default()
    };
    let server = Arc::new(LocalServer::new(Server::open(meta.clone(), cfg)?));
    let fsid = server.with(|s| s.fsid());
    let md = Arc::new(MetaDev::new(meta, fsid, CACHE_BYTES));
    let merger = server.spawn_merger(Duration::from_millis(50));
    let fs = Fs::mount(
        md,
        open_dev(&dir.join("data.dev"))?,
        server.clone(),
        Arc::new(LocalLocks::new()),
        0x1dec_5eed,
        FsOptions::default(),
    )?;
    let node = NewNode {
        kind: FileType::Regular,
        perm: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
    };
    let mut inos = Vec::with_capacity(files);
    let mut d = 0;
    for i in 0..files {
        if i % per_dir == 0 {
            d = fs
                .mkdir(ROOT_INO, dir_name(i / per_dir).as_bytes(), 0o755, 0, 0)?
                .ino;
        }
        inos.push(fs.create(d, file_name(i).as_bytes(), &node, true)?.ino);
    }
    fs.unmount()?;
    drop(merger);
    while server.with(|s| s.merge_finalized())? > 0 {}
    Ok(inos)
}

fn dir_name(d: usize) -> String {
    format!("d{d:04}")
}

fn file_name(i: usize) -> String {
    format!("f{i:07}")
}

/// `k.changed` distinct file indexes spread over the tree (a fixed pseudo-random choice).
fn choose(files: usize, n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..files).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = i + (x % (files - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(n);
    idx
}

fn run(k: &Knobs, node: &Node, inos: &[u64]) -> BenchResult<Vec<Round>> {
    // Checkpoint: the horizon, and the time just after it.
    let checkpoint = node.get("/v1/index/meta_seq?limit=1")?["horizon"]
        .as_u64()
        .ok_or("no horizon")?;
    let t0 = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let t0 = (t0.as_secs() as u32, t0.subsec_nanos());
    std::thread::sleep(Duration::from_millis(20));

    // The changes: SETATTR mtime = server time over NFS.
    let t = Instant::now();
    let mut rpc = Rpc::connect(node.nfs);
    let root = rpc.root();
    let ndirs = k.files.div_ceil(k.per_dir);
    let dirs: Vec<Vec<u8>> = (0..ndirs)
        .map(|d| {
            rpc.lookup(&root, dir_name(d).as_bytes())
                .map(|(fh, _)| fh)
                .map_err(|s| format!("LOOKUP {}: {s}", dir_name(d)))
        })
        .collect::<Result<_, _>>()?;
    let mut changed = BTreeSet::new();
    for i in choose(k.files, k.changed) {
        let (fh, attr) = rpc
            .lookup(&dirs[i / k.per_dir], file_name(i).as_bytes())
            .map_err(|s| format!("LOOKUP {}: {s}", file_name(i)))?;
        let id = attr.ok_or("LOOKUP without attributes")?.fileid;
        if id != inos[i] {
            return Err(format!("{} is inode {id}, created as {}", file_name(i), inos[i]).into());
        }
        set_mtime_now(&mut rpc, &fh)?;
        changed.insert(id);
    }
    drop(rpc);
    // Wait until the horizon covers every change.
    let mut want = 0;
    for ino in &changed {
        want = want.max(
            node.get(&format!("/v1/inodes/{ino}"))?["meta_seq"]
                .as_u64()
                .ok_or("no meta_seq")?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.get("/v1/index/meta_seq?limit=1")?["horizon"]
        .as_u64()
        .ok_or("no horizon")?
        < want
    {
        if Instant::now() > deadline {
            return Err("the horizon did not reach the changes within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "  changes: {} SETATTR(mtime) over NFS in {:.1} s; checkpoint seq {checkpoint}, \
         changes up to seq {want}",
        changed.len(),
        t.elapsed().as_secs_f64()
    );

    let mut rounds = Vec::new();
    for r in 0..k.rounds {
        // Alternate which walk goes first (block cache and page cache warmth).
        let index_first = r % 2 == 0;
        let mut round = Round {
            cli: Duration::ZERO,
            api: Duration::ZERO,
            ns: Vec::new(),
        };
        for step in 0..2 {
            if (step == 0) == index_first {
                let t = Instant::now();
                let found = index_walk(node, checkpoint + 1)?;
                round.cli = t.elapsed();
                check("walk-inodes", &found, &changed)?;
                // The same pages asked in this process: the API's share of the CLI's time.
                let t = Instant::now();
                let (api_found, pages) = api_walk(node, checkpoint + 1)?;
                round.api = t.elapsed();
                check("API pages", &api_found, &changed)?;
                println!(
                    "  round {}: walk-inodes meta_seq {} -1: {} inodes in {:.1} ms \
                     (the same {pages} API page(s) from this process: {:.1} ms)",
                    r + 1,
                    checkpoint + 1,
                    found.len(),
                    round.cli.as_secs_f64() * 1e3,
                    round.api.as_secs_f64() * 1e3
                );
            } else {
                for &conns in &k.conns {
                    let t = Instant::now();
                    let (found, entries, calls) = namespace_walk(node.nfs, t0, conns)?;
                    let el = t.elapsed();
                    check("namespace walk", &found, &changed)?;
                    println!(
                        "  round {}: namespace walk over {conns} connection(s): {entries} \
                         entries in {calls} READDIRPLUS, {} newer than the checkpoint, in \
                         {:.2} s",
                        r + 1,
                        found.len(),
                        el.as_secs_f64()
                    );
                    round.ns.push(el);
                }
            }
        }
        rounds.push(round);
    }
    Ok(rounds)
}

/// Every inode once, and exactly the changed ones.
fn check(what: &str, found: &[u64], changed: &BTreeSet<u64>) -> BenchResult<()> {
    let set: BTreeSet<u64> = found.iter().copied().collect();
    if set.len() != found.len() {
        return Err(format!("{what}: an inode was reported twice").into());
    }
    if &set != changed {
        let missing: Vec<_> = changed.difference(&set).take(5).collect();
        let extra: Vec<_> = set.difference(changed).take(5).collect();
        return Err(format!(
            "{what} found {} inodes, {} changed: missing {missing:?}, extra {extra:?}",
            set.len(),
            changed.len()
        )
        .into());
    }
    Ok(())
}

/// SETATTR with only mtime = SET_TO_SERVER_TIME.
fn set_mtime_now(rpc: &mut Rpc, fh: &[u8]) -> BenchResult<()> {
    let mut w = XdrWriter::new();
    w.opaque(fh);
    w.bool(false).bool(false).bool(false).bool(false); // mode, uid, gid, size
    w.u32(0); // atime: DONT_CHANGE
    w.u32(1); // mtime: SET_TO_SERVER_TIME
    w.bool(false); // no guard
    let body = rpc.nfs(proc3::SETATTR, &w.buf);
    let status = u32::from_be_bytes(body[..4].try_into()?);
    if status != 0 {
        return Err(format!("SETATTR: status {status}").into());
    }
    Ok(())
}

/// (a) `scoutgw walk-inodes meta_seq FIRST -1` against the node; the inodes it printed.
fn index_walk(node: &Node, first: u64) -> BenchResult<Vec<u64>> {
    let out = Command::new(common::bin())
        .args(["walk-inodes", "meta_seq", &first.to_string(), "-1", "--api"])
        .arg(format!("http://{}", node.http))
        .env_remove("SCOUTGW_TOKEN")
        .output()?;
    if !out.status.success() {
        return Err(format!("walk-inodes: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    String::from_utf8(out.stdout)?
        .lines()
        .map(|l| {
            let (seq, ino) = l
                .split_once(' ')
                .ok_or("walk-inodes: a line without a space")?;
            if seq.parse::<u64>()? < first {
                return Err(format!("walk-inodes: seq {seq} below {first}").into());
            }
            Ok(ino.parse()?)
        })
        .collect()
}

/// `/v1/index/meta_seq` from `first` in pages of 10000 (as the CLI asks), from this
/// process; the inodes and the number of pages.
fn api_walk(node: &Node, first: u64) -> BenchResult<(Vec<u64>, usize)> {
    let (mut out, mut pages, mut after) = (Vec::new(), 0, String::new());
    loop {
        let p = node.get(&format!(
            "/v1/index/meta_seq?first={first}&last=-1&limit=10000{after}"
        ))?;
        pages += 1;
        for e in p["entries"].as_array().ok_or("no entries")? {
            out.push(e["ino"].as_u64().ok_or("no ino")?);
        }
        match p["next"].as_str() {
            Some(c) => after = format!("&after={c}"),
            None => return Ok((out, pages)),
        }
    }
}

/// (b) READDIRPLUS of every directory from the root, `conns` directories at a time; the
/// files whose mtime is after `t0`, the entries seen and the READDIRPLUS calls made.
fn namespace_walk(
    nfs: SocketAddr,
    t0: (u32, u32),
    conns: usize,
) -> BenchResult<(Vec<u64>, u64, u64)> {
    let root = Rpc::connect(nfs).root();
    // (directories to read, directories being read)
    let queue = Arc::new((Mutex::new((VecDeque::from([root]), 0usize)), Condvar::new()));
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let queue = queue.clone();
            std::thread::spawn(move || -> Result<(Vec<u64>, u64, u64), String> {
                let mut rpc = Rpc::connect(nfs);
                let (mut found, mut entries, mut calls) = (Vec::new(), 0u64, 0u64);
                loop {
                    let dir = {
                        let (lock, cv) = &*queue;
                        let mut q = lock.lock().unwrap();
                        loop {
                            if let Some(d) = q.0.pop_front() {
                                q.1 += 1;
                                break d;
                            }
                            if q.1 == 0 {
                                cv.notify_all();
                                return Ok((found, entries, calls));
                            }
                            q = cv.wait(q).unwrap();
                        }
                    };
                    let (mut cookie, mut verf) = (0u64, [0u8; 8]);
                    let mut subdirs = Vec::new();
                    loop {
                        let page = rpc
                            .readdirplus(&dir, cookie, verf, DIR_DIRCOUNT, DIR_MAXCOUNT)
                            .map_err(|s| format!("READDIRPLUS: status {s}"))?;
                        calls += 1;
                        for e in &page.entries {
                            if e.name == b"." || e.name == b".." {
                                continue;
                            }
                            entries += 1;
                            let attr = match e.attr {
                                Some(a) => a,
                                None => {
                                    let fh = e.fh.as_ref().ok_or("entry without a handle")?;
                                    rpc.getattr(fh).map_err(|s| format!("GETATTR: {s}"))?
                                }
                            };
                            if attr.ftype == ftype::DIR {
                                subdirs.push(e.fh.clone().ok_or("directory without a handle")?);
                            } else if attr.mtime > t0 {
                                found.push(e.fileid);
                            }
                        }
                        if page.eof {
                            break;
                        }
                        cookie = page.entries.last().ok_or("empty page before eof")?.cookie;
                        verf = page.verf;
                    }
                    let (lock, cv) = &*queue;
                    let mut q = lock.lock().unwrap();
                    q.0.extend(subdirs);
                    q.1 -= 1;
                    cv.notify_all();
                }
            })
        })
        .collect();
    let (mut found, mut entries, mut calls) = (Vec::new(), 0, 0);
    for w in workers {
        let (f, e, c) = w.join().map_err(|_| "a walker thread panicked")??;
        found.extend(f);
        entries += e;
        calls += c;
    }
    Ok((found, entries, calls))
}

/// `scoutgw serve` (this build's binary) on the bench's device files.
struct Node {
    child: Option<Child>,
    nfs: SocketAddr,
    http: SocketAddr,
    log: PathBuf,
}

impl Node {
    fn start(dir: &Path, nfs: u16, http: u16) -> BenchResult<Node> {
        let log = dir.join("node.log");
        let mut child = Command::new(common::bin())
            .arg("serve")
            .arg("--config")
            .arg(dir.join("scoutgw.toml"))
            .env("SCOUTGW_NFS__BIND", format!("127.0.0.1:{nfs}"))
            .env("SCOUTGW_HTTP__BIND", format!("127.0.0.1:{http}"))
            .env("SCOUTGW_EXPORT__SYNC", "false")
            .env("SCOUTGW_FS__COMMIT_INTERVAL_MS", "200")
            .env("SCOUTGW_NODE__LOG", "warn")
            .env_remove("SCOUTGW_HTTP__TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log)?)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut node = Node {
            child: Some(child),
            nfs: SocketAddr::from(([127, 0, 0, 1], nfs)),
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            log,
        };
        let t = Instant::now();
        for line in BufReader::new(stdout).lines() {
            if line?.starts_with("scoutgw: serving NFSv3 on ") {
                println!(
                    "  node:    serving after {:.1} s",
                    t.elapsed().as_secs_f64()
                );
                return Ok(node);
            }
        }
        let status = node.child.take().map(|mut c| c.wait());
        Err(format!(
            "node exited ({status:?}) before serving:\n{}",
            std::fs::read_to_string(&node.log).unwrap_or_default()
        )
        .into())
    }

    /// GET that must answer 200 with JSON.
    fn get(&self, path: &str) -> BenchResult<Value> {
        let mut s = TcpStream::connect(self.http)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.http
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("no end of headers")?;
        if !raw.starts_with(b"HTTP/1.1 200 ") {
            return Err(format!("GET {path}: {}", String::from_utf8_lossy(&raw)).into());
        }
        Ok(serde_json::from_slice(&raw[split + 4..])?)
    }

    fn stop(&mut self) -> BenchResult<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let status = child.wait()?;
        if !status.success() {
            return Err(format!(
                "node exited {status}:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
            .into());
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
