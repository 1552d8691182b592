//! The NFSv3 program (RFC 1813) over the filesystem's [`Fs`] handle: argument decoding,
//! permission checks, the call into `Fs`, and the reply with its attributes.
//!
//! Runs on a blocking thread (`Fs` calls block); one [`Nfs3::call`] per request. Replies use
//! the NFSv3 types of the crate `nfsserve` (`fattr3`, `wcc_data`, ...) serialized through its
//! `XDR` trait; arguments are decoded with our bounded reader, so a hostile length never
//! allocates.

use std::sync::Arc;
use std::time::Duration;

use nfsserve::nfs::{
    fattr3, ftype3, nfs_fh3, nfsstat3, nfstime3, post_op_attr, post_op_fh3, pre_op_attr, specdata3,
    wcc_attr, wcc_data,
};
use nfsserve::xdr::XDR;
use scoutgw_cluster::fs::{
    Attr, FileType, Fs, FsError, NewNode, SetAttr, SetTime, Time, MAX_FILE_SIZE,
};
use scoutgw_metrics::NodeMetrics;

use crate::group_commit::GroupCommit;

use super::export::{
    may_access_data, may_delete, mode_after_write, new_file_perm, permits, setattr_mode, Caller,
    ExportOptions, MAY_EXEC, MAY_READ, MAY_WRITE,
};
use super::handle::{FileHandle, HANDLE_LEN};
use super::status::{handle_status, nfs_status};
use super::xdr::{XdrError, XdrReader, XdrWriter};

pub const NFS_PROGRAM: u32 = 100003;
pub const NFS_V3: u32 = 3;

/// Largest READ and WRITE transfer, advertised in FSINFO (Linux then mounts with 1 MiB).
pub const MAX_IO: u32 = 1 << 20;
/// Largest READDIR reply.
const MAX_DIR_REPLY: u32 = 1 << 20;
/// Longest name or symlink target accepted on the wire (longer names are then refused by
/// the filesystem with NAMETOOLONG rather than as garbage).
const MAX_WIRE_NAME: usize = 8192;
/// The longest a READ of offline data waits for staging before answering JUKEBOX.
const OFFLINE_READ_WAIT: Duration = Duration::from_secs(2);

/// Procedures that change state: their replies are kept in the duplicate-request cache.
pub fn is_non_idempotent(procedure: u32) -> bool {
    matches!(
        procedure,
        proc::SETATTR
            | proc::WRITE
            | proc::CREATE
            | proc::MKDIR
            | proc::SYMLINK
            | proc::MKNOD
            | proc::REMOVE
            | proc::RMDIR
            | proc::RENAME
            | proc::LINK
            | proc::COMMIT
    )
}

/// For procedures that change the namespace or attributes: the bytes of their failure
/// body with every optional attribute absent (a commit failing after the change is
/// reported with it).
fn metadata_fail_body(procedure: u32) -> Option<usize> {
    match procedure {
        // wcc_data with neither pre- nor post-op attributes
        proc::SETATTR
        | proc::CREATE
        | proc::MKDIR
        | proc::SYMLINK
        | proc::MKNOD
        | proc::REMOVE
        | proc::RMDIR => Some(8),
        // two wcc_data
        proc::RENAME => Some(16),
        // post_op_attr + wcc_data
        proc::LINK => Some(12),
        _ => None,
    }
}

/// Procedure numbers.
pub mod proc {
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

/// Why a call got no NFS reply body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcError {
    #[error("arguments could not be decoded: {0}")]
    GarbageArgs(#[from] XdrError),
    #[error("no such procedure")]
    ProcUnavail,
}

const ACCESS3_READ: u32 = 0x01;
const ACCESS3_LOOKUP: u32 = 0x02;
const ACCESS3_MODIFY: u32 = 0x04;
const ACCESS3_EXTEND: u32 = 0x08;
const ACCESS3_DELETE: u32 = 0x10;
const ACCESS3_EXECUTE: u32 = 0x20;

const UNSTABLE: u32 = 0;
const FILE_SYNC: u32 = 2;

/// The NFSv3 service of one node.
pub struct Nfs3 {
    fs: Arc<Fs>,
    fsid: u64,
    export: Arc<ExportOptions>,
    /// The write verifier: one per node boot. Clients resend UNSTABLE writes when it changes.
    write_verf: [u8; 8],
    metrics: Arc<NodeMetrics>,
    /// Durable requests share commits.
    commits: GroupCommit<FsError>,
}

type NfsResult<T> = Result<T, nfsstat3>;

fn put<T: XDR>(w: &mut XdrWriter, v: &T) {
    v.serialize(&mut w.buf)
        .expect("serializing into a Vec never fails");
}

fn nfs_time(t: Time) -> nfstime3 {
    nfstime3 {
        seconds: t.sec.clamp(0, u32::MAX as i64) as u32,
        nseconds: t.nsec,
    }
}

fn ftype(attr: &Attr) -> ftype3 {
    match attr.file_type() {
        Some(FileType::Directory) => ftype3::NF3DIR,
        Some(FileType::Symlink) => ftype3::NF3LNK,
        Some(FileType::CharDevice) => ftype3::NF3CHR,
        Some(FileType::BlockDevice) => ftype3::NF3BLK,
        Some(FileType::Fifo) => ftype3::NF3FIFO,
        Some(FileType::Socket) => ftype3::NF3SOCK,
        _ => ftype3::NF3REG,
    }
}

fn wcc_of(a: &Attr) -> pre_op_attr {
    pre_op_attr::attributes(wcc_attr {
        size: a.size,
        mtime: nfs_time(a.mtime),
        ctime: nfs_time(a.ctime),
    })
}

/// `sattr3`, decoded.
#[derive(Debug, Default, Clone, Copy)]
struct Sattr {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<SetTime>,
    mtime: Option<SetTime>,
}

fn read_time_how(r: &mut XdrReader) -> Result<Option<SetTime>, XdrError> {
    Ok(match r.u32()? {
        0 => None,
        1 => Some(SetTime::Now),
        2 => {
            let sec = r.u32()?;
            let nsec = r.u32()?;
            Some(SetTime::At(Time {
                sec: sec as i64,
                nsec: nsec.min(999_999_999),
            }))
        }
        _ => return Err(XdrError::Invalid("time_how")),
    })
}

fn read_sattr(r: &mut XdrReader) -> Result<Sattr, XdrError> {
    let mode = if r.bool()? { Some(r.u32()?) } else { None };
    let uid = if r.bool()? { Some(r.u32()?) } else { None };
    let gid = if r.bool()? { Some(r.u32()?) } else { None };
    let size = if r.bool()? { Some(r.u64()?) } else { None };
    let atime = read_time_how(r)?;
    let mtime = read_time_how(r)?;
    Ok(Sattr {
        mode,
        uid,
        gid,
        size,
        atime,
        mtime,
    })
}

fn read_name<'a>(r: &mut XdrReader<'a>) -> Result<&'a [u8], XdrError> {
    r.opaque("name", MAX_WIRE_NAME)
}

