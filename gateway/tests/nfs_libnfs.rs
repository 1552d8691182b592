//! An independent NFS client against a real `scoutgw serve` process: libnfs's `nfs-cp`,
//! `nfs-cat` and `nfs-ls` (Debian `libnfs-utils`) copy files in and out, list and stat them,
//! cross-checked with the raw RPC client of tests/common.
//!
//! When the tools are missing the tests print a note and pass, unless `CI=true`, where they
//! fail. Ports 14101-14199.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Are the libnfs tools installed? Fails under CI when they are not.
fn have_libnfs() -> bool {
    let found = Command::new("nfs-cp").arg("--help").output().is_ok()
        && Command::new("nfs-ls").arg("--help").output().is_ok();
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("nfs-cp/nfs-ls not found: CI must install libnfs-utils");
        }
        eprintln!("SKIPPED: nfs-cp/nfs-ls not found (apt-get install libnfs-utils)");
    }
    found
}

/// An NFS URL for libnfs; `path` "" is the export root, else a file (note the `//`: libnfs
/// splits the export path from the file at the last slash).
fn url(node: &Node, path: &str) -> String {
    let q = format!("nfsport={0}&mountport={0}&version=3&uid=0&gid=0", node.port);
    if path.is_empty() {
        format!("nfs://127.0.0.1/?{q}")
    } else {
        format!("nfs://127.0.0.1//{path}?{q}")
    }
}

/// Run a libnfs tool; stdout on success, a panic with its output otherwise.
fn tool(node: &Node, prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed ({}):\n{}\n{}\nnode log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nfs_cp(node: &Node, from: &str, to: &str) {
    tool(node, "nfs-cp", &[from, to]);
}

fn read_local(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

#[test]
fn libnfs_copies_files_in_and_out_intact() {
    if !have_libnfs() {
        return;
    }
    let node = Node::start(14101, &[]);
    let mut c = Rpc::connect(node.addr());
    let root = c.root();
    let local = tempfile::tempdir().unwrap();

    for (i, size) in [0usize, 1, MIB + 1, 20 * MIB].into_iter().enumerate() {
        let data = pattern(100 + i as u64, size);
        let src = local.path().join(format!("src-{size}"));
        std::fs::write(&src, &data).unwrap();
        let name = format!("in-{size}");

        // In with nfs-cp; checked on the server with raw READs.
        nfs_cp(&node, src.to_str().unwrap(), &url(&node, &name));
        let (fh, attr) = c.lookup(&root, name.as_bytes()).expect("copied file");
        assert_eq!(attr.unwrap().size, size as u64, "{name}");
        let on_server = c.read_all(&fh);
        assert_eq!(
            checksum(&on_server),
            checksum(&data),
            "{name}: content on the server"
        );

        // Out again with nfs-cp.
        let back = local.path().join(format!("back-{size}"));
        nfs_cp(&node, &url(&node, &name), back.to_str().unwrap());
        let got = read_local(&back);
        assert_eq!(got.len(), size, "{name}: size copied out");
        assert_eq!(
            checksum(&got),
            checksum(&data),
            "{name}: content copied out"
        );
    }

    // A file written with raw FILE_SYNC WRITEs (not 4 KiB aligned in size) comes out intact
    // through libnfs, including by nfs-cat.
    let data = pattern(200, 3 * MIB + 5);
    let fh = c.create_file(&root, b"rpc-made", 0o644);
    c.write_all(&fh, &data);
    let out = local.path().join("rpc-made");
    nfs_cp(&node, &url(&node, "rpc-made"), out.to_str().unwrap());
    assert_eq!(checksum(&read_local(&out)), checksum(&data));
    let small = c.create_file(&root, b"hello.txt", 0o644);
    c.write_all(&small, b"hello, libnfs\n");
    assert_eq!(
        tool(&node, "nfs-cat", &[&url(&node, "hello.txt")]),
        "hello, libnfs\n"
    );

    // A sparse file: a hole, then data.
    let sparse = c.create_file(&root, b"sparse", 0o644);
    c.write(&sparse, 5 * MIB as u64, b"tail", FILE_SYNC)
        .unwrap();
    let out = local.path().join("sparse");
    nfs_cp(&node, &url(&node, "sparse"), out.to_str().unwrap());
    let got = read_local(&out);
    assert_eq!(got.len(), 5 * MIB + 4);
    assert!(
        got[..5 * MIB].iter().all(|b| *b == 0),
        "the hole reads as zeros"
    );
    assert_eq!(&got[5 * MIB..], b"tail");
}

/// The `nfs-ls` line naming `name`, split into columns.
fn ls_line<'a>(listing: &'a str, name: &str) -> Option<Vec<&'a str>> {
    listing
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.last() == Some(&name))
}

