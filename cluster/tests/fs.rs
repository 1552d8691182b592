//! The POSIX filesystem layer on real device files: each operation's results and errors,
//! file data, xattrs, indexes and the archive primitives, with remounts and fsck.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use scoutgw_blockdev::{BlockDevice, DeviceOptions, FileDevice, MetaDev};
use scoutgw_cluster::client::LocalServer;
use scoutgw_cluster::format::inode::ROOT_INO;
use scoutgw_cluster::fs::{FileType, Fs, FsError, FsOptions, NewNode, SeqIndex, SetAttr, XattrSet};
use scoutgw_cluster::fsck::fsck;
use scoutgw_cluster::lock::LocalLocks;
use scoutgw_cluster::mkfs::{mkfs, MkfsOptions};
use scoutgw_cluster::server::{Server, ServerConfig};

fn open(path: &Path) -> Arc<dyn BlockDevice> {
    Arc::new(FileDevice::open(path, DeviceOptions::default()).unwrap())
}

struct T {
    _dir: tempfile::TempDir,
    meta: PathBuf,
    data: PathBuf,
    server: Option<Arc<LocalServer>>,
    fs: Option<Fs>,
    /// The mount's metadata device handle (block read counts).
    md: Option<Arc<MetaDev>>,
    rid: u64,
    cfg: ServerConfig,
}

impl T {
    fn new() -> Self {
        Self::with_server_config(ServerConfig::default())
    }

    fn with_server_config(cfg: ServerConfig) -> Self {
        Self::with_meta_device(256 << 20, cfg)
    }

    /// A filesystem on a metadata device of `meta_bytes`.
    fn with_meta_device(meta_bytes: u64, cfg: ServerConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("meta");
        let data = dir.path().join("data");
        std::fs::File::create(&meta)
            .unwrap()
            .set_len(meta_bytes)
            .unwrap();
        std::fs::File::create(&data)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        let opts = MkfsOptions {
            slots: vec!["0,127.0.0.1,7100".parse().unwrap()],
            allow_small_size: true,
            ..MkfsOptions::default()
        };
        mkfs(open(&meta), open(&data), &opts).unwrap();
        let mut t = T {
            _dir: dir,
            meta,
            data,
            server: None,
            fs: None,
            md: None,
            rid: 1,
            cfg,
        };
        t.mount();
        t
    }

    fn mount(&mut self) {
        let server = Arc::new(LocalServer::new(
            Server::open(open(&self.meta), self.cfg.clone()).unwrap(),
        ));
        let md = Arc::new(MetaDev::new(
            open(&self.meta),
            server.with(|s| s.fsid()),
            16 << 20,
        ));
        let opts = FsOptions {
            data_wait_timeout: Duration::from_secs(5),
            ..FsOptions::default()
        };
        self.rid += 1;
        self.md = Some(md.clone());
        let fs = Fs::mount(
            md,
            open(&self.data),
            server.clone(),
            Arc::new(LocalLocks::new()),
            self.rid,
            opts,
        )
        .unwrap();
        self.server = Some(server);
        self.fs = Some(fs);
    }

    fn fs(&self) -> &Fs {
        self.fs.as_ref().unwrap()
    }

    /// Another mount of the filesystem as `rid`, through `server`, its metadata read and
    /// written through `meta`.
    fn other_mount(&self, server: &Arc<LocalServer>, meta: Arc<dyn BlockDevice>, rid: u64) -> Fs {
        let md = Arc::new(MetaDev::new(meta, server.with(|s| s.fsid()), 16 << 20));
        Fs::mount(
            md,
            open(&self.data),
            server.clone(),
            Arc::new(LocalLocks::new()),
            rid,
            FsOptions::default(),
        )
        .unwrap()
    }

    /// Unmount cleanly and mount again.
    fn remount(&mut self) {
        self.fs.take().unwrap().unmount().unwrap();
        self.server = None;
        self.mount();
    }

    /// Drop the mount without syncing, as a crash would.
    fn crash_and_remount(&mut self) {
        self.fs = None;
        self.server = None;
        self.mount();
    }

    fn fsck_clean(&mut self) {
        self.fs().sync().unwrap();
        let r = fsck(open(&self.meta), Some(open(&self.data))).unwrap();
        assert!(r.is_clean(), "fsck: {:#?}", r.problems);
    }
}

fn file(perm: u32) -> NewNode {
    NewNode {
        kind: FileType::Regular,
        perm,
        uid: 1000,
        gid: 100,
        rdev: 0,
    }
}

#[test]
fn root_directory_exists_after_mkfs() {
    let t = T::new();
    let a = t.fs().getattr(ROOT_INO).unwrap();
    assert!(a.is_dir());
    assert_eq!(a.nlink, 2);
    assert_eq!(t.fs().readdir(ROOT_INO, 0, 100).unwrap().entries.len(), 0);
}

