//! The cost of moving a lock between two nodes (issue 7), in one process on real device
//! files: node A leads the only quorum slot and runs the server, node B mounts through it;
//! both talk over the real TCP transport, the lock server grants and invalidates, and
//! invalidations commit (two device flushes and a server commit) before the other node may
//! read.
//!
//! Run with `cargo bench -p scoutgw-cluster --bench cluster_locks`. Each round writes 4 KiB
//! into one file and then reads it back, `SCOUTGW_BENCH_ROUNDS` (default 300) rounds:
//!
//! * **anchor — one node**: write on A, read on A. The locks stay on A, nothing moves.
//! * **write on A, read on B**: B's read needs a read grant, so the server invalidates A's
//!   write grant: A commits its transaction (the write is made durable) and downgrades;
//!   B samples fresh roots and reads. The next write on A needs a write grant again, so
//!   B's read grant is invalidated. Every round is two lock round trips.
//! * **one node with a commit per round**: write on A, `sync`, read on A — what the moving
//!   lock costs beyond the commit the invalidation must do anyway.
//!
//! Every read is checked against what was written. The ratio printed is
//! anchor time / measured time (below 1: slower than the anchor).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scoutgw_blockdev::{BlockDevice, DeviceOptions, FileDevice};
use scoutgw_cluster::fence::PidFileFencer;
use scoutgw_cluster::format::inode::ROOT_INO;
use scoutgw_cluster::fs::{FileType, Fs, FsOptions, NewNode};
use scoutgw_cluster::mkfs::{mkfs, MkfsOptions, QuorumSlot};
use scoutgw_cluster::node::{ClusterNode, NodeOptions};
use scoutgw_cluster::quorum::QuorumOptions;
use scoutgw_cluster::server::ServerConfig;

fn open(path: &Path) -> Arc<dyn BlockDevice> {
    Arc::new(FileDevice::open(path, DeviceOptions::default()).expect("device file"))
}

fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = t.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn node(dir: &Path, rid: u64, slot: Option<usize>) -> ClusterNode {
    let opts = NodeOptions {
        rid,
        quorum_slot: slot,
        quorum: QuorumOptions::default(),
        server: ServerConfig {
            cache_bytes: 64 << 20,
            ..ServerConfig::default()
        },
        fs: FsOptions::default(),
        cache_bytes: 64 << 20,
        fencer: Arc::new(PidFileFencer::new(dir.join("fence"))),
        recovery_timeout: Duration::from_secs(5),
        reconnect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
        fence_timeout: Duration::from_secs(5),
        merge_interval: Duration::from_millis(100),
    };
    ClusterNode::start(open(&dir.join("meta")), open(&dir.join("data")), opts).expect("node starts")
}

fn rounds(n: usize, mut one: impl FnMut(usize)) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        one(i);
    }
    start.elapsed()
}

fn main() {
    let n: usize = std::env::var("SCOUTGW_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir_in(std::env::var_os("SCOUTGW_BENCH_DIR").unwrap_or(".".into()))
        .expect("temp dir");
    for (name, size) in [("meta", 1u64 << 30), ("data", 1 << 30)] {
        std::fs::File::create(dir.path().join(name))
            .and_then(|f| f.set_len(size))
            .expect("device file");
    }
    let mkfs_opts = MkfsOptions {
        slots: vec![QuorumSlot {
            nr: 0,
            addr: std::net::SocketAddrV4::new([127, 0, 0, 1].into(), free_port()),
        }],
        allow_small_size: true,
        ..MkfsOptions::default()
    };
    mkfs(
        open(&dir.path().join("meta")),
        open(&dir.path().join("data")),
        &mkfs_opts,
    )
    .expect("mkfs");
    let a = node(dir.path(), 0xa, Some(0));
    let b = node(dir.path(), 0xb, None);
    let file = NewNode {
        kind: FileType::Regular,
        perm: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
    };
    let block = |i: usize| vec![(i % 251) as u8; 4096];
    let check = |fs: &Fs, ino: u64, i: usize| {
        assert_eq!(fs.read(ino, 0, 4096).expect("read"), block(i), "round {i}");
    };

    let f1 = a
        .fs()
        .create(ROOT_INO, b"one-node", &file, true)
        .unwrap()
        .ino;
    let anchor = rounds(n, |i| {
        a.fs().write(f1, 0, &block(i)).unwrap();
        check(a.fs(), f1, i);
    });
    let f2 = a
        .fs()
        .create(ROOT_INO, b"one-node-sync", &file, true)
        .unwrap()
        .ino;
    let synced = rounds(n, |i| {
        a.fs().write(f2, 0, &block(i)).unwrap();
        a.fs().sync().unwrap();
        check(a.fs(), f2, i);
    });
    let f3 = a
        .fs()
        .create(ROOT_INO, b"two-nodes", &file, true)
        .unwrap()
        .ino;
    // First touch on B (lookup) outside the timing.
    b.fs().getattr(f3).unwrap();
    let moved = rounds(n, |i| {
        a.fs().write(f3, 0, &block(i)).unwrap();
        check(b.fs(), f3, i);
    });
    let inv: u64 = a.lock_counts().iter().map(|(_, c)| c.invalidations).sum();

    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!("cluster_locks: {n} rounds of a 4 KiB write then a read of it");
    println!(
        "  anchor  one node (write A, read A)              {:9.1} us/round",
        per(anchor)
    );
    println!(
        "          one node, commit per round              {:9.1} us/round  ratio {:.3}",
        per(synced),
        anchor.as_secs_f64() / synced.as_secs_f64()
    );
    println!(
        "          two nodes (write A, read B)             {:9.1} us/round  ratio {:.3}  \
         (vs commit per round {:.3}; invalidations on A: {inv})",
        per(moved),
        anchor.as_secs_f64() / moved.as_secs_f64(),
        synced.as_secs_f64() / moved.as_secs_f64(),
    );
    b.shutdown().expect("B leaves");
    a.shutdown().expect("A leaves");
}
