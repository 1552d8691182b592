//! Offline consistency check: every tree readable and ordered, every allocator consistent with
//! its recorded totals, and every metadata and data block either referenced or free, exactly
//! once.
//!
//! Run it on devices no node is writing to; a live filesystem changes under it.

use std::sync::Arc;

use scoutgw_blockdev::{BlockDevice, MetaDev};

use crate::alloc::extent;
use crate::alloc::MetaList;
use crate::btree::{self, Item};
use crate::format::log_trees::LogTrees;
use crate::format::super_block::DeviceRole;
use crate::format::{
    AllocListHead, AllocRoot, BtreeRoot, FormatError, Key, SuperBlock, KIND_BLOOM,
};
use crate::server::all_log_trees;

/// What fsck found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FsckReport {
    pub fsid: String,
    pub meta_blocks_total: u64,
    pub meta_blocks_used: u64,
    pub meta_blocks_free: u64,
    pub data_blocks_total: u64,
    pub data_blocks_free: u64,
    pub log_trees: u64,
    pub fs_items: u64,
    pub log_items: u64,
    /// Every problem found. Empty means the filesystem is consistent.
    pub problems: Vec<String>,
    /// Findings that do not make the filesystem inconsistent (e.g. a torn write of the
    /// inactive super block slot, which the next commit rewrites).
    pub warnings: Vec<String>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Ownership claims over block ranges, checked for overlaps and holes at the end.
#[derive(Default)]
struct Claims {
    ranges: Vec<(u64, u64, String)>,
}

impl Claims {
    fn claim(&mut self, start: u64, len: u64, owner: impl Into<String>) {
        if len > 0 {
            self.ranges.push((start, len, owner.into()));
        }
    }

    /// Check that `[first, total)` is covered exactly once; returns blocks claimed by owners
    /// whose name starts with "free".
    fn check(mut self, what: &str, first: u64, total: u64, problems: &mut Vec<String>) -> u64 {
        self.ranges.sort_by_key(|r| r.0);
        let mut next = first;
        let mut free = 0;
        let mut reported = 0;
        for (start, len, owner) in &self.ranges {
            let end = start + len;
            if *start < next && reported < 20 {
                problems.push(format!(
                    "{what} blocks {start}..{} claimed by {owner} are also claimed by another owner",
                    end.min(next)
                ));
                reported += 1;
            } else if *start > next && reported < 20 {
                problems.push(format!(
                    "{what} blocks {next}..{start} are neither referenced nor free (leaked)"
                ));
                reported += 1;
            }
            if end > total && reported < 20 {
                problems.push(format!(
                    "{what} blocks {start}..{end} claimed by {owner} are past the end ({total})"
                ));
                reported += 1;
            }
            if owner.starts_with("free") {
                free += len;
            }
            next = next.max(end);
        }
        if next < total {
            problems.push(format!(
                "{what} blocks {next}..{total} are neither referenced nor free (leaked)"
            ));
        }
        free
    }
}

struct Checker<'a> {
    md: &'a MetaDev,
    meta: Claims,
    data: Claims,
    problems: Vec<String>,
}

impl Checker<'_> {
    /// Claim every block of a tree and count its items. Returns the items if `keep`.
    fn tree(&mut self, name: &str, root: &BtreeRoot, keep: bool) -> (u64, Vec<Item>) {
        let mut blocks = Vec::new();
        if let Err(e) = btree::walk_blocks(self.md, None, root, &mut |r, _| blocks.push(r)) {
            self.problems.push(format!("{name}: {e}"));
            return (0, Vec::new());
        }
        for b in &blocks {
            self.meta.claim(b.blkno.get(), 1, format!("{name} block"));
        }
        match btree::range(self.md, None, root, &Key::MIN, &Key::MAX) {
            Ok(items) => (items.len() as u64, if keep { items } else { Vec::new() }),
            Err(e) => {
                self.problems.push(format!("{name}: {e}"));
                (0, Vec::new())
            }
        }
    }

    fn list(&mut self, name: &str, head: &AllocListHead) {
        match MetaList::load(self.md, head) {
            Ok(list) => {
                for b in list.list_blocks() {
                    self.meta.claim(*b, 1, format!("{name} list block"));
                }
                for b in list.entries() {
                    self.meta.claim(*b, 1, format!("free ({name})"));
                }
            }
            Err(e) => self.problems.push(format!("{name}: {e}")),
        }
    }

    fn extents(&mut self, name: &str, root: &AllocRoot, data: bool) {
        self.tree(&format!("{name} tree"), &root.root, false);
        match extent::list_extents(self.md, None, root) {
            Ok(exts) => {
                let total: u64 = exts.iter().map(|e| e.1).sum();
                if total != root.total_len.get() {
                    self.problems.push(format!(
                        "{name}: root records {} free blocks, the tree holds {total}",
                        root.total_len.get()
                    ));
                }
                for (s, l) in exts {
                    let claims = if data { &mut self.data } else { &mut self.meta };
                    claims.claim(s, l, format!("free ({name})"));
                }
            }
            Err(e) => self.problems.push(format!("{name}: {e}")),
        }
    }
}

