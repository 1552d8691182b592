//! Several OS processes read and write different blocks of one device file at the same time.
//!
//! scoutgw runs one process per node and every node opens the same shared devices, so nothing
//! in `scoutgw-blockdev` may assume exclusive access to a device: no locks, no shared file
//! position, no trust in bytes a process wrote earlier. These tests use real processes, not
//! threads, so that each worker has its own file descriptors and its own block cache.
//!
//! # How the worker processes are started
//!
//! A parent test re-executes this very test binary (`std::env::current_exe()`) once per
//! worker, with the arguments
//!
//! ```text
//! --exact mp_worker_entry_runs_only_in_child_processes --nocapture --test-threads=1
//! ```
//!
//! so that libtest runs only the worker test, and with the environment variables
//! `SCOUTGW_MP_WORKER` (the worker's role, `A` or `B`), `SCOUTGW_MP_SCENARIO`, `SCOUTGW_MP_DEV`
//! (the device file), `SCOUTGW_MP_DIR` (a directory for barrier and marker files) and
//! `SCOUTGW_MP_ROUNDS`. The worker test returns at once when `SCOUTGW_MP_WORKER` is not set,
//! so in a normal `cargo test` run it is a no-op that passes. A worker reports failure by
//! panicking, which makes its process exit non-zero; its output goes to `<role>.log` in the
//! scenario directory and is printed by the parent when something fails. As a last step a
//! worker writes `finished.<role>`, so that a worker that ran no test at all (a renamed
//! worker function makes libtest run zero tests and exit 0) is still caught.
//!
//! Barriers between the workers are files: each worker creates `<barrier>.<role>` and waits
//! until the files of all roles exist.
//!
//! The number of rounds can be raised for a longer stress run, e.g.
//! `SCOUTGW_MP_ROUNDS=500 cargo test -p scoutgw-blockdev --test multiprocess`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use scoutgw_blockdev::header::HEADER_BYTES;
use scoutgw_blockdev::{
    BlockBuf, BlockError, BlockKind, BlockRef, BlockSize, DeviceOptions, FileDevice, MetaDev,
};

/// Name of the worker test function below; passed to `--exact`.
const WORKER_TEST: &str = "mp_worker_entry_runs_only_in_child_processes";
const WORKER_ENV: &str = "SCOUTGW_MP_WORKER";
const SCENARIO_ENV: &str = "SCOUTGW_MP_SCENARIO";
const DEV_ENV: &str = "SCOUTGW_MP_DEV";
const DIR_ENV: &str = "SCOUTGW_MP_DIR";
const ROUNDS_ENV: &str = "SCOUTGW_MP_ROUNDS";

/// The two workers. `A` owns the even block numbers, `B` the odd ones.
const ROLES: [&str; 2] = ["A", "B"];

const FSID: u64 = 0x5C07_6A7E_0000_0042;
const KIND: BlockKind = BlockKind {
    name: "mp-test",
    magic: 0x5C0F_7E57,
    size: BlockSize::Large,
};
const BLOCK: usize = BlockSize::Large.bytes();
/// A sparse 64 MiB device: 1024 blocks of 64 KiB.
const DEV_BLOCKS: u64 = 1024;
/// Blocks `0..RESERVED` belong to nobody and must stay unwritten (a stray write lands there
/// as readily as anywhere else).
const RESERVED: u64 = 2;
/// Cache of the long-lived `MetaDev` of each worker: big enough to hold every block.
const CACHE_BYTES: u64 = 2 * DEV_BLOCKS * BLOCK as u64;

const BARRIER_TIMEOUT: Duration = Duration::from_secs(60);
const WORKER_TIMEOUT: Duration = Duration::from_secs(300);

/// Scenario "rounds": each worker rewrites all its blocks once per round and verifies them.
const SCENARIO_ROUNDS: &str = "rounds";
/// Scenario "cross": like "rounds", and each worker also reads the other's blocks at a
/// mid-point and at the end, through its caching `MetaDev` and through a fresh one.
const SCENARIO_CROSS: &str = "cross";

// ---------------------------------------------------------------------------------------------
// Block contents
// ---------------------------------------------------------------------------------------------

fn role_index(role: &str) -> u64 {
    ROLES
        .iter()
        .position(|r| *r == role)
        .unwrap_or_else(|| panic!("unknown worker role {role:?}")) as u64
}

fn other_role(role: &str) -> &'static str {
    ROLES[1 - role_index(role) as usize]
}

/// The blocks a role owns: `A` the even ones, `B` the odd ones, none below [`RESERVED`].
fn owned_blocks(role: &str) -> Vec<u64> {
    let parity = role_index(role);
    (RESERVED..DEV_BLOCKS).filter(|b| b % 2 == parity).collect()
}

