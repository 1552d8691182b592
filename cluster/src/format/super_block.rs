//! The super block: the anchor of every persistent structure.
//!
//! A 4 KiB block in one of two slots ([`SUPER_BLKNOS`]) of the metadata device; a copy (without
//! [`SUPER_FLAG_META_DEV`]) at the same place on the data device ties the two devices to the
//! same filesystem. Only the elected server writes it, after every other block of a commit is
//! durable, so a crash leaves either the previous or the new super.

use scoutgw_blockdev::header::{verify, Expect};
use scoutgw_blockdev::meta::read_raw;
use scoutgw_blockdev::{BlockDevice, BlockHeader, BlockSize};
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::layout::{FORMAT_VERSION_MAX, FORMAT_VERSION_MIN, SUPER_BLKNO, SUPER_BLKNOS};
use super::{
    assert_disk_size, AllocListHead, AllocRoot, BtreeRoot, FormatError, QuorumConfig, KIND_SUPER,
};

/// Set in the metadata device's copy of the super block only.
pub const SUPER_FLAG_META_DEV: u64 = 0x1;

/// Volume options: settings stored with the filesystem, changeable while mounted.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct VolumeOptions {
    /// Which of the options below are set.
    pub set_bits: U64,
    /// Size of a data allocation zone, in 4 KiB blocks.
    pub data_alloc_zone_blocks: U64,
    pub _reserved: [U64; 30],
}
assert_disk_size!(VolumeOptions, 256);

/// The super block.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct SuperBlock {
    pub hdr: BlockHeader,
    pub fmt_vers: U64,
    pub flags: U64,
    pub uuid: [u8; 16],
    /// The core sequence number: the last transaction seq the server committed.
    pub seq: U64,
    /// The next inode number the server will hand out.
    pub next_ino: U64,
    pub inode_count: U64,
    /// Metadata device size in 64 KiB blocks.
    pub total_meta_blocks: U64,
    /// Data device size in 4 KiB blocks.
    pub total_data_blocks: U64,
    pub first_meta_blkno: U64,
    pub first_data_blkno: U64,
    pub qconf: QuorumConfig,
    /// The two free metadata extent trees the server alternates between.
    pub meta_alloc: [AllocRoot; 2],
    /// The free data extent tree.
    pub data_alloc: AllocRoot,
    /// Metadata blocks the server's own commits allocate from (double-buffered).
    pub server_meta_avail: [AllocListHead; 2],
    /// Metadata blocks the server's own commits freed (double-buffered).
    pub server_meta_freed: [AllocListHead; 2],
    /// The merged filesystem items.
    pub fs_root: BtreeRoot,
    /// Every client's log_trees records.
    pub logs_root: BtreeRoot,
    pub log_merge: BtreeRoot,
    pub mounted_clients: BtreeRoot,
    pub srch_root: BtreeRoot,
    pub volopt: VolumeOptions,
}
assert_disk_size!(SuperBlock, 872);
const _: () = assert!(core::mem::size_of::<SuperBlock>() <= BlockSize::Small.bytes());

impl SuperBlock {
    pub fn fsid(&self) -> u64 {
        self.hdr.fsid.get()
    }

    /// A 4 KiB block buffer holding this super block (header to be sealed by the writer).
    pub fn to_block(&self) -> scoutgw_blockdev::BlockBuf {
        let mut buf = scoutgw_blockdev::BlockBuf::zeroed(BlockSize::Small.bytes());
        buf.as_mut_slice()[..core::mem::size_of::<SuperBlock>()].copy_from_slice(self.as_bytes());
        buf
    }

