//! Bad input never panics a node: random and mutated RPC records, fed straight to the NFS
//! service over a real filesystem (device files in a temporary folder), always get either no
//! reply or a well-formed RPC reply, and the service keeps answering valid calls.

use std::net::SocketAddr;
use std::sync::Arc;

use proptest::prelude::*;
use scoutgw::nfs::export::ExportOptions;
use scoutgw::nfs::rpc::parse_call;
use scoutgw::nfs::server::NfsService;
use scoutgw::nfs::xdr::{XdrReader, XdrWriter};
use scoutgw_blockdev::{BlockDevice, DeviceOptions, FileDevice, MetaDev};
use scoutgw_cluster::client::LocalServer;
use scoutgw_cluster::fs::{Fs, FsOptions};
use scoutgw_cluster::lock::LocalLocks;
use scoutgw_cluster::mkfs::{mkfs, MkfsOptions};
use scoutgw_cluster::server::{Server, ServerConfig};
use scoutgw_metrics::NodeMetrics;

struct Node {
    _dir: tempfile::TempDir,
    svc: NfsService,
    root: Vec<u8>,
}

fn open_dev(path: &std::path::Path) -> Arc<dyn BlockDevice> {
    Arc::new(FileDevice::open(path, DeviceOptions::default()).expect("open device"))
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let (meta, data) = (dir.path().join("meta.dev"), dir.path().join("data.dev"));
    std::fs::File::create(&meta)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    std::fs::File::create(&data)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let opts = MkfsOptions {
        slots: vec!["0,127.0.0.1,7100".parse().unwrap()],
        allow_small_size: true,
        ..MkfsOptions::default()
    };
    mkfs(open_dev(&meta), open_dev(&data), &opts).unwrap();
    let server = Server::open(open_dev(&meta), ServerConfig::default()).unwrap();
    let fsid = server.fsid();
    let server = Arc::new(LocalServer::new(server));
    let md = Arc::new(MetaDev::new(open_dev(&meta), fsid, 16 << 20));
    let fs = Fs::mount(
        md,
        open_dev(&data),
        server,
        Arc::new(LocalLocks::new()),
        7,
        FsOptions::default(),
    )
    .unwrap();
    let svc = NfsService::new(
        Arc::new(fs),
        fsid,
        ExportOptions::default(),
        [1; 8],
        64,
        Arc::new(NodeMetrics::new()),
    );
    let root = mnt_root(&svc);
    Node {
        _dir: dir,
        svc,
        root,
    }
}

fn peer() -> SocketAddr {
    "127.0.0.1:900".parse().unwrap()
}

/// A call with AUTH_SYS root credentials.
fn call(xid: u32, prog: u32, vers: u32, procedure: u32, args: &[u8]) -> Vec<u8> {
    let mut w = XdrWriter::new();
    w.u32(xid).u32(0).u32(2).u32(prog).u32(vers).u32(procedure);
    let mut cred = XdrWriter::new();
    cred.u32(0).opaque(b"fuzz").u32(0).u32(0).u32(0);
    w.u32(1).opaque(&cred.buf).u32(0).opaque(&[]);
    w.buf.extend_from_slice(args);
    w.buf
}

fn mnt_root(svc: &NfsService) -> Vec<u8> {
    let mut args = XdrWriter::new();
    args.opaque(b"/");
    let reply = svc
        .handle(peer(), &call(1, 100005, 3, 1, &args.buf))
        .expect("MNT answers");
    let mut r = XdrReader::new(&reply[24..]);
    assert_eq!(r.u32().unwrap(), 0, "MNT3_OK");
    r.opaque("fh", 64).unwrap().to_vec()
}

/// A reply is a well-formed RPC reply to `xid`: header words in range.
fn assert_reply(reply: &[u8], xid: u32) {
    let mut r = XdrReader::new(reply);
    assert_eq!(r.u32().unwrap(), xid, "reply xid");
    assert_eq!(r.u32().unwrap(), 1, "REPLY");
    let stat = r.u32().unwrap();
    assert!(stat <= 1, "reply_stat {stat}");
}

fn getattr_ok(node: &Node, xid: u32) {
    let mut args = XdrWriter::new();
    args.opaque(&node.root);
    let reply = node
        .svc
        .handle(peer(), &call(xid, 100003, 3, 1, &args.buf))
        .expect("GETATTR answers");
    assert_reply(&reply, xid);
    assert_eq!(
        &reply[24..28],
        &[0, 0, 0, 0],
        "GETATTR of the root is NFS3_OK"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Any bytes at all: no panic; a reply, if any, is an RPC reply.
    #[test]
    fn random_records_get_no_reply_or_an_rpc_reply(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let node = node_once();
        if let Some(reply) = node.svc.handle(peer(), &bytes) {
            let xid = u32::from_be_bytes(bytes[..4].try_into().unwrap());
            assert_reply(&reply, xid);
        }
        getattr_ok(node, 0xfeed);
    }

    /// Valid headers of every NFS and MOUNT procedure with random arguments (some starting
    /// with a real handle): no panic, an RPC reply each, and the service still answers.
    #[test]
    fn every_procedure_survives_random_arguments(
        prog in prop_oneof![Just(100003u32), Just(100005u32), Just(100000u32)],
        procedure in 0u32..24,
        with_root in any::<bool>(),
        tail in proptest::collection::vec(any::<u8>(), 0..300),
        xid in any::<u32>(),
    ) {
        let node = node_once();
        let vers = match prog { 100003 | 100005 => 3, _ => 2 };
        let mut args = XdrWriter::new();
        if with_root {
            args.opaque(&node.root);
        }
        args.buf.extend_from_slice(&tail);
        // Destructive procedures are fuzzed too: the export must survive whatever they do.
        if let Some(reply) = node.svc.handle(peer(), &call(xid, prog, vers, procedure, &args.buf)) {
            assert_reply(&reply, xid);
            prop_assert!(parse_call(&reply).is_err(), "a reply is never parsed as a call");
        }
        getattr_ok(node, xid.wrapping_add(1));
    }
}

/// One node for all cases of this process (making a filesystem per case would dominate).
fn node_once() -> &'static Node {
    static NODE: std::sync::OnceLock<Node> = std::sync::OnceLock::new();
    NODE.get_or_init(node)
}
