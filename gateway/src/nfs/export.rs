//! Export options and the permission model: which client networks may mount, read-only
//! exports, root squash, and POSIX permission checks with the caller's AUTH_SYS identity.
//!
//! The NFS client checks permissions too, but a server must not trust it: every procedure
//! that reads or changes something checks here first.

use std::net::IpAddr;
use std::str::FromStr;

use scoutgw_cluster::fs::{Attr, FileType};

use super::rpc::Credentials;

/// An IP network (`10.0.0.0/8`, `127.0.0.1`, `::1/128`, or `*` for every address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(Network {
                addr: IpAddr::from([0u8; 4]),
                prefix: 0,
            });
        }
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        };
        Ok(Network { addr, prefix })
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix == 0 {
            write!(f, "*")
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // IPv4 clients may arrive as IPv4-mapped IPv6 addresses on a dual-stack socket.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => self.prefix == 0,
        }
    }
}

/// How the filesystem is exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    /// The path clients mount (MOUNT's dirpath), `/` by default.
    pub path: String,
    /// Networks whose clients may mount and use the export.
    pub clients: Vec<Network>,
    pub read_only: bool,
    /// Callers with uid 0 act as `anon_uid`/`anon_gid`.
    pub root_squash: bool,
    /// Every caller acts as `anon_uid`/`anon_gid`.
    pub all_squash: bool,
    pub anon_uid: u32,
    pub anon_gid: u32,
    /// Commit namespace and attribute changes before replying (NFSv3's rule for a server).
    pub sync: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            path: "/".into(),
            clients: vec!["127.0.0.0/8".parse().expect("valid network")],
            read_only: false,
            root_squash: false,
            all_squash: false,
            anon_uid: 65534,
            anon_gid: 65534,
            sync: true,
        }
    }
}

/// Who a call acts as, after squashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

impl Caller {
    pub fn root() -> Self {
        Caller {
            uid: 0,
            gid: 0,
            gids: Vec::new(),
        }
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.gids.contains(&gid)
    }
}

/// Permission bits asked for.
pub const MAY_READ: u32 = 4;
pub const MAY_WRITE: u32 = 2;
pub const MAY_EXEC: u32 = 1;

impl ExportOptions {
    /// May a client at `ip` use this export?
    pub fn admits(&self, ip: IpAddr) -> bool {
        self.clients.iter().any(|n| n.contains(ip))
    }

    /// The identity a call acts as.
    pub fn caller(&self, cred: &Credentials) -> Caller {
        let anon = Caller {
            uid: self.anon_uid,
            gid: self.anon_gid,
            gids: Vec::new(),
        };
        match cred {
            Credentials::None => anon,
            Credentials::Sys(_) if self.all_squash => anon,
            Credentials::Sys(s) => {
                let mut c = Caller {
                    uid: s.uid,
                    gid: s.gid,
                    gids: s.gids.clone(),
                };
                if self.root_squash {
                    if c.uid == 0 {
                        c.uid = self.anon_uid;
                    }
                    if c.gid == 0 {
                        c.gid = self.anon_gid;
                    }
                    for g in &mut c.gids {
                        if *g == 0 {
                            *g = self.anon_gid;
                        }
                    }
                }
                c
            }
        }
    }
}