fn read_fh_bytes<'a>(r: &mut XdrReader<'a>) -> Result<&'a [u8], XdrError> {
    // NFSv3 handles are at most 64 bytes.
    r.opaque("file handle", 64)
}

impl Nfs3 {
    pub fn new(
        fs: Arc<Fs>,
        fsid: u64,
        export: Arc<ExportOptions>,
        write_verf: [u8; 8],
        metrics: Arc<NodeMetrics>,
    ) -> Self {
        Self {
            fs,
            fsid,
            export,
            write_verf,
            metrics,
            commits: GroupCommit::new(),
        }
    }

    /// Make every change so far durable (COMMIT, stable WRITEs, sync exports): a commit
    /// shared with the concurrent requests that need one too. It opens the next
    /// transaction in the same server commit (more requests are likely coming); the node's
    /// periodic commit closes it once the mount is idle (`Fs::sync_and_continue`).
    fn commit_all(&self) -> Result<(), FsError> {
        self.commits.commit(|| {
            let start = std::time::Instant::now();
            let r = self.fs.sync_and_continue();
            self.metrics.commits.inc();
            self.metrics
                .commit_seconds
                .observe(start.elapsed().as_secs_f64());
            r
        })
    }

    /// The handle of the directory `names` below the root (MOUNT), or its MNT3 status.
    pub fn dir_handle(&self, names: &[&[u8]]) -> Result<Vec<u8>, u32> {
        use super::mount::{MNT3ERR_NOENT, MNT3ERR_NOTDIR, MNT3ERR_SERVERFAULT};
        let fail = |e: FsError| match e {
            FsError::NotFound | FsError::NameTooLong | FsError::Invalid(_) => MNT3ERR_NOENT,
            FsError::NotDir => MNT3ERR_NOTDIR,
            _ => MNT3ERR_SERVERFAULT,
        };
        let mut a = self
            .fs
            .getattr(scoutgw_cluster::format::inode::ROOT_INO)
            .map_err(fail)?;
        for name in names {
            if !a.is_dir() {
                return Err(MNT3ERR_NOTDIR);
            }
            a = self.fs.lookup(a.ino, name).map_err(fail)?;
        }
        if !a.is_dir() {
            return Err(MNT3ERR_NOTDIR);
        }
        Ok(self.handle_of(&a).data)
    }

    fn handle_of(&self, a: &Attr) -> nfs_fh3 {
        nfs_fh3 {
            data: FileHandle {
                fsid: self.fsid,
                ino: a.ino,
                generation: a.generation,
            }
            .encode()
            .to_vec(),
        }
    }

    fn fattr(&self, a: &Attr) -> fattr3 {
        fattr3 {
            ftype: ftype(a),
            mode: a.mode & 0o7777,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            used: a.online_blocks.saturating_mul(4096),
            rdev: specdata3 {
                specdata1: (a.rdev >> 32) as u32,
                specdata2: a.rdev as u32,
            },
            fsid: self.fsid,
            fileid: a.ino,
            atime: nfs_time(a.atime),
            mtime: nfs_time(a.mtime),
            ctime: nfs_time(a.ctime),
        }
    }

    fn post_op(&self, a: Option<&Attr>) -> post_op_attr {
        match a {
            Some(a) => post_op_attr::attributes(self.fattr(a)),
            None => post_op_attr::Void,
        }
    }

    /// Current attributes of `ino`, if it can be read (for post-op attributes).
    fn fresh(&self, ino: u64) -> Option<Attr> {
        self.fs.getattr(ino).ok()
    }

    fn wcc(&self, before: Option<&Attr>, after: Option<&Attr>) -> wcc_data {
        wcc_data {
            before: before.map(wcc_of).unwrap_or(pre_op_attr::Void),
            after: self.post_op(after),
        }
    }

    /// The inode a handle names, checked against its generation.
    fn resolve(&self, fh: &[u8]) -> NfsResult<Attr> {
        let h = FileHandle::decode(fh, self.fsid).map_err(handle_status)?;
        self.fs
            .getattr_gen(h.ino, h.generation)
            .map_err(|e| nfs_status(&e))
    }

