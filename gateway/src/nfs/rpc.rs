//! ONC RPC v2 (RFC 5531): parsing calls and building replies, with AUTH_SYS credentials.
//!
//! The NFS and MOUNT programs sit on top of this; the crate `nfsserve` keeps its RPC layer
//! private, so the gateway owns it (and with it the duplicate-request cache and the caller's
//! credentials, which `nfsserve`'s file-system trait never sees).

use super::xdr::{XdrError, XdrReader, XdrWriter};

pub const RPC_VERSION: u32 = 2;
const MSG_CALL: u32 = 0;
const MSG_REPLY: u32 = 1;
const AUTH_NONE: u32 = 0;
const AUTH_SYS: u32 = 1;
/// Most bytes a credential or verifier body may have (RFC 5531).
const MAX_AUTH_BYTES: usize = 400;
/// AUTH_SYS limits (RFC 5531 appendix A).
const MAX_MACHINE_NAME: usize = 255;
const MAX_GIDS: usize = 16;

/// The caller, as AUTH_SYS describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSys {
    pub stamp: u32,
    pub machine: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

/// The credentials of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    Sys(AuthSys),
}

/// A parsed call; `args` are the procedure's undecoded arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<'a> {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub procedure: u32,
    pub cred: Credentials,
    pub args: &'a [u8],
}

/// Why an RPC authentication was refused (`auth_stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum AuthStat {
    BadCred = 1,
    RejectedCred = 2,
    BadVerf = 3,
    RejectedVerf = 4,
    TooWeak = 5,
}

/// A message that is not an acceptable call, and how to answer it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Not even an xid: drop the record.
    #[error("record too short to be an RPC message")]
    Unparsable,
    /// A reply, or some other message type, sent to a server: ignore it.
    #[error("message {xid:#x} is not a call")]
    NotACall { xid: u32 },
    #[error("call {xid:#x} uses RPC version {vers}")]
    RpcVersion { xid: u32, vers: u32 },
    #[error("call {xid:#x} has bad credentials: {why}")]
    BadCred { xid: u32, why: String },
}

impl CallError {
    /// The reply to send, if any.
    pub fn reply(&self) -> Option<Vec<u8>> {
        match self {
            CallError::Unparsable | CallError::NotACall { .. } => None,
            CallError::RpcVersion { xid, .. } => Some(denied_rpc_mismatch(*xid)),
            CallError::BadCred { xid, .. } => Some(denied_auth(*xid, AuthStat::BadCred)),
        }
    }
}

fn parse_auth_sys(body: &[u8]) -> Result<AuthSys, XdrError> {
    let mut r = XdrReader::new(body);
    let stamp = r.u32()?;
    let machine = r.opaque("machine name", MAX_MACHINE_NAME)?.to_vec();
    let uid = r.u32()?;
    let gid = r.u32()?;
    let n = r.u32()? as usize;
    if n > MAX_GIDS {
        return Err(XdrError::TooLong {
            what: "group list",
            len: n,
            max: MAX_GIDS,
        });
    }
    let gids = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
    Ok(AuthSys {
        stamp,
        machine,
        uid,
        gid,
        gids,
    })
}

/// Parse one RPC record as a call.
pub fn parse_call(msg: &[u8]) -> Result<Call<'_>, CallError> {
    let mut r = XdrReader::new(msg);
    let xid = r.u32().map_err(|_| CallError::Unparsable)?;
    let bad = |why: String| CallError::BadCred { xid, why };
    match r.u32() {
        Ok(MSG_CALL) => {}
        _ => return Err(CallError::NotACall { xid }),
    }
    let vers = r.u32().map_err(|e| bad(e.to_string()))?;
    if vers != RPC_VERSION {
        return Err(CallError::RpcVersion { xid, vers });
    }
    let (prog, pvers, procedure) =
        (|| Ok((r.u32()?, r.u32()?, r.u32()?)))().map_err(|e: XdrError| bad(e.to_string()))?;
    let flavor = r.u32().map_err(|e| bad(e.to_string()))?;
    let body = r
        .opaque("credential", MAX_AUTH_BYTES)
        .map_err(|e| bad(e.to_string()))?;
    let cred = match flavor {
        AUTH_NONE => Credentials::None,
        AUTH_SYS => Credentials::Sys(parse_auth_sys(body).map_err(|e| bad(e.to_string()))?),
        other => return Err(bad(format!("unsupported flavor {other}"))),
    };
    // The verifier (AUTH_NONE for AUTH_SYS callers) is read and not checked.
    r.u32().map_err(|e| bad(e.to_string()))?;
    r.opaque("verifier", MAX_AUTH_BYTES)
        .map_err(|e| bad(e.to_string()))?;
    Ok(Call {
        xid,
        prog,
        vers: pvers,
        procedure,
        cred,
        args: r.rest(),
    })
}

/// `accept_stat` of an accepted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    Success,
    ProgUnavail,
    /// The program exists, not this version: the versions supported.
    ProgMismatch {
        low: u32,
        high: u32,
    },
    ProcUnavail,
    GarbageArgs,
    SystemErr,
}

