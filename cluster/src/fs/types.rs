//! The values the filesystem API takes and returns, and its error type.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::client::ClientError;
use crate::format::inode::InodeItem;
use crate::format::Timespec;

/// Why a filesystem operation failed; [`FsError::errno`] gives the POSIX error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("no space left on device")]
    NoSpace,
    #[error("file too large")]
    TooBig,
    #[error("too many links")]
    TooManyLinks,
    #[error("stale file handle")]
    Stale,
    #[error("no such attribute")]
    NoAttr,
    #[error("value does not fit the buffer")]
    Range,
    #[error("data is offline (released to the archive tier); staging was not done in time")]
    Offline,
    #[error("data version {found} does not match the expected {expected}")]
    DataVersion { expected: u64, found: u64 },
    #[error("operation failed with errno {0}")]
    Errno(i32),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("metadata corruption: {0}")]
    Corrupt(String),
    /// Internal: the operation needs a lock grant this node does not hold. `Fs` operations
    /// catch it, wait for the grant without the mount mutex and start over; callers of the
    /// public API never see it.
    #[doc(hidden)]
    #[error("waiting for a cluster lock grant")]
    LockWait {
        key: crate::format::Key,
        mode: crate::lock::LockMode,
    },
    /// Internal: the operation lacks metadata room while merges that may give space back
    /// are pending. `Fs` operations catch it, wait a little without the mount mutex and
    /// start over, for at most [`crate::fs::SPACE_WAIT`]; then it is [`FsError::NoSpace`].
    #[doc(hidden)]
    #[error("waiting for merges to give metadata space back")]
    SpaceWait,
}

impl FsError {
    /// The POSIX errno of this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc_errno::ENOENT,
            FsError::Exists => libc_errno::EEXIST,
            FsError::NotDir => libc_errno::ENOTDIR,
            FsError::IsDir => libc_errno::EISDIR,
            FsError::NotEmpty => libc_errno::ENOTEMPTY,
            FsError::NameTooLong => libc_errno::ENAMETOOLONG,
            FsError::Invalid(_) => libc_errno::EINVAL,
            FsError::NoSpace => libc_errno::ENOSPC,
            FsError::TooBig => libc_errno::EFBIG,
            FsError::TooManyLinks => libc_errno::EMLINK,
            FsError::Stale => libc_errno::ESTALE,
            FsError::NoAttr => libc_errno::ENODATA,
            FsError::Range => libc_errno::ERANGE,
            FsError::Offline => libc_errno::EAGAIN,
            FsError::DataVersion { .. } => libc_errno::ESTALE,
            FsError::Errno(e) => *e,
            FsError::Io(_) => libc_errno::EIO,
            FsError::Corrupt(_) => libc_errno::EIO,
            FsError::LockWait { .. } => libc_errno::EAGAIN,
            FsError::SpaceWait => libc_errno::ENOSPC,
        }
    }
}

/// Linux errno values (stable ABI numbers).
pub mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EAGAIN: i32 = 11;
    pub const EACCES: i32 = 13;
    pub const EEXIST: i32 = 17;
    pub const EXDEV: i32 = 18;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const EFBIG: i32 = 27;
    pub const ENOSPC: i32 = 28;
    pub const EMLINK: i32 = 31;
    pub const ERANGE: i32 = 34;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOTEMPTY: i32 = 39;
    pub const ENODATA: i32 = 61;
    pub const ESTALE: i32 = 116;
}

impl From<ClientError> for FsError {
    fn from(e: ClientError) -> Self {
        use crate::btree::BtreeError;
        match e {
            ClientError::Btree(BtreeError::NoSpace) | ClientError::NoSpace(_) => FsError::NoSpace,
            ClientError::Server(crate::msg::ServerError::NoSpace(_)) => FsError::NoSpace,
            ClientError::Btree(BtreeError::Format(f)) => FsError::Corrupt(f.to_string()),
            other => FsError::Io(other.to_string()),
        }
    }
}

impl From<scoutgw_blockdev::BlockError> for FsError {
    fn from(e: scoutgw_blockdev::BlockError) -> Self {
        FsError::Io(e.to_string())
    }
}

/// File types (the `S_IFMT` bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

pub const S_IFMT: u32 = 0o170000;

