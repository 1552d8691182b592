//! Verified metadata block I/O ([`MetaDev`]) and raw file-data block I/O ([`DataDev`]).

use std::sync::Arc;

use crate::buf::BlockBuf;
use crate::cache::{BlockCache, CacheStats, CachedBlock};
use crate::device::BlockDevice;
use crate::error::BlockError;
use crate::header::{seal, verify, BlockHeader, BlockKind, BlockRef, BlockSize, Expect};

/// The metadata device of one filesystem, as seen by one process.
///
/// Reads are verified against the header rules of [`crate::header`]; reads through a
/// [`BlockRef`] of a 64 KiB block go through the [`BlockCache`].
#[derive(Debug)]
pub struct MetaDev {
    dev: Arc<dyn BlockDevice>,
    fsid: u64,
    cache: BlockCache,
}

fn block_offset(dev: &dyn BlockDevice, size: BlockSize, blkno: u64) -> Result<u64, BlockError> {
    size.offset_of(blkno).ok_or_else(|| BlockError::Truncated {
        path: dev.path().to_path_buf(),
        op: "address",
        offset: u64::MAX,
        len: size.bytes(),
        device_bytes: dev.len_bytes(),
    })
}

/// Read block `blkno` of `size` into a fresh aligned buffer, unverified.
pub fn read_raw(
    dev: &dyn BlockDevice,
    size: BlockSize,
    blkno: u64,
) -> Result<BlockBuf, BlockError> {
    let mut buf = BlockBuf::zeroed(size.bytes());
    dev.read_at(buf.as_mut_slice(), block_offset(dev, size, blkno)?)?;
    Ok(buf)
}

