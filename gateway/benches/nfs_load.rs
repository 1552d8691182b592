//! NFSv3 metadata load generator for `scripts/bench-nfs.sh` (issue 5): one TCP connection,
//! a few requests pipelined, the same requests against any NFSv3 server.
//!
//! ```sh
//! cargo bench -p scoutgw --bench nfs_load -- --port 15000 [--mount-port 15000] [--export /]
//!     [--files 10000] [--depth 8] [--size 1024] [--commit] [--readdir-repeat 5]
//!     [--ops create,stat,getattr,readdir] [--dir NAME] [--host 127.0.0.1]
//! ```
//!
//! MOUNT MNT gives the root handle, MKDIR makes a fresh directory (`--dir`, default
//! `nfsload-<pid>-<nanos>`), then the phases run in order:
//! - **create**: per file CREATE (UNCHECKED, mode 0644) then WRITE of `--size` bytes
//!   (UNSTABLE; no WRITE with `--size 0`: the file stays empty), and with `--commit` a COMMIT
//!   of the file (what a kernel client's close does);
//! - **stat**: LOOKUP of every name (a cold `stat`), checking the size in the attributes;
//! - **getattr**: GETATTR of every handle the lookups returned (a warm `stat` revalidation);
//! - **readdir**: READDIRPLUS of the whole directory (64 KiB replies), `--readdir-repeat`
//!   times; the cookie chain makes it one request at a time.
//!
//! Each phase prints `RESULT <phase> <seconds> <ops/s> <ops>` (an op is one file, one
//! listing for readdir) and the mean/p50/p99 round trip of each procedure it sent. Any NFS
//! error, short listing or wrong size is fatal (exit status 1).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use scoutgw::nfs::record::{read_record, write_record};
use scoutgw::nfs::xdr::{XdrReader, XdrWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const NFS_PROG: u32 = 100003;
const MOUNT_PROG: u32 = 100005;
const MAX_RECORD: usize = 4 << 20;

const GETATTR: u32 = 1;
const LOOKUP: u32 = 3;
const WRITE: u32 = 7;
const CREATE: u32 = 8;
const MKDIR: u32 = 9;
const READDIRPLUS: u32 = 17;
const COMMIT: u32 = 21;

fn proc_name(p: u32) -> &'static str {
    match p {
        GETATTR => "GETATTR",
        LOOKUP => "LOOKUP",
        WRITE => "WRITE",
        CREATE => "CREATE",
        MKDIR => "MKDIR",
        READDIRPLUS => "READDIRPLUS",
        COMMIT => "COMMIT",
        _ => "?",
    }
}

struct Opts {
    host: String,
    port: u16,
    mount_port: u16,
    export: String,
    files: usize,
    depth: usize,
    size: usize,
    commit: bool,
    readdir_repeat: usize,
    ops: Vec<String>,
    dir: String,
}

fn parse_opts() -> Res<Opts> {
    let mut o = Opts {
        host: "127.0.0.1".into(),
        port: 0,
        mount_port: 0,
        export: "/".into(),
        files: 10_000,
        depth: 8,
        size: 1024,
        commit: false,
        readdir_repeat: 5,
        ops: vec![
            "create".into(),
            "stat".into(),
            "getattr".into(),
            "readdir".into(),
        ],
        dir: String::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--host" => o.host = val()?,
            "--port" => o.port = val()?.parse()?,
            "--mount-port" => o.mount_port = val()?.parse()?,
            "--export" => o.export = val()?,
            "--files" => o.files = val()?.parse()?,
            "--depth" => o.depth = val()?.parse::<usize>()?.max(1),
            "--size" => o.size = val()?.parse()?,
            "--commit" => o.commit = true,
            "--readdir-repeat" => o.readdir_repeat = val()?.parse()?,
            "--ops" => o.ops = val()?.split(',').map(str::to_string).collect(),
            "--dir" => o.dir = val()?,
            // cargo bench passes --bench to harness = false targets
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if o.port == 0 {
        return Err("--port is required".into());
    }
    if o.mount_port == 0 {
        o.mount_port = o.port;
    }
    if o.dir.is_empty() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        o.dir = format!("nfsload-{}-{nanos}", std::process::id());
    }
    Ok(o)
}

/// One RPC connection with requests in flight, matched to replies by XID.
struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    prog: u32,
    next_xid: u32,
    in_flight: HashMap<u32, (u32, Instant)>,
    /// Round trips per procedure.
    rtt: HashMap<u32, Vec<Duration>>,
}

