//! Quorum blocks, find_leader, fence_candidates and agents on real device files made by
//! mkfs, with real UDP sockets on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scoutgw_blockdev::device::Faults;
use scoutgw_blockdev::{BlockDevice, BlockError, DeviceOptions, FaultyDevice, FileDevice};
use zerocopy::FromZeros;

use super::block::quorum_blkno;
use super::*;
use crate::format::quorum::{QuorumEvent, QuorumEventKind};
use crate::format::QuorumBlock;
use crate::mkfs::{mkfs, MkfsOptions, QuorumSlot};

const META_BYTES: u64 = 64 << 20;
const DATA_BYTES: u64 = 16 << 20;

fn device_file(dir: &Path, name: &str, bytes: u64) -> Arc<dyn BlockDevice> {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(bytes).unwrap();
    Arc::new(FileDevice::open(&path, DeviceOptions::default()).unwrap())
}

fn open(dir: &Path) -> FileDevice {
    FileDevice::open(dir.join("meta"), DeviceOptions::default()).unwrap()
}

/// Distinct free UDP ports on 127.0.0.1 (held together while choosing, then released).
fn free_addrs(n: usize) -> Vec<SocketAddrV4> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
        .collect();
    socks
        .iter()
        .map(|s| match s.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        })
        .collect()
}

/// A filesystem with `n` quorum slots (0..n) on free local ports.
fn make_fs(n: usize) -> (tempfile::TempDir, Arc<dyn BlockDevice>, Vec<SocketAddrV4>) {
    let dir = tempfile::tempdir().unwrap();
    let meta = device_file(dir.path(), "meta", META_BYTES);
    let data = device_file(dir.path(), "data", DATA_BYTES);
    let addrs = free_addrs(n);
    let opts = MkfsOptions {
        slots: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| QuorumSlot {
                nr: i as u8,
                addr: *a,
            })
            .collect(),
        allow_small_size: true,
        ..MkfsOptions::default()
    };
    mkfs(meta.clone(), data, &opts).unwrap();
    (dir, meta, addrs)
}

fn fsid(meta: &dyn BlockDevice) -> u64 {
    SuperBlock::read(meta).unwrap().fsid()
}

fn block(meta: &dyn BlockDevice, slot: usize) -> QuorumBlock {
    read_quorum_block(meta, fsid(meta), slot).unwrap()
}

fn raw_quorum_blocks(meta: &dyn BlockDevice) -> Vec<Vec<u8>> {
    (0..QUORUM_MAX_SLOTS)
        .map(|s| {
            let mut b = vec![0u8; 4096];
            meta.read_at(&mut b, quorum_blkno(s) * 4096).unwrap();
            b
        })
        .collect()
}

fn fast_opts() -> QuorumOptions {
    QuorumOptions {
        heartbeat_timeout: Duration::from_millis(1000),
        server_stop_wait: Duration::from_secs(5),
        ..QuorumOptions::default()
    }
}

/// A server that comes up `delay` after it is started and stops at once.
#[derive(Debug)]
struct FakeServer {
    status: Arc<Mutex<ServerStatus>>,
    delay: Duration,
    starts: Mutex<Vec<u64>>,
}

impl FakeServer {
    fn new(delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            status: Arc::new(Mutex::new(ServerStatus::Down)),
            delay,
            starts: Mutex::new(Vec::new()),
        })
    }
}

impl ServerControl for FakeServer {
    fn start(&self, term: u64) {
        self.starts.lock().unwrap().push(term);
        *self.status.lock().unwrap() = ServerStatus::Starting { term };
        let (status, delay) = (self.status.clone(), self.delay);
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let mut s = status.lock().unwrap();
            if *s == (ServerStatus::Starting { term }) {
                *s = ServerStatus::Up { term };
            }
        });
    }

    fn stop(&self) {
        *self.status.lock().unwrap() = ServerStatus::Down;
    }

    fn status(&self) -> ServerStatus {
        *self.status.lock().unwrap()
    }
}

/// A device that records the byte ranges written through it.
#[derive(Debug)]
struct RecordingDevice {
    inner: Arc<dyn BlockDevice>,
    writes: Mutex<Vec<(u64, usize)>>,
}

