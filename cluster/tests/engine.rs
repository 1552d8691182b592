//! The metadata engine end to end on real device files: server, clients, transactions,
//! resends, merges, remounts and fsck.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use scoutgw_blockdev::{BlockDevice, DeviceOptions, FileDevice, MetaDev};
use scoutgw_cluster::client::{Client, LocalServer};
use scoutgw_cluster::format::key::zone;
use scoutgw_cluster::format::log_trees::LogTrees;
use scoutgw_cluster::format::Key;
use scoutgw_cluster::fsck::fsck;
use scoutgw_cluster::mkfs::{mkfs, MkfsOptions};
use scoutgw_cluster::msg::{Request, Response, Roots, ServerError, ServerLink, Statfs};
use scoutgw_cluster::server::{Server, ServerConfig};

struct Fs {
    _dir: tempfile::TempDir,
    meta: std::path::PathBuf,
    data: std::path::PathBuf,
}

fn open(path: &Path) -> Arc<dyn BlockDevice> {
    Arc::new(FileDevice::open(path, DeviceOptions::default()).unwrap())
}

impl Fs {
    fn new() -> Self {
        Self::with_meta_bytes(256 << 20)
    }

    fn with_meta_bytes(meta_bytes: u64) -> Self {
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
        Self {
            _dir: dir,
            meta,
            data,
        }
    }

    fn server(&self) -> Arc<LocalServer> {
        Arc::new(LocalServer::new(
            Server::open(open(&self.meta), server_config()).unwrap(),
        ))
    }

    fn client(&self, server: &Arc<LocalServer>, rid: u64) -> Client {
        self.client_with_cache(server, rid, 16 << 20)
    }

    fn client_with_cache(&self, server: &Arc<LocalServer>, rid: u64, cache: u64) -> Client {
        let md = Arc::new(MetaDev::new(
            open(&self.meta),
            server.with(|s| s.fsid()),
            cache,
        ));
        Client::mount(md, server.clone(), rid).unwrap()
    }

    fn assert_fsck_clean(&self) {
        let r = fsck(open(&self.meta), Some(open(&self.data))).unwrap();
        assert!(r.is_clean(), "fsck: {:#?}", r.problems);
    }
}

/// The servers of these tests: small allocator refills, so that trees and lists change often.
fn server_config() -> ServerConfig {
    ServerConfig {
        client_meta_fill: 256,
        client_meta_low: 128,
        client_data_fill: 4096,
        client_data_low: 1024,
        server_meta_low: 64,
        server_meta_high: 512,
        ..ServerConfig::default()
    }
}

/// Test keys live far above the inode numbers mkfs uses (the root directory is inode 1).
const KEY_BASE: u64 = 1 << 40;

fn key(n: u64) -> Key {
    Key::new(zone::FS, KEY_BASE + n / 16, 4, n % 16, 0, 0)
}

/// The first and last possible test keys.
fn lo() -> Key {
    Key::new(zone::FS, KEY_BASE, 0, 0, 0, 0)
}

fn hi() -> Key {
    Key::MAX
}

#[test]
fn committed_items_survive_a_remount_and_fsck_is_clean() {
    let fs = Fs::new();
    let server = fs.server();
    let mut c = fs.client(&server, 1);
    for n in 0..2000 {
        c.put(key(n), format!("value {n}").into_bytes(), 0).unwrap();
    }
    c.commit().unwrap();
    for n in (0..2000).step_by(3) {
        c.delete(key(n), 0).unwrap();
    }
    c.put(key(5000), vec![7; 896], 0).unwrap();
    c.commit().unwrap();
    // Uncommitted changes are lost with the mount.
    c.put(key(9999), b"lost".to_vec(), 0).unwrap();
    drop(c);
    drop(server);
    fs.assert_fsck_clean();

    let server = fs.server();
    let mut c = fs.client(&server, 2);
    for n in 0..2000 {
        let got = c.get(&key(n)).unwrap();
        if n % 3 == 0 {
            assert_eq!(got, None, "{n}");
        } else {
            assert_eq!(got, Some(format!("value {n}").into_bytes()), "{n}");
        }
    }
    assert_eq!(c.get(&key(5000)).unwrap(), Some(vec![7; 896]));
    assert_eq!(c.get(&key(9999)).unwrap(), None);
    let all = c.range(&lo(), &hi()).unwrap();
    assert_eq!(all.len(), 2000 - 667 + 1);
    c.unmount().unwrap();
    drop(server);
    fs.assert_fsck_clean();
}

#[test]
fn resent_get_and_commit_log_trees_change_nothing_twice() {
    let fs = Fs::new();
    let server = fs.server();
    let rid = 77;
    let greet = Request::Greeting {
        fsid: server.with(|s| s.fsid()),
        format_version: 1,
        rid,
        server_term: 0,
    };
    server.call(rid, greet.clone()).unwrap();
    server.call(rid, greet).unwrap();
    let get = |s: &Arc<LocalServer>| match s.call(rid, Request::GetLogTrees).unwrap() {
        Response::LogTrees(lt) => *lt,
        other => panic!("{other:?}"),
    };
    let first = get(&server);
    let again = get(&server);
    assert_eq!(
        first, again,
        "a resent GetLogTrees must return the open transaction"
    );
    let free_before = match server.call(rid, Request::Statfs).unwrap() {
        Response::Statfs(s) => s,
        other => panic!("{other:?}"),
    };
    for _ in 0..3 {
        match server
            .call(rid, Request::CommitLogTrees(Box::new(first)))
            .unwrap()
        {
            Response::Committed => {}
            other => panic!("{other:?}"),
        }
    }
    let free_after = match server.call(rid, Request::Statfs).unwrap() {
        Response::Statfs(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(free_before.free_meta_blocks, free_after.free_meta_blocks);
    assert_eq!(free_before.free_data_blocks, free_after.free_data_blocks);
    // A commit of a transaction that is not the open one is refused.
    let next = get(&server);
    assert!(next.get_trans_seq.get() > first.get_trans_seq.get());
    assert!(server
        .call(rid, Request::CommitLogTrees(Box::new(first)))
        .is_err());
    drop(server);
    fs.assert_fsck_clean();
}

#[test]
fn requests_before_greeting_are_refused() {
    let fs = Fs::new();
    let server = fs.server();
    assert!(server.call(5, Request::GetLogTrees).is_err());
}

#[test]
fn two_clients_see_each_others_commits_and_merge_keeps_newest() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    let mut b = fs.client(&server, 2);
    for n in 0..500 {
        a.put(key(n), b"a1".to_vec(), 0).unwrap();
    }
    a.commit().unwrap();
    b.refresh_roots().unwrap();
    assert_eq!(b.get(&key(10)).unwrap(), Some(b"a1".to_vec()));
    for n in 0..250 {
        b.put(key(n), b"b1".to_vec(), 0).unwrap();
    }
    b.delete(key(400), 0).unwrap();
    b.commit().unwrap();
    // Neither has an open transaction (they open at the next change): both are finalized
    // at once.
    server.with(|s| s.request_merge()).unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 2);
    // Newer writes after the merge win over merged items.
    a.refresh_roots().unwrap();
    a.put(key(0), b"a2".to_vec(), 0).unwrap();
    a.commit().unwrap();
    let mut c = fs.client(&server, 3);
    assert_eq!(c.get(&key(0)).unwrap(), Some(b"a2".to_vec()));
    assert_eq!(c.get(&key(1)).unwrap(), Some(b"b1".to_vec()));
    assert_eq!(c.get(&key(300)).unwrap(), Some(b"a1".to_vec()));
    assert_eq!(c.get(&key(400)).unwrap(), None);
    assert_eq!(c.range(&lo(), &hi()).unwrap().len(), 499);
    drop((a, b, c));
    drop(server);
    fs.assert_fsck_clean();
}