#[test]
fn create_lookup_and_posix_errors() {
    let mut t = T::new();
    let fs = t.fs();
    let f = fs.create(ROOT_INO, b"a", &file(0o644), true).unwrap();
    assert_eq!(f.mode, 0o100644);
    assert_eq!((f.uid, f.gid, f.nlink, f.size), (1000, 100, 1, 0));
    assert_eq!(fs.lookup(ROOT_INO, b"a").unwrap().ino, f.ino);
    assert_eq!(fs.lookup(ROOT_INO, b"b"), Err(FsError::NotFound));
    assert_eq!(
        fs.create(ROOT_INO, b"a", &file(0o644), true),
        Err(FsError::Exists)
    );
    // Non-exclusive create of an existing file returns it.
    assert_eq!(
        fs.create(ROOT_INO, b"a", &file(0o600), false).unwrap().ino,
        f.ino
    );
    assert_eq!(fs.lookup(f.ino, b"x"), Err(FsError::NotDir));
    assert_eq!(
        fs.create(f.ino, b"x", &file(0o644), true),
        Err(FsError::NotDir)
    );
    let long = vec![b'n'; 256];
    assert_eq!(
        fs.create(ROOT_INO, &long, &file(0o644), true),
        Err(FsError::NameTooLong)
    );
    assert_eq!(fs.lookup(ROOT_INO, &long), Err(FsError::NameTooLong));
    assert!(fs
        .create(ROOT_INO, &vec![b'n'; 255], &file(0o644), true)
        .is_ok());
    for bad in [&b"a/b"[..], b"a\0b", b"", b".", b".."] {
        assert!(
            matches!(
                fs.create(ROOT_INO, bad, &file(0o644), true),
                Err(FsError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap();
    assert_eq!(d.nlink, 2);
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 3);
    assert_eq!(fs.lookup(d.ino, b"..").unwrap().ino, ROOT_INO);
    assert_eq!(fs.lookup(d.ino, b".").unwrap().ino, d.ino);
    fs.create(d.ino, b"inner", &file(0o644), true).unwrap();
    assert_eq!(fs.rmdir(ROOT_INO, b"d"), Err(FsError::NotEmpty));
    assert_eq!(fs.unlink(ROOT_INO, b"d"), Err(FsError::IsDir));
    assert_eq!(fs.rmdir(ROOT_INO, b"a"), Err(FsError::NotDir));
    assert_eq!(fs.unlink(ROOT_INO, b"zzz"), Err(FsError::NotFound));
    fs.unlink(d.ino, b"inner").unwrap();
    fs.rmdir(ROOT_INO, b"d").unwrap();
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 2);
    assert_eq!(fs.getattr_gen(d.ino, d.generation), Err(FsError::Stale));
    assert_eq!(FsError::NotEmpty.errno(), 39);
    t.fsck_clean();
}

#[test]
fn files_hold_data_across_4gib_with_holes_and_truncates() {
    let mut t = T::new();
    let f = t.fs().create(ROOT_INO, b"f", &file(0o644), true).unwrap();
    let big = 5u64 << 30;
    let pattern: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    t.fs().write(f.ino, 0, b"head").unwrap();
    t.fs().write(f.ino, big - 3, &pattern).unwrap();
    let a = t.fs().getattr(f.ino).unwrap();
    assert_eq!(a.size, big - 3 + pattern.len() as u64);
    assert_eq!(t.fs().read(f.ino, 0, 8).unwrap(), b"head\0\0\0\0");
    assert_eq!(t.fs().read(f.ino, 1 << 31, 4096).unwrap(), vec![0; 4096]);
    assert_eq!(t.fs().read(f.ino, big - 3, 20_000).unwrap(), pattern);
    // Overwrite in the middle of existing data (partial blocks at both ends).
    t.fs().write(f.ino, big + 100, b"XYZ").unwrap();
    let mut expect = pattern.clone();
    expect[103..106].copy_from_slice(b"XYZ");
    assert_eq!(t.fs().read(f.ino, big - 3, 20_000).unwrap(), expect);
    t.remount();
    assert_eq!(t.fs().read(f.ino, big - 3, 20_000).unwrap(), expect);
    // Truncate down into the middle of a block, then extend: the tail reads as zeros.
    t.fs()
        .setattr(
            f.ino,
            &SetAttr {
                size: Some(big + 50),
                ..SetAttr::default()
            },
        )
        .unwrap();
    t.fs()
        .setattr(
            f.ino,
            &SetAttr {
                size: Some(big + 4000),
                ..SetAttr::default()
            },
        )
        .unwrap();
    let got = t.fs().read(f.ino, big - 3, 10_000).unwrap();
    assert_eq!(got.len(), 4003);
    assert_eq!(&got[..53], &expect[..53]);
    assert!(got[53..].iter().all(|&b| b == 0));
    let a = t.fs().getattr(f.ino).unwrap();
    assert_eq!(a.online_blocks, 1 + 2);
    t.fs()
        .setattr(
            f.ino,
            &SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        )
        .unwrap();
    assert_eq!(t.fs().getattr(f.ino).unwrap().online_blocks, 0);
    assert_eq!(t.fs().read(f.ino, 0, 10).unwrap(), b"");
    t.fsck_clean();
}

#[test]
fn hard_links_symlinks_and_renames() {
    let mut t = T::new();
    let fs = t.fs();
    let a = fs.create(ROOT_INO, b"a", &file(0o644), true).unwrap();
    fs.write(a.ino, 0, b"data").unwrap();
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap();
    assert_eq!(fs.link(a.ino, d.ino, b"a2").unwrap().nlink, 2);
    assert_eq!(fs.link(d.ino, ROOT_INO, b"dirlink").unwrap_err().errno(), 1);
    fs.unlink(ROOT_INO, b"a").unwrap();
    assert_eq!(fs.read(a.ino, 0, 10).unwrap(), b"data");
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 1);
    let paths = fs.ino_paths(a.ino, 10).unwrap();
    assert_eq!(paths, vec![b"/d/a2".to_vec()]);
    let s = fs.symlink(ROOT_INO, b"s", b"d/a2", 0, 0).unwrap();
    assert_eq!(fs.readlink(s.ino).unwrap(), b"d/a2");
    assert_eq!(s.size, 4);
    // Rename over an existing file replaces it.
    let b = fs.create(ROOT_INO, b"b", &file(0o644), true).unwrap();
    fs.rename(d.ino, b"a2", ROOT_INO, b"b").unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"b").unwrap().ino, a.ino);
    assert_eq!(fs.getattr(b.ino), Err(FsError::NotFound));
    assert_eq!(fs.lookup(d.ino, b"a2"), Err(FsError::NotFound));
    // Directory moves: not below itself, not over a file, over an empty dir only.
    let sub = fs.mkdir(d.ino, b"sub", 0o755, 0, 0).unwrap();
    assert!(matches!(
        fs.rename(ROOT_INO, b"d", sub.ino, b"x"),
        Err(FsError::Invalid(_))
    ));
    assert!(matches!(
        fs.rename(ROOT_INO, b"d", d.ino, b"x"),
        Err(FsError::Invalid(_))
    ));
    assert_eq!(
        fs.rename(ROOT_INO, b"d", ROOT_INO, b"b"),
        Err(FsError::NotDir)
    );
    assert_eq!(
        fs.rename(ROOT_INO, b"b", d.ino, b"sub"),
        Err(FsError::IsDir)
    );
    let e = fs.mkdir(ROOT_INO, b"e", 0o755, 0, 0).unwrap();
    fs.create(e.ino, b"busy", &file(0o644), true).unwrap();
    assert_eq!(
        fs.rename(d.ino, b"sub", ROOT_INO, b"e"),
        Err(FsError::NotEmpty)
    );
    fs.unlink(e.ino, b"busy").unwrap();
    fs.rename(d.ino, b"sub", ROOT_INO, b"e").unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"e").unwrap().ino, sub.ino);
    assert_eq!(fs.lookup(sub.ino, b"..").unwrap().ino, ROOT_INO);
    assert_eq!(fs.getattr(d.ino).unwrap().nlink, 2);
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 4);
    // Renaming a name onto another name of the same inode changes nothing.
    fs.link(a.ino, ROOT_INO, b"b2").unwrap();
    fs.rename(ROOT_INO, b"b", ROOT_INO, b"b2").unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 2);
    t.remount();
    assert_eq!(t.fs().read(a.ino, 0, 10).unwrap(), b"data");
    t.fsck_clean();
}

