//! Writing a new filesystem onto a metadata and a data device.
//!
//! Everything is validated before the first byte is written, so a refused mkfs leaves both
//! devices untouched. The blocks are written in an order that makes a crash harmless: the
//! allocator and quorum blocks first, then the data device's super copy, and the metadata
//! device's super block last, each step flushed. Until that final super block is durable the
//! devices hold no (new) filesystem.
//!
//! What mkfs writes on the metadata device (64 KiB block numbers):
//!
//! | blkno | contents |
//! |---|---|
//! | 2 | leaf of `meta_alloc[0]`: the free metadata extent |
//! | 3 | leaf of `data_alloc`: the free data extent |
//! | 4 | alloc list block: the first metadata blocks of `server_meta_avail[0]` |
//! | 5 | leaf of `fs_root`: the root directory's inode and its `meta_seq` index item |
//! | 6.. | free: the first [`SERVER_AVAIL_FILL`] (or fewer) in the list, the rest in `meta_alloc[0]` |
//!
//! All other trees (`meta_alloc[1]`, `logs_root`, `log_merge`, `mounted_clients`,
//! `srch_root`) start empty.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use scoutgw_blockdev::{BlockBuf, BlockDevice, BlockError, BlockRef, BlockSize, MetaDev};
use zerocopy::little_endian::U64;
use zerocopy::{FromZeros, IntoBytes};

use crate::format::alloc::{free_extent_keys, ALLOC_LIST_MAX_BLKNOS};
use crate::format::layout::*;
use crate::format::super_block::{existing_fsid, SUPER_FLAG_META_DEV};
use crate::format::{
    AllocListBlockHeader, AllocListHead, AllocRoot, BtreeBlockBuilder, BtreeRoot, InetAddr,
    QuorumBlock, SuperBlock, KIND_ALLOC_LIST, KIND_BTREE, KIND_QUORUM, KIND_SUPER,
};

/// Metadata blocks mkfs places in the server's first avail list so its first commit can
/// allocate without touching the extent trees.
pub const SERVER_AVAIL_FILL: u64 = 1024;

/// One quorum slot: `NR,ADDR,PORT` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumSlot {
    pub nr: u8,
    pub addr: SocketAddrV4,
}

impl FromStr for QuorumSlot {
    type Err = MkfsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| MkfsError::BadSlot {
            spec: s.to_string(),
            why,
        };
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let [nr, addr, port] = parts.as_slice() else {
            return Err(bad(format!(
                "expected NR,ADDR,PORT (three comma-separated fields), got {} field(s)",
                parts.len()
            )));
        };
        let nr: u8 = nr
            .parse()
            .ok()
            .filter(|n| (*n as usize) < QUORUM_MAX_SLOTS)
            .ok_or_else(|| {
                bad(format!(
                    "slot number {nr:?} is not between 0 and {}",
                    QUORUM_MAX_SLOTS - 1
                ))
            })?;
        let ip: Ipv4Addr = addr
            .parse()
            .map_err(|_| bad(format!("{addr:?} is not an IPv4 address")))?;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return Err(bad(format!(
                "{ip} cannot be a member's address: use the address the member listens on"
            )));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(format!("port {port:?} is not between 1 and 65535")))?;
        Ok(QuorumSlot {
            nr,
            addr: SocketAddrV4::new(ip, port),
        })
    }
}

impl fmt::Display for QuorumSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{}", self.nr, self.addr.ip(), self.addr.port())
    }
}

/// What to make.
#[derive(Debug, Clone)]
pub struct MkfsOptions {
    pub slots: Vec<QuorumSlot>,
    /// Overwrite an existing filesystem.
    pub force: bool,
    /// Accept devices below [`RECOMMENDED_MIN_DEVICE_BYTES`] (down to the hard minimums).
    pub allow_small_size: bool,
    /// Use at most this many bytes of the metadata device.
    pub max_meta_bytes: Option<u64>,
    /// Use at most this many bytes of the data device.
    pub max_data_bytes: Option<u64>,
    pub format_version: u64,
}

