//! Filesystem errors to NFSv3 status codes, in one place.

use nfsserve::nfs::nfsstat3;
use scoutgw_cluster::fs::{libc_errno as e, FsError};

use super::handle::HandleError;

/// The NFSv3 status for a filesystem error.
pub fn nfs_status(err: &FsError) -> nfsstat3 {
    use nfsstat3::*;
    match err {
        FsError::NotFound => NFS3ERR_NOENT,
        FsError::Exists => NFS3ERR_EXIST,
        FsError::NotDir => NFS3ERR_NOTDIR,
        FsError::IsDir => NFS3ERR_ISDIR,
        FsError::NotEmpty => NFS3ERR_NOTEMPTY,
        FsError::NameTooLong => NFS3ERR_NAMETOOLONG,
        FsError::Invalid(_) | FsError::Range | FsError::NoAttr => NFS3ERR_INVAL,
        // SpaceWait is never returned by `Fs` (it waits for merges itself, then says NoSpace).
        FsError::NoSpace | FsError::SpaceWait => NFS3ERR_NOSPC,
        FsError::TooBig => NFS3ERR_FBIG,
        FsError::TooManyLinks => NFS3ERR_MLINK,
        FsError::Stale => NFS3ERR_STALE,
        // Offline data not staged yet: the client retries later.
        FsError::Offline => NFS3ERR_JUKEBOX,
        FsError::DataVersion { .. } => NFS3ERR_IO,
        FsError::Errno(n) => errno_status(*n),
        FsError::Io(_) | FsError::Corrupt(_) => NFS3ERR_IO,
        // Never returned by `Fs` (it waits for the grant itself); a busy lock would be retried.
        FsError::LockWait { .. } => NFS3ERR_JUKEBOX,
    }
}

/// The NFSv3 status for a POSIX errno (set by `data_wait_err`, for instance).
pub fn errno_status(errno: i32) -> nfsstat3 {
    use nfsstat3::*;
    match errno {
        e::EPERM => NFS3ERR_PERM,
        e::ENOENT => NFS3ERR_NOENT,
        e::EACCES => NFS3ERR_ACCES,
        e::EEXIST => NFS3ERR_EXIST,
        e::EXDEV => NFS3ERR_XDEV,
        e::ENOTDIR => NFS3ERR_NOTDIR,
        e::EISDIR => NFS3ERR_ISDIR,
        e::EINVAL => NFS3ERR_INVAL,
        e::EFBIG => NFS3ERR_FBIG,
        e::ENOSPC => NFS3ERR_NOSPC,
        30 => NFS3ERR_ROFS,
        e::EMLINK => NFS3ERR_MLINK,
        e::ENAMETOOLONG => NFS3ERR_NAMETOOLONG,
        e::ENOTEMPTY => NFS3ERR_NOTEMPTY,
        122 => NFS3ERR_DQUOT,
        e::ESTALE => NFS3ERR_STALE,
        e::EAGAIN => NFS3ERR_JUKEBOX,
        95 => NFS3ERR_NOTSUPP,
        _ => NFS3ERR_IO,
    }
}

/// The RFC 1813 name of an NFS status code (for metrics and logs).
pub fn status_name(code: u32) -> &'static str {
    match code {
        0 => "NFS3_OK",
        1 => "NFS3ERR_PERM",
        2 => "NFS3ERR_NOENT",
        5 => "NFS3ERR_IO",
        6 => "NFS3ERR_NXIO",
        13 => "NFS3ERR_ACCES",
        17 => "NFS3ERR_EXIST",
        18 => "NFS3ERR_XDEV",
        19 => "NFS3ERR_NODEV",
        20 => "NFS3ERR_NOTDIR",
        21 => "NFS3ERR_ISDIR",
        22 => "NFS3ERR_INVAL",
        27 => "NFS3ERR_FBIG",
        28 => "NFS3ERR_NOSPC",
        30 => "NFS3ERR_ROFS",
        31 => "NFS3ERR_MLINK",
        63 => "NFS3ERR_NAMETOOLONG",
        66 => "NFS3ERR_NOTEMPTY",
        69 => "NFS3ERR_DQUOT",
        70 => "NFS3ERR_STALE",
        71 => "NFS3ERR_REMOTE",
        10001 => "NFS3ERR_BADHANDLE",
        10002 => "NFS3ERR_NOT_SYNC",
        10003 => "NFS3ERR_BAD_COOKIE",
        10004 => "NFS3ERR_NOTSUPP",
        10005 => "NFS3ERR_TOOSMALL",
        10006 => "NFS3ERR_SERVERFAULT",
        10007 => "NFS3ERR_BADTYPE",
        10008 => "NFS3ERR_JUKEBOX",
        _ => "other",
    }
}

pub fn handle_status(err: HandleError) -> nfsstat3 {
    match err {
        HandleError::Bad => nfsstat3::NFS3ERR_BADHANDLE,
        HandleError::Stale => nfsstat3::NFS3ERR_STALE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_errors_map_to_their_nfs_codes() {
        let cases = [
            (FsError::NotFound, 2),
            (FsError::Exists, 17),
            (FsError::NotDir, 20),
            (FsError::IsDir, 21),
            (FsError::NotEmpty, 66),
            (FsError::NameTooLong, 63),
            (FsError::Invalid("x"), 22),
            (FsError::NoSpace, 28),
            (FsError::TooBig, 27),
            (FsError::Stale, 70),
            (FsError::Offline, 10008),
            (FsError::Errno(13), 13),
            (FsError::Io("disk".into()), 5),
        ];
        for (err, code) in cases {
            assert_eq!(nfs_status(&err) as u32, code, "{err:?}");
        }
    }
}
