//! Alloc lists in memory.

use scoutgw_blockdev::{BlockBuf, BlockRef, BlockSize, MetaDev};
use zerocopy::little_endian::U64;
use zerocopy::{FromZeros, IntoBytes};

use crate::btree::{BtreeError, MetaAlloc};
use crate::format::alloc::{AllocListBlock, ALLOC_LIST_MAX_BLKNOS};
use crate::format::{AllocListBlockHeader, AllocListHead, FormatError, KIND_ALLOC_LIST};

/// The block numbers of an alloc list, and the list blocks its committed version occupies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaList {
    entries: Vec<u64>,
    /// Blocks holding the committed version of this list; freed when it is rewritten.
    list_blocks: Vec<u64>,
}

impl MetaList {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_entries(entries: Vec<u64>) -> Self {
        Self {
            entries,
            list_blocks: Vec::new(),
        }
    }

    /// Read a committed list.
    pub fn load(md: &MetaDev, head: &AllocListHead) -> Result<Self, BtreeError> {
        let mut list = Self::new();
        let mut next = head.first;
        let limit = md.total_blocks(BlockSize::Large);
        while !next.is_null() {
            if list.list_blocks.len() as u64 >= limit {
                return Err(FormatError::corrupt("alloc list", "list loops").into());
            }
            let block = md.read_ref(KIND_ALLOC_LIST, next)?;
            let view = AllocListBlock::parse(block.data.as_slice(), next.blkno.get())?;
            list.entries.extend(view.blknos.iter().map(|b| b.get()));
            list.list_blocks.push(next.blkno.get());
            next = view.header.next;
        }
        if list.entries.len() as u64 != head.total_nr.get() {
            return Err(FormatError::corrupt(
                "alloc list",
                format!(
                    "head records {} blocks, the list holds {}",
                    head.total_nr.get(),
                    list.entries.len()
                ),
            )
            .into());
        }
        Ok(list)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn pop(&mut self) -> Option<u64> {
        self.entries.pop()
    }

    pub fn push(&mut self, blkno: u64) {
        self.entries.push(blkno);
    }

    pub fn entries(&self) -> &[u64] {
        &self.entries
    }

    /// Take every entry, leaving the list empty (its list blocks are still to be freed).
    pub fn take_entries(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.entries)
    }

    /// The blocks the committed version of the list occupies.
    pub fn list_blocks(&self) -> &[u64] {
        &self.list_blocks
    }

    /// Write this list as new list blocks of version `seq`, their blocks allocated from
    /// `alloc`; the caller must have taken (and freed) the previous list blocks first.
    pub fn write_new(
        &mut self,
        md: &MetaDev,
        seq: u64,
        alloc: &mut dyn MetaAlloc,
    ) -> Result<AllocListHead, BtreeError> {
        debug_assert!(self.list_blocks.is_empty(), "old list blocks not taken");
        let blocks = (0..blocks_for(self.entries.len()))
            .map(|_| alloc.alloc_meta())
            .collect::<Result<Vec<u64>, BtreeError>>()?;
        let head = write_list(md, seq, &self.entries, &blocks)?;
        self.list_blocks = blocks;
        Ok(head)
    }

    /// Forget the list blocks (the caller freed them).
    pub fn take_list_blocks(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.list_blocks)
    }
}

/// A transaction's metadata allocator: allocate from `avail`, free into `freed`.
#[derive(Debug, Clone, Default)]
pub struct ListAlloc {
    pub avail: MetaList,
    pub freed: MetaList,
}

impl MetaAlloc for ListAlloc {
    fn alloc_meta(&mut self) -> Result<u64, BtreeError> {
        self.avail.pop().ok_or(BtreeError::NoSpace)
    }

    fn free_meta(&mut self, blkno: u64) -> Result<(), BtreeError> {
        self.freed.push(blkno);
        Ok(())
    }

    fn free_unwritten(&mut self, blkno: u64) -> Result<(), BtreeError> {
        self.avail.push(blkno);
        Ok(())
    }
}

