//! mkfs and inspect on real device files: what mkfs writes, and that a mkfs cut short at any
//! write leaves either no filesystem or (with --force) the old one — never a mix.

use std::path::Path;
use std::sync::Arc;

use scoutgw_blockdev::device::Faults;
use scoutgw_blockdev::{BlockDevice, DeviceOptions, FaultyDevice, FileDevice};
use scoutgw_cluster::format::layout::DATA_DEV_START_BLKNO;
use scoutgw_cluster::inspect::inspect;
use scoutgw_cluster::mkfs::{mkfs, MkfsError, MkfsOptions};
use scoutgw_cluster::FormatError;

const META_BYTES: u64 = 64 << 20;
const DATA_BYTES: u64 = 32 << 20;

fn device_file(dir: &Path, name: &str, bytes: u64) -> Arc<FileDevice> {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(bytes).unwrap();
    Arc::new(FileDevice::open(&path, DeviceOptions::default()).unwrap())
}

fn reopen(dev: &dyn BlockDevice) -> Arc<dyn BlockDevice> {
    Arc::new(FileDevice::open(dev.path(), DeviceOptions::default()).unwrap())
}

fn opts(force: bool) -> MkfsOptions {
    MkfsOptions {
        slots: vec!["0,127.0.0.1,7100".parse().unwrap()],
        allow_small_size: true,
        force,
        ..MkfsOptions::default()
    }
}

#[test]
fn mkfs_puts_every_block_in_exactly_one_allocator() {
    let dir = tempfile::tempdir().unwrap();
    let meta = device_file(dir.path(), "meta", META_BYTES);
    let data = device_file(dir.path(), "data", DATA_BYTES);
    let s = mkfs(meta.clone(), data, &opts(false)).unwrap();
    let r = inspect(meta).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.super_block.fsid, s.fsid);
    let total_meta = META_BYTES >> 16;
    let listed: u64 = r.alloc_lists.iter().map(|l| l.entries).sum();
    let in_trees: u64 = r.trees.iter().filter_map(|t| t.free_blocks).sum::<u64>()
        - r.super_block.data_alloc_free_blocks;
    // Blocks 0,1 (reserved), 2,3 (allocator leaves), 4 (avail list) and 5 (fs_root leaf
    // with the root directory) are in use.
    assert_eq!(listed + in_trees, total_meta - 6);
    assert_eq!(
        r.super_block.data_alloc_free_blocks,
        (DATA_BYTES >> 12) - DATA_DEV_START_BLKNO
    );
}

/// Run mkfs with the metadata device dying after `n` writes/flushes: writes are held until a
/// flush makes them durable, and the node "crashes" (unflushed writes are lost) when mkfs
/// stops.
fn mkfs_cut_short(
    meta: &Arc<FileDevice>,
    data: &Arc<FileDevice>,
    n: usize,
    force: bool,
) -> Result<(), MkfsError> {
    let faulty = Arc::new(FaultyDevice::new(
        FileDevice::open(meta.path(), DeviceOptions::default()).unwrap(),
    ));
    faulty.set_faults(Faults {
        fail_after_writes: Some(n),
        buffer_until_flush: true,
        ..Faults::default()
    });
    let res = mkfs(faulty.clone(), reopen(&**data), &opts(force)).map(|_| ());
    faulty.crash();
    res
}

#[test]
fn mkfs_cut_short_at_any_write_leaves_no_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let meta = device_file(dir.path(), "meta", META_BYTES);
    let data = device_file(dir.path(), "data", DATA_BYTES);
    let mut n = 0;
    loop {
        let res = mkfs_cut_short(&meta, &data, n, true);
        match inspect(reopen(&*meta)) {
            Err(FormatError::NotAFilesystem { .. }) => assert!(res.is_err(), "n={n}"),
            Ok(r) => {
                assert!(
                    res.is_ok(),
                    "a filesystem appeared although mkfs failed (n={n})"
                );
                assert!(r.errors.is_empty(), "n={n}: {:?}", r.errors);
                break;
            }
            Err(e) => panic!("n={n}: unexpected {e}"),
        }
        // Start the next round from blank devices.
        for d in [&meta, &data] {
            std::fs::File::create(d.path())
                .unwrap()
                .set_len(d.len_bytes())
                .unwrap();
        }
        n += 1;
        assert!(n < 100, "mkfs never completed");
    }
    assert!(n > 5, "mkfs should take several writes, took {n}");
}

