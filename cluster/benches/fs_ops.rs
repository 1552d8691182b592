//! The filesystem layer (`Fs`) on real device files, against ext4 and plain file I/O on the
//! same disk as anchors, in one process (issue 4).
//!
//! Run with `cargo bench -p scoutgw-cluster --bench fs_ops`. Two parts:
//!
//! 1. **Directory operations**, for a directory of `SCOUTGW_BENCH_SMALL_DIR` (default 10,000)
//!    entries and one of `SCOUTGW_BENCH_BIG_DIR` (default 1,000,000), each a fresh directory
//!    under the root: **create** empty regular files (`Fs::create`, exclusive), with an
//!    `Fs::sync` every `SCOUTGW_BENCH_SYNC_EVERY` (default 10,000) creates and at the end;
//!    **stat** every file by inode number (`Fs::getattr`) in a random order; **lookup**
//!    every name (`Fs::lookup`) in another random order; **readdir** the directory with
//!    `Fs::readdir(dir, cookie, 1024)` pages to the end; **unlink** every name in a third
//!    random order, syncing like the creates. Every result is checked: inode numbers,
//!    types, sizes, link counts, the directory's entry count, that readdir returns every
//!    name exactly once with increasing cookies, that the directory is empty at the end and
//!    an unlinked inode is gone. Readdir's pages (ours and the anchor's entries) are kept
//!    and checked after the timed pass: the check looks each name up in per-entry tables,
//!    random accesses that grow with the directory and are not the filesystem's. The small size runs `SCOUTGW_BENCH_SMALL_REPEAT` (default 3)
//!    times, each in a new directory, and reports the median pass of each operation.
//!
//!    The anchor is the same workload with `std::fs` on a directory on the same disk
//!    (ext4 here): `File::create_new` + close, `fs::metadata` (a path walk: lookup + stat,
//!    so it anchors both our getattr and our lookup), `fs::read_dir` to the end (with the
//!    d_type check), `fs::remove_file`; the syncs are `syncfs(2)` (this ext4 runs without a
//!    journal, where `fsync` of the directory would not write the new inodes). Every anchor
//!    directory is created, stat'ed and read before any is emptied: without a journal, ext4
//!    avoids reusing inodes deleted in the last 1-6 minutes and rescans the group bitmap on
//!    every create, which made creates after mass unlinks 4-10x slower. For the same reason
//!    leave ~6 minutes between runs. A local kernel filesystem with its dentry and inode
//!    caches is a reference point, not a target. After each of our passes, pending merges
//!    are run (untimed) so that our merger does not compete with the anchor.
//!
//! 2. **Sequential file I/O**: `SCOUTGW_BENCH_FILE_MIB` (default 1024) MiB written with
//!    `Fs::write` in 1 MiB chunks, then `Fs::sync` (timed with the writes), then read back
//!    with `Fs::read` in 1 MiB chunks, every chunk checked; against `write_all_at` +
//!    `sync_data` and `read_exact_at` on a plain file in the same directory. Between write
//!    and read the page cache of the plain file and of our data device file is dropped with
//!    `posix_fadvise(POSIX_FADV_DONTNEED)` (called through the C library std links
//!    against), so both reads come from the disk. `SCOUTGW_BENCH_FILE_ROUNDS` (default 5)
//!    rounds, alternating which side goes first, each with a new file: ours unlinks its file
//!    after the round, and its data device is large enough that every round is written to
//!    never-written space of the sparse file; the plain files stay until the end (deleting
//!    them would discard their blocks during the next rounds). After the reads both files
//!    are dropped from the page cache again. The median round is reported.
//!
//! Setup (not timed): sparse device files (meta 8 GiB; data (rounds + 1) x file size +
//! 1 GiB, at least 4 GiB: 7 GiB by default) in a temporary directory under
//! `<target dir>/bench-tmp` (or `SCOUTGW_BENCH_DIR`), `mkfs`, a `Server` behind a
//! `LocalServer` with the background merger running every 50 ms as a node runs it, one `Fs`
//! mounted with `LocalLocks` and `FsOptions::default()` but a 1 GiB item cache
//! (`max_dirty_items` 50,000: a
//! transaction commits by itself every ~8,000 creates, 6 items each). The `ServerConfig`
//! gives the client generous allocations: 8,000 metadata blocks (500 MiB, refilled below
//! 4,000; a commit of the big directory uses under 2,000) and the whole data device; the
//! server keeps at most 8,000 blocks itself; the client's and the server's
//! block caches are 1 GiB each. Files are removed at the end.
//!
//! Other knobs: `SCOUTGW_BENCH_PARTS` = `all` (default), `dirs` or `file`;
//! `SCOUTGW_BENCH_ONLY` = `both` (default), `ours` or `ext4` (for profiling one side);
//! `SCOUTGW_BENCH_SEED` changes the random orders.

use std::error::Error;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scoutgw_blockdev::{BlockDevice, DeviceOptions, FileDevice, MetaDev};
use scoutgw_cluster::client::LocalServer;
use scoutgw_cluster::format::inode::ROOT_INO;
use scoutgw_cluster::fs::{FileType, Fs, FsError, FsOptions, NewNode};
use scoutgw_cluster::lock::LocalLocks;
use scoutgw_cluster::mkfs::{mkfs, MkfsOptions};
use scoutgw_cluster::server::{all_log_trees, Server, ServerConfig};

type BenchResult<T> = Result<T, Box<dyn Error>>;

/// Sparse device files: only written blocks take disk space.
const META_BYTES: u64 = 8 << 30;
const MIN_DATA_BYTES: u64 = 4 << 30;
/// Block cache of the client's and of the server's metadata device handle.
const CACHE_BYTES: u64 = 1 << 30;
const READDIR_PAGE: usize = 1024;
const CHUNK: usize = 1 << 20;
const MERGE_INTERVAL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------
// Knobs.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sides {
    Both,
    Ours,
    Ext4,
}

impl Sides {
    fn ours(self) -> bool {
        self != Sides::Ext4
    }
    fn anchor(self) -> bool {
        self != Sides::Ours
    }
}

struct Knobs {
    small: usize,
    big: usize,
    small_repeat: usize,
    sync_every: usize,
    file_mib: usize,
    file_rounds: usize,
    dirs: bool,
    file: bool,
    sides: Sides,
    seed: u64,
}

