//! Crash consistency of the metadata engine.
//!
//! Two kinds of crash are tested here:
//!
//! * **Process kills.** A child process (this test binary, re-executed) opens the filesystem
//!   as a node would (`Server::open`, `LocalServer`, `Client::mount`) and commits a numbered
//!   stream of transactions forever, printing `ACK N` only after `commit()` of transaction N
//!   returned. Every few transactions it also runs a log merge. The parent kills it with
//!   SIGKILL at random moments (some right after an ACK, so the kill lands mid-commit, some
//!   during a merge, some while it is still starting), then opens the devices itself and
//!   checks that fsck is clean, that every acknowledged transaction is entirely there and
//!   that no transaction is partly there. The next child continues on the same devices.
//!   A killed process loses nothing it handed to the kernel, so this tests the ordering of
//!   the engine's writes, not the device's flushes.
//! * **Power cuts.** In-process, the metadata device is wrapped in a [`FaultyDevice`] that
//!   holds writes until a flush and fails every write after the `n`-th; after the failure the
//!   unflushed writes are dropped ([`FaultyDevice::crash`]). For every `n`, the reopened
//!   filesystem must hold exactly the last committed state, or the new one if (and only if)
//!   the commit's super block write was flushed before the cut. The same is done to log
//!   merges, which must never change what the filesystem holds.
//!
//! # The workload
//!
//! Transaction `N` (from 1) writes `items_in(N)` items `(N, i)` of varied sizes up to the
//! maximum value size, sets the `LAST` item to `N`, deletes every third item of transaction
//! `N - 5`, and puts or deletes one of 16 "recycled" keys (chosen by `N`; each is put,
//! deleted and put again many times over). The whole state after transaction `L` is a pure function of
//! `L` ([`expected_state`]), so a check reads `L` from the `LAST` item and compares every
//! item of the filesystem with that state: a transaction applied in part, a lost deletion or
//! a resurrected item shows up as a difference.
//!
//! # Child processes
//!
//! As in `blockdev/tests/multiprocess.rs`, the parent re-executes this binary with
//! `--exact crash_worker_entry_runs_only_in_child_processes --nocapture` and the environment
//! variable `SCOUTGW_CRASH_WORKER` set; without it the worker test returns at once. The worker
//! prints `READY L` once mounted (L = the last transaction it found), `ACK N` after each
//! commit, and `MERGE N` / `MERGED N count` around merges, flushing stdout after each line;
//! its stderr goes to a log file the parent shows when something fails.
//!
//! # Replaying a failure
//!
//! Each process test prints its seed; `SCOUTGW_CRASH_SEED=<seed>` makes the next run take
//! the same decisions (kill plans, delays, reclaim points). The moment a kill lands still
//! depends on timing, so a replay is likely, not certain, to hit the same state.
//! `SCOUTGW_CRASH_ROUNDS=<n>` changes the number of kill rounds of every process test, e.g.
//! `SCOUTGW_CRASH_ROUNDS=500 cargo test -p scoutgw-cluster --test crash` for a long run.
//! Every failure message names the seed, the round, the kill plan and what the child said.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use scoutgw_blockdev::device::Faults;
use scoutgw_blockdev::{
    BlockDevice, BlockError, BlockSize, DeviceOptions, FaultyDevice, FileDevice, MetaDev,
};
use scoutgw_cluster::client::{Client, LocalServer};
use scoutgw_cluster::format::key::zone;
use scoutgw_cluster::format::layout::{BTREE_MAX_VAL_LEN, FORMAT_VERSION_MAX, SUPER_BLKNOS};
use scoutgw_cluster::format::Key;
use scoutgw_cluster::fsck::fsck;
use scoutgw_cluster::mkfs::{mkfs, MkfsOptions};
use scoutgw_cluster::msg::{Request, Response, ServerLink};
use scoutgw_cluster::server::{Server, ServerConfig};

// ---------------------------------------------------------------------------------------------
// The workload: transaction N and the state after transaction L
// ---------------------------------------------------------------------------------------------

/// A 64-bit mix (the splitmix64 finalizer): every size and byte of the workload derives
/// from it.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Number of items transaction `n` writes: a few, and now and then many (so that a commit
/// splits leaves and writes many blocks).
fn items_in(n: u64) -> u64 {
    let h = mix(n ^ 0x17E5);
    if h.is_multiple_of(10) {
        40 + (h >> 8) % 120
    } else {
        1 + (h >> 8) % 6
    }
}

/// Transaction `n` deletes item `i` of transaction `n - DELETE_LAG` when `i % DELETE_EVERY == 0`.
const DELETE_LAG: u64 = 5;
const DELETE_EVERY: u64 = 3;
/// The recycled keys: transaction `n` puts or deletes one of them, [`recycled_of`]`(n)`.
const RECYCLED: u64 = 16;

/// The workload's keys live far above the inode numbers the filesystem layer hands out, with
/// item types (0, 1, 2) it does not use, so they never meet what mkfs creates (the root
/// directory).
const WORK_INO: u64 = 1 << 48;

/// Item `i` of transaction `n` (`n >= 1`).
fn tx_key(n: u64, i: u64) -> Key {
    Key::new(zone::FS, WORK_INO + n, 1, i, 0, 0)
}

/// The item holding the number of the last committed transaction.
fn last_key() -> Key {
    Key::new(zone::FS, WORK_INO, 0, 0, 0, 0)
}

fn recycled_key(j: u64) -> Key {
    Key::new(zone::FS, WORK_INO, 2, j, 0, 0)
}