impl FileType {
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Fifo => 0o010000,
            FileType::CharDevice => 0o020000,
            FileType::Directory => 0o040000,
            FileType::BlockDevice => 0o060000,
            FileType::Regular => 0o100000,
            FileType::Symlink => 0o120000,
            FileType::Socket => 0o140000,
        }
    }

    pub fn from_mode(mode: u32) -> Option<FileType> {
        Some(match mode & S_IFMT {
            0o010000 => FileType::Fifo,
            0o020000 => FileType::CharDevice,
            0o040000 => FileType::Directory,
            0o060000 => FileType::BlockDevice,
            0o100000 => FileType::Regular,
            0o120000 => FileType::Symlink,
            0o140000 => FileType::Socket,
            _ => return None,
        })
    }

    /// The dirent type byte: the `S_IFMT` bits >> 12 (DT_* values).
    pub fn dtype(self) -> u8 {
        (self.mode_bits() >> 12) as u8
    }
}

/// A point in time (seconds and nanoseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

impl Time {
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }

    pub(crate) fn to_disk(self) -> Timespec {
        Timespec {
            sec: (self.sec as u64).into(),
            nsec: self.nsec.into(),
            _pad: [0; 4],
        }
    }

    pub(crate) fn from_disk(t: &Timespec) -> Self {
        Time {
            sec: t.sec.get() as i64,
            nsec: t.nsec.get(),
        }
    }
}

/// Attributes of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Attr {
    pub ino: u64,
    pub generation: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub rdev: u64,
    /// 4 KiB blocks mapped on the data device.
    pub online_blocks: u64,
    /// 4 KiB blocks released to the archive tier.
    pub offline_blocks: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub crtime: Time,
    pub data_version: u64,
    pub meta_seq: u64,
    pub data_seq: u64,
}

impl Attr {
    pub(crate) fn from_item(ino: u64, i: &InodeItem) -> Self {
        Attr {
            ino,
            generation: i.generation.get(),
            mode: i.mode.get(),
            nlink: i.nlink.get(),
            uid: i.uid.get(),
            gid: i.gid.get(),
            size: i.size.get(),
            rdev: i.rdev.get(),
            online_blocks: i.online_blocks.get(),
            offline_blocks: i.offline_blocks.get(),
            atime: Time::from_disk(&i.atime),
            mtime: Time::from_disk(&i.mtime),
            ctime: Time::from_disk(&i.ctime),
            crtime: Time::from_disk(&i.crtime),
            data_version: i.data_version.get(),
            meta_seq: i.meta_seq.get(),
            data_seq: i.data_seq.get(),
        }
    }

    pub fn file_type(&self) -> Option<FileType> {
        FileType::from_mode(self.mode)
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == Some(FileType::Directory)
    }
}

/// How to set a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(Time),
}

/// Changes for `setattr`; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (the file type bits are kept).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// A new inode's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewNode {
    pub kind: FileType,
    /// Permission bits.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
}

/// One directory entry from `readdir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub generation: u64,
    pub kind: Option<FileType>,
    /// The cookie to continue after this entry.
    pub cookie: u64,
}

/// A page of directory entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPage {
    pub entries: Vec<DirEntry>,
    /// No entries after the last one returned.
    pub eof: bool,
}

/// Filesystem totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FsStat {
    pub fsid: u64,
    pub block_size: u32,
    pub total_blocks: u64,
    pub free_blocks: u64,
    pub total_meta_blocks: u64,
    pub free_meta_blocks: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
}

/// Which inode index to walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqIndex {
    MetaSeq,
    DataSeq,
}

/// A page of an index walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPage {
    /// `(seq, ino)` in order.
    pub entries: Vec<(u64, u64)>,
    /// The stable horizon the walk was capped at.
    pub horizon: u64,
    /// The last `(seq, ino)` returned, to continue after; `None` when the walk is done.
    pub next: Option<(u64, u64)>,
}

/// Validate a name for a directory entry.
pub(crate) fn check_name(name: &[u8]) -> Result<(), FsError> {
    if name.is_empty() || name == b"." || name == b".." {
        return Err(FsError::Invalid("empty, \".\" or \"..\" name"));
    }
    if name.len() > crate::format::inode::NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(FsError::Invalid("name contains '/' or NUL"));
    }
    Ok(())
}
