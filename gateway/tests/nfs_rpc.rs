//! The NFSv3 export of a real `scoutgw serve` process, driven over TCP on 127.0.0.1 by a raw
//! ONC RPC client (tests/common): retransmissions, hostile input, stable handles, write
//! verifiers, concurrent writes, directory cookies, AUTH_SYS permissions and export
//! options, special files, filesystem information and MOUNT/portmap.
//!
//! Each test runs its own node on its own port (14001-14099) so they run in parallel.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;

fn setup(port: u16) -> (Node, Rpc, Vec<u8>) {
    setup_with(port, &[])
}

fn setup_with(port: u16, env: &[(&str, &str)]) -> (Node, Rpc, Vec<u8>) {
    let node = Node::start(port, env);
    let mut c = Rpc::connect(node.addr());
    let root = c.root();
    (node, c, root)
}

fn name(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

// ------------------------------------------------------------------------------------------
// Retransmissions and the duplicate-request cache

/// Send `msg` twice (waiting for each reply), once more over a fresh connection (a client
/// retransmits after reconnecting), and check all three replies are byte-identical.
fn send_thrice(node: &Node, c: &mut Rpc, msg: &[u8]) -> Vec<u8> {
    let first = c.raw(msg);
    let second = c.raw(msg);
    assert_eq!(first, second, "a retransmission got a different reply");
    let mut other = Rpc::connect(node.addr());
    assert_eq!(
        other.raw(msg),
        first,
        "a retransmission over a new connection got a different reply"
    );
    first
}

#[test]
fn retransmitted_create_rename_remove_mkdir_get_the_original_reply() {
    let (node, mut c, root) = setup(14001);

    // CREATE GUARDED: executing it twice would answer EXIST.
    let xid = c.next_xid();
    let create = c.message(
        xid,
        NFS,
        3,
        proc3::CREATE,
        &args::create(&root, b"a", How::Guarded(Sattr::mode(0o644))),
    );
    let reply = send_thrice(&node, &mut c, &create);
    assert_eq!(reply_status(&reply), st::OK);
    assert_eq!(
        c.create(&root, b"a", How::Guarded(Sattr::mode(0o644)))
            .unwrap_err(),
        st::EXIST,
        "a new xid executes again"
    );

    // RENAME a -> b: executing it twice would answer NOENT.
    let xid = c.next_xid();
    let rename = c.message(
        xid,
        NFS,
        3,
        proc3::RENAME,
        &args::rename(&root, b"a", &root, b"b"),
    );
    let reply = send_thrice(&node, &mut c, &rename);
    assert_eq!(reply_status(&reply), st::OK);
    assert_eq!(c.lookup(&root, b"a").unwrap_err(), st::NOENT);
    c.lookup(&root, b"b").expect("b after the rename");
    assert_eq!(c.rename(&root, b"a", &root, b"b"), st::NOENT, "a new xid");

    // REMOVE b.
    let xid = c.next_xid();
    let remove = c.message(xid, NFS, 3, proc3::REMOVE, &args::dirop(&root, b"b"));
    let reply = send_thrice(&node, &mut c, &remove);
    assert_eq!(reply_status(&reply), st::OK);
    assert_eq!(c.lookup(&root, b"b").unwrap_err(), st::NOENT);
    assert_eq!(c.remove(&root, b"b"), st::NOENT, "a new xid");

    // MKDIR d.
    let xid = c.next_xid();
    let mkdir = c.message(
        xid,
        NFS,
        3,
        proc3::MKDIR,
        &args::mkdir(&root, b"d", &Sattr::mode(0o755)),
    );
    let reply = send_thrice(&node, &mut c, &mkdir);
    assert_eq!(reply_status(&reply), st::OK);
    assert_eq!(
        c.mkdir(&root, b"d", &Sattr::mode(0o755)).unwrap_err(),
        st::EXIST,
        "a new xid"
    );

    // The same xid with other arguments is another request, not a duplicate.
    let other = c.message(
        xid,
        NFS,
        3,
        proc3::MKDIR,
        &args::mkdir(&root, b"e", &Sattr::mode(0o755)),
    );
    assert_eq!(reply_status(&c.raw(&other)), st::OK);
    c.lookup(&root, b"e").expect("e was made");

    // A retransmission that arrives while the original still runs must not execute twice:
    // pipeline the same RENAME twice, then a NULL; every RENAME reply is the success.
    c.create_file(&root, b"p", 0o644);
    let xid = c.next_xid();
    let rename = c.message(
        xid,
        NFS,
        3,
        proc3::RENAME,
        &args::rename(&root, b"p", &root, b"q"),
    );
    c.send(&rename);
    c.send(&rename);
    let null_xid = c.next_xid();
    c.send(&c.message(null_xid, NFS, 3, proc3::NULL, &[]));
    // Replies come in completion order: collect until the NULL's and one RENAME's are in,
    // then give a replayed duplicate a moment to arrive.
    let (mut renames, mut null_seen) = (Vec::new(), false);
    while !null_seen || renames.is_empty() {
        let rec = c.recv();
        let (rx, _) = parse_reply(&rec);
        if rx == null_xid {
            null_seen = true;
        } else {
            assert_eq!(rx, xid);
            renames.push(rec);
        }
    }
    c.stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    if let Ok(rec) = read_record(&mut c.stream) {
        renames.push(rec);
    }
    c.stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // The duplicate is answered with the original reply, or dropped while in progress.
    for r in &renames {
        assert_eq!(r, &renames[0]);
        assert_eq!(
            reply_status(r),
            st::OK,
            "the duplicate RENAME executed again"
        );
    }
    c.lookup(&root, b"q").expect("q");
    drop(node);
}

// ------------------------------------------------------------------------------------------
// Hostile input

/// The connection is closed by the node: a read sees EOF or a reset, not a timeout.
fn assert_closed(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "got {n} bytes instead of a closed connection: {:02x?}",
            &buf[..n]
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connection not closed: {e}"),
    }
}

