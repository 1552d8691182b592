//! The 32-byte UDP message quorum members exchange (digest §6.2).
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | `fsid` (little-endian) |
//! | 8 | 8 | `version` of the quorum config the sender uses |
//! | 16 | 8 | `term` |
//! | 24 | 1 | `type`: RequestVote 0, Vote 1, Heartbeat 2, Resignation 3, PreVote 4, PreVoteGranted 5 |
//! | 25 | 1 | `from`: the sender's slot |
//! | 26 | 2 | zero |
//! | 28 | 4 | crc32c (init `!0`, no final xor, as block crcs) of bytes 0..28 |
//!
//! A datagram that is not exactly such a message for our filesystem and config version, or
//! that claims to come from a slot the config does not hold, is rejected with a
//! [`MessageError`]; the agent drops it.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::SlotSet;

/// Size of a message on the wire.
pub const MESSAGE_BYTES: usize = 32;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
struct WireMessage {
    fsid: U64,
    version: U64,
    term: U64,
    ty: u8,
    from: u8,
    pad: [u8; 2],
    crc: U32,
}
const _: () = assert!(core::mem::size_of::<WireMessage>() == MESSAGE_BYTES);

/// What a message asks or tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// A candidate asks for votes in its term.
    RequestVote = 0,
    /// A member grants its vote for the term to the candidate it sends this to.
    Vote = 1,
    /// The leader of the term is alive.
    Heartbeat = 2,
    /// The leader of the term gives up (its server stopped or it is shutting down).
    Resignation = 3,
    /// A member about to stand for election asks whether others would vote for it in
    /// `term` (its term + 1) without anyone changing term yet.
    PreVote = 4,
    /// The answer to a `PreVote`: the sender would vote in `term` (it hears no leader).
    PreVoteGranted = 5,
}

impl MessageType {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::RequestVote,
            1 => Self::Vote,
            2 => Self::Heartbeat,
            3 => Self::Resignation,
            4 => Self::PreVote,
            5 => Self::PreVoteGranted,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::RequestVote => "request_vote",
            Self::Vote => "vote",
            Self::Heartbeat => "heartbeat",
            Self::Resignation => "resignation",
            Self::PreVote => "pre_vote",
            Self::PreVoteGranted => "pre_vote_granted",
        }
    }
}

/// A decoded message: the fsid and config version are checked by [`QuorumMessage::decode`]
/// and supplied by [`QuorumMessage::encode`], so they are not part of the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuorumMessage {
    pub term: u64,
    pub ty: MessageType,
    /// The sender's slot.
    pub from: usize,
}

/// Why a datagram was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("quorum message of {0} bytes, expected {MESSAGE_BYTES}")]
    Length(usize),
    #[error("quorum message crc32c {stored:#010x} does not match the computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("quorum message for filesystem {found:016x}, ours is {expected:016x}")]
    Fsid { expected: u64, found: u64 },
    #[error("quorum message for quorum config version {found}, ours is {expected}")]
    Version { expected: u64, found: u64 },
    #[error("quorum message of unknown type {0}")]
    Type(u8),
    #[error("quorum message from slot {0}, which the quorum config does not hold")]
    Slot(u8),
}

fn message_crc(first_28: &[u8]) -> u32 {
    !crc32c::crc32c(first_28)
}

impl QuorumMessage {
    pub fn new(ty: MessageType, term: u64, from: usize) -> Self {
        Self { term, ty, from }
    }

    /// The wire bytes of this message for filesystem `fsid`, quorum config `version`.
    pub fn encode(&self, fsid: u64, version: u64) -> [u8; MESSAGE_BYTES] {
        let mut w = WireMessage {
            fsid: fsid.into(),
            version: version.into(),
            term: self.term.into(),
            ty: self.ty as u8,
            from: u8::try_from(self.from).expect("slot numbers fit a byte"),
            pad: [0; 2],
            crc: 0.into(),
        };
        w.crc = message_crc(&w.as_bytes()[..28]).into();
        let mut out = [0u8; MESSAGE_BYTES];
        out.copy_from_slice(w.as_bytes());
        out
    }

