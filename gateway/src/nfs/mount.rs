//! MOUNT v3 (RFC 1813 appendix I) and the portmapper's GETPORT (RFC 1833, version 2), both
//! answered on the NFS port so clients need no rpcbind: `mount -o port=N,mountport=N`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Mutex;

use super::export::ExportOptions;
use super::nfs3::{ProcError, NFS_PROGRAM, NFS_V3};
use super::xdr::{XdrReader, XdrWriter};

pub const MOUNT_PROGRAM: u32 = 100005;
pub const MOUNT_V3: u32 = 3;
pub const PORTMAP_PROGRAM: u32 = 100000;
pub const PORTMAP_V2: u32 = 2;

const MNT3_OK: u32 = 0;
pub const MNT3ERR_NOENT: u32 = 2;
pub const MNT3ERR_NOTDIR: u32 = 20;
pub const MNT3ERR_SERVERFAULT: u32 = 10006;
const MNT3ERR_ACCES: u32 = 13;
const AUTH_SYS: u32 = 1;
const MNTPATHLEN: usize = 1024;
const IPPROTO_TCP: u32 = 6;

/// The MOUNT service: hands out the root handle of the export to admitted clients and
/// keeps the list of mounts DUMP reports.
pub struct Mount {
    export: std::sync::Arc<ExportOptions>,
    mounts: Mutex<BTreeSet<(IpAddr, String)>>,
}

impl Mount {
    pub fn new(export: std::sync::Arc<ExportOptions>) -> Self {
        Self {
            export,
            mounts: Mutex::new(BTreeSet::new()),
        }
    }

    /// The names below the export's root that `path` asks for (empty for the export
    /// itself), or `None` when `path` is not at or under the export path.
    fn names_below_export<'p>(&self, path: &'p [u8]) -> Option<Vec<&'p [u8]>> {
        let export: Vec<&[u8]> = self
            .export
            .path
            .as_bytes()
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        let asked: Vec<&[u8]> = path
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .collect();
        if asked.len() < export.len() || asked[..export.len()] != export[..] {
            return None;
        }
        let below = asked[export.len()..].to_vec();
        if below.iter().any(|c| *c == b"..") {
            return None;
        }
        Some(below)
    }

    /// Run one MOUNT procedure. `resolve` gives the file handle of a directory named by
    /// its path below the export root (no names: the root), or the MNT3 error status.
    pub fn call(
        &self,
        procedure: u32,
        args: &[u8],
        client: IpAddr,
        resolve: impl FnOnce(&[&[u8]]) -> Result<Vec<u8>, u32>,
    ) -> Result<Vec<u8>, ProcError> {
        let mut r = XdrReader::new(args);
        let mut w = XdrWriter::new();
        let mut mounts = self.mounts.lock().unwrap_or_else(|p| p.into_inner());
        match procedure {
            0 => {}
            // MNT
            1 => {
                let path = r.opaque("mount path", MNTPATHLEN)?;
                if !self.export.admits(client) {
                    w.u32(MNT3ERR_ACCES);
                } else {
                    // The export itself or any directory below it.
                    let found = self
                        .names_below_export(path)
                        .ok_or(MNT3ERR_NOENT)
                        .and_then(|names| resolve(&names));
                    match found {
                        Ok(fh) => {
                            mounts.insert((client, String::from_utf8_lossy(path).into_owned()));
                            w.u32(MNT3_OK).opaque(&fh);
                            w.u32(1).u32(AUTH_SYS);
                        }
                        Err(status) => {
                            w.u32(status);
                        }
                    }
                }
            }
            // DUMP
            2 => {
                for (host, dir) in mounts.iter() {
                    w.bool(true)
                        .opaque(host.to_string().as_bytes())
                        .opaque(dir.as_bytes());
                }
                w.bool(false);
            }
            // UMNT
            3 => {
                let path = r.opaque("mount path", MNTPATHLEN)?;
                let path = String::from_utf8_lossy(path).into_owned();
                mounts.retain(|(h, d)| {
                    !(*h == client && d.trim_end_matches('/') == path.trim_end_matches('/'))
                });
            }
            // UMNTALL
            4 => mounts.retain(|(h, _)| *h != client),
            // EXPORT: the export path and the networks allowed to mount it.
            5 => {
                w.bool(true).opaque(self.export.path.as_bytes());
                for n in &self.export.clients {
                    w.bool(true).opaque(n.to_string().as_bytes());
                }
                w.bool(false).bool(false);
            }
            _ => return Err(ProcError::ProcUnavail),
        }
        Ok(w.buf)
    }
}

/// PMAPPROC_NULL and PMAPPROC_GETPORT for NFS v3 and MOUNT v3 over TCP on `port`; every
/// other program (NLM, NSM, ...) gets port 0, "not registered", so a client that asks for
/// the lock manager fails at once instead of hanging.
pub fn portmap_call(procedure: u32, args: &[u8], port: u16) -> Result<Vec<u8>, ProcError> {
    let mut r = XdrReader::new(args);
    let mut w = XdrWriter::new();
    match procedure {
        0 => {}
        3 => {
            let (prog, vers, prot) = (r.u32()?, r.u32()?, r.u32()?);
            let _port = r.u32()?;
            let ours = matches!(
                (prog, vers),
                (NFS_PROGRAM, NFS_V3) | (MOUNT_PROGRAM, MOUNT_V3)
            ) && prot == IPPROTO_TCP;
            w.u32(if ours { port as u32 } else { 0 });
        }
        _ => return Err(ProcError::ProcUnavail),
    }
    Ok(w.buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(path: &str) -> Mount {
        Mount::new(std::sync::Arc::new(ExportOptions {
            path: path.into(),
            ..ExportOptions::default()
        }))
    }

    #[test]
    fn mount_paths_resolve_below_the_export_only() {
        let root = mount("/");
        assert_eq!(root.names_below_export(b"/"), Some(vec![]));
        assert_eq!(
            root.names_below_export(b"/a//b/"),
            Some(vec![&b"a"[..], b"b"])
        );
        assert_eq!(root.names_below_export(b"/a/../b"), None);
        let sub = mount("/srv/data");
        assert_eq!(sub.names_below_export(b"/srv/data"), Some(vec![]));
        assert_eq!(
            sub.names_below_export(b"/srv/data/x"),
            Some(vec![&b"x"[..]])
        );
        assert_eq!(sub.names_below_export(b"/srv"), None);
        assert_eq!(sub.names_below_export(b"/srv/other"), None);
    }
}