    /// Every btree root with its name, in a fixed order.
    pub fn named_trees(&self) -> [(&'static str, BtreeRoot); 8] {
        [
            ("meta_alloc[0]", self.meta_alloc[0].root),
            ("meta_alloc[1]", self.meta_alloc[1].root),
            ("data_alloc", self.data_alloc.root),
            ("fs_root", self.fs_root),
            ("logs_root", self.logs_root),
            ("log_merge", self.log_merge),
            ("mounted_clients", self.mounted_clients),
            ("srch_root", self.srch_root),
        ]
    }

    /// Read and verify one super block copy: header, crc and format version.
    pub fn read_at(dev: &dyn BlockDevice, blkno: u64) -> Result<SuperBlock, FormatError> {
        let not_fs = |reason: String| FormatError::NotAFilesystem {
            path: dev.path().to_path_buf(),
            reason,
        };
        let min_bytes = (SUPER_BLKNO + 1) * BlockSize::Small.bytes() as u64;
        if dev.len_bytes() < min_bytes {
            return Err(not_fs(format!(
                "device has {} bytes, too small to hold a super block at byte {}",
                dev.len_bytes(),
                SUPER_BLKNO * BlockSize::Small.bytes() as u64
            )));
        }
        let buf = read_raw(dev, BlockSize::Small, blkno)?;
        let exp = Expect {
            kind: KIND_SUPER,
            fsid: None,
            blkno,
            seq: None,
        };
        match verify(buf.as_slice(), &exp) {
            Ok(_) => {}
            Err(e @ scoutgw_blockdev::BlockError::BadCrc { .. }) => return Err(e.into()),
            Err(e) => return Err(not_fs(e.to_string())),
        }
        let (sb, _) = SuperBlock::read_from_prefix(buf.as_slice()).expect("4 KiB block");
        let v = sb.fmt_vers.get();
        if !(FORMAT_VERSION_MIN..=FORMAT_VERSION_MAX).contains(&v) {
            return Err(FormatError::UnsupportedVersion {
                path: dev.path().to_path_buf(),
                found: v,
                min: FORMAT_VERSION_MIN,
                max: FORMAT_VERSION_MAX,
            });
        }
        Ok(sb)
    }

    /// Read both super block copies of a metadata device; the valid one with the highest seq
    /// is current.
    pub fn read_current(dev: &dyn BlockDevice) -> Result<CurrentSuper, FormatError> {
        let [a, b] = SUPER_BLKNOS.map(|blkno| (blkno, SuperBlock::read_at(dev, blkno)));
        let (best, other) = match (&a.1, &b.1) {
            (Ok(x), Ok(y)) if y.seq.get() > x.seq.get() && y.fsid() == x.fsid() => (b, a),
            (Ok(_), _) => (a, b),
            (Err(_), Ok(_)) => (b, a),
            (Err(_), Err(_)) => {
                // Prefer the most telling error: a newer format, then damage, then "none".
                let pick = |e: &FormatError| match e {
                    FormatError::UnsupportedVersion { .. } => 0,
                    FormatError::Block(_) => 1,
                    _ => 2,
                };
                let (ea, eb) = (a.1.unwrap_err(), b.1.unwrap_err());
                return Err(if pick(&eb) < pick(&ea) { eb } else { ea });
            }
        };
        let sb = best.1.expect("chosen copy is valid");
        let other_problem = match other.1 {
            Err(e) => Some(format!("super block copy at 4 KiB block {}: {e}", other.0)),
            Ok(o) if o.fsid() != sb.fsid() => Some(format!(
                "super block copy at 4 KiB block {} belongs to filesystem {:016x}",
                other.0,
                o.fsid()
            )),
            Ok(_) => None,
        };
        Ok(CurrentSuper {
            sb,
            blkno: best.0,
            other_problem,
        })
    }

    /// The current super block of a metadata device (see [`SuperBlock::read_current`]).
    pub fn read(dev: &dyn BlockDevice) -> Result<SuperBlock, FormatError> {
        Self::read_current(dev).map(|c| c.sb)
    }

    /// Check that `dev` is at least as large as this super block says the `which` device is.
    pub fn check_device_size(
        &self,
        dev: &dyn BlockDevice,
        which: DeviceRole,
    ) -> Result<(), FormatError> {
        let needed = match which {
            DeviceRole::Meta => self.total_meta_blocks.get() << BlockSize::Large.shift(),
            DeviceRole::Data => self.total_data_blocks.get() << BlockSize::Small.shift(),
        };
        if dev.len_bytes() < needed {
            return Err(FormatError::Truncated {
                path: dev.path().to_path_buf(),
                what: which.name(),
                device_bytes: dev.len_bytes(),
                needed_bytes: needed,
            });
        }
        Ok(())
    }
}

/// The current super block and where it was found.
#[derive(Debug, Clone)]
pub struct CurrentSuper {
    pub sb: SuperBlock,
    /// The slot it was read from; the next super is written to the other one.
    pub blkno: u64,
    /// What is wrong with the other copy, if anything (a torn write, or damage).
    pub other_problem: Option<String>,
}

impl CurrentSuper {
    /// The slot the next super block is written to.
    pub fn next_blkno(&self) -> u64 {
        if self.blkno == SUPER_BLKNOS[0] {
            SUPER_BLKNOS[1]
        } else {
            SUPER_BLKNOS[0]
        }
    }
}

/// Which of the two devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRole {
    Meta,
    Data,
}

