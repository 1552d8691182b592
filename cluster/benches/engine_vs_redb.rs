//! The metadata engine (server + client over the forest of log btrees) against redb, the
//! anchor, on the same key/value workload in one process (issue 3).
//!
//! Run with `cargo bench -p scoutgw-cluster --bench engine_vs_redb`. The workload, the same
//! for both stores:
//!
//! 1. **insert** `SCOUTGW_BENCH_KEYS` (default 1,000,000) random 16-byte keys with 64-byte
//!    values, in durable commits of `SCOUTGW_BENCH_BATCH` (default 10,000) keys. redb: one
//!    write transaction per batch, default durability (`Immediate`: fsync at commit), table
//!    `&[u8; 16] -> &[u8; 64]`. Ours: `Client::put` per key, then `Client::commit`, which writes
//!    the dirty log btree blocks, the bloom block and the alloc lists, flushes, and has the
//!    server commit a new super block (flushed) before it opens the next transaction.
//! 2. **lookup** every key once, in a random order; every value is checked. redb: `get` in
//!    one read transaction. Ours: `Client::get`.
//! 3. **scan** all keys in order; every key (against the sorted key list) and every value is
//!    checked, and the count. redb: `range(..)` in a read transaction. Ours, two ways:
//!    `Client::next` from each key's successor (what `Client::range` does; it re-reads a
//!    leaf per item, so it is bounded by `SCOUTGW_BENCH_NEXT_SCAN_SECS`, default 120, and
//!    reported as partial if it does not finish), and a leaf-at-a-time scan with
//!    `btree::read_leaf` over `fs_root` and every log tree, merged by key (greatest seq
//!    wins, deletions hidden), as a client iterator could do it. The sub-second scans (redb's
//!    and the leaf scans) run 3 times and report the median pass. Items that mkfs put in the
//!    key space (the root directory's inode) are stepped over.
//!
//! A 16-byte key maps onto our [`Key`] as zone FS, `first` = big-endian u64 of bytes 0..8,
//! type 4, `second` = big-endian u64 of bytes 8..16, so both stores sort keys the same way
//! (bytewise).
//!
//! Our server runs with `ServerConfig::default()` except: a generous client metadata
//! allocation (`client_meta_fill` 65536 blocks, refilled below a quarter of that;
//! `SCOUTGW_BENCH_META_FILL` changes it) so a commit never runs out of blocks, small data
//! allocations, and a block cache of 1 GiB on the client's and the server's device handle
//! (redb's default cache is 1 GiB too). `finalize_height` stays at its default (2) unless
//! `SCOUTGW_BENCH_FINALIZE_HEIGHT` says otherwise: a log tree taller than that is finalized
//! at its commit and the client continues in a new one, so the insert leaves several log
//! trees. By default nothing merges them during the insert; `SCOUTGW_BENCH_MERGE_EVERY=N`
//! finalizes and merges everything into `fs_root` after every N commits, inside the timed
//! insert (what a server merging in the background would do). Lookups and scans run first
//! on the forest the insert left ("log trees"), then after `request_merge`, `Client::sync`
//! and `merge_finalized` ("after merge": all items in `fs_root`); that merge is timed on its
//! own.
//!
//! Both stores' files live in a temporary directory under `<target dir>/bench-tmp` (or
//! `SCOUTGW_BENCH_DIR`) on the disk holding the build, and are removed at the end.
//! `SCOUTGW_BENCH_ORDER` = `redb-first` (default) or `ours-first`; `SCOUTGW_BENCH_ONLY` =
//! `ours` or `redb` runs one store alone (for profiling); `SCOUTGW_BENCH_SEED` changes the
//! keys.

use std::collections::VecDeque;
use std::error::Error;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::TableDefinition;
use scoutgw_blockdev::{BlockDevice, DeviceOptions, FileDevice, MetaDev};
use scoutgw_cluster::btree::{self, Item};
use scoutgw_cluster::client::{Client, LocalServer};
use scoutgw_cluster::format::bloom::{BloomBlockHeader, BLOOM_BITS};
use scoutgw_cluster::format::btree::ITEM_FLAG_DELETION;
use scoutgw_cluster::format::key::zone;
use scoutgw_cluster::format::{BtreeRoot, Key, KIND_BLOOM};
use scoutgw_cluster::mkfs::{mkfs, MkfsOptions};
use scoutgw_cluster::server::{all_log_trees, Server, ServerConfig};
use zerocopy::FromBytes;