#[test]
fn merging_one_tree_keeps_deletions_that_hide_older_items_in_unmerged_trees() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    let mut b = fs.client(&server, 2);
    // A writes k (old), B later deletes it; only B's tree gets merged.
    a.put(key(1), b"old".to_vec(), 0).unwrap();
    a.commit().unwrap();
    b.refresh_roots().unwrap();
    b.delete(key(1), 0).unwrap();
    b.put(key(2), b"b".to_vec(), 0).unwrap();
    b.commit().unwrap();
    // A has a transaction open, so only B's tree is finalized now.
    a.begin().unwrap();
    server.with(|s| s.request_merge()).unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    let mut c = fs.client(&server, 3);
    assert_eq!(
        c.get(&key(1)).unwrap(),
        None,
        "the merged deletion must still hide A's item"
    );
    assert_eq!(c.get(&key(2)).unwrap(), Some(b"b".to_vec()));
    // Once A's tree is merged too, the key is gone for good.
    a.sync().unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    c.refresh_roots().unwrap();
    assert_eq!(c.get(&key(1)).unwrap(), None);
    assert_eq!(c.range(&lo(), &hi()).unwrap().len(), 1);
    drop((a, b, c));
    drop(server);
    fs.assert_fsck_clean();
}

/// Every item fs_root holds in the test key range, tombstones included.
fn fs_root_items(server: &LocalServer) -> usize {
    server.with(|s| {
        let roots = s.roots();
        scoutgw_cluster::btree::range(s.meta_dev(), None, &roots.fs_root, &lo(), &hi())
            .unwrap()
            .len()
    })
}

/// A merged deletion leaves a tombstone in fs_root only while an unmerged tree holds an
/// older version of its key, and the tombstone goes when that tree is merged; a deletion
/// of a key no unmerged tree holds leaves nothing, however old the other trees are.
/// (Tombstones used to stay whenever any other mount had written since before the
/// deletion, and were never removed: deleting files on one node while another wrote
/// leaked fs_root space for good.)
#[test]
fn merged_deletions_keep_a_tombstone_only_while_an_older_version_is_unmerged() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    let mut b = fs.client(&server, 2);
    // k1 is merged into fs_root first; k2 stays in A's unmerged tree.
    b.put(key(1), b"merged".to_vec(), 0).unwrap();
    b.commit().unwrap();
    server.with(|s| s.request_merge()).unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    a.put(key(2), b"unmerged".to_vec(), 0).unwrap();
    a.put(key(3), b"also unmerged".to_vec(), 0).unwrap();
    a.commit().unwrap();
    a.begin().unwrap();
    b.refresh_roots().unwrap();
    b.delete(key(1), 0).unwrap();
    b.delete(key(2), 0).unwrap();
    b.commit().unwrap();
    // Only B's tree is finalized: A has a transaction open.
    server.with(|s| s.request_merge()).unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    assert_eq!(
        fs_root_items(&server),
        1,
        "k1 removed outright; k2 kept as a tombstone over A's unmerged version"
    );
    let mut c = fs.client(&server, 3);
    assert_eq!(c.get(&key(1)).unwrap(), None);
    assert_eq!(c.get(&key(2)).unwrap(), None, "the tombstone hides A's k2");
    a.sync().unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    assert_eq!(
        fs_root_items(&server),
        1,
        "A's k2 met the tombstone and both went; k3 is all that is left"
    );
    c.refresh_roots().unwrap();
    assert_eq!(c.get(&key(2)).unwrap(), None);
    assert_eq!(c.get(&key(3)).unwrap(), Some(b"also unmerged".to_vec()));
    drop((a, b, c));
    drop(server);
    fs.assert_fsck_clean();
}

#[test]
fn data_extents_come_from_the_client_and_return_on_free() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    let before = a.statfs().unwrap().free_data_blocks;
    let (s, l) = a.alloc_data(100).unwrap().unwrap();
    assert_eq!(l, 100);
    a.put(key(1), s.to_le_bytes().to_vec(), 0).unwrap();
    a.commit().unwrap();
    assert_eq!(a.statfs().unwrap().free_data_blocks, before - 100);
    a.free_data(s, l).unwrap();
    a.commit().unwrap();
    assert_eq!(a.statfs().unwrap().free_data_blocks, before);
    drop(a);
    drop(server);
    // Blocks allocated to (not yet existing) files would be leaks; here all were returned.
    fs.assert_fsck_clean();
}

#[test]
fn last_seq_stays_below_open_transactions() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    let mut b = fs.client(&server, 2);
    let open_a = a.begin().unwrap();
    b.put(key(1), b"v".to_vec(), 0).unwrap();
    b.commit().unwrap();
    let last = b.last_seq().unwrap();
    assert!(
        last < open_a,
        "last {last} must be below A's open transaction {open_a}"
    );
    a.put(key(2), b"v".to_vec(), 0).unwrap();
    a.commit().unwrap();
    assert!(b.last_seq().unwrap() >= open_a);
}

