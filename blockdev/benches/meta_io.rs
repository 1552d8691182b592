//! Metadata block I/O through `scoutgw-blockdev` against plain `pwrite`/`pread` (issue 2).
//!
//! Run with `cargo bench -p scoutgw-blockdev --bench meta_io`. For each of buffered and
//! `O_DIRECT` mode this writes `SCOUTGW_BENCH_MIB` MiB (default 1024) of 64 KiB blocks:
//!
//! * **blockdev**: `MetaDev::write_block` (sealed with crc32c) with sequential blknos, then
//!   `MetaDev::flush`, then `MetaDev::read_ref` of every block (header and crc verified) with
//!   the block cache disabled, so every read goes to the device;
//! * **plain**: the same bytes with `FileExt::write_all_at` in 64 KiB chunks, `sync_data`, then
//!   `read_exact_at` of every chunk: the device-limit anchor.
//!
//! Writes are timed including the flush. In buffered mode the file's pages are dropped
//! (`posix_fadvise(DONTNEED)`) before the read pass, and the read pass is then repeated from
//! the page cache ("hot read", CPU-bound) to show blockdev's CPU cost on its own. A short
//! in-memory measurement of the per-block CPU work (copy, allocation, seal, verify) is
//! printed first.
//!
//! It prints MiB/s of each and the ratios blockdev/plain. The files live in a temporary
//! directory under `<target dir>/bench-tmp` (or under `SCOUTGW_BENCH_DIR`) and are removed
//! at the end. `SCOUTGW_BENCH_ROUNDS` (default 2) sets how many times each pair is run; the
//! order alternates between rounds; the best and the median of the rounds are reported.
//! `SCOUTGW_BENCH_MODE` = `buffered`, `direct` or `both` (default) selects the modes.

use std::error::Error;
use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scoutgw_blockdev::header::{seal, verify, Expect};
use scoutgw_blockdev::{
    BlockBuf, BlockKind, BlockRef, BlockSize, DeviceOptions, FileDevice, MetaDev,
};

type BenchResult<T> = Result<T, Box<dyn Error>>;

const BLOCK: usize = BlockSize::Large.bytes();
const MIB: u64 = 1 << 20;
const FSID: u64 = 0x5c0f_be9c_0000_0002;
const KIND: BlockKind = BlockKind {
    name: "bench",
    magic: 0x5c0f_b002,
    size: BlockSize::Large,
};
/// Block cache capacity of the `MetaDev`: disabled, so every `read_ref` reads the device.
const CACHE_BYTES: u64 = 0;
/// Distinct pseudo-random 64 KiB block bodies the written data cycles through.
const POOL_BLOCKS: usize = 64;
/// Where each block carries its own blkno (first body word, and the last word), so reads can
/// check they got the right block. Offset 32 is just past the 32-byte block header.
const STAMP_HEAD: usize = 32;
const STAMP_TAIL: usize = BLOCK - 8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Buffered,
    Direct,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Buffered => "buffered",
            Mode::Direct => "O_DIRECT",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Plain,
    Blockdev,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Plain => "plain",
            Side::Blockdev => "blockdev",
        }
    }
}

/// Times of one write pass (the writes, then the final flush) and one read pass.
#[derive(Clone, Copy)]
struct Pass {
    /// Wall time of the writes and the flush.
    write: Duration,
    /// Wall time of the flush (`sync_data`) alone.
    flush: Duration,
    /// CPU time of this process during the write pass.
    write_cpu: Cpu,
    /// The read pass after the flush (buffered mode: after dropping the file's pages).
    read: Duration,
    read_cpu: Cpu,
    /// Buffered mode only: the reads once more, now from the page cache the read pass filled.
    /// CPU-bound: shows blockdev's per-block CPU cost against the kernel's copy alone.
    hot_read: Option<(Duration, Cpu)>,
}

/// User and system CPU time and page faults of this process (not of kernel writeback
/// threads).
#[derive(Clone, Copy, Default)]
struct Cpu {
    user: Duration,
    sys: Duration,
    minflt: u64,
}