    /// Decode and check a received datagram: length, crc, fsid, config version, type and
    /// that `from` is a configured slot.
    pub fn decode(
        bytes: &[u8],
        fsid: u64,
        version: u64,
        slots: SlotSet,
    ) -> Result<Self, MessageError> {
        let w =
            WireMessage::read_from_bytes(bytes).map_err(|_| MessageError::Length(bytes.len()))?;
        let computed = message_crc(&bytes[..28]);
        if w.crc.get() != computed {
            return Err(MessageError::Crc {
                stored: w.crc.get(),
                computed,
            });
        }
        if w.fsid.get() != fsid {
            return Err(MessageError::Fsid {
                expected: fsid,
                found: w.fsid.get(),
            });
        }
        if w.version.get() != version {
            return Err(MessageError::Version {
                expected: version,
                found: w.version.get(),
            });
        }
        let ty = MessageType::from_u8(w.ty).ok_or(MessageError::Type(w.ty))?;
        if !slots.contains(w.from as usize) {
            return Err(MessageError::Slot(w.from));
        }
        Ok(Self {
            term: w.term.get(),
            ty,
            from: w.from as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FSID: u64 = 0x1234_5678_9abc_def0;

    fn slots() -> SlotSet {
        SlotSet::from_slots([0, 1, 2, 14])
    }

    #[test]
    fn message_layout_matches_the_wire_format() {
        let b = QuorumMessage::new(MessageType::Heartbeat, 7, 2).encode(FSID, 3);
        assert_eq!(&b[0..8], &FSID.to_le_bytes());
        assert_eq!(&b[8..16], &3u64.to_le_bytes());
        assert_eq!(&b[16..24], &7u64.to_le_bytes());
        assert_eq!(b[24], 2);
        assert_eq!(b[25], 2);
        assert_eq!(&b[26..28], &[0, 0]);
        assert_eq!(&b[28..32], &(!crc32c::crc32c(&b[..28])).to_le_bytes());
    }

    proptest! {
        #[test]
        fn message_encode_decode_round_trips(term: u64, ty in 0u8..6, from in prop::sample::select(vec![0usize, 1, 2, 14]), version: u64) {
            let m = QuorumMessage::new(MessageType::from_u8(ty).unwrap(), term, from);
            let b = m.encode(FSID, version);
            prop_assert_eq!(QuorumMessage::decode(&b, FSID, version, slots()), Ok(m));
        }

        #[test]
        fn message_with_any_flipped_bit_is_rejected(pos in 0usize..MESSAGE_BYTES, bit in 0u8..8) {
            let mut b = QuorumMessage::new(MessageType::Vote, 9, 1).encode(FSID, 1);
            b[pos] ^= 1 << bit;
            prop_assert!(QuorumMessage::decode(&b, FSID, 1, slots()).is_err());
        }

        #[test]
        fn message_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = QuorumMessage::decode(&bytes, FSID, 1, slots());
        }
    }

    #[test]
    fn message_with_bad_crc_is_rejected() {
        let mut b = QuorumMessage::new(MessageType::Heartbeat, 5, 0).encode(FSID, 1);
        b[30] ^= 0xff;
        assert!(matches!(
            QuorumMessage::decode(&b, FSID, 1, slots()),
            Err(MessageError::Crc { .. })
        ));
        // A changed term with the old crc is a crc error too.
        let mut b = QuorumMessage::new(MessageType::Heartbeat, 5, 0).encode(FSID, 1);
        b[16] = 6;
        assert!(matches!(
            QuorumMessage::decode(&b, FSID, 1, slots()),
            Err(MessageError::Crc { .. })
        ));
    }

    #[test]
    fn message_of_another_filesystem_or_config_version_is_rejected() {
        let b = QuorumMessage::new(MessageType::Heartbeat, 5, 0).encode(FSID + 1, 1);
        assert_eq!(
            QuorumMessage::decode(&b, FSID, 1, slots()),
            Err(MessageError::Fsid {
                expected: FSID,
                found: FSID + 1
            })
        );
        let b = QuorumMessage::new(MessageType::Heartbeat, 5, 0).encode(FSID, 2);
        assert_eq!(
            QuorumMessage::decode(&b, FSID, 1, slots()),
            Err(MessageError::Version {
                expected: 1,
                found: 2
            })
        );
    }

    #[test]
    fn message_from_unknown_slot_or_of_unknown_type_is_rejected() {
        let b = QuorumMessage::new(MessageType::Heartbeat, 5, 3).encode(FSID, 1);
        assert_eq!(
            QuorumMessage::decode(&b, FSID, 1, slots()),
            Err(MessageError::Slot(3))
        );
        let mut b = QuorumMessage::new(MessageType::Heartbeat, 5, 0).encode(FSID, 1);
        b[24] = 6;
        let crc = !crc32c::crc32c(&b[..28]);
        b[28..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            QuorumMessage::decode(&b, FSID, 1, slots()),
            Err(MessageError::Type(6))
        );
        assert_eq!(
            QuorumMessage::decode(&b[..31], FSID, 1, slots()),
            Err(MessageError::Length(31))
        );
    }
}