impl Knobs {
    fn from_env() -> BenchResult<Self> {
        let (dirs, file) = match std::env::var("SCOUTGW_BENCH_PARTS").as_deref() {
            Err(_) | Ok("all") => (true, true),
            Ok("dirs") => (true, false),
            Ok("file") => (false, true),
            Ok(other) => {
                return Err(
                    format!("SCOUTGW_BENCH_PARTS={other:?}: expected all, dirs or file").into(),
                )
            }
        };
        let sides = match std::env::var("SCOUTGW_BENCH_ONLY").as_deref() {
            Err(_) | Ok("both") => Sides::Both,
            Ok("ours") => Sides::Ours,
            Ok("ext4") => Sides::Ext4,
            Ok(other) => {
                return Err(
                    format!("SCOUTGW_BENCH_ONLY={other:?}: expected both, ours or ext4").into(),
                )
            }
        };
        let k = Knobs {
            small: env_num("SCOUTGW_BENCH_SMALL_DIR", 10_000)?,
            big: env_num("SCOUTGW_BENCH_BIG_DIR", 1_000_000)?,
            small_repeat: env_num("SCOUTGW_BENCH_SMALL_REPEAT", 3)?,
            sync_every: env_num("SCOUTGW_BENCH_SYNC_EVERY", 10_000)?,
            file_mib: env_num("SCOUTGW_BENCH_FILE_MIB", 1024)?,
            file_rounds: env_num("SCOUTGW_BENCH_FILE_ROUNDS", 5)?,
            dirs,
            file,
            sides,
            seed: env_num("SCOUTGW_BENCH_SEED", 0x5c0f_be9c_0000_0004)?,
        };
        if k.small == 0 || k.big == 0 || k.small_repeat == 0 || k.sync_every == 0 {
            return Err("directory sizes, repeats and SCOUTGW_BENCH_SYNC_EVERY must be > 0".into());
        }
        if k.big >= 100_000_000 || k.small >= 100_000_000 {
            return Err("directory sizes must be below 100,000,000 (8-digit names)".into());
        }
        if k.file_mib == 0 || k.file_rounds == 0 {
            return Err("SCOUTGW_BENCH_FILE_MIB and SCOUTGW_BENCH_FILE_ROUNDS must be > 0".into());
        }
        Ok(k)
    }
}