impl Cpu {
    fn now() -> Self {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
        // SAFETY: getrusage writes one `struct rusage` through the pointer, which points at
        // properly sized and aligned stack memory that lives across the call.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
        if rc != 0 {
            return Self::default();
        }
        // SAFETY: getrusage returned 0, so it filled in the whole struct.
        let ru = unsafe { ru.assume_init() };
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        Self {
            user: tv(ru.ru_utime),
            sys: tv(ru.ru_stime),
            minflt: ru.ru_minflt as u64,
        }
    }

    fn since(start: Self) -> Self {
        let now = Self::now();
        Self {
            user: now.user.saturating_sub(start.user),
            sys: now.sys.saturating_sub(start.sys),
            minflt: now.minflt.saturating_sub(start.minflt),
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2}u+{:.2}s, {} faults",
            self.user.as_secs_f64(),
            self.sys.as_secs_f64(),
            self.minflt
        )
    }
}

struct Bench {
    dir: PathBuf,
    blocks: u64,
    pool: Vec<BlockBuf>,
    /// Drop the file's pages from the page cache between the write and the read pass.
    fadvise: bool,
}

fn main() -> BenchResult<()> {
    let mib: u64 = env_num("SCOUTGW_BENCH_MIB", 1024)?;
    let rounds: u32 = env_num("SCOUTGW_BENCH_ROUNDS", 2)?;
    if mib == 0 || rounds == 0 {
        return Err("SCOUTGW_BENCH_MIB and SCOUTGW_BENCH_ROUNDS must be positive".into());
    }
    let blocks = mib * MIB / BLOCK as u64;
    let modes = match std::env::var("SCOUTGW_BENCH_MODE").as_deref() {
        Err(_) | Ok("both") => vec![Mode::Buffered, Mode::Direct],
        Ok("buffered") => vec![Mode::Buffered],
        Ok("direct") => vec![Mode::Direct],
        Ok(other) => {
            return Err(
                format!("SCOUTGW_BENCH_MODE={other:?}: expected buffered, direct or both").into(),
            )
        }
    };

    let base = match std::env::var_os("SCOUTGW_BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => default_base_dir(),
    };
    fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new()
        .prefix("meta_io-")
        .tempdir_in(&base)?;
    let dir = tmp.path().to_path_buf();

    println!("meta_io: 64 KiB metadata blocks, blockdev (MetaDev) vs plain pwrite/pread");
    println!(
        "  data:   {mib} MiB = {blocks} blocks of {BLOCK} bytes per pass, each built by copying \
         its body from a pool of {POOL_BLOCKS} pseudo-random blocks and stamping its blkno \
         (plain: into one reused aligned buffer; blockdev: into a fresh BlockBuf per block, \
         as write_block takes ownership)"
    );
    println!("  dir:    {} ({})", dir.display(), fs_type(&dir));
    println!(
        "  cpus:   {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  cache:  MetaDev block cache capacity {CACHE_BYTES} bytes (disabled): every \
         read_ref reads and verifies the block from the device"
    );
    println!(
        "  timing: write = all writes + flush/sync_data; read = all reads (blockdev: read_ref \
         with header + crc32c verification; both: blkno stamp checked)"
    );
    println!(
        "  fair:   {rounds} round(s) per mode after one unmeasured warm-up pass; order \
         alternates (round 1 plain first, round 2 blockdev first, ...); best and median of the \
         rounds reported"
    );
    println!(
        "  buffered read pass: posix_fadvise(DONTNEED) on the whole file after the flush, so \
         reads come from the device (with kernel readahead), not the page cache"
    );
    println!();

    let mut bench = Bench {
        dir,
        blocks,
        pool: make_pool(),
        fadvise: true,
    };

    cpu_breakdown(&bench.pool);

    let mut summary = Vec::new();
    for mode in modes {
        if mode == Mode::Direct {
            if let Err(e) = probe_direct(&bench.dir) {
                println!(
                    "[{}] skipped: O_DIRECT does not work in {}: {e}",
                    mode.name(),
                    bench.dir.display()
                );
                println!();
                continue;
            }
        }
        bench.fadvise = mode == Mode::Buffered;
        summary.push((mode, run_mode(&bench, mode, rounds)?));
    }

    println!("summary (MiB/s over {rounds} round(s); ratio = blockdev / plain, target >= 0.8):");
    println!(
        "  {:<9} {:<6} {:>14} {:>11} {:>7} {:>14} {:>11} {:>7}",
        "mode",
        "stat",
        "blockdev write",
        "plain write",
        "ratio",
        "blockdev read",
        "plain read",
        "ratio"
    );
    let mut notes = Vec::new();
    for (mode, [bd, plain]) in &summary {
        for (stat, pick) in [("best", Stat::Best), ("median", Stat::Median)] {
            let bw = pick.of(bd.iter().map(|p| mib_s(mib, p.write)));
            let pw = pick.of(plain.iter().map(|p| mib_s(mib, p.write)));
            let br = pick.of(bd.iter().map(|p| mib_s(mib, p.read)));
            let pr = pick.of(plain.iter().map(|p| mib_s(mib, p.read)));
            println!(
                "  {:<9} {:<6} {:>14.0} {:>11.0} {:>7.2} {:>14.0} {:>11.0} {:>7.2}",
                mode.name(),
                stat,
                bw,
                pw,
                bw / pw,
                br,
                pr,
                br / pr
            );
            for (what, ratio) in [("write", bw / pw), ("read", br / pr)] {
                if ratio < 0.8 {
                    notes.push(format!(
                        "  NOTE: {} {what} ratio ({stat}) {ratio:.3} is below the 0.8 target",
                        mode.name()
                    ));
                }
            }
        }
    }
    let hot: Vec<_> = summary
        .iter()
        .filter(|(_, [bd, _])| bd.iter().all(|p| p.hot_read.is_some()))
        .collect();
    if !hot.is_empty() {
        println!(
            "  page-cache-hot reads (buffered, read pass repeated without dropping the cache; \
             CPU-bound, not the device):"
        );
        let hot_mib_s = |p: &Pass| p.hot_read.map_or(f64::NAN, |(d, _)| mib_s(mib, d));
        for (mode, [bd, plain]) in hot {
            for (stat, pick) in [("best", Stat::Best), ("median", Stat::Median)] {
                let b = pick.of(bd.iter().map(hot_mib_s));
                let p = pick.of(plain.iter().map(hot_mib_s));
                println!(
                    "  {:<9} {:<6} {:>14} {:>11} {:>7} {:>14.0} {:>11.0} {:>7.2}",
                    mode.name(),
                    stat,
                    "",
                    "",
                    "",
                    b,
                    p,
                    b / p
                );
            }
        }
    }
    for n in notes {
        println!("{n}");
    }

    tmp.close()?;
    if std::env::var_os("SCOUTGW_BENCH_DIR").is_none() {
        // Only removes it when empty (no other run is using it).
        let _ = fs::remove_dir(&base);
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Stat {
    Best,
    Median,
}

impl Stat {
    fn of(self, xs: impl Iterator<Item = f64>) -> f64 {
        let mut v: Vec<f64> = xs.collect();
        v.sort_by(f64::total_cmp);
        match self {
            Stat::Best => v.last().copied().unwrap_or(f64::NAN),
            Stat::Median if v.is_empty() => f64::NAN,
            Stat::Median if v.len() % 2 == 1 => v[v.len() / 2],
            Stat::Median => (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0,
        }
    }
}

/// Runs `rounds` rounds of the plain/blockdev pair in `mode`; returns every pass as
/// `[blockdev passes, plain passes]`.
fn run_mode(bench: &Bench, mode: Mode, rounds: u32) -> BenchResult<[Vec<Pass>; 2]> {
    println!("[{}]", mode.name());
    // The first pass over fresh space is slow on thin-provisioned (virtual) disks whatever
    // writes it; one unmeasured pass makes the rounds comparable.
    let warm = bench.plain_pass(mode, u32::MAX)?;
    println!(
        "  warm-up (plain, not counted): write {:.0} MiB/s, read {:.0} MiB/s",
        mib_s(bench.blocks * BLOCK as u64 / MIB, warm.write),
        mib_s(bench.blocks * BLOCK as u64 / MIB, warm.read)
    );
    let mut passes: [Vec<Pass>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Side::Plain, Side::Blockdev]
        } else {
            [Side::Blockdev, Side::Plain]
        };
        for which in order {
            let pass = match which {
                Side::Plain => bench.plain_pass(mode, round)?,
                Side::Blockdev => bench.blockdev_pass(mode, round)?,
            };
            let mib = bench.blocks * BLOCK as u64 / MIB;
            println!(
                "  round {} {:<8}  write {:>5.0} MiB/s ({:.2} s = {:.2} writes + {:.2} flush; \
                 cpu {})   read {:>5.0} MiB/s ({:.2} s; cpu {})",
                round + 1,
                which.name(),
                mib_s(mib, pass.write),
                pass.write.as_secs_f64(),
                (pass.write - pass.flush).as_secs_f64(),
                pass.flush.as_secs_f64(),
                pass.write_cpu,
                mib_s(mib, pass.read),
                pass.read.as_secs_f64(),
                pass.read_cpu,
            );
            if let Some((hot, hot_cpu)) = pass.hot_read {
                println!(
                    "  {:19} hot read (page cache) {:>5.0} MiB/s ({:.2} s; cpu {hot_cpu})",
                    "",
                    mib_s(mib, hot),
                    hot.as_secs_f64()
                );
            }
            passes[usize::from(which == Side::Plain)].push(pass);
        }
    }
    println!();
    Ok(passes)
}

impl Bench {
    fn file_path(&self, name: &str, mode: Mode, round: u32) -> PathBuf {
        let m = if mode == Mode::Direct {
            "direct"
        } else {
            "buffered"
        };
        if round == u32::MAX {
            return self.dir.join(format!("warmup-{m}.img"));
        }
        self.dir.join(format!("{name}-{m}-{round}.img"))
    }

    fn bytes(&self) -> u64 {
        self.blocks * BLOCK as u64
    }

    /// Plain positional I/O on a file: the device-limit anchor.
    fn plain_pass(&self, mode: Mode, round: u32) -> BenchResult<Pass> {
        let path = self.file_path("plain", mode, round);
        let mut oo = OpenOptions::new();
        oo.read(true).write(true).create_new(true);
        if mode == Mode::Direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = oo.open(&path)?;
        file.set_len(self.bytes())?;

        // One aligned buffer, reused: each block is built in it (its body copied from the
        // pool, then stamped), as a caller of pwrite would build a block before writing it.
        let mut buf = BlockBuf::zeroed(BLOCK);
        let (start, cpu) = (Instant::now(), Cpu::now());
        for blkno in 0..self.blocks {
            buf.as_mut_slice()
                .copy_from_slice(self.pool[blkno as usize % POOL_BLOCKS].as_slice());
            stamp(buf.as_mut_slice(), blkno);
            file.write_all_at(buf.as_slice(), blkno * BLOCK as u64)?;
        }
        let flush_start = Instant::now();
        file.sync_data()?;
        let (write, flush, write_cpu) = (start.elapsed(), flush_start.elapsed(), Cpu::since(cpu));

        if self.fadvise {
            drop_page_cache(&file)?;
        }

        let mut read_all = || -> BenchResult<()> {
            for blkno in 0..self.blocks {
                file.read_exact_at(buf.as_mut_slice(), blkno * BLOCK as u64)?;
                check_stamp(buf.as_slice(), blkno)?;
            }
            Ok(())
        };
        let (read, read_cpu) = timed(&mut read_all)?;
        let hot_read = match mode {
            Mode::Buffered => Some(timed(&mut read_all)?),
            Mode::Direct => None,
        };

        drop(file);
        fs::remove_file(&path)?;
        Ok(Pass {
            write,
            flush,
            write_cpu,
            read,
            read_cpu,
            hot_read,
        })
    }

    /// The same bytes through `MetaDev::write_block` / `MetaDev::read_ref`.
    fn blockdev_pass(&self, mode: Mode, round: u32) -> BenchResult<Pass> {
        let path = self.file_path("blockdev", mode, round);
        // FileDevice takes its size when opened: make the file first.
        File::create_new(&path)?.set_len(self.bytes())?;
        let dev = FileDevice::open(
            &path,
            DeviceOptions {
                read_only: false,
                direct: mode == Mode::Direct,
            },
        )?;
        let meta = MetaDev::new(Arc::new(dev), FSID, CACHE_BYTES);

        let (start, cpu) = (Instant::now(), Cpu::now());
        for blkno in 0..self.blocks {
            // The same building work as the plain pass, but write_block takes an owned buffer
            // (it keeps it as the cached block), so each block is built in a fresh BlockBuf:
            // allocating (and zeroing) it is a cost of the API.
            let mut buf = BlockBuf::from_slice(self.pool[blkno as usize % POOL_BLOCKS].as_slice());
            stamp(buf.as_mut_slice(), blkno);
            meta.write_block(KIND, blkno, seq_of(blkno), buf)?;
        }
        let flush_start = Instant::now();
        meta.flush()?;
        let (write, flush, write_cpu) = (start.elapsed(), flush_start.elapsed(), Cpu::since(cpu));

        if self.fadvise {
            drop_page_cache(&File::open(&path)?)?;
        }

        let read_all = || -> BenchResult<()> {
            for blkno in 0..self.blocks {
                let block = meta.read_ref(KIND, BlockRef::new(blkno, seq_of(blkno)))?;
                check_stamp(block.data.as_slice(), blkno)?;
            }
            Ok(())
        };
        let (read, read_cpu) = timed(read_all)?;
        let hot_read = match mode {
            Mode::Buffered => Some(timed(read_all)?),
            Mode::Direct => None,
        };

        let stats = meta.cache_stats();
        let reads = self.blocks * if hot_read.is_some() { 2 } else { 1 };
        if stats.hits != 0 || stats.misses != reads {
            return Err(format!(
                "expected every read_ref to miss the disabled cache, got {stats:?}"
            )
            .into());
        }
        drop(meta);
        fs::remove_file(&path)?;
        Ok(Pass {
            write,
            flush,
            write_cpu,
            read,
            read_cpu,
            hot_read,
        })
    }
}

/// Wall and CPU time of `f`.
fn timed(mut f: impl FnMut() -> BenchResult<()>) -> BenchResult<(Duration, Cpu)> {
    let (start, cpu) = (Instant::now(), Cpu::now());
    f()?;
    Ok((start.elapsed(), Cpu::since(cpu)))
}

/// The version each block is written as (any value works; not all the same).
fn seq_of(blkno: u64) -> u64 {
    1 + blkno % 1000
}

fn stamp(block: &mut [u8], blkno: u64) {
    block[STAMP_HEAD..STAMP_HEAD + 8].copy_from_slice(&blkno.to_le_bytes());
    block[STAMP_TAIL..].copy_from_slice(&blkno.to_le_bytes());
}

fn check_stamp(block: &[u8], blkno: u64) -> BenchResult<()> {
    let want = blkno.to_le_bytes();
    if block[STAMP_HEAD..STAMP_HEAD + 8] != want || block[STAMP_TAIL..] != want {
        return Err(format!("block {blkno}: read back the wrong bytes").into());
    }
    Ok(())
}

/// `POOL_BLOCKS` aligned blocks of xorshift64* output: incompressible, all different.
fn make_pool() -> Vec<BlockBuf> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..POOL_BLOCKS)
        .map(|_| {
            let mut b = BlockBuf::zeroed(BLOCK);
            for w in b.as_mut_slice().chunks_exact_mut(8) {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                w.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
            }
            b
        })
        .collect()
}

