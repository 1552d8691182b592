//! Shared by the NFS integration tests: a `scoutgw serve` node as a child process on its own
//! device files, and a small raw ONC RPC / NFSv3 / MOUNT v3 client over TCP (record marking,
//! AUTH_SYS with a chosen uid/gid/gids, xid control).
//!
//! Encoding uses the crate's own bounded XDR reader and writer (`scoutgw::nfs::xdr`); the
//! RPC messages and the NFS arguments and results are written out here from RFC 5531 and
//! RFC 1813, independently of the gateway's code, so a wire mistake on either side shows.

#![allow(dead_code)]

pub mod cluster;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

pub use scoutgw::nfs::xdr::{XdrReader, XdrWriter};
use tempfile::TempDir;

pub const NFS: u32 = 100003;
pub const MOUNT: u32 = 100005;
pub const PORTMAP: u32 = 100000;
pub const NLM: u32 = 100021;
pub const IPPROTO_TCP: u32 = 6;
pub const MIB: usize = 1 << 20;

/// Size of each device file the test nodes get.
pub const DEVICE_BYTES: u64 = 256 << 20;

/// NFSv3 procedure numbers.
pub mod proc3 {
    pub const NULL: u32 = 0;
    pub const GETATTR: u32 = 1;
    pub const SETATTR: u32 = 2;
    pub const LOOKUP: u32 = 3;
    pub const ACCESS: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const READ: u32 = 6;
    pub const WRITE: u32 = 7;
    pub const CREATE: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const SYMLINK: u32 = 10;
    pub const MKNOD: u32 = 11;
    pub const REMOVE: u32 = 12;
    pub const RMDIR: u32 = 13;
    pub const RENAME: u32 = 14;
    pub const LINK: u32 = 15;
    pub const READDIR: u32 = 16;
    pub const READDIRPLUS: u32 = 17;
    pub const FSSTAT: u32 = 18;
    pub const FSINFO: u32 = 19;
    pub const PATHCONF: u32 = 20;
    pub const COMMIT: u32 = 21;
}

/// `nfsstat3` values.
pub mod st {
    pub const OK: u32 = 0;
    pub const PERM: u32 = 1;
    pub const NOENT: u32 = 2;
    pub const IO: u32 = 5;
    pub const ACCES: u32 = 13;
    pub const EXIST: u32 = 17;
    pub const NOTDIR: u32 = 20;
    pub const ISDIR: u32 = 21;
    pub const INVAL: u32 = 22;
    pub const ROFS: u32 = 30;
    pub const NAMETOOLONG: u32 = 63;
    pub const NOTEMPTY: u32 = 66;
    pub const STALE: u32 = 70;
    pub const BADHANDLE: u32 = 10001;
    pub const NOT_SYNC: u32 = 10002;
    pub const BAD_COOKIE: u32 = 10003;
    pub const NOTSUPP: u32 = 10004;
    pub const TOOSMALL: u32 = 10005;
    pub const BADTYPE: u32 = 10007;
}

/// `ftype3` values.
pub mod ftype {
    pub const REG: u32 = 1;
    pub const DIR: u32 = 2;
    pub const BLK: u32 = 3;
    pub const CHR: u32 = 4;
    pub const LNK: u32 = 5;
    pub const SOCK: u32 = 6;
    pub const FIFO: u32 = 7;
}

/// ACCESS3 bits.
pub mod acc {
    pub const READ: u32 = 0x01;
    pub const LOOKUP: u32 = 0x02;
    pub const MODIFY: u32 = 0x04;
    pub const EXTEND: u32 = 0x08;
    pub const DELETE: u32 = 0x10;
    pub const EXECUTE: u32 = 0x20;
    pub const ALL: u32 = 0x3f;
}

/// `stable_how`.
pub const UNSTABLE: u32 = 0;
pub const DATA_SYNC: u32 = 1;
pub const FILE_SYNC: u32 = 2;

// ------------------------------------------------------------------------------------------
// The node

/// A `scoutgw serve` child process on fresh device files in a temporary folder; killed on
/// drop if still running.
pub struct Node {
    dir: TempDir,
    pub port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_scoutgw")
}

/// The lines a child writes to its piped stdout, as they come (a thread forwards them).
pub fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Whether this build of the node also serves HTTP (then each test node needs its own HTTP
/// port too: the NFS port + 500).
fn has_http() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        let out = Command::new(bin())
            .args(["quickstart", "--help"])
            .output()
            .expect("run scoutgw quickstart --help");
        String::from_utf8_lossy(&out.stdout).contains("--http-bind")
    })
}