/// `len` bytes derived from `tag`, starting with the tag itself when there is room.
fn filler(tag: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    v.extend_from_slice(&tag.to_le_bytes());
    let mut h = tag;
    while v.len() < len {
        h = mix(h);
        v.extend_from_slice(&h.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The value of item `i` of transaction `n`: 0 to `BTREE_MAX_VAL_LEN` bytes.
fn tx_value(n: u64, i: u64) -> Vec<u8> {
    let tag = mix(n.wrapping_mul(0x1_0000_0001) ^ i.wrapping_mul(0xA5A5_5A5A) ^ 0xBEEF);
    // Mostly spread over all sizes, sometimes exactly the largest or empty.
    let len = match tag % 16 {
        0 => BTREE_MAX_VAL_LEN,
        1 => 0,
        _ => (tag >> 16) as usize % (BTREE_MAX_VAL_LEN + 1),
    };
    filler(tag, len)
}

/// The value of `LAST` after transaction `n`: `n` itself, padded.
fn last_value(n: u64) -> Vec<u8> {
    let mut v = n.to_le_bytes().to_vec();
    v.extend(filler(mix(n ^ 0x1A57), (mix(n) % 120) as usize));
    v
}

/// The recycled key transaction `n` changes.
fn recycled_of(n: u64) -> u64 {
    mix(n ^ 0x2EC7) % RECYCLED
}

/// What transaction `n` does to its recycled key: `Some(value)` puts, `None` deletes.
fn recycled_change(n: u64) -> Option<Vec<u8>> {
    let h = mix(n ^ 0x2EC8);
    h.is_multiple_of(2)
        .then(|| filler(h, (h >> 8) as usize % 300))
}

/// Stage transaction `n` in the client's open transaction.
fn stage_tx(c: &mut Client, n: u64) {
    for i in 0..items_in(n) {
        c.put(tx_key(n, i), tx_value(n, i), 0)
            .unwrap_or_else(|e| panic!("put of item {i} of transaction {n}: {e}"));
    }
    c.put(last_key(), last_value(n), 0)
        .unwrap_or_else(|e| panic!("put of LAST in transaction {n}: {e}"));
    if n > DELETE_LAG {
        let old = n - DELETE_LAG;
        for i in (0..items_in(old)).step_by(DELETE_EVERY as usize) {
            c.delete(tx_key(old, i), 0).unwrap();
        }
    }
    match recycled_change(n) {
        Some(v) => c
            .put(recycled_key(recycled_of(n)), v, 0)
            .unwrap_or_else(|e| panic!("put of a recycled key in transaction {n}: {e}")),
        None => c.delete(recycled_key(recycled_of(n)), 0).unwrap(),
    }
}

/// Every item of the filesystem after transactions `1..=l` (and nothing else).
fn expected_state(l: u64) -> BTreeMap<Key, Vec<u8>> {
    let mut m = BTreeMap::new();
    for n in 1..=l {
        for i in 0..items_in(n) {
            let deleted = i % DELETE_EVERY == 0 && n + DELETE_LAG <= l;
            if !deleted {
                m.insert(tx_key(n, i), tx_value(n, i));
            }
        }
    }
    if l > 0 {
        m.insert(last_key(), last_value(l));
    }
    for n in 1..=l {
        match recycled_change(n) {
            Some(v) => m.insert(recycled_key(recycled_of(n)), v),
            None => m.remove(&recycled_key(recycled_of(n))),
        };
    }
    m
}

/// A readable name for a key of the workload.
fn describe(k: &Key) -> String {
    let (z, first, ty, second, _, _) = k.sort_tuple();
    match (z, first.wrapping_sub(WORK_INO), ty) {
        (zone::FS, 0, 0) => "LAST".to_string(),
        (zone::FS, 0, 2) => format!("recycled key {second}"),
        (zone::FS, n, 1) if first > WORK_INO => format!("item {second} of transaction {n}"),
        _ => format!("key {:?} (not the workload's)", k.sort_tuple()),
    }
}

/// Compare what a check read with the state after transaction `l` on top of `baseline` (what
/// the filesystem held before the workload started); a list of differences.
fn diff_state(
    got: &BTreeMap<Key, Vec<u8>>,
    l: u64,
    baseline: &BTreeMap<Key, Vec<u8>>,
) -> Vec<String> {
    let mut want = baseline.clone();
    want.extend(expected_state(l));
    let mut out = Vec::new();
    for (k, v) in &want {
        match got.get(k) {
            None => out.push(format!("missing: {}", describe(k))),
            Some(g) if g != v => out.push(format!(
                "wrong value: {} has {} bytes, expected {} bytes{}",
                describe(k),
                g.len(),
                v.len(),
                if g.len() >= 8 {
                    format!(
                        " (tag {:016x})",
                        u64::from_le_bytes(g[..8].try_into().unwrap())
                    )
                } else {
                    String::new()
                }
            )),
            Some(_) => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(k)) {
        out.push(format!("unexpected: {}", describe(k)));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Filesystem setup shared by both kinds of test
// ---------------------------------------------------------------------------------------------

const DEV_BYTES: u64 = 256 << 20;
/// The rid the checking client mounts with (it says farewell before the next round).
const CHECK_RID: u64 = 0xC4EC_0000;

/// The allocation policy of every server in these tests, parent and children alike: small
/// client allocators, so that the trees of dead clients don't fill the device.
fn cfg() -> ServerConfig {
    ServerConfig {
        cache_bytes: 16 << 20,
        client_meta_fill: 64,
        client_meta_low: 32,
        client_data_fill: 256,
        client_data_low: 64,
        server_meta_low: 64,
        server_meta_high: 512,
        ..ServerConfig::default()
    }
}

fn open(path: &Path) -> Arc<dyn BlockDevice> {
    Arc::new(
        FileDevice::open(path, DeviceOptions::default())
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display())),
    )
}

struct Fs {
    dir: tempfile::TempDir,
    meta: PathBuf,
    data: PathBuf,
    /// The items mkfs created (the root directory), there before any transaction.
    baseline: BTreeMap<Key, Vec<u8>>,
}

impl Fs {
    /// Two sparse 256 MiB device files with a new filesystem on them.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("meta");
        let data = dir.path().join("data");
        for p in [&meta, &data] {
            File::create(p).unwrap().set_len(DEV_BYTES).unwrap();
        }
        let opts = MkfsOptions {
            slots: vec!["0,127.0.0.1,7100".parse().unwrap()],
            allow_small_size: true,
            ..MkfsOptions::default()
        };
        mkfs(open(&meta), open(&data), &opts).unwrap();
        let mut fs = Self {
            dir,
            meta,
            data,
            baseline: BTreeMap::new(),
        };
        let (last, items) = fs.read_all().expect("read the new filesystem");
        assert_eq!(last, 0, "a new filesystem with a LAST item");
        assert!(
            items.keys().all(|k| k.first.get() < WORK_INO),
            "mkfs created items among the workload's keys: {:?}",
            items.keys().map(describe).collect::<Vec<_>>()
        );
        fs.baseline = items;
        fs
    }

    /// fsck of the devices as they are now; the problems it found.
    fn fsck_problems(&self) -> Vec<String> {
        self.fsck_findings().0
    }

    /// fsck of the devices as they are now: (problems, warnings).
    fn fsck_findings(&self) -> (Vec<String>, Vec<String>) {
        match fsck(open(&self.meta), Some(open(&self.data))) {
            Ok(r) => (r.problems, r.warnings),
            Err(e) => (vec![format!("fsck could not start: {e}")], Vec::new()),
        }
    }

    /// Open the filesystem as a restarted node would and read every item through a fresh
    /// client, which says farewell afterwards. Returns the `LAST` transaction and the items.
    fn read_all(&self) -> Result<(u64, BTreeMap<Key, Vec<u8>>), String> {
        let server = Arc::new(LocalServer::new(
            Server::open(open(&self.meta), cfg()).map_err(|e| format!("Server::open: {e}"))?,
        ));
        let md = Arc::new(MetaDev::new(
            open(&self.meta),
            server.with(|s| s.fsid()),
            16 << 20,
        ));
        let mut c = Client::mount(md, server.clone(), CHECK_RID)
            .map_err(|e| format!("mount of the checking client: {e}"))?;
        let items: BTreeMap<Key, Vec<u8>> = c
            .range(&Key::MIN, &Key::MAX)
            .map_err(|e| format!("reading every item: {e}"))?
            .into_iter()
            .map(|it| (it.key, it.val))
            .collect();
        c.unmount()
            .map_err(|e| format!("unmount of the checking client: {e}"))?;
        let last = match items.get(&last_key()) {
            None => 0,
            Some(v) if v.len() >= 8 => u64::from_le_bytes(v[..8].try_into().unwrap()),
            Some(v) => return Err(format!("LAST has a value of {} bytes", v.len())),
        };
        Ok((last, items))
    }

    /// fsck, then read everything and check it is exactly the state after some transaction
    /// `L` (returned). `Err` describes what is wrong.
    fn check(&self) -> Result<u64, String> {
        let problems = self.fsck_problems();
        if !problems.is_empty() {
            return Err(format!("fsck found problems: {problems:#?}"));
        }
        let (last, items) = self.read_all()?;
        let diff = diff_state(&items, last, &self.baseline);
        if !diff.is_empty() {
            return Err(format!(
                "the filesystem is not the state after transaction {last} (LAST): {} \
                 difference(s), first ones:\n  {}",
                diff.len(),
                diff.iter()
                    .take(25)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  ")
            ));
        }
        Ok(last)
    }
}

/// Greet as `rid` and say farewell for it: what fencing a dead mount amounts to here (its
/// uncommitted transaction is dropped, its allocators return to the server and its log tree
/// is finalized for the next merge).
fn reclaim(server: &LocalServer, rid: u64) -> Result<(), String> {
    let greet = Request::Greeting {
        fsid: server.with(|s| s.fsid()),
        format_version: FORMAT_VERSION_MAX,
        rid,
        server_term: 0,
    };
    match server.call(rid, greet) {
        Ok(Response::Greeting { .. }) => {}
        other => return Err(format!("greeting as dead rid {rid:x}: {other:?}")),
    }
    match server.call(rid, Request::Farewell) {
        Ok(Response::FarewellDone) => Ok(()),
        other => Err(format!("farewell for dead rid {rid:x}: {other:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Worker side (the child process)
// ---------------------------------------------------------------------------------------------

/// Name of the worker test below; passed to `--exact`.
const WORKER_TEST: &str = "crash_worker_entry_runs_only_in_child_processes";
const WORKER_ENV: &str = "SCOUTGW_CRASH_WORKER";
const META_ENV: &str = "SCOUTGW_CRASH_META";
const RID_ENV: &str = "SCOUTGW_CRASH_RID";
/// Set: the child also runs the server's background merger.
const BG_MERGE_ENV: &str = "SCOUTGW_CRASH_BG_MERGE";
/// The child merges after every transaction whose number is a multiple of this (the
/// value of `SCOUTGW_CRASH_MERGE_EVERY` if set).
const MERGE_EVERY: u64 = 8;
const MERGE_EVERY_ENV: &str = "SCOUTGW_CRASH_MERGE_EVERY";
/// A child that was never killed stops on its own after this long.
const WORKER_LIFETIME: Duration = Duration::from_secs(120);

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // If the parent is gone the pipe is closed: stop.
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
}

fn run_worker() {
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let meta = PathBuf::from(env(META_ENV));
    let rid: u64 = env(RID_ENV).parse().expect("rid is a number");
    let merge_every = std::env::var(MERGE_EVERY_ENV).map_or(MERGE_EVERY, |v| {
        v.parse().expect("merge interval is a number")
    });
    let server = Arc::new(LocalServer::new(
        Server::open(open(&meta), cfg()).expect("Server::open"),
    ));
    let md = Arc::new(MetaDev::new(
        open(&meta),
        server.with(|s| s.fsid()),
        16 << 20,
    ));
    let _merger =
        std::env::var_os(BG_MERGE_ENV).map(|_| server.spawn_merger(Duration::from_millis(2)));
    let mut c = Client::mount(md, server.clone(), rid).expect("mount");
    let last = match c.get(&last_key()).expect("read LAST") {
        None => 0,
        Some(v) => u64::from_le_bytes(v[..8].try_into().expect("LAST holds a u64")),
    };
    // End the line libtest started ("test ... ") before the first message.
    say("");
    say(&format!("READY {last}"));
    let deadline = Instant::now() + WORKER_LIFETIME;
    let mut n = last + 1;
    while Instant::now() < deadline {
        stage_tx(&mut c, n);
        c.commit()
            .unwrap_or_else(|e| panic!("commit of transaction {n}: {e}"));
        say(&format!("ACK {n}"));
        if n.is_multiple_of(merge_every) {
            say(&format!("MERGE {n}"));
            server
                .with(|s| s.request_merge())
                .unwrap_or_else(|e| panic!("request_merge after {n}: {e}"));
            c.sync()
                .unwrap_or_else(|e| panic!("sync for the merge after {n}: {e}"));
            let merged = server
                .with(|s| s.merge_finalized())
                .unwrap_or_else(|e| panic!("merge after {n}: {e}"));
            say(&format!("MERGED {n} {merged}"));
        }
        n += 1;
    }
    eprintln!("worker: not killed within {WORKER_LIFETIME:?}, stopping");
}

/// Entry point of the worker processes; NOT a test of its own.
///
/// It does nothing unless `SCOUTGW_CRASH_WORKER` is set, which only the process tests below
/// do when they re-execute this binary with `--exact` this test's name.
#[test]
fn crash_worker_entry_runs_only_in_child_processes() {
    if std::env::var_os(WORKER_ENV).is_none() {
        return;
    }
    run_worker();
}

// ---------------------------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------------------------

/// A small deterministic generator for the parent's decisions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn seed() -> u64 {
    if let Ok(s) = std::env::var("SCOUTGW_CRASH_SEED") {
        return s.parse().expect("SCOUTGW_CRASH_SEED is a number");
    }
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("getrandom");
    u64::from_le_bytes(b)
}

fn rounds_from_env(default: u64) -> u64 {
    match std::env::var("SCOUTGW_CRASH_ROUNDS") {
        Ok(s) => s.parse().expect("SCOUTGW_CRASH_ROUNDS is a number"),
        Err(_) => default,
    }
}

/// When the parent kills the child.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// `ms` after spawning, whatever the child is doing (often still starting up).
    Blind { ms: u64 },
    /// `us` after the child said READY: during its first commits.
    AfterReady { us: u64 },
    /// `us` after the child acknowledged `acks` transactions: usually in the middle of the
    /// next commit.
    AfterAcks { acks: u64, us: u64 },
    /// `us` after the child announced a merge (or after 40 ACKs if it announced none).
    InMerge { us: u64 },
}

impl Plan {
    fn pick(rng: &mut Rng) -> Plan {
        match rng.range(0, 100) {
            0..15 => Plan::Blind {
                ms: rng.range(0, 15),
            },
            15..35 => Plan::AfterReady {
                us: rng.range(0, 4000),
            },
            35..75 => Plan::AfterAcks {
                acks: rng.range(1, 30),
                us: rng.range(0, 3000),
            },
            _ => Plan::InMerge {
                us: rng.range(0, 6000),
            },
        }
    }
}

/// What a child said before it died.
#[derive(Debug, Default)]
struct ChildRun {
    ready: Option<u64>,
    acks: Vec<u64>,
    merges_started: Vec<u64>,
    merges_done: Vec<u64>,
    log: String,
}

impl ChildRun {
    fn killed_in_merge(&self) -> bool {
        self.merges_started.last() > self.merges_done.last()
    }
}

/// Kills the child if the parent fails before doing so itself.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

const WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Receive lines until one satisfies `stop` (true) or the child closes its stdout (false);
/// an error if neither happens within [`WAIT_TIMEOUT`].
fn wait_for(
    rx: &Receiver<String>,
    lines: &mut Vec<String>,
    mut stop: impl FnMut(&str) -> bool,
) -> Result<bool, String> {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = stop(&line);
                lines.push(line);
                if done {
                    return Ok(true);
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(false),
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "the child did not reach the kill point within {WAIT_TIMEOUT:?}"
                ))
            }
        }
    }
}