/// The online data extents of the merged forest: for every DATA_EXTENT key the newest
/// version across the trees, unless it is a deletion or offline. Returns (key, first block).
fn live_extents(
    md: &MetaDev,
    trees: &[BtreeRoot],
) -> Result<Vec<(Key, u64)>, crate::btree::BtreeError> {
    use crate::format::btree::ITEM_FLAG_DELETION;
    use crate::format::inode::{ty, ExtentValue, EXTENT_OFFLINE};
    use crate::format::key::zone;
    use zerocopy::FromBytes;
    let mut newest: std::collections::BTreeMap<Key, Item> = std::collections::BTreeMap::new();
    let (first, last) = (
        Key::new(zone::FS, 0, 0, 0, 0, 0),
        Key::new(zone::FS, u64::MAX, u8::MAX, u64::MAX, u64::MAX, u8::MAX),
    );
    for root in trees {
        let mut from = first;
        loop {
            let leaf = btree::read_leaf(md, None, root, &from, &last)?;
            for it in leaf.items {
                if it.key.ty != ty::DATA_EXTENT {
                    continue;
                }
                match newest.get(&it.key) {
                    Some(old) if old.seq >= it.seq => {}
                    _ => {
                        newest.insert(it.key, it);
                    }
                }
            }
            match leaf.covered_end.next() {
                Some(n) if leaf.covered_end < last => from = n,
                _ => break,
            }
        }
    }
    Ok(newest
        .into_values()
        .filter(|it| it.flags & ITEM_FLAG_DELETION == 0)
        .filter_map(|it| {
            let v = ExtentValue::read_from_bytes(&it.val).ok()?;
            (v.flags & EXTENT_OFFLINE == 0).then(|| (it.key, v.blkno.get()))
        })
        .collect())
}