impl Node {
    /// Make a filesystem with `quickstart --setup-only` and serve it on 127.0.0.1:`port`,
    /// with extra `SCOUTGW_…` environment overrides.
    pub fn start(port: u16, env: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new(bin())
            .args(["quickstart", "--dir"])
            .arg(dir.path())
            .args(["--setup-only", "--meta-size", "256M", "--data-size", "256M"])
            .output()
            .expect("run scoutgw quickstart");
        assert!(
            out.status.success(),
            "quickstart failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut node = Node {
            dir,
            port,
            env: Vec::new(),
            child: None,
        };
        node.set_env(env);
        node.spawn();
        node
    }

    fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("scoutgw.toml")
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The node's stderr so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("node.log"))
            .expect("node log");
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config())
            .env("SCOUTGW_NFS__BIND", format!("127.0.0.1:{}", self.port))
            .env("SCOUTGW_NODE__LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if has_http() {
            cmd.env(
                "SCOUTGW_HTTP__BIND",
                format!("127.0.0.1:{}", self.port + 500),
            );
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn scoutgw serve");
        let rx = stdout_lines(&mut child);
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with("scoutgw: serving NFSv3 on ") => {
                    let want = format!("127.0.0.1:{}", self.port);
                    assert!(line.contains(&want), "{line:?} does not name {want}");
                    return;
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    let child = self.child.as_mut().expect("child");
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("node exited with {status} before serving:\n{}", self.log());
                    }
                    if Instant::now() > deadline {
                        panic!("node not serving after 60 s:\n{}", self.log());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().expect("child").wait();
                    panic!("node exited ({status:?}) before serving:\n{}", self.log());
                }
            }
        }
    }

    /// Send SIGTERM without waiting.
    pub fn term(&self) {
        let child = self.child.as_ref().expect("node is running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
    }

    /// SIGTERM the node and wait for it to exit; returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.term();
        self.wait_exit()
    }

    /// Wait (at most 60 s) for the node to exit after a SIGTERM.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("node is running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait for node") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node did not exit 60 s after SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the node (a crash) and reap it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("node is running");
        child.kill().expect("SIGKILL the node");
        child.wait().expect("reap the node");
    }

    /// Stop gracefully (asserting exit 0) and start again with `env` overrides.
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        let status = self.stop();
        assert!(
            status.success(),
            "node exited with {status} on SIGTERM:\n{}",
            self.log()
        );
        self.start_again(env);
    }

    /// Start the stopped node again with `env` overrides.
    pub fn start_again(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "node is running");
        self.set_env(env);
        self.spawn();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ------------------------------------------------------------------------------------------
// ONC RPC

/// AUTH_SYS identity of the calls a client makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

impl Cred {
    pub fn root() -> Cred {
        Cred {
            uid: 0,
            gid: 0,
            gids: Vec::new(),
        }
    }

    pub fn user(uid: u32, gid: u32, gids: &[u32]) -> Cred {
        Cred {
            uid,
            gid,
            gids: gids.to_vec(),
        }
    }
}

/// An RPC call message (no record mark), AUTH_SYS credentials, AUTH_NONE verifier.
pub fn call_message(
    xid: u32,
    rpcvers: u32,
    prog: u32,
    vers: u32,
    procedure: u32,
    cred: &Cred,
    args: &[u8],
) -> Vec<u8> {
    let mut body = XdrWriter::new();
    body.u32(0x5c07)
        .opaque(b"scoutgw-test")
        .u32(cred.uid)
        .u32(cred.gid);
    body.u32(cred.gids.len() as u32);
    for g in &cred.gids {
        body.u32(*g);
    }
    let mut w = XdrWriter::new();
    w.u32(xid)
        .u32(0)
        .u32(rpcvers)
        .u32(prog)
        .u32(vers)
        .u32(procedure);
    w.u32(1).opaque(&body.buf); // AUTH_SYS
    w.u32(0).opaque(&[]); // AUTH_NONE verifier
    w.buf.extend_from_slice(args);
    w.buf
}

/// Send `msg` as one record (a single last fragment).
pub fn write_record(w: &mut impl Write, msg: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(msg.len() + 4);
    buf.extend_from_slice(&(msg.len() as u32 | 1 << 31).to_be_bytes());
    buf.extend_from_slice(msg);
    w.write_all(&buf)
}

/// Read one record (any number of fragments).
pub fn read_record(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut hdr = [0u8; 4];
        r.read_exact(&mut hdr)?;
        let word = u32::from_be_bytes(hdr);
        let len = (word & !(1 << 31)) as usize;
        assert!(len <= 4 * MIB, "reply fragment of {len} bytes");
        let at = out.len();
        out.resize(at + len, 0);
        r.read_exact(&mut out[at..])?;
        if word & 1 << 31 != 0 {
            return Ok(out);
        }
    }
}

/// What an RPC reply said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Accepted, SUCCESS: the procedure's results.
    Success(Vec<u8>),
    ProgUnavail,
    ProgMismatch(u32, u32),
    ProcUnavail,
    GarbageArgs,
    SystemErr,
    /// Denied, RPC_MISMATCH (low, high).
    RpcMismatch(u32, u32),
    /// Denied, AUTH_ERROR with this `auth_stat`.
    AuthError(u32),
}