/// List blocks a list of `entries` block numbers takes.
pub fn blocks_for(entries: usize) -> usize {
    entries.div_ceil(ALLOC_LIST_MAX_BLKNOS)
}

impl ListAlloc {
    pub fn new(avail: MetaList, freed: MetaList) -> Self {
        Self { avail, freed }
    }

    /// Write both lists as new list blocks of version `seq`, allocated from `avail`; the
    /// blocks of their previous versions go to `freed`. Returns the new (avail, freed) heads.
    pub fn write_lists(
        &mut self,
        md: &MetaDev,
        seq: u64,
    ) -> Result<(AllocListHead, AllocListHead), BtreeError> {
        let old: Vec<u64> = self
            .avail
            .take_list_blocks()
            .into_iter()
            .chain(self.freed.take_list_blocks())
            .collect();
        self.freed.entries.extend(old);
        // Blocks for the lists come out of avail, which shrinks the avail list itself. Take
        // the fewest blocks `n` that can hold both lists once `n` entries have left avail:
        // the need only falls as `n` grows, by at most one block per step, so counting up
        // from zero finds it (chasing `n = need(n)` instead can flip between two values
        // forever when avail sits on a block boundary). The smallest such `n` is at most one
        // block more than the lists need; that block goes to the avail list, whose entries
        // are then spread over all its blocks.
        let freed_need = blocks_for(self.freed.len());
        let need = |n: usize| blocks_for(self.avail.len().saturating_sub(n)) + freed_need;
        let mut n = 0;
        while n < need(n) {
            n += 1;
        }
        if self.avail.len() < n {
            return Err(BtreeError::NoSpace);
        }
        let mut store: Vec<u64> = (0..n).map(|_| self.avail.pop().expect("counted")).collect();
        let avail_blocks: Vec<u64> = store.drain(..n - freed_need).collect();
        let freed_blocks = store;
        let avail_head = write_list(md, seq, &self.avail.entries, &avail_blocks)?;
        let freed_head = write_list(md, seq, &self.freed.entries, &freed_blocks)?;
        self.avail.list_blocks = avail_blocks;
        self.freed.list_blocks = freed_blocks;
        Ok((avail_head, freed_head))
    }
}