#[derive(Debug, Clone)]
enum Op {
    Put(usize, u64, u8),
    Delete(usize, u64),
    Commit(usize),
    Get(usize, u64),
    Merge,
    Remount,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3usize, 0..300u64, any::<u8>()).prop_map(|(c, k, v)| Op::Put(c, k, v)),
        3 => (0..3usize, 0..300u64).prop_map(|(c, k)| Op::Delete(c, k)),
        3 => (0..3usize).prop_map(Op::Commit),
        4 => (0..3usize, 0..300u64).prop_map(|(c, k)| Op::Get(c, k)),
        1 => Just(Op::Merge),
        1 => Just(Op::Remount),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Three clients writing disjoint key sets (as cluster locks will guarantee), with
    /// commits, merges and remounts in between: every client sees its own changes at once and
    /// everyone's committed changes after a refresh; fsck stays clean.
    #[test]
    fn forest_matches_a_model(ops in proptest::collection::vec(op(), 1..120)) {
        let fs = Fs::new();
        let mut server = fs.server();
        let mut clients: Vec<Client> = (0..3).map(|i| fs.client(&server, 10 + i)).collect();
        // committed model and per-client uncommitted overlays
        let mut committed: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
        let mut pending: Vec<BTreeMap<Key, Option<Vec<u8>>>> = vec![BTreeMap::new(); 3];
        let own = |c: usize, k: u64| key(k * 3 + c as u64);
        for op in ops {
            match op {
                Op::Put(c, k, v) => {
                    clients[c].put(own(c, k), vec![v; (v as usize) % 200], 0).unwrap();
                    pending[c].insert(own(c, k), Some(vec![v; (v as usize) % 200]));
                }
                Op::Delete(c, k) => {
                    clients[c].delete(own(c, k), 0).unwrap();
                    pending[c].insert(own(c, k), None);
                }
                Op::Get(c, k) => {
                    // A client's own keys read as its pending change, else as committed.
                    let want = match pending[c].get(&own(c, k)) {
                        Some(v) => v.clone(),
                        None => committed.get(&own(c, k)).cloned(),
                    };
                    prop_assert_eq!(clients[c].get(&own(c, k)).unwrap(), want);
                }
                Op::Commit(c) => {
                    clients[c].commit().unwrap();
                    for (k, v) in std::mem::take(&mut pending[c]) {
                        match v { Some(v) => { committed.insert(k, v); } None => { committed.remove(&k); } }
                    }
                }
                Op::Merge => {
                    server.with(|s| s.request_merge()).unwrap();
                    // Like the server's sync request: clients commit, trees get finalized.
                    for (c, cl) in clients.iter_mut().enumerate() {
                        cl.sync().unwrap();
                        for (k, v) in std::mem::take(&mut pending[c]) {
                            match v { Some(v) => { committed.insert(k, v); } None => { committed.remove(&k); } }
                        }
                    }
                    server.with(|s| s.merge_finalized()).unwrap();
                }
                Op::Remount => {
                    for p in pending.iter_mut() { p.clear(); }
                    clients.clear();
                    drop(server);
                    server = fs.server();
                    clients = (0..3).map(|i| fs.client(&server, 10 + i)).collect();
                }
            }
        }
        for (c, cl) in clients.iter_mut().enumerate() {
            cl.refresh_roots().unwrap();
            let mut expect = committed.clone();
            for (k, v) in &pending[c] {
                match v { Some(v) => { expect.insert(*k, v.clone()); } None => { expect.remove(k); } }
            }
            // Only this client's own keys may differ from the committed view.
            let got: BTreeMap<Key, Vec<u8>> = cl.range(&lo(), &hi()).unwrap()
                .into_iter().map(|it| (it.key, it.val)).collect();
            prop_assert_eq!(&got, &expect);
            // Point reads (twice: the second from remembered items) agree with the scan.
            for k in 0..300u64 {
                for _ in 0..2 {
                    prop_assert_eq!(cl.get(&own(c, k)).unwrap(), expect.get(&own(c, k)).cloned());
                }
            }
        }
        for c in clients.iter_mut() { c.commit().unwrap(); }
        drop(clients);
        drop(server);
        fs.assert_fsck_clean();
    }
}

/// Round by round, set keys `0..keys` to the round number and commit, pausing `pause_ms`
/// after each commit; every fifth round asks for a merge (the writer's tree is finalized).
fn write_rounds(w: &mut Client, server: &LocalServer, keys: u64, rounds: u64, pause_ms: u64) {
    for round in 1..=rounds {
        for n in 0..keys {
            w.put(key(n), round.to_le_bytes().to_vec(), 0).unwrap();
        }
        w.commit().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(pause_ms));
        if round % 5 == 0 {
            server.with(|s| s.request_merge()).unwrap();
            w.sync().unwrap();
        }
    }
}

/// A reader keeps reading every key (by range and by point reads, which it caches) while
/// a writer commits and a background merger folds finalized trees into fs_root in slices and
/// frees them: the reader never sees a wrong or older value (stale roots are refreshed and
/// retried underneath, and refreshes that show the writer's commits empty the cache).
#[test]
fn readers_stay_correct_while_trees_merge_in_the_background() {
    // A small metadata device, so freed blocks are soon reused.
    let fs = Fs::with_meta_bytes(96 << 20);
    let server = fs.server();
    let mut w = fs.client(&server, 1);
    for n in 0..300 {
        w.put(key(n), 0u64.to_le_bytes().to_vec(), 0).unwrap();
    }
    w.commit().unwrap();
    const ROUNDS: u64 = 80;
    let merger = server.spawn_merger(std::time::Duration::from_millis(2));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        // No block cache, and roots refreshed only now and then: the reader follows roots
        // whose blocks the merger frees and the writer reuses.
        let mut r = fs.client_with_cache(&server, 2, 0);
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut seen = vec![0u64; 300];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if reads.is_multiple_of(4) {
                    r.refresh_roots().unwrap();
                }
                // Every other pass reads key by key (through the item cache, until a
                // refresh brings the writer's commits).
                let vals: Vec<Vec<u8>> = if reads.is_multiple_of(2) {
                    r.range(&lo(), &hi())
                        .unwrap()
                        .into_iter()
                        .map(|it| it.val)
                        .collect()
                } else {
                    (0..300)
                        .map(|n| r.get(&key(n)).unwrap().expect("key present"))
                        .collect()
                };
                assert_eq!(vals.len(), 300);
                // Without cluster locks a read that retried on a stale root may mix
                // commits, but no key may ever go back to an older round or show garbage.
                for (n, v) in vals.iter().enumerate() {
                    let round = u64::from_le_bytes(v[..8].try_into().unwrap());
                    assert!(round <= ROUNDS, "garbage value {round}");
                    assert!(
                        round >= seen[n],
                        "key {n} went back from {} to {round}",
                        seen[n]
                    );
                    seen[n] = round;
                }
                reads += 1;
            }
            (reads, r.stale_retries(), r.item_cache_stats().hits)
        })
    };
    write_rounds(&mut w, &server, 300, ROUNDS, 10);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, stale, hits) = reader.join().unwrap();
    assert!(reads > 1 && hits > 0, "{reads} reads, {hits} remembered");
    drop(merger);
    let merged = server.with(|s| s.trees_merged());
    assert!(merged >= 4, "the background merger merged {merged} trees");
    eprintln!("{reads} full reads, {stale} stale retries, {merged} trees merged");
    drop(w);
    drop(server);
    fs.assert_fsck_clean();
}

/// Roots are a snapshot: a reader that does not refresh them keeps reading the committed
/// state they name while its blocks survive, and after a stale retry reads newer state —
/// never garbage. (Cluster locks make readers refresh when it matters.)
#[test]
fn a_reader_following_old_roots_sees_its_snapshot_or_fresh_state() {
    let fs = Fs::with_meta_bytes(96 << 20);
    let server = fs.server();
    let mut w = fs.client(&server, 1);
    let mut r = fs.client_with_cache(&server, 2, 0);
    for n in 0..300 {
        w.put(key(n), 0u64.to_le_bytes().to_vec(), 0).unwrap();
    }
    w.commit().unwrap();
    r.refresh_roots().unwrap();
    assert_eq!(r.get(&key(7)).unwrap(), Some(0u64.to_le_bytes().to_vec()));
    // Many commits and merges later, the blocks R's roots name have been freed and reused.
    for round in 1..=30u64 {
        for n in 0..300 {
            w.put(key(n), round.to_le_bytes().to_vec(), 0).unwrap();
        }
        w.commit().unwrap();
        server.with(|s| s.request_merge()).unwrap();
        w.sync().unwrap();
        server.with(|s| s.merge_finalized()).unwrap();
    }
    let all = r.range(&lo(), &hi()).unwrap();
    assert_eq!(all.len(), 300);
    let old = all.iter().all(|it| it.val == 0u64.to_le_bytes());
    let new = all.iter().all(|it| it.val == 30u64.to_le_bytes());
    assert!(old || (new && r.stale_retries() > 0) || r.stale_retries() > 0);
    assert!(all
        .iter()
        .all(|it| it.val == 0u64.to_le_bytes() || it.val == 30u64.to_le_bytes()));
    r.refresh_roots().unwrap();
    assert!(r
        .range(&lo(), &hi())
        .unwrap()
        .iter()
        .all(|it| it.val == 30u64.to_le_bytes()));
}