impl Default for MkfsOptions {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            force: false,
            allow_small_size: false,
            max_meta_bytes: None,
            max_data_bytes: None,
            format_version: FORMAT_VERSION_MAX,
        }
    }
}

/// Why mkfs refused or failed. Every refusal happens before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum MkfsError {
    #[error("invalid quorum slot {spec:?}: {why}")]
    BadSlot { spec: String, why: String },

    #[error("at least one quorum slot is required (-Q NR,ADDR,PORT)")]
    NoSlots,

    #[error("quorum slot {0} is given more than once")]
    DuplicateSlot(u8),

    #[error("quorum slots {0} and {1} have the same address {2}")]
    DuplicateAddr(u8, u8, SocketAddrV4),

    #[error(
        "{path}: {what} of {bytes} bytes is below the minimum of {min} bytes{hint}",
        hint = if *allow_small { "" } else { " (use --allow-small-size for test devices)" }
    )]
    TooSmall {
        path: PathBuf,
        what: &'static str,
        bytes: u64,
        min: u64,
        allow_small: bool,
    },

    #[error(
        "{path}: holds a scoutgw filesystem (fsid {fsid:#018x}); refusing to overwrite it \
         without --force"
    )]
    Existing { path: PathBuf, fsid: u64 },

    #[error("the metadata and data devices are the same file ({0})")]
    SameDevice(PathBuf),

    #[error(
        "format version {found} is not supported; this build writes versions \
         {FORMAT_VERSION_MIN} to {FORMAT_VERSION_MAX}"
    )]
    UnsupportedVersion { found: u64 },

    #[error(transparent)]
    Block(#[from] BlockError),
}

impl MkfsError {
    /// True when the request itself was wrong (as opposed to a device failing).
    pub fn is_usage(&self) -> bool {
        !matches!(self, MkfsError::Block(_))
    }
}

/// What mkfs made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MkfsSummary {
    /// The fsid in hex, as `print` shows it.
    pub fsid: String,
    pub uuid: String,
    pub format_version: u64,
    pub total_meta_blocks: u64,
    pub total_data_blocks: u64,
    pub free_meta_blocks: u64,
    pub free_data_blocks: u64,
    pub quorum_slots: Vec<String>,
}

fn validate_slots(slots: &[QuorumSlot]) -> Result<(), MkfsError> {
    if slots.is_empty() {
        return Err(MkfsError::NoSlots);
    }
    let mut seen = BTreeSet::new();
    for s in slots {
        if !seen.insert(s.nr) {
            return Err(MkfsError::DuplicateSlot(s.nr));
        }
    }
    for (i, a) in slots.iter().enumerate() {
        if let Some(b) = slots[i + 1..].iter().find(|b| b.addr == a.addr) {
            return Err(MkfsError::DuplicateAddr(a.nr, b.nr, a.addr));
        }
    }
    Ok(())
}

fn usable_bytes(dev: &dyn BlockDevice, max: Option<u64>) -> u64 {
    max.map_or(dev.len_bytes(), |m| m.min(dev.len_bytes()))
}

fn check_size(
    dev: &dyn BlockDevice,
    what: &'static str,
    bytes: u64,
    hard_min: u64,
    allow_small: bool,
) -> Result<(), MkfsError> {
    let min = if allow_small {
        hard_min
    } else {
        RECOMMENDED_MIN_DEVICE_BYTES
    };
    if bytes < min {
        return Err(MkfsError::TooSmall {
            path: dev.path().to_path_buf(),
            what,
            bytes,
            min,
            allow_small,
        });
    }
    Ok(())
}