#[test]
fn readdir_cookies_stay_valid_while_entries_change() {
    let t = T::new();
    let fs = t.fs();
    for n in 0..50 {
        fs.create(ROOT_INO, format!("f{n:02}").as_bytes(), &file(0o644), true)
            .unwrap();
    }
    let first = fs.readdir(ROOT_INO, 0, 20).unwrap();
    assert_eq!(first.entries.len(), 20);
    assert!(!first.eof);
    let cookie = first.entries.last().unwrap().cookie;
    // Remove some already listed and some not yet listed; add new ones.
    fs.unlink(ROOT_INO, b"f00").unwrap();
    fs.unlink(ROOT_INO, b"f30").unwrap();
    fs.create(ROOT_INO, b"new", &file(0o644), true).unwrap();
    let mut names: Vec<Vec<u8>> = first.entries.iter().map(|e| e.name.clone()).collect();
    let mut c = cookie;
    loop {
        let page = fs.readdir(ROOT_INO, c, 7).unwrap();
        for e in &page.entries {
            names.push(e.name.clone());
            c = e.cookie;
        }
        if page.eof {
            break;
        }
    }
    names.sort();
    names.dedup();
    assert_eq!(
        names.len(),
        50 + 1 - 1,
        "each entry once, f30 gone, new present"
    );
    assert!(names.contains(&b"new".to_vec()));
    assert!(!names.contains(&b"f30".to_vec()));
}

/// A page ends exactly: a directory of exactly a page's entries is one page with eof, one
/// entry more makes a second page; and a page is read in one merged scan, not a walk from
/// the roots per entry.
#[test]
fn readdir_pages_end_exactly_and_read_a_page_at_once() {
    let t = T::new();
    let fs = t.fs();
    let dir = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino;
    for n in 0..300 {
        fs.create(dir, format!("f{n:03}").as_bytes(), &file(0o644), true)
            .unwrap();
    }
    for synced in [false, true] {
        if synced {
            fs.sync().unwrap();
        }
        let all = fs.readdir(dir, 0, 300).unwrap();
        assert_eq!((all.entries.len(), all.eof), (300, true));
        let first = fs.readdir(dir, 0, 299).unwrap();
        assert_eq!((first.entries.len(), first.eof), (299, false));
        let rest = fs.readdir(dir, first.entries[298].cookie, 299).unwrap();
        assert_eq!((rest.entries.len(), rest.eof), (1, true));
        assert_eq!(rest.entries[0].cookie, all.entries[299].cookie);
    }
    let md = t.md.as_ref().unwrap();
    let s0 = md.cache_stats();
    let page = fs.readdir(dir, 0, 300).unwrap();
    let s1 = md.cache_stats();
    assert_eq!(page.entries.len(), 300);
    let reads = s1.hits + s1.misses - s0.hits - s0.misses;
    assert!(
        reads < 30,
        "{reads} block reads for one page of 300 entries"
    );
}