fn main() -> BenchResult<()> {
    let k = Knobs::from_env()?;
    let base = match std::env::var_os("SCOUTGW_BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => default_base_dir(),
    };
    fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new()
        .prefix("fs_ops-")
        .tempdir_in(&base)?;
    let dir = tmp.path().to_path_buf();
    let file_bytes = (k.file_mib * CHUNK) as u64;
    // Room for a new file in every round: each round of ours, like each plain file, writes
    // space of the disk that was never written before.
    let data_bytes = MIN_DATA_BYTES.max((k.file_rounds as u64 + 1) * file_bytes + (1 << 30));

    println!("fs_ops: the Fs layer vs std::fs on the same disk");
    println!("  dir:    {} ({})", dir.display(), fs_type(&dir));
    println!(
        "  cpus:   {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  dirs:   {} entries (median of {} passes) and {} entries; sync every {} \
         creates/unlinks and at the end; readdir pages of {READDIR_PAGE}",
        k.small, k.small_repeat, k.big, k.sync_every
    );
    println!(
        "  file:   {} MiB in {} KiB chunks, {} round(s)",
        k.file_mib,
        CHUNK >> 10,
        k.file_rounds
    );
    let ours = if k.sides.ours() {
        let o = Ours::new(&dir, data_bytes)?;
        println!(
            "  ours:   meta {} GiB / data {} GiB sparse files, client+server block cache and \
             client item cache {} MiB each, client_meta_fill {} (low {}), client_data_fill {} (low {}), \
             server_meta_high {}, max_dirty_items {}, merger every {} ms",
            META_BYTES >> 30,
            data_bytes >> 30,
            CACHE_BYTES >> 20,
            o.cfg.client_meta_fill,
            o.cfg.client_meta_low,
            o.cfg.client_data_fill,
            o.cfg.client_data_low,
            o.cfg.server_meta_high,
            FsOptions::default().max_dirty_items,
            MERGE_INTERVAL.as_millis()
        );
        Some(o)
    } else {
        None
    };
    println!();

    let mut dir_rows: Vec<(usize, Option<DirResult>, Option<DirResult>)> = Vec::new();
    if k.dirs {
        // The anchor's unlinks wait until all its directories are filled (see `Ext4Dir`).
        let mut ext4_dirs: Vec<(usize, Ext4Dir)> = Vec::new();
        for (size, passes) in [(k.small, k.small_repeat), (k.big, 1)] {
            let mut ours_passes = Vec::new();
            for pass in 0..passes {
                let orders = Orders::new(size, k.seed ^ (size as u64) ^ ((pass as u64) << 40));
                let name = format!("d{size}-{pass}");
                if let Some(o) = &ours {
                    ours_passes.push(dir_ours(o, &name, size, k.sync_every, &orders)?);
                    // Let no merge of ours run during the anchor's pass (untimed).
                    o.server.with(|s| s.merge_finalized())?;
                }
                if k.sides.anchor() {
                    ext4_dirs.push((size, Ext4Dir::fill(&dir, &name, k.sync_every, orders)?));
                }
            }
            dir_rows.push((size, median_dir(&ours_passes), None));
        }
        let mut ext4_passes: Vec<(usize, DirResult)> = Vec::new();
        for (size, d) in ext4_dirs {
            ext4_passes.push((size, d.unlink_all()?));
        }
        for (size, _, anchor) in dir_rows.iter_mut() {
            let passes: Vec<DirResult> = ext4_passes
                .iter()
                .filter(|(s, _)| s == size)
                .map(|(_, r)| r.clone())
                .collect();
            *anchor = median_dir(&passes);
        }
    }

    let mut file_res = Vec::new();
    if k.file {
        let pool = Pool::new(k.seed);
        for round in 0..k.file_rounds {
            let ours_first = round % 2 == 0;
            let mut r = FileRound::default();
            for ours_turn in [ours_first, !ours_first] {
                if ours_turn {
                    if let Some(o) = &ours {
                        r.ours = Some(file_ours(o, &pool, k.file_mib, round)?);
                    }
                } else if k.sides.anchor() {
                    r.plain = Some(file_plain(&dir, &pool, k.file_mib, round)?);
                }
            }
            file_res.push(r);
        }
        for round in 0..k.file_rounds {
            let _ = fs::remove_file(dir.join(format!("plain-{round}.bin")));
        }
    }

    println!();
    if k.dirs {
        dir_summary(&dir_rows);
        memory_anchor(k.small, k.big, k.seed);
    }
    if k.file {
        file_summary(&file_res, k.file_mib);
    }

    if let Some(o) = ours {
        o.close()?;
    }
    tmp.close()?;
    if std::env::var_os("SCOUTGW_BENCH_DIR").is_none() {
        // Only removes it when empty (no other run is using it).
        let _ = fs::remove_dir(&base);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Our filesystem.

struct Ours {
    fs: Fs,
    /// The client's metadata device handle (its block cache statistics).
    md: Arc<MetaDev>,
    server: Arc<LocalServer>,
    merger: scoutgw_cluster::client::MergerHandle,
    cfg: ServerConfig,
    meta_path: PathBuf,
    data_path: PathBuf,
}

fn open_dev(path: &Path) -> BenchResult<Arc<dyn BlockDevice>> {
    Ok(Arc::new(FileDevice::open(path, DeviceOptions::default())?))
}

impl Ours {
    fn new(dir: &Path, data_bytes: u64) -> BenchResult<Self> {
        let meta_path = dir.join("meta.img");
        let data_path = dir.join("data.img");
        File::create_new(&meta_path)?.set_len(META_BYTES)?;
        File::create_new(&data_path)?.set_len(data_bytes)?;
        let opts = MkfsOptions {
            slots: vec!["0,127.0.0.1,7100".parse()?],
            allow_small_size: true,
            ..MkfsOptions::default()
        };
        mkfs(open_dev(&meta_path)?, open_dev(&data_path)?, &opts)?;
        let data_blocks = data_bytes / 4096;
        let cfg = ServerConfig {
            cache_bytes: CACHE_BYTES,
            // A commit of the 1M-entry directory uses well under 2,000 blocks.
            client_meta_fill: 8_000,
            client_meta_low: 4_000,
            server_meta_high: 8_000,
            // All of the data device: a file of several GiB is written in one transaction, and
            // no refill hands freed (already written) blocks back during the file rounds.
            client_data_fill: data_blocks,
            client_data_low: data_blocks / 16,
            ..ServerConfig::default()
        };
        let server = Arc::new(LocalServer::new(Server::open(
            open_dev(&meta_path)?,
            cfg.clone(),
        )?));
        let md = Arc::new(MetaDev::new(
            open_dev(&meta_path)?,
            server.with(|s| s.fsid()),
            CACHE_BYTES,
        ));
        let fs = Fs::mount(
            md.clone(),
            open_dev(&data_path)?,
            server.clone(),
            Arc::new(LocalLocks::new()),
            1,
            FsOptions {
                item_cache_bytes: CACHE_BYTES as usize,
                ..FsOptions::default()
            },
        )?;
        let merger = server.spawn_merger(MERGE_INTERVAL);
        Ok(Self {
            fs,
            md,
            server,
            merger,
            cfg,
            meta_path,
            data_path,
        })
    }

    /// Block reads (cache hits + misses) of the client so far.
    fn block_reads(&self) -> (u64, u64) {
        let s = self.md.cache_stats();
        (s.hits, s.misses)
    }

    /// The committed forest, in words.
    fn forest(&self) -> BenchResult<String> {
        let (roots, merged) = self.server.with(|s| (s.roots(), s.trees_merged()));
        let logs: Vec<String> = all_log_trees(&self.md, None, &roots.logs_root)?
            .iter()
            .filter(|lt| !lt.item_root.is_empty())
            .map(|lt| {
                format!(
                    "h{}{}",
                    lt.item_root.height,
                    if lt.is_finalized() { " fin" } else { "" }
                )
            })
            .collect();
        Ok(format!(
            "fs_root height {}, {} log tree(s) [{}], {} merged so far",
            roots.fs_root.height,
            logs.len(),
            logs.join(", "),
            merged
        ))
    }

    fn close(self) -> BenchResult<()> {
        let Ours {
            fs,
            md,
            server,
            merger,
            meta_path,
            data_path,
            ..
        } = self;
        drop(merger);
        let items = fs.item_cache_stats();
        fs.unmount()?;
        let stats = md.cache_stats();
        drop(md);
        drop(server);
        println!(
            "ours at the end: client block cache {} hits, {} misses; meta {} MiB and data {} \
             MiB on disk (written blocks, freed ones included)",
            stats.hits,
            stats.misses,
            disk_bytes(&meta_path)? >> 20,
            disk_bytes(&data_path)? >> 20
        );
        println!(
            "ours at the end: item cache {} hits, {} misses, {} fills, {} evictions, {} \
             invalidations; {} items, {} MiB",
            items.hits,
            items.misses,
            items.fills,
            items.evictions,
            items.invalidations,
            items.items,
            items.bytes >> 20
        );
        fs::remove_file(&meta_path)?;
        fs::remove_file(&data_path)?;
        Ok(())
    }
}

fn regular_node() -> NewNode {
    NewNode {
        kind: FileType::Regular,
        perm: 0o644,
        uid: 1000,
        gid: 1000,
        rdev: 0,
    }
}

// ---------------------------------------------------------------------------------------
// Directory operations.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Stat,
    Lookup,
    Readdir,
    Unlink,
}

const OPS: [Op; 5] = [Op::Create, Op::Stat, Op::Lookup, Op::Readdir, Op::Unlink];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Stat => "stat (getattr)",
            Op::Lookup => "lookup",
            Op::Readdir => "readdir",
            Op::Unlink => "unlink",
        }
    }

    /// The anchor's operation for this row: ext4's path stat stands for lookup too.
    fn anchor(self) -> Op {
        match self {
            Op::Lookup => Op::Stat,
            o => o,
        }
    }
}

/// One directory pass: a phase per operation (the anchor has no separate lookup).
#[derive(Clone, Default)]
struct DirResult {
    phases: Vec<(Op, Phase)>,
}

impl DirResult {
    fn get(&self, op: Op) -> Option<&Phase> {
        self.phases.iter().find(|(o, _)| *o == op).map(|(_, p)| p)
    }
}

/// Per operation, the pass with the median wall time.
fn median_dir(passes: &[DirResult]) -> Option<DirResult> {
    let first = passes.first()?;
    let phases = first
        .phases
        .iter()
        .map(|(op, _)| {
            let mut ps: Vec<Phase> = passes.iter().filter_map(|r| r.get(*op)).copied().collect();
            ps.sort_by_key(|p| p.wall);
            (*op, ps[ps.len() / 2])
        })
        .collect();
    Some(DirResult { phases })
}

