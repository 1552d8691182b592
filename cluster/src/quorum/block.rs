//! Quorum block I/O, straight on the metadata device (digest §1.4).
//!
//! Quorum blocks are read and written with positional I/O on the [`BlockDevice`], never
//! through a block cache: other members write their blocks at any time, so every read goes
//! to the device. Reads verify the header (fsid, blkno, magic, crc). A member writes only its
//! own slot's block ([`OwnBlock`]); every write increments `write_nr`, stamps the event with
//! it, our rid, the term and the wall-clock time, and is flushed before it counts.

use std::sync::Arc;
use std::time::SystemTime;

use scoutgw_blockdev::header::{seal, verify};
use scoutgw_blockdev::meta::read_raw;
use scoutgw_blockdev::{BlockBuf, BlockDevice, BlockError, BlockSize, Expect};
use zerocopy::{FromBytes, IntoBytes};

use crate::format::layout::QUORUM_BLKNO;
use crate::format::quorum::{QuorumEvent, QuorumEventKind};
use crate::format::{QuorumBlock, Timespec, KIND_QUORUM};

use super::QuorumError;

/// The 4 KiB block number of `slot`'s quorum block.
pub fn quorum_blkno(slot: usize) -> u64 {
    QUORUM_BLKNO + slot as u64
}

fn read_once(dev: &dyn BlockDevice, fsid: u64, blkno: u64) -> Result<QuorumBlock, BlockError> {
    let buf = read_raw(dev, BlockSize::Small, blkno)?;
    verify(
        buf.as_slice(),
        &Expect {
            kind: KIND_QUORUM,
            fsid: Some(fsid),
            blkno,
            seq: None,
        },
    )?;
    let (q, _) = QuorumBlock::read_from_prefix(buf.as_slice()).expect("4 KiB block");
    Ok(q)
}

/// Read and verify `slot`'s quorum block from the device. A block that fails verification
/// is read once more: its owner may have been caught half-way through rewriting it.
pub fn read_quorum_block(
    dev: &dyn BlockDevice,
    fsid: u64,
    slot: usize,
) -> Result<QuorumBlock, BlockError> {
    let blkno = quorum_blkno(slot);
    match read_once(dev, fsid, blkno) {
        Err(e) if e.is_corruption() => read_once(dev, fsid, blkno),
        r => r,
    }
}

/// The greatest term of any event in the block.
pub fn max_term(q: &QuorumBlock) -> u64 {
    q.events.iter().map(|e| e.term.get()).max().unwrap_or(0)
}

/// The block shows an elected leader whose server has not stopped: `ELECT.term > STOP.term`.
pub fn shows_live_leader(q: &QuorumBlock) -> bool {
    q.event(QuorumEventKind::Elect).term.get() > q.event(QuorumEventKind::Stop).term.get()
}

fn now_timespec() -> Timespec {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timespec {
        sec: d.as_secs().into(),
        nsec: d.subsec_nanos().into(),
        _pad: [0; 4],
    }
}

/// The quorum block of the slot this member owns: the only block it ever writes.
#[derive(Debug)]
pub struct OwnBlock {
    dev: Arc<dyn BlockDevice>,
    fsid: u64,
    slot: usize,
    rid: u64,
}

impl OwnBlock {
    /// Take slot `slot` for mount `rid`: record `BEGIN` with `term`. Events of a previous
    /// mount in the slot (its `ELECT`, `FENCE`, `STOP`) stay until overwritten, so the next
    /// server can still see and fence it.
    pub fn begin(
        dev: Arc<dyn BlockDevice>,
        fsid: u64,
        slot: usize,
        rid: u64,
        term: u64,
    ) -> Result<Self, QuorumError> {
        let own = Self {
            dev,
            fsid,
            slot,
            rid,
        };
        let q = read_quorum_block(&*own.dev, fsid, slot).map_err(|e| own.err(e))?;
        own.write_event(q, QuorumEventKind::Begin, term)?;
        Ok(own)
    }

    pub fn slot(&self) -> usize {
        self.slot
    }

    pub fn rid(&self) -> u64 {
        self.rid
    }

    fn err(&self, source: BlockError) -> QuorumError {
        QuorumError::Block {
            slot: self.slot,
            source,
        }
    }

    /// Read our block and check that its `BEGIN` event is still ours: anything else means
    /// another mount writes the slot.
    pub fn read(&self) -> Result<QuorumBlock, QuorumError> {
        let q = read_quorum_block(&*self.dev, self.fsid, self.slot).map_err(|e| self.err(e))?;
        let found = q.event(QuorumEventKind::Begin).rid.get();
        if found != self.rid {
            return Err(QuorumError::SlotTaken {
                slot: self.slot,
                ours: self.rid,
                found,
            });
        }
        Ok(q)
    }

    /// Record event `kind` with `term` (read, check, modify, write, flush).
    pub fn record(&self, kind: QuorumEventKind, term: u64) -> Result<QuorumBlock, QuorumError> {
        let q = self.read()?;
        self.write_event(q, kind, term)
    }

    fn write_event(
        &self,
        mut q: QuorumBlock,
        kind: QuorumEventKind,
        term: u64,
    ) -> Result<QuorumBlock, QuorumError> {
        let write_nr = q.write_nr.get() + 1;
        q.write_nr = write_nr.into();
        q.events[kind as usize] = QuorumEvent {
            write_nr: write_nr.into(),
            rid: self.rid.into(),
            term: term.into(),
            ts: now_timespec(),
        };
        let blkno = quorum_blkno(self.slot);
        let mut buf = BlockBuf::zeroed(BlockSize::Small.bytes());
        buf.as_mut_slice()[..core::mem::size_of::<QuorumBlock>()].copy_from_slice(q.as_bytes());
        seal(
            buf.as_mut_slice(),
            KIND_QUORUM.magic,
            self.fsid,
            blkno,
            write_nr,
        );
        let offset = blkno << BlockSize::Small.shift();
        self.dev
            .write_at(buf.as_slice(), offset)
            .and_then(|()| self.dev.flush())
            .map_err(|e| self.err(e))?;
        let (sealed, _) = QuorumBlock::read_from_prefix(buf.as_slice()).expect("4 KiB block");
        Ok(sealed)
    }
}