/// Lookups and stats in a directory the mount has read once are answered from its item
/// cache, without walking a btree, after commits, a merge of the log trees and a remount too;
/// and what the cache answers is what the trees say.
#[test]
fn a_warm_directory_answers_lookups_and_stats_from_the_item_cache() {
    let mut t = T::new();
    for round in 0..2 {
        let fs = t.fs();
        let dir = match fs.lookup(ROOT_INO, b"d") {
            Ok(a) => a.ino,
            Err(_) => fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap().ino,
        };
        if round == 0 {
            for n in 0..2000 {
                fs.create(dir, format!("f{n:04}").as_bytes(), &file(0o644), true)
                    .unwrap();
            }
            fs.sync().unwrap();
            t.server
                .as_ref()
                .unwrap()
                .with(|s| s.request_merge())
                .unwrap();
            fs.sync().unwrap();
            t.server
                .as_ref()
                .unwrap()
                .with(|s| s.merge_finalized())
                .unwrap();
        }
        // The first pass fills the cache; the second reads no block.
        let mut inos = Vec::new();
        for pass in 0..2 {
            let md = t.md.as_ref().unwrap();
            let (s0, c0) = (md.cache_stats(), fs.item_cache_stats());
            for n in (0..2000).rev() {
                let a = fs.lookup(dir, format!("f{n:04}").as_bytes()).unwrap();
                let g = fs.getattr(a.ino).unwrap();
                assert_eq!((g.ino, g.nlink, g.size), (a.ino, 1, 0));
                if pass == 0 {
                    inos.push(a.ino);
                } else {
                    assert_eq!(inos[1999 - n], a.ino);
                }
            }
            assert_eq!(fs.lookup(dir, b"nope").unwrap_err(), FsError::NotFound);
            let (s1, c1) = (md.cache_stats(), fs.item_cache_stats());
            let reads = s1.hits + s1.misses - s0.hits - s0.misses;
            if pass == 1 {
                // Only the roots, sampled again every 100 ms, are read.
                assert!(
                    reads < 100,
                    "round {round}: a warm pass read {reads} blocks"
                );
                assert_eq!(c1.misses, c0.misses, "round {round}");
                assert!(c1.hits >= c0.hits + 6000, "{c0:?} {c1:?}");
            }
        }
        t.fsck_clean();
        t.remount();
    }
}

#[test]
fn xattrs_search_and_hidden_names() {
    let mut t = T::new();
    let fs = t.fs();
    let a = fs.create(ROOT_INO, b"a", &file(0o644), true).unwrap();
    let b = fs.create(ROOT_INO, b"b", &file(0o644), true).unwrap();
    let big = vec![7u8; 65536];
    fs.set_xattr(a.ino, b"user.big", &big, XattrSet::Any)
        .unwrap();
    fs.set_xattr(a.ino, b"scoutfs.hide.secret", b"x", XattrSet::Any)
        .unwrap();
    fs.set_xattr(a.ino, b"scoutfs.srch.tag", b"1", XattrSet::Any)
        .unwrap();
    fs.set_xattr(b.ino, b"scoutfs.srch.tag", b"2", XattrSet::Any)
        .unwrap();
    assert_eq!(fs.get_xattr(a.ino, b"user.big").unwrap(), big);
    assert_eq!(
        fs.set_xattr(a.ino, b"user.big", b"", XattrSet::Create),
        Err(FsError::Exists)
    );
    assert_eq!(
        fs.set_xattr(a.ino, b"user.none", b"", XattrSet::Replace),
        Err(FsError::NoAttr)
    );
    assert_eq!(fs.get_xattr(a.ino, b"user.none"), Err(FsError::NoAttr));
    assert_eq!(
        fs.set_xattr(a.ino, b"bogus", b"", XattrSet::Any)
            .unwrap_err()
            .errno(),
        95
    );
    assert_eq!(
        fs.list_xattrs(a.ino).unwrap(),
        vec![b"scoutfs.srch.tag".to_vec(), b"user.big".to_vec()]
    );
    assert_eq!(fs.get_xattr(a.ino, b"scoutfs.hide.secret").unwrap(), b"x");
    let mut found = fs.search_xattrs(b"scoutfs.srch.tag").unwrap();
    found.sort();
    assert_eq!(found, vec![a.ino, b.ino]);
    fs.remove_xattr(b.ino, b"scoutfs.srch.tag").unwrap();
    t.remount();
    assert_eq!(
        t.fs().search_xattrs(b"scoutfs.srch.tag").unwrap(),
        vec![a.ino]
    );
    assert_eq!(t.fs().get_xattr(a.ino, b"user.big").unwrap(), big);
    t.fs().unlink(ROOT_INO, b"a").unwrap();
    assert_eq!(
        t.fs().search_xattrs(b"scoutfs.srch.tag").unwrap(),
        Vec::<u64>::new()
    );
    t.fsck_clean();
}