type BenchResult<T> = Result<T, Box<dyn Error>>;

const KEY_BYTES: usize = 16;
const VAL_BYTES: usize = 64;
type RawKey = [u8; KEY_BYTES];
type RawVal = [u8; VAL_BYTES];

/// Sparse device files. The metadata device must hold the client's 65536-block (4 GiB)
/// allocation on top of the trees, so it is 16 GiB; only written blocks take disk space.
const META_BYTES: u64 = 16 << 30;
const DATA_BYTES: u64 = 1 << 30;
/// Block cache of each of our device handles, and redb's cache (its default).
const CACHE_BYTES: u64 = 1 << 30;
/// Item type of the keys in zone FS.
const KEY_TYPE: u8 = 4;
const REDB_TABLE: TableDefinition<&RawKey, &RawVal> = TableDefinition::new("bench");

struct Workload {
    /// In insert order (random).
    keys: Vec<RawKey>,
    /// The same keys, sorted: what a scan must return.
    sorted: Vec<RawKey>,
    /// Indexes into `keys`: the lookup order (a random permutation).
    lookups: Vec<u32>,
    batch: usize,
}

/// Wall time, CPU time and bytes written by one phase.
#[derive(Clone, Copy, Default)]
struct Phase {
    wall: Duration,
    ops: u64,
    cpu: Usage,
    /// Only set for the `Client::next` scan when it ran out of time.
    partial: bool,
}

impl Phase {
    fn ops_s(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64()
    }
}

struct RedbResult {
    insert: Phase,
    lookup: Phase,
    scan: Phase,
    file_bytes: u64,
}

#[derive(Default)]
struct OursResult {
    insert: Phase,
    /// Time spent inside `Client::commit` during the insert.
    commit: Duration,
    forest: String,
    lookup_log: Phase,
    next_log: Phase,
    leaf_log: Phase,
    merge: Phase,
    merged_trees: usize,
    lookup_merged: Phase,
    next_merged: Phase,
    leaf_merged: Phase,
    file_bytes: u64,
}