impl BlockDevice for RecordingDevice {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn len_bytes(&self) -> u64 {
        self.inner.len_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.writes.lock().unwrap().push((offset, buf.len()));
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<(), BlockError> {
        self.inner.flush()
    }
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The one leader all running agents agree on, with its server up and FENCE recorded.
fn settled_leader(
    meta: &dyn BlockDevice,
    agents: &[&QuorumAgent],
    servers: &[&FakeServer],
) -> Option<(usize, u64)> {
    let st: Vec<QuorumStatus> = agents.iter().map(|a| a.status()).collect();
    let leaders: Vec<&QuorumStatus> = st.iter().filter(|s| s.role == Role::Leader).collect();
    if leaders.len() != 1 {
        return None;
    }
    let (slot, term) = (leaders[0].slot, leaders[0].term);
    if st
        .iter()
        .any(|s| s.term != term || s.leader_slot != Some(slot))
    {
        return None;
    }
    let i = agents.iter().position(|a| a.slot() == slot)?;
    if servers[i].status() != (ServerStatus::Up { term }) {
        return None;
    }
    (block(meta, slot).event(QuorumEventKind::Fence).term.get() == term).then_some((slot, term))
}

#[test]
fn seed003_20210531_each_agent_writes_only_its_own_quorum_block() {
    let (_dir, meta, _) = make_fs(3);
    let before = raw_quorum_blocks(&*meta);
    let sb_before = SuperBlock::read(&*meta).unwrap();
    let devs: Vec<Arc<RecordingDevice>> = (0..2)
        .map(|_| {
            Arc::new(RecordingDevice {
                inner: meta.clone(),
                writes: Mutex::new(Vec::new()),
            })
        })
        .collect();
    let servers: Vec<Arc<FakeServer>> = (0..2)
        .map(|_| FakeServer::new(Duration::from_millis(100)))
        .collect();
    let agents: Vec<QuorumAgent> = (0..2)
        .map(|i| {
            QuorumAgent::start(
                devs[i].clone(),
                i,
                0x100 + i as u64,
                fast_opts(),
                servers[i].clone(),
            )
            .unwrap()
        })
        .collect();
    // Two of three slots elect a leader (2 votes needed), whose server fences and comes up.
    let agent_refs: Vec<&QuorumAgent> = agents.iter().collect();
    let server_refs: Vec<&FakeServer> = servers.iter().map(|s| &**s).collect();
    wait_for("a settled leader", Duration::from_secs(20), || {
        settled_leader(&*meta, &agent_refs, &server_refs)
    });
    for a in agents {
        a.shutdown().unwrap();
    }
    for (i, d) in devs.iter().enumerate() {
        let writes = d.writes.lock().unwrap();
        assert!(writes.len() >= 3, "slot {i}: BEGIN, TERM/ELECT…, END");
        for &(off, len) in writes.iter() {
            assert_eq!(
                (off, len),
                (quorum_blkno(i) * 4096, 4096),
                "slot {i} wrote outside its quorum block"
            );
        }
    }
    let after = raw_quorum_blocks(&*meta);
    for s in 2..QUORUM_MAX_SLOTS {
        assert_eq!(before[s], after[s], "quorum block of slot {s} changed");
    }
    for s in 0..2 {
        assert_ne!(before[s], after[s]);
        let q = block(&*meta, s);
        for kind in [QuorumEventKind::Begin, QuorumEventKind::End] {
            assert_eq!(q.event(kind).rid.get(), 0x100 + s as u64);
        }
        // Events carry the block's write_nr at the time: END is the last write.
        assert_eq!(
            q.event(QuorumEventKind::End).write_nr.get(),
            q.write_nr.get()
        );
        assert!(q.event(QuorumEventKind::Begin).write_nr.get() >= 1);
    }
    assert_eq!(SuperBlock::read(&*meta).unwrap(), sb_before);
}

#[test]
fn own_block_records_events_with_increasing_write_nr_and_checks_its_rid() {
    let (_dir, meta, _) = make_fs(1);
    let f = fsid(&*meta);
    let own = OwnBlock::begin(meta.clone(), f, 0, 0xaa, 5).unwrap();
    let q = own.record(QuorumEventKind::Term, 6).unwrap();
    assert_eq!(q.write_nr.get(), 2);
    assert_eq!(q.event(QuorumEventKind::Begin).write_nr.get(), 1);
    let t = q.event(QuorumEventKind::Term);
    assert_eq!((t.write_nr.get(), t.rid.get(), t.term.get()), (2, 0xaa, 6));
    assert!(t.ts.sec.get() > 1_600_000_000);
    assert_eq!(block(&*meta, 0), q, "durable on the device");
    // Another mount takes the slot: our next read notices.
    let _thief = OwnBlock::begin(meta.clone(), f, 0, 0xbb, 6).unwrap();
    match own.record(QuorumEventKind::Elect, 7) {
        Err(QuorumError::SlotTaken { slot, ours, found }) => {
            assert_eq!((slot, ours, found), (0, 0xaa, 0xbb))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(block(&*meta, 0).event(QuorumEventKind::Elect).term.get(), 0);
}

#[test]
fn quorum_block_reads_verify_the_header() {
    let (_dir, meta, _) = make_fs(1);
    let f = fsid(&*meta);
    assert!(matches!(
        read_quorum_block(&*meta, f ^ 1, 0),
        Err(BlockError::WrongFsid { .. })
    ));
    let mut b = vec![0u8; 4096];
    meta.read_at(&mut b, quorum_blkno(0) * 4096).unwrap();
    b[100] ^= 1;
    meta.write_at(&b, quorum_blkno(0) * 4096).unwrap();
    assert!(matches!(
        read_quorum_block(&*meta, f, 0),
        Err(BlockError::BadCrc { .. })
    ));
    // A misdirected copy of another slot's block is refused.
    meta.read_at(&mut b, quorum_blkno(1) * 4096).unwrap();
    meta.write_at(&b, quorum_blkno(0) * 4096).unwrap();
    assert!(matches!(
        read_quorum_block(&*meta, f, 0),
        Err(BlockError::WrongBlkno { .. })
    ));
}

#[test]
fn agent_refuses_a_slot_missing_from_the_config() {
    let (_dir, meta, _) = make_fs(2);
    let e = QuorumAgent::start(
        meta.clone(),
        5,
        1,
        fast_opts(),
        FakeServer::new(Duration::ZERO),
    )
    .unwrap_err();
    assert!(
        matches!(e, QuorumError::SlotNotConfigured { slot: 5, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("{0,1}"), "{e}");
    let e = QuorumAgent::start(
        meta,
        0,
        1,
        QuorumOptions {
            heartbeat_timeout: Duration::from_millis(50),
            ..fast_opts()
        },
        FakeServer::new(Duration::ZERO),
    )
    .unwrap_err();
    assert!(matches!(e, QuorumError::Options(_)), "{e}");
}

#[test]
fn agent_starts_at_the_greatest_term_of_all_quorum_blocks() {
    let (_dir, meta, _) = make_fs(3);
    let f = fsid(&*meta);
    let other = OwnBlock::begin(meta.clone(), f, 2, 0x77, 40).unwrap();
    other.record(QuorumEventKind::Term, 42).unwrap();
    let a = QuorumAgent::start(
        meta.clone(),
        0,
        1,
        fast_opts(),
        FakeServer::new(Duration::ZERO),
    )
    .unwrap();
    assert_eq!(a.status().term, 42);
    assert_eq!(a.status().role, Role::Follower);
    a.shutdown().unwrap();
    let q = block(&*meta, 0);
    assert_eq!(q.event(QuorumEventKind::Begin).term.get(), 42);
    assert_eq!(q.event(QuorumEventKind::End).term.get(), 42);
    assert_eq!(
        q.event(QuorumEventKind::Stop).write_nr.get(),
        0,
        "never ran a server"
    );
}

#[test]
fn agent_stops_its_server_and_reports_when_another_mount_takes_its_slot() {
    let (_dir, meta, _) = make_fs(1);
    let server = FakeServer::new(Duration::from_millis(1500));
    let a = QuorumAgent::start(meta.clone(), 0, 0xaa, fast_opts(), server.clone()).unwrap();
    wait_for("election", Duration::from_secs(10), || {
        (a.status().role == Role::Leader).then_some(())
    });
    // Before the server is up (and FENCE is written), a second mount writes BEGIN.
    OwnBlock::begin(meta.clone(), fsid(&*meta), 0, 0xbb, 1).unwrap();
    let err = wait_for("the agent to fail", Duration::from_secs(10), || {
        a.status().error
    });
    assert!(err.contains("used by another mount"), "{err}");
    assert_eq!(server.status(), ServerStatus::Down);
    assert!(matches!(a.shutdown(), Err(QuorumError::SlotTaken { .. })));
    let q = block(&*meta, 0);
    assert_eq!(q.event(QuorumEventKind::Begin).rid.get(), 0xbb);
    assert_eq!(q.event(QuorumEventKind::Fence).write_nr.get(), 0);
}

#[test]
fn find_leader_and_fence_candidates_follow_the_blocks_agents_write() {
    let (dir, meta, addrs) = make_fs(1);
    assert_eq!(find_leader(&*meta).unwrap(), None);
    // Mount A leads slot 0 and its server comes up; then its node dies: no more writes
    // reach the device, so STOP is never recorded.
    let faulty = Arc::new(FaultyDevice::new(open(dir.path())));
    let server_a = FakeServer::new(Duration::from_millis(50));
    let a = QuorumAgent::start(faulty.clone(), 0, 0xa, fast_opts(), server_a.clone()).unwrap();
    wait_for("A's server", Duration::from_secs(10), || {
        settled_leader(&*meta, &[&a], &[&server_a])
    });
    let leader = find_leader(&*meta).unwrap().unwrap();
    assert_eq!(
        leader,
        Leader {
            slot: 0,
            addr: addrs[0],
            term: 1,
            rid: 0xa
        }
    );
    assert_eq!(
        fence_candidates(&*meta, 1, 0xa).unwrap(),
        vec![],
        "not ourselves"
    );
    faulty.set_faults(Faults {
        fail_writes: true,
        ..Faults::default()
    });
    assert!(matches!(
        a.shutdown(),
        Err(QuorumError::Block { slot: 0, .. })
    ));
    assert_eq!(
        find_leader(&*meta).unwrap(),
        Some(leader),
        "clients still see A (and time out connecting)"
    );
    let a_cand = FenceCandidate {
        slot: 0,
        rid: 0xa,
        term: 1,
        addr: addrs[0],
    };
    assert_eq!(fence_candidates(&*meta, 2, 0xb).unwrap(), vec![a_cand]);
    assert_eq!(
        fence_candidates(&*meta, 0, 0xb).unwrap(),
        vec![],
        "newer than us"
    );

    // Mount B takes the slot. The block shows a live leader, so B waits a heartbeat
    // timeout before it stands; it is elected in term 2 and overwrites ELECT. A's FENCE
    // (term 1, no STOP after it) is what still names A.
    let server_b = FakeServer::new(Duration::from_millis(50));
    let started = Instant::now();
    let b = QuorumAgent::start(meta.clone(), 0, 0xb, fast_opts(), server_b.clone()).unwrap();
    wait_for("B elected", Duration::from_secs(10), || {
        (b.status().role == Role::Leader).then_some(())
    });
    assert!(started.elapsed() >= fast_opts().heartbeat_timeout);
    assert_eq!(b.status().term, 2);
    let q = block(&*meta, 0);
    assert_eq!(q.event(QuorumEventKind::Elect).rid.get(), 0xb);
    assert_eq!(fence_candidates(&*meta, 2, 0xb).unwrap(), vec![a_cand]);
    wait_for("B's server", Duration::from_secs(10), || {
        settled_leader(&*meta, &[&b], &[&server_b])
    });
    // B's FENCE (term 2) covers A now: a later server (term 3) fences only B.
    let b_cand = FenceCandidate {
        rid: 0xb,
        term: 2,
        ..a_cand
    };
    assert_eq!(fence_candidates(&*meta, 3, 0xc).unwrap(), vec![b_cand]);
    assert_eq!(
        find_leader(&*meta).unwrap().map(|l| (l.rid, l.term)),
        Some((0xb, 2))
    );
    b.shutdown().unwrap();
    assert_eq!(find_leader(&*meta).unwrap(), None);
    assert_eq!(fence_candidates(&*meta, 3, 0xc).unwrap(), vec![]);
    assert_eq!(server_b.status(), ServerStatus::Down);
}

fn event(term: u64, rid: u64) -> QuorumEvent {
    QuorumEvent {
        write_nr: 1.into(),
        rid: rid.into(),
        term: term.into(),
        ..QuorumEvent::default()
    }
}

fn qblock(elect: (u64, u64), fence: (u64, u64), stop: u64) -> QuorumBlock {
    let mut q = QuorumBlock::new_zeroed();
    q.events[QuorumEventKind::Elect as usize] = event(elect.0, elect.1);
    q.events[QuorumEventKind::Fence as usize] = event(fence.0, fence.1);
    q.events[QuorumEventKind::Stop as usize] = event(stop, fence.1);
    q
}

#[test]
fn fence_candidates_follow_the_digest_rules() {
    let addr = |s: u16| SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7000 + s);
    let blocks = vec![
        // Slot 0: leader of term 3 (rid 0x30), stopped: nothing.
        (0, addr(0), qblock((3, 0x30), (3, 0x30), 3)),
        // Slot 1: leader of term 5 still running (fenced others as term 5).
        (1, addr(1), qblock((5, 0x50), (5, 0x50), 0)),
        // Slot 2: an earlier mount fenced in term 4 and never stopped; a newer one was
        // elected in term 6.
        (2, addr(2), qblock((6, 0x60), (4, 0x40), 1)),
        // Slot 3: never elected.
        (3, addr(3), QuorumBlock::new_zeroed()),
    ];
    let c = candidates_of(&blocks, 7, 0x70);
    let got: Vec<(usize, u64, u64)> = c.iter().map(|c| (c.slot, c.rid, c.term)).collect();
    // Term 4 < greatest FENCE term 5: a later leader already fenced it.
    assert_eq!(got, vec![(1, 0x50, 5), (2, 0x60, 6)]);
    assert_eq!(c[1].addr, addr(2));
    // As the server of term 6 itself (rid 0x60): not ourselves, nothing newer.
    let got: Vec<u64> = candidates_of(&blocks, 6, 0x60)
        .iter()
        .map(|c| c.rid)
        .collect();
    assert_eq!(got, vec![0x50]);
    // Without slot 1's FENCE 5, the term-4 record is live again.
    let mut b = blocks.clone();
    b[1].2 = qblock((5, 0x50), (0, 0), 0);
    let got: Vec<u64> = candidates_of(&b, 7, 0x70).iter().map(|c| c.rid).collect();
    assert_eq!(got, vec![0x50, 0x60, 0x40]);
}

#[test]
fn three_agents_over_udp_elect_one_leader_and_another_after_its_shutdown() {
    let (_dir, meta, _) = make_fs(3);
    // Servers take longer to come up than the heartbeat timeout: heartbeats must keep
    // flowing meanwhile (seed 001, 2022-03-31), or followers would elect another leader.
    let opts = fast_opts();
    let servers: Vec<Arc<FakeServer>> = (0..3)
        .map(|_| FakeServer::new(opts.heartbeat_timeout * 3 / 2))
        .collect();
    let mut agents: Vec<Option<QuorumAgent>> = (0..3)
        .map(|i| {
            Some(
                QuorumAgent::start(meta.clone(), i, 0x1000 + i as u64, opts, servers[i].clone())
                    .unwrap(),
            )
        })
        .collect();
    let settle = |agents: &[Option<QuorumAgent>]| {
        let live: Vec<(&QuorumAgent, &FakeServer)> = agents
            .iter()
            .zip(&servers)
            .filter_map(|(a, s)| a.as_ref().map(|a| (a, &**s)))
            .collect();
        let (a, s): (Vec<_>, Vec<_>) = live.into_iter().unzip();
        settled_leader(&*meta, &a, &s)
    };
    let elected = wait_for("a first election", Duration::from_secs(30), || {
        agents
            .iter()
            .flatten()
            .map(|a| a.status())
            .find(|s| s.role == Role::Leader)
            .map(|s| (s.slot, s.term))
    });
    let (first, term) = wait_for("a first leader", Duration::from_secs(30), || {
        settle(&agents)
    });
    assert_eq!(
        (first, term),
        elected,
        "no new election while the leader's server started"
    );
    assert_eq!(
        *servers[first].starts.lock().unwrap(),
        vec![term],
        "started once"
    );
    for (i, s) in servers.iter().enumerate() {
        if i != first {
            assert!(s.starts.lock().unwrap().is_empty(), "slot {i} ran a server");
        }
    }
    let l = find_leader(&*meta).unwrap().unwrap();
    assert_eq!(
        (l.slot, l.term, l.rid),
        (first, term, 0x1000 + first as u64)
    );
    assert_eq!(l.addr, agents[first].as_ref().unwrap().local_addr());
    for a in agents.iter().flatten() {
        if a.slot() != first {
            let age = a.status().heartbeat_age.expect("followers hear heartbeats");
            assert!(age < opts.heartbeat_timeout, "{age:?}");
        }
    }

    agents[first].take().unwrap().shutdown().unwrap();
    assert_eq!(servers[first].status(), ServerStatus::Down);
    let q = block(&*meta, first);
    assert_eq!(q.event(QuorumEventKind::Stop).term.get(), term);
    assert_eq!(
        q.event(QuorumEventKind::End).write_nr.get(),
        q.write_nr.get()
    );

    let (second, term2) = wait_for("a second leader", Duration::from_secs(30), || {
        settle(&agents)
    });
    assert_ne!(second, first);
    assert!(term2 > term);
    let l = find_leader(&*meta).unwrap().unwrap();
    assert_eq!((l.slot, l.term), (second, term2));
    assert_eq!(
        fence_candidates(&*meta, term2, 0x1000 + second as u64).unwrap(),
        vec![],
        "the first leader recorded STOP"
    );
    for a in agents.into_iter().flatten() {
        a.shutdown().unwrap();
    }
    assert_eq!(find_leader(&*meta).unwrap(), None);
}