#[test]
fn meta_seq_walks_find_every_changed_inode_and_stop_at_the_horizon() {
    let mut t = T::new();
    t.fs().sync().unwrap();
    let start = t
        .fs()
        .walk_inodes(SeqIndex::MetaSeq, 0, u64::MAX, None, 1000)
        .unwrap();
    let checkpoint = start.horizon;
    let mut changed = Vec::new();
    for n in 0..30 {
        let a = t
            .fs()
            .create(ROOT_INO, format!("f{n}").as_bytes(), &file(0o644), true)
            .unwrap();
        changed.push(a.ino);
    }
    // Not committed yet: above the horizon, so invisible.
    let page = t
        .fs()
        .walk_inodes(SeqIndex::MetaSeq, checkpoint + 1, u64::MAX, None, 1000)
        .unwrap();
    assert!(page.entries.is_empty(), "{page:?}");
    t.fs().sync().unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = t
            .fs()
            .walk_inodes(SeqIndex::MetaSeq, checkpoint + 1, u64::MAX, after, 7)
            .unwrap();
        seen.extend(page.entries.iter().map(|e| e.1));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    changed.push(ROOT_INO);
    changed.sort();
    seen.sort();
    assert_eq!(seen, changed);
    // data_seq: only files whose contents changed.
    let f = t.fs().lookup(ROOT_INO, b"f3").unwrap();
    let before = t
        .fs()
        .walk_inodes(SeqIndex::DataSeq, 0, u64::MAX, None, 1000)
        .unwrap()
        .horizon;
    t.fs().write(f.ino, 0, b"x").unwrap();
    t.remount();
    let page = t
        .fs()
        .walk_inodes(SeqIndex::DataSeq, before + 1, u64::MAX, None, 1000)
        .unwrap();
    assert_eq!(
        page.entries.iter().map(|e| e.1).collect::<Vec<_>>(),
        vec![f.ino]
    );
}

#[test]
fn release_stage_and_readers_waiting_for_offline_data() {
    let t = T::new();
    let fs = t.fs();
    let f = fs.create(ROOT_INO, b"f", &file(0o644), true).unwrap();
    let content: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 253) as u8).collect();
    fs.write(f.ino, 0, &content).unwrap();
    let v = fs.stat_more(f.ino).unwrap();
    assert_eq!(v.online_blocks, 4);
    // A stale data_version is refused and changes nothing.
    assert!(matches!(
        fs.release(f.ino, 0, 8192, v.data_version + 1),
        Err(FsError::DataVersion { .. })
    ));
    fs.release(f.ino, 0, content.len() as u64, v.data_version)
        .unwrap();
    let s = fs.stat_more(f.ino).unwrap();
    assert_eq!(
        (s.online_blocks, s.offline_blocks, s.data_version),
        (0, 4, v.data_version)
    );
    // A reader blocks until the data is staged.
    std::thread::scope(|sc| {
        let reader = sc.spawn(|| fs.read(f.ino, 5000, 100));
        let t0 = std::time::Instant::now();
        while fs.data_waiting().is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(5), "reader never waited");
            std::thread::sleep(Duration::from_millis(5));
        }
        let w = &fs.data_waiting()[0];
        assert_eq!((w.ino, w.block), (f.ino, 1));
        assert!(matches!(
            fs.stage(f.ino, 0, &content, v.data_version + 7),
            Err(FsError::DataVersion { .. })
        ));
        fs.stage(f.ino, 0, &content, v.data_version).unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), &content[5000..5100]);
    });
    assert!(fs.data_waiting().is_empty());
    assert_eq!(fs.stat_more(f.ino).unwrap().online_blocks, 4);
    assert_eq!(fs.read(f.ino, 0, 1 << 20).unwrap(), content);
    // Staging over online data is refused.
    assert!(matches!(
        fs.stage(f.ino, 0, b"x", v.data_version),
        Err(FsError::Invalid(_))
    ));
    // An explicit error fails a waiting reader.
    fs.release(f.ino, 0, content.len() as u64, v.data_version)
        .unwrap();
    std::thread::scope(|sc| {
        let reader = sc.spawn(|| fs.read(f.ino, 0, 10));
        while fs.data_waiting().is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(fs.data_wait_err(f.ino, 0, 1, 5), 1);
        assert_eq!(reader.join().unwrap(), Err(FsError::Errno(5)));
    });
    // And without staging, a read gives up after its timeout.
    assert_eq!(
        fs.read_wait(f.ino, 0, 10, Duration::from_millis(50)),
        Err(FsError::Offline)
    );
}

/// Synced changes survive a crash; unsynced metadata changes vanish. (An unsynced overwrite
/// of already-mapped blocks goes to its blocks in place and may or may not survive, as in
/// any filesystem without data journaling; the size stays the synced one.)
#[test]
fn synced_changes_survive_a_crash_and_unsynced_ones_vanish_whole() {
    let mut t = T::new();
    let a = t
        .fs()
        .create(ROOT_INO, b"kept", &file(0o644), true)
        .unwrap();
    t.fs().write(a.ino, 0, b"durable").unwrap();
    t.fs().fsync(a.ino).unwrap();
    t.fs()
        .create(ROOT_INO, b"lost", &file(0o644), true)
        .unwrap();
    t.fs().write(a.ino, 0, b"DURABLE!").unwrap();
    t.crash_and_remount();
    let got = t.fs().read(a.ino, 0, 100).unwrap();
    assert!(got == b"durable" || got == b"DURABLE", "{got:?}");
    assert_eq!(t.fs().lookup(ROOT_INO, b"lost"), Err(FsError::NotFound));
    t.fsck_clean();
}

