//! Crash consistency of the POSIX filesystem layer ([`Fs`]) under SIGKILL.
//!
//! A child process (this test binary, re-executed) mounts the filesystem as a node would
//! (`Server::open`, `LocalServer`, `Fs::mount` with `LocalLocks`) and runs a file workload
//! forever: it creates files in four directories, writes their contents at varied sizes (0
//! bytes to a few hundred KiB; whole, sparse with holes, in appended pieces, overwritten,
//! truncated down and up), saves new generations atomically (write a temporary file, fsync,
//! rename it over the old name), edits files in place, moves them between directories,
//! hard-links, unlinks, and sets and removes xattrs (small, multi-item, `scoutfs.srch.`). The
//! parent SIGKILLs it at random moments (while it starts, mid-write, mid-fsync, mid-merge),
//! reopens the devices in-process and checks the result; the next child continues on the same
//! devices from whatever survived.
//!
//! # The operation log
//!
//! Every operation of the child is a list of [`Step`]s, each exactly one `Fs` call. Before
//! starting one the child prints `BEGIN <steps>`; after its last step (an `fsync` or `sync`)
//! returned it prints a completion line: `ACK <file-number> <generation> <size> <checksum>`
//! for an operation that leaves file `n` (`f<n>`) in place, `UNLINK <n>` after `f<n>` was
//! unlinked (and synced), `UNLINK <n> <name>` after a hard link went, `DONE ...` for the
//! start-up operations (creating the directories, removing temporary files a dead child
//! left). The generation of a file is its `user.gen` xattr; the file counter lives in the
//! root directory's `user.next` xattr (set in the transaction that creates the file).
//!
//! The parent replays the same steps on its own [`Model`] of the namespace (names -> inodes,
//! inode contents and xattrs) and cross-checks every completion line against it. After the
//! kill it allows exactly these states for the operation that was cut short: the state before
//! it, or the state after one of its syncs (after any of its steps when the child ran with a
//! small `max_dirty_items`, which commits in the middle of operations). The only slack is the
//! one the `Fs` documents: blocks already mapped are overwritten in place, so bytes an
//! unfinished step wrote over mapped blocks may show through in the older state
//! ([`Slack`]). Everything acknowledged before is exact.
//!
//! An unsynced truncate used to zero the tail of the file's new last block in place, so after
//! a crash the synced file could read zeros from the truncate's size to the end of that block
//! (see [`unsynced_truncate_keeps_synced_bytes_after_a_crash`]); the filesystem now copies
//! that block instead, and the check is strict. `SCOUTGW_FS_CRASH_LENIENT_TAIL=1` restores
//! the old slack.
//!
//! # The checks after each kill
//!
//! * `fsck(meta, Some(data))` finds no problem (warnings are allowed).
//! * A fresh mount reads the whole namespace ([`scan`]): every readdir entry (read in small
//!   pages) is found again by lookup with the same inode and generation, getattr works, the
//!   directory sizes count their entries, nlink counts match the names (2 + subdirectories
//!   for directories), `ino_paths` lists exactly the names of each inode, every file reads to
//!   exactly its size, and no name or inode is unexpected.
//! * That namespace, with every file's size, contents and xattrs, is one of the allowed
//!   states above (the model adopts it, which is also what the next child starts from: it
//!   prints a digest of what it found, which must equal the parent's).
//!
//! At the end every dead tree is reclaimed and merged and the inode count of `statfs` must
//! match the namespace.
//!
//! # Replaying a failure
//!
//! The seed is printed; `SCOUTGW_FS_CRASH_SEED=<seed>` makes the next run take the same
//! decisions (the moment a kill lands still depends on timing). `SCOUTGW_FS_CRASH_ROUNDS=<n>`
//! changes the number of kill rounds (default 80). Failure messages name the seed, the round,
//! the kill plan, the child's settings, the unfinished operation and the child's log.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use scoutgw_blockdev::{BlockDevice, DeviceOptions, FileDevice, MetaDev};
use scoutgw_cluster::client::LocalServer;
use scoutgw_cluster::format::inode::ROOT_INO;
use scoutgw_cluster::format::layout::FORMAT_VERSION_MAX;
use scoutgw_cluster::fs::{FileType, Fs, FsError, FsOptions, NewNode, SetAttr, XattrSet};
use scoutgw_cluster::fsck::fsck;
use scoutgw_cluster::lock::LocalLocks;
use scoutgw_cluster::mkfs::{mkfs, MkfsOptions};
use scoutgw_cluster::msg::{Request, Response, ServerLink};
use scoutgw_cluster::server::{Server, ServerConfig};

// ---------------------------------------------------------------------------------------------
// Deterministic bytes
// ---------------------------------------------------------------------------------------------

/// The splitmix64 finalizer: every size, offset and byte of the workload derives from it.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `len` bytes derived from `seed`.
fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let mut h = seed;
    while v.len() < len {
        h = mix(h);
        v.extend_from_slice(&h.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// FNV-1a with length-prefixed fields.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn raw(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.raw(&(b.len() as u64).to_le_bytes());
        self.raw(b);
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.raw(&v.to_le_bytes());
        self
    }
}

/// The checksum of a file's contents in `ACK` lines.
fn checksum(data: &[u8]) -> u64 {
    Fnv::new().bytes(data).0
}

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next() % (hi - lo)
        }
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

// ---------------------------------------------------------------------------------------------
// Steps and the model they act on
// ---------------------------------------------------------------------------------------------

/// Number of subdirectories (`d0` .. `d3`) of the root the files live in.
const DIRS: u8 = 4;
const BLOCK: u64 = 4096;
/// The xattr holding a file's generation.
const GEN_X: &str = "user.gen";
/// The root directory's xattr holding the next file number.
const NEXT_X: &str = "user.next";

/// A name: (directory number, name in it).
type Name = (u8, String);

fn show(n: &Name) -> String {
    format!("d{}/{}", n.0, n.1)
}

/// An xattr value: a generation (decimal) or bytes from a seed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum XVal {
    Gen(u64),
    Fill(u64, usize),
}

impl XVal {
    fn bytes(&self) -> Vec<u8> {
        match self {
            XVal::Gen(g) => g.to_string().into_bytes(),
            XVal::Fill(seed, len) => filler(*seed, *len),
        }
    }
}

/// One `Fs` call of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// `mkdir` of `d<n>` in the root.
    Mkdir(u8),
    /// Set an xattr of the root directory to a decimal number.
    SetRootX(String, u64),
    /// `create` (exclusive) of a regular file.
    Create(Name),
    /// `write` of `filler(seed, len)` at `off`.
    Write(Name, u64, u64, u64),
    /// `write` of the whole contents of the second file at offset 0 of the first.
    Copy(Name, Name),
    /// `setattr` of the size.
    Trunc(Name, u64),
    SetX(Name, String, XVal),
    /// Set xattr `key` of the first file to the value it has on the second.
    CopyX(Name, Name, String),
    RmX(Name, String),
    Rename(Name, Name),
    /// `link` of the first file's inode as the second name.
    Link(Name, Name),
    Unlink(Name),
    Fsync(Name),
    Sync,
}

impl Step {
    fn is_sync(&self) -> bool {
        matches!(self, Step::Fsync(_) | Step::Sync)
    }

    fn encode(&self) -> String {
        let n = |n: &Name| format!("{}/{}", n.0, n.1);
        match self {
            Step::Mkdir(d) => format!("M:{d}"),
            Step::SetRootX(k, v) => format!("R:{k}:{v}"),
            Step::Create(a) => format!("C:{}", n(a)),
            Step::Write(a, off, len, seed) => format!("W:{}:{off}:{len}:{seed}", n(a)),
            Step::Copy(a, b) => format!("P:{}:{}", n(a), n(b)),
            Step::Trunc(a, s) => format!("T:{}:{s}", n(a)),
            Step::SetX(a, k, XVal::Gen(g)) => format!("X:{}:{k}:g{g}", n(a)),
            Step::SetX(a, k, XVal::Fill(s, l)) => format!("X:{}:{k}:f{s}.{l}", n(a)),
            Step::CopyX(a, b, k) => format!("Q:{}:{}:{k}", n(a), n(b)),
            Step::RmX(a, k) => format!("Y:{}:{k}", n(a)),
            Step::Rename(a, b) => format!("N:{}:{}", n(a), n(b)),
            Step::Link(a, b) => format!("L:{}:{}", n(a), n(b)),
            Step::Unlink(a) => format!("U:{}", n(a)),
            Step::Fsync(a) => format!("F:{}", n(a)),
            Step::Sync => "S".to_string(),
        }
    }