#[test]
fn forced_mkfs_cut_short_leaves_old_or_nothing_never_a_mix() {
    let dir = tempfile::tempdir().unwrap();
    let meta = device_file(dir.path(), "meta", META_BYTES);
    let data = device_file(dir.path(), "data", DATA_BYTES);
    for n in 0..40 {
        let old = mkfs(reopen(&*meta), reopen(&*data), &opts(true)).unwrap();
        let res = mkfs_cut_short(&meta, &data, n, true);
        match inspect(reopen(&*meta)) {
            Err(FormatError::NotAFilesystem { .. }) => assert!(res.is_err()),
            Ok(r) => {
                assert!(
                    r.errors.is_empty(),
                    "n={n}: a mixed filesystem: {:?}",
                    r.errors
                );
                if res.is_err() {
                    assert_eq!(r.super_block.fsid, old.fsid, "n={n}");
                }
            }
            Err(e) => panic!("n={n}: unexpected {e}"),
        }
    }
}

#[test]
fn existing_filesystem_is_kept_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let meta = device_file(dir.path(), "meta", META_BYTES);
    let data = device_file(dir.path(), "data", DATA_BYTES);
    let first = mkfs(meta.clone(), data.clone(), &opts(false)).unwrap();
    let before = std::fs::read(meta.path()).unwrap();
    let err = mkfs(meta.clone(), data, &opts(false)).unwrap_err();
    assert!(
        matches!(err, MkfsError::Existing { fsid, .. } if format!("{fsid:016x}") == first.fsid)
    );
    assert!(
        std::fs::read(meta.path()).unwrap() == before,
        "device changed"
    );
}

/// Rewrite both super block slots with `edit` applied.
fn edit_super(
    meta: &Arc<FileDevice>,
    edit: impl FnOnce(&mut scoutgw_cluster::format::SuperBlock, &scoutgw_blockdev::MetaDev),
) {
    use scoutgw_cluster::format::layout::SUPER_BLKNOS;
    use scoutgw_cluster::format::{SuperBlock, KIND_SUPER};
    let dev = reopen(&**meta);
    let mut sb = SuperBlock::read(&*dev).unwrap();
    let md = scoutgw_blockdev::MetaDev::new(dev, sb.fsid(), 0);
    edit(&mut sb, &md);
    for blkno in SUPER_BLKNOS {
        md.write_block(KIND_SUPER, blkno, sb.seq.get(), sb.to_block())
            .unwrap();
    }
    md.flush().unwrap();
}

#[test]
fn fsck_finds_leaked_and_doubly_claimed_blocks() {
    use scoutgw_cluster::alloc::list::MetaList;
    use scoutgw_cluster::alloc::ListAlloc;
    use scoutgw_cluster::format::AllocListHead;
    use scoutgw_cluster::fsck::fsck;

    let dir = tempfile::tempdir().unwrap();
    let meta = device_file(dir.path(), "meta", META_BYTES);
    let data = device_file(dir.path(), "data", DATA_BYTES);
    mkfs(meta.clone(), data.clone(), &opts(false)).unwrap();
    assert!(fsck(reopen(&*meta), Some(reopen(&*data)))
        .unwrap()
        .is_clean());

    // A freed list naming block 5, which the server's avail list already holds, stored in
    // the last block, which meta_alloc[0] holds as free.
    let last = (META_BYTES >> 16) - 1;
    edit_super(&meta, |sb, md| {
        let mut list = MetaList::from_entries(vec![5]);
        let mut storage = ListAlloc::new(MetaList::from_entries(vec![last]), MetaList::new());
        sb.server_meta_freed[0] = list.write_new(md, 1, &mut storage).unwrap();
    });
    let r = fsck(reopen(&*meta), Some(reopen(&*data))).unwrap();
    let text = r.problems.join("\n");
    assert!(text.contains("blocks 5..6"), "{text}");
    assert!(text.contains(&format!("blocks {last}..")), "{text}");

    // Forget the server's avail list: its 1024 blocks and its list block leak.
    edit_super(&meta, |sb, _| {
        sb.server_meta_freed[0] = AllocListHead::default();
        sb.server_meta_avail[0] = AllocListHead::default();
    });
    let r = fsck(reopen(&*meta), Some(reopen(&*data))).unwrap();
    let text = r.problems.join("\n");
    assert!(
        text.contains("blocks 4..") && text.contains("are neither referenced nor free"),
        "{text}"
    );
}
