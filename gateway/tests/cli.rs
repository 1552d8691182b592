//! End-to-end tests of the `scoutgw` binary (`mkfs`, `print`, `quickstart`) on real sparse
//! device files in a temporary folder.
//!
//! Layout facts the tests rely on (see `cluster/src/format/layout.rs` and
//! `blockdev/src/header.rs`): the super block is 4 KiB block 16 (byte 65536) of both devices,
//! quorum block N is 4 KiB block 17 + N of the metadata device, metadata blocks are 64 KiB and
//! mkfs puts the `meta_alloc[0]` leaf in 64 KiB block 2. Every block starts with the header
//! `crc (0..4) | magic (4..8) | fsid (8..16) | seq (16..24) | blkno (24..32)`, the crc being
//! crc32c over bytes 4..end of the block.
//!
//! Exit codes (gateway/src/error.rs): 0 success, 1 the command ran and failed (corruption,
//! I/O, no filesystem), 2 the request was refused (bad arguments, too small, existing fs).

use std::ffi::OsStr;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use scoutgw_blockdev::header::block_crc;
use serde_json::Value;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;
/// Super, quorum and data blocks.
const SMALL_BLOCK: u64 = 4096;
/// Metadata blocks.
const LARGE_BLOCK: u64 = 65536;
/// Byte offset of the super block on both devices.
const SUPER_OFFSET: u64 = 16 * SMALL_BLOCK;
/// The second super block slot (the server alternates between the two).
const SUPER_ALT_OFFSET: u64 = 15 * SMALL_BLOCK;
/// Byte offset of `fmt_vers` in the super block (right after the 32-byte header).
const SUPER_FMT_VERS: usize = 32;

/// The usual test devices: big enough for every structure, small enough to be fast.
const META_BYTES: u64 = 128 * MIB;
const DATA_BYTES: u64 = 64 * MIB;
/// The hard minimums accepted with `--allow-small-size`.
const MIN_META_BYTES: u64 = 64 * MIB;
const MIN_DATA_BYTES: u64 = 16 * MIB;

/// Metadata blocks that are never free after mkfs: 0 and 1 (the first 128 KiB, holding the
/// super and quorum blocks), the `meta_alloc[0]` leaf (2), the `data_alloc` leaf (3) and the
/// `server_meta_avail[0]` list block (4).
const META_BLOCKS_IN_USE: u64 = 6;
/// Data blocks below the first allocatable one (the first 256 KiB).
const DATA_BLOCKS_RESERVED: u64 = 64;

/// Every tree `print` summarizes.
const TREES: [&str; 8] = [
    "meta_alloc[0]",
    "meta_alloc[1]",
    "data_alloc",
    "fs_root",
    "logs_root",
    "log_merge",
    "mounted_clients",
    "srch_root",
];

fn quorum_offset(slot: u64) -> u64 {
    (17 + slot) * SMALL_BLOCK
}

// ------------------------------------------------------------------------------------------
// Running the binary

/// What one run of `scoutgw` did.
struct Out {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scoutgw {}\n--- exit code: {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }
}

impl Out {
    /// Assert the exit code, showing the whole run when it differs.
    #[track_caller]
    fn code(&self, expected: i32) -> &Self {
        assert_eq!(self.code, Some(expected), "unexpected exit code\n{self}");
        self
    }

    #[track_caller]
    fn stderr_has(&self, phrase: &str) -> &Self {
        assert!(
            self.stderr.contains(phrase),
            "stderr lacks {phrase:?}\n{self}"
        );
        self
    }

    #[track_caller]
    fn stdout_has(&self, phrase: &str) -> &Self {
        assert!(
            self.stdout.contains(phrase),
            "stdout lacks {phrase:?}\n{self}"
        );
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{self}"))
    }
}