    fn decode(tok: &str) -> Result<Step, String> {
        let f: Vec<&str> = tok.split(':').collect();
        let bad = || format!("bad step {tok:?}");
        let num = |i: usize| -> Result<u64, String> {
            f.get(i).and_then(|s| s.parse().ok()).ok_or_else(bad)
        };
        let name = |i: usize| -> Result<Name, String> {
            let s = f.get(i).ok_or_else(bad)?;
            let (d, n) = s.split_once('/').ok_or_else(bad)?;
            Ok((d.parse().map_err(|_| bad())?, n.to_string()))
        };
        let text = |i: usize| -> Result<String, String> {
            f.get(i).map(|s| s.to_string()).ok_or_else(bad)
        };
        let want = |n: usize| if f.len() == n { Ok(()) } else { Err(bad()) };
        Ok(match f[0] {
            "M" => {
                want(2)?;
                Step::Mkdir(num(1)? as u8)
            }
            "R" => {
                want(3)?;
                Step::SetRootX(text(1)?, num(2)?)
            }
            "C" => {
                want(2)?;
                Step::Create(name(1)?)
            }
            "W" => {
                want(5)?;
                Step::Write(name(1)?, num(2)?, num(3)?, num(4)?)
            }
            "P" => {
                want(3)?;
                Step::Copy(name(1)?, name(2)?)
            }
            "T" => {
                want(3)?;
                Step::Trunc(name(1)?, num(2)?)
            }
            "X" => {
                want(4)?;
                let v = f[3];
                let val = if let Some(g) = v.strip_prefix('g') {
                    XVal::Gen(g.parse().map_err(|_| bad())?)
                } else if let Some(sl) = v.strip_prefix('f') {
                    let (s, l) = sl.split_once('.').ok_or_else(bad)?;
                    XVal::Fill(s.parse().map_err(|_| bad())?, l.parse().map_err(|_| bad())?)
                } else {
                    return Err(bad());
                };
                Step::SetX(name(1)?, text(2)?, val)
            }
            "Q" => {
                want(4)?;
                Step::CopyX(name(1)?, name(2)?, text(3)?)
            }
            "Y" => {
                want(3)?;
                Step::RmX(name(1)?, text(2)?)
            }
            "N" => {
                want(3)?;
                Step::Rename(name(1)?, name(2)?)
            }
            "L" => {
                want(3)?;
                Step::Link(name(1)?, name(2)?)
            }
            "U" => {
                want(2)?;
                Step::Unlink(name(1)?)
            }
            "F" => {
                want(2)?;
                Step::Fsync(name(1)?)
            }
            "S" => {
                want(1)?;
                Step::Sync
            }
            _ => return Err(bad()),
        })
    }
}

fn encode_steps(steps: &[Step]) -> String {
    steps.iter().map(Step::encode).collect::<Vec<_>>().join(" ")
}

/// A regular file's inode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Obj {
    data: Vec<u8>,
    x: BTreeMap<String, Vec<u8>>,
}

/// Object ids the model makes up for inodes it creates (the inode numbers are only known
/// once a scan finds them); far above any inode number.
const SYNTHETIC_OID: u64 = 1 << 62;

/// The namespace below the root: which `d<n>` exist, the root's xattrs, names and inodes.
#[derive(Debug, Clone, Default)]
struct Model {
    dirs: BTreeSet<u8>,
    root_x: BTreeMap<String, Vec<u8>>,
    names: BTreeMap<Name, u64>,
    objs: BTreeMap<u64, Obj>,
    next_oid: u64,
}

impl Model {
    fn oid(&self, n: &Name) -> Result<u64, String> {
        self.names
            .get(n)
            .copied()
            .ok_or_else(|| format!("{} does not exist", show(n)))
    }

    fn obj(&self, n: &Name) -> Result<&Obj, String> {
        Ok(&self.objs[&self.oid(n)?])
    }

    fn obj_mut(&mut self, n: &Name) -> Result<&mut Obj, String> {
        let oid = self.oid(n)?;
        Ok(self.objs.get_mut(&oid).expect("named object"))
    }

    fn nlink(&self, oid: u64) -> usize {
        self.names.values().filter(|o| **o == oid).count()
    }

    fn drop_name(&mut self, n: &Name) -> Result<(), String> {
        let oid = self
            .names
            .remove(n)
            .ok_or_else(|| format!("{} does not exist", show(n)))?;
        if self.nlink(oid) == 0 {
            self.objs.remove(&oid);
        }
        Ok(())
    }

    fn need_dir(&self, d: u8) -> Result<(), String> {
        if self.dirs.contains(&d) {
            Ok(())
        } else {
            Err(format!("directory d{d} does not exist"))
        }
    }

    fn write_at(o: &mut Obj, off: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let (off, end) = (off as usize, off as usize + bytes.len());
        if o.data.len() < end {
            o.data.resize(end, 0);
        }
        o.data[off..end].copy_from_slice(bytes);
    }

    /// Apply one step as the filesystem should.
    fn apply(&mut self, s: &Step) -> Result<(), String> {
        match s {
            Step::Mkdir(d) => {
                if !self.dirs.insert(*d) {
                    return Err(format!("d{d} exists"));
                }
            }
            Step::SetRootX(k, v) => {
                self.root_x.insert(k.clone(), v.to_string().into_bytes());
            }
            Step::Create(n) => {
                self.need_dir(n.0)?;
                if self.names.contains_key(n) {
                    return Err(format!("{} exists", show(n)));
                }
                if self.next_oid < SYNTHETIC_OID {
                    self.next_oid = SYNTHETIC_OID;
                }
                let oid = self.next_oid;
                self.next_oid += 1;
                self.names.insert(n.clone(), oid);
                self.objs.insert(oid, Obj::default());
            }
            Step::Write(n, off, len, seed) => {
                let bytes = filler(*seed, *len as usize);
                Self::write_at(self.obj_mut(n)?, *off, &bytes);
            }
            Step::Copy(dst, src) => {
                let bytes = self.obj(src)?.data.clone();
                Self::write_at(self.obj_mut(dst)?, 0, &bytes);
            }
            Step::Trunc(n, size) => self.obj_mut(n)?.data.resize(*size as usize, 0),
            Step::SetX(n, k, v) => {
                self.obj_mut(n)?.x.insert(k.clone(), v.bytes());
            }
            Step::CopyX(dst, src, k) => {
                let v = self.obj(src)?.x.get(k).cloned();
                let v = v.ok_or_else(|| format!("{} has no xattr {k}", show(src)))?;
                self.obj_mut(dst)?.x.insert(k.clone(), v);
            }
            Step::RmX(n, k) => {
                if self.obj_mut(n)?.x.remove(k).is_none() {
                    return Err(format!("{} has no xattr {k}", show(n)));
                }
            }
            Step::Rename(src, dst) => {
                self.need_dir(dst.0)?;
                let oid = self.oid(src)?;
                if self.names.get(dst) == Some(&oid) {
                    return Ok(()); // two names of one inode: nothing happens
                }
                if self.names.contains_key(dst) {
                    self.drop_name(dst)?;
                }
                self.names.remove(src);
                self.names.insert(dst.clone(), oid);
            }
            Step::Link(src, dst) => {
                self.need_dir(dst.0)?;
                let oid = self.oid(src)?;
                if self.names.contains_key(dst) {
                    return Err(format!("{} exists", show(dst)));
                }
                self.names.insert(dst.clone(), oid);
            }
            Step::Unlink(n) => self.drop_name(n)?,
            Step::Fsync(n) => {
                self.oid(n)?;
            }
            Step::Sync => {}
        }
        Ok(())
    }

    /// The name of file `n` (`f<n>` in whichever directory).
    fn file(&self, n: u64) -> Option<Name> {
        let want = format!("f{n}");
        self.names.keys().find(|k| k.1 == want).cloned()
    }

    fn gen_of(&self, name: &Name) -> u64 {
        self.obj(name)
            .ok()
            .and_then(|o| o.x.get(GEN_X))
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0)
    }

    /// A digest of everything the model says, independent of inode numbers.
    fn digest(&self) -> u64 {
        let mut h = Fnv::new();
        for d in &self.dirs {
            h.u64(*d as u64);
        }
        h.u64(u64::MAX);
        for (k, v) in &self.root_x {
            h.bytes(k.as_bytes()).bytes(v);
        }
        for (name, oid) in &self.names {
            let o = &self.objs[oid];
            h.u64(name.0 as u64).bytes(name.1.as_bytes());
            h.u64(self.nlink(*oid) as u64).u64(checksum(&o.data));
            // Names of one inode: the first name of the inode.
            let first = self.names.iter().find(|(_, x)| *x == oid).expect("named").0;
            h.u64(first.0 as u64).bytes(first.1.as_bytes());
            for (k, v) in &o.x {
                h.bytes(k.as_bytes()).bytes(v);
            }
        }
        h.0
    }

    fn summary(&self) -> String {
        let bytes: usize = self.objs.values().map(|o| o.data.len()).sum();
        format!(
            "{} dirs, {} names, {} inodes, {} bytes",
            self.dirs.len(),
            self.names.len(),
            self.objs.len(),
            bytes
        )
    }
}