impl Conn {
    async fn connect(host: &str, port: u16, prog: u32) -> Res<Conn> {
        let s = TcpStream::connect((host, port)).await?;
        s.set_nodelay(true)?;
        let (rd, wr) = s.into_split();
        Ok(Conn {
            rd,
            wr,
            prog,
            next_xid: std::process::id().wrapping_mul(7919),
            in_flight: HashMap::new(),
            rtt: HashMap::new(),
        })
    }

    async fn send(&mut self, procedure: u32, args: &[u8]) -> Res<u32> {
        let xid = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(1);
        let mut w = XdrWriter::new();
        w.u32(xid)
            .u32(0)
            .u32(2)
            .u32(self.prog)
            .u32(3)
            .u32(procedure);
        // AUTH_SYS: stamp, machine name, uid 0, gid 0, no extra gids
        let mut cred = XdrWriter::new();
        cred.u32(0).opaque(b"nfsload").u32(0).u32(0).u32(0);
        w.u32(1).opaque(&cred.buf);
        w.u32(0).u32(0); // AUTH_NONE verifier
        w.fixed(args);
        write_record(&mut self.wr, &w.buf).await?;
        self.in_flight.insert(xid, (procedure, Instant::now()));
        Ok(xid)
    }

    /// The next reply: (xid, procedure, results after the accepted-reply header).
    async fn recv(&mut self) -> Res<(u32, u32, Vec<u8>)> {
        let msg = read_record(&mut self.rd, MAX_RECORD)
            .await?
            .ok_or("server closed the connection")?;
        let mut r = XdrReader::new(&msg);
        let xid = r.u32()?;
        let (procedure, t0) = self
            .in_flight
            .remove(&xid)
            .ok_or(format!("reply with unknown xid {xid}"))?;
        self.rtt.entry(procedure).or_default().push(t0.elapsed());
        if r.u32()? != 1 {
            return Err("not a reply".into());
        }
        if r.u32()? != 0 {
            return Err(format!("{} call denied", proc_name(procedure)).into());
        }
        r.u32()?; // verifier flavor
        r.opaque("verifier", 400)?;
        let accept = r.u32()?;
        if accept != 0 {
            return Err(format!("{} accept_stat {accept}", proc_name(procedure)).into());
        }
        Ok((xid, procedure, r.rest().to_vec()))
    }

    async fn call(&mut self, procedure: u32, args: &[u8]) -> Res<Vec<u8>> {
        let xid = self.send(procedure, args).await?;
        let (rx, _, res) = self.recv().await?;
        if rx != xid {
            return Err("out-of-order reply on an idle connection".into());
        }
        Ok(res)
    }

    fn take_rtt(&mut self) -> HashMap<u32, Vec<Duration>> {
        std::mem::take(&mut self.rtt)
    }
}

fn status(r: &mut XdrReader<'_>, what: &str) -> Res<()> {
    match r.u32()? {
        0 => Ok(()),
        s => Err(format!("{what}: NFS status {s}").into()),
    }
}

/// post_op_attr: the fattr3 if present.
fn post_op_attr<'a>(r: &mut XdrReader<'a>) -> Res<Option<&'a [u8]>> {
    Ok(if r.bool()? { Some(r.fixed(84)?) } else { None })
}

fn skip_wcc(r: &mut XdrReader<'_>) -> Res<()> {
    if r.bool()? {
        r.fixed(24)?;
    }
    post_op_attr(r)?;
    Ok(())
}

fn fattr_size(a: &[u8]) -> u64 {
    u64::from_be_bytes(a[20..28].try_into().unwrap())
}

fn diropargs(dir: &[u8], name: &str) -> XdrWriter {
    let mut w = XdrWriter::new();
    w.opaque(dir).opaque(name.as_bytes());
    w
}

fn sattr_mode(w: &mut XdrWriter, mode: u32) {
    // mode, uid, gid, size, atime, mtime
    w.bool(true)
        .u32(mode)
        .bool(false)
        .bool(false)
        .bool(false)
        .u32(0)
        .u32(0);
}

/// The handle of a CREATE/MKDIR reply (post_op_fh3 must be present).
fn created_fh(res: &[u8], what: &str) -> Res<Vec<u8>> {
    let mut r = XdrReader::new(res);
    status(&mut r, what)?;
    if !r.bool()? {
        return Err(format!("{what}: no handle in the reply").into());
    }
    Ok(r.opaque("fh", 64)?.to_vec())
}