#[test]
fn malformed_records_close_only_their_connection() {
    let node = Node::start(14002, &[]);

    // A record header claiming 2 GiB.
    let mut s = TcpStream::connect(node.addr()).unwrap();
    s.write_all(&0xFFFF_FFFFu32.to_be_bytes()).unwrap();
    s.write_all(&[0u8; 64]).unwrap();
    assert_closed(&mut s);
    Rpc::connect(node.addr()).null();

    // Unframed garbage (its first word reads as a 1.2 GB record).
    let mut s = TcpStream::connect(node.addr()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_closed(&mut s);
    Rpc::connect(node.addr()).null();

    // A truncated record: the header promises 100 bytes, 10 come, then the client's end.
    let mut s = TcpStream::connect(node.addr()).unwrap();
    s.write_all(&(100u32 | 1 << 31).to_be_bytes()).unwrap();
    s.write_all(&[7u8; 10]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_closed(&mut s);
    Rpc::connect(node.addr()).null();

    // Whole records that are not calls are ignored and the connection goes on: an empty
    // record, 2 bytes, a REPLY message, 40 bytes of noise; then a call split over three
    // fragments.
    let mut c = Rpc::connect(node.addr());
    c.send(&[]);
    c.send(&[1, 2]);
    c.send(&[0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0]);
    c.send(&pattern(3, 40));
    let xid = c.next_xid();
    let msg = c.message(xid, NFS, 3, proc3::NULL, &[]);
    let mut bytes = Vec::new();
    for (i, part) in [&msg[..5], &msg[5..17], &msg[17..]].iter().enumerate() {
        let last = if i == 2 { 1u32 << 31 } else { 0 };
        bytes.extend_from_slice(&(part.len() as u32 | last).to_be_bytes());
        bytes.extend_from_slice(part);
    }
    c.stream.write_all(&bytes).unwrap();
    let (rx, reply) = parse_reply(&c.recv());
    assert_eq!(rx, xid, "the first reply is the NULL's: noise got no reply");
    assert_eq!(reply, Reply::Success(vec![]));

    // A call trickling in a few bytes at a time is read whole.
    let root = c.root();
    let xid = c.next_xid();
    let msg = c.message(xid, NFS, 3, proc3::GETATTR, &args::fh(&root));
    let mut bytes = (msg.len() as u32 | 1 << 31).to_be_bytes().to_vec();
    bytes.extend_from_slice(&msg);
    for part in bytes.chunks(7) {
        c.stream.write_all(part).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(reply_status(&c.recv()), st::OK);

    // Many connections opened and dropped mid-record do not wedge the node.
    for i in 0..50u32 {
        let mut s = TcpStream::connect(node.addr()).unwrap();
        s.write_all(&(1000 + i).to_be_bytes()).unwrap();
    }
    let mut c = Rpc::connect(node.addr());
    c.null();
    c.root();
}

#[test]
fn bad_calls_get_rpc_errors_and_the_node_keeps_serving() {
    let (node, mut c, root) = setup(14003);

    // RPC version 3: denied, RPC_MISMATCH 2..2.
    let xid = c.next_xid();
    let msg = call_message(xid, 3, NFS, 3, proc3::NULL, &Cred::root(), &[]);
    assert_eq!(parse_reply(&c.raw(&msg)), (xid, Reply::RpcMismatch(2, 2)));

    // Unknown program; program versions we do not speak.
    assert_eq!(c.call(100099, 1, 0, &[]), Reply::ProgUnavail);
    assert_eq!(c.call(NFS, 4, 0, &[]), Reply::ProgMismatch(3, 3));
    assert_eq!(c.call(NFS, 2, 0, &[]), Reply::ProgMismatch(3, 3));
    assert_eq!(c.call(MOUNT, 1, 0, &[]), Reply::ProgMismatch(3, 3));

    // Unknown procedures.
    assert_eq!(c.call(NFS, 3, 22, &args::fh(&root)), Reply::ProcUnavail);
    assert_eq!(c.call(NFS, 3, 1000, &[]), Reply::ProcUnavail);
    assert_eq!(c.call(MOUNT, 3, 6, &[]), Reply::ProcUnavail);
    assert_eq!(c.call(PORTMAP, 2, 4, &[]), Reply::ProcUnavail);

    // Arguments that do not decode.
    let garbage: Vec<(u32, Vec<u8>)> = vec![
        (proc3::GETATTR, vec![]),
        (proc3::GETATTR, vec![0, 0, 0]),
        (proc3::GETATTR, vec![0, 0, 0, 50, 1, 2]),
        (proc3::GETATTR, vec![0xFF; 4]),
        (proc3::LOOKUP, {
            let mut w = XdrWriter::new();
            w.opaque(&root).u32(u32::MAX);
            w.buf
        }),
        (proc3::WRITE, {
            let mut w = XdrWriter::new();
            w.opaque(&root).u64(0).u32(100).u32(2).u32(100).u32(7);
            w.buf
        }),
        (proc3::CREATE, {
            let mut w = XdrWriter::new();
            w.opaque(&root).opaque(b"x").u32(7);
            w.buf
        }),
        (proc3::MKNOD, {
            let mut w = XdrWriter::new();
            w.opaque(&root).opaque(b"x").u32(99);
            w.buf
        }),
        (proc3::SETATTR, {
            let mut w = XdrWriter::new();
            w.opaque(&root).u32(5);
            w.buf
        }),
    ];
    for (p, a) in &garbage {
        assert_eq!(
            c.call(NFS, 3, *p, a),
            Reply::GarbageArgs,
            "procedure {p} with {a:02x?}"
        );
    }
    assert_eq!(c.call(MOUNT, 3, 1, &[0, 0, 1]), Reply::GarbageArgs);
    assert_eq!(c.call(PORTMAP, 2, 3, &[0, 0, 0, 1]), Reply::GarbageArgs);
    // Nothing was created by the garbage.
    assert_eq!(c.lookup(&root, b"x").unwrap_err(), st::NOENT);

    // Credentials of an unknown flavor, and an AUTH_SYS body too short: AUTH_ERROR.
    let xid = c.next_xid();
    let mut w = XdrWriter::new();
    w.u32(xid).u32(0).u32(2).u32(NFS).u32(3).u32(0);
    w.u32(6).opaque(&[0; 8]).u32(0).opaque(&[]);
    assert!(matches!(
        parse_reply(&c.raw(&w.buf)),
        (x, Reply::AuthError(_)) if x == xid
    ));
    let xid = c.next_xid();
    let mut w = XdrWriter::new();
    w.u32(xid).u32(0).u32(2).u32(NFS).u32(3).u32(0);
    w.u32(1).opaque(&[0; 8]).u32(0).opaque(&[]);
    assert!(matches!(
        parse_reply(&c.raw(&w.buf)),
        (x, Reply::AuthError(_)) if x == xid
    ));

    // Still serving, on this connection and a new one.
    c.null();
    c.getattr(&root).expect("GETATTR root");
    Rpc::connect(node.addr()).null();
}

#[test]
fn bogus_handles_answer_badhandle_or_stale() {
    let (node, mut c, root) = setup(14004);
    assert_eq!(root.len(), 28);
    let f = c.create_file(&root, b"f", 0o644);
    c.write_all(&f, b"data");

    // Malformed: wrong lengths, wrong prefix, inode 0.
    for bad in [
        f[..27].to_vec(),
        [&f[..], &[0]].concat(),
        vec![],
        vec![0xAB; 64],
        {
            let mut h = f.clone();
            h[0] ^= 0xFF;
            h
        },
        {
            let mut h = f.clone();
            h[12..20].copy_from_slice(&0u64.to_be_bytes());
            h
        },
    ] {
        assert_eq!(c.getattr(&bad).unwrap_err(), st::BADHANDLE, "{bad:02x?}");
        assert_eq!(
            c.read(&bad, 0, 10).unwrap_err(),
            st::BADHANDLE,
            "{bad:02x?}"
        );
        assert_eq!(
            c.lookup(&bad, b"f").unwrap_err(),
            st::BADHANDLE,
            "{bad:02x?}"
        );
    }

    // Another filesystem's handle (fsid in bytes 4..12).
    let mut other_fs = f.clone();
    other_fs[11] ^= 1;
    assert_eq!(c.getattr(&other_fs).unwrap_err(), st::STALE);
    let mut other_root = root.clone();
    other_root[4] ^= 0x80;
    assert_eq!(c.lookup(&other_root, b"f").unwrap_err(), st::STALE);

    // The same inode number with another generation (a reused number).
    let mut other_gen = f.clone();
    other_gen[27] ^= 1;
    assert_eq!(c.getattr(&other_gen).unwrap_err(), st::STALE);
    assert_eq!(c.read(&other_gen, 0, 4).unwrap_err(), st::STALE);
    assert_eq!(
        c.write(&other_gen, 0, b"x", FILE_SYNC).unwrap_err(),
        st::STALE
    );
    // An inode number never allocated.
    let mut never = f.clone();
    never[12..20].copy_from_slice(&(1u64 << 40).to_be_bytes());
    assert_eq!(c.getattr(&never).unwrap_err(), st::STALE);

    // A removed file, and a removed directory.
    assert_eq!(c.remove(&root, b"f"), st::OK);
    assert_eq!(c.getattr(&f).unwrap_err(), st::STALE);
    assert_eq!(c.read(&f, 0, 4).unwrap_err(), st::STALE);
    assert_eq!(c.write(&f, 0, b"x", FILE_SYNC).unwrap_err(), st::STALE);
    assert_eq!(c.setattr(&f, &Sattr::mode(0o600)).unwrap_err(), st::STALE);
    assert_eq!(c.commit(&f).unwrap_err(), st::STALE);
    let d = c.mkdir_mode(&root, b"d", 0o755);
    assert_eq!(c.rmdir(&root, b"d"), st::OK);
    assert_eq!(c.lookup(&d, b"x").unwrap_err(), st::STALE);
    assert_eq!(
        c.create(&d, b"x", How::Unchecked(Sattr::default()))
            .unwrap_err(),
        st::STALE
    );
    assert_eq!(c.readdir(&d, 0, [0; 8], 4096).unwrap_err(), st::STALE);

    // Wrong kind: a file handle where a directory is needed.
    let g = c.create_file(&root, b"g", 0o644);
    assert_eq!(c.lookup(&g, b"x").unwrap_err(), st::NOTDIR);

    c.null();
    Rpc::connect(node.addr()).getattr(&root).expect("root");
}

// ------------------------------------------------------------------------------------------
// Restarts: stable handles, durable data, write verifiers

#[test]
fn handles_stay_valid_across_a_restart() {
    let (mut node, mut c, root) = setup(14005);
    let d = c.mkdir_mode(&root, b"dir", 0o755);
    let f = c.create_file(&d, b"file", 0o644);
    let data = pattern(5, 300_000);
    c.write_all(&f, &data);
    let (looked_up, attr) = c.lookup(&d, b"file").unwrap();
    assert_eq!(looked_up, f, "LOOKUP gives the handle CREATE gave");
    let attr = attr.expect("post-op attributes");
    // A directory listing interrupted by the restart: its cookie stays valid.
    let many = c.mkdir_mode(&root, b"many", 0o755);
    for i in 0..40 {
        c.create_file(&many, format!("entry-{i:02}").as_bytes(), 0o644);
    }
    let first = c.readdir(&many, 0, [0; 8], 400).unwrap();
    assert!(!first.eof);
    let cookie = first.entries.last().unwrap().cookie;
    let mut listed: Vec<Vec<u8>> = first.entries.iter().map(|e| e.name.clone()).collect();
    drop(c);

    node.restart(&[]);
    let mut c = Rpc::connect(node.addr());
    assert_eq!(c.root(), root, "the root handle changed across the restart");
    let after = c
        .getattr(&f)
        .expect("GETATTR with a handle from before the restart");
    assert_eq!(after.fileid, attr.fileid);
    assert_eq!(after.size, data.len() as u64);
    assert_eq!(after.mtime, attr.mtime);
    assert_eq!(
        c.read_all(&f),
        data,
        "data written FILE_SYNC before the restart"
    );
    assert_eq!(c.lookup(&d, b"file").unwrap().0, f);
    assert_eq!(c.list(&d), vec![name("."), name(".."), name("file")]);
    let (mut cookie, mut verf) = (cookie, first.verf);
    loop {
        let p = c
            .readdir(&many, cookie, verf, 400)
            .expect("READDIR with a cookie from before the restart");
        listed.extend(p.entries.iter().map(|e| e.name.clone()));
        if p.eof {
            break;
        }
        cookie = p.entries.last().unwrap().cookie;
        verf = p.verf;
    }
    assert_eq!(listed, c.list(&many), "resumed listing differs");
    assert_eq!(listed.len(), 42);
}

#[test]
fn unstable_writes_and_commit_share_one_verifier_per_boot() {
    let (mut node, mut c, root) = setup(14006);
    let f = c.create_file(&root, b"u", 0o644);
    let a = pattern(6, 100_000);
    let w1 = c.write(&f, 0, &a[..50_000], UNSTABLE).unwrap();
    let w2 = c.write(&f, 50_000, &a[50_000..], UNSTABLE).unwrap();
    assert_eq!(w1.count, 50_000);
    assert_eq!(w2.count, 50_000);
    assert!(w1.committed <= FILE_SYNC);
    assert_eq!(w1.verf, w2.verf, "one verifier per boot");
    let cv = c.commit(&f).unwrap();
    assert_eq!(cv, w1.verf, "COMMIT and WRITE verifiers differ");
    assert_eq!(w2.after.map(|a| a.size), Some(100_000));

    let s = c.write(&f, 0, b"sync", FILE_SYNC).unwrap();
    assert_eq!(s.committed, FILE_SYNC);
    assert_eq!(s.verf, cv);
    let ds = c.write(&f, 4, b"data", DATA_SYNC).unwrap();
    assert!(
        ds.committed >= DATA_SYNC,
        "DATA_SYNC answered {}",
        ds.committed
    );
    drop(c);

    node.restart(&[]);
    let mut c = Rpc::connect(node.addr());
    let mut want = a.clone();
    want[..8].copy_from_slice(b"syncdata");
    assert_eq!(c.read_all(&f), want);
    let w3 = c.write(&f, 0, b"x", UNSTABLE).unwrap();
    assert_ne!(
        w3.verf, cv,
        "the verifier must change when the node restarts"
    );
    assert_eq!(c.commit(&f).unwrap(), w3.verf);
}

// ------------------------------------------------------------------------------------------
// Concurrent writes

#[test]
fn concurrent_out_of_order_writes_produce_the_right_content() {
    let (node, mut c, root) = setup(14007);
    // Chunks not aligned to 4 KiB, so neighbours share blocks.
    const CHUNK: usize = 12_345;
    const SIZE: usize = 3 * MIB + 777;
    let chunks = |seed: u64| {
        let mut offs: Vec<usize> = (0..SIZE).step_by(CHUNK).collect();
        shuffle(&mut offs, seed);
        offs
    };

    // Many calls pipelined on one connection, offsets shuffled.
    let data = pattern(7, SIZE);
    let f = c.create_file(&root, b"one-conn", 0o644);
    let msgs: Vec<Vec<u8>> = chunks(1)
        .into_iter()
        .map(|off| {
            let end = (off + CHUNK).min(SIZE);
            let xid = c.next_xid();
            c.message(
                xid,
                NFS,
                3,
                proc3::WRITE,
                &args::write(&f, off as u64, &data[off..end], UNSTABLE),
            )
        })
        .collect();
    let replies = c.pipeline(&msgs);
    let mut verfs = BTreeSet::new();
    for rec in replies.values() {
        let (_, reply) = parse_reply(rec);
        let Reply::Success(body) = reply else {
            panic!("WRITE: {reply:?}")
        };
        verfs.insert(parse_write(&body).expect("WRITE").verf);
    }
    assert_eq!(verfs.len(), 1);
    assert_eq!(&c.commit(&f).unwrap(), verfs.first().unwrap());
    assert_eq!(c.getattr(&f).unwrap().size, SIZE as u64);
    let got = c.read_all(&f);
    assert!(
        got == data,
        "content differs at byte {:?}",
        first_diff(&got, &data)
    );

    // Over four connections at once, each pipelining its share.
    let data = pattern(8, SIZE);
    let f = c.create_file(&root, b"four-conns", 0o644);
    let offs = chunks(2);
    std::thread::scope(|s| {
        for share in offs.chunks(offs.len().div_ceil(4)) {
            let (f, data, addr) = (&f, &data, node.addr());
            s.spawn(move || {
                let mut c = Rpc::connect(addr);
                let msgs: Vec<Vec<u8>> = share
                    .iter()
                    .map(|&off| {
                        let end = (off + CHUNK).min(SIZE);
                        let xid = c.next_xid();
                        let a = args::write(f, off as u64, &data[off..end], UNSTABLE);
                        c.message(xid, NFS, 3, proc3::WRITE, &a)
                    })
                    .collect();
                for rec in c.pipeline(&msgs).values() {
                    assert_eq!(reply_status(rec), st::OK);
                }
            });
        }
    });
    c.commit(&f).unwrap();
    let got = c.read_all(&f);
    assert_eq!(got.len(), SIZE);
    assert!(
        got == data,
        "content differs at byte {:?}",
        first_diff(&got, &data)
    );
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then_some(a.len().min(b.len())))
}

// ------------------------------------------------------------------------------------------
// READDIR and READDIRPLUS

/// What paging saw: every name in order, the names that existed throughout, and every
/// name that existed at some point.
type Paged = (Vec<Vec<u8>>, BTreeSet<Vec<u8>>, BTreeSet<Vec<u8>>);

/// Page through `dir` with small pages while entries come and go between pages; returns
/// every name seen, in order.
fn page_while_changing(c: &mut Rpc, dir: &[u8], plus: bool, prefix: &str) -> Paged {
    // keep-* exist throughout; gone-* are removed while paging; new-* are added.
    let mut keep = BTreeSet::new();
    let mut gone = Vec::new();
    for i in 0..30 {
        let k = name(&format!("{prefix}keep-{i:02}"));
        c.create_file(dir, &k, 0o644);
        keep.insert(k);
        if i % 3 != 2 {
            let g = name(&format!("{prefix}gone-{i:02}"));
            c.create_file(dir, &g, 0o644);
            gone.push(g);
        }
    }
    let mut ever: BTreeSet<Vec<u8>> = keep.iter().chain(gone.iter()).cloned().collect();
    let dir_attr = c.getattr(dir).unwrap();
    let (mut cookie, mut verf) = (0u64, [0u8; 8]);
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut added = 0;
    loop {
        pages += 1;
        assert!(pages < 500, "paging does not end");
        let page = if plus {
            c.readdirplus(dir, cookie, verf, 200, 1200)
        } else {
            c.readdir(dir, cookie, verf, 300)
        }
        .unwrap_or_else(|s| panic!("page {pages} from cookie {cookie}: status {s}"));
        assert!(
            page.len <= if plus { 1200 } else { 300 },
            "a reply of {} bytes exceeds the count",
            page.len
        );
        assert!(
            !page.entries.is_empty() || page.eof,
            "an empty page before eof"
        );
        if pages == 1 {
            assert!(page.entries.len() >= 2, "first page: {:?}", page.entries);
            assert_eq!(page.entries[0].name, b".");
            assert_eq!(page.entries[0].fileid, dir_attr.fileid);
            assert_eq!(page.entries[1].name, b"..");
        }
        for e in &page.entries {
            if plus {
                let a = e.attr.expect("READDIRPLUS attributes");
                assert_eq!(a.fileid, e.fileid, "{:?}", e.name);
                let fh = e.fh.as_ref().expect("READDIRPLUS handle");
                assert_eq!(c.getattr(fh).unwrap().fileid, e.fileid);
            }
            seen.push(e.name.clone());
        }
        if page.eof {
            break;
        }
        cookie = page.entries.last().unwrap().cookie;
        verf = page.verf;
        // Remove the entry the cookie points at if it is a gone-* one, and one not seen
        // yet; add two new entries.
        let last = page.entries.last().unwrap().name.clone();
        if let Some(i) = gone.iter().position(|g| *g == last) {
            let g = gone.remove(i);
            assert_eq!(c.remove(dir, &g), st::OK);
        }
        if let Some(g) = gone.pop() {
            assert_eq!(c.remove(dir, &g), st::OK);
        }
        for _ in 0..2 {
            let n = name(&format!("{prefix}new-{added:03}"));
            added += 1;
            c.create_file(dir, &n, 0o644);
            ever.insert(n);
        }
    }
    assert!(
        pages >= 5,
        "only {pages} pages: the count did not limit them"
    );
    (seen, keep, ever)
}

fn check_paging(seen: &[Vec<u8>], keep: &BTreeSet<Vec<u8>>, ever: &BTreeSet<Vec<u8>>) {
    let mut count: HashMap<&[u8], usize> = HashMap::new();
    for n in seen {
        *count.entry(n).or_default() += 1;
    }
    let dup: Vec<_> = count
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| String::from_utf8_lossy(n))
        .collect();
    assert!(dup.is_empty(), "entries listed twice: {dup:?}");
    let missing: Vec<_> = keep
        .iter()
        .filter(|k| !count.contains_key(k.as_slice()))
        .map(|n| String::from_utf8_lossy(n))
        .collect();
    assert!(
        missing.is_empty(),
        "entries that existed throughout were skipped: {missing:?}"
    );
    for n in seen {
        assert!(
            n == b"." || n == b".." || ever.contains(n),
            "an entry that never existed: {:?}",
            String::from_utf8_lossy(n)
        );
    }
    assert_eq!(&seen[..2], &[name("."), name("..")]);
}

#[test]
fn readdir_cookies_resume_while_the_directory_changes() {
    let (_node, mut c, root) = setup(14008);
    let d = c.mkdir_mode(&root, b"d", 0o755);
    let (seen, keep, ever) = page_while_changing(&mut c, &d, false, "");
    check_paging(&seen, &keep, &ever);

    // A full listing now: exactly what exists.
    let all = c.list(&d);
    let root_attr = c.getattr(&root).unwrap();
    let p = c.readdir(&d, 0, [0; 8], 65536).unwrap();
    assert_eq!(
        p.entries[1].fileid, root_attr.fileid,
        "'..' of d is the root"
    );
    for k in &keep {
        assert!(all.contains(k));
    }
    for n in &all[2..] {
        assert_eq!(
            c.lookup(&d, n).map(|_| ()),
            Ok(()),
            "listed but not found: {:?}",
            String::from_utf8_lossy(n)
        );
    }

    // Every small count pages through the same set.
    let names: BTreeSet<Vec<u8>> = all.iter().cloned().collect();
    for count in [140, 150, 200, 512, 1000] {
        let (mut cookie, mut verf, mut got) = (0, [0; 8], Vec::new());
        loop {
            let p = c.readdir(&d, cookie, verf, count).unwrap();
            assert!(p.len <= count as usize, "count {count}: {} bytes", p.len);
            got.extend(p.entries.iter().map(|e| e.name.clone()));
            if p.eof {
                break;
            }
            assert!(!p.entries.is_empty());
            cookie = p.entries.last().unwrap().cookie;
            verf = p.verf;
        }
        assert_eq!(got.len(), names.len(), "count {count}");
        assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), names);
    }

    // Resuming after "." gives ".." next; after "..", the first real entry.
    let p = c.readdir(&d, 0, [0; 8], 65536).unwrap();
    let after_dot = c.readdir(&d, p.entries[0].cookie, p.verf, 65536).unwrap();
    assert_eq!(after_dot.entries[0].name, b"..");
    assert_eq!(&after_dot.entries[..], &p.entries[1..]);
    let after_dotdot = c.readdir(&d, p.entries[1].cookie, p.verf, 65536).unwrap();
    assert_eq!(&after_dotdot.entries[..], &p.entries[2..]);
    // Resuming from the last cookie: nothing more, eof.
    let end = c
        .readdir(&d, p.entries.last().unwrap().cookie, p.verf, 65536)
        .unwrap();
    assert!(end.eof && end.entries.is_empty(), "{end:?}");

    // Too small for even one entry.
    assert_eq!(c.readdir(&d, 0, [0; 8], 60).unwrap_err(), st::TOOSMALL);
    assert_eq!(
        c.readdirplus(&d, 0, [0; 8], 4096, 120).unwrap_err(),
        st::TOOSMALL
    );
    // An empty directory lists just "." and "..".
    let e = c.mkdir_mode(&root, b"empty", 0o755);
    let p = c.readdir(&e, 0, [0; 8], 4096).unwrap();
    assert!(p.eof);
    assert_eq!(
        p.entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        vec![name("."), name("..")]
    );
    // Resuming after ".." in an empty directory: nothing, eof.
    let p2 = c.readdir(&e, p.entries[1].cookie, p.verf, 4096).unwrap();
    assert!(p2.eof && p2.entries.is_empty(), "{p2:?}");
}