/// Parse a reply record into its xid and what it says.
pub fn parse_reply(rec: &[u8]) -> (u32, Reply) {
    let mut r = XdrReader::new(rec);
    let xid = r.u32().expect("reply xid");
    assert_eq!(r.u32().expect("msg type"), 1, "not a REPLY: {rec:02x?}");
    let reply = match r.u32().expect("reply_stat") {
        0 => {
            let _flavor = r.u32().expect("verifier flavor");
            r.opaque("verifier", 400).expect("verifier body");
            match r.u32().expect("accept_stat") {
                0 => Reply::Success(r.rest().to_vec()),
                1 => Reply::ProgUnavail,
                2 => Reply::ProgMismatch(r.u32().unwrap(), r.u32().unwrap()),
                3 => Reply::ProcUnavail,
                4 => Reply::GarbageArgs,
                5 => Reply::SystemErr,
                other => panic!("accept_stat {other}"),
            }
        }
        1 => match r.u32().expect("reject_stat") {
            0 => Reply::RpcMismatch(r.u32().unwrap(), r.u32().unwrap()),
            1 => Reply::AuthError(r.u32().unwrap()),
            other => panic!("reject_stat {other}"),
        },
        other => panic!("reply_stat {other}"),
    };
    assert_eq!(
        r.remaining(),
        0,
        "bytes after a non-success reply: {rec:02x?}"
    );
    (xid, reply)
}

/// The nfsstat3 at the start of a successful reply record.
pub fn reply_status(rec: &[u8]) -> u32 {
    match parse_reply(rec).1 {
        Reply::Success(body) => u32::from_be_bytes(body[..4].try_into().unwrap()),
        other => panic!("RPC failed: {other:?}"),
    }
}

/// A connection to a node.
pub struct Rpc {
    pub stream: TcpStream,
    xid: u32,
    pub cred: Cred,
}

static XID_BASE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0x1000);

impl Rpc {
    pub fn connect(addr: SocketAddr) -> Rpc {
        Self::connect_as(addr, Cred::root())
    }

    pub fn connect_as(addr: SocketAddr, cred: Cred) -> Rpc {
        let stream = TcpStream::connect(addr).expect("connect to the node");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        // Every connection gets its own xid range: the DRC keys on the client IP and xid.
        let base = XID_BASE.fetch_add(0x0100_0000, std::sync::atomic::Ordering::Relaxed);
        Rpc {
            stream,
            xid: base,
            cred,
        }
    }

    pub fn next_xid(&mut self) -> u32 {
        self.xid = self.xid.wrapping_add(1);
        self.xid
    }

    /// A call message with this connection's credentials.
    pub fn message(&self, xid: u32, prog: u32, vers: u32, procedure: u32, args: &[u8]) -> Vec<u8> {
        call_message(xid, 2, prog, vers, procedure, &self.cred, args)
    }

    pub fn send(&mut self, msg: &[u8]) {
        write_record(&mut self.stream, msg).expect("send a record");
    }

    pub fn recv(&mut self) -> Vec<u8> {
        read_record(&mut self.stream).expect("read a reply record")
    }

    /// Send one message and return the reply record.
    pub fn raw(&mut self, msg: &[u8]) -> Vec<u8> {
        self.send(msg);
        let rec = self.recv();
        assert_eq!(rec[..4], msg[..4], "reply to another xid");
        rec
    }

    pub fn call(&mut self, prog: u32, vers: u32, procedure: u32, args: &[u8]) -> Reply {
        let xid = self.next_xid();
        let msg = self.message(xid, prog, vers, procedure, args);
        let (rx, reply) = parse_reply(&self.raw(&msg));
        assert_eq!(rx, xid);
        reply
    }

    /// Send all messages at once (a reader thread collects the replies meanwhile) and
    /// return the replies by xid.
    pub fn pipeline(&mut self, msgs: &[Vec<u8>]) -> HashMap<u32, Vec<u8>> {
        let mut rd = self.stream.try_clone().expect("clone stream");
        let n = msgs.len();
        let reader = std::thread::spawn(move || {
            (0..n)
                .map(|_| read_record(&mut rd).expect("pipelined reply"))
                .collect::<Vec<_>>()
        });
        for m in msgs {
            self.send(m);
        }
        let mut out = HashMap::new();
        for rec in reader.join().expect("reader thread") {
            let xid = u32::from_be_bytes(rec[..4].try_into().unwrap());
            assert!(
                out.insert(xid, rec).is_none(),
                "two replies to xid {xid:#x}"
            );
        }
        for m in msgs {
            let xid = u32::from_be_bytes(m[..4].try_into().unwrap());
            assert!(out.contains_key(&xid), "no reply to xid {xid:#x}");
        }
        out
    }

