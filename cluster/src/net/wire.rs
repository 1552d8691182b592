//! Framing and encoding of the messages that cross the client ↔ server TCP connection.
//!
//! Every message is one frame: a fixed [`HEADER_BYTES`]-byte header, then the payload.
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `"SGWN"` |
//! | 4..6 | protocol version, le16 ([`PROTOCOL_VERSION`]) |
//! | 6 | kind: request 0, response 1, ping 2 |
//! | 7 | cmd: which request, call, response or reply the payload holds ([`cmd`]) |
//! | 8..16 | id, le64: a request's id; a response carries the id of its request |
//! | 16 | error code: 0 for success, else the [`ServerError`] variant ([`code`]) |
//! | 17..20 | zero |
//! | 20..24 | payload length, le32, at most [`MAX_PAYLOAD`] |
//!
//! Requests go both ways: a client's [`Request`]s and the server's [`ServerCall`]s share the
//! request kind and differ in cmd; likewise [`Response`]s and [`ClientReply`]s share the
//! response kind. A failed request is answered by a response with cmd 0 and a nonzero error
//! code whose payload holds the error's fields. Pings have no payload.
//!
//! The payload codec is written by hand: integers little-endian, strings as le32 length +
//! UTF-8, lists as le32 count + items, on-disk structs (`LogTrees`, `BtreeRoot`, `Key`) as
//! their `zerocopy` bytes. Decoding checks every length against the bytes actually present
//! before it allocates, so hostile input can neither panic the decoder nor make it allocate
//! more than the frame it read; any malformed frame is a [`WireError`], after which the
//! connection is closed (a stream cannot be resynchronised).

use std::io::{self, Read};

use zerocopy::{FromBytes, IntoBytes};

use crate::format::log_trees::LogTrees;
use crate::format::{BtreeRoot, Key};
use crate::lock::LockMode;
use crate::msg::{ClientReply, NetLock, Request, Response, Roots, ServerCall, ServerError, Statfs};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"SGWN";
/// The only protocol version spoken.
pub const PROTOCOL_VERSION: u16 = 1;
/// Size of the frame header.
pub const HEADER_BYTES: usize = 24;
/// Largest payload accepted: a larger length is a protocol error.
pub const MAX_PAYLOAD: usize = 4 << 20;
/// Error strings are cut to this many bytes when encoded.
pub const MAX_STRING: usize = 64 << 10;

/// Frame kinds (header byte 6).
pub mod kind {
    pub const REQUEST: u8 = 0;
    pub const RESPONSE: u8 = 1;
    pub const PING: u8 = 2;
}

/// Commands (header byte 7).
pub mod cmd {
    // Client → server requests, and the responses answering them.
    pub const GREETING: u8 = 1;
    pub const ALLOC_INODES: u8 = 2;
    pub const GET_LOG_TREES: u8 = 3;
    pub const COMMIT_LOG_TREES: u8 = 4;
    pub const GET_ROOTS: u8 = 5;
    pub const GET_LAST_SEQ: u8 = 6;
    pub const STATFS: u8 = 7;
    pub const FAREWELL: u8 = 8;
    pub const LOCK: u8 = 9;
    pub const COMMIT_LOG_TREES_OPEN_NEXT: u8 = 10;
    // Response-only names (same numbers as the requests they answer).
    pub const LOG_TREES: u8 = GET_LOG_TREES;
    pub const COMMITTED: u8 = COMMIT_LOG_TREES;
    pub const ROOTS: u8 = GET_ROOTS;
    pub const LAST_SEQ: u8 = GET_LAST_SEQ;
    pub const FAREWELL_DONE: u8 = FAREWELL;
    pub const COMMITTED_NEXT: u8 = COMMIT_LOG_TREES_OPEN_NEXT;
    // Server → client calls, and the client replies answering them.
    pub const INVALIDATE: u8 = 64;
    pub const LOCK_RECOVER: u8 = 65;
    pub const INVALIDATED: u8 = INVALIDATE;
    pub const RECOVERED: u8 = LOCK_RECOVER;
    /// The cmd of an error response (and of pings).
    pub const NONE: u8 = 0;
}

