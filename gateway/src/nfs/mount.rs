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
const MNT3ERR_NOENT: u32 = 2;
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

    fn path_matches(&self, path: &[u8]) -> bool {
        let want = self.export.path.trim_end_matches('/');
        let got = std::str::from_utf8(path)
            .unwrap_or("")
            .trim_end_matches('/');
        want == got
    }

    /// Run one MOUNT procedure. `root_handle` gives the export's root file handle.
    pub fn call(
        &self,
        procedure: u32,
        args: &[u8],
        client: IpAddr,
        root_handle: impl FnOnce() -> Vec<u8>,
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
                } else if !self.path_matches(path) {
                    w.u32(MNT3ERR_NOENT);
                } else {
                    mounts.insert((client, self.export.path.clone()));
                    w.u32(MNT3_OK).opaque(&root_handle());
                    w.u32(1).u32(AUTH_SYS);
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
