//! The one error type of block I/O and block verification.

use std::io;
use std::path::PathBuf;

/// Why a block could not be read, verified or written.
///
/// The verification variants are distinct so that callers can react precisely: a
/// [`BlockError::Stale`] block means "another node freed and rewrote this block since you
/// sampled the root that led you here" and is answered by refreshing roots and retrying,
/// while [`BlockError::BadCrc`] on a block whose identity matches is real corruption (or a
/// torn write) and must be reported.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("{path}: cannot open device: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{path}: I/O error during {op} of {len} bytes at byte {offset}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        offset: u64,
        len: usize,
        #[source]
        source: io::Error,
    },

    #[error(
        "{path}: device is truncated: {op} of {len} bytes at byte {offset} runs past its end \
         ({device_bytes} bytes)"
    )]
    Truncated {
        path: PathBuf,
        op: &'static str,
        offset: u64,
        len: usize,
        device_bytes: u64,
    },

    #[error("block {blkno}: bad magic {found:#010x}, expected {expected:#010x} ({kind})")]
    BadMagic {
        blkno: u64,
        kind: &'static str,
        expected: u32,
        found: u32,
    },

    #[error("block {blkno}: bad crc32c: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc {
        blkno: u64,
        stored: u32,
        computed: u32,
    },

    #[error("block {blkno}: belongs to filesystem {found:#018x}, expected {expected:#018x}")]
    WrongFsid {
        blkno: u64,
        expected: u64,
        found: u64,
    },

    #[error(
        "block {blkno}: header claims to be block {found} (misdirected write or wrong device)"
    )]
    WrongBlkno { blkno: u64, found: u64 },

    #[error(
        "block {blkno}: stale reference: expected seq {expected_seq}, block now holds seq \
         {found_seq} (rewritten since the reference was read)"
    )]
    Stale {
        blkno: u64,
        expected_seq: u64,
        found_seq: u64,
    },

    #[error("block {blkno}: never written (all-zero header)")]
    Unwritten { blkno: u64 },

    #[error("invalid block request: {0}")]
    Invalid(String),
}

impl BlockError {
    /// True for errors that can be caused by following an out-of-date reference into a block
    /// that has since been freed and rewritten. The caller refreshes its roots and retries;
    /// if the error persists with fresh roots it is corruption.
    pub fn is_stale(&self) -> bool {
        matches!(self, BlockError::Stale { .. })
    }

    /// True when the bytes read are not the block that was asked for.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            BlockError::BadMagic { .. }
                | BlockError::BadCrc { .. }
                | BlockError::WrongFsid { .. }
                | BlockError::WrongBlkno { .. }
                | BlockError::Unwritten { .. }
        )
    }
}