/// The body (everything after the header) of version `seq` of block `blkno` written by
/// `role`: a fill byte derived from all three, with `(role, blkno, seq)` stamped at the
/// start and the end of every 4 KiB page so that a page of any other block or version is
/// told apart even when its fill byte happens to match.
fn expected_body(role: &str, blkno: u64, seq: u64) -> BlockBuf {
    let r = role_index(role);
    let mut b = BlockBuf::zeroed(BLOCK);
    let s = b.as_mut_slice();
    let mix = (r + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ blkno.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ seq.wrapping_mul(0x1656_67B1_9E37_79F9);
    s[HEADER_BYTES..].fill((mix >> 56) as u8);
    let mut stamp = [0u8; 24];
    stamp[0..8].copy_from_slice(&(0x4D50_0000 + r).to_le_bytes());
    stamp[8..16].copy_from_slice(&blkno.to_le_bytes());
    stamp[16..24].copy_from_slice(&seq.to_le_bytes());
    for page in s.chunks_exact_mut(4096) {
        page[64..64 + stamp.len()].copy_from_slice(&stamp);
        let end = page.len();
        page[end - stamp.len()..].copy_from_slice(&stamp);
    }
    b
}

/// Check that `data`, as read back, is version `seq` of `role`'s block `blkno`.
fn check_block(what: &str, data: &[u8], role: &str, blkno: u64, seq: u64) {
    assert_eq!(data.len(), BLOCK, "{what}: block {blkno}: wrong length");
    let hdr = MetaDev::header_of(data).expect("a whole block has a header");
    assert_eq!(
        (
            hdr.blkno.get(),
            hdr.seq.get(),
            hdr.fsid.get(),
            hdr.magic.get()
        ),
        (blkno, seq, FSID, KIND.magic),
        "{what}: block {blkno}: header (blkno, seq, fsid, magic) is wrong"
    );
    let want = expected_body(role, blkno, seq);
    let (got, want) = (&data[HEADER_BYTES..], &want.as_slice()[HEADER_BYTES..]);
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
        let end = (at + 24).min(got.len());
        panic!(
            "{what}: block {blkno} seq {seq} of worker {role}: body differs at byte {}: \
             found {:02x?}, expected {:02x?}",
            HEADER_BYTES + at,
            &got[at..end],
            &want[at..end]
        );
    }
}

fn open_meta(dev: &Path, cache_bytes: u64) -> MetaDev {
    let d = FileDevice::open(dev, DeviceOptions::default())
        .unwrap_or_else(|e| panic!("open {}: {e}", dev.display()));
    MetaDev::new(Arc::new(d), FSID, cache_bytes)
}

/// Read version `seq` of `role`'s block `blkno` through `meta` and check it.
fn read_and_check(what: &str, meta: &MetaDev, role: &str, blkno: u64, seq: u64) {
    let b = meta
        .read_ref(KIND, BlockRef::new(blkno, seq))
        .unwrap_or_else(|e| panic!("{what}: read of block {blkno} seq {seq} failed: {e}"));
    assert_eq!(b.seq, seq, "{what}: block {blkno}: cached seq");
    check_block(what, b.data.as_slice(), role, blkno, seq);
}