    /// An NFSv3 call that must be accepted with SUCCESS; returns the results.
    pub fn nfs(&mut self, procedure: u32, args: &[u8]) -> Vec<u8> {
        match self.call(NFS, 3, procedure, args) {
            Reply::Success(body) => body,
            other => panic!("NFS procedure {procedure}: {other:?}"),
        }
    }

    pub fn mount_call(&mut self, procedure: u32, args: &[u8]) -> Vec<u8> {
        match self.call(MOUNT, 3, procedure, args) {
            Reply::Success(body) => body,
            other => panic!("MOUNT procedure {procedure}: {other:?}"),
        }
    }
}

// ------------------------------------------------------------------------------------------
// NFSv3 arguments

/// `sattr3`; times are never set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sattr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
}

impl Sattr {
    pub fn mode(mode: u32) -> Sattr {
        Sattr {
            mode: Some(mode),
            ..Sattr::default()
        }
    }
}

/// `createhow3`.
#[derive(Debug, Clone, Copy)]
pub enum How {
    Unchecked(Sattr),
    Guarded(Sattr),
    Exclusive([u8; 8]),
}

/// What MKNOD makes.
#[derive(Debug, Clone, Copy)]
pub enum Node3 {
    Chr(u32, u32),
    Blk(u32, u32),
    Sock,
    Fifo,
}

pub mod args {
    use super::*;

    pub fn sattr(w: &mut XdrWriter, s: &Sattr) {
        for v in [s.mode, s.uid, s.gid] {
            match v {
                Some(v) => w.bool(true).u32(v),
                None => w.bool(false),
            };
        }
        match s.size {
            Some(v) => w.bool(true).u64(v),
            None => w.bool(false),
        };
        w.u32(0).u32(0); // atime, mtime: DONT_CHANGE
    }

    pub fn fh(fh: &[u8]) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.opaque(fh);
        w.buf
    }

    pub fn dirop(dir: &[u8], name: &[u8]) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.opaque(dir).opaque(name);
        w.buf
    }

    pub fn create(dir: &[u8], name: &[u8], how: How) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.opaque(dir).opaque(name);
        match how {
            How::Unchecked(s) => {
                w.u32(0);
                sattr(&mut w, &s);
            }
            How::Guarded(s) => {
                w.u32(1);
                sattr(&mut w, &s);
            }
            How::Exclusive(v) => {
                w.u32(2).fixed(&v);
            }
        }
        w.buf
    }

    pub fn mkdir(dir: &[u8], name: &[u8], s: &Sattr) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.opaque(dir).opaque(name);
        sattr(&mut w, s);
        w.buf
    }

    pub fn symlink(dir: &[u8], name: &[u8], target: &[u8]) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.opaque(dir).opaque(name);
        sattr(&mut w, &Sattr::default());
        w.opaque(target);
        w.buf
    }

    pub fn mknod(dir: &[u8], name: &[u8], what: Node3, s: &Sattr) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.opaque(dir).opaque(name);
        match what {
            Node3::Chr(ma, mi) | Node3::Blk(ma, mi) => {
                w.u32(if matches!(what, Node3::Chr(..)) {
                    ftype::CHR
                } else {
                    ftype::BLK
                });
                sattr(&mut w, s);
                w.u32(ma).u32(mi);
            }
            Node3::Sock => {
                w.u32(ftype::SOCK);
                sattr(&mut w, s);
            }
            Node3::Fifo => {
                w.u32(ftype::FIFO);
                sattr(&mut w, s);
            }
        }
        w.buf
    }

    pub fn rename(from: &[u8], fname: &[u8], to: &[u8], tname: &[u8]) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.opaque(from).opaque(fname).opaque(to).opaque(tname);
        w.buf
    }

    pub fn link(file: &[u8], dir: &[u8], name: &[u8]) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.opaque(file).opaque(dir).opaque(name);
        w.buf
    }

    pub fn write(fh: &[u8], offset: u64, data: &[u8], stable: u32) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.opaque(fh)
            .u64(offset)
            .u32(data.len() as u32)
            .u32(stable)
            .opaque(data);
        w.buf
    }

    pub fn read(fh: &[u8], offset: u64, count: u32) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.opaque(fh).u64(offset).u32(count);
        w.buf
    }

    pub fn commit(fh: &[u8], offset: u64, count: u32) -> Vec<u8> {
        read(fh, offset, count)
    }

    pub fn setattr(fh: &[u8], s: &Sattr) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.opaque(fh);
        sattr(&mut w, s);
        w.bool(false); // no ctime guard
        w.buf
    }

    pub fn access(fh: &[u8], mask: u32) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.opaque(fh).u32(mask);
        w.buf
    }

    pub fn readdir(fh: &[u8], cookie: u64, verf: [u8; 8], count: u32) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.opaque(fh).u64(cookie).fixed(&verf).u32(count);
        w.buf
    }

    pub fn readdirplus(
        fh: &[u8],
        cookie: u64,
        verf: [u8; 8],
        dircount: u32,
        maxcount: u32,
    ) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.opaque(fh)
            .u64(cookie)
            .fixed(&verf)
            .u32(dircount)
            .u32(maxcount);
        w.buf
    }

    pub fn mount_path(path: &[u8]) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.opaque(path);
        w.buf
    }

    pub fn getport(prog: u32, vers: u32, prot: u32) -> Vec<u8> {
        let mut w = XdrWriter::new();
        w.u32(prog).u32(vers).u32(prot).u32(0);
        w.buf
    }
}