/// The message of a line of the child's stdout: a tag and a number. libtest may have put
/// its own text before the first message on the same line.
fn parse_line(line: &str) -> (Option<&str>, Option<u64>) {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words
        .iter()
        .position(|w| ["READY", "ACK", "MERGE", "MERGED"].contains(w))
    {
        Some(i) => (
            Some(words[i]),
            words.get(i + 1).and_then(|x| x.parse::<u64>().ok()),
        ),
        None => (None, None),
    }
}

fn is(tag: &str) -> impl Fn(&str) -> bool + '_ {
    move |line| parse_line(line).0 == Some(tag)
}

fn sleep_us(us: u64) {
    if us > 0 {
        thread::sleep(Duration::from_micros(us));
    }
}

/// Run one child as `rid` on the devices, with the extra environment `env`, and SIGKILL it
/// according to `plan`.
fn run_and_kill(
    fs: &Fs,
    rid: u64,
    plan: Plan,
    round: u64,
    env: &[(&str, String)],
) -> Result<ChildRun, String> {
    let log_path = fs.dir.path().join(format!("child-{round}.log"));
    let log = File::create(&log_path).map_err(|e| e.to_string())?;
    // The running image, even if cargo has replaced the file on disk since (a build in
    // another shell): /proc/self/exe stays executable while this process runs.
    let exe = match Path::new("/proc/self/exe") {
        p if p.exists() => p.to_path_buf(),
        _ => std::env::current_exe().map_err(|e| e.to_string())?,
    };
    let mut cmd = Command::new(exe);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd
        .args(["--exact", WORKER_TEST, "--nocapture", "--test-threads=1"])
        .env(WORKER_ENV, "1")
        .env(META_ENV, &fs.meta)
        .env(RID_ENV, rid.to_string())
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn child: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut guard = ChildGuard(child);
    let (tx, rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                // A line cut short by the kill is not a complete message.
                Ok(n) if n > 0 && line.ends_with('\n') => {
                    if tx.send(line.trim_end().to_string()).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    });

    let mut lines = Vec::new();
    let waited = match plan {
        Plan::Blind { ms } => {
            thread::sleep(Duration::from_millis(ms));
            Ok(true)
        }
        Plan::AfterReady { .. } => wait_for(&rx, &mut lines, is("READY")),
        Plan::AfterAcks { acks, .. } => {
            let mut seen = 0;
            wait_for(&rx, &mut lines, |l| {
                seen += is("ACK")(l) as u64;
                seen >= acks
            })
        }
        Plan::InMerge { .. } => {
            // A child that never merges is killed after a while instead.
            let mut acks = 0;
            wait_for(&rx, &mut lines, |l| {
                acks += is("ACK")(l) as u64;
                is("MERGE")(l) || acks >= 40
            })
        }
    };
    if let (Ok(true), Plan::AfterReady { us } | Plan::AfterAcks { us, .. } | Plan::InMerge { us }) =
        (&waited, plan)
    {
        sleep_us(us);
    }
    // Child::kill sends SIGKILL.
    let _ = guard.0.kill();
    let status = guard.0.wait().map_err(|e| format!("wait for child: {e}"))?;
    reader.join().expect("reader thread");
    lines.extend(rx.try_iter());
    let mut run = ChildRun {
        log: std::fs::read_to_string(&log_path).unwrap_or_default(),
        ..ChildRun::default()
    };
    let tail = |log: &str| log[log.len().saturating_sub(4000)..].to_string();
    if status.signal() != Some(9) {
        return Err(format!(
            "the child was not killed but ended by itself ({status}); its log:\n{}",
            tail(&run.log)
        ));
    }
    if let Err(e) = waited {
        return Err(format!("{e}; the child's log:\n{}", tail(&run.log)));
    }
    for line in &lines {
        let (tag, num) = parse_line(line);
        match (tag, num) {
            (Some("READY"), Some(n)) => run.ready = Some(n),
            (Some("ACK"), Some(n)) => run.acks.push(n),
            (Some("MERGE"), Some(n)) => run.merges_started.push(n),
            (Some("MERGED"), Some(n)) => run.merges_done.push(n),
            _ => {}
        }
    }
    Ok(run)
}