/// Drop the (clean, just flushed) pages of `file` from the page cache.
fn drop_page_cache(file: &File) -> io::Result<()> {
    // SAFETY: posix_fadvise only reads its integer arguments and acts on the open file
    // description of `fd`, which `file` owns and keeps open for the duration of the call;
    // no memory of ours is passed.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Open, write and read back one aligned block with O_DIRECT (fails on tmpfs, for one).
fn probe_direct(dir: &Path) -> io::Result<()> {
    let path = dir.join("odirect-probe");
    let res = (|| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        let mut buf = BlockBuf::zeroed(BLOCK);
        file.write_all_at(buf.as_slice(), 0)?;
        file.read_exact_at(buf.as_mut_slice(), 0)
    })();
    let _ = fs::remove_file(&path);
    res
}

/// CPU cost of the per-block work blockdev adds, measured in memory (no I/O).
fn cpu_breakdown(pool: &[BlockBuf]) {
    const N: usize = 4096;
    let per_block = |d: Duration| d.as_nanos() as f64 / N as f64;
    let gib_s = |ns: f64| BLOCK as f64 / ns / 1.073_741_824;

    let mut dst = BlockBuf::zeroed(BLOCK);
    let start = Instant::now();
    for i in 0..N {
        dst.as_mut_slice()
            .copy_from_slice(black_box(pool[i % POOL_BLOCKS].as_slice()));
        black_box(&mut dst);
    }
    let copy = per_block(start.elapsed());

    let start = Instant::now();
    for _ in 0..N {
        black_box(BlockBuf::zeroed(black_box(BLOCK)));
    }
    let zeroed = per_block(start.elapsed());

    let start = Instant::now();
    for i in 0..N {
        black_box(BlockBuf::from_slice(black_box(
            pool[i % POOL_BLOCKS].as_slice(),
        )));
    }
    let from_slice = per_block(start.elapsed());

    let mut sealed: Vec<BlockBuf> = pool.to_vec();
    let start = Instant::now();
    for i in 0..N {
        let b = &mut sealed[i % POOL_BLOCKS];
        seal(
            b.as_mut_slice(),
            KIND.magic,
            FSID,
            i as u64,
            seq_of(i as u64),
        );
        black_box(&b);
    }
    let seal_ns = per_block(start.elapsed());

    // Re-seal so the verify loop below checks blocks with known identities.
    for (i, b) in sealed.iter_mut().enumerate() {
        seal(
            b.as_mut_slice(),
            KIND.magic,
            FSID,
            i as u64,
            seq_of(i as u64),
        );
    }
    let start = Instant::now();
    for i in 0..N {
        let j = i % POOL_BLOCKS;
        let exp = Expect {
            kind: KIND,
            fsid: Some(FSID),
            blkno: j as u64,
            seq: Some(seq_of(j as u64)),
        };
        verify(black_box(sealed[j].as_slice()), &exp).expect("sealed block verifies");
    }
    let verify_ns = per_block(start.elapsed());

    println!("CPU cost per 64 KiB block, in memory (mean of {N}):");
    for (what, ns) in [
        ("memcpy 64 KiB (reference)", copy),
        ("BlockBuf::zeroed (alloc + zero)", zeroed),
        ("BlockBuf::from_slice (alloc + zero + copy)", from_slice),
        ("seal (header + crc32c)", seal_ns),
        ("verify (header checks + crc32c)", verify_ns),
    ] {
        println!("  {what:<44} {ns:>8.0} ns  ({:>5.1} GiB/s)", gib_s(ns));
    }
    println!();
}

/// Default base directory: `<target dir>/bench-tmp`, found from the bench executable's path
/// (`<target>/release/deps/meta_io-*`), so the files land on the disk holding the build, not
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

fn mib_s(mib: u64, d: Duration) -> f64 {
    mib as f64 / d.as_secs_f64()
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