fn same_file(a: &dyn BlockDevice, b: &dyn BlockDevice) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a.path()), std::fs::metadata(b.path())) {
        (Ok(ma), Ok(mb)) => {
            let id = |m: &std::fs::Metadata| {
                if m.file_type().is_file() {
                    (m.dev(), m.ino())
                } else {
                    (m.rdev(), 0)
                }
            };
            id(&ma) == id(&mb)
        }
        _ => false,
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], MkfsError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| {
        MkfsError::Block(BlockError::Invalid(format!(
            "no random numbers for the fsid: {e}"
        )))
    })?;
    Ok(b)
}

/// Write a new filesystem. See the module documentation for what is written where.
pub fn mkfs(
    meta: Arc<dyn BlockDevice>,
    data: Arc<dyn BlockDevice>,
    opts: &MkfsOptions,
) -> Result<MkfsSummary, MkfsError> {
    // 1. Validate everything; nothing is written before this is done.
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION_MAX).contains(&opts.format_version) {
        return Err(MkfsError::UnsupportedVersion {
            found: opts.format_version,
        });
    }
    validate_slots(&opts.slots)?;
    if same_file(&*meta, &*data) {
        return Err(MkfsError::SameDevice(meta.path().to_path_buf()));
    }
    let meta_bytes = usable_bytes(&*meta, opts.max_meta_bytes);
    let data_bytes = usable_bytes(&*data, opts.max_data_bytes);
    check_size(
        &*meta,
        "metadata device",
        meta_bytes,
        MIN_META_DEVICE_BYTES,
        opts.allow_small_size,
    )?;
    check_size(
        &*data,
        "data device",
        data_bytes,
        MIN_DATA_DEVICE_BYTES,
        opts.allow_small_size,
    )?;
    if !opts.force {
        for dev in [&meta, &data] {
            if let Some(fsid) = existing_fsid(&**dev) {
                return Err(MkfsError::Existing {
                    path: dev.path().to_path_buf(),
                    fsid,
                });
            }
        }
    }

    // 2. Lay out the allocators.
    let total_meta_blocks = meta_bytes >> BlockSize::Large.shift();
    let total_data_blocks = data_bytes >> BlockSize::Small.shift();
    let fsid = u64::from_le_bytes(random_bytes::<8>()?).max(1);
    let uuid = random_bytes::<16>()?;
    let seq = 1u64;

    let meta_alloc_blkno = META_DEV_START_BLKNO;
    let data_alloc_blkno = META_DEV_START_BLKNO + 1;
    let avail_list_blkno = META_DEV_START_BLKNO + 2;
    let fs_root_blkno = META_DEV_START_BLKNO + 3;
    let first_free_meta = META_DEV_START_BLKNO + 4;
    let free_meta = total_meta_blocks - first_free_meta;
    let avail_nr = SERVER_AVAIL_FILL
        .min(free_meta / 4)
        .min(ALLOC_LIST_MAX_BLKNOS as u64);
    let (tree_meta_start, tree_meta_len) = (first_free_meta + avail_nr, free_meta - avail_nr);
    let (data_start, data_len) = (
        DATA_DEV_START_BLKNO,
        total_data_blocks - DATA_DEV_START_BLKNO,
    );

    let md = MetaDev::new(meta.clone(), fsid, 0);

    // With --force, first destroy the old super blocks so that a crash part-way through
    // cannot leave an old super pointing at blocks this mkfs has overwritten.
    if opts.force {
        let zero = BlockBuf::zeroed(BlockSize::Small.bytes());
        for dev in [&data, &meta] {
            if existing_fsid(&**dev).is_some() {
                for blkno in SUPER_BLKNOS {
                    dev.write_at(zero.as_slice(), blkno * BlockSize::Small.bytes() as u64)?;
                }
                dev.flush()?;
            }
        }
    }

    let extent_leaf = |start: u64, len: u64| -> BlockBuf {
        let mut b = BtreeBlockBuilder::new(0);
        for k in free_extent_keys(start, len) {
            b.push(k, 0, 0, &[]).expect("two items fit an empty leaf");
        }
        b.finish()
    };
    md.write_block(
        KIND_BTREE,
        meta_alloc_blkno,
        seq,
        extent_leaf(tree_meta_start, tree_meta_len),
    )?;
    md.write_block(
        KIND_BTREE,
        data_alloc_blkno,
        seq,
        extent_leaf(data_start, data_len),
    )?;

    let mut list = BlockBuf::zeroed(BlockSize::Large.bytes());
    {
        let hdr_len = core::mem::size_of::<AllocListBlockHeader>();
        let bytes = list.as_mut_slice();
        let mut h = AllocListBlockHeader::new_zeroed();
        h.nr = (avail_nr as u32).into();
        bytes[..hdr_len].copy_from_slice(h.as_bytes());
        for (i, blkno) in (first_free_meta..first_free_meta + avail_nr).enumerate() {
            let at = hdr_len + i * 8;
            bytes[at..at + 8].copy_from_slice(U64::new(blkno).as_bytes());
        }
    }
    md.write_block(KIND_ALLOC_LIST, avail_list_blkno, seq, list)?;
    md.write_block(KIND_BTREE, fs_root_blkno, seq, root_dir_leaf(seq))?;

    // 3. Quorum blocks: one per slot, all slots, so later config changes find them ready.
    for slot in 0..QUORUM_MAX_SLOTS as u64 {
        let mut buf = BlockBuf::zeroed(BlockSize::Small.bytes());
        let q = QuorumBlock::new_zeroed();
        buf.as_mut_slice()[..core::mem::size_of::<QuorumBlock>()].copy_from_slice(q.as_bytes());
        md.write_block(KIND_QUORUM, QUORUM_BLKNO + slot, seq, buf)?;
    }
    md.flush()?;

    // 4. The super block, data device copy first, metadata device last.
    let mut sb = SuperBlock::new_zeroed();
    sb.fmt_vers = opts.format_version.into();
    sb.uuid = uuid;
    sb.seq = seq.into();
    sb.next_ino = FIRST_ALLOC_INO.into();
    sb.inode_count = 1.into();
    sb.fs_root = BtreeRoot::new(BlockRef::new(fs_root_blkno, seq), 1);
    sb.total_meta_blocks = total_meta_blocks.into();
    sb.total_data_blocks = total_data_blocks.into();
    sb.first_meta_blkno = META_DEV_START_BLKNO.into();
    sb.first_data_blkno = DATA_DEV_START_BLKNO.into();
    sb.qconf.version = 1.into();
    for s in &opts.slots {
        sb.qconf.slots[s.nr as usize] = InetAddr::from_v4(s.addr);
    }
    sb.meta_alloc[0] = AllocRoot {
        total_len: tree_meta_len.into(),
        root: BtreeRoot::new(BlockRef::new(meta_alloc_blkno, seq), 1),
        ..AllocRoot::default()
    };
    sb.data_alloc = AllocRoot {
        total_len: data_len.into(),
        root: BtreeRoot::new(BlockRef::new(data_alloc_blkno, seq), 1),
        ..AllocRoot::default()
    };
    sb.server_meta_avail[0] = AllocListHead {
        first: BlockRef::new(avail_list_blkno, seq),
        total_nr: avail_nr.into(),
        first_nr: (avail_nr as u32).into(),
        flags: 0.into(),
    };

    let mut write_super =
        |dev: &Arc<dyn BlockDevice>, flags: u64, blknos: &[u64]| -> Result<(), BlockError> {
            sb.flags = flags.into();
            let d = MetaDev::new(dev.clone(), fsid, 0);
            for &blkno in blknos {
                d.write_block(KIND_SUPER, blkno, seq, sb.to_block())?;
            }
            d.flush()
        };
    write_super(&data, 0, &[SUPER_BLKNO])?;
    write_super(&meta, SUPER_FLAG_META_DEV, &SUPER_BLKNOS)?;

    let mut slots: Vec<_> = opts.slots.clone();
    slots.sort_by_key(|s| s.nr);
    Ok(MkfsSummary {
        fsid: format!("{fsid:016x}"),
        uuid: format_uuid(&uuid),
        format_version: opts.format_version,
        total_meta_blocks,
        total_data_blocks,
        free_meta_blocks: free_meta,
        free_data_blocks: data_len,
        quorum_slots: slots.iter().map(|s| s.to_string()).collect(),
    })
}

