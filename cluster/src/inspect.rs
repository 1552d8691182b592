//! Reading a filesystem back for `scoutgw print`: the super block, the quorum blocks and a
//! summary of every tree and alloc list, verifying every block on the way.
//!
//! A damaged tree does not stop the report: its summary carries the error and
//! [`FsReport::errors`] lists it, so the caller can show everything readable and still fail.

use std::sync::Arc;

use scoutgw_blockdev::{BlockDevice, MetaDev};
use zerocopy::FromBytes;

use crate::btree;
use crate::format::alloc::{extent_of_blkno_key, AllocListBlock};
use crate::format::key::zone;
use crate::format::layout::QUORUM_BLKNO;
use crate::format::quorum::QuorumEventKind;
use crate::format::super_block::{DeviceRole, SUPER_FLAG_META_DEV};
use crate::format::{
    AllocListHead, BtreeRoot, FormatError, Key, QuorumBlock, SuperBlock, KIND_ALLOC_LIST,
    KIND_QUORUM,
};
use crate::mkfs::format_uuid;

/// Everything `print` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FsReport {
    pub device: String,
    pub super_block: SuperReport,
    pub quorum_slots: Vec<QuorumSlotReport>,
    pub trees: Vec<TreeReport>,
    pub alloc_lists: Vec<ListReport>,
    /// Every problem found, one line each. Empty for a healthy filesystem.
    pub errors: Vec<String>,
    /// Findings that need no repair: a damaged copy of the super block in the inactive slot
    /// (a super write torn by a crash; the next commit rewrites it).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SuperReport {
    /// The 4 KiB block the current super block was read from (15 or 16).
    pub blkno: u64,
    /// The fsid in hex (a JSON number would lose precision).
    pub fsid: String,
    pub uuid: String,
    pub format_version: u64,
    pub meta_device: bool,
    pub seq: u64,
    pub next_ino: u64,
    pub inode_count: u64,
    pub total_meta_blocks: u64,
    pub total_data_blocks: u64,
    pub first_meta_blkno: u64,
    pub first_data_blkno: u64,
    pub quorum_config_version: u64,
    pub meta_alloc_free_blocks: [u64; 2],
    pub data_alloc_free_blocks: u64,
    pub data_alloc_zone_blocks: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct QuorumEventReport {
    pub event: &'static str,
    pub write_nr: u64,
    pub rid: String,
    pub term: u64,
    pub unix_time: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct QuorumSlotReport {
    pub slot: usize,
    pub addr: String,
    pub blkno: u64,
    pub write_nr: u64,
    /// Events recorded so far (write_nr != 0).
    pub events: Vec<QuorumEventReport>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TreeReport {
    pub name: &'static str,
    pub root_blkno: u64,
    pub root_seq: u64,
    pub height: u8,
    pub blocks: u64,
    pub items: u64,
    /// For allocator trees: free extents and the blocks in them.
    pub free_extents: Option<u64>,
    pub free_blocks: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ListReport {
    pub name: &'static str,
    pub first_blkno: u64,
    pub total_nr: u64,
    pub blocks: u64,
    pub entries: u64,
    pub error: Option<String>,
}

fn tree_report(md: &MetaDev, name: &'static str, root: BtreeRoot, alloc: bool) -> TreeReport {
    let mut blocks = 0u64;
    let mut items = 0u64;
    let (mut extents, mut extent_blocks) = (0u64, 0u64);
    let result = (|| -> Result<(), crate::btree::BtreeError> {
        btree::walk_blocks(md, None, &root, &mut |_, _| blocks += 1)?;
        for it in btree::range(md, None, &root, &Key::MIN, &Key::MAX)? {
            items += 1;
            if it.key.zone == zone::FREE_EXTENT_BLKNO {
                let (_, len) = extent_of_blkno_key(&it.key).ok_or_else(|| {
                    FormatError::corrupt(name, format!("invalid free extent key {:?}", it.key))
                })?;
                extents += 1;
                extent_blocks += len;
            }
        }
        Ok(())
    })();
    TreeReport {
        name,
        root_blkno: root.block.blkno.get(),
        root_seq: root.block.seq.get(),
        height: root.height,
        blocks,
        items,
        free_extents: alloc.then_some(extents),
        free_blocks: alloc.then_some(extent_blocks),
        error: result.err().map(|e| e.to_string()),
    }
}

fn list_report(md: &MetaDev, name: &'static str, head: &AllocListHead, limit: u64) -> ListReport {
    let mut rep = ListReport {
        name,
        first_blkno: head.first.blkno.get(),
        total_nr: head.total_nr.get(),
        blocks: 0,
        entries: 0,
        error: None,
    };
    let mut next = head.first;
    let result = (|| {
        while !next.is_null() {
            if rep.blocks >= limit {
                return Err(FormatError::corrupt(name, "list loops"));
            }
            let cached = md.read_ref(KIND_ALLOC_LIST, next)?;
            let blk = AllocListBlock::parse(cached.data.as_slice(), next.blkno.get())?;
            rep.blocks += 1;
            rep.entries += blk.blknos.len() as u64;
            next = blk.header.next;
        }
        if rep.entries != rep.total_nr {
            return Err(FormatError::corrupt(
                name,
                format!(
                    "head records {} blocks, the list holds {}",
                    rep.total_nr, rep.entries
                ),
            ));
        }
        Ok(())
    })();
    rep.error = result.err().map(|e| e.to_string());
    rep
}

/// The quorum block of `slot`: its events (elections, fences) as recorded.
pub fn quorum_report(md: &MetaDev, slot: usize, addr: String) -> QuorumSlotReport {
    let blkno = QUORUM_BLKNO + slot as u64;
    let mut rep = QuorumSlotReport {
        slot,
        addr,
        blkno,
        write_nr: 0,
        events: Vec::new(),
        error: None,
    };
    match md.read_fixed(KIND_QUORUM, blkno) {
        Ok(buf) => {
            let (q, _) = QuorumBlock::read_from_prefix(buf.as_slice()).expect("4 KiB block");
            rep.write_nr = q.write_nr.get();
            for kind in QuorumEventKind::ALL {
                let e = q.event(kind);
                if e.write_nr.get() != 0 {
                    rep.events.push(QuorumEventReport {
                        event: kind.name(),
                        write_nr: e.write_nr.get(),
                        rid: format!("{:016x}", e.rid.get()),
                        term: e.term.get(),
                        unix_time: e.ts.sec.get() as f64 + e.ts.nsec.get() as f64 * 1e-9,
                    });
                }
            }
        }
        Err(e) => rep.error = Some(e.to_string()),
    }
    rep
}

/// Read and summarize the filesystem on a metadata device.
///
/// Fails only when there is no readable super block (or the device is truncated); damage
/// further in is reported inside the result.
pub fn inspect(meta: Arc<dyn BlockDevice>) -> Result<FsReport, FormatError> {
    let current = SuperBlock::read_current(&*meta)?;
    let sb = current.sb;
    sb.check_device_size(&*meta, DeviceRole::Meta)?;
    let md = MetaDev::new(meta.clone(), sb.fsid(), 64 << 20);

    let super_block = SuperReport {
        blkno: current.blkno,
        fsid: format!("{:016x}", sb.fsid()),
        uuid: format_uuid(&sb.uuid),
        format_version: sb.fmt_vers.get(),
        meta_device: sb.flags.get() & SUPER_FLAG_META_DEV != 0,
        seq: sb.seq.get(),
        next_ino: sb.next_ino.get(),
        inode_count: sb.inode_count.get(),
        total_meta_blocks: sb.total_meta_blocks.get(),
        total_data_blocks: sb.total_data_blocks.get(),
        first_meta_blkno: sb.first_meta_blkno.get(),
        first_data_blkno: sb.first_data_blkno.get(),
        quorum_config_version: sb.qconf.version.get(),
        meta_alloc_free_blocks: [
            sb.meta_alloc[0].total_len.get(),
            sb.meta_alloc[1].total_len.get(),
        ],
        data_alloc_free_blocks: sb.data_alloc.total_len.get(),
        data_alloc_zone_blocks: sb.volopt.data_alloc_zone_blocks.get(),
    };

    let quorum_slots: Vec<_> = sb
        .qconf
        .present()
        .map(|(slot, addr)| quorum_report(&md, slot, addr.to_string()))
        .collect();

    let alloc_totals = [
        ("meta_alloc[0]", sb.meta_alloc[0].total_len.get()),
        ("meta_alloc[1]", sb.meta_alloc[1].total_len.get()),
        ("data_alloc", sb.data_alloc.total_len.get()),
    ];
    let mut trees: Vec<TreeReport> = sb
        .named_trees()
        .into_iter()
        .map(|(name, root)| {
            let is_alloc = alloc_totals.iter().any(|(n, _)| *n == name);
            tree_report(&md, name, root, is_alloc)
        })
        .collect();
    for t in trees.iter_mut() {
        if let Some((_, total)) = alloc_totals.iter().find(|(n, _)| *n == t.name) {
            if t.error.is_none() && t.free_blocks != Some(*total) {
                t.error = Some(format!(
                    "root records {total} free blocks, the tree holds {}",
                    t.free_blocks.unwrap_or(0)
                ));
            }
        }
    }

    let limit = sb.total_meta_blocks.get();
    let alloc_lists = vec![
        list_report(&md, "server_meta_avail[0]", &sb.server_meta_avail[0], limit),
        list_report(&md, "server_meta_avail[1]", &sb.server_meta_avail[1], limit),
        list_report(&md, "server_meta_freed[0]", &sb.server_meta_freed[0], limit),
        list_report(&md, "server_meta_freed[1]", &sb.server_meta_freed[1], limit),
    ];

    let warnings: Vec<String> = current
        .other_problem
        .map(|p| format!("{p} (the inactive slot; the next commit rewrites it)"))
        .into_iter()
        .collect();
    let mut errors: Vec<String> = Vec::new();
    for q in &quorum_slots {
        if let Some(e) = &q.error {
            errors.push(format!("quorum slot {}: {e}", q.slot));
        }
    }
    for t in &trees {
        if let Some(e) = &t.error {
            errors.push(format!("{}: {e}", t.name));
        }
    }
    for l in &alloc_lists {
        if let Some(e) = &l.error {
            errors.push(format!("{}: {e}", l.name));
        }
    }

    Ok(FsReport {
        device: meta.path().display().to_string(),
        super_block,
        quorum_slots,
        trees,
        alloc_lists,
        errors,
        warnings,
    })
}