#[test]
fn libnfs_lists_stats_and_sees_removals() {
    if !have_libnfs() {
        return;
    }
    let node = Node::start(14102, &[]);
    let mut c = Rpc::connect(node.addr());
    let root = c.root();

    // A tree made with raw MKDIR/CREATE/WRITE, some of it by uid 1000.
    let top = c.mkdir_mode(&root, b"top", 0o755);
    let sub = c.mkdir_mode(&top, b"sub", 0o750);
    let f = c.create_file(&sub, b"deep.bin", 0o640);
    c.write_all(&f, &pattern(1, 12_345));
    let pubd = c.mkdir_mode(&root, b"pub", 0o777);
    let mut u = Rpc::connect_as(node.addr(), Cred::user(1000, 100, &[]));
    let uf = u.create_file(&pubd, b"users.txt", 0o600);
    u.write_all(&uf, b"0123456789");
    for i in 0..20 {
        c.create_file(&root, format!("file-{i:02}").as_bytes(), 0o644);
    }
    c.symlink(&root, b"link", b"top/sub/deep.bin").unwrap();

    // nfs-ls of the root: every name, long format.
    let ls = tool(&node, "nfs-ls", &[&url(&node, "")]);
    for i in 0..20 {
        let cols = ls_line(&ls, &format!("file-{i:02}"))
            .unwrap_or_else(|| panic!("file-{i:02} not listed:\n{ls}"));
        assert_eq!(cols[0], "-rw-r--r--", "{cols:?}");
    }
    let top_cols = ls_line(&ls, "top").unwrap_or_else(|| panic!("top not listed:\n{ls}"));
    assert_eq!(top_cols[0], "drwxr-xr-x", "{top_cols:?}");
    assert_eq!(top_cols[1], "3", "nlink of top: {top_cols:?}");
    let pub_cols = ls_line(&ls, "pub").unwrap_or_else(|| panic!("pub not listed:\n{ls}"));
    assert_eq!(pub_cols[0], "drwxrwxrwx", "{pub_cols:?}");
    assert!(ls_line(&ls, "link").is_some(), "the symlink:\n{ls}");
    assert_eq!(
        ls.lines().filter(|l| !l.trim().is_empty()).count(),
        23,
        "20 files, top, pub, link and nothing else ('.' and '..' are hidden):\n{ls}"
    );

    // nfs-ls -R: the subdirectories' entries too, with their sizes, owners and modes.
    let lr = tool(&node, "nfs-ls", &["-R", &url(&node, "")]);
    let deep = lr
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.last().is_some_and(|n| n.ends_with("deep.bin")))
        .unwrap_or_else(|| panic!("deep.bin not listed recursively:\n{lr}"));
    assert!(deep.last().unwrap().contains("sub"), "{deep:?}");
    assert_eq!(deep[0], "-rw-r-----", "{deep:?}");
    assert_eq!((deep[2], deep[3], deep[4]), ("0", "0", "12345"), "{deep:?}");
    let users = lr
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.last().is_some_and(|n| n.ends_with("users.txt")))
        .unwrap_or_else(|| panic!("users.txt not listed recursively:\n{lr}"));
    assert_eq!(
        (users[0], users[2], users[3], users[4]),
        ("-rw-------", "1000", "100", "10"),
        "{users:?}"
    );
    assert!(
        lr.lines().any(|l| l
            .split_whitespace()
            .last()
            .is_some_and(|n| n.ends_with("sub"))
            && l.starts_with("drwxr-x---")),
        "sub listed as a 0750 directory:\n{lr}"
    );

    // nfs-ls -s: the filesystem's totals.
    let summary = tool(&node, "nfs-ls", &["-s", &url(&node, "")]);
    let stat = c.fsstat(&root).unwrap();
    assert!(
        summary.contains(&format!("of {:>12} bytes free", stat.tbytes))
            || summary.contains(&stat.tbytes.to_string()),
        "summary {summary:?} does not show {} total bytes",
        stat.tbytes
    );

    // Removed with raw REMOVE: gone from nfs-ls.
    for i in 0..20 {
        if i % 2 == 0 {
            assert_eq!(c.remove(&root, format!("file-{i:02}").as_bytes()), st::OK);
        }
    }
    assert_eq!(c.remove(&sub, b"deep.bin"), st::OK);
    let ls = tool(&node, "nfs-ls", &[&url(&node, "")]);
    for i in 0..20 {
        let listed = ls_line(&ls, &format!("file-{i:02}")).is_some();
        assert_eq!(
            listed,
            i % 2 == 1,
            "file-{i:02} after removing the even ones:\n{ls}"
        );
    }
    let lr = tool(&node, "nfs-ls", &["-R", &url(&node, "")]);
    assert!(!lr.contains("deep.bin"), "deep.bin still listed:\n{lr}");
    assert!(lr.contains("users.txt"), "{lr}");
}