/// An archive agent's loop on a second mount: walk `meta_seq` from its checkpoint up to the
/// stable horizon, then move the checkpoint to that horizon; meanwhile a writer mount keeps
/// changing files. Every inode whose last change is after the first checkpoint must have
/// been returned by some walk at or after that change: nothing is missed.
#[test]
fn index_walkers_that_checkpoint_the_horizon_miss_no_change() {
    let mut t = T::new();
    let server = t.server.clone().unwrap();
    let walker = t.other_mount(&server, open(&t.meta), 999);
    let mut files = Vec::new();
    for n in 0..40 {
        files.push(
            t.fs()
                .create(ROOT_INO, format!("f{n}").as_bytes(), &file(0o644), true)
                .unwrap()
                .ino,
        );
    }
    t.fs().sync().unwrap();
    let start = walker
        .walk_inodes(SeqIndex::MetaSeq, 0, u64::MAX, None, 1)
        .unwrap()
        .horizon;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let seen = std::thread::scope(|sc| {
        let w = sc.spawn(|| {
            // (ino, meta_seq) pairs the walker returned.
            let mut seen: Vec<(u64, u64)> = Vec::new();
            let mut checkpoint = start;
            let mut passes = 0;
            loop {
                let done = stop.load(std::sync::atomic::Ordering::Acquire);
                let mut after = None;
                let mut horizon = None;
                loop {
                    let page = walker
                        .walk_inodes(SeqIndex::MetaSeq, checkpoint + 1, u64::MAX, after, 5)
                        .unwrap();
                    // Every page of one pass reports the horizon the pass started under or
                    // a later one; the pass covers up to the first.
                    let h = *horizon.get_or_insert(page.horizon);
                    seen.extend(page.entries.iter().filter(|e| e.0 <= h).map(|e| (e.1, e.0)));
                    match page.next {
                        Some(n) if n.0 <= h => after = Some(n),
                        _ => break,
                    }
                }
                checkpoint = horizon.unwrap().max(checkpoint);
                passes += 1;
                if done {
                    return (seen, passes);
                }
            }
        });
        let mut n = 0u64;
        for round in 0..60u64 {
            for _ in 0..5 {
                n = (n * 7 + 3) % files.len() as u64;
                let ino = files[n as usize];
                match round % 3 {
                    0 => {
                        t.fs().write(ino, round * 10, b"x").unwrap();
                    }
                    1 => {
                        t.fs()
                            .setattr(
                                ino,
                                &SetAttr {
                                    mode: Some(0o600 + (round as u32 % 8)),
                                    ..SetAttr::default()
                                },
                            )
                            .unwrap();
                    }
                    _ => {
                        t.fs()
                            .set_xattr(ino, b"user.r", &round.to_le_bytes(), XattrSet::Any)
                            .unwrap();
                    }
                }
            }
            t.fs().sync().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        w.join().unwrap()
    });
    let (seen, passes) = seen;
    assert!(passes > 1, "the walker should have made several passes");
    for ino in files.iter().copied().chain([ROOT_INO]) {
        let a = t.fs().getattr(ino).unwrap();
        if a.meta_seq > start {
            assert!(
                seen.iter().any(|&(i, s)| i == ino && s >= a.meta_seq),
                "inode {ino} changed at seq {} was never walked at or after it",
                a.meta_seq
            );
        }
    }
    walker.unmount().unwrap();
    t.fsck_clean();
}

#[test]
fn a_full_data_device_gives_enospc_and_loses_nothing() {
    let mut t = T::new();
    let st = t.fs().statfs().unwrap();
    assert_eq!(st.block_size, 4096);
    let keep = t
        .fs()
        .create(ROOT_INO, b"keep", &file(0o644), true)
        .unwrap();
    t.fs().write(keep.ino, 0, b"precious").unwrap();
    t.fs().sync().unwrap();
    let f = t
        .fs()
        .create(ROOT_INO, b"fill", &file(0o644), true)
        .unwrap();
    let chunk = vec![0xA5u8; 8 << 20];
    let mut off = 0u64;
    let err = loop {
        match t.fs().write(f.ino, off, &chunk) {
            Ok(_) => off += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(off < 1 << 30, "the 256 MiB data device never filled");
    };
    assert_eq!(err, FsError::NoSpace);
    assert_eq!(err.errno(), 28);
    // What was written before the error is intact, the other file too, and the space
    // comes back when the file goes.
    t.fs().sync().unwrap();
    assert_eq!(t.fs().read(f.ino, off - 10, 10).unwrap(), vec![0xA5; 10]);
    assert_eq!(t.fs().read(keep.ino, 0, 100).unwrap(), b"precious");
    t.fsck_clean();
    t.fs().unlink(ROOT_INO, b"fill").unwrap();
    t.fs().sync().unwrap();
    t.remount();
    let g = t
        .fs()
        .create(ROOT_INO, b"again", &file(0o644), true)
        .unwrap();
    t.fs().write(g.ino, 0, &chunk).unwrap();
    t.fsck_clean();
}

/// Files with a 60 KB xattr each, named `{prefix}{n}`, made until the filesystem refuses one
/// with ENOSPC, syncing every `sync_every` files (never: the mount commits as it needs); how
/// many were made whole.
fn fill_with_xattrs(fs: &Fs, prefix: &str, sync_every: Option<usize>) -> usize {
    let big = vec![0x5Au8; 60_000];
    let mut made = 0;
    loop {
        let name = format!("{prefix}{made}");
        let res = fs
            .create(ROOT_INO, name.as_bytes(), &file(0o644), true)
            .and_then(|a| fs.set_xattr(a.ino, b"user.big", &big, XattrSet::Any));
        match res {
            Ok(()) => made += 1,
            Err(e) => {
                assert_eq!(e, FsError::NoSpace, "after {made} files");
                return made;
            }
        }
        if sync_every.is_some_and(|n| made % n == 0) {
            fs.sync().unwrap();
        }
        assert!(made < 10_000, "the metadata device never filled");
    }
}

#[test]
fn a_full_metadata_device_gives_enospc_keeps_the_mount_and_space_comes_back() {
    // 64 MiB of metadata (1024 blocks of 64 KiB) fills with about 1,000 such files.
    let mut t = T::with_meta_device(64 << 20, ServerConfig::default());
    // The background merger runs, as on a node.
    let merger = t
        .server
        .as_ref()
        .unwrap()
        .spawn_merger(Duration::from_millis(50));
    let made = fill_with_xattrs(t.fs(), "f", Some(25));
    drop(merger);
    assert!(made > 100, "ENOSPC after only {made} files");
    // The mount goes on: what it made is committed, every file reads back, and removing
    // files works on the full device.
    assert!(!t.fs().is_failed());
    t.fs().sync().unwrap();
    t.remount();
    for n in 0..made {
        let a = t.fs().lookup(ROOT_INO, format!("f{n}").as_bytes()).unwrap();
        assert_eq!(t.fs().get_xattr(a.ino, b"user.big").unwrap().len(), 60_000);
    }
    t.fsck_clean();
    let full = t.fs().statfs().unwrap().free_meta_blocks;
    for n in 0..made {
        t.fs().unlink(ROOT_INO, format!("f{n}").as_bytes()).unwrap();
    }
    // A half-made file may be left by the create that succeeded before its xattr failed.
    let _ = t.fs().unlink(ROOT_INO, format!("f{made}").as_bytes());
    t.fs().sync().unwrap();
    t.fs().sync().unwrap();
    t.server
        .as_ref()
        .unwrap()
        .with(|s| s.merge_finalized())
        .unwrap();
    let freed = t.fs().statfs().unwrap().free_meta_blocks;
    eprintln!(
        "{made} files until ENOSPC; free metadata blocks then {full}, after removing them {freed}"
    );
    assert!(freed > full + 500, "free metadata blocks {full} -> {freed}");
    // The space is usable again, by as many files as before, give or take.
    let merger = t
        .server
        .as_ref()
        .unwrap()
        .spawn_merger(Duration::from_millis(50));
    let again = fill_with_xattrs(t.fs(), "g", None);
    drop(merger);
    eprintln!("{again} files until ENOSPC again");
    assert!(
        again * 10 >= made * 8,
        "{again} files the second time, {made} the first"
    );
    assert!(!t.fs().is_failed());
    t.fsck_clean();
}

#[test]
fn mknod_makes_fifos_sockets_and_devices() {
    let mut t = T::new();
    for (name, kind, rdev) in [
        (&b"fifo"[..], FileType::Fifo, 0),
        (b"sock", FileType::Socket, 0),
        (b"chr", FileType::CharDevice, (1 << 8) | 3),
        (b"blk", FileType::BlockDevice, (8 << 8) | 1),
    ] {
        let node = NewNode {
            kind,
            perm: 0o640,
            uid: 0,
            gid: 6,
            rdev,
        };
        let a = t.fs().create(ROOT_INO, name, &node, true).unwrap();
        assert_eq!(a.file_type(), Some(kind));
        assert_eq!((a.mode & 0o7777, a.rdev), (0o640, rdev));
        // Data operations are for regular files only.
        assert!(t.fs().write(a.ino, 0, b"x").is_err());
    }
    t.remount();
    let page = t.fs().readdir(ROOT_INO, 0, 10).unwrap();
    let kinds: Vec<_> = page.entries.iter().map(|e| e.kind).collect();
    assert_eq!(kinds.len(), 4);
    assert!(kinds.contains(&Some(FileType::BlockDevice)));
    assert_eq!(t.fs().lookup(ROOT_INO, b"chr").unwrap().rdev, (1 << 8) | 3);
    t.fsck_clean();
}

/// Reads copy data blocks without the mount lock, under a guard that commits wait for (a
/// commit is what lets freed blocks be reused). Readers running through truncates, writes of
/// other files and commits see only their file's bytes or zeros, and nothing deadlocks
/// between the mount lock and the guard. (The reuse window is a few microseconds here, so
/// this guards the lock order more than the reuse itself.)
#[test]
fn reads_during_truncates_writes_and_commits_see_only_their_files_bytes() {
    // Small data refills: freed blocks come back from the server soon and are reused.
    let t = T::with_server_config(ServerConfig {
        client_data_fill: 128,
        client_data_low: 96,
        ..ServerConfig::default()
    });
    let fs = t.fs();
    let a = fs.create(ROOT_INO, b"a", &file(0o644), true).unwrap().ino;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match fs.read(a, 0, 64 * 4096) {
                        Ok(bytes) => assert!(
                            bytes.iter().all(|b| *b == 0xaa || *b == 0),
                            "a reader of a saw a byte of another file"
                        ),
                        Err(e) => panic!("read of a: {e}"),
                    }
                }
            });
        }
        for round in 0..40u32 {
            fs.write(a, 0, &[0xaa; 64 * 4096]).unwrap();
            fs.sync().unwrap();
            fs.setattr(
                a,
                &SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                },
            )
            .unwrap();
            fs.sync().unwrap();
            let name = format!("b{round}");
            let b = fs
                .create(ROOT_INO, name.as_bytes(), &file(0o644), true)
                .unwrap()
                .ino;
            fs.write(b, 0, &[0xbb; 64 * 4096]).unwrap();
            fs.sync().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