impl MetaDev {
    /// `fsid` comes from the super block; `cache_bytes` caps the block cache.
    pub fn new(dev: Arc<dyn BlockDevice>, fsid: u64, cache_bytes: u64) -> Self {
        Self {
            dev,
            fsid,
            cache: BlockCache::new(cache_bytes, BlockSize::Large.bytes()),
        }
    }

    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// Who shares this device's flushes: equal for every `MetaDev` over the same device
    /// object in this process (a flush through any of them makes the writes of all of them
    /// durable), and (but for a 2^-64 chance) different for any other device object, other
    /// process or other host. Never 0. A client of a server in its own process on the same
    /// device may leave its blocks for the server's flush (see `cluster::client`).
    pub fn flush_domain(&self) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        // RandomState is seeded at random once per process.
        let nonce = *PROCESS.get_or_init(|| {
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write_u64(nonce);
        h.write_usize(Arc::as_ptr(&self.dev) as *const u8 as usize);
        h.finish().max(1)
    }

    pub fn fsid(&self) -> u64 {
        self.fsid
    }

    /// Number of whole blocks of `size` on the device.
    pub fn total_blocks(&self, size: BlockSize) -> u64 {
        self.dev.len_bytes() >> size.shift()
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Read the version of a block that `r` names.
    ///
    /// A cached copy is served only when it is exactly that version. A block that fails
    /// verification is read once more (a concurrent rewrite by another node may have been
    /// caught half-way) before the error is returned; [`BlockError::Stale`] tells the caller
    /// to refresh its roots.
    pub fn read_ref(&self, kind: BlockKind, r: BlockRef) -> Result<Arc<CachedBlock>, BlockError> {
        let (blkno, seq) = (r.blkno.get(), r.seq.get());
        if let Some(hit) = self.cache.get(blkno, seq) {
            return Ok(hit);
        }
        let exp = Expect {
            kind,
            fsid: Some(self.fsid),
            blkno,
            seq: Some(seq),
        };
        let mut last_err = None;
        for _attempt in 0..2 {
            let buf = read_raw(&*self.dev, kind.size, blkno)?;
            match verify(buf.as_slice(), &exp) {
                Ok(_) => {
                    let block = Arc::new(CachedBlock::new(seq, buf));
                    self.cache.insert(blkno, block.clone());
                    return Ok(block);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("loop ran"))
    }

    /// Read a block at a fixed location (super, quorum), uncached, verifying all but seq.
    pub fn read_fixed(&self, kind: BlockKind, blkno: u64) -> Result<BlockBuf, BlockError> {
        let buf = read_raw(&*self.dev, kind.size, blkno)?;
        verify(
            buf.as_slice(),
            &Expect {
                kind,
                fsid: Some(self.fsid),
                blkno,
                seq: None,
            },
        )?;
        Ok(buf)
    }

    /// Seal `buf` as version `seq` of block `blkno` and write it (not yet durable: see
    /// [`MetaDev::flush`]). 64 KiB blocks are cached as the new version.
    pub fn write_block(
        &self,
        kind: BlockKind,
        blkno: u64,
        seq: u64,
        mut buf: BlockBuf,
    ) -> Result<Arc<CachedBlock>, BlockError> {
        if buf.len() != kind.size.bytes() {
            return Err(BlockError::Invalid(format!(
                "{} block {blkno}: buffer of {} bytes, expected {}",
                kind.name,
                buf.len(),
                kind.size.bytes()
            )));
        }
        seal(buf.as_mut_slice(), kind.magic, self.fsid, blkno, seq);
        let off = block_offset(&*self.dev, kind.size, blkno)?;
        self.cache.forget(blkno);
        self.dev.write_at(buf.as_slice(), off)?;
        let block = Arc::new(CachedBlock::new(seq, buf));
        if kind.size == BlockSize::Large {
            self.cache.insert(blkno, block.clone());
        }
        Ok(block)
    }

    /// The header of a sealed block buffer.
    pub fn header_of(buf: &[u8]) -> Option<BlockHeader> {
        BlockHeader::read_from_prefix(buf).ok().map(|(h, _)| h)
    }

    /// Make every write so far durable.
    pub fn flush(&self) -> Result<(), BlockError> {
        self.dev.flush()
    }
}

use zerocopy::FromBytes;

/// The data device: file contents in 4 KiB blocks, no headers.
#[derive(Debug, Clone)]
pub struct DataDev {
    dev: Arc<dyn BlockDevice>,
}

impl DataDev {
    pub const BLOCK_BYTES: usize = BlockSize::Small.bytes();

    pub fn new(dev: Arc<dyn BlockDevice>) -> Self {
        Self { dev }
    }

    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    pub fn total_blocks(&self) -> u64 {
        self.dev.len_bytes() >> BlockSize::Small.shift()
    }

    fn check(&self, blkno: u64, len: usize) -> Result<u64, BlockError> {
        if !len.is_multiple_of(Self::BLOCK_BYTES) {
            return Err(BlockError::Invalid(format!(
                "data transfer of {len} bytes is not a multiple of {} bytes",
                Self::BLOCK_BYTES
            )));
        }
        block_offset(&*self.dev, BlockSize::Small, blkno)
    }

    /// Read `buf.len() / 4096` consecutive blocks starting at `blkno`.
    pub fn read_blocks(&self, blkno: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let off = self.check(blkno, buf.len())?;
        self.dev.read_at(buf, off)
    }

    /// Write `buf.len() / 4096` consecutive blocks starting at `blkno`.
    pub fn write_blocks(&self, blkno: u64, buf: &[u8]) -> Result<(), BlockError> {
        let off = self.check(blkno, buf.len())?;
        self.dev.write_at(buf, off)
    }

    pub fn flush(&self) -> Result<(), BlockError> {
        self.dev.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DeviceOptions, Faults, FaultyDevice, FileDevice};

    const BTREE: BlockKind = BlockKind {
        name: "btree",
        magic: 0x1234_5678,
        size: BlockSize::Large,
    };
    const OTHER: BlockKind = BlockKind {
        name: "other",
        magic: 0x8765_4321,
        size: BlockSize::Large,
    };

    fn meta_dev(blocks: u64) -> (tempfile::NamedTempFile, MetaDev) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(blocks * 65536).unwrap();
        let d = FileDevice::open(f.path(), DeviceOptions::default()).unwrap();
        (f, MetaDev::new(Arc::new(d), 0xABCD, 4 << 20))
    }

    #[test]
    fn flush_domains_are_shared_only_through_the_same_device_object() {
        let (f, md) = meta_dev(4);
        let same = MetaDev::new(md.device().clone(), 0xABCD, 0);
        assert_eq!(md.flush_domain(), same.flush_domain());
        assert_ne!(md.flush_domain(), 0);
        let reopened = FileDevice::open(f.path(), DeviceOptions::default()).unwrap();
        let other = MetaDev::new(Arc::new(reopened), 0xABCD, 0);
        assert_ne!(
            md.flush_domain(),
            other.flush_domain(),
            "another open of the same file is another device object"
        );
    }

    fn body(fill: u8) -> BlockBuf {
        let mut b = BlockBuf::zeroed(65536);
        b.as_mut_slice()[64..].fill(fill);
        b
    }

    #[test]
    fn written_block_reads_back_through_its_ref() {
        let (_f, m) = meta_dev(16);
        m.write_block(BTREE, 3, 7, body(9)).unwrap();
        m.flush().unwrap();
        let b = m.read_ref(BTREE, BlockRef::new(3, 7)).unwrap();
        assert_eq!(b.data.as_slice()[100], 9);
    }

    #[test]
    fn rewritten_block_is_stale_for_the_old_ref() {
        let (f, m) = meta_dev(16);
        m.write_block(BTREE, 3, 7, body(1)).unwrap();
        // Another process rewrites block 3 as seq 9 (it was freed and reused).
        let other = MetaDev::new(
            Arc::new(FileDevice::open(f.path(), DeviceOptions::default()).unwrap()),
            0xABCD,
            0,
        );
        other.write_block(OTHER, 3, 9, body(2)).unwrap();
        // Our cache still has seq 7: that is the immutable content of ref (3, 7).
        assert_eq!(
            m.read_ref(BTREE, BlockRef::new(3, 7))
                .unwrap()
                .data
                .as_slice()[100],
            1
        );
        // A process without it cached sees the block is stale.
        let err = other.read_ref(BTREE, BlockRef::new(3, 7)).unwrap_err();
        assert!(err.is_stale(), "{err:?}");
        // And the new version reads fine everywhere.
        assert!(m.read_ref(OTHER, BlockRef::new(3, 9)).is_ok());
    }

    #[test]
    fn torn_write_reads_as_bad_crc() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(16 * 65536).unwrap();
        let fd = Arc::new(FaultyDevice::new(
            FileDevice::open(f.path(), DeviceOptions::default()).unwrap(),
        ));
        let m = MetaDev::new(fd.clone(), 1, 0);
        m.write_block(BTREE, 2, 1, body(1)).unwrap();
        fd.set_faults(Faults {
            tear_next_write_at: Some(4096),
            ..Faults::default()
        });
        m.write_block(BTREE, 2, 2, body(2)).unwrap();
        let err = m.read_ref(BTREE, BlockRef::new(2, 2)).unwrap_err();
        assert!(matches!(err, BlockError::BadCrc { .. }), "{err:?}");
    }

    #[test]
    fn read_beyond_device_is_truncated() {
        let (_f, m) = meta_dev(4);
        let err = m.read_ref(BTREE, BlockRef::new(4, 1)).unwrap_err();
        assert!(matches!(err, BlockError::Truncated { .. }), "{err:?}");
        let err = m.read_ref(BTREE, BlockRef::new(u64::MAX, 1)).unwrap_err();
        assert!(matches!(err, BlockError::Truncated { .. }), "{err:?}");
    }

    #[test]
    fn wrong_size_buffer_is_refused() {
        let (_f, m) = meta_dev(4);
        let err = m
            .write_block(BTREE, 1, 1, BlockBuf::zeroed(4096))
            .unwrap_err();
        assert!(matches!(err, BlockError::Invalid(_)));
    }

    #[test]
    fn data_blocks_round_trip() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(64 * 4096).unwrap();
        let d = DataDev::new(Arc::new(
            FileDevice::open(f.path(), DeviceOptions::default()).unwrap(),
        ));
        assert_eq!(d.total_blocks(), 64);
        d.write_blocks(10, &[5u8; 8192]).unwrap();
        let mut b = [0u8; 8192];
        d.read_blocks(10, &mut b).unwrap();
        assert_eq!(b, [5u8; 8192]);
        assert!(d.write_blocks(63, &[0u8; 8192]).is_err());
        assert!(d.read_blocks(0, &mut [0u8; 100]).is_err());
    }
}