/// Trees are merged in the order they are finalized, not in seq order: an old deletion
/// merged after a newer write of the same key was merged must not remove that write.
#[test]
fn an_old_deletion_merged_late_keeps_a_newer_merged_item() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    let mut b = fs.client(&server, 2);
    a.put(key(1), b"v0".to_vec(), 0).unwrap();
    a.commit().unwrap();
    a.delete(key(1), 0).unwrap();
    a.commit().unwrap();
    // B's write comes after A's deletion in lock order: its write lock's write_seq (here,
    // a seq above A's) orders it after the deletion even though B's transaction opened first.
    let write_seq = a.begin().unwrap();
    b.put(key(1), b"v2".to_vec(), write_seq).unwrap();
    b.commit().unwrap();
    // A's transaction is open: its tree is finalized only at its next commit.
    server.with(|s| s.request_merge()).unwrap();
    b.sync().unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    a.sync().unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    let mut c = fs.client(&server, 3);
    assert_eq!(c.get(&key(1)).unwrap(), Some(b"v2".to_vec()));
    drop((a, b, c));
    drop(server);
    fs.assert_fsck_clean();
}

/// Every key of `c`'s committed view, after a refresh.
fn view(c: &mut Client) -> BTreeMap<Key, Vec<u8>> {
    c.refresh_roots().unwrap();
    c.range(&lo(), &hi())
        .unwrap()
        .into_iter()
        .map(|it| (it.key, it.val))
        .collect()
}

/// A merge done in slices (as the background merger does it, letting requests in between)
/// leaves every key readable with its newest value after every slice, including keys
/// deleted in a merged tree while an older version sits in fs_root; the last slice frees the
/// inputs, and fsck is clean in between and after. Every slice is committed.
#[test]
fn a_merge_in_slices_keeps_every_key_readable_between_slices() {
    use scoutgw_cluster::server::MergeStep;
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    let mut b = fs.client(&server, 2);
    let mut model = BTreeMap::new();
    // Old versions merged into fs_root first.
    for n in 0..600 {
        a.put(key(n), b"old".to_vec(), 0).unwrap();
        model.insert(key(n), b"old".to_vec());
    }
    a.commit().unwrap();
    server.with(|s| s.request_merge()).unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    // Then two trees with overwrites and deletions of those keys.
    for n in (0..600).step_by(3) {
        a.put(key(n), b"a".to_vec(), 0).unwrap();
        model.insert(key(n), b"a".to_vec());
    }
    a.commit().unwrap();
    b.refresh_roots().unwrap();
    for n in (1..600).step_by(3) {
        b.delete(key(n), 0).unwrap();
        model.remove(&key(n));
    }
    b.commit().unwrap();
    server.with(|s| s.request_merge()).unwrap();
    let mut reader = fs.client(&server, 3);
    let mut slices = 0;
    loop {
        let before = server.with(|s| s.roots().fs_root);
        match server.with(|s| s.merge_step(50)).unwrap() {
            MergeStep::Partial => {
                slices += 1;
                // Each slice is committed by the merge itself (not by the next request).
                assert_ne!(server.with(|s| s.roots().fs_root), before);
                assert_eq!(view(&mut reader), model, "after slice {slices}");
            }
            MergeStep::Merged(n) => {
                assert_eq!(n, 2);
                break;
            }
            MergeStep::Idle => panic!("the merge ended without merging"),
        }
        if slices == 3 {
            // A committed half-merged state is a consistent filesystem.
            fs.assert_fsck_clean();
        }
    }
    assert!(slices >= 5, "{slices} slices");
    assert_eq!(server.with(|s| s.merge_step(50)).unwrap(), MergeStep::Idle);
    assert_eq!(view(&mut reader), model);
    drop((a, b, reader));
    drop(server);
    fs.assert_fsck_clean();
}

/// Client 1 with keys `0..n` set to "x", committed, its tree finalized for the next merge.
fn finalized_tree(fs: &Fs, server: &Arc<LocalServer>, n: u64) -> Client {
    let mut a = fs.client(server, 1);
    for i in 0..n {
        a.put(key(i), b"x".to_vec(), 0).unwrap();
    }
    a.commit().unwrap();
    server.with(|s| s.request_merge()).unwrap();
    a
}

/// A client opening its next transaction between two slices of a merge of its finalized
/// tree takes that tree's allocators over; the merge's end must free the tree from its
/// record as it is then, not hand those allocators back a second time (fsck would see
/// blocks owned twice).
#[test]
fn a_merge_in_slices_frees_the_input_records_as_they_are_at_the_end() {
    use scoutgw_cluster::server::MergeStep;
    let fs = Fs::new();
    let server = fs.server();
    let mut a = finalized_tree(&fs, &server, 400);
    assert_eq!(
        server.with(|s| s.merge_step(100)).unwrap(),
        MergeStep::Partial
    );
    // The next transaction starts A's next tree with the finalized one's allocators.
    for n in 0..50 {
        a.put(key(n), b"y".to_vec(), 0).unwrap();
    }
    let data = a.alloc_data(8).unwrap().expect("data blocks");
    a.commit().unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    let mut c = fs.client(&server, 3);
    assert_eq!(c.get(&key(10)).unwrap(), Some(b"y".to_vec()));
    assert_eq!(c.get(&key(300)).unwrap(), Some(b"x".to_vec()));
    a.free_data(data.0, data.1).unwrap();
    a.commit().unwrap();
    drop((a, c));
    drop(server);
    fs.assert_fsck_clean();
}

/// A merge cut short between slices (the server stops) starts over at the next server and
/// merging keys again changes nothing.
#[test]
fn a_merge_cut_short_between_slices_starts_over_after_a_restart() {
    use scoutgw_cluster::server::MergeStep;
    let fs = Fs::new();
    let mut model = BTreeMap::new();
    {
        let server = fs.server();
        let mut a = fs.client(&server, 1);
        for n in 0..500 {
            a.put(key(n), n.to_le_bytes().to_vec(), 0).unwrap();
            model.insert(key(n), n.to_le_bytes().to_vec());
        }
        a.commit().unwrap();
        for n in (0..500).step_by(7) {
            a.delete(key(n), 0).unwrap();
            model.remove(&key(n));
        }
        a.commit().unwrap();
        server.with(|s| s.request_merge()).unwrap();
        for _ in 0..3 {
            assert_eq!(
                server.with(|s| s.merge_step(64)).unwrap(),
                MergeStep::Partial
            );
        }
        // No farewell: the server goes away mid-merge.
    }
    fs.assert_fsck_clean();
    let server = fs.server();
    let mut c = fs.client(&server, 3);
    assert_eq!(view(&mut c), model);
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    assert_eq!(view(&mut c), model);
    drop(c);
    drop(server);
    fs.assert_fsck_clean();
}