// ------------------------------------------------------------------------------------------
// NFSv3 results

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fattr {
    pub ftype: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub used: u64,
    pub rdev: (u32, u32),
    pub fsid: u64,
    pub fileid: u64,
    pub atime: (u32, u32),
    pub mtime: (u32, u32),
    pub ctime: (u32, u32),
}

fn u32_of(r: &mut XdrReader) -> u32 {
    r.u32().expect("reply ends early")
}

fn u64_of(r: &mut XdrReader) -> u64 {
    r.u64().expect("reply ends early")
}

fn bool_of(r: &mut XdrReader) -> bool {
    r.bool().expect("reply: bad boolean")
}

fn time_of(r: &mut XdrReader) -> (u32, u32) {
    (u32_of(r), u32_of(r))
}

pub fn fattr(r: &mut XdrReader) -> Fattr {
    Fattr {
        ftype: u32_of(r),
        mode: u32_of(r),
        nlink: u32_of(r),
        uid: u32_of(r),
        gid: u32_of(r),
        size: u64_of(r),
        used: u64_of(r),
        rdev: (u32_of(r), u32_of(r)),
        fsid: u64_of(r),
        fileid: u64_of(r),
        atime: time_of(r),
        mtime: time_of(r),
        ctime: time_of(r),
    }
}

pub fn post_op_attr(r: &mut XdrReader) -> Option<Fattr> {
    bool_of(r).then(|| fattr(r))
}

/// `wcc_data`: (size, mtime, ctime) before, attributes after.
pub type Wcc = (Option<(u64, (u32, u32), (u32, u32))>, Option<Fattr>);

pub fn wcc(r: &mut XdrReader) -> Wcc {
    let before = bool_of(r).then(|| (u64_of(r), time_of(r), time_of(r)));
    (before, post_op_attr(r))
}

pub fn post_op_fh(r: &mut XdrReader) -> Option<Vec<u8>> {
    bool_of(r).then(|| r.opaque("fh", 64).expect("file handle").to_vec())
}