/// How a process test treats the rid of its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rids {
    /// Every child mounts as the same rid: a node restarting after a crash.
    Reuse,
    /// Every child mounts as a new rid; the parent reclaims each dead rid (greeting and
    /// farewell on its behalf) before the next child starts. The children also run the
    /// server's background merger.
    FreshReclaimAtOnce,
    /// Every child mounts as a new rid; dead rids pile up and are reclaimed a few at a time,
    /// so that older trees are merged after newer ones. Half the children merge after every
    /// second transaction, the others never, which makes an old deletion meet a newer merged
    /// item more often.
    FreshReclaimLater,
}

#[derive(Debug, Default)]
struct Totals {
    acks: u64,
    unacked_but_durable: u64,
    killed_before_ready: u64,
    killed_in_merge: u64,
    merges: u64,
    reclaimed: u64,
}

/// Kill `rounds` children at random moments on one filesystem, checking it after each kill.
fn kill_rounds(name: &str, rids: Rids, default_rounds: u64) {
    let seed = seed();
    let rounds = rounds_from_env(default_rounds);
    eprintln!("{name}: seed {seed} (replay with SCOUTGW_CRASH_SEED={seed}), {rounds} rounds");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let fs = Fs::new();
    let mut last = 0u64;
    let mut dead: Vec<u64> = Vec::new();
    let mut totals = Totals::default();
    let base_rid = 0x5000 + (rng.next() % 0x1000) * 0x1000;

    for round in 0..rounds {
        let rid = match rids {
            Rids::Reuse => base_rid,
            _ => base_rid + 1 + round,
        };
        let plan = Plan::pick(&mut rng);
        let child_env: Vec<(&str, String)> = match rids {
            Rids::Reuse => vec![],
            Rids::FreshReclaimAtOnce => vec![(BG_MERGE_ENV, "1".to_string())],
            // Children that merge very often (their puts reach fs_root soon) alternate with
            // children that never do (their trees, full of deletions, are merged late).
            Rids::FreshReclaimLater => {
                let every = if rng.next().is_multiple_of(2) {
                    2
                } else {
                    1000
                };
                vec![(MERGE_EVERY_ENV, every.to_string())]
            }
        };
        let prev = last;
        let ctx = |what: &str| {
            format!(
                "{name}: seed {seed} (SCOUTGW_CRASH_SEED={seed}), round {round}, rid {rid:x}, \
                 plan {plan:?}, child env {child_env:?}, last checked transaction {prev}: \
                 {what}"
            )
        };
        let run = run_and_kill(&fs, rid, plan, round, &child_env)
            .unwrap_or_else(|e| panic!("{}", ctx(&e)));
        let ctx = |what: &str| {
            format!(
                "{}\n(the child said READY {:?}, acknowledged {:?}, started merges after {:?}, \
                 finished merges after {:?})",
                ctx(what),
                run.ready,
                run.acks,
                run.merges_started,
                run.merges_done
            )
        };

        // What the child said must fit what the parent checked last time.
        if let Some(r) = run.ready {
            assert_eq!(
                r,
                last,
                "{}",
                ctx("the child started from another transaction")
            );
        } else {
            assert!(run.acks.is_empty(), "{}", ctx("ACK before READY"));
            totals.killed_before_ready += 1;
        }
        for (k, a) in run.acks.iter().enumerate() {
            assert_eq!(*a, last + 1 + k as u64, "{}", ctx("ACKs out of sequence"));
        }
        let last_ack = run.acks.last().copied().unwrap_or(last);

        let now = fs.check().unwrap_or_else(|e| panic!("{}", ctx(&e)));
        assert!(
            now >= last_ack,
            "{}",
            ctx(&format!(
                "acknowledged transaction {last_ack} is lost: the filesystem ends at {now}"
            ))
        );
        assert!(
            now <= last_ack + 1,
            "{}",
            ctx(&format!(
                "the filesystem ends at transaction {now}, but the child can have committed \
                 at most one transaction past its last ACK {last_ack}"
            ))
        );
        totals.acks += run.acks.len() as u64;
        totals.unacked_but_durable += (now == last_ack + 1) as u64;
        totals.killed_in_merge += run.killed_in_merge() as u64;
        totals.merges += run.merges_done.len() as u64;
        last = now;

        if rids != Rids::Reuse {
            dead.push(rid);
            let reclaim_now = match rids {
                Rids::FreshReclaimAtOnce => true,
                _ => dead.len() as u64 >= rng.range(2, 5),
            };
            if reclaim_now {
                let server = LocalServer::new(
                    Server::open(open(&fs.meta), cfg())
                        .unwrap_or_else(|e| panic!("{}", ctx(&format!("Server::open: {e}")))),
                );
                for r in dead.drain(..) {
                    reclaim(&server, r).unwrap_or_else(|e| panic!("{}", ctx(&e)));
                    totals.reclaimed += 1;
                }
            }
        }
    }

    // Reclaim what is left, merge everything and check once more.
    {
        let ctx = |what: &str| format!("{name}: seed {seed}, final check: {what}");
        let server = Arc::new(LocalServer::new(
            Server::open(open(&fs.meta), cfg())
                .unwrap_or_else(|e| panic!("{}", ctx(&e.to_string()))),
        ));
        for r in dead.drain(..) {
            reclaim(&server, r).unwrap_or_else(|e| panic!("{}", ctx(&e)));
        }
        server.with(|s| s.request_merge()).unwrap();
        server.with(|s| s.merge_finalized()).unwrap();
        drop(server);
        let end = fs.check().unwrap_or_else(|e| panic!("{}", ctx(&e)));
        assert_eq!(end, last, "{}", ctx("the final merge changed LAST"));
    }

    eprintln!(
        "{name}: {rounds} kill rounds in {:.1?}: {} transactions acknowledged, ended at \
         transaction {last}; {} kills left a committed but unacknowledged transaction, {} \
         landed before the child was mounted, {} during a merge; {} merges completed; {} dead \
         rids reclaimed",
        started.elapsed(),
        totals.acks,
        totals.unacked_but_durable,
        totals.killed_before_ready,
        totals.killed_in_merge,
        totals.merges,
        totals.reclaimed,
    );
    assert!(
        totals.acks > 0,
        "{name}: no child ever acknowledged a transaction"
    );
}