fn scoutgw<I, S>(args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let output = Command::cargo_bin("scoutgw")
        .expect("the scoutgw binary is built")
        .args(&args)
        .output()
        .expect("scoutgw runs");
    Out {
        args: args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

// ------------------------------------------------------------------------------------------
// Device files

/// A metadata and a data device file in their own temporary folder.
struct Devices {
    dir: TempDir,
    meta: PathBuf,
    data: PathBuf,
}

fn sparse_file(path: &Path, bytes: u64) {
    File::create(path)
        .and_then(|f| f.set_len(bytes))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

impl Devices {
    /// Two fresh (all-zero, sparse) device files.
    fn sparse(meta_bytes: u64, data_bytes: u64) -> Self {
        let dir = TempDir::new().expect("temporary folder");
        let meta = dir.path().join("meta.dev");
        let data = dir.path().join("data.dev");
        sparse_file(&meta, meta_bytes);
        sparse_file(&data, data_bytes);
        Devices { dir, meta, data }
    }

    /// `scoutgw mkfs ARGS META DATA`.
    fn mkfs(&self, args: &[&str]) -> Out {
        let mut all: Vec<&OsStr> = vec![OsStr::new("mkfs")];
        all.extend(args.iter().map(OsStr::new));
        all.push(self.meta.as_os_str());
        all.push(self.data.as_os_str());
        scoutgw(all)
    }

    /// Fresh 128 MiB / 64 MiB devices formatted by `scoutgw mkfs -A` with these slots.
    fn formatted_by_mkfs(slots: &[&str]) -> Self {
        let d = Self::sparse(META_BYTES, DATA_BYTES);
        let mut args = vec!["-A"];
        for s in slots {
            args.extend(["-Q", s]);
        }
        d.mkfs(&args).code(0);
        d
    }

    /// Fresh 128 MiB / 64 MiB devices formatted by `scoutgw quickstart` (the same mkfs code
    /// as `scoutgw mkfs`, one quorum slot 0 at 127.0.0.1:7100). The corruption tests start
    /// from this.
    fn formatted_by_quickstart() -> Self {
        let dir = TempDir::new().expect("temporary folder");
        quickstart(dir.path()).code(0);
        let meta = dir.path().join("meta.dev");
        let data = dir.path().join("data.dev");
        Devices { dir, meta, data }
    }

    fn print(&self) -> Out {
        scoutgw([OsStr::new("print"), self.meta.as_os_str()])
    }

    fn print_json(&self) -> Out {
        scoutgw([
            OsStr::new("print"),
            self.meta.as_os_str(),
            OsStr::new("--json"),
        ])
    }

    /// The fsid `print --json` reports for a healthy filesystem.
    #[track_caller]
    fn fsid(&self) -> String {
        let out = self.print_json();
        out.code(0);
        out.json()["super_block"]["fsid"]
            .as_str()
            .expect("fsid is a hex string")
            .to_string()
    }

    fn snapshot(&self) -> [Snapshot; 2] {
        [Snapshot::take(&self.meta), Snapshot::take(&self.data)]
    }
}

fn quickstart(dir: &Path) -> Out {
    scoutgw([
        OsStr::new("quickstart"),
        OsStr::new("--dir"),
        dir.as_os_str(),
        OsStr::new("--meta-size"),
        OsStr::new("128M"),
        OsStr::new("--data-size"),
        OsStr::new("64M"),
        OsStr::new("--setup-only"),
    ])
}

fn read_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut buf, offset))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    buf
}

fn write_bytes(path: &Path, offset: u64, bytes: &[u8]) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.write_all_at(bytes, offset))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Invert one byte, leaving everything else (including any crc) as it was.
fn flip_byte(path: &Path, offset: u64) {
    let b = read_bytes(path, offset, 1);
    write_bytes(path, offset, &[!b[0]]);
}

/// Edit a 4 KiB block in place and recompute its crc, so that only the edit is wrong.
fn edit_and_reseal_small_block(path: &Path, offset: u64, edit: impl FnOnce(&mut [u8])) {
    let mut block = read_bytes(path, offset, SMALL_BLOCK as usize);
    edit(&mut block);
    let crc = block_crc(&block);
    block[0..4].copy_from_slice(&crc.to_le_bytes());
    write_bytes(path, offset, &block);
}

/// The fsid field of the super block header of a device, as `print` shows it.
fn super_header_fsid(path: &Path) -> String {
    let b = read_bytes(path, SUPER_OFFSET + 8, 8);
    format!("{:016x}", u64::from_le_bytes(b.try_into().unwrap()))
}

const CHUNK: usize = 1 << 20;

/// The full content of a device file, for "left untouched" checks: every 1 MiB chunk, with
/// all-zero chunks stored as `None` so that big sparse files cost no memory.
struct Snapshot {
    path: PathBuf,
    len: u64,
    chunks: Vec<Option<Vec<u8>>>,
}

/// Call `f` with every chunk of the file, in order.
fn for_each_chunk(path: &Path, mut f: impl FnMut(usize, &[u8])) -> u64 {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let len = file.metadata().unwrap().len();
    let mut buf = vec![0u8; CHUNK];
    let mut i = 0;
    loop {
        let n = read_full(&mut file, &mut buf);
        if n == 0 {
            break;
        }
        f(i, &buf[..n]);
        i += 1;
    }
    len
}

fn read_full(file: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]).expect("read device file") {
            0 => break,
            k => n += k,
        }
    }
    n
}

impl Snapshot {
    fn take(path: &Path) -> Self {
        let zero = vec![0u8; CHUNK];
        let mut chunks = Vec::new();
        let len = for_each_chunk(path, |_, c| {
            chunks.push((c != &zero[..c.len()]).then(|| c.to_vec()));
        });
        Snapshot {
            path: path.to_path_buf(),
            len,
            chunks,
        }
    }

    fn is_all_zero(&self) -> bool {
        self.chunks.iter().all(Option::is_none)
    }

    /// Assert that the file still has exactly the bytes it had when the snapshot was taken.
    #[track_caller]
    fn assert_unchanged(&self, context: &dyn fmt::Display) {
        let zero = vec![0u8; CHUNK];
        let mut seen = 0;
        let mut first_diff = None;
        let len = for_each_chunk(&self.path, |i, now| {
            seen += 1;
            let before = match self.chunks.get(i) {
                Some(Some(c)) => &c[..],
                Some(None) => &zero[..now.len()],
                None => &[][..],
            };
            if first_diff.is_none() && now != before {
                let at = now
                    .iter()
                    .zip(before)
                    .position(|(a, b)| a != b)
                    .unwrap_or(now.len().min(before.len()));
                first_diff = Some(i as u64 * CHUNK as u64 + at as u64);
            }
        });
        assert_eq!(
            (len, seen),
            (self.len, self.chunks.len()),
            "{}: size changed\n{context}",
            self.path.display()
        );
        assert_eq!(
            first_diff,
            None,
            "{}: content changed (first difference at the byte shown)\n{context}",
            self.path.display()
        );
    }
}