/// A client's item cache is emptied as soon as a refresh brings another client's commit:
/// the reader sees the new version, not its cached one.
#[test]
fn cached_items_are_dropped_when_another_client_commits() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    let mut b = fs.client(&server, 2);
    b.put(key(1), b"v1".to_vec(), 0).unwrap();
    b.commit().unwrap();
    a.refresh_roots().unwrap();
    assert_eq!(a.get(&key(1)).unwrap(), Some(b"v1".to_vec()));
    let hits = a.item_cache_stats().hits;
    assert_eq!(a.get(&key(1)).unwrap(), Some(b"v1".to_vec()));
    assert_eq!(a.get(&key(2)).unwrap(), None);
    assert_eq!(
        a.item_cache_stats().hits,
        hits + 2,
        "read again from the cache"
    );
    b.put(key(1), b"v2".to_vec(), 0).unwrap();
    b.put(key(2), b"new".to_vec(), 0).unwrap();
    b.commit().unwrap();
    a.refresh_roots().unwrap();
    assert_eq!(a.item_cache_stats().items, 0);
    assert_eq!(a.get(&key(1)).unwrap(), Some(b"v2".to_vec()));
    assert_eq!(a.get(&key(2)).unwrap(), Some(b"new".to_vec()));
}

/// A miss reads the whole range around its key into the cache: the neighbours, and keys
/// that do not exist, are then answered without walking a tree, by point and range reads.
#[test]
fn a_miss_fills_the_range_around_its_key() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    for n in 0..1000 {
        a.put(key(n), n.to_le_bytes().to_vec(), 0).unwrap();
    }
    a.commit().unwrap();
    let mut r = fs.client(&server, 2);
    assert_eq!(r.get(&key(7)).unwrap(), Some(7u64.to_le_bytes().to_vec()));
    let s = r.item_cache_stats();
    assert_eq!((s.hits, s.misses, s.fills), (0, 1, 1));
    assert!(s.items > 100, "a leaf's worth was read: {s:?}");
    let reads = r.meta_dev().cache_stats();
    for n in 0..100 {
        assert_eq!(r.get(&key(n)).unwrap(), Some(n.to_le_bytes().to_vec()));
    }
    assert_eq!(r.get(&key(7).next().unwrap()).unwrap(), None);
    assert_eq!(r.range(&key(10), &key(19)).unwrap().len(), 10);
    let after = r.meta_dev().cache_stats();
    assert_eq!(
        after.hits + after.misses,
        reads.hits + reads.misses,
        "no block was read"
    );
    assert_eq!(r.item_cache_stats().hits, 102);
}

/// `scan_each` hands out what `scan` returns: the part of a range the item cache covers is
/// read in place with the open transaction on top (a changed value, a deletion, a new key),
/// the rest from the trees, for any limit.
#[test]
fn scan_each_reads_the_covered_part_in_place_and_the_rest_from_the_trees() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    let mut model = BTreeMap::new();
    for n in 0..3000 {
        let v = vec![(n % 251) as u8; 1 + (n % 97) as usize];
        a.put(key(n), v.clone(), 0).unwrap();
        model.insert(key(n), v);
    }
    a.commit().unwrap();
    let mut r = fs.client(&server, 2);
    r.get(&key(5)).unwrap();
    let covered = r.item_cache_stats().items as usize;
    assert!(
        covered > 10 && covered < 3000,
        "one leaf's range is cached: {covered}"
    );
    let in_cache = (key(3), key(5), key(3).next().unwrap());
    let past = (key(2990), key(2995), key(2990).next().unwrap());
    for (changed, deleted, added) in [in_cache, past] {
        r.put(changed, b"changed".to_vec(), 0).unwrap();
        model.insert(changed, b"changed".to_vec());
        r.delete(deleted, 0).unwrap();
        model.remove(&deleted);
        r.put(added, b"added".to_vec(), 0).unwrap();
        model.insert(added, b"added".to_vec());
    }
    for limit in [1, 7, covered - 1, covered + 1, 2999, usize::MAX] {
        let mut seen = Vec::new();
        let n = r
            .scan_each(&lo(), &hi(), limit, |k, v| seen.push((*k, v.to_vec())))
            .unwrap();
        let want: Vec<_> = model
            .iter()
            .take(limit)
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        assert_eq!(n, want.len(), "limit {limit}");
        assert!(
            seen == want,
            "limit {limit}: scan_each differs from the model"
        );
        let scanned: Vec<_> = r
            .scan(&lo(), &hi(), limit)
            .unwrap()
            .into_iter()
            .map(|it| (it.key, it.val))
            .collect();
        assert!(
            scanned == want,
            "limit {limit}: scan differs from the model"
        );
    }
    // The covered part alone is read without a block.
    let (cache, blocks) = (r.item_cache_stats(), r.meta_dev().cache_stats());
    let n = r.scan_each(&lo(), &hi(), covered - 2, |_, _| ()).unwrap();
    assert_eq!(n, covered - 2);
    let after = r.meta_dev().cache_stats();
    assert_eq!(after.hits + after.misses, blocks.hits + blocks.misses);
    assert_eq!(r.item_cache_stats().hits, cache.hits + 1);
}

/// Inode numbers come from the server once: the item cache covers a new batch as empty at
/// once, and the mount's commits fill it in. Reading the inodes' items after their trees
/// were merged into fs_root then reads no block and misses nothing; a number not written
/// reads as absent from the cache.
#[test]
fn a_new_inode_batch_is_covered_as_empty_and_filled_by_own_commits() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    let (first, count) = a.alloc_inodes(1500).unwrap();
    assert!(count > 0);
    let ino_key = |ino: u64| Key::new(zone::FS, ino, 1, 0, 0, 0);
    for ino in first..first + count {
        a.put(ino_key(ino), ino.to_le_bytes().to_vec(), 0).unwrap();
    }
    a.commit().unwrap();
    server.with(|s| s.request_merge()).unwrap();
    a.sync().unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    a.refresh_roots().unwrap();
    let before = (a.item_cache_stats(), a.meta_dev().cache_stats());
    for ino in first..first + count {
        assert_eq!(
            a.get(&ino_key(ino)).unwrap(),
            Some(ino.to_le_bytes().to_vec())
        );
    }
    assert_eq!(a.get(&Key::new(zone::FS, first, 2, 0, 0, 0)).unwrap(), None);
    let after = (a.item_cache_stats(), a.meta_dev().cache_stats());
    assert_eq!(after.0.misses, before.0.misses, "no miss");
    assert_eq!(after.0.hits, before.0.hits + count + 1);
    assert_eq!(
        after.1.hits + after.1.misses,
        before.1.hits + before.1.misses,
        "no block was read"
    );
}

/// A merge moves items into fs_root without changing what a read returns: the cache is kept
/// across it and still answers right. But a tree of another client that committed and was
/// merged away between two refreshes empties it.
#[test]
fn cached_items_survive_merges_but_not_a_commit_merged_away_unseen() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    let mut r = fs.client(&server, 2);
    for n in 0..100 {
        a.put(key(n), b"x".to_vec(), 0).unwrap();
    }
    a.commit().unwrap();
    r.refresh_roots().unwrap();
    for n in 0..100 {
        assert_eq!(r.get(&key(n)).unwrap(), Some(b"x".to_vec()));
    }
    let cached = r.item_cache_stats().items;
    assert_eq!(cached, 100);
    server.with(|s| s.request_merge()).unwrap();
    a.sync().unwrap();
    r.refresh_roots().unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    r.refresh_roots().unwrap();
    assert_eq!(r.item_cache_stats().items, cached, "kept across the merge");
    let hits = r.item_cache_stats().hits;
    assert_eq!(r.get(&key(5)).unwrap(), Some(b"x".to_vec()));
    assert_eq!(r.item_cache_stats().hits, hits + 1);

    // Now a commit r never sees before its tree is finalized and merged.
    a.put(key(5), b"changed".to_vec(), 0).unwrap();
    a.commit().unwrap();
    server.with(|s| s.request_merge()).unwrap();
    a.sync().unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    r.refresh_roots().unwrap();
    assert_eq!(r.item_cache_stats().items, 0, "emptied");
    assert_eq!(r.get(&key(5)).unwrap(), Some(b"changed".to_vec()));
}