    fn resolve_dir(&self, fh: &[u8]) -> NfsResult<Attr> {
        let a = self.resolve(fh)?;
        if !a.is_dir() {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        Ok(a)
    }

    fn check_writable_export(&self) -> NfsResult<()> {
        if self.export.read_only {
            Err(nfsstat3::NFS3ERR_ROFS)
        } else {
            Ok(())
        }
    }

    /// Run one NFSv3 procedure; the bytes are the procedure's results (status first).
    pub fn call(&self, procedure: u32, args: &[u8], caller: &Caller) -> Result<Vec<u8>, ProcError> {
        let mut r = XdrReader::new(args);
        let mut w = XdrWriter::new();
        // A change a sync export commits before replying: announced, so that a commit about
        // to start waits for it to be applied and carries it (group commit).
        let change = (self.export.sync && metadata_fail_body(procedure).is_some())
            .then(|| self.commits.begin_change());
        match procedure {
            proc::NULL => {}
            proc::GETATTR => self.getattr(&mut r, &mut w)?,
            proc::SETATTR => self.setattr(&mut r, &mut w, caller)?,
            proc::LOOKUP => self.lookup(&mut r, &mut w, caller)?,
            proc::ACCESS => self.access(&mut r, &mut w, caller)?,
            proc::READLINK => self.readlink(&mut r, &mut w)?,
            proc::READ => self.read(&mut r, &mut w, caller)?,
            proc::WRITE => self.write(&mut r, &mut w, caller)?,
            proc::CREATE => self.create(&mut r, &mut w, caller)?,
            proc::MKDIR => self.mkdir(&mut r, &mut w, caller)?,
            proc::SYMLINK => self.symlink(&mut r, &mut w, caller)?,
            proc::MKNOD => self.mknod(&mut r, &mut w, caller)?,
            proc::REMOVE => self.remove(&mut r, &mut w, caller, false)?,
            proc::RMDIR => self.remove(&mut r, &mut w, caller, true)?,
            proc::RENAME => self.rename(&mut r, &mut w, caller)?,
            proc::LINK => self.link(&mut r, &mut w, caller)?,
            proc::READDIR => self.readdir(&mut r, &mut w, caller, false)?,
            proc::READDIRPLUS => self.readdir(&mut r, &mut w, caller, true)?,
            proc::FSSTAT => self.fsstat(&mut r, &mut w)?,
            proc::FSINFO => self.fsinfo(&mut r, &mut w)?,
            proc::PATHCONF => self.pathconf(&mut r, &mut w)?,
            proc::COMMIT => self.commit(&mut r, &mut w)?,
            _ => return Err(ProcError::ProcUnavail),
        }
        drop(change);
        if self.export.sync && w.buf.starts_with(&[0; 4]) {
            if let Some(fail_body) = metadata_fail_body(procedure) {
                if let Err(e) = self.commit_all() {
                    tracing::error!(
                        "nfs: commit before replying to procedure {procedure} failed: {e}"
                    );
                    let mut f = XdrWriter::new();
                    f.u32(nfs_status(&e) as u32).fixed(&vec![0u8; fail_body]);
                    return Ok(f.buf);
                }
            }
        }
        Ok(w.buf)
    }

    fn getattr(&self, r: &mut XdrReader, w: &mut XdrWriter) -> Result<(), XdrError> {
        let fh = read_fh_bytes(r)?;
        match self.resolve(fh) {
            Ok(a) => {
                w.u32(0);
                put(w, &self.fattr(&a));
            }
            Err(st) => {
                w.u32(st as u32);
            }
        }
        Ok(())
    }

    fn setattr(&self, r: &mut XdrReader, w: &mut XdrWriter, c: &Caller) -> Result<(), XdrError> {
        let fh = read_fh_bytes(r)?;
        let s = read_sattr(r)?;
        let guard = if r.bool()? {
            Some((r.u32()?, r.u32()?))
        } else {
            None
        };
        let mut before = None;
        let res = (|| {
            let a = self.resolve(fh)?;
            before = Some(a);
            if let Some((sec, nsec)) = guard {
                let ct = nfs_time(a.ctime);
                if ct.seconds != sec || ct.nseconds != nsec {
                    return Err(nfsstat3::NFS3ERR_NOT_SYNC);
                }
            }
            self.check_writable_export()?;
            self.check_setattr(&a, &s, c)?;
            let set = SetAttr {
                mode: setattr_mode(&a, s.mode, (s.uid, s.gid), s.size, c),
                uid: s.uid,
                gid: s.gid,
                size: s.size,
                atime: s.atime,
                mtime: s.mtime,
            };
            if set == SetAttr::default() {
                return Ok(a);
            }
            if set.size.is_some() && a.is_dir() {
                return Err(nfsstat3::NFS3ERR_ISDIR);
            }
            self.fs.setattr(a.ino, &set).map_err(|e| nfs_status(&e))
        })();
        let after = match &res {
            Ok(a) => Some(*a),
            Err(_) => before.and_then(|b| self.fresh(b.ino)),
        };
        w.u32(res.err().map_or(0, |s| s as u32));
        put(w, &self.wcc(before.as_ref(), after.as_ref()));
        Ok(())
    }

    /// Who may change what (chmod/chown/utimes/truncate rules of POSIX).
    fn check_setattr(&self, a: &Attr, s: &Sattr, c: &Caller) -> NfsResult<()> {
        let owner = c.uid == 0 || c.uid == a.uid;
        if s.size.is_some() && !may_access_data(a, c, MAY_WRITE) {
            return Err(nfsstat3::NFS3ERR_ACCES);
        }
        if s.mode.is_some() && !owner {
            return Err(nfsstat3::NFS3ERR_PERM);
        }
        // As Linux's chown: without privilege, only the owner may name the owner (itself)
        // or a group (the file's, or one of its own), even one the file has already.
        if let Some(uid) = s.uid {
            if c.uid != 0 && !(c.uid == a.uid && uid == a.uid) {
                return Err(nfsstat3::NFS3ERR_PERM);
            }
        }
        if let Some(gid) = s.gid {
            if c.uid != 0 && !(c.uid == a.uid && (gid == a.gid || c.in_group(gid))) {
                return Err(nfsstat3::NFS3ERR_PERM);
            }
        }
        for t in [s.atime, s.mtime].into_iter().flatten() {
            match t {
                SetTime::At(_) if !owner => return Err(nfsstat3::NFS3ERR_PERM),
                SetTime::Now if !owner && !permits(a, c, MAY_WRITE) => {
                    return Err(nfsstat3::NFS3ERR_ACCES)
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn lookup(&self, r: &mut XdrReader, w: &mut XdrWriter, c: &Caller) -> Result<(), XdrError> {
        let dir_fh = read_fh_bytes(r)?;
        let name = read_name(r)?;
        let mut dir = None;
        let res = (|| {
            let d = self.resolve_dir(dir_fh)?;
            dir = Some(d);
            if !permits(&d, c, MAY_EXEC) {
                return Err(nfsstat3::NFS3ERR_ACCES);
            }
            self.fs.lookup(d.ino, name).map_err(|e| nfs_status(&e))
        })();
        match res {
            Ok(a) => {
                w.u32(0);
                put(w, &self.handle_of(&a));
                put(w, &self.post_op(Some(&a)));
                put(w, &self.post_op(dir.as_ref()));
            }
            Err(st) => {
                w.u32(st as u32);
                put(w, &self.post_op(dir.as_ref()));
            }
        }
        Ok(())
    }

    fn access(&self, r: &mut XdrReader, w: &mut XdrWriter, c: &Caller) -> Result<(), XdrError> {
        let fh = read_fh_bytes(r)?;
        let want = r.u32()?;
        match self.resolve(fh) {
            Ok(a) => {
                let mut granted = 0;
                if want & ACCESS3_READ != 0 && permits(&a, c, MAY_READ) {
                    granted |= ACCESS3_READ;
                }
                if a.is_dir() {
                    if want & ACCESS3_LOOKUP != 0 && permits(&a, c, MAY_EXEC) {
                        granted |= ACCESS3_LOOKUP;
                    }
                    if permits(&a, c, MAY_WRITE | MAY_EXEC) {
                        granted |= want & (ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE);
                    }
                } else {
                    if permits(&a, c, MAY_WRITE) {
                        granted |= want & (ACCESS3_MODIFY | ACCESS3_EXTEND);
                    }
                    if want & ACCESS3_EXECUTE != 0 && permits(&a, c, MAY_EXEC) {
                        granted |= ACCESS3_EXECUTE;
                    }
                }
                if self.export.read_only {
                    granted &= !(ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE);
                }
                w.u32(0);
                put(w, &self.post_op(Some(&a)));
                w.u32(granted);
            }
            Err(st) => {
                w.u32(st as u32);
                put(w, &post_op_attr::Void);
            }
        }
        Ok(())
    }

    fn readlink(&self, r: &mut XdrReader, w: &mut XdrWriter) -> Result<(), XdrError> {
        let fh = read_fh_bytes(r)?;
        let mut attr = None;
        let res = (|| {
            let a = self.resolve(fh)?;
            attr = Some(a);
            if a.file_type() != Some(FileType::Symlink) {
                return Err(nfsstat3::NFS3ERR_INVAL);
            }
            self.fs.readlink(a.ino).map_err(|e| nfs_status(&e))
        })();
        w.u32(res.as_ref().err().map_or(0, |s| *s as u32));
        put(w, &self.post_op(attr.as_ref()));
        if let Ok(target) = res {
            w.opaque(&target);
        }
        Ok(())
    }

    fn read(&self, r: &mut XdrReader, w: &mut XdrWriter, c: &Caller) -> Result<(), XdrError> {
        let fh = read_fh_bytes(r)?;
        let offset = r.u64()?;
        let count = r.u32()?.min(MAX_IO);
        let mut attr = None;
        let res = (|| {
            let a = self.resolve(fh)?;
            attr = Some(a);
            match a.file_type() {
                Some(FileType::Regular) => {}
                Some(FileType::Directory) => return Err(nfsstat3::NFS3ERR_ISDIR),
                _ => return Err(nfsstat3::NFS3ERR_INVAL),
            }
            if !may_access_data(&a, c, MAY_READ) {
                return Err(nfsstat3::NFS3ERR_ACCES);
            }
            if offset >= a.size || count == 0 {
                return Ok(Vec::new());
            }
            self.fs
                .read_wait(a.ino, offset, count as usize, OFFLINE_READ_WAIT)
                .map_err(|e| nfs_status(&e))
        })();
        match res {
            Ok(data) => {
                self.metrics.nfs_read_bytes.inc_by(data.len() as u64);
                let size = attr.map_or(0, |a| a.size);
                let eof = offset.saturating_add(data.len() as u64) >= size;
                w.u32(0);
                put(w, &self.post_op(attr.as_ref()));
                w.u32(data.len() as u32).bool(eof).opaque(&data);
            }
            Err(st) => {
                w.u32(st as u32);
                put(w, &self.post_op(attr.as_ref()));
            }
        }
        Ok(())
    }

    fn write(&self, r: &mut XdrReader, w: &mut XdrWriter, c: &Caller) -> Result<(), XdrError> {
        let fh = read_fh_bytes(r)?;
        let offset = r.u64()?;
        let count = r.u32()?;
        let stable = r.u32()?;
        let data = r.opaque("write data", MAX_IO as usize)?;
        let data = &data[..data.len().min(count as usize)];
        let mut before = None;
        let res = (|| {
            let a = self.resolve(fh)?;
            before = Some(a);
            self.check_writable_export()?;
            match a.file_type() {
                Some(FileType::Regular) => {}
                Some(FileType::Directory) => return Err(nfsstat3::NFS3ERR_ISDIR),
                _ => return Err(nfsstat3::NFS3ERR_INVAL),
            }
            if !may_access_data(&a, c, MAY_WRITE) {
                return Err(nfsstat3::NFS3ERR_ACCES);
            }
            if offset.saturating_add(data.len() as u64) > MAX_FILE_SIZE {
                return Err(nfsstat3::NFS3ERR_FBIG);
            }
            if let Some(mode) = mode_after_write(&a, c) {
                let clear = SetAttr {
                    mode: Some(mode),
                    ..SetAttr::default()
                };
                self.fs.setattr(a.ino, &clear).map_err(|e| nfs_status(&e))?;
            }
            let after = self
                .fs
                .write(a.ino, offset, data)
                .map_err(|e| nfs_status(&e))?;
            self.metrics.nfs_write_bytes.inc_by(data.len() as u64);
            if stable != UNSTABLE {
                self.commit_all().map_err(|e| nfs_status(&e))?;
            }
            Ok(after)
        })();
        match res {
            Ok(after) => {
                w.u32(0);
                put(w, &self.wcc(before.as_ref(), Some(&after)));
                let committed = if stable == UNSTABLE {
                    UNSTABLE
                } else {
                    FILE_SYNC
                };
                w.u32(data.len() as u32)
                    .u32(committed)
                    .fixed(&self.write_verf);
            }
            Err(st) => {
                let after = before.and_then(|b| self.fresh(b.ino));
                w.u32(st as u32);
                put(w, &self.wcc(before.as_ref(), after.as_ref()));
            }
        }
        Ok(())
    }

    /// The owner of a new node: the caller; the group is the directory's when it has the
    /// set-group-ID bit (BSD semantics), the caller's otherwise.
    fn new_owner(dir: &Attr, c: &Caller) -> (u32, u32) {
        let gid = if dir.mode & 0o2000 != 0 {
            dir.gid
        } else {
            c.gid
        };
        (c.uid, gid)
    }

    /// Checks shared by every procedure that adds a name to a directory.
    fn check_add(&self, d: &Attr, c: &Caller) -> NfsResult<()> {
        self.check_writable_export()?;
        if !permits(d, c, MAY_WRITE | MAY_EXEC) {
            return Err(nfsstat3::NFS3ERR_ACCES);
        }
        Ok(())
    }

    /// Apply the attributes a creating call asked for beyond mode (owner for root callers,
    /// size, times) to a node just made.
    fn apply_create_attrs(&self, a: Attr, s: &Sattr, c: &Caller) -> NfsResult<Attr> {
        let set = SetAttr {
            mode: None,
            uid: s.uid.filter(|u| c.uid == 0 && *u != a.uid),
            gid: s
                .gid
                .filter(|g| (c.uid == 0 || c.in_group(*g)) && *g != a.gid),
            size: s.size.filter(|sz| *sz != a.size),
            atime: s.atime,
            mtime: s.mtime,
        };
        if set == SetAttr::default() {
            return Ok(a);
        }
        self.fs.setattr(a.ino, &set).map_err(|e| nfs_status(&e))
    }

    /// The reply of CREATE, MKDIR, SYMLINK and MKNOD.
    fn created_reply(&self, w: &mut XdrWriter, res: NfsResult<Attr>, dir_before: Option<&Attr>) {
        let dir_after = dir_before.and_then(|d| self.fresh(d.ino));
        match res {
            Ok(a) => {
                w.u32(0);
                put(w, &post_op_fh3::handle(self.handle_of(&a)));
                put(w, &self.post_op(Some(&a)));
            }
            Err(st) => {
                w.u32(st as u32);
            }
        }
        put(w, &self.wcc(dir_before, dir_after.as_ref()));
    }

    /// The shared path of CREATE, MKDIR and SYMLINK: resolve the directory, check the
    /// caller may add to it, let `make` create the node owned by (uid, gid), and reply.
    fn add_node(
        &self,
        w: &mut XdrWriter,
        dir_fh: &[u8],
        c: &Caller,
        make: impl FnOnce(&Attr, u32, u32) -> NfsResult<Attr>,
    ) {
        let mut dir = None;
        let res = (|| {
            let d = self.resolve_dir(dir_fh)?;
            dir = Some(d);
            self.check_add(&d, c)?;
            let (uid, gid) = Self::new_owner(&d, c);
            make(&d, uid, gid)
        })();
        self.created_reply(w, res, dir.as_ref());
    }

    fn create(&self, r: &mut XdrReader, w: &mut XdrWriter, c: &Caller) -> Result<(), XdrError> {
        let dir_fh = read_fh_bytes(r)?;
        let name = read_name(r)?;
        let how = r.u32()?;
        let (sattr, verf) = match how {
            0 | 1 => (read_sattr(r)?, None),
            2 => {
                let v = r.fixed(8)?;
                let v0 = u32::from_be_bytes(v[..4].try_into().expect("4 bytes"));
                let v1 = u32::from_be_bytes(v[4..].try_into().expect("4 bytes"));
                (Sattr::default(), Some((v0, v1)))
            }
            _ => return Err(XdrError::Invalid("createmode3")),
        };
        self.add_node(w, dir_fh, c, |d, uid, gid| {
            let node = NewNode {
                kind: FileType::Regular,
                perm: new_file_perm(d, sattr.mode.unwrap_or(0o644), gid, c),
                uid,
                gid,
                rdev: 0,
            };
            match (how, verf) {
                // EXCLUSIVE: the verifier is kept in atime/mtime seconds until the client's
                // SETATTR, so a retransmitted create finds its own file and succeeds.
                (2, Some((v0, v1))) => match self.fs.create(d.ino, name, &node, true) {
                    Ok(a) => {
                        let set = SetAttr {
                            atime: Some(SetTime::At(Time {
                                sec: v0 as i64,
                                nsec: 0,
                            })),
                            mtime: Some(SetTime::At(Time {
                                sec: v1 as i64,
                                nsec: 0,
                            })),
                            ..SetAttr::default()
                        };
                        self.fs.setattr(a.ino, &set).map_err(|e| nfs_status(&e))
                    }
                    Err(FsError::Exists) => {
                        let a = self.fs.lookup(d.ino, name).map_err(|e| nfs_status(&e))?;
                        if a.file_type() == Some(FileType::Regular)
                            && a.atime.sec == v0 as i64
                            && a.mtime.sec == v1 as i64
                        {
                            Ok(a)
                        } else {
                            Err(nfsstat3::NFS3ERR_EXIST)
                        }
                    }
                    Err(e) => Err(nfs_status(&e)),
                },
                _ => {
                    let guarded = how == 1;
                    let a = self
                        .fs
                        .create(d.ino, name, &node, guarded)
                        .map_err(|e| nfs_status(&e))?;
                    // UNCHECKED on an existing file: it is opened with O_TRUNC, say; the
                    // size change needs write permission on that file.
                    if a.uid != uid && sattr.size.is_some() && !may_access_data(&a, c, MAY_WRITE) {
                        return Err(nfsstat3::NFS3ERR_ACCES);
                    }
                    self.apply_create_attrs(a, &sattr, c)
                }
            }
        });
        Ok(())
    }

    fn mkdir(&self, r: &mut XdrReader, w: &mut XdrWriter, c: &Caller) -> Result<(), XdrError> {
        let dir_fh = read_fh_bytes(r)?;
        let name = read_name(r)?;
        let sattr = read_sattr(r)?;
        self.add_node(w, dir_fh, c, |d, uid, gid| {
            // Subdirectories of a set-group-ID directory inherit the bit.
            let perm = sattr.mode.unwrap_or(0o755) & 0o7777 | (d.mode & 0o2000);
            let a = self
                .fs
                .mkdir(d.ino, name, perm, uid, gid)
                .map_err(|e| nfs_status(&e))?;
            self.apply_create_attrs(
                a,
                &Sattr {
                    size: None,
                    ..sattr
                },
                c,
            )
        });
        Ok(())
    }

    fn symlink(&self, r: &mut XdrReader, w: &mut XdrWriter, c: &Caller) -> Result<(), XdrError> {
        let dir_fh = read_fh_bytes(r)?;
        let name = read_name(r)?;
        let sattr = read_sattr(r)?;
        let target = r.opaque("symlink target", MAX_WIRE_NAME)?;
        self.add_node(w, dir_fh, c, |d, uid, gid| {
            let a = self
                .fs
                .symlink(d.ino, name, target, uid, gid)
                .map_err(|e| nfs_status(&e))?;
            let rest = Sattr {
                size: None,
                mode: None,
                ..sattr
            };
            self.apply_create_attrs(a, &rest, c)
        });
        Ok(())
    }

    fn mknod(&self, r: &mut XdrReader, w: &mut XdrWriter, c: &Caller) -> Result<(), XdrError> {
        let dir_fh = read_fh_bytes(r)?;
        let name = read_name(r)?;
        let t = r.u32()?;
        let (kind, sattr, rdev) = match t {
            3 | 4 => {
                let s = read_sattr(r)?;
                let major = r.u32()?;
                let minor = r.u32()?;
                let kind = if t == 3 {
                    FileType::BlockDevice
                } else {
                    FileType::CharDevice
                };
                (Some(kind), s, ((major as u64) << 32) | minor as u64)
            }
            6 => (Some(FileType::Socket), read_sattr(r)?, 0),
            7 => (Some(FileType::Fifo), read_sattr(r)?, 0),
            1 | 2 | 5 => (None, Sattr::default(), 0),
            _ => return Err(XdrError::Invalid("ftype3")),
        };
        let mut dir = None;
        let res = (|| {
            let d = self.resolve_dir(dir_fh)?;
            dir = Some(d);
            let kind = kind.ok_or(nfsstat3::NFS3ERR_BADTYPE)?;
            self.check_add(&d, c)?;
            if matches!(kind, FileType::BlockDevice | FileType::CharDevice) && c.uid != 0 {
                return Err(nfsstat3::NFS3ERR_PERM);
            }
            let (uid, gid) = Self::new_owner(&d, c);
            let node = NewNode {
                kind,
                perm: new_file_perm(&d, sattr.mode.unwrap_or(0o644), gid, c),
                uid,
                gid,
                rdev,
            };
            let a = self
                .fs
                .create(d.ino, name, &node, true)
                .map_err(|e| nfs_status(&e))?;
            self.apply_create_attrs(
                a,
                &Sattr {
                    size: None,
                    ..sattr
                },
                c,
            )
        })();
        self.created_reply(w, res, dir.as_ref());
        Ok(())
    }

    /// May `c` remove `name` from `d`? Looks the victim up only when the sticky bit needs it.
    fn check_delete(&self, d: &Attr, name: &[u8], c: &Caller) -> NfsResult<()> {
        if !permits(d, c, MAY_WRITE | MAY_EXEC) {
            return Err(nfsstat3::NFS3ERR_ACCES);
        }
        if d.mode & 0o1000 != 0 && c.uid != 0 {
            let victim = self.fs.lookup(d.ino, name).map_err(|e| nfs_status(&e))?;
            if !may_delete(d, &victim, c) {
                return Err(nfsstat3::NFS3ERR_ACCES);
            }
        }
        Ok(())
    }

    fn remove(
        &self,
        r: &mut XdrReader,
        w: &mut XdrWriter,
        c: &Caller,
        rmdir: bool,
    ) -> Result<(), XdrError> {
        let dir_fh = read_fh_bytes(r)?;
        let name = read_name(r)?;
        let mut dir = None;
        let res = (|| {
            let d = self.resolve_dir(dir_fh)?;
            dir = Some(d);
            self.check_writable_export()?;
            if name == b"." || name == b".." {
                return Err(if rmdir {
                    nfsstat3::NFS3ERR_INVAL
                } else {
                    nfsstat3::NFS3ERR_ISDIR
                });
            }
            self.check_delete(&d, name, c)?;
            let out = if rmdir {
                self.fs.rmdir(d.ino, name)
            } else {
                self.fs.unlink(d.ino, name)
            };
            out.map_err(|e| nfs_status(&e))
        })();
        let after = dir.and_then(|d| self.fresh(d.ino));
        w.u32(res.err().map_or(0, |s| s as u32));
        put(w, &self.wcc(dir.as_ref(), after.as_ref()));
        Ok(())
    }

    fn rename(&self, r: &mut XdrReader, w: &mut XdrWriter, c: &Caller) -> Result<(), XdrError> {
        let from_fh = read_fh_bytes(r)?;
        let from_name = read_name(r)?;
        let to_fh = read_fh_bytes(r)?;
        let to_name = read_name(r)?;
        let (mut from, mut to) = (None, None);
        let res = (|| {
            let fd = self.resolve_dir(from_fh)?;
            from = Some(fd);
            let td = self.resolve_dir(to_fh)?;
            to = Some(td);
            self.check_writable_export()?;
            for n in [from_name, to_name] {
                if n == b"." || n == b".." {
                    return Err(nfsstat3::NFS3ERR_INVAL);
                }
            }
            self.check_delete(&fd, from_name, c)?;
            if !permits(&td, c, MAY_WRITE | MAY_EXEC) {
                return Err(nfsstat3::NFS3ERR_ACCES);
            }
            if fd.ino != td.ino {
                // A directory moved to another parent has its ".." rewritten: as Linux,
                // that needs write permission on the directory itself.
                match self.fs.lookup(fd.ino, from_name) {
                    Ok(src) if src.is_dir() && !permits(&src, c, MAY_WRITE) => {
                        return Err(nfsstat3::NFS3ERR_ACCES)
                    }
                    _ => {}
                }
            }
            if td.mode & 0o1000 != 0 && c.uid != 0 {
                // Replacing a target in a sticky directory needs the right to delete it.
                match self.fs.lookup(td.ino, to_name) {
                    Ok(victim) if !may_delete(&td, &victim, c) => {
                        return Err(nfsstat3::NFS3ERR_ACCES)
                    }
                    _ => {}
                }
            }
            self.fs
                .rename(fd.ino, from_name, td.ino, to_name)
                .map_err(|e| nfs_status(&e))
        })();
        let from_after = from.and_then(|d| self.fresh(d.ino));
        let to_after = to.and_then(|d| self.fresh(d.ino));
        w.u32(res.err().map_or(0, |s| s as u32));
        put(w, &self.wcc(from.as_ref(), from_after.as_ref()));
        put(w, &self.wcc(to.as_ref(), to_after.as_ref()));
        Ok(())
    }

    fn link(&self, r: &mut XdrReader, w: &mut XdrWriter, c: &Caller) -> Result<(), XdrError> {
        let file_fh = read_fh_bytes(r)?;
        let dir_fh = read_fh_bytes(r)?;
        let name = read_name(r)?;
        let (mut file, mut dir) = (None, None);
        let res = (|| {
            let f = self.resolve(file_fh)?;
            file = Some(f);
            let d = self.resolve_dir(dir_fh)?;
            dir = Some(d);
            self.check_add(&d, c)?;
            if f.is_dir() {
                return Err(nfsstat3::NFS3ERR_ISDIR);
            }
            self.fs.link(f.ino, d.ino, name).map_err(|e| nfs_status(&e))
        })();
        let file_after = match &res {
            Ok(a) => Some(*a),
            Err(_) => file.and_then(|f| self.fresh(f.ino)),
        };
        let dir_after = dir.and_then(|d| self.fresh(d.ino));
        w.u32(res.err().map_or(0, |s| s as u32));
        put(w, &self.post_op(file_after.as_ref()));
        put(w, &self.wcc(dir.as_ref(), dir_after.as_ref()));
        Ok(())
    }

    fn readdir(
        &self,
        r: &mut XdrReader,
        w: &mut XdrWriter,
        c: &Caller,
        plus: bool,
    ) -> Result<(), XdrError> {
        let fh = read_fh_bytes(r)?;
        let cookie = r.u64()?;
        // Cookies are entry positions that never change, so any verifier is accepted.
        let _verf = r.fixed(8)?;
        let (dircount, maxcount) = if plus {
            let d = r.u32()?;
            (d, r.u32()?)
        } else {
            let n = r.u32()?;
            (n, n)
        };
        let maxcount = maxcount.min(MAX_DIR_REPLY) as usize;
        let dircount = (dircount as usize).min(maxcount);
        let mut dir = None;
        let res = (|| {
            let d = self.resolve_dir(fh)?;
            dir = Some(d);
            if !permits(&d, c, MAY_READ) {
                return Err(nfsstat3::NFS3ERR_ACCES);
            }
            // The smallest entry takes 24 bytes of dircount, and of maxcount with READDIRPLUS
            // its attributes (4 + 84) and handle (4 + 4 + HANDLE_LEN) on top: read no more
            // entries than can fit, or every call of a long listing reads (and throws away)
            // several replies' worth.
            let min_entry = if plus { 24 + 88 + 8 + HANDLE_LEN } else { 24 };
            let want = (dircount / 24).min(maxcount / min_entry).clamp(1, 8192);
            let page = self
                .fs
                .readdir(d.ino, cookie, want)
                .map_err(|e| nfs_status(&e))?;
            Ok((d, page))
        })();
        let (d, page) = match res {
            Ok(v) => v,
            Err(st) => {
                w.u32(st as u32);
                put(w, &self.post_op(dir.as_ref()));
                return Ok(());
            }
        };
        w.u32(0);
        put(w, &self.post_op(Some(&d)));
        w.fixed(&[0u8; 8]);
        // "." and ".." take cookies 1 and 2; entry positions start at 3.
        let mut list: Vec<(Vec<u8>, u64, u64)> = Vec::new();
        if cookie == 0 {
            list.push((b".".to_vec(), d.ino, 1));
        }
        if cookie <= 1 {
            let parent = self.fs.lookup(d.ino, b"..").map(|p| p.ino).unwrap_or(d.ino);
            list.push((b"..".to_vec(), parent, 2));
        }
        list.extend(
            page.entries
                .iter()
                .map(|e| (e.name.clone(), e.ino, e.cookie)),
        );
        let mut used_dir = 0usize;
        let mut wrote = 0usize;
        let mut all = true;
        for (name, ino, ck) in &list {
            let dir_bytes = 8 + 4 + name.len().next_multiple_of(4) + 8;
            let mut entry = XdrWriter::new();
            entry.bool(true).u64(*ino).opaque(name).u64(*ck);
            if plus {
                let a = if name == b"." {
                    Some(d)
                } else {
                    self.fs.getattr(*ino).ok()
                };
                put(&mut entry, &self.post_op(a.as_ref()));
                match a {
                    Some(a) => put(&mut entry, &post_op_fh3::handle(self.handle_of(&a))),
                    None => put(&mut entry, &post_op_fh3::Void),
                }
            }
            // Room for the closing "no more entries" and eof words.
            if used_dir + dir_bytes > dircount || w.buf.len() + entry.buf.len() + 8 > maxcount {
                all = false;
                break;
            }
            used_dir += dir_bytes;
            wrote += 1;
            w.buf.extend_from_slice(&entry.buf);
        }
        if wrote == 0 && !all {
            // Not even one entry fits the client's buffer.
            let mut e = XdrWriter::new();
            e.u32(nfsstat3::NFS3ERR_TOOSMALL as u32);
            put(&mut e, &self.post_op(Some(&d)));
            *w = e;
            return Ok(());
        }
        w.bool(false).bool(all && page.eof);
        Ok(())
    }

    fn fsstat(&self, r: &mut XdrReader, w: &mut XdrWriter) -> Result<(), XdrError> {
        let fh = read_fh_bytes(r)?;
        let res = self
            .resolve(fh)
            .and_then(|a| Ok((a, self.fs.statfs().map_err(|e| nfs_status(&e))?)));
        match res {
            Ok((a, s)) => {
                let bs = s.block_size as u64;
                w.u32(0);
                put(w, &self.post_op(Some(&a)));
                w.u64(s.total_blocks * bs)
                    .u64(s.free_blocks * bs)
                    .u64(s.free_blocks * bs)
                    .u64(s.total_inodes)
                    .u64(s.free_inodes)
                    .u64(s.free_inodes)
                    .u32(0);
            }
            Err(st) => {
                w.u32(st as u32);
                put(w, &post_op_attr::Void);
            }
        }
        Ok(())
    }

    fn fsinfo(&self, r: &mut XdrReader, w: &mut XdrWriter) -> Result<(), XdrError> {
        let fh = read_fh_bytes(r)?;
        match self.resolve(fh) {
            Ok(a) => {
                w.u32(0);
                put(w, &self.post_op(Some(&a)));
                // rtmax, rtpref, rtmult, wtmax, wtpref, wtmult, dtpref
                w.u32(MAX_IO).u32(MAX_IO).u32(4096);
                w.u32(MAX_IO).u32(MAX_IO).u32(4096);
                w.u32(MAX_IO.min(64 * 1024));
                w.u64(MAX_FILE_SIZE);
                put(
                    w,
                    &nfstime3 {
                        seconds: 0,
                        nseconds: 1,
                    },
                );
                // FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME
                w.u32(0x1 | 0x2 | 0x8 | 0x10);
            }
            Err(st) => {
                w.u32(st as u32);
                put(w, &post_op_attr::Void);
            }
        }
        Ok(())
    }

    fn pathconf(&self, r: &mut XdrReader, w: &mut XdrWriter) -> Result<(), XdrError> {
        let fh = read_fh_bytes(r)?;
        match self.resolve(fh) {
            Ok(a) => {
                w.u32(0);
                put(w, &self.post_op(Some(&a)));
                // linkmax, name_max, no_trunc, chown_restricted, case_insensitive,
                // case_preserving
                w.u32(i32::MAX as u32)
                    .u32(scoutgw_cluster::format::inode::NAME_MAX as u32)
                    .bool(true)
                    .bool(true)
                    .bool(false)
                    .bool(true);
            }
            Err(st) => {
                w.u32(st as u32);
                put(w, &post_op_attr::Void);
            }
        }
        Ok(())
    }

    fn commit(&self, r: &mut XdrReader, w: &mut XdrWriter) -> Result<(), XdrError> {
        let fh = read_fh_bytes(r)?;
        let _offset = r.u64()?;
        let _count = r.u32()?;
        let mut before = None;
        let res = (|| {
            let a = self.resolve(fh)?;
            before = Some(a);
            // The whole transaction commits: every UNSTABLE write so far becomes durable.
            self.commit_all().map_err(|e| nfs_status(&e))
        })();
        let after = before.and_then(|b| self.fresh(b.ino));
        w.u32(res.err().map_or(0, |s| s as u32));
        put(w, &self.wcc(before.as_ref(), after.as_ref()));
        if res.is_ok() {
            w.fixed(&self.write_verf);
        }
        Ok(())
    }
}