/// A commit that fails (here the mount's metadata writes fail with EIO) loses the open
/// transaction. From then on every operation fails with an I/O error, also after the device
/// works again, instead of answering from changes the cluster never saw; and the mount
/// gives a lock up at once when another node wants it (it has nothing it could still
/// write), so other nodes do not wait on it forever. A new mount sees what was committed.
#[test]
fn after_a_failed_commit_every_operation_fails_and_locks_are_given_up_at_once() {
    use scoutgw_blockdev::device::Faults;
    use scoutgw_blockdev::FaultyDevice;
    use scoutgw_cluster::format::Key;
    use scoutgw_cluster::lock::LockMode;

    let mut t = T::new();
    t.fs.take().unwrap().unmount().unwrap();
    let server = Arc::new(LocalServer::new(
        Server::open(open(&t.meta), t.cfg.clone()).unwrap(),
    ));
    let faulty = Arc::new(FaultyDevice::new(
        FileDevice::open(&t.meta, DeviceOptions::default()).unwrap(),
    ));
    let fs = t.other_mount(&server, faulty.clone(), 77);
    let kept = fs.create(ROOT_INO, b"kept", &file(0o644), true).unwrap();
    fs.write(kept.ino, 0, b"durable").unwrap();
    fs.sync().unwrap();
    fs.create(ROOT_INO, b"lost", &file(0o644), true).unwrap();
    faulty.set_faults(Faults {
        fail_writes: true,
        ..Faults::default()
    });
    assert!(matches!(fs.sync(), Err(FsError::Io(_))));
    assert!(fs.is_failed());
    faulty.set_faults(Faults::default());
    let io = |r: Result<(), FsError>| matches!(r, Err(FsError::Io(_)));
    assert!(io(fs.lookup(ROOT_INO, b"kept").map(drop)));
    assert!(io(fs.lookup(ROOT_INO, b"lost").map(drop)));
    assert!(io(fs.getattr(kept.ino).map(drop)));
    assert!(io(fs.read(kept.ino, 0, 7).map(drop)));
    assert!(io(fs.readdir(ROOT_INO, 0, 10).map(drop)));
    assert!(io(fs
        .create(ROOT_INO, b"more", &file(0o644), true)
        .map(drop)));
    assert!(io(fs.unlink(ROOT_INO, b"kept")));
    let k = Key::new(scoutgw_cluster::format::key::zone::FS, 0, 0, 0, 0, 0);
    assert_eq!(
        fs.invalidate_lock(&k, &k, LockMode::Write, LockMode::Null),
        Ok(())
    );
    drop(fs);
    drop(server);
    t.mount();
    assert_eq!(t.fs().lookup(ROOT_INO, b"kept").unwrap().ino, kept.ino);
    assert_eq!(t.fs().read(kept.ino, 0, 100).unwrap(), b"durable");
    assert_eq!(t.fs().lookup(ROOT_INO, b"lost"), Err(FsError::NotFound));
    t.fsck_clean();
}