/// Error codes (header byte 16): one per [`ServerError`] variant.
pub mod code {
    pub const OK: u8 = 0;
    pub const WRONG_FSID: u8 = 1;
    pub const WRONG_FORMAT: u8 = 2;
    pub const NOT_GREETED: u8 = 3;
    pub const WRONG_TRANSACTION: u8 = 4;
    pub const INVALID: u8 = 5;
    pub const NO_SPACE: u8 = 6;
    pub const IO: u8 = 7;
    pub const CORRUPT: u8 = 8;
    pub const UNREACHABLE: u8 = 9;
    pub const FENCED: u8 = 10;
    pub const FLUSH_FIRST: u8 = 11;
}

/// Bytes of one encoded [`NetLock`]: key, write_seq, old and new mode.
pub const NET_LOCK_BYTES: usize = 32 + 8 + 1 + 1;

/// A malformed frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("unsupported protocol version {0}")]
    BadVersion(u16),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("nonzero reserved header bytes")]
    BadReserved,
    #[error("payload of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("unknown command {cmd} for frame kind {kind}")]
    BadCmd { kind: u8, cmd: u8 },
    #[error("unknown error code {0}")]
    BadCode(u8),
    #[error("error code {code} on a frame of kind {kind}")]
    UnexpectedCode { kind: u8, code: u8 },
    #[error("payload ends early")]
    Truncated,
    #[error("{0} bytes left over after the payload")]
    Trailing(usize),
    #[error("unknown lock mode {0}")]
    BadMode(u8),
    #[error("string is not UTF-8")]
    BadUtf8,
    #[error("flag byte {0} is neither 0 nor 1")]
    BadFlag(u8),
}

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] WireError),
}

/// One decoded message.
#[derive(Debug, Clone)]
pub enum Message {
    /// Client → server request.
    Request(Request),
    /// Server → client call.
    Call(ServerCall),
    /// Server → client answer to a [`Message::Request`].
    Response(Result<Response, ServerError>),
    /// Client → server answer to a [`Message::Call`].
    Reply(ClientReply),
    /// Keepalive; carries nothing.
    Ping,
}

/// One decoded frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub id: u64,
    pub msg: Message,
}

/// The fields of a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub cmd: u8,
    pub id: u64,
    pub code: u8,
    pub len: usize,
}