/// The random orders of one pass (indexes of entries).
struct Orders {
    stat: Vec<u32>,
    lookup: Vec<u32>,
    unlink: Vec<u32>,
}

impl Orders {
    fn new(n: usize, seed: u64) -> Self {
        let mut rng = SplitMix(seed);
        Self {
            stat: permutation(n, &mut rng),
            lookup: permutation(n, &mut rng),
            unlink: permutation(n, &mut rng),
        }
    }
}

fn permutation(n: usize, rng: &mut SplitMix) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// The name of entry `i`: `f` and 8 digits.
fn entry_name(i: usize, out: &mut Vec<u8>) {
    out.clear();
    write!(out, "f{i:08}").expect("write to a Vec");
}

/// The entry index of a name made by `entry_name`.
fn entry_index(name: &[u8], n: usize) -> BenchResult<usize> {
    let bad = || format!("unexpected entry name {:?}", String::from_utf8_lossy(name));
    if name.len() != 9 || name[0] != b'f' {
        return Err(bad().into());
    }
    let i: usize = std::str::from_utf8(&name[1..])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    if i >= n {
        return Err(bad().into());
    }
    Ok(i)
}

/// An empty vector with room for `n` items whose memory has been written once, so filling
/// it in a timed pass takes no page faults.
fn prefaulted<T: Copy + Default>(n: usize) -> Vec<T> {
    // Not `vec![..; n]`: zeroed allocations come as untouched pages.
    let mut v = Vec::with_capacity(n);
    v.resize(n, T::default());
    v.clear();
    v
}

fn dir_ours(
    o: &Ours,
    dname: &str,
    n: usize,
    sync_every: usize,
    ord: &Orders,
) -> BenchResult<DirResult> {
    println!("[ours] directory {dname}: {n} entries");
    let fs = &o.fs;
    let dir = fs.mkdir(ROOT_INO, dname.as_bytes(), 0o755, 0, 0)?.ino;
    fs.sync()?;
    let node = regular_node();
    let mut name = Vec::with_capacity(16);
    let mut inos = vec![0u64; n];
    let mut res = DirResult::default();
    let mut run = |op: Op, f: &mut dyn FnMut() -> BenchResult<()>| -> BenchResult<()> {
        let before = o.block_reads();
        let mut p = phase(n, f)?;
        let after = o.block_reads();
        p.blocks = Some((after.0 - before.0, after.1 - before.1));
        report(op.name(), &p);
        res.phases.push((op, p));
        Ok(())
    };

    run(Op::Create, &mut || {
        for (i, ino) in inos.iter_mut().enumerate() {
            entry_name(i, &mut name);
            let a = fs.create(dir, &name, &node, true)?;
            if a.file_type() != Some(FileType::Regular) || a.size != 0 || a.nlink != 1 {
                return Err(format!("create {i}: unexpected attributes {a:?}").into());
            }
            *ino = a.ino;
            if (i + 1) % sync_every == 0 {
                fs.sync()?;
            }
        }
        fs.sync()?;
        Ok(())
    })?;
    let d = fs.getattr(dir)?;
    if d.size != n as u64 || d.nlink != 2 {
        return Err(format!(
            "after create: dir size {} nlink {}, expected {n} and 2",
            d.size, d.nlink
        )
        .into());
    }
    println!("    after create: {}", o.forest()?);

    run(Op::Stat, &mut || {
        for &i in &ord.stat {
            let ino = inos[i as usize];
            let a = fs.getattr(ino)?;
            if a.ino != ino
                || a.file_type() != Some(FileType::Regular)
                || a.size != 0
                || a.nlink != 1
            {
                return Err(format!("getattr {ino}: unexpected attributes {a:?}").into());
            }
        }
        Ok(())
    })?;

    run(Op::Lookup, &mut || {
        for &i in &ord.lookup {
            entry_name(i as usize, &mut name);
            let a = fs.lookup(dir, &name)?;
            if a.ino != inos[i as usize] {
                return Err(
                    format!("lookup {i}: ino {}, expected {}", a.ino, inos[i as usize]).into(),
                );
            }
        }
        Ok(())
    })?;

    // Timed: the readdir pages, each entry noted (index, ino, cookie, is regular) in a table
    // whose memory is touched beforehand; checked after (the check's random accesses to
    // per-entry tables grow with n and are not the filesystem's).
    let mut listed = prefaulted::<(u32, u64, u64, bool)>(n + 1);
    run(Op::Readdir, &mut || {
        listed.clear();
        let (mut cookie, mut pages) = (0u64, 0usize);
        loop {
            let page = fs.readdir(dir, cookie, READDIR_PAGE)?;
            pages += 1;
            if page.entries.len() > READDIR_PAGE || (!page.eof && page.entries.len() < READDIR_PAGE)
            {
                return Err(format!(
                    "readdir page of {} entries, eof {}",
                    page.entries.len(),
                    page.eof
                )
                .into());
            }
            for e in &page.entries {
                let i = entry_index(&e.name, n)?;
                listed.push((i as u32, e.ino, e.cookie, e.kind == Some(FileType::Regular)));
                cookie = e.cookie;
            }
            if page.eof {
                break;
            }
            if pages > n / READDIR_PAGE + 2 {
                return Err("readdir does not end".into());
            }
        }
        Ok(())
    })?;
    let (mut seen, mut cookie) = (vec![false; n], 0u64);
    for &(i, ino, c, regular) in &listed {
        let i = i as usize;
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!("readdir returned entry {i} twice").into());
        }
        if ino != inos[i] || !regular || c <= cookie {
            return Err(format!("readdir entry {i}: ino {ino}, cookie {c}").into());
        }
        cookie = c;
    }
    if listed.len() != n {
        return Err(format!("readdir: {} entries, expected {n}", listed.len()).into());
    }

    run(Op::Unlink, &mut || {
        for (k, &i) in ord.unlink.iter().enumerate() {
            entry_name(i as usize, &mut name);
            fs.unlink(dir, &name)?;
            if (k + 1) % sync_every == 0 {
                fs.sync()?;
            }
        }
        fs.sync()?;
        Ok(())
    })?;
    let page = fs.readdir(dir, 0, READDIR_PAGE)?;
    let d = fs.getattr(dir)?;
    if !page.entries.is_empty() || !page.eof || d.size != 0 {
        return Err(format!(
            "after unlink: readdir {} entries (eof {}), dir size {}",
            page.entries.len(),
            page.eof,
            d.size
        )
        .into());
    }
    let gone = ord.unlink[0] as usize;
    entry_name(gone, &mut name);
    if fs.getattr(inos[gone]) != Err(FsError::NotFound)
        || fs.lookup(dir, &name) != Err(FsError::NotFound)
    {
        return Err(format!("entry {gone} still found after unlink").into());
    }
    println!("    after unlink: {}", o.forest()?);
    fs.rmdir(ROOT_INO, dname.as_bytes())?;
    fs.sync()?;
    Ok(res)
}