/// Reading version `old` of block `blkno` whose current version is `current` must say Stale.
fn expect_stale(what: &str, meta: &MetaDev, blkno: u64, old: u64, current: u64) {
    match meta.read_ref(KIND, BlockRef::new(blkno, old)) {
        Err(BlockError::Stale {
            blkno: b,
            expected_seq,
            found_seq,
        }) if (b, expected_seq, found_seq) == (blkno, old, current) => {}
        other => panic!(
            "{what}: reading block {blkno} at old seq {old} (now {current}) should be \
             Stale, got {other:?}"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Worker side
// ---------------------------------------------------------------------------------------------

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// Wait until every role has reached barrier `name`.
fn barrier(dir: &Path, name: &str, me: &str) {
    File::create(dir.join(format!("{name}.{me}"))).expect("create barrier file");
    let deadline = Instant::now() + BARRIER_TIMEOUT;
    while !ROLES
        .iter()
        .all(|r| dir.join(format!("{name}.{r}")).exists())
    {
        assert!(
            Instant::now() < deadline,
            "worker {me}: timed out at barrier {name:?} (did the other worker die?)"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("worker: {name} is not set"))
}

/// The first seq a worker writes; seqs `FIRST_SEQ + round` for `round in 0..rounds`.
const FIRST_SEQ: u64 = 1;

fn final_seq(rounds: u64) -> u64 {
    FIRST_SEQ + rounds - 1
}

fn run_worker(role: &str) {
    let scenario = env(SCENARIO_ENV);
    let dev = PathBuf::from(env(DEV_ENV));
    let dir = PathBuf::from(env(DIR_ENV));
    let rounds: u64 = env(ROUNDS_ENV).parse().expect("rounds is a number");
    let cross = match scenario.as_str() {
        SCENARIO_ROUNDS => false,
        SCENARIO_CROSS => true,
        s => panic!("unknown scenario {s:?}"),
    };
    let other = other_role(role);
    let mine = owned_blocks(role);
    let theirs = owned_blocks(other);
    let mid_seq = FIRST_SEQ + rounds / 2;

    // The long-lived view of the device, with a cache, as a node would have it.
    let meta = open_meta(&dev, CACHE_BYTES);
    assert_eq!(meta.total_blocks(BlockSize::Large), DEV_BLOCKS);

    barrier(&dir, "start", role);
    let started = now_nanos();
    for seq in FIRST_SEQ..=final_seq(rounds) {
        for &blkno in &mine {
            meta.write_block(KIND, blkno, seq, expected_body(role, blkno, seq))
                .unwrap_or_else(|e| panic!("worker {role}: write block {blkno} seq {seq}: {e}"));
        }
        meta.flush().expect("flush");

        // Read back from the device, not from our cache: a fresh view without a cache.
        let fresh = open_meta(&dev, 0);
        let what = format!("worker {role} round seq {seq}");
        for &blkno in &mine {
            read_and_check(&what, &fresh, role, blkno, seq);
        }
        if seq > FIRST_SEQ {
            expect_stale(&what, &fresh, mine[0], seq - 1, seq);
        }

        if cross && seq == mid_seq {
            // Both have written and flushed `mid_seq`; read the other's blocks (this fills
            // our cache with them), then let both go on writing.
            barrier(&dir, "mid-written", role);
            let what = format!("worker {role} reading {other}'s blocks at mid seq {seq}");
            for &blkno in &theirs {
                read_and_check(&what, &meta, other, blkno, seq);
            }
            barrier(&dir, "mid-read", role);
        }
    }
    let ended = now_nanos();

    if cross {
        barrier(&dir, "final-written", role);
        let last = final_seq(rounds);
        let fresh = open_meta(&dev, 0);
        for &blkno in &theirs {
            // Our cache may still hold the mid-point version: it may serve exactly that
            // version and nothing else; without it the device says the ref is stale.
            let what = format!("worker {role} re-reading {other}'s block at mid seq");
            match meta.read_ref(KIND, BlockRef::new(blkno, mid_seq)) {
                Ok(b) => check_block(&what, b.data.as_slice(), other, blkno, mid_seq),
                Err(BlockError::Stale { found_seq, .. }) if found_seq == last => {}
                Err(e) => panic!("{what}: block {blkno}: {e}"),
            }
            // The final version must come from the device, never from the cached old one.
            let what = format!("worker {role} reading {other}'s blocks at final seq {last}");
            read_and_check(&what, &meta, other, blkno, last);
            read_and_check(&format!("{what} (fresh)"), &fresh, other, blkno, last);
            if last > mid_seq {
                expect_stale(&what, &fresh, blkno, mid_seq, last);
            }
        }
    }

    fs::write(
        dir.join(format!("finished.{role}")),
        format!("{started} {ended}\n"),
    )
    .expect("write finished marker");
}

/// Entry point of the worker processes; NOT a test of its own.
///
/// It does nothing unless `SCOUTGW_MP_WORKER` is set, which only the parent tests below do
/// when they re-execute this binary with `--exact` this test's name (see the module
/// documentation).
#[test]
fn mp_worker_entry_runs_only_in_child_processes() {
    let Ok(role) = std::env::var(WORKER_ENV) else {
        return;
    };
    run_worker(&role);
}

// ---------------------------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------------------------

/// Worker processes, killed (by their own handles) if the parent test fails early.
struct Workers {
    dir: PathBuf,
    children: Vec<(&'static str, Child)>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn worker_logs(dir: &Path) -> String {
    let mut s = String::new();
    for role in ROLES {
        let log = fs::read_to_string(dir.join(format!("{role}.log"))).unwrap_or_default();
        s += &format!("----- worker {role} output -----\n{log}\n");
    }
    s
}

impl Workers {
    fn spawn(dir: &Path, dev: &Path, scenario: &str, rounds: u64) -> Self {
        let exe = std::env::current_exe().expect("current_exe");
        let mut workers = Workers {
            dir: dir.to_path_buf(),
            children: Vec::new(),
        };
        // Spawn both before waiting for either; the start barrier makes them overlap.
        for role in ROLES {
            let log = File::create(dir.join(format!("{role}.log"))).expect("create log");
            let child = Command::new(&exe)
                .args(["--exact", WORKER_TEST, "--nocapture", "--test-threads=1"])
                .env(WORKER_ENV, role)
                .env(SCENARIO_ENV, scenario)
                .env(DEV_ENV, dev)
                .env(DIR_ENV, dir)
                .env(ROUNDS_ENV, rounds.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log"))
                .stderr(log)
                .spawn()
                .expect("spawn worker process");
            workers.children.push((role, child));
        }
        workers
    }

    fn logs(&self) -> String {
        worker_logs(&self.dir)
    }

    /// Wait for every worker; as soon as one fails, kill the others and fail.
    fn wait_all_succeed(&mut self) {
        let deadline = Instant::now() + WORKER_TIMEOUT;
        let mut done: Vec<Option<ExitStatus>> = vec![None; self.children.len()];
        while done.iter().any(Option::is_none) {
            for (i, (role, child)) in self.children.iter_mut().enumerate() {
                if done[i].is_some() {
                    continue;
                }
                if let Some(status) = child.try_wait().expect("try_wait") {
                    if !status.success() {
                        // Drop kills the others.
                        panic!("worker {role} failed: {status}\n{}", worker_logs(&self.dir));
                    }
                    done[i] = Some(status);
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "workers still running after {WORKER_TIMEOUT:?}\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
        // A worker that exited 0 without running its test (wrong `--exact` name) would have
        // written no marker.
        let mut spans = Vec::new();
        for role in ROLES {
            let marker = self.dir.join(format!("finished.{role}"));
            let text = fs::read_to_string(&marker).unwrap_or_else(|_| {
                panic!(
                    "worker {role} exited successfully but never finished its work \
                     (is {WORKER_TEST} still the name of the worker test?)\n{}",
                    self.logs()
                )
            });
            let mut it = text.split_whitespace().map(|x| x.parse::<u128>().unwrap());
            spans.push((it.next().unwrap(), it.next().unwrap()));
        }
        // The writing phases really ran at the same time.
        let latest_start = spans.iter().map(|s| s.0).max().unwrap();
        let earliest_end = spans.iter().map(|s| s.1).min().unwrap();
        assert!(
            latest_start < earliest_end,
            "the workers did not overlap: {spans:?}"
        );
    }
}

fn rounds_from_env(default: u64) -> u64 {
    match std::env::var(ROUNDS_ENV) {
        Ok(s) => s.parse().expect("SCOUTGW_MP_ROUNDS is a number"),
        Err(_) => default,
    }
    .max(2)
}

/// The parent's own check of the device after both workers are done: every owned block
/// holds the final version of its owner, older versions read as Stale, and the reserved
/// blocks were never written.
fn verify_device(dev: &Path, rounds: u64) {
    let len = fs::metadata(dev).expect("stat device").len();
    assert_eq!(len, DEV_BLOCKS * BLOCK as u64, "the device changed size");
    let last = final_seq(rounds);
    let meta = open_meta(dev, 0);
    for role in ROLES {
        let what = format!("parent checking worker {role}'s blocks");
        for blkno in owned_blocks(role) {
            read_and_check(&what, &meta, role, blkno, last);
            expect_stale(&what, &meta, blkno, last - 1, last);
            expect_stale(&what, &meta, blkno, FIRST_SEQ, last);
        }
    }
    for blkno in 0..RESERVED {
        match meta.read_ref(KIND, BlockRef::new(blkno, last)) {
            Err(BlockError::Unwritten { .. }) => {}
            other => panic!("reserved block {blkno} was written: {other:?}"),
        }
    }
}

fn run_scenario(scenario: &str, default_rounds: u64) {
    let rounds = rounds_from_env(default_rounds);
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = dir.path().join("meta.dev");
    File::create(&dev)
        .and_then(|f| f.set_len(DEV_BLOCKS * BLOCK as u64))
        .expect("create sparse device file");

    let t = Instant::now();
    let mut workers = Workers::spawn(dir.path(), &dev, scenario, rounds);
    workers.wait_all_succeed();
    verify_device(&dev, rounds);
    eprintln!(
        "multiprocess {scenario}: 2 workers x {} blocks x {rounds} rounds in {:?}",
        owned_blocks(ROLES[0]).len(),
        t.elapsed()
    );
}

/// Two processes rewrite and re-read disjoint halves (even / odd blocks) of one device file
/// concurrently, round after round; the parent then checks every block.
#[test]
fn two_processes_write_and_read_disjoint_blocks_concurrently() {
    run_scenario(SCENARIO_ROUNDS, 30);
}

/// As above, and each process also reads the other's blocks after barriers: at a mid-point
/// (filling its cache) and at the end, when it must get the other's final versions and not
/// its cached old ones.
#[test]
fn two_processes_see_each_others_final_blocks() {
    run_scenario(SCENARIO_CROSS, 8);
}