#[test]
fn readdirplus_cookies_resume_while_the_directory_changes() {
    let (_node, mut c, root) = setup(14009);
    let d = c.mkdir_mode(&root, b"d", 0o755);
    let (seen, keep, ever) = page_while_changing(&mut c, &d, true, "p-");
    check_paging(&seen, &keep, &ever);
    // READDIR and READDIRPLUS agree.
    let plain = c.list(&d);
    let mut plus = Vec::new();
    let (mut cookie, mut verf) = (0, [0; 8]);
    loop {
        let p = c.readdirplus(&d, cookie, verf, 65536, 1 << 20).unwrap();
        plus.extend(p.entries.iter().map(|e| e.name.clone()));
        if p.eof {
            break;
        }
        cookie = p.entries.last().unwrap().cookie;
        verf = p.verf;
    }
    assert_eq!(plain, plus);
    // A client's usual shape: dircount far above what maxcount lets through. Each reply
    // holds as many entries as fit, and the listing is the same.
    let mut small = Vec::new();
    let (mut cookie, mut verf, mut replies) = (0, [0; 8], 0);
    loop {
        let p = c.readdirplus(&d, cookie, verf, 65536, 2048).unwrap();
        assert!(p.len <= 2048, "a reply of {} bytes", p.len);
        replies += 1;
        assert!(p.eof || p.entries.len() >= 8, "{} entries", p.entries.len());
        small.extend(p.entries.iter().map(|e| e.name.clone()));
        if p.eof {
            break;
        }
        cookie = p.entries.last().unwrap().cookie;
        verf = p.verf;
    }
    assert!(replies > 3, "{replies} replies");
    assert_eq!(plain, small);
}