/// One directory of the anchor, filled and measured (create, stat, readdir) but not yet
/// emptied: ext4 here runs without a journal, and then its inode allocator skips inodes
/// deleted less than 60 s ago (300 s more while their inode table block is dirty, which the
/// next creates make it), rescanning the group's bitmap on every create: creates after mass
/// unlinks were 4-10x slower (~100-240 µs instead of ~20 µs). So every anchor directory is
/// filled before any is emptied.
struct Ext4Dir {
    dir: PathBuf,
    dfd: File,
    n: usize,
    sync_every: usize,
    orders: Orders,
    res: DirResult,
}

impl Ext4Dir {
    fn fill(base: &Path, dname: &str, sync_every: usize, orders: Orders) -> BenchResult<Self> {
        let n = orders.stat.len();
        println!("[ext4] directory {dname}: {n} entries");
        let dir = base.join(format!("ext4-{dname}"));
        fs::create_dir(&dir)?;
        let dfd = File::open(&dir)?;
        syncfs(&dfd)?;
        let mut d = Ext4Dir {
            dir,
            dfd,
            n,
            sync_every,
            orders,
            res: DirResult::default(),
        };
        let (dir, dfd, ord) = (&d.dir, &d.dfd, &d.orders);
        let mut path = dir.clone();
        let mut name = Vec::with_capacity(16);

        let p = phase(n, &mut || {
            for i in 0..n {
                ext4_path(&mut path, &mut name, i);
                File::create_new(&path)?;
                path.pop();
                if (i + 1) % sync_every == 0 {
                    syncfs(dfd)?;
                }
            }
            syncfs(dfd)?;
            Ok(())
        })?;
        report(Op::Create.name(), &p);
        d.res.phases.push((Op::Create, p));

        let p = phase(n, &mut || {
            for &i in &ord.stat {
                ext4_path(&mut path, &mut name, i as usize);
                let m = fs::metadata(&path)?;
                path.pop();
                if !m.is_file() || m.len() != 0 || m.nlink() != 1 {
                    return Err(format!("stat {i}: unexpected {m:?}").into());
                }
            }
            Ok(())
        })?;
        report(Op::Stat.name(), &p);
        d.res.phases.push((Op::Stat, p));

        // Timed: reading every entry and its type into a table whose memory is touched
        // beforehand; checked after.
        let mut listed = prefaulted::<(u32, bool)>(n + 1);
        let p = phase(n, &mut || {
            listed.clear();
            for e in fs::read_dir(dir)? {
                let e = e?;
                let i = entry_index(e.file_name().as_encoded_bytes(), n)?;
                listed.push((i as u32, e.file_type()?.is_file()));
            }
            Ok(())
        })?;
        let mut seen = vec![false; n];
        for &(i, is_file) in &listed {
            if std::mem::replace(&mut seen[i as usize], true) || !is_file {
                return Err(format!("read_dir entry {i}: twice or not a file").into());
            }
        }
        if listed.len() != n {
            return Err(format!("read_dir: {} entries, expected {n}", listed.len()).into());
        }
        report(Op::Readdir.name(), &p);
        d.res.phases.push((Op::Readdir, p));
        Ok(d)
    }

    /// Unlink every entry (timed), check the directory is empty and remove it.
    fn unlink_all(mut self) -> BenchResult<DirResult> {
        println!(
            "[ext4] unlink in {}: {} entries",
            self.dir.display(),
            self.n
        );
        let (dfd, sync_every) = (&self.dfd, self.sync_every);
        let mut path = self.dir.clone();
        let mut name = Vec::with_capacity(16);
        let p = phase(self.n, &mut || {
            for (k, &i) in self.orders.unlink.iter().enumerate() {
                ext4_path(&mut path, &mut name, i as usize);
                fs::remove_file(&path)?;
                path.pop();
                if (k + 1) % sync_every == 0 {
                    syncfs(dfd)?;
                }
            }
            syncfs(dfd)?;
            Ok(())
        })?;
        report(Op::Unlink.name(), &p);
        self.res.phases.push((Op::Unlink, p));
        if fs::read_dir(&self.dir)?.next().is_some() {
            return Err("ext4 directory not empty after unlink".into());
        }
        fs::remove_dir(&self.dir)?;
        Ok(self.res)
    }
}

/// What "flat" can mean on this machine: the same random point reads, with a 168-byte value
/// (an inode item) copied out as a stat does, in std's `HashMap` and `BTreeMap` holding as
/// many entries as each directory has inodes, dirents, readdir and backref items (4 per
/// entry). At the small size they sit in the CPU caches, at the big one in DRAM with a TLB
/// miss or two per read: their growth is the part of ours no data structure avoids.
fn memory_anchor(small: usize, big: usize, seed: u64) {
    use std::collections::{BTreeMap, HashMap};
    const ITEMS_PER_ENTRY: usize = 4;
    let mut rng = SplitMix(seed ^ 0xa11c);
    let mut run = |entries: usize| -> (f64, f64) {
        let n = entries * ITEMS_PER_ENTRY;
        let keys: Vec<u64> = (0..n).map(|_| rng.next()).collect();
        let order = permutation(entries, &mut rng);
        let time = |get: &dyn Fn(u64) -> Vec<u8>| {
            let start = Instant::now();
            let mut sum = 0usize;
            for &i in &order {
                sum += get(keys[i as usize * ITEMS_PER_ENTRY]).len();
            }
            assert_eq!(sum, entries * 168);
            start.elapsed().as_secs_f64() * 1e6 / entries as f64
        };
        let hash: HashMap<u64, Vec<u8>> = keys.iter().map(|k| (*k, vec![7u8; 168])).collect();
        let h = time(&|k| hash[&k].clone());
        drop(hash);
        let tree: BTreeMap<u64, Vec<u8>> = keys.iter().map(|k| (*k, vec![7u8; 168])).collect();
        let t = time(&|k| tree[&k].clone());
        (h, t)
    };
    let (hs, ts) = run(small);
    let (hb, tb) = run(big);
    println!(
        "  memory anchor ({} and {} random reads of {} / {} items, a 168-byte value copied \
         out): HashMap {hs:.3} / {hb:.3} µs, growth {:.2}; BTreeMap {ts:.3} / {tb:.3} µs, growth {:.2}",
        short_count(small),
        short_count(big),
        small * 4,
        big * 4,
        hb / hs,
        tb / ts
    );
}