/// The fs_root leaf of a new filesystem: the root directory (mode 0755, owned by root) and
/// its `meta_seq` index item, both at seq `seq`.
fn root_dir_leaf(seq: u64) -> BlockBuf {
    use crate::format::inode::{index_key, inode_key, ty, InodeItem, DIRENT_FIRST_POS, ROOT_INO};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ts = crate::format::Timespec {
        sec: now.as_secs().into(),
        nsec: now.subsec_nanos().into(),
        _pad: [0; 4],
    };
    let mut i = InodeItem::new_zeroed();
    i.mode = (0o040000u32 | 0o755).into();
    i.nlink = 2.into();
    i.generation = 1.into();
    i.meta_seq = seq.into();
    i.next_readdir_pos = DIRENT_FIRST_POS.into();
    i.next_xattr_id = 1.into();
    i.atime = ts;
    i.mtime = ts;
    i.ctime = ts;
    i.crtime = ts;
    let mut b = BtreeBlockBuilder::new(0);
    b.push(index_key(ty::META_SEQ, seq, ROOT_INO), seq, 0, &[])
        .expect("fits an empty leaf");
    b.push(inode_key(ROOT_INO), seq, 0, i.as_bytes())
        .expect("fits an empty leaf");
    b.finish()
}

/// The usual 8-4-4-4-12 text form of a uuid.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_specs_parse_and_reject_clearly() {
        let s: QuorumSlot = "0,127.0.0.1,7100".parse().unwrap();
        assert_eq!(s.nr, 0);
        assert_eq!(s.addr, "127.0.0.1:7100".parse().unwrap());
        assert_eq!(s.to_string(), "0,127.0.0.1,7100");
        for (spec, needle) in [
            ("15,127.0.0.1,7100", "not between 0 and 14"),
            ("-1,127.0.0.1,7100", "not between 0 and 14"),
            ("x,127.0.0.1,7100", "not between 0 and 14"),
            ("0,localhost,7100", "not an IPv4 address"),
            ("0,::1,7100", "not an IPv4 address"),
            ("0,0.0.0.0,7100", "cannot be a member's address"),
            ("0,127.0.0.1,0", "not between 1 and 65535"),
            ("0,127.0.0.1,65536", "not between 1 and 65535"),
            ("0,127.0.0.1", "three comma-separated fields"),
            ("0,127.0.0.1,1,2", "three comma-separated fields"),
        ] {
            let err = spec.parse::<QuorumSlot>().unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn duplicate_slots_and_addresses_are_refused() {
        let a: QuorumSlot = "0,127.0.0.1,7100".parse().unwrap();
        let b: QuorumSlot = "0,127.0.0.2,7100".parse().unwrap();
        let c: QuorumSlot = "1,127.0.0.1,7100".parse().unwrap();
        assert!(matches!(
            validate_slots(&[a, b]),
            Err(MkfsError::DuplicateSlot(0))
        ));
        assert!(matches!(
            validate_slots(&[a, c]),
            Err(MkfsError::DuplicateAddr(0, 1, _))
        ));
        assert!(matches!(validate_slots(&[]), Err(MkfsError::NoSlots)));
        assert!(validate_slots(&[b, c]).is_ok());
    }

    #[test]
    fn uuid_text_form() {
        let u = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0, 1, 2, 3, 4, 5, 6, 7,
        ];
        assert_eq!(format_uuid(&u), "12345678-9abc-def0-0001-020304050607");
    }
}