impl Header {
    /// Parse and check a header: magic, version, kind, reserved bytes, length limit.
    pub fn parse(b: &[u8; HEADER_BYTES]) -> Result<Header, WireError> {
        let magic: [u8; 4] = [b[0], b[1], b[2], b[3]];
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != PROTOCOL_VERSION {
            return Err(WireError::BadVersion(version));
        }
        let kind = b[6];
        if kind > kind::PING {
            return Err(WireError::BadKind(kind));
        }
        if b[17..20] != [0, 0, 0] {
            return Err(WireError::BadReserved);
        }
        let len = u32::from_le_bytes([b[20], b[21], b[22], b[23]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(WireError::TooLarge(len));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[8..16]);
        Ok(Header {
            kind,
            cmd: b[7],
            id: u64::from_le_bytes(id),
            code: b[16],
            len,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out.push(self.kind);
        out.push(self.cmd);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.push(self.code);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&(self.len as u32).to_le_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Payload primitives.

/// Appends little-endian fields to a payload.
struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        let mut end = s.len().min(MAX_STRING);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u32(end as u32);
        self.bytes(&s.as_bytes()[..end]);
    }
    fn key(&mut self, k: &Key) {
        let mut k = *k;
        k._pad = [0; 5];
        self.bytes(k.as_bytes());
    }
    fn roots(&mut self, r: &Roots) {
        self.bytes(r.fs_root.as_bytes());
        self.bytes(r.logs_root.as_bytes());
        self.bytes(r.srch_root.as_bytes());
        self.u64(r.server_incarnation);
        self.u64(r.trees_merged);
    }
    fn lock(&mut self, l: &NetLock) {
        self.key(&l.key);
        self.u64(l.write_seq);
        self.u8(mode_code(l.old_mode));
        self.u8(mode_code(l.new_mode));
    }
}

/// Reads little-endian fields from a payload, never past its end.
struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.0.len() {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    fn str(&mut self) -> Result<String, WireError> {
        let len = self.u32()? as usize;
        let b = self.take(len)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| WireError::BadUtf8)
    }
    fn key(&mut self) -> Result<Key, WireError> {
        let mut k = Key::read_from_bytes(self.take(32)?).map_err(|_| WireError::Truncated)?;
        k._pad = [0; 5];
        Ok(k)
    }
    fn mode(&mut self) -> Result<LockMode, WireError> {
        let m = self.u8()?;
        mode_from_code(m).ok_or(WireError::BadMode(m))
    }
    fn lock(&mut self) -> Result<NetLock, WireError> {
        Ok(NetLock {
            key: self.key()?,
            write_seq: self.u64()?,
            old_mode: self.mode()?,
            new_mode: self.mode()?,
        })
    }
    fn btree_root(&mut self) -> Result<BtreeRoot, WireError> {
        BtreeRoot::read_from_bytes(self.take(std::mem::size_of::<BtreeRoot>())?)
            .map_err(|_| WireError::Truncated)
    }
    fn roots(&mut self) -> Result<Roots, WireError> {
        Ok(Roots {
            fs_root: self.btree_root()?,
            logs_root: self.btree_root()?,
            srch_root: self.btree_root()?,
            server_incarnation: self.u64()?,
            trees_merged: self.u64()?,
        })
    }
    fn log_trees(&mut self) -> Result<Box<LogTrees>, WireError> {
        LogTrees::read_from_bytes(self.take(std::mem::size_of::<LogTrees>())?)
            .map(Box::new)
            .map_err(|_| WireError::Truncated)
    }
    fn finish(self) -> Result<(), WireError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

/// The wire value of a lock mode.
pub fn mode_code(m: LockMode) -> u8 {
    match m {
        LockMode::Null => 0,
        LockMode::Read => 1,
        LockMode::Write => 2,
        LockMode::WriteOnly => 3,
    }
}

/// The lock mode of a wire value.
pub fn mode_from_code(c: u8) -> Option<LockMode> {
    Some(match c {
        0 => LockMode::Null,
        1 => LockMode::Read,
        2 => LockMode::Write,
        3 => LockMode::WriteOnly,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Encoding.

fn frame(kind: u8, cmd: u8, id: u64, code: u8, payload: Vec<u8>) -> Result<Vec<u8>, WireError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::TooLarge(payload.len()));
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    Header {
        kind,
        cmd,
        id,
        code,
        len: payload.len(),
    }
    .write(&mut out);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// A frame carrying client request `id`.
pub fn encode_request(id: u64, req: &Request) -> Result<Vec<u8>, WireError> {
    let mut e = Enc(Vec::new());
    let c = match req {
        Request::Greeting {
            fsid,
            format_version,
            rid,
            server_term,
        } => {
            e.u64(*fsid);
            e.u64(*format_version);
            e.u64(*rid);
            e.u64(*server_term);
            cmd::GREETING
        }
        Request::AllocInodes { count } => {
            e.u64(*count);
            cmd::ALLOC_INODES
        }
        Request::GetLogTrees => cmd::GET_LOG_TREES,
        Request::CommitLogTrees(lt) => {
            e.bytes(lt.as_bytes());
            cmd::COMMIT_LOG_TREES
        }
        Request::CommitLogTreesOpenNext { lt, unflushed } => {
            e.bytes(lt.as_bytes());
            e.u64(*unflushed);
            cmd::COMMIT_LOG_TREES_OPEN_NEXT
        }
        Request::GetRoots => cmd::GET_ROOTS,
        Request::GetLastSeq => cmd::GET_LAST_SEQ,
        Request::Statfs => cmd::STATFS,
        Request::Farewell => cmd::FAREWELL,
        Request::Lock(l) => {
            e.lock(l);
            cmd::LOCK
        }
    };
    frame(kind::REQUEST, c, id, code::OK, e.0)
}

/// A frame carrying server call `id`.
pub fn encode_call(id: u64, call: &ServerCall) -> Result<Vec<u8>, WireError> {
    let mut e = Enc(Vec::new());
    let c = match call {
        ServerCall::Invalidate(l) => {
            e.lock(l);
            cmd::INVALIDATE
        }
        ServerCall::LockRecover { start } => {
            e.key(start);
            cmd::LOCK_RECOVER
        }
    };
    frame(kind::REQUEST, c, id, code::OK, e.0)
}

/// A frame answering client request `id`.
pub fn encode_response(id: u64, res: &Result<Response, ServerError>) -> Result<Vec<u8>, WireError> {
    let mut e = Enc(Vec::new());
    let (c, err) = match res {
        Ok(r) => (encode_response_body(&mut e, r), code::OK),
        Err(err) => (cmd::NONE, encode_error(&mut e, err)),
    };
    frame(kind::RESPONSE, c, id, err, e.0)
}

fn encode_response_body(e: &mut Enc, r: &Response) -> u8 {
    match r {
        Response::Greeting { server_term, fsid } => {
            e.u64(*server_term);
            e.u64(*fsid);
            cmd::GREETING
        }
        Response::AllocInodes { first, count } => {
            e.u64(*first);
            e.u64(*count);
            cmd::ALLOC_INODES
        }
        Response::LogTrees(lt) => {
            e.bytes(lt.as_bytes());
            cmd::LOG_TREES
        }
        Response::Committed => cmd::COMMITTED,
        Response::CommittedNext { next, roots } => {
            e.roots(roots);
            match next {
                Some(lt) => {
                    e.u8(1);
                    e.bytes(lt.as_bytes());
                }
                None => e.u8(0),
            }
            cmd::COMMITTED_NEXT
        }
        Response::Roots(r) => {
            e.roots(r);
            cmd::ROOTS
        }
        Response::LastSeq(s) => {
            e.u64(*s);
            cmd::LAST_SEQ
        }
        Response::Statfs(s) => {
            for v in [
                s.fsid,
                s.committed_seq,
                s.total_meta_blocks,
                s.free_meta_blocks,
                s.total_data_blocks,
                s.free_data_blocks,
                s.inode_count,
            ] {
                e.u64(v);
            }
            cmd::STATFS
        }
        Response::FarewellDone => cmd::FAREWELL_DONE,
        Response::Lock(l) => {
            e.lock(l);
            cmd::LOCK
        }
    }
}

fn encode_error(e: &mut Enc, err: &ServerError) -> u8 {
    match err {
        ServerError::WrongFsid { client, server } => {
            e.u64(*client);
            e.u64(*server);
            code::WRONG_FSID
        }
        ServerError::WrongFormat { client, server } => {
            e.u64(*client);
            e.u64(*server);
            code::WRONG_FORMAT
        }
        ServerError::NotGreeted { rid } => {
            e.u64(*rid);
            code::NOT_GREETED
        }
        ServerError::WrongTransaction { sent, stored } => {
            e.u64(*sent);
            e.u64(*stored);
            code::WRONG_TRANSACTION
        }
        ServerError::Invalid(s) => {
            e.str(s);
            code::INVALID
        }
        ServerError::NoSpace(s) => {
            e.str(s);
            code::NO_SPACE
        }
        ServerError::Io(s) => {
            e.str(s);
            code::IO
        }
        ServerError::Corrupt(s) => {
            e.str(s);
            code::CORRUPT
        }
        ServerError::Unreachable(s) => {
            e.str(s);
            code::UNREACHABLE
        }
        ServerError::Fenced { rid } => {
            e.u64(*rid);
            code::FENCED
        }
        ServerError::FlushFirst => code::FLUSH_FIRST,
    }
}

/// A frame answering server call `id`.
pub fn encode_reply(id: u64, reply: &ClientReply) -> Result<Vec<u8>, WireError> {
    let mut e = Enc(Vec::new());
    let c = match reply {
        ClientReply::Invalidated(l) => {
            e.lock(l);
            cmd::INVALIDATED
        }
        ClientReply::Recovered(locks) => {
            let n = u32::try_from(locks.len()).map_err(|_| WireError::TooLarge(usize::MAX))?;
            e.u32(n);
            for l in locks {
                e.lock(l);
            }
            cmd::RECOVERED
        }
    };
    frame(kind::RESPONSE, c, id, code::OK, e.0)
}

/// A ping frame.
pub fn encode_ping() -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES);
    Header {
        kind: kind::PING,
        cmd: cmd::NONE,
        id: 0,
        code: code::OK,
        len: 0,
    }
    .write(&mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Decoding.

/// Decode the payload of a frame whose header is `h` (`payload.len()` must be `h.len`).
pub fn decode_payload(h: &Header, payload: &[u8]) -> Result<Frame, WireError> {
    let mut d = Dec(payload);
    if h.kind != kind::RESPONSE && h.code != code::OK {
        return Err(WireError::UnexpectedCode {
            kind: h.kind,
            code: h.code,
        });
    }
    let bad_cmd = WireError::BadCmd {
        kind: h.kind,
        cmd: h.cmd,
    };
    let msg = match h.kind {
        kind::PING => {
            if h.cmd != cmd::NONE {
                return Err(bad_cmd);
            }
            Message::Ping
        }
        kind::REQUEST => match h.cmd {
            cmd::GREETING => Message::Request(Request::Greeting {
                fsid: d.u64()?,
                format_version: d.u64()?,
                rid: d.u64()?,
                server_term: d.u64()?,
            }),
            cmd::ALLOC_INODES => Message::Request(Request::AllocInodes { count: d.u64()? }),
            cmd::GET_LOG_TREES => Message::Request(Request::GetLogTrees),
            cmd::COMMIT_LOG_TREES => Message::Request(Request::CommitLogTrees(d.log_trees()?)),
            cmd::COMMIT_LOG_TREES_OPEN_NEXT => Message::Request(Request::CommitLogTreesOpenNext {
                lt: d.log_trees()?,
                unflushed: d.u64()?,
            }),
            cmd::GET_ROOTS => Message::Request(Request::GetRoots),
            cmd::GET_LAST_SEQ => Message::Request(Request::GetLastSeq),
            cmd::STATFS => Message::Request(Request::Statfs),
            cmd::FAREWELL => Message::Request(Request::Farewell),
            cmd::LOCK => Message::Request(Request::Lock(d.lock()?)),
            cmd::INVALIDATE => Message::Call(ServerCall::Invalidate(d.lock()?)),
            cmd::LOCK_RECOVER => Message::Call(ServerCall::LockRecover { start: d.key()? }),
            _ => return Err(bad_cmd),
        },
        kind::RESPONSE if h.code != code::OK => {
            if h.cmd != cmd::NONE {
                return Err(bad_cmd);
            }
            Message::Response(Err(decode_error(h.code, &mut d)?))
        }
        kind::RESPONSE => match h.cmd {
            cmd::GREETING => Message::Response(Ok(Response::Greeting {
                server_term: d.u64()?,
                fsid: d.u64()?,
            })),
            cmd::ALLOC_INODES => Message::Response(Ok(Response::AllocInodes {
                first: d.u64()?,
                count: d.u64()?,
            })),
            cmd::LOG_TREES => Message::Response(Ok(Response::LogTrees(d.log_trees()?))),
            cmd::COMMITTED => Message::Response(Ok(Response::Committed)),
            cmd::COMMITTED_NEXT => {
                let roots = d.roots()?;
                let next = match d.u8()? {
                    0 => None,
                    1 => Some(d.log_trees()?),
                    other => return Err(WireError::BadFlag(other)),
                };
                Message::Response(Ok(Response::CommittedNext { next, roots }))
            }
            cmd::ROOTS => Message::Response(Ok(Response::Roots(d.roots()?))),
            cmd::LAST_SEQ => Message::Response(Ok(Response::LastSeq(d.u64()?))),
            cmd::STATFS => Message::Response(Ok(Response::Statfs(Statfs {
                fsid: d.u64()?,
                committed_seq: d.u64()?,
                total_meta_blocks: d.u64()?,
                free_meta_blocks: d.u64()?,
                total_data_blocks: d.u64()?,
                free_data_blocks: d.u64()?,
                inode_count: d.u64()?,
            }))),
            cmd::FAREWELL_DONE => Message::Response(Ok(Response::FarewellDone)),
            cmd::LOCK => Message::Response(Ok(Response::Lock(d.lock()?))),
            cmd::INVALIDATED => Message::Reply(ClientReply::Invalidated(d.lock()?)),
            cmd::RECOVERED => {
                let n = d.u32()? as usize;
                // Check the count against the bytes present before allocating.
                if n > d.0.len() / NET_LOCK_BYTES {
                    return Err(WireError::Truncated);
                }
                let mut locks = Vec::with_capacity(n);
                for _ in 0..n {
                    locks.push(d.lock()?);
                }
                Message::Reply(ClientReply::Recovered(locks))
            }
            _ => return Err(bad_cmd),
        },
        k => return Err(WireError::BadKind(k)),
    };
    d.finish()?;
    Ok(Frame { id: h.id, msg })
}

fn decode_error(c: u8, d: &mut Dec<'_>) -> Result<ServerError, WireError> {
    Ok(match c {
        code::WRONG_FSID => ServerError::WrongFsid {
            client: d.u64()?,
            server: d.u64()?,
        },
        code::WRONG_FORMAT => ServerError::WrongFormat {
            client: d.u64()?,
            server: d.u64()?,
        },
        code::NOT_GREETED => ServerError::NotGreeted { rid: d.u64()? },
        code::WRONG_TRANSACTION => ServerError::WrongTransaction {
            sent: d.u64()?,
            stored: d.u64()?,
        },
        code::INVALID => ServerError::Invalid(d.str()?),
        code::NO_SPACE => ServerError::NoSpace(d.str()?),
        code::IO => ServerError::Io(d.str()?),
        code::CORRUPT => ServerError::Corrupt(d.str()?),
        code::UNREACHABLE => ServerError::Unreachable(d.str()?),
        code::FENCED => ServerError::Fenced { rid: d.u64()? },
        code::FLUSH_FIRST => ServerError::FlushFirst,
        other => return Err(WireError::BadCode(other)),
    })
}

/// Decode one whole frame from `buf`, which must hold exactly one frame.
pub fn decode_frame(buf: &[u8]) -> Result<Frame, WireError> {
    let hb: &[u8; HEADER_BYTES] = buf
        .get(..HEADER_BYTES)
        .and_then(|b| b.try_into().ok())
        .ok_or(WireError::Truncated)?;
    let h = Header::parse(hb)?;
    let payload = &buf[HEADER_BYTES..];
    if payload.len() < h.len {
        return Err(WireError::Truncated);
    }
    if payload.len() > h.len {
        return Err(WireError::Trailing(payload.len() - h.len));
    }
    decode_payload(&h, payload)
}

/// Read one frame from a blocking stream. The payload buffer is allocated only after the
/// header passed its checks, so it is at most [`MAX_PAYLOAD`] bytes.
pub fn read_frame(r: &mut impl Read) -> Result<Frame, FrameError> {
    let mut hb = [0u8; HEADER_BYTES];
    r.read_exact(&mut hb)?;
    let h = Header::parse(&hb)?;
    let mut payload = vec![0u8; h.len];
    r.read_exact(&mut payload)?;
    Ok(decode_payload(&h, &payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use scoutgw_blockdev::BlockRef;

    fn any_mode() -> impl Strategy<Value = LockMode> {
        prop_oneof![
            Just(LockMode::Null),
            Just(LockMode::Read),
            Just(LockMode::Write),
            Just(LockMode::WriteOnly),
        ]
    }

    use crate::format::key::tests::any_key;

    fn any_lock() -> impl Strategy<Value = NetLock> {
        (any_key(), any::<u64>(), any_mode(), any_mode()).prop_map(|(key, write_seq, o, n)| {
            NetLock {
                key,
                write_seq,
                old_mode: o,
                new_mode: n,
            }
        })
    }

    fn any_log_trees() -> impl Strategy<Value = Box<LogTrees>> {
        proptest::collection::vec(any::<u8>(), std::mem::size_of::<LogTrees>())
            .prop_map(|b| Box::new(LogTrees::read_from_bytes(&b).unwrap()))
    }

    fn any_root() -> impl Strategy<Value = BtreeRoot> {
        (any::<u64>(), any::<u64>(), any::<u8>())
            .prop_map(|(b, s, h)| BtreeRoot::new(BlockRef::new(b, s), h))
    }

    fn any_roots() -> impl Strategy<Value = Roots> {
        (
            any_root(),
            any_root(),
            any_root(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(a, b, c, i, m)| Roots {
                fs_root: a,
                logs_root: b,
                srch_root: c,
                server_incarnation: i,
                trees_merged: m,
            })
    }

    fn any_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(fsid, format_version, rid, server_term)| Request::Greeting {
                    fsid,
                    format_version,
                    rid,
                    server_term
                }
            ),
            any::<u64>().prop_map(|count| Request::AllocInodes { count }),
            Just(Request::GetLogTrees),
            any_log_trees().prop_map(Request::CommitLogTrees),
            (any_log_trees(), any::<u64>())
                .prop_map(|(lt, unflushed)| Request::CommitLogTreesOpenNext { lt, unflushed }),
            Just(Request::GetRoots),
            Just(Request::GetLastSeq),
            Just(Request::Statfs),
            Just(Request::Farewell),
            any_lock().prop_map(Request::Lock),
        ]
    }

    fn any_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            (any::<u64>(), any::<u64>())
                .prop_map(|(server_term, fsid)| Response::Greeting { server_term, fsid }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(first, count)| Response::AllocInodes { first, count }),
            any_log_trees().prop_map(Response::LogTrees),
            Just(Response::Committed),
            (any_roots(), proptest::option::of(any_log_trees()))
                .prop_map(|(roots, next)| Response::CommittedNext { next, roots }),
            any_roots().prop_map(Response::Roots),
            any::<u64>().prop_map(Response::LastSeq),
            proptest::collection::vec(any::<u64>(), 7).prop_map(|v| Response::Statfs(Statfs {
                fsid: v[0],
                committed_seq: v[1],
                total_meta_blocks: v[2],
                free_meta_blocks: v[3],
                total_data_blocks: v[4],
                free_data_blocks: v[5],
                inode_count: v[6],
            })),
            Just(Response::FarewellDone),
            any_lock().prop_map(Response::Lock),
        ]
    }

    fn any_error() -> impl Strategy<Value = ServerError> {
        prop_oneof![
            (any::<u64>(), any::<u64>())
                .prop_map(|(client, server)| ServerError::WrongFsid { client, server }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(client, server)| ServerError::WrongFormat { client, server }),
            any::<u64>().prop_map(|rid| ServerError::NotGreeted { rid }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(sent, stored)| ServerError::WrongTransaction { sent, stored }),
            ".*".prop_map(ServerError::Invalid),
            ".*".prop_map(ServerError::NoSpace),
            ".*".prop_map(ServerError::Io),
            ".*".prop_map(ServerError::Corrupt),
            ".*".prop_map(ServerError::Unreachable),
            any::<u64>().prop_map(|rid| ServerError::Fenced { rid }),
            Just(ServerError::FlushFirst),
        ]
    }

    fn any_call() -> impl Strategy<Value = ServerCall> {
        prop_oneof![
            any_lock().prop_map(ServerCall::Invalidate),
            any_key().prop_map(|start| ServerCall::LockRecover { start }),
        ]
    }

    fn any_reply() -> impl Strategy<Value = ClientReply> {
        prop_oneof![
            any_lock().prop_map(ClientReply::Invalidated),
            proptest::collection::vec(any_lock(), 0..40).prop_map(ClientReply::Recovered),
        ]
    }

    /// Re-encode a decoded frame with the encoder of its message kind.
    fn reencode(f: &Frame) -> Vec<u8> {
        match &f.msg {
            Message::Request(r) => encode_request(f.id, r),
            Message::Call(c) => encode_call(f.id, c),
            Message::Response(r) => encode_response(f.id, r),
            Message::Reply(r) => encode_reply(f.id, r),
            Message::Ping => Ok(encode_ping()),
        }
        .unwrap()
    }

    proptest! {
        #[test]
        fn every_request_round_trips(id in any::<u64>(), req in any_request()) {
            let bytes = encode_request(id, &req).unwrap();
            let f = decode_frame(&bytes).unwrap();
            prop_assert_eq!(f.id, id);
            let Message::Request(back) = &f.msg else { panic!("{f:?}") };
            prop_assert_eq!(format!("{back:?}"), format!("{req:?}"));
            prop_assert_eq!(reencode(&f), bytes);
        }

        #[test]
        fn every_response_round_trips(id in any::<u64>(), res in any_response()) {
            let res = Ok(res);
            let bytes = encode_response(id, &res).unwrap();
            let f = decode_frame(&bytes).unwrap();
            prop_assert_eq!(f.id, id);
            let Message::Response(back) = &f.msg else { panic!("{f:?}") };
            prop_assert_eq!(format!("{back:?}"), format!("{res:?}"));
            prop_assert_eq!(reencode(&f), bytes);
        }

        #[test]
        fn every_server_error_round_trips(id in any::<u64>(), err in any_error()) {
            let bytes = encode_response(id, &Err(err.clone())).unwrap();
            let f = decode_frame(&bytes).unwrap();
            let Message::Response(Err(back)) = f.msg else { panic!("{f:?}") };
            prop_assert_eq!(back, err);
        }

        #[test]
        fn every_server_call_round_trips(id in any::<u64>(), call in any_call()) {
            let bytes = encode_call(id, &call).unwrap();
            let f = decode_frame(&bytes).unwrap();
            prop_assert_eq!(f.id, id);
            let Message::Call(back) = f.msg else { panic!("{f:?}") };
            prop_assert_eq!(back, call);
        }

        #[test]
        fn every_client_reply_round_trips(id in any::<u64>(), reply in any_reply()) {
            let bytes = encode_reply(id, &reply).unwrap();
            let f = decode_frame(&bytes).unwrap();
            prop_assert_eq!(f.id, id);
            let Message::Reply(back) = f.msg else { panic!("{f:?}") };
            prop_assert_eq!(back, reply);
        }

        #[test]
        fn net_lock_round_trips_with_its_mode_codes(l in any_lock()) {
            let bytes = encode_request(7, &Request::Lock(l)).unwrap();
            prop_assert_eq!(bytes.len(), HEADER_BYTES + NET_LOCK_BYTES);
            prop_assert_eq!(bytes[HEADER_BYTES + 40], mode_code(l.old_mode));
            prop_assert_eq!(bytes[HEADER_BYTES + 41], mode_code(l.new_mode));
            let Message::Request(Request::Lock(back)) = decode_frame(&bytes).unwrap().msg
                else { panic!() };
            prop_assert_eq!(back, l);
        }

        #[test]
        fn random_bytes_never_panic_the_decoder(buf in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_frame(&buf);
            let _ = read_frame(&mut io::Cursor::new(&buf));
        }

        /// Valid headers with random payloads reach every payload decoder; whatever decodes
        /// re-encodes to the same bytes.
        #[test]
        fn random_payloads_decode_or_fail_cleanly(
            k in 0u8..3,
            c in prop_oneof![0u8..12, 62u8..68],
            code in prop_oneof![Just(0u8), 0u8..12],
            id in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let h = Header { kind: k, cmd: c, id, code, len: payload.len() };
            let mut buf = Vec::new();
            h.write(&mut buf);
            buf.extend_from_slice(&payload);
            if let Ok(f) = decode_frame(&buf) {
                let again = reencode(&f);
                let f2 = decode_frame(&again).unwrap();
                prop_assert_eq!(format!("{:?}", f.msg), format!("{:?}", f2.msg));
                if !matches!(f.msg, Message::Ping) {
                    prop_assert_eq!(f.id, f2.id);
                }
            }
        }
    }

    #[test]
    fn bad_magic_version_and_length_are_protocol_errors() {
        let good = encode_request(1, &Request::GetRoots).unwrap();
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(decode_frame(&b), Err(WireError::BadMagic(_))));
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(decode_frame(&b).unwrap_err(), WireError::BadVersion(2));
        let mut b = good.clone();
        b[20..24].copy_from_slice(&((MAX_PAYLOAD as u32) + 1).to_le_bytes());
        assert!(matches!(decode_frame(&b), Err(WireError::TooLarge(_))));
        // read_frame refuses the length before allocating the payload.
        assert!(matches!(
            read_frame(&mut io::Cursor::new(&b)),
            Err(FrameError::Protocol(WireError::TooLarge(_)))
        ));
    }

    #[test]
    fn a_huge_lock_count_is_refused_before_allocating() {
        let mut payload = u32::MAX.to_le_bytes().to_vec();
        payload.extend_from_slice(&[0u8; NET_LOCK_BYTES]);
        let h = Header {
            kind: kind::RESPONSE,
            cmd: cmd::RECOVERED,
            id: 1,
            code: 0,
            len: payload.len(),
        };
        assert_eq!(
            decode_payload(&h, &payload).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn a_committed_next_answer_with_a_bad_next_flag_is_refused() {
        let roots = Roots {
            fs_root: BtreeRoot::default(),
            logs_root: BtreeRoot::default(),
            srch_root: BtreeRoot::default(),
            server_incarnation: 1,
            trees_merged: 2,
        };
        let res = Ok(Response::CommittedNext { next: None, roots });
        let mut b = encode_response(1, &res).unwrap();
        let flag = b.len() - 1;
        assert_eq!(b[flag], 0);
        b[flag] = 2;
        assert_eq!(decode_frame(&b).unwrap_err(), WireError::BadFlag(2));
    }

    #[test]
    fn unknown_modes_and_trailing_bytes_are_refused() {
        let l = NetLock {
            key: Key::MIN,
            write_seq: 1,
            old_mode: LockMode::Null,
            new_mode: LockMode::Write,
        };
        let mut b = encode_request(1, &Request::Lock(l)).unwrap();
        b[HEADER_BYTES + 41] = 4;
        assert_eq!(decode_frame(&b).unwrap_err(), WireError::BadMode(4));
        let mut b = encode_request(1, &Request::GetRoots).unwrap();
        b.push(0);
        b[20] = 1;
        assert_eq!(decode_frame(&b).unwrap_err(), WireError::Trailing(1));
    }

    #[test]
    fn long_error_strings_are_cut_at_a_char_boundary() {
        let s = "é".repeat(MAX_STRING);
        let b = encode_response(1, &Err(ServerError::Io(s))).unwrap();
        let Message::Response(Err(ServerError::Io(back))) = decode_frame(&b).unwrap().msg else {
            panic!()
        };
        assert!(back.len() <= MAX_STRING && back.chars().all(|c| c == 'é'));
    }
}