/// Does `caller` have all of `want` (MAY_* bits) on `attr` by its mode bits? Root has read
/// and write on everything, and execute when any execute bit is set or it is a directory.
pub fn permits(attr: &Attr, caller: &Caller, want: u32) -> bool {
    let mode = attr.mode;
    if caller.uid == 0 {
        return want & MAY_EXEC == 0 || attr.is_dir() || mode & 0o111 != 0;
    }
    let bits = if caller.uid == attr.uid {
        (mode >> 6) & 7
    } else if caller.in_group(attr.gid) {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    bits & want == want
}

/// Read or write file data: the owner may always (the client checked the mode when the
/// file was opened, and a file created read-only is still written through its open
/// descriptor), others by the mode bits.
pub fn may_access_data(attr: &Attr, caller: &Caller, want: u32) -> bool {
    caller.uid == attr.uid || permits(attr, caller, want)
}

/// Remove or rename `victim` out of `dir`: write and search on the directory, and with the
/// sticky bit set, owning the victim or the directory (or being root).
pub fn may_delete(dir: &Attr, victim: &Attr, caller: &Caller) -> bool {
    if !permits(dir, caller, MAY_WRITE | MAY_EXEC) {
        return false;
    }
    dir.mode & 0o1000 == 0 || caller.uid == 0 || caller.uid == victim.uid || caller.uid == dir.uid
}

/// Set-user-ID, set-group-ID and group execute bits.
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o0010;

/// `bits` without set-user-ID, and without set-group-ID when group execute is set (a
/// set-group-ID bit without group execute means mandatory locking, not privilege).
fn without_privs(bits: u32) -> u32 {
    let bits = bits & !S_ISUID;
    if bits & S_IXGRP != 0 {
        bits & !S_ISGID
    } else {
        bits
    }
}

/// The permission bits a SETATTR stores, by the rules Linux applies to a local filesystem
/// and its NFS server (`setattr_prepare`, nfsd's attribute sanitizing): a caller without
/// privilege cannot set set-group-ID on a file whose (new) group is not one of its groups;
/// a change of owner or group of anything but a directory or symlink clears the
/// privilege bits, and so does a truncate by a caller without privilege. `None`: the mode
/// stays as it is.
pub fn setattr_mode(
    attr: &Attr,
    mode: Option<u32>,
    owner_change: (Option<u32>, Option<u32>),
    size: Option<u64>,
    caller: &Caller,
) -> Option<u32> {
    let (uid, gid) = owner_change;
    let mut mode = mode.map(|m| m & 0o7777);
    if let Some(m) = mode.as_mut() {
        if caller.uid != 0 && !caller.in_group(gid.unwrap_or(attr.gid)) {
            *m &= !S_ISGID;
        }
    }
    let kind = attr.file_type();
    let chown = uid.is_some() || gid.is_some();
    let truncate = size.is_some() && caller.uid != 0;
    if (chown || truncate) && !matches!(kind, Some(FileType::Directory | FileType::Symlink)) {
        let bits = mode.unwrap_or(attr.mode & 0o7777);
        let kept = without_privs(bits);
        if kept != bits || mode.is_some() {
            mode = Some(kept);
        }
    }
    mode
}

/// The permission bits of a new file (not a directory) in `dir` that gets group `gid`: as
/// Linux's `mode_strip_sgid`, a caller without privilege outside that group, which it got
/// from a set-group-ID directory, does not get set-group-ID (with group execute) on it.
pub fn new_file_perm(dir: &Attr, perm: u32, gid: u32, caller: &Caller) -> u32 {
    let perm = perm & 0o7777;
    let strip = perm & (S_ISGID | S_IXGRP) == (S_ISGID | S_IXGRP)
        && dir.mode & S_ISGID != 0
        && caller.uid != 0
        && !caller.in_group(gid);
    if strip {
        perm & !S_ISGID
    } else {
        perm
    }
}

/// The permission bits a write by `caller` leaves on `attr`: a write by a caller without
/// privilege clears set-user-ID and set-group-ID (Linux `file_remove_privs`). `None`: the
/// mode stays as it is.
pub fn mode_after_write(attr: &Attr, caller: &Caller) -> Option<u32> {
    let bits = attr.mode & 0o7777;
    let kept = without_privs(bits);
    (caller.uid != 0 && kept != bits).then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfs::rpc::AuthSys;

    fn attr(mode: u32, uid: u32, gid: u32) -> Attr {
        let mut a: Attr = base_attr();
        a.mode = mode;
        a.uid = uid;
        a.gid = gid;
        a
    }

    fn base_attr() -> Attr {
        Attr {
            ino: 2,
            generation: 1,
            mode: 0o100644,
            nlink: 1,
            uid: 0,
            gid: 0,
            size: 0,
            rdev: 0,
            online_blocks: 0,
            offline_blocks: 0,
            atime: Default::default(),
            mtime: Default::default(),
            ctime: Default::default(),
            crtime: Default::default(),
            data_version: 0,
            meta_seq: 0,
            data_seq: 0,
        }
    }

    fn user(uid: u32, gid: u32, gids: &[u32]) -> Caller {
        Caller {
            uid,
            gid,
            gids: gids.to_vec(),
        }
    }

    #[test]
    fn networks_match_by_prefix() {
        let n: Network = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        let all: Network = "*".parse().unwrap();
        assert!(all.contains("192.168.1.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("host".parse::<Network>().is_err());
        let one: Network = "127.0.0.2".parse().unwrap();
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn mode_bits_decide_by_owner_group_other() {
        let a = attr(0o100640, 10, 20);
        assert!(permits(&a, &user(10, 1, &[]), MAY_READ | MAY_WRITE));
        assert!(permits(&a, &user(11, 1, &[20]), MAY_READ));
        assert!(!permits(&a, &user(11, 1, &[20]), MAY_WRITE));
        assert!(!permits(&a, &user(12, 1, &[]), MAY_READ));
        assert!(permits(&a, &Caller::root(), MAY_READ | MAY_WRITE));
        assert!(!permits(&a, &Caller::root(), MAY_EXEC));
        // The owner writes a read-only file it has open; others may not.
        let ro = attr(0o100444, 10, 20);
        assert!(may_access_data(&ro, &user(10, 1, &[]), MAY_WRITE));
        assert!(!may_access_data(&ro, &user(11, 20, &[]), MAY_WRITE));
    }

    /// pjdfstest chmod/00.t: a caller without privilege outside the file's group cannot
    /// set set-group-ID (it is dropped, the rest is set); chown/00.t: a change of owner or
    /// group clears set-user-ID and set-group-ID of files, not of directories.
    #[test]
    fn setattr_drops_set_id_bits_as_a_local_filesystem_does() {
        let f = attr(0o100755, 65534, 65534);
        let owner_in_group = user(65534, 65534, &[]);
        let owner_elsewhere = user(65534, 65533, &[]);
        assert_eq!(
            setattr_mode(&f, Some(0o2755), (None, None), None, &owner_in_group),
            Some(0o2755)
        );
        assert_eq!(
            setattr_mode(&f, Some(0o2755), (None, None), None, &owner_elsewhere),
            Some(0o755)
        );
        // The group it is being changed to counts.
        assert_eq!(
            setattr_mode(
                &f,
                Some(0o2755),
                (None, Some(65533)),
                None,
                &owner_elsewhere
            ),
            Some(0o755),
            "and the chown clears it too"
        );
        assert_eq!(
            setattr_mode(&f, Some(0o2755), (None, None), None, &Caller::root()),
            Some(0o2755)
        );
        let setid = attr(0o106555, 65534, 65533);
        let member = user(65534, 65533, &[65532]);
        assert_eq!(
            setattr_mode(&setid, None, (None, Some(65532)), None, &member),
            Some(0o555)
        );
        assert_eq!(
            setattr_mode(&setid, None, (Some(65534), None), None, &Caller::root()),
            Some(0o555)
        );
        // Set-group-ID without group execute is mandatory locking: kept.
        let locking = attr(0o106545, 65534, 65533);
        assert_eq!(
            setattr_mode(&locking, None, (None, Some(65532)), None, &member),
            Some(0o2545)
        );
        let dir = attr(0o046555, 65534, 65533);
        assert_eq!(
            setattr_mode(&dir, None, (None, Some(65532)), None, &member),
            None
        );
        // A truncate without privilege clears them, by root it does not.
        assert_eq!(
            setattr_mode(&setid, None, (None, None), Some(0), &member),
            Some(0o555)
        );
        assert_eq!(
            setattr_mode(&setid, None, (None, None), Some(0), &Caller::root()),
            None
        );
        assert_eq!(
            setattr_mode(&f, None, (None, None), None, &owner_elsewhere),
            None
        );
    }

    #[test]
    fn a_new_file_in_a_set_group_id_directory_gets_set_group_id_only_within_the_group() {
        let dir = attr(0o042777, 0, 500);
        let outsider = user(1000, 1000, &[]);
        let member = user(1001, 1001, &[500]);
        assert_eq!(new_file_perm(&dir, 0o2755, 500, &outsider), 0o755);
        assert_eq!(new_file_perm(&dir, 0o2755, 500, &member), 0o2755);
        assert_eq!(new_file_perm(&dir, 0o2755, 500, &Caller::root()), 0o2755);
        // Without group execute it is mandatory locking, and outside such a directory the
        // caller's own group applies: kept.
        assert_eq!(new_file_perm(&dir, 0o2745, 500, &outsider), 0o2745);
        let plain = attr(0o040777, 0, 500);
        assert_eq!(new_file_perm(&plain, 0o2755, 1000, &outsider), 0o2755);
    }

    /// pjdfstest chmod/12.t: a write by a caller without privilege clears set-user-ID and
    /// set-group-ID.
    #[test]
    fn a_write_without_privilege_clears_set_id_bits() {
        let nobody = user(65534, 65534, &[]);
        assert_eq!(
            mode_after_write(&attr(0o104777, 0, 0), &nobody),
            Some(0o777)
        );
        assert_eq!(
            mode_after_write(&attr(0o102777, 0, 0), &nobody),
            Some(0o777)
        );
        assert_eq!(
            mode_after_write(&attr(0o106777, 0, 0), &nobody),
            Some(0o777)
        );
        assert_eq!(
            mode_after_write(&attr(0o106777, 0, 0), &Caller::root()),
            None
        );
        assert_eq!(mode_after_write(&attr(0o100777, 0, 0), &nobody), None);
    }

    #[test]
    fn sticky_directories_only_let_owners_delete() {
        let dir = attr(0o041777, 0, 0);
        let f = attr(0o100644, 10, 10);
        assert!(may_delete(&dir, &f, &user(10, 10, &[])));
        assert!(!may_delete(&dir, &f, &user(11, 11, &[])));
        assert!(may_delete(&dir, &f, &Caller::root()));
    }

    #[test]
    fn root_squash_maps_root_and_its_groups_to_anonymous() {
        let e = ExportOptions {
            root_squash: true,
            ..ExportOptions::default()
        };
        let cred = Credentials::Sys(AuthSys {
            stamp: 0,
            machine: b"h".to_vec(),
            uid: 0,
            gid: 0,
            gids: vec![0, 5],
        });
        assert_eq!(e.caller(&cred), user(65534, 65534, &[65534, 5]));
        let plain = ExportOptions::default();
        assert_eq!(plain.caller(&cred), user(0, 0, &[0, 5]));
        assert_eq!(plain.caller(&Credentials::None).uid, 65534);
    }
}