fn write_list(
    md: &MetaDev,
    seq: u64,
    entries: &[u64],
    blocks: &[u64],
) -> Result<AllocListHead, BtreeError> {
    // Entries spread evenly over the blocks: each holds at most ALLOC_LIST_MAX_BLKNOS
    // because the caller gives at least blocks_for(entries) blocks; with one spare block a
    // list of few entries may leave a block empty, which readers accept.
    let nr_blocks = blocks.len();
    debug_assert!(nr_blocks >= blocks_for(entries.len()));
    let chunks: Vec<&[u64]> = (0..nr_blocks)
        .map(|i| &entries[i * entries.len() / nr_blocks..(i + 1) * entries.len() / nr_blocks])
        .collect();
    let hdr_len = core::mem::size_of::<AllocListBlockHeader>();
    for (i, (chunk, blkno)) in chunks.iter().zip(blocks).enumerate() {
        let mut buf = BlockBuf::zeroed(BlockSize::Large.bytes());
        let mut h = AllocListBlockHeader::new_zeroed();
        if let Some(next) = blocks.get(i + 1) {
            h.next = BlockRef::new(*next, seq);
        }
        h.nr = (chunk.len() as u32).into();
        let bytes = buf.as_mut_slice();
        bytes[..hdr_len].copy_from_slice(h.as_bytes());
        for (j, b) in chunk.iter().enumerate() {
            let at = hdr_len + j * 8;
            bytes[at..at + 8].copy_from_slice(U64::new(*b).as_bytes());
        }
        md.write_block(KIND_ALLOC_LIST, *blkno, seq, buf)?;
    }
    Ok(match blocks.first() {
        None => AllocListHead::default(),
        Some(first) => AllocListHead {
            first: BlockRef::new(*first, seq),
            total_nr: (entries.len() as u64).into(),
            first_nr: (chunks[0].len() as u32).into(),
            flags: 0.into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::tests::test_dev;

    #[test]
    fn lists_round_trip_through_blocks_and_free_their_old_blocks() {
        let (_f, md) = test_dev(40_000);
        let avail: Vec<u64> = (100..30_000).collect();
        let mut a = ListAlloc::new(MetaList::from_entries(avail), MetaList::new());
        for b in 30_000..39_000 {
            a.free_meta(b).unwrap();
        }
        let (ah, fh) = a.write_lists(&md, 7).unwrap();
        let used_for_lists = a.avail.list_blocks().len() + a.freed.list_blocks().len();
        assert_eq!(used_for_lists, 4 + 2);
        let avail = MetaList::load(&md, &ah).unwrap();
        let freed = MetaList::load(&md, &fh).unwrap();
        assert_eq!(avail.len() + used_for_lists, 29_900);
        assert_eq!(freed.len(), 9_000);
        assert_eq!(avail.entries(), a.avail.entries());
        // Rewriting frees the old list blocks into the freed list.
        let mut b = ListAlloc::new(avail, freed);
        let old: Vec<u64> = b.avail.list_blocks().to_vec();
        b.write_lists(&md, 8).unwrap();
        for blk in old {
            assert!(b.freed.entries().contains(&blk));
        }
    }

    /// With avail one block's worth plus two entries, taking one list block leaves two
    /// blocks' worth and taking two leaves one: the old fixed-point loop flipped between 1
    /// and 2 forever. Sizes around every boundary must finish and round-trip.
    #[test]
    fn list_sizes_on_block_boundaries_finish_and_round_trip() {
        let m = ALLOC_LIST_MAX_BLKNOS;
        let (_f, md) = test_dev(4 * m as u64 + 200);
        let mut seq = 1;
        for avail_len in [
            0,
            1,
            2,
            m - 1,
            m,
            m + 1,
            m + 2,
            m + 3,
            2 * m + 2,
            2 * m + 3,
            3 * m,
        ] {
            for freed_len in [0, 1, m, m + 1] {
                let avail: Vec<u64> = (100..100 + avail_len as u64).collect();
                let freed: Vec<u64> =
                    (100 + 3 * m as u64..100 + 3 * m as u64 + freed_len as u64).collect();
                let mut a =
                    ListAlloc::new(MetaList::from_entries(avail), MetaList::from_entries(freed));
                let res = a.write_lists(&md, seq);
                seq += 1;
                if avail_len < 3 && freed_len > 0 {
                    // Possibly too few blocks to hold the freed list: NoSpace, never a hang.
                    if let Err(e) = res {
                        assert!(matches!(e, BtreeError::NoSpace), "{e:?}");
                        continue;
                    }
                }
                let (ah, fh) = res.unwrap();
                let used = a.avail.list_blocks().len() + a.freed.list_blocks().len();
                assert_eq!(
                    a.avail.len() + used,
                    avail_len,
                    "avail {avail_len} freed {freed_len}"
                );
                assert!(a.avail.list_blocks().len() >= blocks_for(a.avail.len()));
                assert!(a.avail.list_blocks().len() <= blocks_for(a.avail.len()) + 1);
                assert_eq!(
                    MetaList::load(&md, &ah).unwrap().entries(),
                    a.avail.entries()
                );
                assert_eq!(MetaList::load(&md, &fh).unwrap().len(), freed_len);
            }
        }
    }

    #[test]
    fn empty_lists_have_null_heads() {
        let (_f, md) = test_dev(16);
        let mut a = ListAlloc::default();
        let (ah, fh) = a.write_lists(&md, 1).unwrap();
        assert!(ah.first.is_null() && fh.first.is_null());
        assert!(MetaList::load(&md, &ah).unwrap().is_empty());
    }
}