fn main() -> BenchResult<()> {
    let n: usize = env_num("SCOUTGW_BENCH_KEYS", 1_000_000)?;
    let batch: usize = env_num("SCOUTGW_BENCH_BATCH", 10_000)?;
    let seed: u64 = env_num("SCOUTGW_BENCH_SEED", 0x5c0f_be9c_0000_0003)?;
    let next_budget = Duration::from_secs_f64(env_num("SCOUTGW_BENCH_NEXT_SCAN_SECS", 120.0)?);
    if n == 0 || batch == 0 || n > u32::MAX as usize {
        return Err("SCOUTGW_BENCH_KEYS and SCOUTGW_BENCH_BATCH must be positive".into());
    }
    let meta_fill: u64 = env_num("SCOUTGW_BENCH_META_FILL", 65536)?;
    let merge_every: usize = env_num("SCOUTGW_BENCH_MERGE_EVERY", 0)?;
    let defaults = ServerConfig::default();
    let cfg = ServerConfig {
        cache_bytes: CACHE_BYTES,
        client_meta_fill: meta_fill,
        client_meta_low: meta_fill / 4,
        client_data_fill: 4096,
        client_data_low: 1024,
        finalize_height: env_num("SCOUTGW_BENCH_FINALIZE_HEIGHT", defaults.finalize_height)?,
        ..defaults
    };
    let redb_first = match std::env::var("SCOUTGW_BENCH_ORDER").as_deref() {
        Err(_) | Ok("redb-first") => true,
        Ok("ours-first") => false,
        Ok(other) => {
            return Err(
                format!("SCOUTGW_BENCH_ORDER={other:?}: expected redb-first or ours-first").into(),
            )
        }
    };
    let (run_ours, run_redb) = match std::env::var("SCOUTGW_BENCH_ONLY").as_deref() {
        Err(_) | Ok("both") => (true, true),
        Ok("ours") => (true, false),
        Ok("redb") => (false, true),
        Ok(other) => {
            return Err(format!("SCOUTGW_BENCH_ONLY={other:?}: expected ours, redb or both").into())
        }
    };

    let base = match std::env::var_os("SCOUTGW_BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => default_base_dir(),
    };
    fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new()
        .prefix("engine_vs_redb-")
        .tempdir_in(&base)?;
    let dir = tmp.path().to_path_buf();

    let w = workload(n, batch, seed)?;
    println!("engine_vs_redb: metadata engine (server + client, log btrees) vs redb 2");
    println!(
        "  data:   {n} random {KEY_BYTES}-byte keys, {VAL_BYTES}-byte values, commits of \
         {batch} keys (seed {seed:#x})"
    );
    println!("  dir:    {} ({})", dir.display(), fs_type(&dir));
    println!(
        "  cpus:   {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  ours:   meta {} GiB / data {} GiB sparse files, client+server block cache {} MiB \
         each, client_meta_fill {} (low {}), finalize_height {}, merge during insert: {}",
        META_BYTES >> 30,
        DATA_BYTES >> 30,
        CACHE_BYTES >> 20,
        cfg.client_meta_fill,
        cfg.client_meta_low,
        cfg.finalize_height,
        if merge_every == 0 {
            "never".to_string()
        } else {
            format!("every {merge_every} commits")
        }
    );
    println!(
        "  redb:   default Builder (cache {} MiB), Durability::Immediate (default)",
        CACHE_BYTES >> 20
    );
    println!(
        "  order:  {}",
        if redb_first {
            "redb first"
        } else {
            "ours first"
        }
    );
    println!();

    let mut redb_res = None;
    let mut ours_res = None;
    for redb_turn in [redb_first, !redb_first] {
        if redb_turn && run_redb {
            redb_res = Some(bench_redb(&dir, &w)?);
        } else if !redb_turn && run_ours {
            ours_res = Some(bench_ours(&dir, &w, cfg.clone(), merge_every, next_budget)?);
        }
    }

    summary(n, redb_res.as_ref(), ours_res.as_ref());

    tmp.close()?;
    if std::env::var_os("SCOUTGW_BENCH_DIR").is_none() {
        // Only removes it when empty (no other run is using it).
        let _ = fs::remove_dir(&base);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The workload.

fn workload(n: usize, batch: usize, seed: u64) -> BenchResult<Workload> {
    let mut rng = SplitMix(seed);
    let keys: Vec<RawKey> = (0..n)
        .map(|_| {
            let mut k = [0u8; KEY_BYTES];
            k[..8].copy_from_slice(&rng.next().to_le_bytes());
            k[8..].copy_from_slice(&rng.next().to_le_bytes());
            k
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != n {
        return Err("duplicate random keys: change SCOUTGW_BENCH_SEED".into());
    }
    let mut lookups: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        lookups.swap(i, j);
    }
    Ok(Workload {
        keys,
        sorted,
        lookups,
        batch,
    })
}

/// splitmix64: a small, well-mixed deterministic generator.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The value stored under `key`: derived from it, so every read can be checked.
fn value_of(key: &RawKey) -> RawVal {
    let mut g = SplitMix(u64::from_le_bytes(key[..8].try_into().expect("8 bytes")) ^ 0x5c0f);
    let mut v = [0u8; VAL_BYTES];
    for w in v.chunks_exact_mut(8) {
        w.copy_from_slice(&g.next().to_le_bytes());
    }
    v
}

/// The engine key of a raw key; keeps the bytewise order.
fn engine_key(k: &RawKey) -> Key {
    let first = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
    let second = u64::from_be_bytes(k[8..].try_into().expect("8 bytes"));
    Key::new(zone::FS, first, KEY_TYPE, second, 0, 0)
}

fn raw_key(k: &Key) -> RawKey {
    let mut out = [0u8; KEY_BYTES];
    out[..8].copy_from_slice(&k.first.get().to_be_bytes());
    out[8..].copy_from_slice(&k.second.get().to_be_bytes());
    out
}

/// The scan must return `w.sorted[at]` with its value.
fn check_scanned(w: &Workload, at: usize, key: &RawKey, val: &[u8]) -> BenchResult<()> {
    match w.sorted.get(at) {
        Some(want) if want == key => {}
        want => return Err(format!("scan item {at}: key {key:02x?}, expected {want:02x?}").into()),
    }
    if val != value_of(key) {
        return Err(format!("scan item {at}: wrong value for key {key:02x?}").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// redb.

fn bench_redb(dir: &Path, w: &Workload) -> BenchResult<RedbResult> {
    println!("[redb]");
    let path = dir.join("redb.db");
    let db = redb::Database::create(&path)?;
    let insert = phase(w.keys.len(), || {
        for chunk in w.keys.chunks(w.batch) {
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(REDB_TABLE)?;
                for k in chunk {
                    table.insert(k, &value_of(k))?;
                }
            }
            tx.commit()?;
        }
        Ok(())
    })?;
    report("insert", &insert, "");

    let lookup = phase(w.keys.len(), || {
        let rtx = db.begin_read()?;
        let table = rtx.open_table(REDB_TABLE)?;
        for &i in &w.lookups {
            let k = &w.keys[i as usize];
            let got = table
                .get(k)?
                .ok_or_else(|| format!("redb: key {k:02x?} not found"))?;
            if got.value() != &value_of(k) {
                return Err(format!("redb: wrong value for key {k:02x?}").into());
            }
        }
        Ok(())
    })?;
    report("lookup", &lookup, "");

    let scan = median_of(SCAN_PASSES, || {
        phase(w.keys.len(), || {
            let rtx = db.begin_read()?;
            let table = rtx.open_table(REDB_TABLE)?;
            let mut at = 0;
            for entry in table.range::<&RawKey>(..)? {
                let (k, v) = entry?;
                check_scanned(w, at, k.value(), v.value())?;
                at += 1;
            }
            if at != w.sorted.len() {
                return Err(format!("redb scan: {at} items, expected {}", w.sorted.len()).into());
            }
            Ok(())
        })
    })?;
    report("scan (range ..)", &scan, SCAN_NOTE);

    drop(db);
    let file_bytes = disk_bytes(&path)?;
    println!(
        "  file: {:.0} MiB on disk",
        file_bytes as f64 / (1 << 20) as f64
    );
    fs::remove_file(&path)?;
    println!();
    Ok(RedbResult {
        insert,
        lookup,
        scan,
        file_bytes,
    })
}

// ---------------------------------------------------------------------------------------
// Our engine.

fn open_dev(path: &Path) -> BenchResult<Arc<dyn BlockDevice>> {
    Ok(Arc::new(FileDevice::open(path, DeviceOptions::default())?))
}

fn bench_ours(
    dir: &Path,
    w: &Workload,
    cfg: ServerConfig,
    merge_every: usize,
    next_budget: Duration,
) -> BenchResult<OursResult> {
    println!("[ours]");
    let meta = dir.join("meta.img");
    let data = dir.join("data.img");
    File::create_new(&meta)?.set_len(META_BYTES)?;
    File::create_new(&data)?.set_len(DATA_BYTES)?;
    let opts = MkfsOptions {
        slots: vec!["0,127.0.0.1,7100".parse()?],
        allow_small_size: true,
        ..MkfsOptions::default()
    };
    mkfs(open_dev(&meta)?, open_dev(&data)?, &opts)?;
    let server = Arc::new(LocalServer::new(Server::open(open_dev(&meta)?, cfg)?));
    let md = Arc::new(MetaDev::new(
        open_dev(&meta)?,
        server.with(|s| s.fsid()),
        CACHE_BYTES,
    ));
    let mut client = Client::mount(md, server.clone(), 1)?;
    let mut res = OursResult::default();

    let mut foreign = Vec::new();
    merged_leaf_scan(client.meta_dev(), &server, |it| {
        foreign.push(it.key);
        Ok(())
    })?;
    if let Some(k) = foreign
        .iter()
        .find(|k| w.sorted.binary_search(&raw_key(k)).is_ok() && **k == engine_key(&raw_key(k)))
    {
        return Err(format!("a workload key is already in the new filesystem: {k:?}").into());
    }
    if !foreign.is_empty() {
        println!(
            "  {} item(s) in the key space after mkfs (e.g. {:?}): skipped by the scans",
            foreign.len(),
            foreign[0]
        );
    }

    let mut commit = Duration::ZERO;
    res.insert = phase(w.keys.len(), || {
        for (nr, chunk) in w.keys.chunks(w.batch).enumerate() {
            for k in chunk {
                client.put(engine_key(k), value_of(k).to_vec(), 0)?;
            }
            let start = Instant::now();
            client.commit()?;
            commit += start.elapsed();
            if merge_every > 0 && (nr + 1) % merge_every == 0 {
                // What the server would do in the background, done inline (and timed).
                merge_all(&mut client, &server)?;
            }
        }
        Ok(())
    })?;
    res.commit = commit;
    res.forest = forest(&client, &server)?;
    report(
        "insert",
        &res.insert,
        &format!(
            "{:.2} s of it in commit(); now {}",
            commit.as_secs_f64(),
            res.forest
        ),
    );

    let (lookup, note) = lookups(&mut client, w)?;
    res.lookup_log = lookup;
    report("lookup (log trees)", &res.lookup_log, &note);
    res.next_log = next_scan(&mut client, w, &foreign, next_budget)?;
    report("scan Client::scan (log trees)", &res.next_log, "");
    res.leaf_log = median_of(SCAN_PASSES, || leaf_scan(&client, &server, w, &foreign))?;
    report(
        "scan read_leaf merged (log trees)",
        &res.leaf_log,
        SCAN_NOTE,
    );

    let mut merged = 0;
    res.merge = phase(w.keys.len(), || {
        merged = merge_all(&mut client, &server)?;
        Ok(())
    })?;
    res.merged_trees = merged;
    let after = forest(&client, &server)?;
    report(
        "merge into fs_root",
        &res.merge,
        &format!("{merged} trees merged; now {after}"),
    );

    let (lookup, note) = lookups(&mut client, w)?;
    res.lookup_merged = lookup;
    report("lookup (after merge)", &res.lookup_merged, &note);
    res.next_merged = next_scan(&mut client, w, &foreign, next_budget)?;
    report("scan Client::scan (after merge)", &res.next_merged, "");
    res.leaf_merged = median_of(SCAN_PASSES, || leaf_scan(&client, &server, w, &foreign))?;
    report("scan read_leaf (after merge)", &res.leaf_merged, SCAN_NOTE);

    let cache = client.meta_dev().cache_stats();
    println!(
        "  client block cache: {} hits, {} misses, {} MiB held",
        cache.hits,
        cache.misses,
        cache.bytes >> 20
    );
    client.unmount()?;
    drop(server);
    res.file_bytes = disk_bytes(&meta)?;
    println!(
        "  files: meta {:.0} MiB on disk (written blocks; includes freed ones)",
        res.file_bytes as f64 / (1 << 20) as f64
    );
    fs::remove_file(&meta)?;
    fs::remove_file(&data)?;
    println!();
    Ok(res)
}

/// Finalize every log tree and merge them into `fs_root`; the number of trees merged.
fn merge_all(client: &mut Client, server: &LocalServer) -> BenchResult<usize> {
    server.with(|s| s.request_merge())?;
    // The open transaction's tree is finalized at its next commit.
    client.sync()?;
    let merged = server.with(|s| s.merge_finalized())?;
    client.refresh_roots()?;
    Ok(merged)
}

/// The committed trees as the server sees them, in words.
fn forest(client: &Client, server: &LocalServer) -> BenchResult<String> {
    let roots = server.with(|s| s.roots());
    let md = client.meta_dev();
    let mut logs = Vec::new();
    for lt in all_log_trees(md, None, &roots.logs_root)? {
        if lt.item_root.is_empty() {
            continue;
        }
        // The share of bloom bits set; a key outside the tree passes with about fill^3.
        let fill = if lt.bloom_ref.is_null() {
            0.0
        } else {
            let block = md.read_ref(KIND_BLOOM, lt.bloom_ref)?;
            let (h, _) = BloomBlockHeader::read_from_prefix(block.data.as_slice())
                .map_err(|_| "short bloom block")?;
            h.total_set.get() as f64 / BLOOM_BITS as f64
        };
        logs.push(format!(
            "h{}{} bloom {:.0}% set",
            lt.item_root.height,
            if lt.is_finalized() { " fin" } else { "" },
            fill * 100.0
        ));
    }
    Ok(format!(
        "fs_root height {}, {} non-empty log tree(s) [{}]",
        roots.fs_root.height,
        logs.len(),
        logs.join(", ")
    ))
}

/// Every key once in the lookup order; also says how many blocks each `get` read.
fn lookups(client: &mut Client, w: &Workload) -> BenchResult<(Phase, String)> {
    let before = client.meta_dev().cache_stats();
    let p = phase(w.keys.len(), || {
        for &i in &w.lookups {
            let k = &w.keys[i as usize];
            let got = client
                .get(&engine_key(k))?
                .ok_or_else(|| format!("ours: key {k:02x?} not found"))?;
            if got != value_of(k) {
                return Err(format!("ours: wrong value for key {k:02x?}").into());
            }
        }
        Ok(())
    })?;
    let after = client.meta_dev().cache_stats();
    let (hits, misses) = (after.hits - before.hits, after.misses - before.misses);
    let note = format!(
        "{:.2} block reads per get (btree nodes + bloom blocks), {:.4} of them cache misses",
        (hits + misses) as f64 / w.keys.len() as f64,
        misses as f64 / (hits + misses).max(1) as f64
    );
    Ok((p, note))
}

/// The first and last key of the bench's key space.
fn key_space() -> (Key, Key) {
    (
        Key::new(zone::FS, 0, KEY_TYPE, 0, 0, 0),
        Key::new(zone::FS, u64::MAX, KEY_TYPE, u64::MAX, u64::MAX, u8::MAX),
    )
}

/// Items per `Client::scan` page in the client scan.
const SCAN_PAGE: usize = 4096;

/// `Client::scan` in pages of `SCAN_PAGE` (a merge of per-tree leaf cursors with the open
/// transaction on top), until the end or the time budget runs out.
fn next_scan(
    client: &mut Client,
    w: &Workload,
    foreign: &[Key],
    budget: Duration,
) -> BenchResult<Phase> {
    let (mut from, end) = key_space();
    let mut foreign = Foreign::new(foreign);
    let (start, cpu) = (Instant::now(), Usage::now());
    let mut at = 0usize;
    let mut partial = false;
    'pages: loop {
        let page = client.scan(&from, &end, SCAN_PAGE)?;
        let Some(last) = page.last().map(|it| it.key) else {
            break;
        };
        for it in &page {
            if !foreign.skip(&it.key) {
                check_scanned(w, at, &raw_key(&it.key), &it.val)?;
                at += 1;
            }
        }
        if page.len() < SCAN_PAGE || start.elapsed() > budget {
            partial = page.len() == SCAN_PAGE;
            break 'pages;
        }
        match last.next() {
            Some(n) if last < end => from = n,
            _ => break,
        }
    }
    let (wall, cpu) = (start.elapsed(), Usage::since(cpu));
    if !partial && at != w.sorted.len() {
        return Err(format!("Client::scan: {at} items, expected {}", w.sorted.len()).into());
    }
    Ok(Phase {
        wall,
        ops: at as u64,
        cpu,
        partial,
    })
}

/// One tree read a leaf at a time.
struct LeafCursor {
    root: BtreeRoot,
    items: VecDeque<Item>,
    next_start: Option<Key>,
    end: Key,
}

impl LeafCursor {
    fn new(root: BtreeRoot, start: Key, end: Key) -> Self {
        Self {
            root,
            items: VecDeque::new(),
            next_start: (!root.is_empty()).then_some(start),
            end,
        }
    }

    fn peek(&mut self, md: &MetaDev) -> BenchResult<Option<&Item>> {
        while self.items.is_empty() {
            let Some(start) = self.next_start else {
                return Ok(None);
            };
            let leaf = btree::read_leaf(md, None, &self.root, &start, &self.end)?;
            self.items.extend(leaf.items);
            self.next_start = match leaf.covered_end.next() {
                Some(n) if leaf.covered_end < self.end => Some(n),
                _ => None,
            };
        }
        Ok(self.items.front())
    }
}

/// Every item of `fs_root` and the log trees, a leaf at a time per tree, merged by key: for
/// each key the greatest seq wins and deletions hide the key.
fn leaf_scan(
    client: &Client,
    server: &LocalServer,
    w: &Workload,
    foreign: &[Key],
) -> BenchResult<Phase> {
    phase(w.keys.len(), || {
        let mut foreign = Foreign::new(foreign);
        let mut at = 0usize;
        merged_leaf_scan(client.meta_dev(), server, |it| {
            if !foreign.skip(&it.key) {
                check_scanned(w, at, &raw_key(&it.key), &it.val)?;
                at += 1;
            }
            Ok(())
        })?;
        if at != w.sorted.len() {
            return Err(format!("read_leaf scan: {at} items, expected {}", w.sorted.len()).into());
        }
        Ok(())
    })
}

/// Call `f` with every live item of the bench's key space in `fs_root` and the committed log
/// trees, in key order: each tree read a leaf at a time, merged by key, the greatest seq
/// winning and deletions hiding the key.
fn merged_leaf_scan(
    md: &MetaDev,
    server: &LocalServer,
    mut f: impl FnMut(Item) -> BenchResult<()>,
) -> BenchResult<()> {
    let (start, end) = key_space();
    let roots = server.with(|s| s.roots());
    let mut cursors = vec![LeafCursor::new(roots.fs_root, start, end)];
    for lt in all_log_trees(md, None, &roots.logs_root)? {
        cursors.push(LeafCursor::new(lt.item_root, start, end));
    }
    loop {
        // The smallest key in front of any cursor, and the newest version of it.
        let mut best: Option<(Key, u64, usize)> = None;
        for (ci, c) in cursors.iter_mut().enumerate() {
            if let Some(it) = c.peek(md)? {
                let newer = match best {
                    None => true,
                    Some((k, seq, _)) => it.key < k || (it.key == k && it.seq > seq),
                };
                if newer {
                    best = Some((it.key, it.seq, ci));
                }
            }
        }
        let Some((key, _, winner)) = best else {
            return Ok(());
        };
        let mut won = None;
        for (ci, c) in cursors.iter_mut().enumerate() {
            if c.items.front().is_some_and(|it| it.key == key) {
                let it = c.items.pop_front().expect("front exists");
                if ci == winner {
                    won = Some(it);
                }
            }
        }
        let it = won.expect("the winner holds the key");
        if it.flags & ITEM_FLAG_DELETION == 0 {
            f(it)?;
        }
    }
}

/// Items that were in the key space before the insert (mkfs puts the root directory's inode
/// in zone FS), which the scans step over. Sorted; scans see keys in order, so one
/// comparison per item suffices.
struct Foreign<'a> {
    keys: &'a [Key],
    at: usize,
}

impl<'a> Foreign<'a> {
    fn new(keys: &'a [Key]) -> Self {
        Self { keys, at: 0 }
    }

    /// True if `key` (at or after every key asked about before) is a foreign item.
    fn skip(&mut self, key: &Key) -> bool {
        while self.keys.get(self.at).is_some_and(|k| k < key) {
            self.at += 1;
        }
        self.keys.get(self.at) == Some(key)
    }
}

// ---------------------------------------------------------------------------------------
// Timing and output.

/// Passes of the short (sub-second) scans; the median pass is reported.
const SCAN_PASSES: usize = 3;
const SCAN_NOTE: &str = "median of 3 passes";

/// Run `f` `n` times; the pass with the median wall time.
fn median_of(n: usize, mut f: impl FnMut() -> BenchResult<Phase>) -> BenchResult<Phase> {
    let mut passes = (0..n).map(|_| f()).collect::<BenchResult<Vec<Phase>>>()?;
    passes.sort_by_key(|p| p.wall);
    Ok(passes[passes.len() / 2])
}

/// Run `f` as one timed phase of `ops` operations.
fn phase(ops: usize, f: impl FnOnce() -> BenchResult<()>) -> BenchResult<Phase> {
    let (start, cpu) = (Instant::now(), Usage::now());
    f()?;
    Ok(Phase {
        wall: start.elapsed(),
        ops: ops as u64,
        cpu: Usage::since(cpu),
        partial: false,
    })
}

fn report(what: &str, p: &Phase, note: &str) {
    let partial = if p.partial {
        " (PARTIAL: time budget)"
    } else {
        ""
    };
    println!(
        "  {what:<36} {:>10.0} ops/s  {:>8.2} s  {} items{partial}; cpu {}",
        p.ops_s(),
        p.wall.as_secs_f64(),
        p.ops,
        p.cpu
    );
    if !note.is_empty() {
        println!("  {:<36} {note}", "");
    }
}

fn summary(n: usize, redb: Option<&RedbResult>, ours: Option<&OursResult>) {
    println!("summary ({n} keys), ops/s; ratio = ours / redb (target >= 0.5)");
    println!(
        "  {:<40} {:>12} {:>12} {:>7}",
        "phase", "ours", "redb", "ratio"
    );
    let row = |name: &str, o: Option<&Phase>, r: Option<&Phase>| {
        let os = o.map_or(f64::NAN, Phase::ops_s);
        let rs = r.map_or(f64::NAN, Phase::ops_s);
        let partial = if o.is_some_and(|p| p.partial) {
            "  (partial)"
        } else {
            ""
        };
        println!(
            "  {name:<40} {os:>12.0} {rs:>12.0} {:>7.2}{partial}",
            os / rs
        );
    };
    let r_insert = redb.map(|r| &r.insert);
    let r_lookup = redb.map(|r| &r.lookup);
    let r_scan = redb.map(|r| &r.scan);
    row(
        "insert (commits of the batch size)",
        ours.map(|o| &o.insert),
        r_insert,
    );
    let with_merge = ours.map(|o| Phase {
        wall: o.insert.wall + o.merge.wall,
        ..o.insert
    });
    row("insert + merge into fs_root", with_merge.as_ref(), r_insert);
    row("lookup, log trees", ours.map(|o| &o.lookup_log), r_lookup);
    row(
        "lookup, after merge",
        ours.map(|o| &o.lookup_merged),
        r_lookup,
    );
    row(
        "scan Client::scan, log trees",
        ours.map(|o| &o.next_log),
        r_scan,
    );
    row(
        "scan Client::scan, after merge",
        ours.map(|o| &o.next_merged),
        r_scan,
    );
    row(
        "scan read_leaf merged, log trees",
        ours.map(|o| &o.leaf_log),
        r_scan,
    );
    row(
        "scan read_leaf, after merge",
        ours.map(|o| &o.leaf_merged),
        r_scan,
    );
    if let Some(o) = ours {
        println!(
            "  ours: commit() {:.2} s of {:.2} s insert; merge {:.2} s ({} trees); meta on disk \
             {} MiB",
            o.commit.as_secs_f64(),
            o.insert.wall.as_secs_f64(),
            o.merge.wall.as_secs_f64(),
            o.merged_trees,
            o.file_bytes >> 20
        );
    }
    if let Some(r) = redb {
        println!("  redb: file on disk {} MiB", r.file_bytes >> 20);
    }
}

/// User and system CPU time of this process, and bytes it wrote through syscalls.
#[derive(Clone, Copy, Default)]
struct Usage {
    user: Duration,
    sys: Duration,
    /// `wchar` of /proc/self/io: bytes passed to write-type syscalls.
    wchar: u64,
}

impl Usage {
    fn now() -> Self {
        let wchar = fs::read_to_string("/proc/self/io")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("wchar:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        // utime and stime are fields 14 and 15 of /proc/self/stat, in clock ticks (USER_HZ,
        // 100 on Linux); the command name (field 2) may hold spaces, so count after its ')'.
        let ticks = fs::read_to_string("/proc/self/stat").ok().and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            let mut f = rest.split_whitespace().skip(11);
            Some((
                f.next()?.parse::<u64>().ok()?,
                f.next()?.parse::<u64>().ok()?,
            ))
        });
        let (utime, stime) = ticks.unwrap_or((0, 0));
        Self {
            user: Duration::from_millis(utime * 10),
            sys: Duration::from_millis(stime * 10),
            wchar,
        }
    }

    fn since(start: Self) -> Self {
        let now = Self::now();
        Self {
            user: now.user.saturating_sub(start.user),
            sys: now.sys.saturating_sub(start.sys),
            wchar: now.wchar.saturating_sub(start.wchar),
        }
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2}u+{:.2}s, wrote {:.0} MiB",
            self.user.as_secs_f64(),
            self.sys.as_secs_f64(),
            self.wchar as f64 / (1 << 20) as f64
        )
    }
}

/// Bytes a (sparse) file takes on disk.
fn disk_bytes(path: &Path) -> BenchResult<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata(path)?.blocks() * 512)
}

/// Default base directory: `<target dir>/bench-tmp`, found from the bench executable's path
/// (`<target>/release/deps/engine_vs_redb-*`), so the files land on the disk holding the
/// build, not in /tmp (which may be tmpfs). Falls back to `./target/bench-tmp`.
fn default_base_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            let profile = deps.parent()?;
            let target = profile.parent()?;
            (deps.file_name()? == "deps").then(|| target.join("bench-tmp"))
        })
        .unwrap_or_else(|| PathBuf::from("./target/bench-tmp"))
}

/// The filesystem type of the mount holding `dir`, from /proc/self/mounts.
fn fs_type(dir: &Path) -> String {
    let Ok(dir) = dir.canonicalize() else {
        return "fs type unknown".into();
    };
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return "fs type unknown".into();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (dev, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            dir.starts_with(mnt)
                .then(|| (mnt.len(), format!("{ty} on {dev}, mounted at {mnt}")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "fs type unknown".into(), |(_, s)| s)
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> BenchResult<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a number").into()),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => Err(format!("{name}: {e}").into()),
    }
}