/// A sync that goes on to the next transaction (`Fs::sync_and_continue`, a sync NFS
/// export's commit) leaves it open and empty: it holds the stable seq below it until
/// `Fs::sync` (the node's periodic commit) closes it. A write lock invalidated meanwhile
/// commits nothing (nothing changed), as when no transaction was open; another sync and
/// continue with nothing changed does nothing either.
#[test]
fn an_empty_next_transaction_costs_invalidations_nothing_and_sync_closes_it() {
    use scoutgw_cluster::format::key::zone;
    use scoutgw_cluster::format::Key;
    use scoutgw_cluster::lock::LockMode;
    let mut t = T::new();
    let fs = t.fs();
    let server = t.server.as_ref().unwrap().clone();
    let committed = || server.with(|s| s.stable_super().seq.get());
    let a = fs.create(ROOT_INO, b"a", &file(0o644), true).unwrap();
    fs.sync_and_continue().unwrap();
    let after_commit = committed();
    let horizon = server.with(|s| s.last_seq()).unwrap();
    fs.sync_and_continue().unwrap();
    let k = Key::new(zone::FS, a.ino, 0, 0, 0, 0);
    fs.invalidate_lock(&k, &k, LockMode::Write, LockMode::Null)
        .unwrap();
    assert_eq!(committed(), after_commit, "no server commit");
    // The open transaction still holds the horizon; sync closes it.
    let b = fs.create(ROOT_INO, b"b", &file(0o644), true).unwrap();
    fs.sync_and_continue().unwrap();
    assert!(server.with(|s| s.last_seq()).unwrap() > horizon);
    let held = server.with(|s| s.last_seq()).unwrap();
    server.with(|s| s.next_core_seq());
    assert_eq!(server.with(|s| s.last_seq()).unwrap(), held, "held back");
    fs.sync().unwrap();
    assert!(server.with(|s| s.last_seq()).unwrap() > held, "released");
    assert_eq!(fs.lookup(ROOT_INO, b"b").unwrap().ino, b.ino);
    drop(server);
    t.fsck_clean();
}