/// Run `n` items through the pipeline: `step(item, stage, previous reply)` gives the next
/// request of an item, or None when the item is done. At most `depth` requests in flight.
async fn pipeline<F>(conn: &mut Conn, n: usize, depth: usize, mut step: F) -> Res<()>
where
    F: FnMut(usize, usize, Option<&[u8]>) -> Res<Option<(u32, Vec<u8>)>>,
{
    let mut who: HashMap<u32, (usize, usize)> = HashMap::new();
    let mut next_item = 0;
    while next_item < n && who.len() < depth {
        if let Some((p, args)) = step(next_item, 0, None)? {
            let xid = conn.send(p, &args).await?;
            who.insert(xid, (next_item, 0));
        }
        next_item += 1;
    }
    while !who.is_empty() {
        let (xid, _, res) = conn.recv().await?;
        let (item, stage) = who.remove(&xid).ok_or("reply for no item")?;
        let mut cur = step(item, stage + 1, Some(&res))?.map(|r| (r, item, stage + 1));
        while cur.is_none() && next_item < n {
            cur = step(next_item, 0, None)?.map(|r| (r, next_item, 0));
            next_item += 1;
        }
        if let Some(((p, args), item, stage)) = cur {
            let xid = conn.send(p, &args).await?;
            who.insert(xid, (item, stage));
        }
    }
    Ok(())
}

fn report(phase: &str, ops: usize, dt: Duration, rtt: HashMap<u32, Vec<Duration>>) {
    let s = dt.as_secs_f64();
    println!("RESULT {phase} {s:.4} {:.1} {ops}", ops as f64 / s);
    let mut procs: Vec<_> = rtt.into_iter().collect();
    procs.sort_by_key(|(p, _)| *p);
    for (p, mut v) in procs {
        v.sort();
        let mean = v.iter().sum::<Duration>() / v.len() as u32;
        let pct = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
        println!(
            "  rtt {phase} {:<11} n={:<6} mean={:>8.1}us p50={:>8.1}us p99={:>8.1}us max={:>8.1}us",
            proc_name(p),
            v.len(),
            mean.as_secs_f64() * 1e6,
            pct(0.5).as_secs_f64() * 1e6,
            pct(0.99).as_secs_f64() * 1e6,
            v[v.len() - 1].as_secs_f64() * 1e6,
        );
    }
}