/// A client's own commits keep its cache right: a key it read and then changed (or
/// deleted, or created) reads as the committed change, answered without a tree walk.
#[test]
fn own_commits_update_cached_items_in_place() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    a.put(key(1), b"v1".to_vec(), 0).unwrap();
    a.put(key(2), b"v1".to_vec(), 0).unwrap();
    a.commit().unwrap();
    assert_eq!(a.get(&key(1)).unwrap(), Some(b"v1".to_vec()));
    assert_eq!(a.get(&key(2)).unwrap(), Some(b"v1".to_vec()));
    assert_eq!(a.get(&key(3)).unwrap(), None);
    a.put(key(1), b"v2".to_vec(), 0).unwrap();
    a.delete(key(2), 0).unwrap();
    a.put(key(3), b"born".to_vec(), 0).unwrap();
    // The open transaction is laid over the cache.
    assert_eq!(a.range(&key(0), &key(9)).unwrap().len(), 2);
    a.commit().unwrap();
    let hits = a.item_cache_stats().hits;
    assert_eq!(a.get(&key(1)).unwrap(), Some(b"v2".to_vec()));
    assert_eq!(a.get(&key(2)).unwrap(), None);
    assert_eq!(a.get(&key(3)).unwrap(), Some(b"born".to_vec()));
    let got: Vec<Vec<u8>> = a
        .range(&key(0), &key(9))
        .unwrap()
        .into_iter()
        .map(|it| it.val)
        .collect();
    assert_eq!(got, vec![b"v2".to_vec(), b"born".to_vec()]);
    assert_eq!(a.item_cache_stats().hits, hits + 4);
    // And a fresh mount reading the trees agrees.
    let mut c = fs.client(&server, 3);
    assert_eq!(c.get(&key(1)).unwrap(), Some(b"v2".to_vec()));
    assert_eq!(c.get(&key(2)).unwrap(), None);
    assert_eq!(c.get(&key(3)).unwrap(), Some(b"born".to_vec()));
}

/// With the item cache turned off every read walks the trees and still answers right,
/// including the open transaction laid over committed items.
#[test]
fn reads_are_right_with_the_item_cache_off() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    a.set_item_cache_bytes(0);
    for n in 0..300 {
        a.put(key(n), n.to_le_bytes().to_vec(), 0).unwrap();
    }
    a.commit().unwrap();
    a.delete(key(5), 0).unwrap();
    a.put(key(6), b"open".to_vec(), 0).unwrap();
    for _ in 0..2 {
        assert_eq!(a.get(&key(4)).unwrap(), Some(4u64.to_le_bytes().to_vec()));
        assert_eq!(a.get(&key(5)).unwrap(), None);
        assert_eq!(a.get(&key(6)).unwrap(), Some(b"open".to_vec()));
        assert_eq!(a.range(&key(0), &key(9)).unwrap().len(), 9);
        assert_eq!(a.next(&key(5), &key(9)).unwrap().unwrap().val, b"open");
    }
    let s = a.item_cache_stats();
    assert_eq!((s.hits, s.fills, s.items), (0, 0, 0), "{s:?}");
}

/// The cache stays within its bound: reading many more keys than fit keeps its estimate
/// below the bound, and every read still answers right.
#[test]
fn the_item_cache_stays_below_its_bound() {
    let fs = Fs::with_meta_bytes(512 << 20);
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    let n = 100_000u64;
    for i in 0..n {
        a.put(key(i), i.to_le_bytes().to_vec(), 0).unwrap();
    }
    a.commit().unwrap();
    a.set_item_cache_bytes(1 << 20);
    for i in (0..n).step_by(7) {
        assert_eq!(a.get(&key(i)).unwrap(), Some(i.to_le_bytes().to_vec()));
        let s = a.item_cache_stats();
        assert!(s.bytes <= s.max_bytes, "{s:?}");
    }
    let s = a.item_cache_stats();
    assert!(s.evictions > 0 && s.hits > 0, "{s:?}");
}

/// A range read inside one lock group skips the log trees whose bloom filter lacks that
/// group (one bloom block read instead of a walk down the tree), and still finds every item.
#[test]
fn a_range_within_one_lock_group_skips_trees_without_that_group() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    let mut b = fs.client(&server, 2);
    // A's keys in one inode lock group, B's (many, a tree of height 2) in another.
    let ka = |n: u64| Key::new(zone::FS, KEY_BASE, 4, n, 0, 0);
    let kb = |n: u64| Key::new(zone::FS, KEY_BASE + (1 << 20), 4, n, 0, 0);
    for n in 0..50 {
        a.put(ka(n), b"a".to_vec(), 0).unwrap();
    }
    a.commit().unwrap();
    let mut r = fs.client(&server, 3);
    let (first, last) = (ka(0), ka(u64::MAX));
    let reads = |r: &mut Client| {
        let s0 = r.meta_dev().cache_stats();
        let items = r.range(&first, &last).unwrap();
        let s1 = r.meta_dev().cache_stats();
        (items.len(), s1.hits + s1.misses - s0.hits - s0.misses)
    };
    let (n, before) = reads(&mut r);
    assert_eq!(n, 50);
    for n in 0..6000 {
        b.put(kb(n), vec![7; 40], 0).unwrap();
    }
    b.commit().unwrap();
    r.refresh_roots().unwrap();
    let (n, after) = reads(&mut r);
    assert_eq!(n, 50);
    assert_eq!(after, before + 1, "only B's bloom block is read");
    // A range across groups still reads every tree.
    assert_eq!(r.range(&ka(0), &kb(u64::MAX)).unwrap().len(), 6050);
}

/// A commit whose items all fall in lock groups the log tree's bloom filter has already
/// keeps the filter block as it is (one block write fewer per commit); a new group gets a
/// new block with its bits, and reads inside that group still find its items.
#[test]
fn a_commit_in_known_lock_groups_keeps_the_bloom_block() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    let ka = |n: u64| Key::new(zone::FS, KEY_BASE, 4, n, 0, 0);
    let kb = |n: u64| Key::new(zone::FS, KEY_BASE + (1 << 20), 4, n, 0, 0);
    let bloom = || {
        server.with(|s| {
            let lts =
                scoutgw_cluster::server::all_log_trees(s.meta_dev(), None, &s.roots().logs_root)
                    .unwrap();
            let lt = lts.iter().find(|lt| lt.rid.get() == 1).expect("A's tree");
            (lt.bloom_ref.blkno.get(), lt.bloom_ref.seq.get())
        })
    };
    a.put(ka(0), b"a0".to_vec(), 0).unwrap();
    a.commit().unwrap();
    let first = bloom();
    a.put(ka(1), b"a1".to_vec(), 0).unwrap();
    a.commit().unwrap();
    assert_eq!(bloom(), first, "same lock group: the filter block is kept");
    a.put(kb(0), b"b0".to_vec(), 0).unwrap();
    a.commit().unwrap();
    assert_ne!(bloom(), first, "a new lock group: a new filter block");
    let mut r = fs.client(&server, 2);
    assert_eq!(r.range(&kb(0), &kb(u64::MAX)).unwrap().len(), 1);
    assert_eq!(r.range(&ka(0), &ka(u64::MAX)).unwrap().len(), 2);
    drop((a, r));
    drop(server);
    fs.assert_fsck_clean();
}