/// A node that restarts with the same rid after every SIGKILL: its open transaction is the
/// one the killed process had (a resent `GetLogTrees` hands it out again).
#[test]
fn sigkilled_writer_restarting_with_the_same_rid_loses_no_acknowledged_transaction() {
    kill_rounds("reuse-rid", Rids::Reuse, 40);
}

/// Every child mounts with a new rid; the parent reclaims the dead one before the next child
/// starts. The children also merge in the background, so kills land in those merges too.
#[test]
fn sigkilled_writers_with_fresh_rids_lose_no_acknowledged_transaction() {
    kill_rounds("fresh-rid", Rids::FreshReclaimAtOnce, 30);
}

/// Every child mounts with a new rid and dead rids are reclaimed a few rounds later, so a
/// dead client's tree (holding deletions of recycled keys) is merged after newer trees that
/// put those keys again. Before fe9b439 `merge_finalized` let such an older deletion remove
/// the newer item from `fs_root`; this test found that (see
/// [`late_merged_old_deletion_keeps_a_newer_merged_item`]).
#[test]
fn sigkilled_writers_with_fresh_rids_reclaimed_late_lose_no_acknowledged_transaction() {
    kill_rounds("fresh-rid-late", Rids::FreshReclaimLater, 40);
}

/// The merge order problem the late-reclaim variant ran into, reduced to two clients in one
/// process: A deletes a key and stops committing (its tree stays open), B puts the key again
/// (with a greater seq) and B's tree is merged; when A's tree is merged later, its older
/// deletion must not remove B's newer item from `fs_root`.
#[test]
fn late_merged_old_deletion_keeps_a_newer_merged_item() {
    let fs = Fs::new();
    let server = Arc::new(LocalServer::new(
        Server::open(open(&fs.meta), cfg()).unwrap(),
    ));
    let client = |rid| {
        let md = Arc::new(MetaDev::new(
            open(&fs.meta),
            server.with(|s| s.fsid()),
            16 << 20,
        ));
        Client::mount(md, server.clone(), rid).unwrap()
    };
    let k = recycled_key(0);
    let mut a = client(1);
    a.put(k, b"old".to_vec(), 0).unwrap();
    a.commit().unwrap();
    a.delete(k, 0).unwrap();
    a.commit().unwrap();
    // B opens its transaction after A's deletion is committed: B's put is newer.
    let mut b = client(2);
    b.put(k, b"new".to_vec(), 0).unwrap();
    b.commit().unwrap();
    assert_eq!(b.get(&k).unwrap(), Some(b"new".to_vec()));
    // Only B's tree is finalized and merged; A's stays open (A is slow, or dead): A has a
    // change in an open transaction, so its finalization waits for its next commit.
    a.put(recycled_key(1), b"pending".to_vec(), 0).unwrap();
    server.with(|s| s.request_merge()).unwrap();
    b.sync().unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    let mut c = client(3);
    assert_eq!(c.get(&k).unwrap(), Some(b"new".to_vec()), "after B's merge");
    // Now A's tree, with the older deletion, is finalized and merged.
    a.sync().unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    c.refresh_roots().unwrap();
    assert_eq!(
        c.get(&k).unwrap(),
        Some(b"new".to_vec()),
        "merging A's older deletion removed B's newer item"
    );
    drop((a, b, c));
    drop(server);
    let problems = fs.fsck_problems();
    assert!(problems.is_empty(), "{problems:#?}");
}