fn done(r: &XdrReader, what: &str) {
    assert_eq!(r.remaining(), 0, "{what}: bytes left after the results");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOk {
    pub count: u32,
    pub committed: u32,
    pub verf: [u8; 8],
    pub after: Option<Fattr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub fileid: u64,
    pub name: Vec<u8>,
    pub cookie: u64,
    pub attr: Option<Fattr>,
    pub fh: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPage {
    pub dir_attr: Option<Fattr>,
    pub verf: [u8; 8],
    pub entries: Vec<Entry>,
    pub eof: bool,
    /// Bytes of the results (status included).
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fsstat {
    pub tbytes: u64,
    pub fbytes: u64,
    pub abytes: u64,
    pub tfiles: u64,
    pub ffiles: u64,
    pub afiles: u64,
    pub invarsec: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fsinfo {
    pub rtmax: u32,
    pub rtpref: u32,
    pub rtmult: u32,
    pub wtmax: u32,
    pub wtpref: u32,
    pub wtmult: u32,
    pub dtpref: u32,
    pub maxfilesize: u64,
    pub time_delta: (u32, u32),
    pub properties: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pathconf {
    pub linkmax: u32,
    pub name_max: u32,
    pub no_trunc: bool,
    pub chown_restricted: bool,
    pub case_insensitive: bool,
    pub case_preserving: bool,
}

type Res<T> = Result<T, u32>;

/// Parse results that are `status` then, on success, whatever `ok` reads; on failure
/// `fail` reads the rest.
fn results<T>(
    body: &[u8],
    what: &str,
    ok: impl FnOnce(&mut XdrReader) -> T,
    fail: impl FnOnce(&mut XdrReader),
) -> Res<T> {
    let mut r = XdrReader::new(body);
    let status = u32_of(&mut r);
    let out = if status == st::OK {
        Ok(ok(&mut r))
    } else {
        fail(&mut r);
        Err(status)
    };
    done(&r, what);
    out
}

fn skip_post_op(r: &mut XdrReader) {
    post_op_attr(r);
}

fn skip_wcc(r: &mut XdrReader) {
    wcc(r);
}

fn dir_page(body: &[u8], plus: bool) -> Res<DirPage> {
    let len = body.len();
    results(
        body,
        if plus { "READDIRPLUS" } else { "READDIR" },
        |r| {
            let dir_attr = post_op_attr(r);
            let verf: [u8; 8] = r.fixed(8).unwrap().try_into().unwrap();
            let mut entries = Vec::new();
            while bool_of(r) {
                let fileid = u64_of(r);
                let name = r.opaque("name", 255).expect("entry name").to_vec();
                let cookie = u64_of(r);
                let (attr, fh) = if plus {
                    (post_op_attr(r), post_op_fh(r))
                } else {
                    (None, None)
                };
                entries.push(Entry {
                    fileid,
                    name,
                    cookie,
                    attr,
                    fh,
                });
            }
            let eof = bool_of(r);
            DirPage {
                dir_attr,
                verf,
                entries,
                eof,
                len,
            }
        },
        skip_post_op,
    )
}

impl Rpc {
    pub fn null(&mut self) {
        let body = self.nfs(proc3::NULL, &[]);
        assert!(body.is_empty(), "NULL results: {body:02x?}");
    }

    /// The export's root handle, from MOUNT.
    pub fn root(&mut self) -> Vec<u8> {
        self.mnt(b"/").expect("MNT /").0
    }

    pub fn getattr(&mut self, fh: &[u8]) -> Res<Fattr> {
        let body = self.nfs(proc3::GETATTR, &args::fh(fh));
        results(&body, "GETATTR", fattr, |_| {})
    }

    pub fn setattr(&mut self, fh: &[u8], s: &Sattr) -> Res<Option<Fattr>> {
        let body = self.nfs(proc3::SETATTR, &args::setattr(fh, s));
        results(&body, "SETATTR", |r| wcc(r).1, skip_wcc)
    }

    pub fn lookup(&mut self, dir: &[u8], name: &[u8]) -> Res<(Vec<u8>, Option<Fattr>)> {
        let body = self.nfs(proc3::LOOKUP, &args::dirop(dir, name));
        results(
            &body,
            "LOOKUP",
            |r| {
                let fh = r.opaque("fh", 64).expect("handle").to_vec();
                let a = post_op_attr(r);
                post_op_attr(r);
                (fh, a)
            },
            skip_post_op,
        )
    }

    pub fn access(&mut self, fh: &[u8], mask: u32) -> Res<u32> {
        let body = self.nfs(proc3::ACCESS, &args::access(fh, mask));
        results(
            &body,
            "ACCESS",
            |r| {
                post_op_attr(r);
                u32_of(r)
            },
            skip_post_op,
        )
    }

    pub fn readlink(&mut self, fh: &[u8]) -> Res<Vec<u8>> {
        let body = self.nfs(proc3::READLINK, &args::fh(fh));
        results(
            &body,
            "READLINK",
            |r| {
                post_op_attr(r);
                r.opaque("path", 4096).expect("target").to_vec()
            },
            skip_post_op,
        )
    }

    pub fn read(&mut self, fh: &[u8], offset: u64, count: u32) -> Res<(Vec<u8>, bool)> {
        let body = self.nfs(proc3::READ, &args::read(fh, offset, count));
        parse_read(&body)
    }

    /// Read a whole file in 1 MiB READs.
    pub fn read_all(&mut self, fh: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let (data, eof) = self.read(fh, out.len() as u64, MIB as u32).expect("READ");
            out.extend_from_slice(&data);
            if eof {
                return out;
            }
            assert!(!data.is_empty(), "READ returned nothing before eof");
        }
    }

    pub fn write(&mut self, fh: &[u8], offset: u64, data: &[u8], stable: u32) -> Res<WriteOk> {
        let body = self.nfs(proc3::WRITE, &args::write(fh, offset, data, stable));
        parse_write(&body)
    }

    /// Write a whole buffer FILE_SYNC in 1 MiB WRITEs.
    pub fn write_all(&mut self, fh: &[u8], data: &[u8]) {
        for (i, chunk) in data.chunks(MIB).enumerate() {
            let w = self
                .write(fh, (i * MIB) as u64, chunk, FILE_SYNC)
                .expect("WRITE");
            assert_eq!(w.count as usize, chunk.len());
        }
    }

    fn created(&mut self, procedure: u32, what: &str, a: &[u8]) -> Res<(Vec<u8>, Option<Fattr>)> {
        let body = self.nfs(procedure, a);
        results(
            &body,
            what,
            |r| {
                let fh = post_op_fh(r).unwrap_or_else(|| panic!("{what}: no handle"));
                let attr = post_op_attr(r);
                wcc(r);
                (fh, attr)
            },
            skip_wcc,
        )
    }

    pub fn create(&mut self, dir: &[u8], name: &[u8], how: How) -> Res<(Vec<u8>, Option<Fattr>)> {
        self.created(proc3::CREATE, "CREATE", &args::create(dir, name, how))
    }

    /// CREATE GUARDED with `mode`; the handle.
    pub fn create_file(&mut self, dir: &[u8], name: &[u8], mode: u32) -> Vec<u8> {
        self.create(dir, name, How::Guarded(Sattr::mode(mode)))
            .unwrap_or_else(|s| panic!("CREATE {:?}: status {s}", String::from_utf8_lossy(name)))
            .0
    }

    pub fn mkdir(&mut self, dir: &[u8], name: &[u8], s: &Sattr) -> Res<(Vec<u8>, Option<Fattr>)> {
        self.created(proc3::MKDIR, "MKDIR", &args::mkdir(dir, name, s))
    }

    pub fn mkdir_mode(&mut self, dir: &[u8], name: &[u8], mode: u32) -> Vec<u8> {
        self.mkdir(dir, name, &Sattr::mode(mode))
            .unwrap_or_else(|s| panic!("MKDIR {:?}: status {s}", String::from_utf8_lossy(name)))
            .0
    }

    pub fn symlink(
        &mut self,
        dir: &[u8],
        name: &[u8],
        target: &[u8],
    ) -> Res<(Vec<u8>, Option<Fattr>)> {
        self.created(proc3::SYMLINK, "SYMLINK", &args::symlink(dir, name, target))
    }

    pub fn mknod(&mut self, dir: &[u8], name: &[u8], what: Node3) -> Res<(Vec<u8>, Option<Fattr>)> {
        let a = args::mknod(dir, name, what, &Sattr::mode(0o644));
        self.created(proc3::MKNOD, "MKNOD", &a)
    }

    pub fn remove(&mut self, dir: &[u8], name: &[u8]) -> u32 {
        let body = self.nfs(proc3::REMOVE, &args::dirop(dir, name));
        parse_status_wcc(&body, "REMOVE")
    }

    pub fn rmdir(&mut self, dir: &[u8], name: &[u8]) -> u32 {
        let body = self.nfs(proc3::RMDIR, &args::dirop(dir, name));
        parse_status_wcc(&body, "RMDIR")
    }

    pub fn rename(&mut self, from: &[u8], fname: &[u8], to: &[u8], tname: &[u8]) -> u32 {
        let body = self.nfs(proc3::RENAME, &args::rename(from, fname, to, tname));
        let mut r = XdrReader::new(&body);
        let status = u32_of(&mut r);
        wcc(&mut r);
        wcc(&mut r);
        done(&r, "RENAME");
        status
    }

    pub fn link(&mut self, file: &[u8], dir: &[u8], name: &[u8]) -> Res<Option<Fattr>> {
        let body = self.nfs(proc3::LINK, &args::link(file, dir, name));
        let mut r = XdrReader::new(&body);
        let status = u32_of(&mut r);
        let a = post_op_attr(&mut r);
        wcc(&mut r);
        done(&r, "LINK");
        if status == st::OK {
            Ok(a)
        } else {
            Err(status)
        }
    }

    pub fn readdir(&mut self, dir: &[u8], cookie: u64, verf: [u8; 8], count: u32) -> Res<DirPage> {
        let body = self.nfs(proc3::READDIR, &args::readdir(dir, cookie, verf, count));
        dir_page(&body, false)
    }

    pub fn readdirplus(
        &mut self,
        dir: &[u8],
        cookie: u64,
        verf: [u8; 8],
        dircount: u32,
        maxcount: u32,
    ) -> Res<DirPage> {
        let a = args::readdirplus(dir, cookie, verf, dircount, maxcount);
        let body = self.nfs(proc3::READDIRPLUS, &a);
        dir_page(&body, true)
    }

    /// Every name in a directory ("." and ".." included), by READDIR pages of 64 KiB.
    pub fn list(&mut self, dir: &[u8]) -> Vec<Vec<u8>> {
        let (mut cookie, mut verf, mut out) = (0, [0u8; 8], Vec::new());
        loop {
            let page = self.readdir(dir, cookie, verf, 65536).expect("READDIR");
            for e in &page.entries {
                out.push(e.name.clone());
            }
            if page.eof {
                return out;
            }
            cookie = page.entries.last().expect("a page makes progress").cookie;
            verf = page.verf;
        }
    }

    pub fn fsstat(&mut self, fh: &[u8]) -> Res<Fsstat> {
        let body = self.nfs(proc3::FSSTAT, &args::fh(fh));
        results(
            &body,
            "FSSTAT",
            |r| {
                post_op_attr(r);
                Fsstat {
                    tbytes: u64_of(r),
                    fbytes: u64_of(r),
                    abytes: u64_of(r),
                    tfiles: u64_of(r),
                    ffiles: u64_of(r),
                    afiles: u64_of(r),
                    invarsec: u32_of(r),
                }
            },
            skip_post_op,
        )
    }

    pub fn fsinfo(&mut self, fh: &[u8]) -> Res<Fsinfo> {
        let body = self.nfs(proc3::FSINFO, &args::fh(fh));
        results(
            &body,
            "FSINFO",
            |r| {
                post_op_attr(r);
                Fsinfo {
                    rtmax: u32_of(r),
                    rtpref: u32_of(r),
                    rtmult: u32_of(r),
                    wtmax: u32_of(r),
                    wtpref: u32_of(r),
                    wtmult: u32_of(r),
                    dtpref: u32_of(r),
                    maxfilesize: u64_of(r),
                    time_delta: time_of(r),
                    properties: u32_of(r),
                }
            },
            skip_post_op,
        )
    }

    pub fn pathconf(&mut self, fh: &[u8]) -> Res<Pathconf> {
        let body = self.nfs(proc3::PATHCONF, &args::fh(fh));
        results(
            &body,
            "PATHCONF",
            |r| {
                post_op_attr(r);
                Pathconf {
                    linkmax: u32_of(r),
                    name_max: u32_of(r),
                    no_trunc: bool_of(r),
                    chown_restricted: bool_of(r),
                    case_insensitive: bool_of(r),
                    case_preserving: bool_of(r),
                }
            },
            skip_post_op,
        )
    }

    pub fn commit(&mut self, fh: &[u8]) -> Res<[u8; 8]> {
        let body = self.nfs(proc3::COMMIT, &args::commit(fh, 0, 0));
        results(
            &body,
            "COMMIT",
            |r| {
                wcc(r);
                r.fixed(8).unwrap().try_into().unwrap()
            },
            skip_wcc,
        )
    }

    /// MOUNT MNT: the handle and the auth flavors, or the mountstat3.
    pub fn mnt(&mut self, path: &[u8]) -> Res<(Vec<u8>, Vec<u32>)> {
        let body = self.mount_call(1, &args::mount_path(path));
        results(
            &body,
            "MNT",
            |r| {
                let fh = r.opaque("fh", 64).expect("mount handle").to_vec();
                let n = u32_of(r);
                let flavors = (0..n).map(|_| u32_of(r)).collect();
                (fh, flavors)
            },
            |_| {},
        )
    }

    /// MOUNT EXPORT: (directory, groups) pairs.
    pub fn exports(&mut self) -> Vec<(String, Vec<String>)> {
        let body = self.mount_call(5, &[]);
        let mut r = XdrReader::new(&body);
        let mut out = Vec::new();
        while bool_of(&mut r) {
            let dir = String::from_utf8(r.opaque("dir", 1024).unwrap().to_vec()).unwrap();
            let mut groups = Vec::new();
            while bool_of(&mut r) {
                groups.push(String::from_utf8(r.opaque("group", 255).unwrap().to_vec()).unwrap());
            }
            out.push((dir, groups));
        }
        done(&r, "EXPORT");
        out
    }

    /// PMAPPROC_GETPORT.
    pub fn getport(&mut self, prog: u32, vers: u32, prot: u32) -> u32 {
        match self.call(PORTMAP, 2, 3, &args::getport(prog, vers, prot)) {
            Reply::Success(body) => {
                let mut r = XdrReader::new(&body);
                let port = u32_of(&mut r);
                done(&r, "GETPORT");
                port
            }
            other => panic!("GETPORT: {other:?}"),
        }
    }
}

pub fn parse_read(body: &[u8]) -> Res<(Vec<u8>, bool)> {
    results(
        body,
        "READ",
        |r| {
            post_op_attr(r);
            let count = u32_of(r);
            let eof = bool_of(r);
            let data = r.opaque("data", 2 * MIB).expect("read data").to_vec();
            assert_eq!(count as usize, data.len(), "READ count vs data length");
            (data, eof)
        },
        skip_post_op,
    )
}

pub fn parse_write(body: &[u8]) -> Res<WriteOk> {
    results(
        body,
        "WRITE",
        |r| {
            let after = wcc(r).1;
            WriteOk {
                count: u32_of(r),
                committed: u32_of(r),
                verf: r.fixed(8).unwrap().try_into().unwrap(),
                after,
            }
        },
        skip_wcc,
    )
}

pub fn parse_status_wcc(body: &[u8], what: &str) -> u32 {
    let mut r = XdrReader::new(body);
    let status = u32_of(&mut r);
    wcc(&mut r);
    done(&r, what);
    status
}

/// Deterministic pseudo-random bytes (xorshift64*), different for every `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Shuffle deterministically (Fisher–Yates with xorshift64).
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

/// FNV-1a 64: a checksum for messages.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