// ------------------------------------------------------------------------------------------
// AUTH_SYS permissions and export options

/// The set-ID and ownership rules pjdfstest checks through the Linux client (chown/00.t,
/// chown/07.t, chmod/00.t, chmod/12.t), as a local Linux filesystem applies them.
#[test]
fn ownership_changes_and_writes_follow_the_set_id_rules_of_a_local_filesystem() {
    let (node, mut root_c, root) = setup(14024);
    let mut owner = Rpc::connect_as(node.addr(), Cred::user(65534, 65534, &[65532]));
    let mut other = Rpc::connect_as(node.addr(), Cred::user(65533, 65533, &[]));
    let d = root_c.mkdir_mode(&root, b"d", 0o777);
    let f = owner.create_file(&d, b"f", 0o644);
    let mode = |c: &mut Rpc, fh: &[u8]| c.getattr(fh).unwrap().mode & 0o7777;
    // Naming the owner or group a file already has is still a chown: not for others.
    let same = Sattr {
        uid: Some(65534),
        gid: Some(65534),
        ..Sattr::default()
    };
    assert_eq!(other.setattr(&f, &same).unwrap_err(), st::PERM);
    let group_only = Sattr {
        gid: Some(65534),
        ..Sattr::default()
    };
    assert_eq!(other.setattr(&f, &group_only).unwrap_err(), st::PERM);
    owner.setattr(&f, &same).expect("the owner names itself");
    // A group change by the owner clears set-user-ID and set-group-ID.
    owner.setattr(&f, &Sattr::mode(0o6555)).unwrap();
    assert_eq!(mode(&mut owner, &f), 0o6555);
    let to_other_group = Sattr {
        gid: Some(65532),
        ..Sattr::default()
    };
    owner.setattr(&f, &to_other_group).unwrap();
    assert_eq!(mode(&mut owner, &f), 0o555);
    // Without being in the file's group the owner cannot set set-group-ID: it is dropped.
    let mut elsewhere = Rpc::connect_as(node.addr(), Cred::user(65534, 65531, &[]));
    elsewhere.setattr(&f, &Sattr::mode(0o2755)).unwrap();
    assert_eq!(mode(&mut owner, &f), 0o755);
    // A write by a caller without privilege clears both bits; root's write does not.
    let w = root_c.create_file(&d, b"w", 0o6777);
    root_c.setattr(&w, &Sattr::mode(0o6777)).unwrap();
    root_c.write_all(&w, b"root");
    assert_eq!(mode(&mut root_c, &w), 0o6777);
    other.write_all(&w, b"x");
    assert_eq!(mode(&mut root_c, &w), 0o777);
}

/// pjdfstest rename/09.t: moving a directory to another parent rewrites its "..", which
/// needs write permission on the directory itself (as Linux); a rename within one parent
/// does not.
#[test]
fn moving_a_directory_to_another_parent_needs_write_permission_on_it() {
    let (node, mut root_c, root) = setup(14025);
    let mut user = Rpc::connect_as(node.addr(), Cred::user(65534, 65534, &[]));
    let a = root_c.mkdir_mode(&root, b"a", 0o777);
    let b = root_c.mkdir_mode(&root, b"b", 0o777);
    root_c.mkdir_mode(&a, b"roots", 0o755);
    assert_eq!(user.rename(&a, b"roots", &b, b"moved"), st::ACCES);
    assert_eq!(user.lookup(&b, b"moved").unwrap_err(), st::NOENT);
    assert_eq!(user.rename(&a, b"roots", &a, b"renamed"), 0);
    let mine = user.mkdir_mode(&a, b"mine", 0o755);
    assert_eq!(user.rename(&a, b"mine", &b, b"mine"), 0);
    assert_eq!(user.lookup(&b, b"mine").unwrap().0, mine);
    // Files need no such permission.
    root_c.create_file(&a, b"file", 0o444);
    assert_eq!(user.rename(&a, b"file", &b, b"file"), 0);
}