// ---------------------------------------------------------------------------------------------
// Power cuts with a fault-injecting device
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write(u64),
    Flush,
}

/// Passes everything to the faulty device and records the writes and flushes that
/// succeeded, to tell whether a super block write was made durable before the cut.
///
/// It can also tear the next super block write: only its first bytes reach the device
/// (written through at once, as if the power went out part-way through the write), and the
/// node dies there (every later write and flush fails).
#[derive(Debug)]
struct Recorder {
    inner: Arc<FaultyDevice<FileDevice>>,
    ops: Mutex<Vec<Op>>,
    tear_super_at: Mutex<Option<usize>>,
    /// Set by a torn write: whether the part that did not reach the device was the same as
    /// what the device held already (then the write is complete after all).
    torn_was_complete: Mutex<Option<bool>>,
}

fn is_super_offset(offset: u64) -> bool {
    SUPER_BLKNOS
        .iter()
        .any(|b| b * BlockSize::Small.bytes() as u64 == offset)
}

impl Recorder {
    fn new(inner: Arc<FaultyDevice<FileDevice>>) -> Self {
        Self {
            inner,
            ops: Mutex::new(Vec::new()),
            tear_super_at: Mutex::new(None),
            torn_was_complete: Mutex::new(None),
        }
    }

    fn mark(&self) -> usize {
        self.ops.lock().unwrap().len()
    }

    /// Number of writes and flushes that succeeded since `mark`.
    fn ops_since(&self, mark: usize) -> usize {
        self.mark() - mark
    }

    /// Whether, since `mark`, a super block write succeeded and a flush succeeded after it.
    fn super_durable_since(&self, mark: usize) -> bool {
        let ops = self.ops.lock().unwrap();
        let Some(at) = ops[mark..]
            .iter()
            .position(|op| matches!(op, Op::Write(off) if is_super_offset(*off)))
        else {
            return false;
        };
        ops[mark + at..].contains(&Op::Flush)
    }
}