/// With a refresh interval a client that only reads samples the roots again once they are
/// that old: it sees another client's commit (and stops reading merged trees) without a
/// commit or an explicit refresh of its own; without one it keeps reading its snapshot.
#[test]
fn a_reader_with_a_refresh_interval_samples_roots_again_when_they_age() {
    let fs = Fs::new();
    let server = fs.server();
    let mut w = fs.client(&server, 1);
    let mut snap = fs.client(&server, 2);
    let mut aging = fs.client(&server, 3);
    aging.set_refresh_interval(Some(std::time::Duration::from_millis(20)));
    w.put(key(1), b"v1".to_vec(), 0).unwrap();
    w.commit().unwrap();
    snap.refresh_roots().unwrap();
    aging.refresh_roots().unwrap();
    for c in [&mut snap, &mut aging] {
        for _ in 0..2 {
            assert_eq!(c.get(&key(1)).unwrap(), Some(b"v1".to_vec()));
        }
    }
    w.put(key(1), b"v2".to_vec(), 0).unwrap();
    w.commit().unwrap();
    server.with(|s| s.request_merge()).unwrap();
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert_eq!(aging.get(&key(1)).unwrap(), Some(b"v2".to_vec()));
    assert_eq!(snap.get(&key(1)).unwrap(), Some(b"v1".to_vec()));
}

/// A merge given a time budget stops once it is spent (at a multiple of 256 keys, so every
/// call progresses even with no budget at all) and finishes over enough calls.
#[test]
fn a_merge_with_a_time_budget_stops_when_it_is_spent_and_still_progresses() {
    use scoutgw_cluster::server::MergeStep;
    let fs = Fs::new();
    let server = fs.server();
    let _a = finalized_tree(&fs, &server, 1000);
    let zero = std::time::Duration::ZERO;
    let mut partial = 0;
    loop {
        match server.with(|s| s.merge_for(zero)).unwrap() {
            MergeStep::Partial => partial += 1,
            MergeStep::Merged(n) => {
                assert_eq!(n, 1);
                break;
            }
            MergeStep::Idle => panic!("the merge ended without merging"),
        }
    }
    // 1000 keys, 256 a call.
    assert_eq!(partial, 3);
    let long = std::time::Duration::from_secs(60);
    assert_eq!(server.with(|s| s.merge_for(long)).unwrap(), MergeStep::Idle);
    let mut c = fs.client(&server, 3);
    assert_eq!(c.range(&lo(), &hi()).unwrap().len(), 1000);
}

fn greet(server: &Arc<LocalServer>, rid: u64) {
    let greet = Request::Greeting {
        fsid: server.with(|s| s.fsid()),
        format_version: 1,
        rid,
        server_term: 0,
    };
    server.call(rid, greet).unwrap();
}

fn get_log_trees(server: &Arc<LocalServer>, rid: u64) -> LogTrees {
    match server.call(rid, Request::GetLogTrees).unwrap() {
        Response::LogTrees(lt) => *lt,
        other => panic!("{other:?}"),
    }
}

fn commit_open_next(
    server: &Arc<LocalServer>,
    rid: u64,
    lt: &LogTrees,
) -> Result<(Option<LogTrees>, Roots), ServerError> {
    match server.call(
        rid,
        Request::CommitLogTreesOpenNext {
            lt: Box::new(*lt),
            unflushed: 0,
        },
    )? {
        Response::CommittedNext { next, roots } => Ok((next.map(|b| *b), roots)),
        other => panic!("{other:?}"),
    }
}

fn statfs(server: &Arc<LocalServer>, rid: u64) -> Statfs {
    match server.call(rid, Request::Statfs).unwrap() {
        Response::Statfs(s) => s,
        other => panic!("{other:?}"),
    }
}

/// Seed: resent requests are idempotent (seed 004). A `CommitLogTreesOpenNext` resent after
/// the server applied it (its answer was lost) gets the same next transaction back: no
/// second one, no other server commit, no blocks handed out twice.
#[test]
fn seed_resent_requests_are_idempotent_commit_open_next_answers_the_same_next_transaction() {
    let fs = Fs::new();
    let server = fs.server();
    let rid = 77;
    greet(&server, rid);
    let first = get_log_trees(&server, rid);
    let (next, roots) = commit_open_next(&server, rid, &first).unwrap();
    let next = next.expect("the next transaction is opened");
    assert!(next.get_trans_seq.get() > first.get_trans_seq.get());
    assert_eq!(next.commit_trans_seq, first.get_trans_seq);
    assert_eq!(roots, server.with(|s| s.roots()));
    let before = statfs(&server, rid);
    for _ in 0..3 {
        let (again, again_roots) = commit_open_next(&server, rid, &first).unwrap();
        assert_eq!(
            again,
            Some(next),
            "a resend must answer the same next transaction"
        );
        assert_eq!(again_roots, roots);
    }
    // A resent GetLogTrees (of the transaction the resend opened) agrees.
    assert_eq!(get_log_trees(&server, rid), next);
    let after = statfs(&server, rid);
    assert_eq!(
        before.committed_seq, after.committed_seq,
        "no server commit"
    );
    assert_eq!(before.free_meta_blocks, after.free_meta_blocks);
    assert_eq!(before.free_data_blocks, after.free_data_blocks);
    // Once the next transaction committed too, the old request is no resend of the last one.
    let (third, _) = commit_open_next(&server, rid, &next).unwrap();
    assert!(third.unwrap().get_trans_seq.get() > next.get_trans_seq.get());
    assert!(matches!(
        commit_open_next(&server, rid, &first),
        Err(ServerError::WrongTransaction { .. })
    ));
    drop(server);
    fs.assert_fsck_clean();
}

/// Seed: resent requests are idempotent (seed 004), across a new server: the answer
/// described durable state, so the next server finds the commit and the next transaction on
/// the device and answers a resend with that transaction.
#[test]
fn seed_resent_requests_are_idempotent_commit_open_next_resent_to_a_new_server() {
    let fs = Fs::new();
    let server = fs.server();
    let rid = 78;
    greet(&server, rid);
    let first = get_log_trees(&server, rid);
    let (next, roots) = commit_open_next(&server, rid, &first).unwrap();
    drop(server);
    let server = fs.server();
    greet(&server, rid);
    let (again, again_roots) = commit_open_next(&server, rid, &first).unwrap();
    assert_eq!(again, next);
    assert_eq!(again_roots.logs_root, roots.logs_root);
    assert_eq!(again_roots.fs_root, roots.fs_root);
    // Plain requests agree: the transaction is open, the sent one committed.
    assert_eq!(get_log_trees(&server, rid), next.unwrap());
    drop(server);
    fs.assert_fsck_clean();
}