#[test]
fn auth_sys_permissions_are_enforced() {
    let (node, mut root_c, root) = setup(14010);
    let mut u1000 = Rpc::connect_as(node.addr(), Cred::user(1000, 1000, &[]));
    let mut u1001 = Rpc::connect_as(node.addr(), Cred::user(1001, 1001, &[]));

    // A root-owned 0755 directory: uid 1000 may not create in it.
    let rdir = root_c.mkdir_mode(&root, b"rootdir", 0o755);
    let a = root_c.getattr(&rdir).unwrap();
    assert_eq!((a.uid, a.mode & 0o7777), (0, 0o755));
    assert_eq!(
        u1000
            .create(&rdir, b"x", How::Guarded(Sattr::mode(0o644)))
            .unwrap_err(),
        st::ACCES
    );
    assert_eq!(
        u1000.mkdir(&rdir, b"x", &Sattr::mode(0o755)).unwrap_err(),
        st::ACCES
    );
    assert_eq!(u1000.symlink(&rdir, b"x", b"t").unwrap_err(), st::ACCES);
    assert_eq!(u1000.lookup(&rdir, b"x").unwrap_err(), st::NOENT);

    // Its own directory: it may.
    let home = root_c.mkdir_mode(&root, b"home", 0o755);
    root_c
        .setattr(
            &home,
            &Sattr {
                uid: Some(1000),
                gid: Some(1000),
                ..Sattr::default()
            },
        )
        .expect("root chowns");
    let (secret, attr) = u1000
        .create(&home, b"secret", How::Guarded(Sattr::mode(0o600)))
        .unwrap();
    let attr = attr.expect("attributes");
    assert_eq!((attr.uid, attr.gid, attr.mode), (1000, 1000, 0o600));
    u1000.write_all(&secret, b"for 1000 only");

    // Another user may not read a 0600 file, nor write it.
    assert_eq!(u1001.read(&secret, 0, 100).unwrap_err(), st::ACCES);
    assert_eq!(
        u1001.write(&secret, 0, b"x", FILE_SYNC).unwrap_err(),
        st::ACCES
    );
    assert_eq!(u1000.read_all(&secret), b"for 1000 only");
    // Nor create in a 0755 directory of another user.
    assert_eq!(
        u1001
            .create(&home, b"y", How::Guarded(Sattr::mode(0o644)))
            .unwrap_err(),
        st::ACCES
    );
    assert_eq!(u1001.remove(&home, b"secret"), st::ACCES);
    assert_eq!(u1001.rename(&home, b"secret", &home, b"mine"), st::ACCES);
    let pubd = root_c.mkdir_mode(&root, b"pub", 0o777);
    assert_eq!(
        u1001.rename(&home, b"secret", &pubd, b"mine"),
        st::ACCES,
        "moving out of a directory needs write access to it"
    );
    assert_eq!(u1001.link(&secret, &home, b"l").unwrap_err(), st::ACCES);
    let trunc = Sattr {
        size: Some(0),
        ..Sattr::default()
    };
    assert_eq!(u1001.setattr(&secret, &trunc).unwrap_err(), st::ACCES);
    assert_eq!(u1000.getattr(&secret).unwrap().size, 13);

    // chown by non-root: PERM; chmod by a non-owner: PERM.
    let chown = Sattr {
        uid: Some(1001),
        ..Sattr::default()
    };
    assert_eq!(u1000.setattr(&secret, &chown).unwrap_err(), st::PERM);
    assert_eq!(u1001.setattr(&secret, &chown).unwrap_err(), st::PERM);
    assert_eq!(
        u1001.setattr(&secret, &Sattr::mode(0o644)).unwrap_err(),
        st::PERM
    );
    assert_eq!(u1000.getattr(&secret).unwrap().uid, 1000);
    // The owner may chmod; root may chown.
    u1000.setattr(&secret, &Sattr::mode(0o640)).unwrap();
    root_c
        .setattr(
            &secret,
            &Sattr {
                gid: Some(2000),
                ..Sattr::default()
            },
        )
        .unwrap();
    let a = u1000.getattr(&secret).unwrap();
    assert_eq!((a.uid, a.gid, a.mode), (1000, 2000, 0o640));

    // Group access comes from the AUTH_SYS gid list.
    let mut in_group = Rpc::connect_as(node.addr(), Cred::user(1001, 1001, &[2000]));
    assert_eq!(in_group.read_all(&secret), b"for 1000 only");
    assert_eq!(u1001.read(&secret, 0, 100).unwrap_err(), st::ACCES);
    assert_eq!(
        in_group.write(&secret, 0, b"x", FILE_SYNC).unwrap_err(),
        st::ACCES
    );

    // ACCESS reports what each caller may do.
    assert_eq!(
        u1000.access(&secret, acc::ALL).unwrap(),
        acc::READ | acc::MODIFY | acc::EXTEND
    );
    assert_eq!(in_group.access(&secret, acc::ALL).unwrap(), acc::READ);
    assert_eq!(u1001.access(&secret, acc::ALL).unwrap(), 0);
    assert_eq!(
        root_c.access(&secret, acc::ALL).unwrap(),
        acc::READ | acc::MODIFY | acc::EXTEND,
        "root: no EXECUTE on a file without execute bits"
    );
    assert_eq!(
        u1000.access(&secret, acc::READ).unwrap(),
        acc::READ,
        "only what was asked"
    );
    assert_eq!(
        u1000.access(&home, acc::ALL).unwrap(),
        acc::READ | acc::LOOKUP | acc::MODIFY | acc::EXTEND | acc::DELETE
    );
    assert_eq!(
        u1001.access(&home, acc::ALL).unwrap(),
        acc::READ | acc::LOOKUP
    );
    let script = u1000
        .create(&home, b"script", How::Guarded(Sattr::mode(0o755)))
        .unwrap()
        .0;
    assert_eq!(
        u1001.access(&script, acc::ALL).unwrap(),
        acc::READ | acc::EXECUTE
    );
    // A 0700 directory cannot be searched by others.
    let private = u1000.mkdir_mode(&home, b"private", 0o700);
    u1000.create_file(&private, b"in", 0o644);
    assert_eq!(u1001.lookup(&private, b"in").unwrap_err(), st::ACCES);
    assert_eq!(
        u1001.readdir(&private, 0, [0; 8], 4096).unwrap_err(),
        st::ACCES
    );
    u1000.lookup(&private, b"in").expect("the owner looks up");
}

#[test]
fn sticky_directories_only_let_owners_delete() {
    let (node, mut root_c, root) = setup(14011);
    let mut u1000 = Rpc::connect_as(node.addr(), Cred::user(1000, 1000, &[]));
    let mut u1001 = Rpc::connect_as(node.addr(), Cred::user(1001, 1001, &[]));
    let tmp = root_c.mkdir_mode(&root, b"tmp", 0o1777);
    assert_eq!(root_c.getattr(&tmp).unwrap().mode, 0o1777);
    u1000.create_file(&tmp, b"mine", 0o666);
    u1001.create_file(&tmp, b"theirs", 0o666);

    assert_eq!(u1001.remove(&tmp, b"mine"), st::ACCES);
    assert_eq!(u1001.rename(&tmp, b"mine", &tmp, b"stolen"), st::ACCES);
    // Replacing another user's file by a rename is deleting it too.
    assert_eq!(u1001.rename(&tmp, b"theirs", &tmp, b"mine"), st::ACCES);
    assert_eq!(u1000.remove(&tmp, b"theirs"), st::ACCES);
    u1000.lookup(&tmp, b"mine").expect("still there");
    u1001.lookup(&tmp, b"theirs").expect("still there");

    // Owners may, and so may root.
    assert_eq!(u1000.rename(&tmp, b"mine", &tmp, b"mine2"), st::OK);
    assert_eq!(u1000.remove(&tmp, b"mine2"), st::OK);
    assert_eq!(root_c.remove(&tmp, b"theirs"), st::OK);

    // Without the sticky bit, anyone with write access may delete.
    let open = root_c.mkdir_mode(&root, b"open", 0o777);
    u1000.create_file(&open, b"f", 0o644);
    assert_eq!(u1001.remove(&open, b"f"), st::OK);
}

#[test]
fn root_squash_maps_uid_0_to_the_anonymous_user() {
    let (mut node, mut c, root) = setup(14012);
    c.mkdir_mode(&root, b"pub", 0o777);
    let own = c.create_file(&root, b"roots", 0o600);
    c.write_all(&own, b"root only");
    drop(c);

    node.restart(&[("SCOUTGW_EXPORT__ROOT_SQUASH", "true")]);
    let mut c = Rpc::connect(node.addr());
    assert_eq!(c.root(), root);
    let (pubdir, _) = c.lookup(&root, b"pub").unwrap();
    let (f, attr) = c
        .create(&pubdir, b"by-root", How::Guarded(Sattr::mode(0o644)))
        .unwrap();
    let a = attr.expect("attributes");
    assert_eq!((a.uid, a.gid), (65534, 65534), "root squashed on create");
    assert_eq!(c.getattr(&f).unwrap().uid, 65534);
    let d = c.mkdir_mode(&pubdir, b"dir-by-root", 0o755);
    assert_eq!(c.getattr(&d).unwrap().uid, 65534);
    // Squashed root has no root powers.
    assert_eq!(
        c.create(&root, b"x", How::Guarded(Sattr::mode(0o644)))
            .unwrap_err(),
        st::ACCES,
        "the root directory is 0755 root"
    );
    let (own, _) = c.lookup(&root, b"roots").unwrap();
    assert_eq!(c.read(&own, 0, 10).unwrap_err(), st::ACCES);
    assert_eq!(
        c.setattr(
            &f,
            &Sattr {
                uid: Some(0),
                ..Sattr::default()
            }
        )
        .unwrap_err(),
        st::PERM
    );
    // Other users are not squashed.
    let mut u = Rpc::connect_as(node.addr(), Cred::user(1000, 1000, &[]));
    let (_, a) = u
        .create(&pubdir, b"by-1000", How::Guarded(Sattr::mode(0o644)))
        .unwrap();
    assert_eq!(a.unwrap().uid, 1000);
}

#[test]
fn a_read_only_export_refuses_every_change() {
    let (mut node, mut c, root) = setup(14013);
    let f = c.create_file(&root, b"f", 0o666);
    c.write_all(&f, b"content");
    let d = c.mkdir_mode(&root, b"d", 0o777);
    drop(c);

    node.restart(&[("SCOUTGW_EXPORT__READ_ONLY", "true")]);
    let mut c = Rpc::connect(node.addr());
    assert_eq!(c.write(&f, 0, b"x", FILE_SYNC).unwrap_err(), st::ROFS);
    assert_eq!(c.write(&f, 0, b"x", UNSTABLE).unwrap_err(), st::ROFS);
    assert_eq!(
        c.create(&root, b"n", How::Guarded(Sattr::mode(0o644)))
            .unwrap_err(),
        st::ROFS
    );
    assert_eq!(
        c.create(&root, b"n", How::Unchecked(Sattr::mode(0o644)))
            .unwrap_err(),
        st::ROFS
    );
    assert_eq!(
        c.mkdir(&root, b"n", &Sattr::mode(0o755)).unwrap_err(),
        st::ROFS
    );
    assert_eq!(c.symlink(&root, b"n", b"t").unwrap_err(), st::ROFS);
    assert_eq!(c.mknod(&root, b"n", Node3::Fifo).unwrap_err(), st::ROFS);
    assert_eq!(c.link(&f, &root, b"n").unwrap_err(), st::ROFS);
    assert_eq!(c.remove(&root, b"f"), st::ROFS);
    assert_eq!(c.rmdir(&root, b"d"), st::ROFS);
    assert_eq!(c.rename(&root, b"f", &root, b"g"), st::ROFS);
    assert_eq!(c.setattr(&f, &Sattr::mode(0o600)).unwrap_err(), st::ROFS);
    let trunc = Sattr {
        size: Some(0),
        ..Sattr::default()
    };
    assert_eq!(c.setattr(&f, &trunc).unwrap_err(), st::ROFS);
    // Reads work; ACCESS grants no change.
    assert_eq!(c.read_all(&f), b"content");
    assert_eq!(c.access(&f, acc::ALL).unwrap(), acc::READ);
    assert_eq!(c.access(&d, acc::ALL).unwrap(), acc::READ | acc::LOOKUP);
    assert_eq!(c.list(&root).len(), 4);
    assert_eq!(c.getattr(&f).unwrap().mode, 0o666);
}