impl BlockDevice for Recorder {
    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn len_bytes(&self) -> u64 {
        self.inner.len_bytes()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        if is_super_offset(offset) {
            if let Some(keep) = self.tear_super_at.lock().unwrap().take() {
                // Everything before was flushed (the server flushes before its super write),
                // so the torn prefix is all that changes on the device.
                let mut old = vec![0u8; buf.len() - keep];
                self.inner.inner().read_at(&mut old, offset + keep as u64)?;
                *self.torn_was_complete.lock().unwrap() = Some(old == buf[keep..]);
                self.inner.inner().write_at(&buf[..keep], offset)?;
                self.inner.inner().flush()?;
                self.inner.set_faults(Faults {
                    fail_writes: true,
                    ..Faults::default()
                });
                return Err(BlockError::Io {
                    path: self.path().to_path_buf(),
                    op: "write",
                    offset,
                    len: buf.len(),
                    source: std::io::Error::from_raw_os_error(5),
                });
            }
        }
        self.inner.write_at(buf, offset)?;
        self.ops.lock().unwrap().push(Op::Write(offset));
        Ok(())
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.inner.flush()?;
        self.ops.lock().unwrap().push(Op::Flush);
        Ok(())
    }
}

/// A node on a device that holds writes until a flush: a server and a client (rid 1) that
/// share one faulty device handle, as a restarted node would open them.
struct Node {
    faulty: Arc<FaultyDevice<FileDevice>>,
    rec: Arc<Recorder>,
    server: Arc<LocalServer>,
    client: Client,
}

impl Node {
    fn start(fs: &Fs) -> Node {
        let faulty = Arc::new(FaultyDevice::new(
            FileDevice::open(&fs.meta, DeviceOptions::default()).unwrap(),
        ));
        faulty.set_faults(Faults {
            buffer_until_flush: true,
            ..Faults::default()
        });
        let rec = Arc::new(Recorder::new(faulty.clone()));
        let server = Arc::new(LocalServer::new(
            Server::open(rec.clone(), cfg()).expect("Server::open"),
        ));
        let md = Arc::new(MetaDev::new(
            rec.clone(),
            server.with(|s| s.fsid()),
            16 << 20,
        ));
        let client = Client::mount(md, server.clone(), 1).expect("mount");
        Node {
            faulty,
            rec,
            server,
            client,
        }
    }

    /// Let `n` more writes and flushes through, then fail every later one.
    fn cut_after(&self, n: usize) {
        self.faulty.set_faults(Faults {
            buffer_until_flush: true,
            fail_after_writes: Some(n),
            ..Faults::default()
        });
    }

    /// The power goes out: everything not flushed is lost.
    fn crash(self) {
        let Node {
            faulty,
            rec,
            server,
            client,
        } = self;
        drop((client, server, rec));
        faulty.crash();
    }
}

/// Commit a transaction with the device cut after `n` writes/flushes, for every `n` until
/// commits go through: after each cut, the reopened filesystem holds exactly the last
/// committed transaction, or the cut one if its super block was durable before the cut, and
/// fsck is clean.
#[test]
fn commit_cut_short_at_any_write_leaves_the_old_or_the_new_state() {
    let fs = Fs::new();
    // A few committed transactions to start from, two of them merged.
    {
        let mut node = Node::start(&fs);
        for n in 1..=12 {
            stage_tx(&mut node.client, n);
            node.client.commit().unwrap();
            if n == 6 {
                node.server.with(|s| s.request_merge()).unwrap();
                node.client.sync().unwrap();
                node.server.with(|s| s.merge_finalized()).unwrap();
            }
        }
        node.crash();
    }
    let mut last = fs
        .check()
        .unwrap_or_else(|e| panic!("after the setup: {e}"));
    assert_eq!(last, 12);

    let (mut lost, mut durable_but_failed, mut succeeded) = (0, 0, 0);
    let mut longest = 0;
    let mut n = 0;
    // Until commits of every size went through a few times after the last cut.
    while succeeded < 4 || n <= longest + 2 {
        assert!(n < 400, "commits never stopped failing");
        let mut node = Node::start(&fs);
        let next = last + 1;
        stage_tx(&mut node.client, next);
        let mark = node.rec.mark();
        node.cut_after(n);
        let res = node.client.commit();
        let ops = node.rec.ops_since(mark);
        let durable = node.rec.super_durable_since(mark);
        node.crash();

        let ctx = format!(
            "cut after {n} writes/flushes while committing transaction {next} ({} items): \
             commit returned {res:?} after {ops} successful writes/flushes, super durable: \
             {durable}",
            items_in(next)
        );
        let now = fs.check().unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let want = if durable { next } else { last };
        assert_eq!(
            now, want,
            "{ctx}: the filesystem holds transaction {now}, expected {want}"
        );
        match (&res, durable) {
            (Ok(_), true) => {
                succeeded += 1;
                longest = longest.max(ops);
            }
            (Ok(_), false) => panic!("{ctx}: commit succeeded without a durable super block"),
            (Err(_), true) => durable_but_failed += 1,
            (Err(_), false) => lost += 1,
        }
        last = now;
        n += 1;
    }
    eprintln!(
        "commit cut at {n} points: {lost} cut commits were absent, {durable_but_failed} \
         failed after their super block was durable and were present, {succeeded} went \
         through; the longest took {longest} writes/flushes"
    );
    assert!(
        lost > 5,
        "too few commits were cut before their super block"
    );
    // Transactions open lazily (at the next change), so a commit ends with the server's
    // super block write and its flush: a cut there loses the unflushed super, and no cut
    // can land after a durable super. `durable_but_failed` is therefore usually 0.
    let _ = durable_but_failed;
}