/// Check the filesystem on `meta` (and `data`, whose super copy must name the same fsid).
/// Fails only if there is no readable super block; damage is reported in the result.
pub fn fsck(
    meta: Arc<dyn BlockDevice>,
    data: Option<Arc<dyn BlockDevice>>,
) -> Result<FsckReport, FormatError> {
    let current = SuperBlock::read_current(&*meta)?;
    let sb = current.sb;
    sb.check_device_size(&*meta, DeviceRole::Meta)?;
    let md = MetaDev::new(meta, sb.fsid(), 64 << 20);
    let mut report = FsckReport {
        fsid: format!("{:016x}", sb.fsid()),
        meta_blocks_total: sb.total_meta_blocks.get(),
        data_blocks_total: sb.total_data_blocks.get(),
        ..FsckReport::default()
    };
    let mut c = Checker {
        md: &md,
        meta: Claims::default(),
        data: Claims::default(),
        problems: Vec::new(),
    };
    report.warnings.extend(
        current
            .other_problem
            .map(|p| format!("{p} (the inactive slot; the next commit rewrites it)")),
    );
    if let Some(data) = data {
        match SuperBlock::read_at(&*data, crate::format::layout::SUPER_BLKNO) {
            Ok(dsb) if dsb.fsid() != sb.fsid() => c.problems.push(format!(
                "data device belongs to filesystem {:016x}, not {:016x}",
                dsb.fsid(),
                sb.fsid()
            )),
            Ok(_) => {
                if let Err(e) = sb.check_device_size(&*data, DeviceRole::Data) {
                    c.problems.push(e.to_string());
                }
            }
            Err(e) => c.problems.push(format!("data device: {e}")),
        }
    }

    c.meta.claim(
        0,
        sb.first_meta_blkno.get(),
        "reserved (super and quorum blocks)",
    );
    c.data
        .claim(0, sb.first_data_blkno.get(), "reserved (data super)");
    c.extents("meta_alloc[0]", &sb.meta_alloc[0], false);
    c.extents("meta_alloc[1]", &sb.meta_alloc[1], false);
    c.extents("data_alloc", &sb.data_alloc, true);
    for i in 0..2 {
        c.list(&format!("server_meta_avail[{i}]"), &sb.server_meta_avail[i]);
        c.list(&format!("server_meta_freed[{i}]"), &sb.server_meta_freed[i]);
    }
    report.fs_items = c.tree("fs_root", &sb.fs_root, false).0;
    c.tree("log_merge", &sb.log_merge, false);
    c.tree("mounted_clients", &sb.mounted_clients, false);
    c.tree("srch_root", &sb.srch_root, false);
    c.tree("logs_root", &sb.logs_root, false);

    let log_trees: Vec<LogTrees> = match all_log_trees(&md, None, &sb.logs_root) {
        Ok(l) => l,
        Err(e) => {
            c.problems.push(format!("logs_root: {e}"));
            Vec::new()
        }
    };
    report.log_trees = log_trees.len() as u64;
    for lt in &log_trees {
        let name = format!("log_trees {:016x}.{}", lt.rid.get(), lt.nr.get());
        if lt.get_trans_seq.get() < lt.commit_trans_seq.get() {
            c.problems.push(format!(
                "{name}: committed seq {} beyond opened seq {}",
                lt.commit_trans_seq.get(),
                lt.get_trans_seq.get()
            ));
        }
        let (n, items) = c.tree(&format!("{name} item_root"), &lt.item_root, true);
        report.log_items += n;
        if let Some(max) = items.iter().map(|it| it.seq).max() {
            if max > lt.max_item_seq.get() {
                c.problems.push(format!(
                    "{name}: item seq {max} above the recorded max_item_seq {}",
                    lt.max_item_seq.get()
                ));
            }
        }
        if !lt.bloom_ref.is_null() {
            match md.read_ref(KIND_BLOOM, lt.bloom_ref) {
                Ok(_) => c
                    .meta
                    .claim(lt.bloom_ref.blkno.get(), 1, format!("{name} bloom")),
                Err(e) => c.problems.push(format!("{name} bloom: {e}")),
            }
        }
        c.list(&format!("{name} meta_avail"), &lt.meta_avail);
        c.list(&format!("{name} meta_freed"), &lt.meta_freed);
        c.extents(&format!("{name} data_avail"), &lt.data_avail, true);
        c.extents(&format!("{name} data_freed"), &lt.data_freed, true);
    }

    // File data: the live DATA_EXTENT items of the merged forest claim their data blocks.
    let mut trees: Vec<BtreeRoot> = vec![sb.fs_root];
    trees.extend(log_trees.iter().map(|lt| lt.item_root));
    match live_extents(&md, &trees) {
        Ok(extents) => {
            for (key, blkno) in extents {
                c.data.claim(
                    blkno,
                    key.third.get(),
                    format!("file data of inode {}", key.first.get()),
                );
            }
        }
        Err(e) => c.problems.push(format!("file extents: {e}")),
    }

    let Checker {
        meta,
        data,
        mut problems,
        ..
    } = c;
    report.meta_blocks_free = meta.check("metadata", 0, sb.total_meta_blocks.get(), &mut problems);
    report.meta_blocks_used = sb.total_meta_blocks.get() - report.meta_blocks_free;
    report.data_blocks_free = data.check("data", 0, sb.total_data_blocks.get(), &mut problems);
    report.problems = problems;
    Ok(report)
}