#[test]
fn clients_outside_the_export_networks_are_refused() {
    let node = Node::start(14014, &[("SCOUTGW_EXPORT__CLIENTS", "127.0.0.2/32")]);
    let mut c = Rpc::connect(node.addr());
    assert_eq!(
        c.stream.local_addr().unwrap().ip().to_string(),
        "127.0.0.1",
        "the client must come from 127.0.0.1"
    );
    const MNT3ERR_ACCES: u32 = 13;
    assert_eq!(c.mnt(b"/").unwrap_err(), MNT3ERR_ACCES);
    assert!(
        matches!(c.call(NFS, 3, proc3::NULL, &[]), Reply::AuthError(_)),
        "NFS NULL from outside"
    );
    // A well-formed handle of this filesystem, as a client that mounted earlier would have.
    let mut fh = b"SGW\x01".to_vec();
    fh.extend_from_slice(&[0; 8]);
    fh.extend_from_slice(&1u64.to_be_bytes());
    fh.extend_from_slice(&[0; 8]);
    for (p, a) in [
        (proc3::GETATTR, args::fh(&fh)),
        (proc3::LOOKUP, args::dirop(&fh, b"x")),
        (
            proc3::CREATE,
            args::create(&fh, b"x", How::Unchecked(Sattr::default())),
        ),
        (proc3::REMOVE, args::dirop(&fh, b"x")),
    ] {
        assert!(
            matches!(c.call(NFS, 3, p, &a), Reply::AuthError(_)),
            "procedure {p} from outside"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Special files, links, filesystem information

#[test]
fn mknod_link_and_symlink_make_what_they_say() {
    let (node, mut c, root) = setup(14015);
    for (n, what, ft) in [
        ("fifo", Node3::Fifo, ftype::FIFO),
        ("sock", Node3::Sock, ftype::SOCK),
        ("chr", Node3::Chr(1, 3), ftype::CHR),
        ("blk", Node3::Blk(8, 1), ftype::BLK),
    ] {
        let (fh, attr) = c
            .mknod(&root, n.as_bytes(), what)
            .unwrap_or_else(|s| panic!("MKNOD {n}: {s}"));
        assert_eq!(attr.expect("attributes").ftype, ft, "{n}");
        let a = c.getattr(&fh).unwrap();
        assert_eq!(a.ftype, ft, "{n}");
        assert_eq!(a.mode, 0o644, "{n}");
        match what {
            Node3::Chr(ma, mi) | Node3::Blk(ma, mi) => assert_eq!(a.rdev, (ma, mi), "{n}"),
            _ => {}
        }
        assert_eq!(c.lookup(&root, n.as_bytes()).unwrap().0, fh);
        assert_eq!(c.read(&fh, 0, 10).unwrap_err(), st::INVAL, "READ of a {n}");
    }
    // Devices need root; fifos do not.
    let mut u = Rpc::connect_as(node.addr(), Cred::user(1000, 1000, &[]));
    let pubd = c.mkdir_mode(&root, b"pub", 0o777);
    assert_eq!(
        u.mknod(&pubd, b"c", Node3::Chr(1, 3)).unwrap_err(),
        st::PERM
    );
    u.mknod(&pubd, b"p", Node3::Fifo)
        .expect("a user makes a fifo");
    assert_eq!(c.mknod(&root, b"fifo", Node3::Fifo).unwrap_err(), st::EXIST);

    // LINK: one more link, same inode, same content.
    let f = c.create_file(&root, b"f", 0o644);
    c.write_all(&f, b"linked");
    let d = c.mkdir_mode(&root, b"d", 0o755);
    let after = c
        .link(&f, &d, b"f2")
        .expect("LINK")
        .expect("post-op attributes");
    assert_eq!(after.nlink, 2);
    assert_eq!(c.getattr(&f).unwrap().nlink, 2);
    let (f2, _) = c.lookup(&d, b"f2").unwrap();
    assert_eq!(f2, f, "a hard link has the same handle");
    assert_eq!(c.link(&f, &d, b"f2").unwrap_err(), st::EXIST);
    assert_eq!(c.link(&d, &root, b"dirlink").unwrap_err(), st::ISDIR);
    assert_eq!(c.remove(&root, b"f"), st::OK);
    assert_eq!(c.getattr(&f).unwrap().nlink, 1);
    assert_eq!(c.read_all(&f), b"linked");

    // SYMLINK + READLINK.
    let target = b"../some/where/else";
    let (sl, attr) = c.symlink(&root, b"sl", target).unwrap();
    let a = attr.unwrap();
    assert_eq!(a.ftype, ftype::LNK);
    assert_eq!(a.size, target.len() as u64);
    assert_eq!(c.readlink(&sl).unwrap(), target);
    assert_eq!(c.getattr(&sl).unwrap().ftype, ftype::LNK);
    assert_eq!(c.readlink(&f).unwrap_err(), st::INVAL, "READLINK of a file");
    // The directory's link count: 2 + one per subdirectory.
    assert_eq!(c.getattr(&d).unwrap().nlink, 2);
    c.mkdir_mode(&d, b"sub", 0o755);
    assert_eq!(c.getattr(&d).unwrap().nlink, 3);
    assert_eq!(c.rmdir(&root, b"d"), st::NOTEMPTY);
}

#[test]
fn fsinfo_fsstat_and_pathconf_tell_the_truth() {
    let (_node, mut c, root) = setup(14016);
    let i = c.fsinfo(&root).unwrap();
    assert_eq!(
        (i.rtmax, i.rtpref, i.wtmax, i.wtpref),
        (1 << 20, 1 << 20, 1 << 20, 1 << 20)
    );
    assert!(i.rtmult >= 1 && i.wtmult >= 1 && i.dtpref >= 4096, "{i:?}");
    assert!(i.maxfilesize >= 1 << 40, "{i:?}");
    assert!(
        i.properties & 0x1 != 0 && i.properties & 0x2 != 0,
        "FSF3_LINK|SYMLINK: {i:?}"
    );

    let p = c.pathconf(&root).unwrap();
    assert_eq!(p.name_max, 255);
    assert!(
        p.no_trunc && p.case_preserving && !p.case_insensitive,
        "{p:?}"
    );
    assert!(p.linkmax >= 255, "{p:?}");

    let s0 = c.fsstat(&root).unwrap();
    let dev = DEVICE_BYTES;
    assert!(
        s0.tbytes <= dev && s0.tbytes >= dev - dev / 8,
        "tbytes {} for a {dev}-byte data device",
        s0.tbytes
    );
    assert!(s0.fbytes <= s0.tbytes && s0.abytes <= s0.fbytes, "{s0:?}");
    assert!(
        s0.fbytes >= s0.tbytes - 8 * MIB as u64,
        "a fresh filesystem is nearly free: {s0:?}"
    );
    assert!(s0.tfiles >= s0.ffiles && s0.ffiles > 1000, "{s0:?}");

    let f = c.create_file(&root, b"big", 0o644);
    c.write_all(&f, &pattern(16, 4 * MIB));
    let s1 = c.fsstat(&root).unwrap();
    assert_eq!(s1.tbytes, s0.tbytes);
    assert!(
        s1.fbytes + 4 * MIB as u64 <= s0.fbytes,
        "fbytes {} -> {} after writing 4 MiB",
        s0.fbytes,
        s1.fbytes
    );
    assert!(
        s1.ffiles < s0.ffiles || s1.ffiles == s1.tfiles,
        "{s0:?} -> {s1:?}"
    );
    assert_eq!(c.getattr(&f).unwrap().used, 4 * MIB as u64);

    // Names: 255 bytes work, 256 are NAMETOOLONG.
    let ok = vec![b'n'; 255];
    c.create_file(&root, &ok, 0o644);
    assert_eq!(c.lookup(&root, &ok).unwrap().1.unwrap().ftype, ftype::REG);
    let long = vec![b'n'; 256];
    assert_eq!(
        c.create(&root, &long, How::Guarded(Sattr::mode(0o644)))
            .unwrap_err(),
        st::NAMETOOLONG
    );
    assert_eq!(c.lookup(&root, &long).unwrap_err(), st::NAMETOOLONG);
    assert_eq!(
        c.mkdir(&root, &long, &Sattr::mode(0o755)).unwrap_err(),
        st::NAMETOOLONG
    );
    assert_eq!(c.symlink(&root, &long, b"t").unwrap_err(), st::NAMETOOLONG);
    assert_eq!(c.rename(&root, &ok, &root, &long), st::NAMETOOLONG);
    assert_eq!(c.link(&f, &root, &long).unwrap_err(), st::NAMETOOLONG);
}

// ------------------------------------------------------------------------------------------
// MOUNT and the portmapper

#[test]
fn mount_and_getport_answer_on_the_nfs_port() {
    let (node, mut c, root) = setup(14017);
    let (fh, flavors) = c.mnt(b"/").unwrap();
    assert_eq!(fh, root);
    assert_eq!(fh.len(), 28);
    assert!(flavors.contains(&1), "AUTH_SYS among {flavors:?}");
    let a = c.getattr(&fh).unwrap();
    assert_eq!(a.ftype, ftype::DIR);
    assert_eq!(
        c.lookup(&fh, b"..").unwrap().0,
        fh,
        "'..' of the root is the root"
    );
    const MNT3ERR_NOENT: u32 = 2;
    const MNT3ERR_NOTDIR: u32 = 20;
    assert_eq!(c.mnt(b"/nope").unwrap_err(), MNT3ERR_NOENT);
    // A directory below the export mounts too (as knfsd allows); a file does not.
    let sub = c.mkdir_mode(&root, b"sub", 0o755);
    let deeper = c.mkdir_mode(&sub, b"deeper", 0o755);
    c.create_file(&sub, b"file", 0o644);
    assert_eq!(c.mnt(b"/sub").unwrap().0, sub);
    assert_eq!(c.mnt(b"/sub/deeper/").unwrap().0, deeper);
    assert_eq!(c.mnt(b"/sub/file").unwrap_err(), MNT3ERR_NOTDIR);
    assert_eq!(c.mnt(b"/sub/../sub").unwrap_err(), MNT3ERR_NOENT);

    let exports = c.exports();
    assert_eq!(exports.len(), 1, "{exports:?}");
    assert_eq!(exports[0].0, "/");

    let port = node.port as u32;
    assert_eq!(c.getport(NFS, 3, IPPROTO_TCP), port);
    assert_eq!(c.getport(MOUNT, 3, IPPROTO_TCP), port);
    assert_eq!(c.getport(NLM, 4, IPPROTO_TCP), 0, "no lock manager");
    assert_eq!(c.getport(100024, 1, IPPROTO_TCP), 0, "no status monitor");
    assert_eq!(c.getport(NFS, 3, 17), 0, "no UDP");
    assert_eq!(c.call(PORTMAP, 2, 0, &[]), Reply::Success(vec![]));
    assert_eq!(c.call(MOUNT, 3, 0, &[]), Reply::Success(vec![]));
    // UMNT answers with nothing.
    assert_eq!(c.mount_call(3, &args::mount_path(b"/")), Vec::<u8>::new());
}

// ------------------------------------------------------------------------------------------
// CREATE modes, graceful shutdown, data and namespace edge cases

#[test]
fn exclusive_and_unchecked_creates_follow_rfc_1813() {
    let (_node, mut c, root) = setup(14018);
    // EXCLUSIVE: a retry with the same verifier (new xid, as after a lost reply and a DRC
    // miss) finds its own file; another verifier gets EXIST.
    let v = *b"verf0001";
    let (fh, _) = c.create(&root, b"x", How::Exclusive(v)).expect("EXCLUSIVE");
    let (again, _) = c
        .create(&root, b"x", How::Exclusive(v))
        .expect("EXCLUSIVE retried with the same verifier");
    assert_eq!(again, fh);
    assert_eq!(
        c.create(&root, b"x", How::Exclusive(*b"verf0002"))
            .unwrap_err(),
        st::EXIST
    );
    // The client then sets the real attributes.
    let a = c
        .setattr(&fh, &Sattr::mode(0o640))
        .unwrap()
        .expect("post-op attributes");
    assert_eq!((a.mode, a.size, a.ftype), (0o640, 0, ftype::REG));
    // A plain file named like an exclusive one is not mistaken for it.
    c.create_file(&root, b"plain", 0o644);
    assert_eq!(
        c.create(&root, b"plain", How::Exclusive(v)).unwrap_err(),
        st::EXIST
    );

    // GUARDED on an existing name: EXIST; UNCHECKED: the existing file, truncated only when
    // the size is asked for.
    let f = c.create_file(&root, b"u", 0o644);
    c.write_all(&f, b"keep me");
    assert_eq!(
        c.create(&root, b"u", How::Guarded(Sattr::mode(0o644)))
            .unwrap_err(),
        st::EXIST
    );
    let (same, _) = c
        .create(&root, b"u", How::Unchecked(Sattr::mode(0o644)))
        .unwrap();
    assert_eq!(same, f);
    assert_eq!(c.read_all(&f), b"keep me");
    let trunc = Sattr {
        size: Some(0),
        ..Sattr::mode(0o644)
    };
    let (same, attr) = c.create(&root, b"u", How::Unchecked(trunc)).unwrap();
    assert_eq!(same, f);
    assert_eq!(attr.map(|a| a.size), Some(0));
    assert_eq!(c.getattr(&f).unwrap().size, 0);
    // UNCHECKED over a directory is not a file.
    c.mkdir_mode(&root, b"dir", 0o755);
    assert!(
        c.create(&root, b"dir", How::Unchecked(Sattr::default()))
            .is_err(),
        "CREATE UNCHECKED over a directory succeeded"
    );
    // The mode asked for is the mode given; the creator owns the file.
    let mut u = Rpc::connect_as(_node.addr(), Cred::user(1000, 1000, &[]));
    let pubd = c.mkdir_mode(&root, b"pub", 0o777);
    let (_, a) = u
        .create(&pubd, b"m", How::Guarded(Sattr::mode(0o604)))
        .unwrap();
    let a = a.unwrap();
    assert_eq!((a.mode, a.uid, a.gid), (0o604, 1000, 1000));
}

#[test]
fn sigterm_drains_requests_in_flight_and_keeps_what_was_acknowledged() {
    let (mut node, mut c, root) = setup(14019);
    let f = c.create_file(&root, b"inflight", 0o644);
    // An idle client connection stays open across the shutdown; it must not hold it up.
    let _idle = Rpc::connect(node.addr());
    const CHUNK: usize = 64 * 1024;
    const N: usize = 160;
    let data = pattern(19, N * CHUNK);
    let mut offs: Vec<usize> = (0..N).map(|i| i * CHUNK).collect();
    shuffle(&mut offs, 19);
    let mut by_xid = HashMap::new();
    let msgs: Vec<Vec<u8>> = offs
        .iter()
        .map(|&off| {
            let xid = c.next_xid();
            by_xid.insert(xid, off);
            c.message(
                xid,
                NFS,
                3,
                proc3::WRITE,
                &args::write(&f, off as u64, &data[off..off + CHUNK], UNSTABLE),
            )
        })
        .collect();
    let mut rd = c.stream.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Ok(rec) = read_record(&mut rd) {
            got.push(rec);
        }
        got
    });
    for m in &msgs[..N / 2] {
        c.send(m);
    }
    let t0 = std::time::Instant::now();
    node.term();
    for m in &msgs[N / 2..] {
        if write_record(&mut c.stream, m).is_err() {
            break;
        }
    }
    let status = node.wait_exit();
    assert!(
        status.success(),
        "exit {status} after SIGTERM:\n{}",
        node.log()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "shutdown took {:?}",
        t0.elapsed()
    );
    let replies = reader.join().unwrap();
    let mut acked = Vec::new();
    for rec in &replies {
        let (xid, reply) = parse_reply(rec);
        let Reply::Success(body) = reply else {
            panic!("WRITE during shutdown: {reply:?}")
        };
        let w = parse_write(&body).expect("WRITE during shutdown");
        assert_eq!(w.count as usize, CHUNK);
        acked.push(by_xid[&xid]);
    }
    drop(c);

    node.start_again(&[]);
    let mut c = Rpc::connect(node.addr());
    let (fh, _) = c.lookup(&root, b"inflight").unwrap();
    assert_eq!(fh, f);
    for off in &acked {
        let (got, _) = c.read(&f, *off as u64, CHUNK as u32).unwrap();
        assert!(
            got == data[*off..off + CHUNK],
            "an acknowledged UNSTABLE write at {off} was lost by a graceful shutdown"
        );
    }
    let executed = offs
        .iter()
        .filter(|&&off| {
            let (got, _) = c.read(&f, off as u64, CHUNK as u32).unwrap();
            got == data[off..off + CHUNK]
        })
        .count();
    eprintln!(
        "{} of {N} writes acknowledged before the node stopped, {executed} executed",
        acked.len()
    );
}

/// SETATTR with a ctime guard.
fn setattr_guarded(c: &mut Rpc, fh: &[u8], s: &Sattr, ctime: (u32, u32)) -> u32 {
    let mut w = XdrWriter::new();
    w.opaque(fh);
    args::sattr(&mut w, s);
    w.bool(true).u32(ctime.0).u32(ctime.1);
    parse_status_wcc(&c.nfs(proc3::SETATTR, &w.buf), "SETATTR")
}

#[test]
fn data_and_namespace_edge_cases() {
    let (_node, mut c, root) = setup(14020);
    let d = c.mkdir_mode(&root, b"d", 0o755);
    let f = c.create_file(&d, b"f", 0o644);

    // WRITE's wcc: the size before and after.
    let body = c.nfs(proc3::WRITE, &args::write(&f, 0, b"0123456789", FILE_SYNC));
    let mut r = XdrReader::new(&body);
    assert_eq!(r.u32().unwrap(), st::OK);
    let (before, after) = wcc(&mut r);
    assert_eq!(before.map(|b| b.0), Some(0), "pre-op size");
    assert_eq!(after.map(|a| a.size), Some(10), "post-op size");

    // READ past the end: nothing, eof; a READ reaching the end: eof.
    assert_eq!(c.read(&f, 100, 10).unwrap(), (vec![], true));
    assert_eq!(c.read(&f, 4, 100).unwrap(), (b"456789".to_vec(), true));
    assert_eq!(c.read(&f, 0, 4).unwrap(), (b"0123".to_vec(), false));
    // Truncate and extend: the tail reads as zeros.
    let t = |n| Sattr {
        size: Some(n),
        ..Sattr::default()
    };
    assert_eq!(c.setattr(&f, &t(3)).unwrap().map(|a| a.size), Some(3));
    assert_eq!(c.setattr(&f, &t(8000)).unwrap().map(|a| a.size), Some(8000));
    let all = c.read_all(&f);
    assert_eq!(&all[..3], b"012");
    assert!(
        all[3..].iter().all(|b| *b == 0),
        "extended tail is not zero"
    );
    // A write far out leaves a hole.
    c.write(&f, 3 * MIB as u64, b"end", FILE_SYNC).unwrap();
    let (hole, _) = c.read(&f, MIB as u64, 4096).unwrap();
    assert_eq!(hole, vec![0; 4096]);
    // Too large.
    assert_eq!(
        c.write(&f, u64::MAX - 2, b"xyz", FILE_SYNC).unwrap_err(),
        27,
        "NFS3ERR_FBIG"
    );
    // Data procedures on a directory and on a symlink.
    assert_eq!(c.read(&d, 0, 10).unwrap_err(), st::ISDIR);
    assert_eq!(c.write(&d, 0, b"x", FILE_SYNC).unwrap_err(), st::ISDIR);
    let (sl, _) = c.symlink(&d, b"sl", b"f").unwrap();
    assert_eq!(c.read(&sl, 0, 10).unwrap_err(), st::INVAL);
    assert_eq!(c.setattr(&d, &t(0)).unwrap_err(), st::ISDIR);

    // SETATTR guarded by ctime: a stale guard is NOT_SYNC and changes nothing.
    let a = c.getattr(&f).unwrap();
    let stale = (a.ctime.0.wrapping_sub(5), a.ctime.1);
    assert_eq!(
        setattr_guarded(&mut c, &f, &Sattr::mode(0o600), stale),
        st::NOT_SYNC
    );
    assert_eq!(c.getattr(&f).unwrap().mode, 0o644);
    assert_eq!(
        setattr_guarded(&mut c, &f, &Sattr::mode(0o600), a.ctime),
        st::OK
    );
    let b = c.getattr(&f).unwrap();
    assert_eq!(b.mode, 0o600);
    assert!(b.ctime >= a.ctime, "ctime went back");

    // LOOKUP of "." and "..".
    assert_eq!(c.lookup(&d, b".").unwrap().0, d);
    assert_eq!(c.lookup(&d, b"..").unwrap().0, root);
    assert_eq!(c.lookup(&d, b"").unwrap_err(), st::NOENT, "empty name");

    // RENAME: over an existing file (which then is gone, its handle stale).
    let g = c.create_file(&d, b"g", 0o644);
    c.write_all(&g, b"ggg");
    assert_eq!(c.rename(&d, b"f", &d, b"g"), st::OK);
    assert_eq!(c.lookup(&d, b"g").unwrap().0, f);
    assert_eq!(c.lookup(&d, b"f").unwrap_err(), st::NOENT);
    assert_eq!(c.getattr(&g).unwrap_err(), st::STALE);
    // Onto itself: nothing happens.
    assert_eq!(c.rename(&d, b"g", &d, b"g"), st::OK);
    assert_eq!(c.lookup(&d, b"g").unwrap().0, f);
    // A directory into its own subtree: INVAL.
    let sub = c.mkdir_mode(&d, b"sub", 0o755);
    assert_eq!(c.rename(&root, b"d", &sub, b"loop"), st::INVAL);
    assert_eq!(c.lookup(&root, b"d").unwrap().0, d);
    // A file over a directory, a directory over a file, over a non-empty directory.
    assert_ne!(
        c.rename(&d, b"g", &d, b"sub"),
        st::OK,
        "file over a directory"
    );
    assert_ne!(
        c.rename(&d, b"sub", &d, b"g"),
        st::OK,
        "directory over a file"
    );
    let other = c.mkdir_mode(&root, b"other", 0o755);
    c.create_file(&other, b"inside", 0o644);
    assert_ne!(
        c.rename(&d, b"sub", &root, b"other"),
        st::OK,
        "over a non-empty directory"
    );
    // A directory moved: its ".." follows, link counts too.
    assert_eq!(c.rename(&d, b"sub", &other, b"moved"), st::OK);
    assert_eq!(c.lookup(&sub, b"..").unwrap().0, other);
    assert_eq!(c.getattr(&d).unwrap().nlink, 2);
    assert_eq!(c.getattr(&other).unwrap().nlink, 3);
    // Across directories, the moved file keeps its handle.
    assert_eq!(c.rename(&d, b"g", &other, b"g2"), st::OK);
    assert_eq!(c.lookup(&other, b"g2").unwrap().0, f);
    // Names "." and ".." cannot be removed or renamed.
    assert_ne!(c.remove(&d, b"."), st::OK);
    assert_ne!(c.rmdir(&d, b".."), st::OK);
    assert_ne!(c.rename(&d, b"..", &root, b"x"), st::OK);
    // RMDIR of a file and REMOVE of a directory fail and change nothing.
    assert_eq!(c.rmdir(&other, b"g2"), st::NOTDIR);
    assert_ne!(c.remove(&other, b"moved"), st::OK);
    c.lookup(&other, b"moved")
        .expect("the directory survived REMOVE");
    assert_eq!(c.getattr(&other).unwrap().nlink, 3);
    // Names with a slash or a NUL are not names.
    let slash = c.create(&d, b"a/b", How::Guarded(Sattr::mode(0o644)));
    assert!(slash.is_err(), "created a name with a slash");
    let nul = c.create(&d, b"a\0b", How::Guarded(Sattr::mode(0o644)));
    assert!(nul.is_err(), "created a name with a NUL");
    // NLM is not served on the NFS port: clients fail fast.
    assert_eq!(c.call(NLM, 4, 0, &[]), Reply::ProgUnavail);
}

#[test]
fn sigterm_sends_the_replies_of_requests_it_executed() {
    let (mut node, mut c, root) = setup(14021);
    let big = c.create_file(&root, b"big", 0o644);
    c.write_all(&big, &pattern(21, MIB));
    // 40 READs of 1 MiB (more than the socket buffers hold while the client is not reading)
    // then 20 CREATEs, all on one connection, fewer than the node reads ahead (64), so the
    // node has read every request before the SIGTERM.
    let mut msgs = Vec::new();
    for _ in 0..40 {
        let xid = c.next_xid();
        msgs.push(c.message(xid, NFS, 3, proc3::READ, &args::read(&big, 0, MIB as u32)));
    }
    let mut creates = BTreeSet::new();
    for i in 0..20 {
        let xid = c.next_xid();
        creates.insert(xid);
        let a = args::create(
            &root,
            format!("c-{i:02}").as_bytes(),
            How::Guarded(Sattr::mode(0o644)),
        );
        msgs.push(c.message(xid, NFS, 3, proc3::CREATE, &a));
    }
    for m in &msgs {
        c.send(m);
    }
    // Wait until the last CREATE has run (seen from another connection), then stop the node
    // while the replies are still queued behind the READ data.
    let mut probe = Rpc::connect(node.addr());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while probe.lookup(&root, b"c-19").is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the CREATEs never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(probe);
    std::thread::sleep(Duration::from_millis(200));
    node.term();
    std::thread::sleep(Duration::from_millis(300));
    // Now read: every executed request must have its reply.
    let mut got = BTreeSet::new();
    let mut created_ok = 0;
    while let Ok(rec) = read_record(&mut c.stream) {
        let (xid, _) = parse_reply(&rec);
        if creates.contains(&xid) {
            assert_eq!(reply_status(&rec), st::OK);
            created_ok += 1;
        }
        got.insert(xid);
    }
    let status = node.wait_exit();
    assert!(status.success(), "exit {status}:\n{}", node.log());
    assert_eq!(
        (got.len(), created_ok),
        (60, 20),
        "the node executed all 60 requests (20 CREATEs) but sent {} replies ({created_ok} \
         CREATE replies) before exiting on SIGTERM",
        got.len()
    );
}

#[test]
fn acknowledged_changes_survive_sigkill() {
    let (mut node, mut c, root) = setup(14022);
    // A sync export commits namespace and attribute changes before replying; FILE_SYNC
    // writes are durable before the reply; UNSTABLE writes once COMMIT answered.
    let d = c.mkdir_mode(&root, b"d", 0o750);
    let f = c.create_file(&d, b"synced", 0o644);
    let a = pattern(22, 200_000);
    c.write_all(&f, &a);
    let u = c.create_file(&d, b"committed", 0o644);
    let b = pattern(23, 300_000);
    for (i, chunk) in b.chunks(65536).enumerate() {
        c.write(&u, (i * 65536) as u64, chunk, UNSTABLE).unwrap();
    }
    c.commit(&u).unwrap();
    let gone = c.create_file(&d, b"gone", 0o644);
    assert_eq!(c.remove(&d, b"gone"), st::OK);
    c.create_file(&d, b"old-name", 0o644);
    assert_eq!(c.rename(&d, b"old-name", &d, b"new-name"), st::OK);
    c.setattr(&f, &Sattr::mode(0o600)).unwrap();
    c.symlink(&d, b"sl", b"synced").unwrap();
    c.link(&f, &root, b"hard").unwrap();
    drop(c);

    node.kill();
    node.start_again(&[]);
    let mut c = Rpc::connect(node.addr());
    assert_eq!(c.read_all(&f), a, "FILE_SYNC data lost by a crash");
    assert_eq!(c.read_all(&u), b, "committed UNSTABLE data lost by a crash");
    let fa = c.getattr(&f).unwrap();
    assert_eq!((fa.mode, fa.nlink), (0o600, 2));
    assert_eq!(c.getattr(&d).unwrap().mode, 0o750);
    assert_eq!(c.getattr(&gone).unwrap_err(), st::STALE);
    let mut names = c.list(&d);
    names.sort();
    assert_eq!(
        names,
        [".", "..", "committed", "new-name", "sl", "synced"]
            .iter()
            .map(|n| name(n))
            .collect::<Vec<_>>()
    );
    let (sl, _) = c.lookup(&d, b"sl").unwrap();
    assert_eq!(c.readlink(&sl).unwrap(), b"synced");
    assert_eq!(c.lookup(&root, b"hard").unwrap().0, f);
}

#[test]
fn auth_none_callers_act_as_the_anonymous_user() {
    let (_node, mut c, root) = setup(14023);
    let pubd = c.mkdir_mode(&root, b"pub", 0o777);
    let xid = c.next_xid();
    let mut w = XdrWriter::new();
    w.u32(xid).u32(0).u32(2).u32(NFS).u32(3).u32(proc3::CREATE);
    w.u32(0).opaque(&[]).u32(0).opaque(&[]); // AUTH_NONE credentials and verifier
    w.buf.extend_from_slice(&args::create(
        &pubd,
        b"anon",
        How::Guarded(Sattr::mode(0o644)),
    ));
    assert_eq!(reply_status(&c.raw(&w.buf)), st::OK);
    let (_, a) = c.lookup(&pubd, b"anon").unwrap();
    let a = a.unwrap();
    assert_eq!((a.uid, a.gid), (65534, 65534));
    // And may not create in the root-owned 0755 root directory.
    let xid = c.next_xid();
    let mut w = XdrWriter::new();
    w.u32(xid).u32(0).u32(2).u32(NFS).u32(3).u32(proc3::CREATE);
    w.u32(0).opaque(&[]).u32(0).opaque(&[]);
    w.buf.extend_from_slice(&args::create(
        &root,
        b"anon",
        How::Guarded(Sattr::mode(0o644)),
    ));
    assert_eq!(reply_status(&c.raw(&w.buf)), st::ACCES);
}