/// Seed: resent requests are idempotent (seed 004), when the commit finalized the client's
/// tree (the next transaction opened in its next tree) and the finalized tree was merged
/// and its record freed before the resend arrived.
#[test]
fn seed_resent_requests_are_idempotent_commit_open_next_after_its_tree_was_finalized_and_merged() {
    let fs = Fs::new();
    let server = fs.server();
    let mut a = fs.client(&server, 1);
    for n in 0..100 {
        a.put(key(n), b"a".to_vec(), 0).unwrap();
    }
    a.commit().unwrap();
    drop(a);
    // Rid 1's next transaction, opened by hand: its tree has items, so a merge request
    // finalizes it at its commit.
    let open = get_log_trees(&server, 1);
    server.with(|s| s.request_merge()).unwrap();
    let (next, _) = commit_open_next(&server, 1, &open).unwrap();
    let next = next.unwrap();
    assert_eq!(next.nr.get(), open.nr.get() + 1, "the next tree starts");
    assert!(next.item_root.is_empty());
    assert_eq!(server.with(|s| s.merge_finalized()).unwrap(), 1);
    let before = statfs(&server, 1);
    let (again, _) = commit_open_next(&server, 1, &open).unwrap();
    assert_eq!(again, Some(next));
    assert_eq!(statfs(&server, 1).committed_seq, before.committed_seq);
    let mut c = fs.client(&server, 3);
    assert_eq!(c.get(&key(5)).unwrap(), Some(b"a".to_vec()));
    drop(c);
    drop(server);
    fs.assert_fsck_clean();
}

/// Counts device flushes (each is an fdatasync of a file device).
#[derive(Debug)]
struct CountFlushes {
    dev: Arc<dyn BlockDevice>,
    flushes: Arc<std::sync::atomic::AtomicU64>,
}

impl BlockDevice for CountFlushes {
    fn path(&self) -> &Path {
        self.dev.path()
    }
    fn len_bytes(&self) -> u64 {
        self.dev.len_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), scoutgw_blockdev::BlockError> {
        self.dev.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), scoutgw_blockdev::BlockError> {
        self.dev.write_at(buf, offset)
    }
    fn flush(&self) -> Result<(), scoutgw_blockdev::BlockError> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.dev.flush()
    }
}

/// A commit that opens the next transaction costs three device flushes (the client's log
/// tree, the server's super twice) where a commit and the next change's `GetLogTrees` cost
/// five; the open transaction holds the stable seq back until `sync` closes it, which
/// writes nothing on the client when it is empty. (Client and server here use two device
/// objects, as two processes would: the server answers the unflushed commit with
/// `FlushFirst` and the client flushes; see the next test for one device object.)
#[test]
fn a_commit_that_opens_the_next_transaction_costs_three_flushes_and_sync_closes_it() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let fs = Fs::new();
    let flushes = Arc::new(AtomicU64::new(0));
    let counted = || -> Arc<dyn BlockDevice> {
        Arc::new(CountFlushes {
            dev: open(&fs.meta),
            flushes: flushes.clone(),
        })
    };
    let cfg = server_config();
    let server = Arc::new(LocalServer::new(Server::open(counted(), cfg).unwrap()));
    let md = Arc::new(MetaDev::new(counted(), server.with(|s| s.fsid()), 16 << 20));
    let mut a = Client::mount(md, server.clone(), 1).unwrap();
    let mut b = fs.client(&server, 2);
    let count = |f: &mut dyn FnMut()| {
        let before = flushes.load(Ordering::SeqCst);
        f();
        flushes.load(Ordering::SeqCst) - before
    };
    // The old way: the change opens the transaction, the commit leaves none open.
    let lazy = count(&mut || {
        a.put(key(1), b"1".to_vec(), 0).unwrap();
        a.commit().unwrap();
    });
    assert_eq!(lazy, 5);
    assert_eq!(a.trans_seq(), 0);
    // Open the first by a change, then every commit opens the next.
    a.put(key(2), b"2".to_vec(), 0).unwrap();
    a.commit_and_open_next().unwrap().expect("committed");
    for n in 3..6 {
        let cycle = count(&mut || {
            a.put(key(n), b"n".to_vec(), 0).unwrap();
            a.commit_and_open_next().unwrap().expect("committed");
        });
        assert_eq!(cycle, 3, "a change and a commit that opens the next");
    }
    let open = a.trans_seq();
    assert_ne!(open, 0, "the next transaction is open");
    // Nothing changed: nothing to commit, the transaction stays as it is.
    assert_eq!(
        count(&mut || assert_eq!(a.commit_and_open_next().unwrap(), None)),
        0
    );
    assert_eq!(a.trans_seq(), open);
    // The open (empty) transaction holds the horizon below it...
    b.put(key(100), b"b".to_vec(), 0).unwrap();
    let b_seq = b.commit().unwrap().unwrap();
    assert!(b_seq > open);
    assert!(b.last_seq().unwrap() < open);
    // ...until sync closes it: a server commit, no client write.
    assert_eq!(count(&mut || assert_eq!(a.sync().unwrap(), Some(open))), 2);
    assert_eq!(a.trans_seq(), 0);
    assert!(b.last_seq().unwrap() >= b_seq);
    // Every commit is readable by the other mount.
    b.refresh_roots().unwrap();
    for n in 1..6 {
        assert!(b.get(&key(n)).unwrap().is_some(), "key {n}");
    }
    drop((a, b));
    drop(server);
    fs.assert_fsck_clean();
}

/// A mount whose server runs in its own process on the same device object leaves its log
/// tree blocks to the server's flush before the super block: a commit that opens the next
/// transaction costs two device flushes. What it committed is durable: on a device that
/// loses every write not flushed when it crashes, a new server and mount read back every
/// commit after the crash, and fsck is clean.
#[test]
fn a_commit_to_a_server_on_the_same_device_object_leaves_the_flush_to_the_server() {
    use scoutgw_blockdev::device::Faults;
    use scoutgw_blockdev::FaultyDevice;
    use std::sync::atomic::{AtomicU64, Ordering};
    let fs = Fs::new();
    let flushes = Arc::new(AtomicU64::new(0));
    let faulty = Arc::new(FaultyDevice::new(CountFlushes {
        dev: open(&fs.meta),
        flushes: flushes.clone(),
    }));
    faulty.set_faults(Faults {
        buffer_until_flush: true,
        ..Faults::default()
    });
    let shared: Arc<dyn BlockDevice> = faulty.clone();
    let cfg = server_config();
    let server = Arc::new(LocalServer::new(Server::open(shared.clone(), cfg).unwrap()));
    let md = Arc::new(MetaDev::new(shared, server.with(|s| s.fsid()), 16 << 20));
    let mut a = Client::mount(md, server.clone(), 1).unwrap();
    a.put(key(1), b"1".to_vec(), 0).unwrap();
    a.commit_and_open_next().unwrap().expect("committed");
    for n in 2..6 {
        let before = flushes.load(Ordering::SeqCst);
        a.put(key(n), vec![n as u8; 100], 0).unwrap();
        a.commit_and_open_next().unwrap().expect("committed");
        assert_eq!(
            flushes.load(Ordering::SeqCst) - before,
            2,
            "the server's two flushes, none of the client's"
        );
    }
    // A change not committed yet is lost with the crash; every commit survives it.
    a.put(key(6), b"lost".to_vec(), 0).unwrap();
    faulty.crash();
    drop(a);
    drop(server);
    let server = fs.server();
    let mut c = fs.client(&server, 3);
    for n in 2..6 {
        assert_eq!(c.get(&key(n)).unwrap(), Some(vec![n as u8; 100]), "key {n}");
    }
    assert_eq!(c.get(&key(6)).unwrap(), None);
    drop(c);
    drop(server);
    fs.assert_fsck_clean();
}