/// Run a mkfs that must be refused: exit code 2, `phrase` on stderr, nothing on stdout that
/// claims success, and both devices byte-for-byte as they were.
#[track_caller]
fn assert_mkfs_refused(devs: &Devices, args: &[&str], phrase: &str) -> Out {
    let before = devs.snapshot();
    let out = devs.mkfs(args);
    out.code(2).stderr_has(phrase);
    assert!(
        !out.stdout.contains("Created"),
        "refused mkfs claims success\n{out}"
    );
    for s in &before {
        s.assert_unchanged(&out);
    }
    out
}

// ------------------------------------------------------------------------------------------
// The report of a fresh filesystem

#[track_caller]
fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .expect("an array")
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no {name:?} in {list:#}"))
}

#[track_caller]
fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{v} is not an unsigned integer"))
}

/// Everything `print --json` must say about a filesystem straight out of mkfs on devices of
/// these sizes with these `(slot, "ip:port")` quorum slots.
#[track_caller]
fn check_fresh_report(r: &Value, meta_bytes: u64, data_bytes: u64, slots: &[(u64, &str)]) {
    let ctx = format!("{r:#}");
    let sb = &r["super_block"];
    assert_eq!(sb["format_version"], 1, "{ctx}");
    assert_eq!(sb["meta_device"], true, "{ctx}");
    assert_eq!(sb["seq"], 1, "{ctx}");
    assert_eq!(sb["quorum_config_version"], 1, "{ctx}");
    let fsid = sb["fsid"].as_str().expect("fsid string");
    assert!(
        fsid.len() == 16 && u64::from_str_radix(fsid, 16).is_ok_and(|f| f != 0),
        "fsid {fsid:?}"
    );

    let total_meta = u(&sb["total_meta_blocks"]);
    let total_data = u(&sb["total_data_blocks"]);
    assert_eq!(total_meta, meta_bytes / LARGE_BLOCK, "{ctx}");
    assert_eq!(total_data, data_bytes / SMALL_BLOCK, "{ctx}");
    assert_eq!(u(&sb["first_meta_blkno"]), 2, "{ctx}");
    assert_eq!(u(&sb["first_data_blkno"]), DATA_BLOCKS_RESERVED, "{ctx}");

    // Quorum: exactly the slots given, each with its own never-written block.
    let got: Vec<(u64, String)> = r["quorum_slots"]
        .as_array()
        .expect("quorum_slots array")
        .iter()
        .map(|q| (u(&q["slot"]), q["addr"].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(u64, String)> = slots.iter().map(|(n, a)| (*n, a.to_string())).collect();
    assert_eq!(got, want, "{ctx}");
    for q in r["quorum_slots"].as_array().unwrap() {
        assert_eq!(u(&q["blkno"]), 17 + u(&q["slot"]), "{ctx}");
        assert_eq!(u(&q["write_nr"]), 0, "{ctx}");
        assert_eq!(q["events"], Value::Array(vec![]), "{ctx}");
        assert_eq!(q["error"], Value::Null, "{ctx}");
    }

    // Trees: every one present, without error; only the two allocators and fs_root (the
    // root directory's inode and its meta_seq index item) hold anything.
    let trees = &r["trees"];
    let names: Vec<&str> = trees
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, TREES, "{ctx}");
    for name in TREES {
        let t = named(trees, name);
        assert_eq!(t["error"], Value::Null, "{name}: {ctx}");
        if name == "meta_alloc[0]" || name == "data_alloc" {
            assert_eq!(u(&t["height"]), 1, "{name}: {ctx}");
            assert_eq!(u(&t["blocks"]), 1, "{name}: {ctx}");
            assert_eq!(u(&t["free_extents"]), 1, "{name}: {ctx}");
        } else if name == "fs_root" {
            assert_eq!(u(&t["height"]), 1, "{name}: {ctx}");
            assert_eq!(u(&t["root_blkno"]), 5, "{name}: {ctx}");
            assert_eq!(u(&t["items"]), 2, "{name}: {ctx}");
        } else {
            assert_eq!(u(&t["height"]), 0, "{name} is not empty: {ctx}");
            assert_eq!(u(&t["root_blkno"]), 0, "{name} is not empty: {ctx}");
            assert_eq!(u(&t["blocks"]), 0, "{name} is not empty: {ctx}");
            assert_eq!(u(&t["items"]), 0, "{name} is not empty: {ctx}");
        }
    }
    assert_eq!(u(&named(trees, "meta_alloc[0]")["root_blkno"]), 2, "{ctx}");
    assert_eq!(u(&named(trees, "data_alloc")["root_blkno"]), 3, "{ctx}");

    // Free space: every metadata block but the six in use is either in meta_alloc[0] or in
    // the server's avail list; every data block past the reserved 256 KiB is in data_alloc.
    let meta_alloc_free = u(&sb["meta_alloc_free_blocks"][0]);
    assert_eq!(u(&sb["meta_alloc_free_blocks"][1]), 0, "{ctx}");
    assert_eq!(
        u(&named(trees, "meta_alloc[0]")["free_blocks"]),
        meta_alloc_free,
        "{ctx}"
    );
    let lists = &r["alloc_lists"];
    let avail = named(lists, "server_meta_avail[0]");
    assert_eq!(avail["error"], Value::Null, "{ctx}");
    assert_eq!(u(&avail["first_blkno"]), 4, "{ctx}");
    let avail_entries = u(&avail["entries"]);
    assert_eq!(u(&avail["total_nr"]), avail_entries, "{ctx}");
    assert!(avail_entries > 0, "{ctx}");
    assert_eq!(
        meta_alloc_free + avail_entries,
        total_meta - META_BLOCKS_IN_USE,
        "{ctx}"
    );
    for name in [
        "server_meta_avail[1]",
        "server_meta_freed[0]",
        "server_meta_freed[1]",
    ] {
        let l = named(lists, name);
        assert_eq!(u(&l["entries"]), 0, "{name}: {ctx}");
        assert_eq!(l["error"], Value::Null, "{name}: {ctx}");
    }
    let data_free = total_data - DATA_BLOCKS_RESERVED;
    assert_eq!(u(&sb["data_alloc_free_blocks"]), data_free, "{ctx}");
    assert_eq!(
        u(&named(trees, "data_alloc")["free_blocks"]),
        data_free,
        "{ctx}"
    );

    assert_eq!(r["errors"], Value::Array(vec![]), "{ctx}");
}

// ------------------------------------------------------------------------------------------
// 1. mkfs, then print

#[test]
fn mkfs_then_print_json_reports_the_given_slots_sizes_free_space_and_empty_trees() {
    let d = Devices::formatted_by_mkfs(&["0,127.0.0.1,7100", "2,127.0.0.2,7101"]);
    let out = d.print_json();
    out.code(0);
    assert!(out.stderr.is_empty(), "{out}");
    let r = out.json();
    check_fresh_report(
        &r,
        META_BYTES,
        DATA_BYTES,
        &[(0, "127.0.0.1:7100"), (2, "127.0.0.2:7101")],
    );
    // The data device carries the super copy of the same filesystem.
    let fsid = r["super_block"]["fsid"].as_str().unwrap();
    assert_eq!(super_header_fsid(&d.data), fsid);
}

#[test]
fn mkfs_then_print_text_exits_0_and_shows_fsid_and_slots() {
    let d = Devices::formatted_by_mkfs(&["0,127.0.0.1,7100", "2,127.0.0.2,7101"]);
    let fsid = d.fsid();
    let out = d.print();
    out.code(0)
        .stdout_has(&fsid)
        .stdout_has("127.0.0.1:7100")
        .stdout_has("127.0.0.2:7101")
        .stdout_has("meta_alloc[0]");
    assert!(!out.stdout.contains("ERROR"), "{out}");
    assert!(!out.stdout.contains("problems"), "{out}");
}

#[test]
fn mkfs_json_summary_parses_and_its_fsid_and_sizes_match_print() {
    let d = Devices::sparse(META_BYTES, DATA_BYTES);
    let out = d.mkfs(&[
        "-A",
        "--json",
        "-Q",
        "2,127.0.0.2,7101",
        "-Q",
        "0,127.0.0.1,7100",
    ]);
    out.code(0);
    let s = out.json();
    // mkfs prints the fsid as a JSON number today, print as 16 hex digits; accept either
    // form from mkfs but require the same filesystem.
    let mkfs_fsid = match &s["fsid"] {
        Value::Number(n) => format!("{:016x}", n.as_u64().expect("fsid is a u64")),
        Value::String(h) => h.trim_start_matches("0x").to_string(),
        other => panic!("fsid {other}\n{out}"),
    };
    assert_eq!(mkfs_fsid, d.fsid());
    assert_eq!(s["format_version"], 1, "{out}");
    assert_eq!(
        u(&s["total_meta_blocks"]),
        META_BYTES / LARGE_BLOCK,
        "{out}"
    );
    assert_eq!(
        u(&s["total_data_blocks"]),
        DATA_BYTES / SMALL_BLOCK,
        "{out}"
    );
    assert_eq!(
        u(&s["free_meta_blocks"]),
        META_BYTES / LARGE_BLOCK - META_BLOCKS_IN_USE,
        "{out}"
    );
    assert_eq!(
        u(&s["free_data_blocks"]),
        DATA_BYTES / SMALL_BLOCK - DATA_BLOCKS_RESERVED,
        "{out}"
    );
    // Sorted by slot number, whatever the order on the command line.
    assert_eq!(
        s["quorum_slots"],
        serde_json::json!(["0,127.0.0.1,7100", "2,127.0.0.2,7101"]),
        "{out}"
    );
}

// ------------------------------------------------------------------------------------------
// 2. Refusals: exit code 2, a clear message, both devices untouched

#[test]
fn mkfs_refuses_a_metadata_device_below_64_mib_even_with_allow_small_size() {
    let d = Devices::sparse(32 * MIB, DATA_BYTES);
    let out = assert_mkfs_refused(
        &d,
        &["-A", "-Q", "0,127.0.0.1,7100"],
        "metadata device of 33554432 bytes is below the minimum of 67108864 bytes",
    );
    out.stderr_has("meta.dev");
    assert!(d.snapshot().iter().all(Snapshot::is_all_zero));

    // --max-meta-size counts, not the file size.
    let d = Devices::sparse(META_BYTES, DATA_BYTES);
    assert_mkfs_refused(
        &d,
        &["-A", "-Q", "0,127.0.0.1,7100", "--max-meta-size", "32M"],
        "metadata device of 33554432 bytes is below the minimum",
    );
}

#[test]
fn mkfs_refuses_a_data_device_below_16_mib_even_with_allow_small_size() {
    let d = Devices::sparse(META_BYTES, 8 * MIB);
    let out = assert_mkfs_refused(
        &d,
        &["-A", "-Q", "0,127.0.0.1,7100"],
        "data device of 8388608 bytes is below the minimum of 16777216 bytes",
    );
    out.stderr_has("data.dev");
    assert!(d.snapshot().iter().all(Snapshot::is_all_zero));
}

#[test]
fn mkfs_refuses_devices_below_64_gib_without_allow_small_size() {
    let d = Devices::sparse(META_BYTES, DATA_BYTES);
    assert_mkfs_refused(
        &d,
        &["-Q", "0,127.0.0.1,7100"],
        "below the minimum of 68719476736 bytes (use --allow-small-size",
    );
}

#[test]
fn mkfs_refuses_invalid_quorum_slot_specs_with_the_reason() {
    let d = Devices::sparse(MIN_META_BYTES, MIN_DATA_BYTES);
    let before = d.snapshot();
    for (spec, reason) in [
        (
            "15,127.0.0.1,7100",
            "slot number \"15\" is not between 0 and 14",
        ),
        (
            "-1,127.0.0.1,7100",
            "slot number \"-1\" is not between 0 and 14",
        ),
        (
            "x,127.0.0.1,7100",
            "slot number \"x\" is not between 0 and 14",
        ),
        ("0,300.1.1.1,7100", "\"300.1.1.1\" is not an IPv4 address"),
        ("0,localhost,7100", "\"localhost\" is not an IPv4 address"),
        ("0,::1,7100", "\"::1\" is not an IPv4 address"),
        ("0,127.0.0.1,0", "port \"0\" is not between 1 and 65535"),
        (
            "0,127.0.0.1,70000",
            "port \"70000\" is not between 1 and 65535",
        ),
        (
            "0,127.0.0.1,http",
            "port \"http\" is not between 1 and 65535",
        ),
        ("0,127.0.0.1", "three comma-separated fields"),
        ("0", "three comma-separated fields"),
        ("", "three comma-separated fields"),
        ("0,127.0.0.1,7100,1", "three comma-separated fields"),
        ("0,0.0.0.0,7100", "0.0.0.0 cannot be a member's address"),
        (
            "0,255.255.255.255,7100",
            "255.255.255.255 cannot be a member's address",
        ),
        ("0,224.0.0.1,7100", "224.0.0.1 cannot be a member's address"),
    ] {
        // `--quorum-slot=SPEC` so that "-1,..." reaches the slot parser instead of looking
        // like an option.
        let arg = format!("--quorum-slot={spec}");
        let out = d.mkfs(&["-A", "-Q", "1,127.0.0.1,7100", &arg]);
        out.code(2)
            .stderr_has("invalid quorum slot")
            .stderr_has(reason);
        for s in &before {
            s.assert_unchanged(&out);
        }
    }
    // The short form takes the same parser.
    assert_mkfs_refused(
        &d,
        &["-A", "-Q", "15,127.0.0.1,7100"],
        "is not between 0 and 14",
    );
    assert!(before.iter().all(Snapshot::is_all_zero));
}

#[test]
fn mkfs_refuses_the_same_slot_number_twice() {
    let d = Devices::sparse(MIN_META_BYTES, MIN_DATA_BYTES);
    assert_mkfs_refused(
        &d,
        &["-A", "-Q", "1,127.0.0.1,7100", "-Q", "1,127.0.0.2,7100"],
        "quorum slot 1 is given more than once",
    );
}

#[test]
fn mkfs_refuses_two_slots_with_the_same_address() {
    let d = Devices::sparse(MIN_META_BYTES, MIN_DATA_BYTES);
    assert_mkfs_refused(
        &d,
        &["-A", "-Q", "0,127.0.0.1,7100", "-Q", "3,127.0.0.1,7100"],
        "quorum slots 0 and 3 have the same address 127.0.0.1:7100",
    );
}

#[test]
fn mkfs_refuses_to_overwrite_an_existing_filesystem_without_force() {
    let d = Devices::formatted_by_mkfs(&["0,127.0.0.1,7100"]);
    let fsid = d.fsid();
    let out = assert_mkfs_refused(
        &d,
        &["-A", "-Q", "0,127.0.0.1,7100"],
        "refusing to overwrite it without --force",
    );
    out.stderr_has("meta.dev").stderr_has(&fsid);
    // The old filesystem is intact.
    assert_eq!(d.fsid(), fsid);
    check_fresh_report(
        &d.print_json().json(),
        META_BYTES,
        DATA_BYTES,
        &[(0, "127.0.0.1:7100")],
    );
}

#[test]
fn mkfs_refuses_a_data_device_that_holds_a_filesystem_without_force() {
    let old = Devices::formatted_by_mkfs(&["0,127.0.0.1,7100"]);
    let fsid = old.fsid();
    let fresh_meta = old.dir.path().join("other-meta.dev");
    sparse_file(&fresh_meta, META_BYTES);
    let d = Devices {
        meta: fresh_meta,
        data: old.data.clone(),
        dir: old.dir,
    };
    let out = assert_mkfs_refused(
        &d,
        &["-A", "-Q", "0,127.0.0.1,7100"],
        "refusing to overwrite it without --force",
    );
    out.stderr_has("data.dev").stderr_has(&fsid);
    assert_eq!(super_header_fsid(&d.data), fsid);
}

#[test]
fn mkfs_refuses_the_same_file_as_both_devices() {
    let d = Devices::sparse(META_BYTES, DATA_BYTES);
    let before = d.snapshot();
    // The same path twice, and the same file under a second name (hard link).
    let alias = d.dir.path().join("alias.dev");
    std::fs::hard_link(&d.meta, &alias).unwrap();
    for other in [&d.meta, &alias] {
        let out = scoutgw([
            OsStr::new("mkfs"),
            OsStr::new("-A"),
            OsStr::new("-Q"),
            OsStr::new("0,127.0.0.1,7100"),
            d.meta.as_os_str(),
            other.as_os_str(),
        ]);
        out.code(2)
            .stderr_has("the metadata and data devices are the same file");
        for s in &before {
            s.assert_unchanged(&out);
        }
    }
}

#[test]
fn mkfs_refuses_unsupported_format_versions() {
    let d = Devices::sparse(META_BYTES, DATA_BYTES);
    for v in ["2", "0"] {
        assert_mkfs_refused(
            &d,
            &["-A", "-Q", "0,127.0.0.1,7100", "--format-version", v],
            &format!("format version {v} is not supported"),
        );
    }
    // Version 1, given explicitly, is what this build writes.
    d.mkfs(&["-A", "-Q", "0,127.0.0.1,7100", "--format-version", "1"])
        .code(0);
}

#[test]
fn mkfs_without_any_quorum_slot_is_a_usage_error() {
    let d = Devices::sparse(META_BYTES, DATA_BYTES);
    let out = assert_mkfs_refused(&d, &["-A"], "--quorum-slot");
    out.stderr_has("required");
}

// ------------------------------------------------------------------------------------------
// 3. --force

#[test]
fn mkfs_force_replaces_an_existing_filesystem_with_a_new_fsid() {
    let d = Devices::formatted_by_mkfs(&["0,127.0.0.1,7100"]);
    let old = d.fsid();
    d.mkfs(&["-A", "--force", "-Q", "1,127.0.0.5,7200"]).code(0);
    let out = d.print_json();
    out.code(0);
    let r = out.json();
    check_fresh_report(&r, META_BYTES, DATA_BYTES, &[(1, "127.0.0.5:7200")]);
    let new = r["super_block"]["fsid"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(super_header_fsid(&d.meta), new);
    assert_eq!(super_header_fsid(&d.data), new);
}

// ------------------------------------------------------------------------------------------
// 4. Corruption found through `print`

#[test]
fn print_names_the_tree_with_a_bad_crc_block_and_exits_1() {
    let d = Devices::formatted_by_quickstart();
    // A byte in the body of the meta_alloc[0] leaf (64 KiB block 2).
    flip_byte(&d.meta, 2 * LARGE_BLOCK + 1000);

    let out = d.print();
    out.code(1)
        .stdout_has("meta_alloc[0]")
        .stdout_has("ERROR: block 2: bad crc32c")
        .stdout_has("problems")
        .stderr_has("1 problem(s) found");

    let out = d.print_json();
    out.code(1);
    let r = out.json();
    let errors = r["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{out}");
    let e = errors[0].as_str().unwrap();
    assert!(
        e.starts_with("meta_alloc[0]:") && e.contains("bad crc32c"),
        "{out}"
    );
    let t = named(&r["trees"], "meta_alloc[0]");
    assert!(t["error"].as_str().unwrap().contains("bad crc32c"), "{out}");
    // The rest of the report is still there and healthy.
    assert_eq!(named(&r["trees"], "data_alloc")["error"], Value::Null);
    assert_eq!(u(&named(&r["trees"], "data_alloc")["blocks"]), 1);
    assert_eq!(r["quorum_slots"][0]["error"], Value::Null);
}

#[test]
fn print_reports_one_damaged_super_copy_and_reads_the_other() {
    let d = Devices::formatted_by_quickstart();
    flip_byte(&d.meta, SUPER_OFFSET);
    let out = d.print_json();
    // A damaged inactive copy is what a crash during a super write leaves: a warning, as
    // fsck reports it, not a problem.
    out.code(0);
    let r = out.json();
    assert_eq!(u(&r["super_block"]["blkno"]), 15, "{out}");
    assert_eq!(r["errors"], serde_json::json!([]), "{out}");
    let warnings = r["warnings"].to_string();
    assert!(warnings.contains("block 16: bad crc32c"), "{out}");
}

#[test]
fn print_fails_with_a_crc_error_when_both_super_block_crcs_are_damaged() {
    let d = Devices::formatted_by_quickstart();
    flip_byte(&d.meta, SUPER_OFFSET);
    flip_byte(&d.meta, SUPER_ALT_OFFSET);
    for out in [d.print(), d.print_json()] {
        out.code(1).stderr_has(": bad crc32c").stderr_has("stored");
        assert!(out.stdout.is_empty(), "{out}");
    }
}

#[test]
fn print_refuses_a_super_block_with_an_unknown_format_version() {
    let d = Devices::formatted_by_quickstart();
    for offset in [SUPER_OFFSET, SUPER_ALT_OFFSET] {
        edit_and_reseal_small_block(&d.meta, offset, |b| {
            b[SUPER_FMT_VERS..SUPER_FMT_VERS + 8].copy_from_slice(&99u64.to_le_bytes());
        });
    }
    let out = d.print();
    assert!(
        matches!(out.code, Some(c) if c != 0),
        "exit code 0 for an unknown format version\n{out}"
    );
    out.stderr_has("unsupported format version 99")
        .stderr_has("meta.dev");
}

#[test]
fn print_says_no_scoutgw_filesystem_on_a_zeroed_or_tiny_device() {
    let dir = TempDir::new().unwrap();
    let zeroed = dir.path().join("zeroed.dev");
    sparse_file(&zeroed, META_BYTES);
    let tiny = dir.path().join("tiny.dev");
    sparse_file(&tiny, 4096);
    for (path, detail) in [
        (&zeroed, "never written"),
        (&tiny, "too small to hold a super block"),
    ] {
        let out = scoutgw([OsStr::new("print"), path.as_os_str()]);
        out.code(1)
            .stderr_has("no scoutgw filesystem")
            .stderr_has(detail);
    }

    // A formatted device whose super blocks were wiped is no filesystem either.
    let d = Devices::formatted_by_quickstart();
    write_bytes(&d.meta, SUPER_OFFSET, &[0u8; SMALL_BLOCK as usize]);
    write_bytes(&d.meta, SUPER_ALT_OFFSET, &[0u8; SMALL_BLOCK as usize]);
    d.print().code(1).stderr_has("no scoutgw filesystem");
}

#[test]
fn print_of_a_truncated_metadata_device_says_truncated() {
    let d = Devices::formatted_by_quickstart();
    OpenOptions::new()
        .write(true)
        .open(&d.meta)
        .and_then(|f| f.set_len(META_BYTES / 2))
        .unwrap();
    d.print()
        .code(1)
        .stderr_has("truncated")
        .stderr_has(&(META_BYTES / 2).to_string())
        .stderr_has(&META_BYTES.to_string());
}

#[test]
fn print_reports_a_quorum_block_with_a_wrong_blkno_against_its_slot() {
    let d = Devices::formatted_by_quickstart();
    edit_and_reseal_small_block(&d.meta, quorum_offset(0), |b| {
        b[24..32].copy_from_slice(&99u64.to_le_bytes());
    });

    let out = d.print();
    out.code(1)
        .stdout_has("ERROR: block 17: header claims to be block 99")
        .stderr_has("1 problem(s) found");

    let out = d.print_json();
    out.code(1);
    let r = out.json();
    assert_eq!(
        r["errors"],
        serde_json::json!([
            "quorum slot 0: block 17: header claims to be block 99 (misdirected write or wrong device)"
        ]),
        "{out}"
    );
    assert!(r["quorum_slots"][0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("claims to be block 99")));
    // The trees are unaffected.
    for name in TREES {
        assert_eq!(named(&r["trees"], name)["error"], Value::Null, "{out}");
    }
}

// ------------------------------------------------------------------------------------------
// 5. quickstart

#[test]
fn quickstart_formats_new_device_files_then_reuses_them_on_the_second_run() {
    let dir = TempDir::new().unwrap();
    let qdir = dir.path().join("qs");
    let meta = qdir.join("meta.dev");
    let data = qdir.join("data.dev");
    let run = || {
        scoutgw([
            OsStr::new("quickstart"),
            OsStr::new("--dir"),
            qdir.as_os_str(),
            OsStr::new("--meta-size"),
            OsStr::new("128M"),
            OsStr::new("--data-size"),
            OsStr::new("64M"),
            OsStr::new("--quorum-addr"),
            OsStr::new("127.0.0.3:7300"),
            OsStr::new("--setup-only"),
        ])
    };

    let first = run();
    first
        .code(0)
        .stdout_has("created")
        .stdout_has("Created scoutgw filesystem");
    assert_eq!(std::fs::metadata(&meta).unwrap().len(), META_BYTES);
    assert_eq!(std::fs::metadata(&data).unwrap().len(), DATA_BYTES);
    let fsid = fsid_lines(&first);

    let print = scoutgw([OsStr::new("print"), meta.as_os_str(), OsStr::new("--json")]);
    print.code(0);
    let r = print.json();
    check_fresh_report(&r, META_BYTES, DATA_BYTES, &[(0, "127.0.0.3:7300")]);
    assert_eq!(r["super_block"]["fsid"], fsid.as_str());
    assert_eq!(super_header_fsid(&data), fsid);

    let second = run();
    second
        .code(0)
        .stdout_has(&format!("already holds filesystem {fsid}; using it"));
    assert!(!second.stdout.contains("created"), "{second}");
    assert!(!second.stdout.contains("Created"), "{second}");
    assert_eq!(fsid_lines(&second), fsid);
    assert_eq!(std::fs::metadata(&meta).unwrap().len(), META_BYTES);
}

#[test]
fn quickstart_nodes_makes_a_slot_and_a_config_per_node_on_its_own_loopback_address() {
    let dir = TempDir::new().unwrap();
    let qdir = dir.path().join("qc");
    let run = |nodes: &str| {
        scoutgw([
            OsStr::new("quickstart"),
            OsStr::new("--dir"),
            qdir.as_os_str(),
            OsStr::new("--meta-size"),
            OsStr::new("128M"),
            OsStr::new("--data-size"),
            OsStr::new("64M"),
            OsStr::new("--nodes"),
            OsStr::new(nodes),
            OsStr::new("--setup-only"),
        ])
    };
    run("3")
        .code(0)
        .stdout_has("Created scoutgw filesystem")
        .stdout_has("node2.toml");
    let print = scoutgw([
        OsStr::new("print"),
        qdir.join("meta.dev").as_os_str(),
        OsStr::new("--json"),
    ]);
    let r = print.code(0).json();
    let slots = r["quorum_slots"].as_array().expect("quorum slots");
    assert_eq!(slots.len(), 3, "{r}");
    for (i, s) in slots.iter().enumerate() {
        let addr = s["addr"].as_str().unwrap();
        assert!(
            addr.starts_with(&format!("127.0.0.{}:", i + 1)),
            "slot {i} on 127.0.0.{}: {addr}",
            i + 1
        );
    }
    for i in 0..3 {
        let text = std::fs::read_to_string(qdir.join(format!("node{i}.toml"))).unwrap();
        assert!(text.contains(&format!("quorum_slot = {i}")), "{text}");
        assert!(
            text.contains(&format!("bind = \"127.0.0.{}:2049\"", i + 1)),
            "{text}"
        );
    }
    // The folder's filesystem has three slots: a different node count is refused.
    run("2").code(2).stderr_has("3 quorum slot(s), not 2");
}

/// The fsid of every `fsid ...` line of a quickstart output, which must all agree.
#[track_caller]
fn fsid_lines(out: &Out) -> String {
    let fsids: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("fsid"))
        .map(str::trim)
        .collect();
    assert!(!fsids.is_empty(), "no fsid line\n{out}");
    assert!(fsids.iter().all(|f| *f == fsids[0]), "fsids differ\n{out}");
    fsids[0].to_string()
}

// ------------------------------------------------------------------------------------------
// 6. --help

#[test]
fn help_lists_every_subcommand_with_its_purpose() {
    let out = scoutgw(["--help"]);
    out.code(0)
        .stdout_has("Usage: scoutgw <COMMAND>")
        .stdout_has("mkfs")
        .stdout_has("Write a new filesystem")
        .stdout_has("print")
        .stdout_has("Show the super block")
        .stdout_has("quickstart")
        .stdout_has("one-node filesystem");
}

#[test]
fn print_and_quickstart_help_describe_the_command_and_its_options() {
    scoutgw(["print", "--help"])
        .code(0)
        .stdout_has("Show the super block, quorum blocks")
        .stdout_has("exit code 1")
        .stdout_has("--json")
        .stdout_has("<META_DEV>");
    scoutgw(["quickstart", "--help"])
        .code(0)
        .stdout_has("Set up a one-node filesystem")
        .stdout_has("--dir")
        .stdout_has("--meta-size")
        .stdout_has("--data-size")
        .stdout_has("--quorum-addr");
}

#[test]
fn mkfs_help_describes_the_command_and_its_options() {
    scoutgw(["mkfs", "--help"])
        .code(0)
        .stdout_has("Write a new filesystem onto a metadata device and a data device")
        .stdout_has("--quorum-slot")
        .stdout_has("--force")
        .stdout_has("--allow-small-size")
        .stdout_has("--format-version")
        .stdout_has("<META_DEV>")
        .stdout_has("<DATA_DEV>");
}

#[test]
fn quickstart_refuses_a_data_device_that_belongs_to_no_filesystem() {
    let dir = TempDir::new().unwrap();
    let qdir = dir.path().join("qs");
    quickstart(&qdir).code(0);
    let data = qdir.join("data.dev");
    std::fs::remove_file(&data).unwrap();
    sparse_file(&data, DATA_BYTES);
    quickstart(&qdir)
        .code(2)
        .stderr_has("does not belong to it");
    assert!(read_bytes(&data, 0, 1 << 20).iter().all(|&b| b == 0));
}

#[test]
fn fsck_of_a_new_filesystem_is_clean_and_damage_exits_4() {
    let d = Devices::formatted_by_quickstart();
    let out = scoutgw([
        OsStr::new("fsck"),
        d.meta.as_os_str(),
        d.data.as_os_str(),
        OsStr::new("--json"),
    ]);
    out.code(0);
    let r = out.json();
    assert_eq!(r["problems"], Value::Array(vec![]), "{out}");
    // Damage: a free extent leaf that no longer verifies.
    flip_byte(&d.meta, 2 * 65536 + 1000);
    let out = scoutgw([OsStr::new("fsck"), d.meta.as_os_str(), d.data.as_os_str()]);
    out.code(4)
        .stdout_has("meta_alloc[0]")
        .stdout_has("bad crc32c");
    // No filesystem at all: cannot check.
    let dir = TempDir::new().unwrap();
    let zero = dir.path().join("zero.dev");
    sparse_file(&zero, META_BYTES);
    scoutgw([OsStr::new("fsck"), zero.as_os_str(), d.data.as_os_str()])
        .code(8)
        .stderr_has("no scoutgw filesystem");
}