/// `path` (a directory) extended by the name of entry `i`; the caller pops it again.
fn ext4_path(path: &mut PathBuf, name: &mut Vec<u8>, i: usize) {
    entry_name(i, name);
    path.push(std::str::from_utf8(name).expect("ascii"));
}

fn dir_summary(rows: &[(usize, Option<DirResult>, Option<DirResult>)]) {
    let [(small, os, es), (big, ob, eb)] = rows else {
        return;
    };
    let (sm, bg) = (short_count(*small), short_count(*big));
    println!(
        "summary: directory operations; rate in entries/s, cost in µs/entry, \
         growth = µs/entry at {bg} / at {sm} (1.00 = flat), ratio = ours / ext4 rate"
    );
    let head = [
        format!("ours {sm}/s"),
        format!("ours {bg}/s"),
        format!("µs {sm}"),
        format!("µs {bg}"),
        "growth".into(),
        format!("ext4 {sm}/s"),
        format!("ext4 {bg}/s"),
        format!("µs {sm}"),
        format!("µs {bg}"),
        "growth".into(),
        format!("ratio {sm}"),
        format!("ratio {bg}"),
    ];
    println!(
        "  {:<15} {:>11} {:>11} {:>7} {:>7} {:>6} | {:>11} {:>11} {:>7} {:>7} {:>6} | {:>9} {:>9}",
        "op",
        head[0],
        head[1],
        head[2],
        head[3],
        head[4],
        head[5],
        head[6],
        head[7],
        head[8],
        head[9],
        head[10],
        head[11]
    );
    let rate = |p: Option<&Phase>| p.map_or(f64::NAN, Phase::ops_s);
    let us = |p: Option<&Phase>| p.map_or(f64::NAN, |p| p.wall.as_secs_f64() * 1e6 / p.ops as f64);
    for op in OPS {
        let get = |r: &Option<DirResult>, op: Op| r.as_ref().and_then(|r| r.get(op)).copied();
        let (o_s, o_b) = (get(os, op), get(ob, op));
        let (e_s, e_b) = (get(es, op.anchor()), get(eb, op.anchor()));
        let (o_s, o_b, e_s, e_b) = (o_s.as_ref(), o_b.as_ref(), e_s.as_ref(), e_b.as_ref());
        println!(
            "  {:<15} {:>11.0} {:>11.0} {:>7.2} {:>7.2} {:>6.2} | {:>11.0} {:>11.0} {:>7.2} {:>7.2} \
             {:>6.2} | {:>9.3} {:>9.3}",
            op.name(),
            rate(o_s),
            rate(o_b),
            us(o_s),
            us(o_b),
            us(o_b) / us(o_s),
            rate(e_s),
            rate(e_b),
            us(e_s),
            us(e_b),
            us(e_b) / us(e_s),
            rate(o_s) / rate(e_s),
            rate(o_b) / rate(e_b),
        );
    }
    for (label, r) in [(&sm, os), (&bg, ob)] {
        let Some(r) = r else { continue };
        let per_op = |f: &dyn Fn(&Phase) -> Option<String>| -> String {
            r.phases
                .iter()
                .filter_map(|(op, p)| f(p).map(|v| format!("{} {v}", op.name())))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "  ours {label}: metadata block reads per entry (cache misses): {}",
            per_op(&|p| p.blocks.map(|(h, m)| {
                format!(
                    "{:.1} ({:.3})",
                    (h + m) as f64 / p.ops as f64,
                    m as f64 / p.ops as f64
                )
            }))
        );
        println!(
            "  ours {label}: bytes written per entry (by the merger thread): {}",
            per_op(&|p| (p.cpu.wchar > 0).then(|| {
                let n = p.ops as f64;
                format!(
                    "{:.0} ({:.0})",
                    p.cpu.wchar as f64 / n,
                    p.cpu.merger_wchar as f64 / n
                )
            }))
        );
        println!(
            "  ours {label}: process CPU (both threads) / wall, phases over 0.5 s: {}",
            per_op(&|p| (p.wall.as_secs_f64() >= 0.5)
                .then(|| format!("{:.0}%", p.cpu_share() * 100.0)))
        );
    }
    println!("  (lookup: the ext4 columns are its path stat, which is a lookup plus a stat)");
    let slow_create = [es, eb]
        .iter()
        .filter_map(|r| r.as_ref().and_then(|r| r.get(Op::Create)))
        .any(|p| p.wall.as_secs_f64() * 1e6 / p.ops as f64 > 60.0);
    if slow_create {
        println!(
            "  WARNING: ext4 creates took over 60 µs each: probably its rescan of inodes deleted \
             in the last minutes (mass unlinks of an earlier run?); leave ~6 minutes between runs"
        );
    }
    println!();
}

/// 10000 -> "10k", 1000000 -> "1M".
fn short_count(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// Sequential file I/O.

/// 8 pseudo-random 1 MiB chunks; chunk `c` of a file is `pool[c % 8]` with `c` stamped into
/// its first and last 8 bytes.
struct Pool(Vec<Vec<u8>>);

impl Pool {
    fn new(seed: u64) -> Self {
        let mut rng = SplitMix(seed ^ 0xf11e);
        Pool(
            (0..8)
                .map(|_| {
                    (0..CHUNK / 8)
                        .flat_map(|_| rng.next().to_le_bytes())
                        .collect()
                })
                .collect(),
        )
    }

    fn fill(&self, c: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.0[c % 8]);
        let stamp = (c as u64).to_le_bytes();
        buf[..8].copy_from_slice(&stamp);
        buf[CHUNK - 8..].copy_from_slice(&stamp);
    }

    fn check(&self, c: usize, got: &[u8]) -> BenchResult<()> {
        let want = &self.0[c % 8];
        let stamp = (c as u64).to_le_bytes();
        if got.len() != CHUNK
            || got[..8] != stamp
            || got[CHUNK - 8..] != stamp
            || got[8..CHUNK - 8] != want[8..CHUNK - 8]
        {
            return Err(format!("chunk {c}: wrong content ({} bytes)", got.len()).into());
        }
        Ok(())
    }
}