/// The same with the cut landing in a log merge (request, the client's sync, the merge):
/// whatever step fails, nothing logical changes and fsck is clean.
#[test]
fn merge_cut_short_at_any_write_changes_nothing() {
    let fs = Fs::new();
    let mut last = 0;
    let mut merged_ok = 0;
    // Cuts that landed in request_merge, in the sync, in merge_finalized.
    let mut cut = [0u32; 3];
    let mut n = 0;
    while merged_ok < 3 {
        assert!(n < 400, "merges never stopped failing");
        let mut node = Node::start(&fs);
        // Two transactions: the first is merged with the second's tree open (or both).
        for _ in 0..2 {
            last += 1;
            stage_tx(&mut node.client, last);
            node.client.commit().unwrap();
        }
        let mark = node.rec.mark();
        node.cut_after(n);
        let res = node
            .server
            .with(|s| s.request_merge())
            .map_err(|e| format!("request_merge: {e}"))
            .and_then(|()| {
                node.client
                    .sync()
                    .map_err(|e| format!("sync: {e}"))
                    .map(|_| ())
            })
            .and_then(|()| {
                node.server
                    .with(|s| s.merge_finalized())
                    .map_err(|e| format!("merge_finalized: {e}"))
            });
        let ops = node.rec.ops_since(mark);
        node.crash();
        let ctx = format!(
            "merge after transaction {last} cut after {n} writes/flushes: {res:?} after {ops} \
             successful writes/flushes"
        );
        let now = fs.check().unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(now, last, "{ctx}");
        match res {
            Ok(m) if m > 0 => merged_ok += 1,
            Ok(_) => panic!("{ctx}: the merge found no finalized tree"),
            Err(e) => {
                let step = ["request_merge", "sync", "merge_finalized"]
                    .iter()
                    .position(|p| e.starts_with(p))
                    .expect("a step");
                cut[step] += 1;
            }
        }
        n += 1;
    }
    eprintln!(
        "merge cut at {n} points: {} in request_merge, {} in the sync, {} in \
         merge_finalized; {merged_ok} went through",
        cut[0], cut[1], cut[2]
    );
    // The sync writes nothing when no transaction is open (transactions open lazily).
    assert!(
        cut[0] > 0 && cut[2] > 3,
        "the cuts did not cover every step of the merge: {cut:?}"
    );
}

/// The same with the cut landing in the mount of a new client (its greeting and first
/// `GetLogTrees`), in its farewell, or in the farewell of the client that holds the data
/// (which closes and finalizes its tree): nothing logical changes and fsck is clean.
#[test]
fn mount_and_farewell_cut_short_at_any_write_change_nothing() {
    let fs = Fs::new();
    let mut last = 0;
    // Cuts that landed in the mount of the new client, its farewell, the old client's.
    let mut cut = [0u32; 3];
    let mut all_ok = 0;
    let mut n = 0;
    while all_ok < 3 {
        assert!(n < 400, "mounts and farewells never stopped failing");
        let mut node = Node::start(&fs);
        last += 1;
        stage_tx(&mut node.client, last);
        node.client.commit().unwrap();
        let mark = node.rec.mark();
        node.cut_after(n);
        let Node {
            faulty,
            rec,
            server,
            client,
        } = node;
        let md = Arc::new(MetaDev::new(
            rec.clone(),
            server.with(|s| s.fsid()),
            16 << 20,
        ));
        let res = Client::mount(md, server.clone(), 1000 + n as u64)
            .map_err(|e| (0, e))
            .and_then(|c| c.unmount().map_err(|e| (1, e)))
            // The old client says farewell too: its tree is closed and finalized.
            .and_then(|()| client.unmount().map_err(|e| (2, e)));
        let ops = rec.ops_since(mark);
        drop((server, rec));
        faulty.crash();
        let ctx = format!(
            "mount/farewell after transaction {last} cut after {n} writes/flushes: {res:?} \
             after {ops} successful writes/flushes"
        );
        let now = fs.check().unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(now, last, "{ctx}");
        match res {
            Ok(()) => all_ok += 1,
            Err((step, _)) => cut[step] += 1,
        }
        n += 1;
    }
    eprintln!(
        "mount/farewell cut at {n} points: {} in the mount, {} in the new client's farewell, \
         {} in the old client's; {all_ok} went through",
        cut[0], cut[1], cut[2]
    );
    assert!(
        cut.iter().all(|c| *c > 0),
        "the cuts did not cover every step: {cut:?}"
    );
}

/// The power goes out in the middle of a super block write: only part of the new super
/// reaches the device. The other slot still holds the last committed super block, so the
/// filesystem is the last committed state; the next commit rewrites the torn slot.
#[test]
fn torn_super_block_write_leaves_the_old_state() {
    let fs = Fs::new();
    let mut last = 5;
    {
        let mut node = Node::start(&fs);
        for n in 1..=last {
            stage_tx(&mut node.client, n);
            node.client.commit().unwrap();
        }
        node.crash();
    }
    let mut old_kept = 0;
    for keep in [1, 32, 512, 1024, 2048, 4064, 4095] {
        let mut node = Node::start(&fs);
        stage_tx(&mut node.client, last + 1);
        *node.rec.tear_super_at.lock().unwrap() = Some(keep);
        let res = node.client.commit();
        let complete = node.rec.torn_was_complete.lock().unwrap().take();
        node.crash();
        let ctx = format!(
            "super write torn after {keep} bytes while committing {} (the lost part held \
             the same bytes as the device: {complete:?})",
            last + 1
        );
        let complete = complete.unwrap_or_else(|| panic!("{ctx}: no super write was torn"));
        assert!(res.is_err(), "{ctx}: the commit succeeded");
        // fsck first: reading mounts a client, whose greeting commits (and rewrites the slot).
        // The torn copy is the only damage; fsck warns about it (it is not the current copy,
        // and the next commit rewrites it) and finds no problem.
        let (problems, warnings) = fs.fsck_findings();
        eprintln!("{ctx}: fsck says {problems:?}, warns {warnings:?}");
        assert!(problems.is_empty(), "{ctx}: {problems:#?}");
        assert!(
            warnings
                .iter()
                .all(|p| p.starts_with("super block copy at 4 KiB block")),
            "{ctx}: fsck warned about more than the torn super block copy: {warnings:#?}"
        );
        assert_eq!(warnings.is_empty(), complete, "{ctx}: {warnings:#?}");
        let (now, items) = fs.read_all().unwrap_or_else(|e| panic!("{ctx}: {e}"));
        // Only a tear that lost nothing but bytes the device already held leaves the new super.
        let want = if complete { last + 1 } else { last };
        assert_eq!(now, want, "{ctx}");
        old_kept += (!complete) as u32;
        let diff = diff_state(&items, now, &fs.baseline);
        assert!(diff.is_empty(), "{ctx}: {diff:#?}");
        // A commit after the restart rewrites the torn slot; then fsck must be clean.
        let mut node = Node::start(&fs);
        stage_tx(&mut node.client, now + 1);
        node.client.commit().unwrap();
        node.crash();
        last = fs
            .check()
            .unwrap_or_else(|e| panic!("{ctx}, then one commit: {e}"));
        assert_eq!(last, now + 1, "{ctx}, then one commit");
    }
    assert!(old_kept >= 3, "too few tears lost part of the super block");
}
