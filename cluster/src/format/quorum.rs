//! Quorum configuration (in the super block) and quorum blocks (one per slot).
//!
//! Only the member that owns slot N ever writes quorum block N (seed 003): the block records
//! that member's events, each stamped with the block's `write_nr` at the time, which orders
//! events independently of clocks.

use std::net::{Ipv4Addr, SocketAddrV4};

use scoutgw_blockdev::BlockHeader;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::assert_disk_size;
use super::layout::QUORUM_MAX_SLOTS;

/// Address family of an unused slot.
pub const AF_NONE: u16 = 0;
/// IPv4.
pub const AF_IPV4: u16 = 1;

/// A network address: family, port and IPv4 address (as the u32 of its octets, big-endian
/// order of octets, stored little-endian).
#[derive(
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
)]
#[repr(C)]
pub struct InetAddr {
    pub family: U16,
    pub port: U16,
    pub addr: U32,
}
assert_disk_size!(InetAddr, 8);

impl InetAddr {
    pub fn from_v4(sa: SocketAddrV4) -> Self {
        Self {
            family: AF_IPV4.into(),
            port: sa.port().into(),
            addr: u32::from(*sa.ip()).into(),
        }
    }

    /// The IPv4 socket address, if the family is IPv4.
    pub fn to_v4(&self) -> Option<SocketAddrV4> {
        (self.family.get() == AF_IPV4)
            .then(|| SocketAddrV4::new(Ipv4Addr::from(self.addr.get()), self.port.get()))
    }
}

/// The quorum slots of the filesystem.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct QuorumConfig {
    /// Incremented by every change of the slots.
    pub version: U64,
    pub slots: [InetAddr; QUORUM_MAX_SLOTS],
}
assert_disk_size!(QuorumConfig, 128);

impl QuorumConfig {
    /// `(slot, address)` of every configured slot.
    pub fn present(&self) -> impl Iterator<Item = (usize, SocketAddrV4)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.to_v4().map(|sa| (i, sa)))
    }

    /// Votes needed to elect a leader: a majority of the configured slots.
    pub fn majority(&self) -> usize {
        self.present().count() / 2 + 1
    }
}

/// A time: seconds and nanoseconds since the Unix epoch.
#[derive(
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
)]
#[repr(C)]
pub struct Timespec {
    pub sec: U64,
    pub nsec: U32,
    pub _pad: [u8; 4],
}
assert_disk_size!(Timespec, 16);

/// One recorded quorum event.
#[derive(
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
)]
#[repr(C)]
pub struct QuorumEvent {
    /// The block's write_nr when the event was recorded (0 = never).
    pub write_nr: U64,
    pub rid: U64,
    pub term: U64,
    pub ts: Timespec,
}
assert_disk_size!(QuorumEvent, 40);

/// The events of a quorum block, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum QuorumEventKind {
    /// The member's quorum agent started.
    Begin = 0,
    /// The member persisted a higher term.
    Term = 1,
    /// The member won an election.
    Elect = 2,
    /// The member's server finished fencing every previous leader.
    Fence = 3,
    /// The member's server stopped.
    Stop = 4,
    /// The member's quorum agent shut down.
    End = 5,
}

impl QuorumEventKind {
    pub const ALL: [QuorumEventKind; 6] = [
        Self::Begin,
        Self::Term,
        Self::Elect,
        Self::Fence,
        Self::Stop,
        Self::End,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Begin => "begin",
            Self::Term => "term",
            Self::Elect => "elect",
            Self::Fence => "fence",
            Self::Stop => "stop",
            Self::End => "end",
        }
    }
}

/// A quorum block (the first 280 bytes of a 4 KiB block; the rest is zero).
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct QuorumBlock {
    pub hdr: BlockHeader,
    /// Incremented by every write of the block.
    pub write_nr: U64,
    pub events: [QuorumEvent; 6],
}
assert_disk_size!(QuorumBlock, 280);

impl QuorumBlock {
    pub fn event(&self, kind: QuorumEventKind) -> &QuorumEvent {
        &self.events[kind as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use zerocopy::FromZeros;

    proptest! {
        #[test]
        fn inet_addr_round_trips(ip: u32, port: u16) {
            let sa = SocketAddrV4::new(Ipv4Addr::from(ip), port);
            let a = InetAddr::from_v4(sa);
            let back = InetAddr::read_from_bytes(a.as_bytes()).unwrap();
            prop_assert_eq!(back.to_v4(), Some(sa));
        }

        #[test]
        fn quorum_block_round_trips(write_nr: u64, evs in proptest::array::uniform6((any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()))) {
            let mut q = QuorumBlock::new_zeroed();
            q.write_nr = write_nr.into();
            for (e, (w, rid, term, sec, nsec)) in q.events.iter_mut().zip(evs) {
                *e = QuorumEvent { write_nr: w.into(), rid: rid.into(), term: term.into(), ts: Timespec { sec: sec.into(), nsec: nsec.into(), _pad: [0; 4] } };
            }
            let back = QuorumBlock::read_from_bytes(q.as_bytes()).unwrap();
            prop_assert_eq!(back, q);
            prop_assert_eq!(back.event(QuorumEventKind::Fence), &q.events[3]);
        }

        #[test]
        fn quorum_config_round_trips(slots in proptest::collection::vec(proptest::option::of((any::<u32>(), 1u16..)), QUORUM_MAX_SLOTS)) {
            let mut c = QuorumConfig::new_zeroed();
            c.version = 1.into();
            for (s, v) in c.slots.iter_mut().zip(&slots) {
                if let Some((ip, port)) = v { *s = InetAddr::from_v4(SocketAddrV4::new(Ipv4Addr::from(*ip), *port)); }
            }
            let back = QuorumConfig::read_from_bytes(c.as_bytes()).unwrap();
            prop_assert_eq!(back, c);
            prop_assert_eq!(back.present().count(), slots.iter().flatten().count());
        }
    }

    #[test]
    fn unused_slot_has_no_address() {
        assert_eq!(InetAddr::default().to_v4(), None);
    }

    #[test]
    fn majority_of_slots() {
        let mut c = QuorumConfig::new_zeroed();
        for (i, n) in [(1usize, 1usize), (2, 2), (3, 2), (4, 3), (5, 3)] {
            c.slots[i - 1] = InetAddr::from_v4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7000));
            assert_eq!(c.majority(), n);
        }
    }
}