#[derive(Default)]
struct FileRound {
    ours: Option<(Phase, Phase)>,
    plain: Option<(Phase, Phase)>,
}

fn file_ours(o: &Ours, pool: &Pool, mib: usize, round: usize) -> BenchResult<(Phase, Phase)> {
    println!("[ours] file round {round}: {mib} MiB");
    let fs = &o.fs;
    let name = format!("big-{round}");
    let ino = fs
        .create(ROOT_INO, name.as_bytes(), &regular_node(), true)?
        .ino;
    fs.sync()?;
    let mut buf = vec![0u8; CHUNK];
    let write = phase_bytes(mib, || {
        for c in 0..mib {
            pool.fill(c, &mut buf);
            fs.write(ino, (c * CHUNK) as u64, &buf)?;
        }
        fs.sync()?;
        Ok(())
    })?;
    report("write + sync", &write);
    let a = fs.getattr(ino)?;
    let blocks = (mib * CHUNK / 4096) as u64;
    if a.size != (mib * CHUNK) as u64 || a.online_blocks != blocks {
        return Err(format!(
            "after write: size {} online blocks {}",
            a.size, a.online_blocks
        )
        .into());
    }
    println!(
        "  data device file: {} MiB written on the disk so far",
        disk_bytes(&o.data_path)? >> 20
    );
    drop_cache("ours: data device file", &o.data_path)?;
    let read = phase_bytes(mib, || {
        for c in 0..mib {
            let got = fs.read(ino, (c * CHUNK) as u64, CHUNK)?;
            pool.check(c, &got)?;
        }
        if !fs.read(ino, (mib * CHUNK) as u64, CHUNK)?.is_empty() {
            return Err("read past the end returned data".into());
        }
        Ok(())
    })?;
    report("read", &read);
    // Every round starts without either side's file in the page cache.
    fadvise_dontneed(&File::open(&o.data_path)?)?;
    fs.unlink(ROOT_INO, name.as_bytes())?;
    fs.sync()?;
    Ok((write, read))
}

fn file_plain(dir: &Path, pool: &Pool, mib: usize, round: usize) -> BenchResult<(Phase, Phase)> {
    println!("[plain] file round {round}: {mib} MiB");
    let path = dir.join(format!("plain-{round}.bin"));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let mut buf = vec![0u8; CHUNK];
    let write = phase_bytes(mib, || {
        for c in 0..mib {
            pool.fill(c, &mut buf);
            f.write_all_at(&buf, (c * CHUNK) as u64)?;
        }
        f.sync_data()?;
        Ok(())
    })?;
    report("write_all_at + sync_data", &write);
    drop_cache("plain file", &path)?;
    let read = phase_bytes(mib, || {
        for c in 0..mib {
            f.read_exact_at(&mut buf, (c * CHUNK) as u64)?;
            pool.check(c, &buf)?;
        }
        Ok(())
    })?;
    report("read_exact_at", &read);
    fadvise_dontneed(&f)?;
    // Kept until the end: deleting it would discard its blocks (this ext4 is mounted with
    // `discard`) while the next rounds run; ours frees nothing on the disk either.
    Ok((write, read))
}

fn file_summary(rounds: &[FileRound], mib: usize) {
    println!(
        "summary: sequential file I/O, {mib} MiB in 1 MiB chunks (MiB/s; ratio = ours / plain)"
    );
    println!(
        "  {:<8} {:>10} {:>10} {:>7} | {:>10} {:>10} {:>7}",
        "round", "ours wr", "plain wr", "ratio", "ours rd", "plain rd", "ratio"
    );
    let mbs = |p: Option<&Phase>| p.map_or(f64::NAN, Phase::ops_s);
    let row = |label: &str, ow: f64, pw: f64, or: f64, pr: f64| {
        println!(
            "  {label:<8} {ow:>10.0} {pw:>10.0} {:>7.2} | {or:>10.0} {pr:>10.0} {:>7.2}",
            ow / pw,
            or / pr
        );
    };
    for (i, r) in rounds.iter().enumerate() {
        row(
            &format!("{i}"),
            mbs(r.ours.as_ref().map(|p| &p.0)),
            mbs(r.plain.as_ref().map(|p| &p.0)),
            mbs(r.ours.as_ref().map(|p| &p.1)),
            mbs(r.plain.as_ref().map(|p| &p.1)),
        );
    }
    let median = |f: &dyn Fn(&FileRound) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    row(
        "median",
        median(&|r| mbs(r.ours.as_ref().map(|p| &p.0))),
        median(&|r| mbs(r.plain.as_ref().map(|p| &p.0))),
        median(&|r| mbs(r.ours.as_ref().map(|p| &p.1))),
        median(&|r| mbs(r.plain.as_ref().map(|p| &p.1))),
    );
    println!();
}

