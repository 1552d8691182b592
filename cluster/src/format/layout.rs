//! Fixed locations and limits of the format.

use scoutgw_blockdev::BlockSize;

/// Oldest format version this build reads and writes.
pub const FORMAT_VERSION_MIN: u64 = 1;
/// Newest format version this build reads and writes.
pub const FORMAT_VERSION_MAX: u64 = 1;

/// The super block, in 4 KiB units, on both devices (byte 64 KiB). Blocks 0..15 are left
/// unused for boot loaders and partition labels.
pub const SUPER_BLKNO: u64 = 16;
/// The second super block slot on the metadata device (byte 60 KiB). The server writes each
/// new super into the slot that does not hold the current one, so a torn super write always
/// leaves the previous super intact; readers take the valid copy with the highest seq.
pub const SUPER_ALT_BLKNO: u64 = 15;
/// Both super block slots of the metadata device.
pub const SUPER_BLKNOS: [u64; 2] = [SUPER_BLKNO, SUPER_ALT_BLKNO];
/// Quorum block of slot `n` is at 4 KiB block `QUORUM_BLKNO + n`, on the metadata device.
pub const QUORUM_BLKNO: u64 = 17;
/// Number of quorum slots, and of quorum blocks.
pub const QUORUM_MAX_SLOTS: usize = 15;
/// First allocatable 64 KiB metadata block (byte 128 KiB).
pub const META_DEV_START_BLKNO: u64 = 2;
/// First allocatable 4 KiB data block (byte 256 KiB).
pub const DATA_DEV_START_BLKNO: u64 = 64;

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;
/// First inode number the server hands out after mkfs.
pub const FIRST_ALLOC_INO: u64 = 1024;

/// Size below which mkfs refuses a device unless `--allow-small-size` (as scoutfs).
pub const RECOMMENDED_MIN_DEVICE_BYTES: u64 = 64 << 30;
/// Absolute minimum metadata device size: 1024 metadata blocks.
pub const MIN_META_DEVICE_BYTES: u64 = 64 << 20;
/// Absolute minimum data device size.
pub const MIN_DATA_DEVICE_BYTES: u64 = 16 << 20;

/// Metadata blocks are 64 KiB.
pub const META_BLOCK: BlockSize = BlockSize::Large;
/// Data blocks (and super/quorum blocks) are 4 KiB.
pub const DATA_BLOCK: BlockSize = BlockSize::Small;

/// The largest value a btree item may carry.
pub const BTREE_MAX_VAL_LEN: usize = 896;
/// Deepest btree we will follow (a 4 EB tree needs 17 levels).
pub const BTREE_MAX_HEIGHT: u8 = 20;