fn reply_header(xid: u32) -> XdrWriter {
    let mut w = XdrWriter::new();
    w.u32(xid).u32(MSG_REPLY);
    w
}

/// An accepted reply; `results` follow on success.
pub fn accepted(xid: u32, accept: Accept, results: &[u8]) -> Vec<u8> {
    let mut w = reply_header(xid);
    w.u32(0); // MSG_ACCEPTED
    w.u32(AUTH_NONE).opaque(&[]); // verifier
    match accept {
        Accept::Success => {
            w.u32(0);
            w.buf.extend_from_slice(results);
        }
        Accept::ProgUnavail => {
            w.u32(1);
        }
        Accept::ProgMismatch { low, high } => {
            w.u32(2).u32(low).u32(high);
        }
        Accept::ProcUnavail => {
            w.u32(3);
        }
        Accept::GarbageArgs => {
            w.u32(4);
        }
        Accept::SystemErr => {
            w.u32(5);
        }
    }
    w.buf
}

/// A denied reply: wrong RPC version (we speak 2 only).
pub fn denied_rpc_mismatch(xid: u32) -> Vec<u8> {
    let mut w = reply_header(xid);
    w.u32(1).u32(0).u32(RPC_VERSION).u32(RPC_VERSION);
    w.buf
}

/// A denied reply: authentication refused.
pub fn denied_auth(xid: u32, stat: AuthStat) -> Vec<u8> {
    let mut w = reply_header(xid);
    w.u32(1).u32(1).u32(stat as u32);
    w.buf
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An RPC call as a client would send it.
    pub(crate) fn call_bytes(
        xid: u32,
        prog: u32,
        vers: u32,
        procedure: u32,
        args: &[u8],
    ) -> Vec<u8> {
        let mut cred = XdrWriter::new();
        cred.u32(7)
            .opaque(b"client")
            .u32(1000)
            .u32(100)
            .u32(2)
            .u32(100)
            .u32(4);
        let mut w = XdrWriter::new();
        w.u32(xid)
            .u32(MSG_CALL)
            .u32(RPC_VERSION)
            .u32(prog)
            .u32(vers)
            .u32(procedure);
        w.u32(AUTH_SYS).opaque(&cred.buf);
        w.u32(AUTH_NONE).opaque(&[]);
        w.buf.extend_from_slice(args);
        w.buf
    }

    #[test]
    fn auth_sys_calls_parse() {
        let msg = call_bytes(0x1234, 100003, 3, 1, &[0, 0, 0, 9]);
        let c = parse_call(&msg).unwrap();
        assert_eq!((c.xid, c.prog, c.vers, c.procedure), (0x1234, 100003, 3, 1));
        assert_eq!(c.args, &[0, 0, 0, 9]);
        match c.cred {
            Credentials::Sys(a) => {
                assert_eq!((a.uid, a.gid, a.gids), (1000, 100, vec![100, 4]));
                assert_eq!(a.machine, b"client");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_versions_and_credentials_get_denied_replies() {
        let mut msg = call_bytes(5, 100003, 3, 0, &[]);
        msg[11] = 3; // RPC version 3
        let e = parse_call(&msg).unwrap_err();
        assert_eq!(e, CallError::RpcVersion { xid: 5, vers: 3 });
        let reply = e.reply().unwrap();
        assert_eq!(
            &reply[..16],
            &[0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        // 17 groups is one too many.
        let mut cred = XdrWriter::new();
        cred.u32(0).opaque(b"m").u32(0).u32(0).u32(17);
        let mut w = XdrWriter::new();
        w.u32(6)
            .u32(0)
            .u32(2)
            .u32(100003)
            .u32(3)
            .u32(0)
            .u32(1)
            .opaque(&cred.buf);
        let e = parse_call(&w.buf).unwrap_err();
        assert!(matches!(e, CallError::BadCred { xid: 6, .. }), "{e:?}");
        assert_eq!(e.reply().unwrap()[8..16], [0, 0, 0, 1, 0, 0, 0, 1]);
    }

    #[test]
    fn replies_are_not_calls_and_garbage_is_unparsable() {
        assert_eq!(parse_call(&[1, 2]), Err(CallError::Unparsable));
        let r = accepted(9, Accept::Success, &[]);
        assert_eq!(parse_call(&r), Err(CallError::NotACall { xid: 9 }));
    }

    #[test]
    fn accepted_replies_carry_their_status() {
        let r = accepted(1, Accept::ProgMismatch { low: 3, high: 3 }, &[]);
        assert_eq!(r.len(), 4 * 8);
        assert_eq!(&r[20..24], &[0, 0, 0, 2]);
        let r = accepted(1, Accept::Success, &[0xAA; 4]);
        assert_eq!(&r[r.len() - 4..], &[0xAA; 4]);
    }

    proptest::proptest! {
        #[test]
        fn garbage_calls_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Err(e) = parse_call(&bytes) {
                let _ = e.reply();
            }
        }
    }
}