/// A file name of the workload: `f<n>`, `t<n>.<gen>` (temporary) or `h<n>.<gen>` (link).
fn parse_name(name: &str) -> Option<(char, u64)> {
    let kind = name.chars().next()?;
    let rest = &name[1..];
    match kind {
        'f' => Some((kind, rest.parse().ok()?)),
        't' | 'h' => {
            let (n, g) = rest.split_once('.')?;
            g.parse::<u64>().ok()?;
            Some((kind, n.parse().ok()?))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the filesystem into a model, checking the namespace on the way
// ---------------------------------------------------------------------------------------------

/// Every entry of `dir`, read in pages of a few entries (cookies in between).
fn readdir_all(fs: &Fs, dir: u64, page: usize) -> Result<Vec<(Vec<u8>, u64, u64)>, String> {
    let mut out = Vec::new();
    let mut cookie = 0;
    loop {
        let p = fs
            .readdir(dir, cookie, page)
            .map_err(|e| format!("readdir of {dir} after cookie {cookie}: {e}"))?;
        for e in &p.entries {
            if e.cookie <= cookie {
                return Err(format!(
                    "readdir of {dir}: cookie {} after {cookie}",
                    e.cookie
                ));
            }
            cookie = e.cookie;
            let kind_ok = match e.kind {
                Some(FileType::Directory) => dir == ROOT_INO,
                Some(FileType::Regular) => dir != ROOT_INO,
                _ => false,
            };
            if !kind_ok {
                return Err(format!(
                    "readdir of {dir}: {:?} has type {:?}",
                    String::from_utf8_lossy(&e.name),
                    e.kind
                ));
            }
            out.push((e.name.clone(), e.ino, e.generation));
        }
        if p.eof {
            return Ok(out);
        }
        if p.entries.is_empty() {
            return Err(format!(
                "readdir of {dir}: an empty page that is not the end"
            ));
        }
    }
}

fn xattrs_of(fs: &Fs, ino: u64) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    for k in fs
        .list_xattrs(ino)
        .map_err(|e| format!("list_xattrs of {ino}: {e}"))?
    {
        let v = fs
            .get_xattr(ino, &k)
            .map_err(|e| format!("get_xattr {:?} of {ino}: {e}", String::from_utf8_lossy(&k)))?;
        let k = String::from_utf8(k).map_err(|e| format!("xattr name of {ino}: {e}"))?;
        if out.insert(k.clone(), v).is_some() {
            return Err(format!("list_xattrs of {ino} lists {k} twice"));
        }
    }
    Ok(out)
}

/// Read the whole namespace through `fs` into a model (object ids are inode numbers),
/// checking that it is consistent; `Err` says what is not.
fn scan(fs: &Fs) -> Result<Model, String> {
    let mut m = Model {
        next_oid: SYNTHETIC_OID,
        ..Model::default()
    };
    let root = fs
        .getattr(ROOT_INO)
        .map_err(|e| format!("getattr of the root: {e}"))?;
    if !root.is_dir() {
        return Err(format!("the root is not a directory: {root:?}"));
    }
    let mut dir_inos = BTreeMap::new();
    let root_entries = readdir_all(fs, ROOT_INO, 3)?;
    for (name, ino, generation) in &root_entries {
        let s = String::from_utf8_lossy(name).to_string();
        let d = s
            .strip_prefix('d')
            .and_then(|d| d.parse::<u8>().ok())
            .filter(|d| *d < DIRS && s == format!("d{d}"))
            .ok_or_else(|| format!("unexpected entry {s:?} in the root"))?;
        let a = fs
            .lookup(ROOT_INO, name)
            .map_err(|e| format!("lookup of listed {s}: {e}"))?;
        let g = fs
            .getattr(*ino)
            .map_err(|e| format!("getattr of {s} ({ino}): {e}"))?;
        if a.ino != *ino || a.generation != *generation || g.generation != *generation {
            return Err(format!(
                "{s}: readdir says inode {ino} generation {generation}, lookup {} {}, \
                 getattr generation {}",
                a.ino, a.generation, g.generation
            ));
        }
        if !a.is_dir() || a.nlink != 2 {
            return Err(format!(
                "{s} is not an empty-of-subdirectories directory: {a:?}"
            ));
        }
        if m.dirs.insert(d) {
            dir_inos.insert(d, *ino);
        } else {
            return Err(format!("{s} listed twice"));
        }
    }
    if root.nlink as usize != 2 + m.dirs.len() {
        return Err(format!(
            "the root has nlink {} with {} subdirectories",
            root.nlink,
            m.dirs.len()
        ));
    }
    if root.size as usize != root_entries.len() {
        return Err(format!(
            "the root has size {} with {} entries",
            root.size,
            root_entries.len()
        ));
    }
    m.root_x = xattrs_of(fs, ROOT_INO)?;

    // Every file name; then every inode once.
    let mut by_ino: BTreeMap<u64, (u64, Vec<Name>)> = BTreeMap::new();
    for (&d, &dino) in &dir_inos {
        let entries = readdir_all(fs, dino, 7)?;
        let da = fs
            .getattr(dino)
            .map_err(|e| format!("getattr of d{d}: {e}"))?;
        if da.size as usize != entries.len() {
            return Err(format!(
                "d{d} has size {} with {} entries",
                da.size,
                entries.len()
            ));
        }
        let mut seen = BTreeSet::new();
        for (name, ino, generation) in entries {
            let s = String::from_utf8(name.clone())
                .map_err(|_| format!("d{d}: a name that is not UTF-8: {name:?}"))?;
            if parse_name(&s).is_none() {
                return Err(format!("d{d}: unexpected name {s:?}"));
            }
            if !seen.insert(s.clone()) {
                return Err(format!("d{d}/{s} listed twice"));
            }
            let a = fs
                .lookup(dino, &name)
                .map_err(|e| format!("lookup of listed d{d}/{s} (inode {ino}): {e}"))?;
            if a.ino != ino || a.generation != generation {
                return Err(format!(
                    "d{d}/{s}: readdir says inode {ino} generation {generation}, lookup \
                     finds {} generation {}",
                    a.ino, a.generation
                ));
            }
            let e = by_ino.entry(ino).or_insert((generation, Vec::new()));
            if e.0 != generation {
                return Err(format!(
                    "d{d}/{s}: entries of inode {ino} name generations {} and {generation}",
                    e.0
                ));
            }
            e.1.push((d, s));
        }
    }
    for (ino, (generation, names)) in by_ino {
        let shown = names.iter().map(show).collect::<Vec<_>>().join(", ");
        let a = fs
            .getattr(ino)
            .map_err(|e| format!("getattr of inode {ino} ({shown}): {e}"))?;
        if a.file_type() != Some(FileType::Regular) || a.generation != generation {
            return Err(format!("inode {ino} ({shown}): {a:?}"));
        }
        if a.nlink as usize != names.len() {
            return Err(format!(
                "inode {ino} has nlink {} but {} names: {shown}",
                a.nlink,
                names.len()
            ));
        }
        if a.online_blocks > a.size.div_ceil(BLOCK) || a.offline_blocks != 0 {
            return Err(format!(
                "inode {ino} ({shown}): {} online and {} offline blocks for {} bytes",
                a.online_blocks, a.offline_blocks, a.size
            ));
        }
        let data = fs
            .read(ino, 0, a.size as usize + 1)
            .map_err(|e| format!("read of inode {ino} ({shown}): {e}"))?;
        if data.len() as u64 != a.size {
            return Err(format!(
                "inode {ino} ({shown}): read {} bytes of a {}-byte file",
                data.len(),
                a.size
            ));
        }
        let mut paths: Vec<String> = fs
            .ino_paths(ino, 100)
            .map_err(|e| format!("ino_paths of {ino} ({shown}): {e}"))?
            .into_iter()
            .map(|p| String::from_utf8_lossy(&p).to_string())
            .collect();
        paths.sort();
        let mut want: Vec<String> = names.iter().map(|n| format!("/d{}/{}", n.0, n.1)).collect();
        want.sort();
        if paths != want {
            return Err(format!(
                "ino_paths of inode {ino} are {paths:?}, its entries {want:?}"
            ));
        }
        let x = xattrs_of(fs, ino)?;
        for n in names {
            m.names.insert(n, ino);
        }
        m.objs.insert(ino, Obj { data, x });
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// Comparing a scanned state with an expected one
// ---------------------------------------------------------------------------------------------

/// Bytes an unfinished step may have written in place over a mapped block of an inode of an
/// older state: at `start..start + vals.len()` of object `oid`, `vals` may show instead of the
/// older bytes.
#[derive(Debug, Clone)]
struct Slack {
    oid: u64,
    start: u64,
    vals: Vec<u8>,
    /// The zeroing of the tail of a file's last block by a truncate or an extending write
    /// (see [`unsynced_truncate_keeps_synced_bytes_after_a_crash`]), not a user's write.
    tail_zero: bool,
}

/// The slack the steps `rest`, applied after state `m`, leave on the objects of `m`.
fn slack_after(m: &Model, rest: &[Step]) -> Vec<Slack> {
    let mut m = m.clone();
    let mut out = Vec::new();
    for s in rest {
        let target = match s {
            Step::Write(n, ..) | Step::Copy(n, _) | Step::Trunc(n, _) => m.oid(n).ok(),
            _ => None,
        };
        let prev = target.map(|o| m.objs[&o].data.len() as u64);
        if m.apply(s).is_err() {
            break;
        }
        let (Some(oid), Some(prev)) = (target, prev) else {
            continue;
        };
        let after = &m.objs[&oid].data;
        let blocks = |from: u64, to: u64| -> (u64, Vec<u8>) {
            let (s, e) = (from / BLOCK * BLOCK, to.div_ceil(BLOCK) * BLOCK);
            let vals = (s..e)
                .map(|i| after.get(i as usize).copied().unwrap_or(0))
                .collect();
            (s, vals)
        };
        let tail = |at: u64, out: &mut Vec<Slack>| {
            if !at.is_multiple_of(BLOCK) {
                out.push(Slack {
                    oid,
                    start: at,
                    vals: vec![0; (BLOCK - at % BLOCK) as usize],
                    tail_zero: true,
                });
            }
        };
        let written = match s {
            Step::Write(_, off, len, _) => Some((*off, *len)),
            Step::Copy(..) => Some((0, after.len() as u64)),
            _ => None,
        };
        match (s, written) {
            (_, Some((off, len))) if len > 0 => {
                let (start, vals) = blocks(off, off + len);
                out.push(Slack {
                    oid,
                    start,
                    vals,
                    tail_zero: false,
                });
                if off > prev {
                    tail(prev, &mut out);
                }
            }
            (Step::Trunc(_, size), _) if *size != prev => tail((*size).min(prev), &mut out),
            _ => {}
        }
    }
    out
}

#[derive(Debug, Default, Clone, Copy)]
struct SlackUse {
    /// Bytes that matched only what an unfinished write put over mapped blocks.
    overwrite: u64,
    /// Bytes that matched only an unfinished truncate's (or extension's) tail zeroing.
    tail_zero: u64,
}

/// Differences between the expected state `want` (with `slack`) and the scanned `got`.
fn compare(want: &Model, got: &Model, slack: &[Slack]) -> (Vec<String>, SlackUse) {
    let mut d = Vec::new();
    let mut used = SlackUse::default();
    if want.dirs != got.dirs {
        d.push(format!(
            "directories {:?}, expected {:?}",
            got.dirs, want.dirs
        ));
    }
    if want.root_x != got.root_x {
        let s = |x: &BTreeMap<String, Vec<u8>>| {
            x.iter()
                .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                .collect::<Vec<_>>()
        };
        d.push(format!(
            "root xattrs {:?}, expected {:?}",
            s(&got.root_x),
            s(&want.root_x)
        ));
    }
    for n in want.names.keys().filter(|n| !got.names.contains_key(*n)) {
        d.push(format!("missing: {}", show(n)));
    }
    for n in got.names.keys().filter(|n| !want.names.contains_key(*n)) {
        d.push(format!("unexpected: {}", show(n)));
    }
    // Inodes of the expected state and of the scan must pair up one to one.
    let mut pair: BTreeMap<u64, u64> = BTreeMap::new();
    let mut back: BTreeMap<u64, u64> = BTreeMap::new();
    for (n, w) in &want.names {
        let Some(g) = got.names.get(n) else { continue };
        let a = *pair.entry(*w).or_insert(*g);
        let b = *back.entry(*g).or_insert(*w);
        if a != *g || b != *w {
            d.push(format!(
                "{} is not a name of the same inode as the other names it should share an \
                 inode with (or shares one it should not)",
                show(n)
            ));
        }
    }
    for (w, g) in &pair {
        let (wo, go) = (&want.objs[w], &got.objs[g]);
        let names = want
            .names
            .iter()
            .filter(|(_, o)| *o == w)
            .map(|(n, _)| show(n))
            .collect::<Vec<_>>()
            .join(", ");
        if wo.x != go.x {
            let keys = |x: &BTreeMap<String, Vec<u8>>| {
                x.iter()
                    .map(|(k, v)| format!("{k}({}b,{:08x})", v.len(), checksum(v) as u32))
                    .collect::<Vec<_>>()
            };
            d.push(format!(
                "{names} (inode {g}): xattrs {:?}, expected {:?}",
                keys(&go.x),
                keys(&wo.x)
            ));
        }
        if wo.data.len() != go.data.len() {
            d.push(format!(
                "{names} (inode {g}): {} bytes, expected {}",
                go.data.len(),
                wo.data.len()
            ));
            continue;
        }
        let mut bad = Vec::new();
        for (i, (a, b)) in wo.data.iter().zip(&go.data).enumerate() {
            if a == b {
                continue;
            }
            let i = i as u64;
            let fits = |s: &&Slack| {
                s.oid == *w
                    && i >= s.start
                    && i < s.start + s.vals.len() as u64
                    && s.vals[(i - s.start) as usize] == *b
            };
            if slack.iter().filter(|s| !s.tail_zero).any(|s| fits(&s)) {
                used.overwrite += 1;
            } else if slack.iter().filter(|s| s.tail_zero).any(|s| fits(&s)) {
                used.tail_zero += 1;
            } else {
                bad.push(i);
            }
        }
        if let (Some(first), Some(last)) = (bad.first(), bad.last()) {
            let f = *first as usize;
            d.push(format!(
                "{names} (inode {g}, {} bytes): {} bytes differ between {first} and {last} \
                 (blocks {} to {}); at {first}: {:02x?}, expected {:02x?}",
                wo.data.len(),
                bad.len(),
                first / BLOCK,
                last / BLOCK,
                &go.data[f..(f + 8).min(go.data.len())],
                &wo.data[f..(f + 8).min(wo.data.len())],
            ));
        }
    }
    (d, used)
}

// ---------------------------------------------------------------------------------------------
// Filesystem setup
// ---------------------------------------------------------------------------------------------

const DEV_BYTES: u64 = 256 << 20;
/// The rid of the parent's checking mounts (which say farewell).
const CHECK_RID: u64 = 0xC4EC_0000;

/// Small client allocators (so dead clients hold little), but enough data blocks for the
/// largest transaction of the workload (a few MiB).
fn cfg() -> ServerConfig {
    ServerConfig {
        cache_bytes: 16 << 20,
        client_meta_fill: 256,
        client_meta_low: 128,
        client_data_fill: 8192,
        client_data_low: 2048,
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

/// Mount `Fs` on the devices as `rid`, with its own server.
fn mount(
    meta: &Path,
    data: &Path,
    rid: u64,
    max_dirty: usize,
) -> Result<(Arc<LocalServer>, Fs), String> {
    let server = Arc::new(LocalServer::new(
        Server::open(open(meta), cfg()).map_err(|e| format!("Server::open: {e}"))?,
    ));
    let md = Arc::new(MetaDev::new(
        open(meta),
        server.with(|s| s.fsid()),
        16 << 20,
    ));
    let opts = FsOptions {
        max_dirty_items: max_dirty,
        data_wait_timeout: Duration::from_secs(1),
        ..FsOptions::default()
    };
    let fs = Fs::mount(
        md,
        open(data),
        server.clone(),
        Arc::new(LocalLocks::new()),
        rid,
        opts,
    )
    .map_err(|e| format!("Fs::mount as {rid:x}: {e}"))?;
    Ok((server, fs))
}

struct Devices {
    dir: tempfile::TempDir,
    meta: PathBuf,
    data: PathBuf,
}

impl Devices {
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
        Self { dir, meta, data }
    }

    fn fsck(&self) -> (Vec<String>, Vec<String>) {
        match fsck(open(&self.meta), Some(open(&self.data))) {
            Ok(r) => (r.problems, r.warnings),
            Err(e) => (vec![format!("fsck could not start: {e}")], Vec::new()),
        }
    }

    /// Mount as the checker, read everything, say farewell.
    fn scan(&self) -> Result<Model, String> {
        let (_server, fs) = mount(&self.meta, &self.data, CHECK_RID, 50_000)?;
        let m = scan(&fs)?;
        fs.unmount()
            .map_err(|e| format!("unmount of the checking mount: {e}"))?;
        Ok(m)
    }
}

/// Greet as `rid` and say farewell for it: fencing a dead mount (its open transaction is
/// dropped, its allocators return, its log tree is finalized for the next merge).
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

const WORKER_TEST: &str = "fs_crash_worker_entry_runs_only_in_child_processes";
const WORKER_ENV: &str = "SCOUTGW_FS_CRASH_WORKER";
const META_ENV: &str = "SCOUTGW_FS_CRASH_META";
const DATA_ENV: &str = "SCOUTGW_FS_CRASH_DATA";
const RID_ENV: &str = "SCOUTGW_FS_CRASH_RID";
const CHILD_SEED_ENV: &str = "SCOUTGW_FS_CRASH_CHILD_SEED";
const MAX_DIRTY_ENV: &str = "SCOUTGW_FS_CRASH_MAX_DIRTY";
/// The child merges after every this many operations (0: never).
const MERGE_EVERY_ENV: &str = "SCOUTGW_FS_CRASH_MERGE_EVERY";
/// Set: the child also runs the server's background merger.
const BG_MERGE_ENV: &str = "SCOUTGW_FS_CRASH_BG_MERGE";
const DEFAULT_MAX_DIRTY: usize = 50_000;
const WORKER_LIFETIME: Duration = Duration::from_secs(60);
/// Files grow up to about this size.
const MAX_SIZE: u64 = 480 << 10;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
}

/// How an operation ends: the completion line.
enum Done {
    Ack(u64),
    Unlink(u64),
    UnlinkLink(u64, String),
    Text(&'static str),
}

struct Worker {
    fs: Fs,
    m: Model,
    rng: Rng,
    counter: u64,
}

impl Worker {
    fn dir_ino(&self, d: u8) -> Result<u64, FsError> {
        Ok(self.fs.lookup(ROOT_INO, format!("d{d}").as_bytes())?.ino)
    }

    fn ino(&self, n: &Name) -> Result<u64, FsError> {
        Ok(self.fs.lookup(self.dir_ino(n.0)?, n.1.as_bytes())?.ino)
    }

    /// Do one step on the filesystem (before the model applies it).
    fn exec(&self, s: &Step) -> Result<(), FsError> {
        let fs = &self.fs;
        match s {
            Step::Mkdir(d) => {
                fs.mkdir(ROOT_INO, format!("d{d}").as_bytes(), 0o755, 0, 0)?;
            }
            Step::SetRootX(k, v) => fs.set_xattr(
                ROOT_INO,
                k.as_bytes(),
                v.to_string().as_bytes(),
                XattrSet::Any,
            )?,
            Step::Create(n) => {
                let node = NewNode {
                    kind: FileType::Regular,
                    perm: 0o644,
                    uid: 1000,
                    gid: 100,
                    rdev: 0,
                };
                fs.create(self.dir_ino(n.0)?, n.1.as_bytes(), &node, true)?;
            }
            Step::Write(n, off, len, seed) => {
                fs.write(self.ino(n)?, *off, &filler(*seed, *len as usize))?;
            }
            Step::Copy(dst, src) => {
                let data = &self.m.obj(src).expect("copy source").data;
                fs.write(self.ino(dst)?, 0, data)?;
            }
            Step::Trunc(n, size) => {
                let set = SetAttr {
                    size: Some(*size),
                    ..SetAttr::default()
                };
                fs.setattr(self.ino(n)?, &set)?;
            }
            Step::SetX(n, k, v) => {
                fs.set_xattr(self.ino(n)?, k.as_bytes(), &v.bytes(), XattrSet::Any)?
            }
            Step::CopyX(dst, src, k) => {
                let v = &self.m.obj(src).expect("copy source").x[k];
                fs.set_xattr(self.ino(dst)?, k.as_bytes(), v, XattrSet::Any)?
            }
            Step::RmX(n, k) => fs.remove_xattr(self.ino(n)?, k.as_bytes())?,
            Step::Rename(a, b) => fs.rename(
                self.dir_ino(a.0)?,
                a.1.as_bytes(),
                self.dir_ino(b.0)?,
                b.1.as_bytes(),
            )?,
            Step::Link(a, b) => {
                fs.link(self.ino(a)?, self.dir_ino(b.0)?, b.1.as_bytes())?;
            }
            Step::Unlink(n) => fs.unlink(self.dir_ino(n.0)?, n.1.as_bytes())?,
            Step::Fsync(n) => fs.fsync(self.ino(n)?)?,
            Step::Sync => fs.sync()?,
        }
        Ok(())
    }

    fn run(&mut self, steps: Vec<Step>, done: Done) {
        say(&format!("BEGIN {}", encode_steps(&steps)));
        for s in &steps {
            if let Err(e) = self.exec(s) {
                panic!(
                    "{} failed: {e}\n(operation: {})",
                    s.encode(),
                    encode_steps(&steps)
                );
            }
            self.m
                .apply(s)
                .unwrap_or_else(|e| panic!("the model refuses {}: {e}", s.encode()));
        }
        let line = match done {
            Done::Ack(n) => {
                let name = self.m.file(n).expect("the file of an ACK");
                let o = self.m.obj(&name).expect("named");
                format!(
                    "ACK {n} {} {} {:016x}",
                    self.m.gen_of(&name),
                    o.data.len(),
                    checksum(&o.data)
                )
            }
            Done::Unlink(n) => format!("UNLINK {n}"),
            Done::UnlinkLink(n, name) => format!("UNLINK {n} {name}"),
            Done::Text(t) => format!("DONE {t}"),
        };
        say(&line);
    }

    fn dir(&mut self) -> u8 {
        self.rng.range(0, DIRS as u64) as u8
    }

    fn size(&mut self) -> u64 {
        let r = self.rng.next();
        let s = match self.rng.range(0, 20) {
            0..2 => 0,
            2..6 => r % 300,
            6..11 => r % (16 << 10),
            11..17 => r % (128 << 10),
            _ => r % (400 << 10),
        };
        if self.rng.chance(6) {
            s / BLOCK * BLOCK
        } else {
            s
        }
    }

    fn write(&mut self, n: &Name, off: u64, len: u64) -> Step {
        Step::Write(n.clone(), off, len, self.rng.next())
    }

    /// Steps giving a new, empty file contents of some size and shape.
    fn fresh_contents(&mut self, n: &Name) -> Vec<Step> {
        let s = self.size();
        let mut v = Vec::new();
        match self.rng.range(0, 6) {
            // All at once.
            0 => v.push(self.write(n, 0, s)),
            // Sparse: a few pieces with holes between them, and maybe one at the end.
            1 => {
                for _ in 0..self.rng.range(1, 4) {
                    let off = self.rng.range(0, s.max(1));
                    let len = self.rng.range(1, 20_000).min(s - off.min(s));
                    v.push(self.write(n, off, len));
                }
                v.push(Step::Trunc(n.clone(), s));
            }
            // Appended in pieces.
            2 => {
                let mut pos = 0;
                for i in 0..5 {
                    if pos >= s {
                        break;
                    }
                    let len = if i == 4 {
                        s - pos
                    } else {
                        self.rng.range(1, s - pos + 1)
                    };
                    v.push(self.write(n, pos, len));
                    pos += len;
                }
            }
            // Written, then parts overwritten (perhaps past the end).
            3 => {
                v.push(self.write(n, 0, s));
                for _ in 0..self.rng.range(1, 3) {
                    let off = self.rng.range(0, s + 1);
                    let len = self.rng.range(0, 30_000);
                    v.push(self.write(n, off, len));
                }
            }
            // Written longer, truncated down.
            4 => {
                let extra = self.rng.range(1, 50_000);
                v.push(self.write(n, 0, s + extra));
                v.push(Step::Trunc(n.clone(), s));
            }
            // Half written, extended by truncate, a piece written in the hole.
            _ => {
                v.push(self.write(n, 0, s / 2));
                v.push(Step::Trunc(n.clone(), s));
                if s > 0 {
                    let off = self.rng.range(0, s);
                    let len = self.rng.range(0, 5000).min(s - off);
                    v.push(self.write(n, off, len));
                }
            }
        }
        v
    }

    /// One to three edits of a file of `len` bytes: appends (also past the end, leaving a
    /// hole), overwrites, truncates down and up.
    fn edits(&mut self, n: &Name, mut len: u64) -> Vec<Step> {
        let mut v = Vec::new();
        for _ in 0..self.rng.range(1, 4) {
            let kind = if len > MAX_SIZE {
                3
            } else {
                self.rng.range(0, 6)
            };
            match kind {
                0 => {
                    let l = self.rng.range(0, 40_000);
                    v.push(self.write(n, len, l));
                    len += l;
                }
                1 => {
                    let gap = self.rng.range(1, 30_000);
                    let l = self.rng.range(1, 20_000);
                    v.push(self.write(n, len + gap, l));
                    len += gap + l;
                }
                2 | 5 if len > 0 => {
                    let off = self.rng.range(0, len);
                    let l = self.rng.range(1, 30_000);
                    v.push(self.write(n, off, l));
                    len = len.max(off + l);
                }
                3 if len > 0 => {
                    let s = self.rng.range(0, len);
                    v.push(Step::Trunc(n.clone(), s));
                    len = s;
                }
                _ => {
                    let s = len + self.rng.range(1, 20_000);
                    v.push(Step::Trunc(n.clone(), s));
                    len = s;
                }
            }
        }
        v
    }

    /// Xattr changes of file `n` besides its generation; `keep` are the xattrs it has.
    fn xattr_edits(&mut self, n: &Name, keep: &BTreeMap<String, Vec<u8>>) -> Vec<Step> {
        let mut v = Vec::new();
        if self.rng.chance(3) {
            let len = self.rng.range(0, 200) as usize;
            v.push(Step::SetX(
                n.clone(),
                "user.a".into(),
                XVal::Fill(self.rng.next(), len),
            ));
        }
        if self.rng.chance(6) {
            let len = self.rng.range(900, 6000) as usize;
            v.push(Step::SetX(
                n.clone(),
                "user.big".into(),
                XVal::Fill(self.rng.next(), len),
            ));
        }
        if self.rng.chance(8) {
            let tag = XVal::Fill(self.rng.next(), 8);
            v.push(Step::SetX(n.clone(), "scoutfs.srch.tag".into(), tag));
        }
        let removable: Vec<&String> = keep.keys().filter(|k| *k != GEN_X).collect();
        if !removable.is_empty() && self.rng.chance(4) {
            let k = removable[self.rng.range(0, removable.len() as u64) as usize].clone();
            if !v
                .iter()
                .any(|s| matches!(s, Step::SetX(_, x, _) if *x == k))
            {
                v.push(Step::RmX(n.clone(), k));
            }
        }
        v
    }

    fn finish(&mut self, n: &Name) -> Step {
        if self.rng.chance(2) {
            Step::Fsync(n.clone())
        } else {
            Step::Sync
        }
    }

    /// A new file: directly under its name, or as a temporary file renamed into place.
    fn op_create(&mut self) {
        let num = self.counter;
        self.counter += 1;
        let f = (self.dir(), format!("f{num}"));
        let mut v = vec![Step::SetRootX(NEXT_X.into(), self.counter)];
        let target = if self.rng.chance(2) {
            (self.dir(), format!("t{num}.1"))
        } else {
            f.clone()
        };
        v.push(Step::Create(target.clone()));
        v.extend(self.fresh_contents(&target));
        v.extend(self.xattr_edits(&target, &BTreeMap::new()));
        v.push(Step::SetX(target.clone(), GEN_X.into(), XVal::Gen(1)));
        v.push(Step::Fsync(target.clone()));
        if target != f {
            v.push(Step::Rename(target, f.clone()));
            v.push(self.finish(&f));
        }
        self.run(v, Done::Ack(num));
    }

    /// A new generation saved atomically: a temporary file (perhaps in another directory)
    /// with a copy of the contents, edited, or new contents, fsynced, renamed over the file.
    fn op_save(&mut self, num: u64, f: Name) {
        let generation = self.m.gen_of(&f) + 1;
        let t = (self.dir(), format!("t{num}.{generation}"));
        let old = self.m.obj(&f).expect("file").clone();
        let mut v = vec![Step::Create(t.clone())];
        if self.rng.chance(4) {
            v.extend(self.fresh_contents(&t));
        } else {
            v.push(Step::Copy(t.clone(), f.clone()));
            if !self.rng.chance(5) {
                v.extend(self.edits(&t, old.data.len() as u64));
            }
        }
        for k in old.x.keys().filter(|k| *k != GEN_X) {
            if !self.rng.chance(5) {
                v.push(Step::CopyX(t.clone(), f.clone(), k.clone()));
            }
        }
        v.extend(self.xattr_edits(&t, &BTreeMap::new()));
        v.push(Step::SetX(t.clone(), GEN_X.into(), XVal::Gen(generation)));
        v.push(Step::Fsync(t.clone()));
        v.push(Step::Rename(t, f.clone()));
        v.push(self.finish(&f));
        self.run(v, Done::Ack(num));
    }

    /// A new generation written in place: edits and xattr changes, then fsync.
    fn op_in_place(&mut self, num: u64, f: Name) {
        let generation = self.m.gen_of(&f) + 1;
        let old = self.m.obj(&f).expect("file").clone();
        let mut v = Vec::new();
        if !self.rng.chance(6) {
            v.extend(self.edits(&f, old.data.len() as u64));
        }
        v.extend(self.xattr_edits(&f, &old.x));
        v.push(Step::SetX(f.clone(), GEN_X.into(), XVal::Gen(generation)));
        v.push(Step::Fsync(f.clone()));
        self.run(v, Done::Ack(num));
    }

    fn op_move(&mut self, num: u64, f: Name) {
        let generation = self.m.gen_of(&f) + 1;
        let to = (
            (f.0 + 1 + self.rng.range(0, DIRS as u64 - 1) as u8) % DIRS,
            f.1.clone(),
        );
        let v = vec![
            Step::Rename(f.clone(), to.clone()),
            Step::SetX(to.clone(), GEN_X.into(), XVal::Gen(generation)),
            self.finish(&to),
        ];
        self.run(v, Done::Ack(num));
    }

    fn op_link(&mut self, num: u64, f: Name) {
        let generation = self.m.gen_of(&f) + 1;
        // Unique among all names: after a kill the link may have survived without the
        // generation that named it.
        let mut k = generation;
        while self.m.names.keys().any(|n| n.1 == format!("h{num}.{k}")) {
            k += 1;
        }
        let h = (self.dir(), format!("h{num}.{k}"));
        let v = vec![
            Step::Link(f.clone(), h),
            Step::SetX(f.clone(), GEN_X.into(), XVal::Gen(generation)),
            self.finish(&f),
        ];
        self.run(v, Done::Ack(num));
    }

    fn op_unlink(&mut self, num: u64, f: Name) {
        let v = vec![Step::Unlink(f), Step::Sync];
        self.run(v, Done::Unlink(num));
    }

    fn op_unlink_link(&mut self, h: Name) {
        let (_, num) = parse_name(&h.1).expect("a link name");
        let v = vec![Step::Unlink(h.clone()), Step::Sync];
        self.run(v, Done::UnlinkLink(num, h.1));
    }

    /// Pick and run the next operation.
    fn step(&mut self) {
        let files: Vec<(u64, Name)> = self
            .m
            .names
            .keys()
            .filter_map(|n| match parse_name(&n.1) {
                Some(('f', num)) => Some((num, n.clone())),
                _ => None,
            })
            .collect();
        let links: Vec<Name> = self
            .m
            .names
            .keys()
            .filter(|n| n.1.starts_with('h'))
            .cloned()
            .collect();
        let nf = files.len();
        let have = |w: u64| if nf > 0 { w } else { 0 };
        let weights = [
            // create, save, in place, move, link, unlink, unlink a link
            match nf {
                0..12 => 50,
                12..30 => 14,
                _ => 3,
            },
            have(24),
            have(24),
            have(5),
            if links.len() < 8 { have(5) } else { 0 },
            match nf {
                0..12 => 0,
                12..30 => 8,
                _ => 25,
            },
            if links.is_empty() { 0 } else { 5 },
        ];
        let mut r = self.rng.range(0, weights.iter().sum());
        let mut kind = 0;
        while r >= weights[kind] {
            r -= weights[kind];
            kind += 1;
        }
        let pick = |w: &mut Self| files[w.rng.range(0, nf as u64) as usize].clone();
        match kind {
            0 => self.op_create(),
            1 => {
                let (num, f) = pick(self);
                self.op_save(num, f)
            }
            2 => {
                let (num, f) = pick(self);
                self.op_in_place(num, f)
            }
            3 => {
                let (num, f) = pick(self);
                self.op_move(num, f)
            }
            4 => {
                let (num, f) = pick(self);
                self.op_link(num, f)
            }
            5 => {
                let (num, f) = pick(self);
                self.op_unlink(num, f)
            }
            _ => {
                let h = links[self.rng.range(0, links.len() as u64) as usize].clone();
                self.op_unlink_link(h)
            }
        }
    }
}

fn run_worker() {
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let num = |name: &str| -> u64 {
        env(name)
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number"))
    };
    let (meta, data) = (PathBuf::from(env(META_ENV)), PathBuf::from(env(DATA_ENV)));
    let max_dirty = num(MAX_DIRTY_ENV) as usize;
    let merge_every = num(MERGE_EVERY_ENV);
    let (server, fs) =
        mount(&meta, &data, num(RID_ENV), max_dirty).unwrap_or_else(|e| panic!("{e}"));
    let _merger =
        std::env::var_os(BG_MERGE_ENV).map(|_| server.spawn_merger(Duration::from_millis(3)));
    let m = scan(&fs).unwrap_or_else(|e| panic!("the child's scan: {e}"));
    // The next file number: the root's counter, or past every file number seen.
    let counter = m
        .names
        .keys()
        .filter_map(|n| parse_name(&n.1).map(|(_, num)| num + 1))
        .chain(
            m.root_x
                .get(NEXT_X)
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()),
        )
        .max()
        .unwrap_or(1);
    // End the line libtest started ("test ... ") before the first message.
    say("");
    say(&format!(
        "READY {:016x} {counter} ({})",
        m.digest(),
        m.summary()
    ));
    let mut w = Worker {
        fs,
        m,
        rng: Rng(num(CHILD_SEED_ENV)),
        counter,
    };
    let missing: Vec<Step> = (0..DIRS)
        .filter(|d| !w.m.dirs.contains(d))
        .map(Step::Mkdir)
        .collect();
    if !missing.is_empty() {
        let mut v = missing;
        v.push(Step::Sync);
        w.run(v, Done::Text("dirs"));
    }
    // Temporary files of operations a kill cut short.
    let temps: Vec<Step> =
        w.m.names
            .keys()
            .filter(|n| n.1.starts_with('t'))
            .map(|n| Step::Unlink(n.clone()))
            .collect();
    if !temps.is_empty() {
        let mut v = temps;
        v.push(Step::Sync);
        w.run(v, Done::Text("clean"));
    }
    let deadline = Instant::now() + WORKER_LIFETIME;
    let mut ops = 0u64;
    while Instant::now() < deadline {
        w.step();
        ops += 1;
        if merge_every > 0 && ops.is_multiple_of(merge_every) {
            say(&format!("MERGE {ops}"));
            server
                .with(|s| s.request_merge())
                .unwrap_or_else(|e| panic!("request_merge: {e}"));
            w.fs.sync()
                .unwrap_or_else(|e| panic!("sync for a merge: {e}"));
            let merged = server
                .with(|s| s.merge_finalized())
                .unwrap_or_else(|e| panic!("merge: {e}"));
            say(&format!("MERGED {ops} {merged}"));
        }
    }
    eprintln!("worker: not killed within {WORKER_LIFETIME:?}, stopping");
}

/// Entry point of the worker processes; NOT a test of its own.
///
/// It does nothing unless `SCOUTGW_FS_CRASH_WORKER` is set, which only the kill test below
/// does when it re-executes this binary with `--exact` this test's name.
#[test]
fn fs_crash_worker_entry_runs_only_in_child_processes() {
    if std::env::var_os(WORKER_ENV).is_none() {
        return;
    }
    run_worker();
}

// ---------------------------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------------------------

/// Set: allow the zeroed tails that unsynced truncates used to leave in synced blocks (the
/// bug [`unsynced_truncate_keeps_synced_bytes_after_a_crash`] guards, now fixed); by default
/// the check is strict.
const LENIENT_TAIL_ENV: &str = "SCOUTGW_FS_CRASH_LENIENT_TAIL";

fn seed() -> u64 {
    if let Ok(s) = std::env::var("SCOUTGW_FS_CRASH_SEED") {
        return s.parse().expect("SCOUTGW_FS_CRASH_SEED is a number");
    }
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("getrandom");
    u64::from_le_bytes(b)
}

fn rounds_from_env(default: u64) -> u64 {
    match std::env::var("SCOUTGW_FS_CRASH_ROUNDS") {
        Ok(s) => s.parse().expect("SCOUTGW_FS_CRASH_ROUNDS is a number"),
        Err(_) => default,
    }
}

/// When the parent kills the child.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// `ms` after spawning, whatever the child is doing (often mounting or scanning).
    Blind { ms: u64 },
    /// `us` after the child said READY: during its start-up operations or first files.
    AfterReady { us: u64 },
    /// `us` after the child began its `begins`-th operation: mid-write or mid-fsync.
    InOp { begins: u64, us: u64 },
    /// `us` after the child's `acks`-th completion line: as the next operation starts.
    AfterAck { acks: u64, us: u64 },
    /// `us` after the child announced a merge (or after 30 completions without one).
    InMerge { us: u64 },
}

impl Plan {
    fn pick(rng: &mut Rng) -> Plan {
        match rng.range(0, 100) {
            0..10 => Plan::Blind {
                ms: rng.range(0, 40),
            },
            10..20 => Plan::AfterReady {
                us: rng.range(0, 5000),
            },
            20..65 => Plan::InOp {
                begins: rng.range(1, 14),
                us: rng.range(0, 4000),
            },
            65..85 => Plan::AfterAck {
                acks: rng.range(1, 14),
                us: rng.range(0, 400),
            },
            _ => Plan::InMerge {
                us: rng.range(0, 4000),
            },
        }
    }
}

/// The settings of one child.
#[derive(Debug, Clone)]
struct ChildCfg {
    rid: u64,
    seed: u64,
    max_dirty: usize,
    merge_every: u64,
    bg_merge: bool,
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

/// The tag of a line of the child (libtest may have put its own text before the first one).
fn tag_of(line: &str) -> Option<(&str, &str)> {
    const TAGS: [&str; 7] = ["READY", "BEGIN", "ACK", "UNLINK", "DONE", "MERGE", "MERGED"];
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| TAGS.contains(w))?;
    let at = line.find(words[i]).expect("a word of the line");
    Some((words[i], line[at + words[i].len()..].trim()))
}

fn is_completion(tag: &str) -> bool {
    matches!(tag, "ACK" | "UNLINK" | "DONE")
}

/// What a child said before it died: its complete lines, its stderr.
struct ChildRun {
    lines: Vec<String>,
    log: String,
}

/// Run one child and SIGKILL it according to `plan`.
fn run_and_kill(dev: &Devices, c: &ChildCfg, plan: Plan, round: u64) -> Result<ChildRun, String> {
    let log_path = dev.dir.path().join(format!("child-{round}.log"));
    let log = File::create(&log_path).map_err(|e| e.to_string())?;
    // The running image, even if cargo has replaced the file on disk since.
    let exe = match Path::new("/proc/self/exe") {
        p if p.exists() => p.to_path_buf(),
        _ => std::env::current_exe().map_err(|e| e.to_string())?,
    };
    let mut cmd = Command::new(exe);
    if c.bg_merge {
        cmd.env(BG_MERGE_ENV, "1");
    }
    let mut child = cmd
        .args(["--exact", WORKER_TEST, "--nocapture", "--test-threads=1"])
        .env(WORKER_ENV, "1")
        .env(META_ENV, &dev.meta)
        .env(DATA_ENV, &dev.data)
        .env(RID_ENV, c.rid.to_string())
        .env(CHILD_SEED_ENV, c.seed.to_string())
        .env(MAX_DIRTY_ENV, c.max_dirty.to_string())
        .env(MERGE_EVERY_ENV, c.merge_every.to_string())
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
                // A line cut short by the kill is not a message.
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
    let count = |tags: &'static [&'static str], n: u64| {
        let mut seen = 0;
        move |l: &str| {
            seen += tag_of(l).is_some_and(|(t, _)| tags.contains(&t)) as u64;
            seen >= n
        }
    };
    let (waited, us) = match plan {
        Plan::Blind { ms } => {
            thread::sleep(Duration::from_millis(ms));
            (Ok(true), 0)
        }
        Plan::AfterReady { us } => (wait_for(&rx, &mut lines, count(&["READY"], 1)), us),
        Plan::InOp { begins, us } => (wait_for(&rx, &mut lines, count(&["BEGIN"], begins)), us),
        Plan::AfterAck { acks, us } => (
            wait_for(&rx, &mut lines, count(&["ACK", "UNLINK", "DONE"], acks)),
            us,
        ),
        Plan::InMerge { us } => {
            let mut done = count(&["ACK", "UNLINK"], 30);
            let w = wait_for(&rx, &mut lines, move |l| {
                done(l) || tag_of(l).is_some_and(|(t, _)| t == "MERGE")
            });
            (w, us)
        }
    };
    if matches!(waited, Ok(true)) && us > 0 {
        thread::sleep(Duration::from_micros(us));
    }
    let _ = guard.0.kill();
    let status = guard.0.wait().map_err(|e| format!("wait for child: {e}"))?;
    reader.join().expect("reader thread");
    lines.extend(rx.try_iter());
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let tail =
        |log: &str| log[log.floor_char_boundary(log.len().saturating_sub(4000))..].to_string();
    if status.signal() != Some(9) {
        return Err(format!(
            "the child was not killed but ended by itself ({status}); its log:\n{}",
            tail(&log)
        ));
    }
    if let Err(e) = waited {
        return Err(format!("{e}; the child's log:\n{}", tail(&log)));
    }
    Ok(ChildRun { lines, log })
}

/// Receive lines until one satisfies `stop` (true) or the child closes its stdout (false).
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

#[derive(Debug, Default)]
struct Totals {
    ops_completed: u64,
    acks: u64,
    unlinks: u64,
    killed_before_ready: u64,
    killed_in_op: u64,
    /// Kills in an operation whose effect was found durable in full, or in part.
    unfinished_landed: u64,
    unfinished_landed_in_part: u64,
    merges: u64,
    fresh_rids: u64,
    slack: SlackUse,
    max_names: usize,
    max_bytes: usize,
}

/// Cross-check a completion line with the model after the operation.
fn check_completion(m: &Model, tag: &str, rest: &str) -> Result<(), String> {
    let w: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<u64, String> {
        w.get(i)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad line {tag} {rest}"))
    };
    match tag {
        "ACK" => {
            let (n, generation, size) = (num(0)?, num(1)?, num(2)?);
            let sum = w
                .get(3)
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| format!("bad line ACK {rest}"))?;
            let f = m
                .file(n)
                .ok_or_else(|| format!("ACK of file {n}, which the model does not have"))?;
            let o = m.obj(&f)?;
            let mine = (m.gen_of(&f), o.data.len() as u64, checksum(&o.data));
            if mine != (generation, size, sum) {
                return Err(format!(
                    "ACK {rest}: the model has {} at generation {}, {} bytes, checksum {:016x}",
                    show(&f),
                    mine.0,
                    mine.1,
                    mine.2
                ));
            }
        }
        "UNLINK" => {
            let n = num(0)?;
            match w.get(1) {
                None if m.file(n).is_some() => {
                    return Err(format!("UNLINK {n}, but the model still has f{n}"))
                }
                Some(h) if m.names.keys().any(|k| k.1 == *h) => {
                    return Err(format!("UNLINK {rest}, but the model still has {h}"))
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}

/// Kill `rounds` children at random moments, checking the filesystem after each kill.
fn kill_rounds(default_rounds: u64) {
    let seed = seed();
    let rounds = rounds_from_env(default_rounds);
    let strict_tail = std::env::var_os(LENIENT_TAIL_ENV).is_none();
    eprintln!("fs_crash: seed {seed} (replay with SCOUTGW_FS_CRASH_SEED={seed}), {rounds} rounds");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let dev = Devices::new();
    let mut model = Model::default();
    let mut totals = Totals::default();
    let mut rid = 0x7000 + (rng.next() % 0x1000) * 0x1000;

    for round in 0..rounds {
        // Now and then the node comes back under a new rid; the dead one is fenced first.
        if round > 0 && rng.chance(5) {
            let server = LocalServer::new(
                Server::open(open(&dev.meta), cfg())
                    .unwrap_or_else(|e| panic!("seed {seed}, round {round}: Server::open: {e}")),
            );
            reclaim(&server, rid).unwrap_or_else(|e| panic!("seed {seed}, round {round}: {e}"));
            rid += 1;
            totals.fresh_rids += 1;
        }
        let child = ChildCfg {
            rid,
            seed: rng.next(),
            max_dirty: if rng.chance(3) {
                rng.range(20, 300) as usize
            } else {
                DEFAULT_MAX_DIRTY
            },
            merge_every: if rng.chance(3) { 0 } else { rng.range(2, 10) },
            bg_merge: rng.chance(4),
        };
        let plan = Plan::pick(&mut rng);
        let ctx = |what: &str| {
            format!(
                "fs_crash: seed {seed} (SCOUTGW_FS_CRASH_SEED={seed}), round {round}, plan \
                 {plan:?}, child {child:?}: {what}"
            )
        };
        let run = run_and_kill(&dev, &child, plan, round).unwrap_or_else(|e| panic!("{}", ctx(&e)));
        let tail =
            |log: &str| log[log.floor_char_boundary(log.len().saturating_sub(3000))..].to_string();
        let lines_tail = || {
            run.lines[run.lines.len().saturating_sub(6)..]
                .iter()
                .map(|l| {
                    if l.len() > 600 {
                        format!("{}...", &l[..l.floor_char_boundary(600)])
                    } else {
                        l.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n  ")
        };
        let ctx = |what: &str| {
            format!(
                "{}\nthe child's last lines:\n  {}\nthe child's log:\n{}",
                ctx(what),
                lines_tail(),
                tail(&run.log)
            )
        };

        // Replay what the child did and acknowledged.
        let mut ready = false;
        let mut pending: Option<Vec<Step>> = None;
        for line in &run.lines {
            let Some((tag, rest)) = tag_of(line) else {
                continue;
            };
            match tag {
                "READY" => {
                    ready = true;
                    let digest = rest.split_whitespace().next().unwrap_or("");
                    let mine = format!("{:016x}", model.digest());
                    assert_eq!(
                        digest,
                        mine,
                        "{}",
                        ctx(&format!(
                            "the child found another state than the parent checked ({})",
                            model.summary()
                        ))
                    );
                }
                "BEGIN" => {
                    assert!(pending.is_none(), "{}", ctx("BEGIN without completion"));
                    let steps: Result<Vec<Step>, String> =
                        rest.split_whitespace().map(Step::decode).collect();
                    pending = Some(steps.unwrap_or_else(|e| panic!("{}", ctx(&e))));
                }
                t if is_completion(t) => {
                    let steps = pending
                        .take()
                        .unwrap_or_else(|| panic!("{}", ctx("a completion without BEGIN")));
                    for s in &steps {
                        model.apply(s).unwrap_or_else(|e| {
                            panic!("{}", ctx(&format!("replaying {}: {e}", s.encode())))
                        });
                    }
                    check_completion(&model, t, rest).unwrap_or_else(|e| panic!("{}", ctx(&e)));
                    totals.ops_completed += 1;
                    totals.acks += (t == "ACK") as u64;
                    totals.unlinks += (t == "UNLINK") as u64;
                }
                "MERGED" => totals.merges += 1,
                _ => {}
            }
        }
        totals.killed_before_ready += !ready as u64;

        // fsck of the devices as the kill left them.
        let (problems, _warnings) = dev.fsck();
        assert!(
            problems.is_empty(),
            "{}",
            ctx(&format!("fsck found problems: {problems:#?}"))
        );

        // The namespace as a new mount finds it; one of the allowed states.
        let got = dev.scan().unwrap_or_else(|e| panic!("{}", ctx(&e)));
        let steps = pending.clone().unwrap_or_default();
        let mut states = vec![model.clone()];
        for s in &steps {
            let mut next = states.last().expect("a state").clone();
            next.apply(s)
                .unwrap_or_else(|e| panic!("{}", ctx(&format!("replaying {}: {e}", s.encode()))));
            states.push(next);
        }
        let all_prefixes = child.max_dirty != DEFAULT_MAX_DIRTY;
        let candidates: Vec<usize> = (0..=steps.len())
            .filter(|k| *k == 0 || all_prefixes || steps[k - 1].is_sync())
            .collect();
        let mut found = None;
        let mut first_diffs = Vec::new();
        for &k in candidates.iter().rev() {
            let mut slack = slack_after(&states[k], &steps[k..]);
            if strict_tail {
                slack.retain(|s| !s.tail_zero);
            }
            let (diffs, used) = compare(&states[k], &got, &slack);
            if diffs.is_empty() {
                found = Some((k, used));
                break;
            }
            if k == 0 || k == steps.len() {
                first_diffs.push(format!(
                    "as after {k} of its {} steps: {} difference(s):\n    {}",
                    steps.len(),
                    diffs.len(),
                    diffs
                        .iter()
                        .take(12)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n    ")
                ));
            }
        }
        let Some((k, used)) = found else {
            panic!(
                "{}",
                ctx(&format!(
                    "the filesystem is in none of the allowed states (candidates after steps \
                     {candidates:?}) of the unfinished operation {}\n  {}",
                    if steps.is_empty() {
                        "(none)".to_string()
                    } else {
                        encode_steps(&steps)
                    },
                    first_diffs.join("\n  ")
                ))
            );
        };
        if pending.is_some() {
            totals.killed_in_op += 1;
            totals.unfinished_landed += (k == steps.len()) as u64;
            totals.unfinished_landed_in_part += (k > 0 && k < steps.len()) as u64;
        }
        totals.slack.overwrite += used.overwrite;
        totals.slack.tail_zero += used.tail_zero;
        model = got;
        totals.max_names = totals.max_names.max(model.names.len());
        totals.max_bytes = totals
            .max_bytes
            .max(model.objs.values().map(|o| o.data.len()).sum());
    }

    // Fence the last child, merge everything, and check the result and the inode count.
    {
        let ctx = |what: &str| format!("fs_crash: seed {seed}, final check: {what}");
        let server = Arc::new(LocalServer::new(
            Server::open(open(&dev.meta), cfg())
                .unwrap_or_else(|e| panic!("{}", ctx(&e.to_string()))),
        ));
        reclaim(&server, rid).unwrap_or_else(|e| panic!("{}", ctx(&e)));
        server.with(|s| s.request_merge()).unwrap();
        server.with(|s| s.merge_finalized()).unwrap();
        drop(server);
        let (problems, _) = dev.fsck();
        assert!(problems.is_empty(), "{}", ctx(&format!("{problems:#?}")));
        let (_server, fs) = mount(&dev.meta, &dev.data, CHECK_RID, DEFAULT_MAX_DIRTY)
            .unwrap_or_else(|e| panic!("{}", ctx(&e)));
        let got = scan(&fs).unwrap_or_else(|e| panic!("{}", ctx(&e)));
        let (diffs, _) = compare(&model, &got, &[]);
        assert!(
            diffs.is_empty(),
            "{}",
            ctx(&format!("after the merge: {diffs:#?}"))
        );
        let used = fs.statfs().unwrap().used_inodes;
        let want = 1 + got.dirs.len() as u64 + got.objs.len() as u64;
        assert_eq!(
            used,
            want,
            "{}",
            ctx(&format!(
                "statfs counts {used} inodes, the namespace has {want} (root, {} directories, \
                 {} files)",
                got.dirs.len(),
                got.objs.len()
            ))
        );
        fs.unmount().unwrap();
    }

    eprintln!(
        "fs_crash: {rounds} kill rounds in {:.1?}: {} operations completed ({} ACKs, {} \
         UNLINKs); {} kills landed in an operation ({} found it durable in full, {} in part), \
         {} before the child was ready; {} merges; {} fresh rids; in-place slack used for {} \
         overwritten and {} tail-zeroed bytes; at most {} names and {} bytes of files",
        started.elapsed(),
        totals.ops_completed,
        totals.acks,
        totals.unlinks,
        totals.killed_in_op,
        totals.unfinished_landed,
        totals.unfinished_landed_in_part,
        totals.killed_before_ready,
        totals.merges,
        totals.fresh_rids,
        totals.slack.overwrite,
        totals.slack.tail_zero,
        totals.max_names,
        totals.max_bytes,
    );
    assert!(totals.acks > 0, "no child ever acknowledged a file");
    assert!(totals.killed_in_op > 0, "no kill landed in an operation");
}

/// SIGKILL a node running the file workload at random moments; after each kill everything
/// it acknowledged is there, exactly, and nothing else but its unfinished operation's
/// allowed states.
#[test]
fn sigkilled_file_workload_loses_no_acknowledged_file() {
    kill_rounds(80);
}

// ---------------------------------------------------------------------------------------------
// In-process reproductions
// ---------------------------------------------------------------------------------------------

/// Files are synced at 10000 bytes; then one is truncated to 5000 bytes, another truncated
/// to 5000 and extended to 12000, and the node dies before either change is synced. The
/// files must come back at 10000 bytes with all their synced bytes. (The first version of
/// `zero_tail` zeroed the new last block's tail in place, in a block the committed
/// transaction still maps, and bytes 5000..8192 read as zeros after the crash; it now copies
/// the block.)
#[test]
fn unsynced_truncate_keeps_synced_bytes_after_a_crash() {
    let dev = Devices::new();
    let contents = filler(42, 10_000);
    let sizes: [&[u64]; 2] = [&[5000], &[5000, 12_000]];
    let inos: Vec<u64> = {
        let (_server, fs) = mount(&dev.meta, &dev.data, 1, DEFAULT_MAX_DIRTY).unwrap();
        let node = NewNode {
            kind: FileType::Regular,
            perm: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
        };
        let inos: Vec<u64> = (0..sizes.len())
            .map(|i| {
                let name = format!("f{i}");
                let ino = fs
                    .create(ROOT_INO, name.as_bytes(), &node, true)
                    .unwrap()
                    .ino;
                fs.write(ino, 0, &contents).unwrap();
                ino
            })
            .collect();
        fs.sync().unwrap();
        for (ino, sizes) in inos.iter().zip(sizes) {
            for size in sizes.iter() {
                let set = SetAttr {
                    size: Some(*size),
                    ..SetAttr::default()
                };
                fs.setattr(*ino, &set).unwrap();
            }
        }
        // The node dies: no sync, no unmount.
        inos
    };
    let (_server, fs) = mount(&dev.meta, &dev.data, 2, DEFAULT_MAX_DIRTY).unwrap();
    let mut failures = Vec::new();
    for (ino, sizes) in inos.iter().zip(sizes) {
        assert_eq!(fs.getattr(*ino).unwrap().size, 10_000);
        let got = fs.read(*ino, 0, 20_000).unwrap();
        let bad: Vec<usize> = (0..got.len()).filter(|i| got[*i] != contents[*i]).collect();
        if let (Some(first), Some(last)) = (bad.first(), bad.last()) {
            failures.push(format!(
                "unsynced truncates to {sizes:?}: {} synced bytes changed, {first} to {last}, \
                 now {:02x?}...",
                bad.len(),
                &got[*first..*first + 8]
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