impl DeviceRole {
    pub fn name(self) -> &'static str {
        match self {
            DeviceRole::Meta => "metadata device",
            DeviceRole::Data => "data device",
        }
    }
}

/// Does `path` hold something we must not overwrite without `--force`? Returns the fsid of a
/// scoutgw filesystem found there (even one with a newer format version or a bad crc).
pub fn existing_fsid(dev: &dyn BlockDevice) -> Option<u64> {
    if dev.len_bytes() < (SUPER_BLKNO + 1) * BlockSize::Small.bytes() as u64 {
        return None;
    }
    SUPER_BLKNOS.iter().find_map(|&blkno| {
        let buf = read_raw(dev, BlockSize::Small, blkno).ok()?;
        let (hdr, _) = BlockHeader::read_from_prefix(buf.as_slice()).ok()?;
        (hdr.magic.get() == KIND_SUPER.magic).then(|| hdr.fsid.get())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use zerocopy::FromZeros;

    proptest! {
        /// Every field of the super block lands at its own bytes and comes back.
        #[test]
        fn super_block_round_trips(words in proptest::collection::vec(any::<u64>(), 32), uuid: [u8; 16]) {
            let mut sb = SuperBlock::new_zeroed();
            sb.fmt_vers = words[0].into();
            sb.flags = words[1].into();
            sb.uuid = uuid;
            sb.seq = words[2].into();
            sb.next_ino = words[3].into();
            sb.inode_count = words[4].into();
            sb.total_meta_blocks = words[5].into();
            sb.total_data_blocks = words[6].into();
            sb.first_meta_blkno = words[7].into();
            sb.first_data_blkno = words[8].into();
            sb.qconf.version = words[9].into();
            sb.meta_alloc[1].total_len = words[10].into();
            sb.data_alloc.root.block.seq = words[11].into();
            sb.server_meta_avail[0].total_nr = words[12].into();
            sb.server_meta_freed[1].first.blkno = words[13].into();
            sb.fs_root.height = words[14] as u8;
            sb.logs_root.block.blkno = words[15].into();
            sb.log_merge.block.seq = words[16].into();
            sb.mounted_clients.block.blkno = words[17].into();
            sb.srch_root.height = words[18] as u8;
            sb.volopt.set_bits = words[20].into();
            sb.volopt.data_alloc_zone_blocks = words[19].into();
            sb.volopt._reserved[29] = words[21].into();
            let bytes = sb.as_bytes().to_vec();
            let back = SuperBlock::read_from_bytes(&bytes).unwrap();
            prop_assert_eq!(back, sb);
            prop_assert_eq!(&bytes[32..40], &words[0].to_le_bytes());
        }
    }
}