async fn run(o: Opts) -> Res<()> {
    // MOUNT MNT
    let mut m = Conn::connect(&o.host, o.mount_port, MOUNT_PROG).await?;
    let mut w = XdrWriter::new();
    w.opaque(o.export.as_bytes());
    let res = m.call(1, &w.buf).await?;
    let mut r = XdrReader::new(&res);
    match r.u32()? {
        0 => {}
        s => return Err(format!("MNT {}: mount status {s}", o.export).into()),
    }
    let root = r.opaque("fh", 64)?.to_vec();
    drop(m);

    let mut c = Conn::connect(&o.host, o.port, NFS_PROG).await?;
    let mut w = diropargs(&root, &o.dir);
    sattr_mode(&mut w, 0o755);
    let dir = created_fh(&c.call(MKDIR, &w.buf).await?, "MKDIR")?;
    c.take_rtt();
    println!(
        "nfsload: {}:{} export {} dir {} files {} depth {} size {} commit {}",
        o.host, o.port, o.export, o.dir, o.files, o.depth, o.size, o.commit
    );
    let name = |i: usize| format!("f{i:05}");
    let data = vec![0x5a_u8; o.size];
    let mut handles: Vec<Vec<u8>> = vec![Vec::new(); o.files];

    for op in &o.ops {
        let t0 = Instant::now();
        match op.as_str() {
            "create" => {
                let write = o.size > 0;
                pipeline(&mut c, o.files, o.depth, |i, stage, reply| {
                    // stages: 0 CREATE, 1 WRITE (skipped with --size 0), 2 COMMIT (--commit)
                    let stage = stage + usize::from(!write && stage >= 1);
                    Ok(match stage {
                        0 => {
                            let mut w = diropargs(&dir, &name(i));
                            w.u32(0); // UNCHECKED
                            sattr_mode(&mut w, 0o644);
                            Some((CREATE, w.buf))
                        }
                        1 => {
                            handles[i] = created_fh(reply.unwrap(), "CREATE")?;
                            let mut w = XdrWriter::new();
                            w.opaque(&handles[i]).u64(0).u32(data.len() as u32).u32(0);
                            w.opaque(&data);
                            Some((WRITE, w.buf))
                        }
                        2 => {
                            if write {
                                let mut r = XdrReader::new(reply.unwrap());
                                status(&mut r, "WRITE")?;
                                skip_wcc(&mut r)?;
                                if r.u32()? as usize != data.len() {
                                    return Err("short WRITE".into());
                                }
                            } else {
                                handles[i] = created_fh(reply.unwrap(), "CREATE")?;
                            }
                            if o.commit {
                                let mut w = XdrWriter::new();
                                w.opaque(&handles[i]).u64(0).u32(0);
                                Some((COMMIT, w.buf))
                            } else {
                                None
                            }
                        }
                        _ => {
                            let mut r = XdrReader::new(reply.unwrap());
                            status(&mut r, "COMMIT")?;
                            None
                        }
                    })
                })
                .await?;
                report("create", o.files, t0.elapsed(), c.take_rtt());
            }
            "stat" => {
                pipeline(&mut c, o.files, o.depth, |i, stage, reply| {
                    if stage == 0 {
                        return Ok(Some((LOOKUP, diropargs(&dir, &name(i)).buf)));
                    }
                    let mut r = XdrReader::new(reply.unwrap());
                    status(&mut r, "LOOKUP")?;
                    handles[i] = r.opaque("fh", 64)?.to_vec();
                    let a = post_op_attr(&mut r)?.ok_or("LOOKUP without attributes")?;
                    if o.ops.iter().any(|p| p == "create") && fattr_size(a) != o.size as u64 {
                        return Err(
                            format!("{}: size {} != {}", name(i), fattr_size(a), o.size).into()
                        );
                    }
                    Ok(None)
                })
                .await?;
                report("stat", o.files, t0.elapsed(), c.take_rtt());
            }
            "getattr" => {
                if handles.iter().any(Vec::is_empty) {
                    return Err("getattr needs the handles of create or stat".into());
                }
                pipeline(&mut c, o.files, o.depth, |i, stage, reply| {
                    if stage == 0 {
                        let mut w = XdrWriter::new();
                        w.opaque(&handles[i]);
                        return Ok(Some((GETATTR, w.buf)));
                    }
                    let mut r = XdrReader::new(reply.unwrap());
                    status(&mut r, "GETATTR")?;
                    r.fixed(84)?;
                    Ok(None)
                })
                .await?;
                report("getattr", o.files, t0.elapsed(), c.take_rtt());
            }
            "readdir" => {
                for _ in 0..o.readdir_repeat {
                    let (mut cookie, mut verf, mut seen) = (0u64, [0u8; 8], 0usize);
                    loop {
                        let mut w = XdrWriter::new();
                        w.opaque(&dir)
                            .u64(cookie)
                            .fixed(&verf)
                            .u32(65536)
                            .u32(65536);
                        let res = c.call(READDIRPLUS, &w.buf).await?;
                        let mut r = XdrReader::new(&res);
                        status(&mut r, "READDIRPLUS")?;
                        post_op_attr(&mut r)?;
                        verf.copy_from_slice(r.fixed(8)?);
                        let mut any = false;
                        while r.bool()? {
                            any = true;
                            r.u64()?; // fileid
                            let n = r.opaque("name", 255)?;
                            cookie = r.u64()?;
                            post_op_attr(&mut r)?;
                            if r.bool()? {
                                r.opaque("fh", 64)?;
                            }
                            if n != b"." && n != b".." {
                                seen += 1;
                            }
                        }
                        if r.bool()? {
                            break;
                        }
                        if !any {
                            return Err("READDIRPLUS: no entries and no eof".into());
                        }
                    }
                    let want = if o.ops.iter().any(|p| p == "create") {
                        o.files
                    } else {
                        seen
                    };
                    if seen != want {
                        return Err(format!("readdir saw {seen} entries, want {want}").into());
                    }
                }
                report("readdir", o.readdir_repeat, t0.elapsed(), c.take_rtt());
            }
            other => return Err(format!("unknown op {other}").into()),
        }
    }
    Ok(())
}

fn main() {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("nfs_load: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(o)) {
        eprintln!("nfs_load: {e}");
        std::process::exit(1);
    }
}