/// Drop `path`'s pages from the page cache (they are clean after the sync).
fn drop_cache(what: &str, path: &Path) -> BenchResult<()> {
    let before = meminfo_cached();
    let f = File::open(path)?;
    fadvise_dontneed(&f)?;
    let after = meminfo_cached();
    println!(
        "  posix_fadvise(DONTNEED) on the {what}: page cache {} -> {} MiB",
        before >> 20,
        after >> 20
    );
    Ok(())
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn fadvise_dontneed(f: &File) -> BenchResult<()> {
    use std::os::fd::AsRawFd;
    use std::os::raw::c_int;
    // From the C library std already links; off_t is 64 bits on 64-bit Linux.
    extern "C" {
        fn posix_fadvise(fd: c_int, offset: i64, len: i64, advice: c_int) -> c_int;
    }
    const POSIX_FADV_DONTNEED: c_int = 4;
    // SAFETY: a valid open descriptor; the call only advises the kernel.
    let rc = unsafe { posix_fadvise(f.as_raw_fd(), 0, 0, POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(format!("posix_fadvise: {}", std::io::Error::from_raw_os_error(rc)).into());
    }
    Ok(())
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn fadvise_dontneed(_f: &File) -> BenchResult<()> {
    println!("  (no posix_fadvise binding on this target: reads may come from the page cache)");
    Ok(())
}

/// `syncfs(2)` on the filesystem holding `f`: every dirty inode, directory and bitmap block
/// written and the device cache flushed (ext4 without a journal: `fsync` of a directory would
/// not write the inodes of the files created in it).
fn syncfs(f: &File) -> BenchResult<()> {
    use std::os::fd::AsRawFd;
    use std::os::raw::c_int;
    extern "C" {
        fn syncfs(fd: c_int) -> c_int;
    }
    // SAFETY: a valid open descriptor.
    if unsafe { syncfs(f.as_raw_fd()) } != 0 {
        return Err(format!("syncfs: {}", std::io::Error::last_os_error()).into());
    }
    Ok(())
}

/// "Cached:" of /proc/meminfo, bytes (0 if unknown).
fn meminfo_cached() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cached:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb << 10)
}

// ---------------------------------------------------------------------------------------
// Timing and output.

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

/// Wall time, CPU time and bytes written by one phase.
#[derive(Clone, Copy, Default)]
struct Phase {
    wall: Duration,
    ops: u64,
    cpu: Usage,
    /// Ours: metadata block reads of the client (cache hits, misses).
    blocks: Option<(u64, u64)>,
}

impl Phase {
    fn ops_s(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64()
    }

    fn cpu_share(&self) -> f64 {
        (self.cpu.user + self.cpu.sys).as_secs_f64() / self.wall.as_secs_f64()
    }
}

/// Run `f` as one timed phase of `ops` operations.
fn phase(ops: usize, f: &mut dyn FnMut() -> BenchResult<()>) -> BenchResult<Phase> {
    let (start, cpu) = (Instant::now(), Usage::now());
    f()?;
    Ok(Phase {
        wall: start.elapsed(),
        ops: ops as u64,
        cpu: Usage::since(cpu),
        blocks: None,
    })
}

/// A phase moving `mib` MiB (its rate is MiB/s).
fn phase_bytes(mib: usize, mut f: impl FnMut() -> BenchResult<()>) -> BenchResult<Phase> {
    phase(mib, &mut f)
}

fn report(what: &str, p: &Phase) {
    let blocks = p.blocks.map_or(String::new(), |(h, m)| {
        format!(
            "; {:.1} block reads/op ({:.3} misses)",
            (h + m) as f64 / p.ops as f64,
            m as f64 / p.ops as f64
        )
    });
    println!(
        "  {what:<26} {:>10.0} /s {:>8.2} µs/op {:>8.2} s; cpu {}{blocks}",
        p.ops_s(),
        p.wall.as_secs_f64() * 1e6 / p.ops as f64,
        p.wall.as_secs_f64(),
        p.cpu
    );
}

/// User and system CPU time of this process, and bytes it wrote through syscalls.
#[derive(Clone, Copy, Default)]
struct Usage {
    user: Duration,
    sys: Duration,
    /// `wchar` of /proc/self/io: bytes passed to write-type syscalls.
    wchar: u64,
    /// The same three for the background merger thread alone (included in the above).
    merger_user: Duration,
    merger_sys: Duration,
    merger_wchar: u64,
}

/// User time, system time and `wchar` of a process or thread directory under /proc.
fn proc_usage(dir: &Path) -> (Duration, Duration, u64) {
    let wchar = fs::read_to_string(dir.join("io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat, in clock ticks (USER_HZ, 100 on Linux);
    // the command name (field 2) may hold spaces, so count after its ')'.
    let ticks = fs::read_to_string(dir.join("stat")).ok().and_then(|s| {
        let rest = &s[s.rfind(')')? + 1..];
        let mut f = rest.split_whitespace().skip(11);
        Some((
            f.next()?.parse::<u64>().ok()?,
            f.next()?.parse::<u64>().ok()?,
        ))
    });
    let (utime, stime) = ticks.unwrap_or((0, 0));
    (
        Duration::from_millis(utime * 10),
        Duration::from_millis(stime * 10),
        wchar,
    )
}

/// The /proc directory of this process's background merger thread, if it runs.
fn merger_task() -> Option<PathBuf> {
    fs::read_dir("/proc/self/task").ok()?.find_map(|e| {
        let dir = e.ok()?.path();
        let comm = fs::read_to_string(dir.join("comm")).ok()?;
        (comm.trim() == "scoutgw-merge").then_some(dir)
    })
}

impl Usage {
    fn now() -> Self {
        let (user, sys, wchar) = proc_usage(Path::new("/proc/self"));
        let (merger_user, merger_sys, merger_wchar) =
            merger_task().map_or((Duration::ZERO, Duration::ZERO, 0), |d| proc_usage(&d));
        Self {
            user,
            sys,
            wchar,
            merger_user,
            merger_sys,
            merger_wchar,
        }
    }

    fn since(start: Self) -> Self {
        let now = Self::now();
        Self {
            user: now.user.saturating_sub(start.user),
            sys: now.sys.saturating_sub(start.sys),
            wchar: now.wchar.saturating_sub(start.wchar),
            merger_user: now.merger_user.saturating_sub(start.merger_user),
            merger_sys: now.merger_sys.saturating_sub(start.merger_sys),
            merger_wchar: now.merger_wchar.saturating_sub(start.merger_wchar),
        }
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "{:.2}u+{:.2}s, wrote {:.0} MiB",
            self.user.as_secs_f64(),
            self.sys.as_secs_f64(),
            mib(self.wchar)
        )?;
        if !(self.merger_user + self.merger_sys).is_zero() || self.merger_wchar > 0 {
            write!(
                f,
                " (of which merger thread {:.2}u+{:.2}s, {:.0} MiB)",
                self.merger_user.as_secs_f64(),
                self.merger_sys.as_secs_f64(),
                mib(self.merger_wchar)
            )?;
        }
        Ok(())
    }
}

/// Bytes a (sparse) file takes on disk.
fn disk_bytes(path: &Path) -> BenchResult<u64> {
    Ok(fs::metadata(path)?.blocks() * 512)
}

/// Default base directory: `<target dir>/bench-tmp`, found from the bench executable's path
/// (`<target>/release/deps/fs_ops-*`), so the files land on the disk holding the build, not
/// in /tmp (which may be tmpfs). Falls back to `./target/bench-tmp`.
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
            .replace('_', "")
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a number").into()),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => Err(format!("{name}: {e}").into()),
    }
}
