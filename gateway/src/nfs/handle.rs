//! NFS file handles: `(fsid, ino, generation)`, the same on every node and across restarts.
//!
//! Layout (28 bytes): `b"SGW"`, a format byte (1), then fsid, ino and generation as
//! big-endian u64s. A handle of another length or prefix is malformed (NFS3ERR_BADHANDLE);
//! one of another filesystem is stale, as is one whose inode was deleted or whose number now
//! belongs to an inode of another generation (the generation check happens against the
//! inode, in the procedures).

/// Bytes of an encoded handle.
pub const HANDLE_LEN: usize = 28;
const MAGIC: &[u8; 4] = b"SGW\x01";

/// A decoded file handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileHandle {
    pub fsid: u64,
    pub ino: u64,
    pub generation: u64,
}

/// Why a handle was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    #[error("malformed file handle")]
    Bad,
    #[error("file handle of another filesystem")]
    Stale,
}

impl FileHandle {
    pub fn encode(&self) -> [u8; HANDLE_LEN] {
        let mut out = [0u8; HANDLE_LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4..12].copy_from_slice(&self.fsid.to_be_bytes());
        out[12..20].copy_from_slice(&self.ino.to_be_bytes());
        out[20..28].copy_from_slice(&self.generation.to_be_bytes());
        out
    }

    /// Decode a handle received for filesystem `fsid`.
    pub fn decode(bytes: &[u8], fsid: u64) -> Result<Self, HandleError> {
        if bytes.len() != HANDLE_LEN || &bytes[..4] != MAGIC {
            return Err(HandleError::Bad);
        }
        let word = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let fh = FileHandle {
            fsid: word(4),
            ino: word(12),
            generation: word(20),
        };
        if fh.ino == 0 {
            return Err(HandleError::Bad);
        }
        if fh.fsid != fsid {
            return Err(HandleError::Stale);
        }
        Ok(fh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn handles_round_trip(fsid: u64, ino in 1u64.., generation: u64) {
            let fh = FileHandle { fsid, ino, generation };
            prop_assert_eq!(FileHandle::decode(&fh.encode(), fsid), Ok(fh));
        }

        #[test]
        fn garbage_handles_are_refused_not_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = FileHandle::decode(&bytes, 7);
        }
    }

    #[test]
    fn a_handle_of_another_filesystem_is_stale_and_a_short_one_bad() {
        let fh = FileHandle {
            fsid: 1,
            ino: 2,
            generation: 3,
        };
        assert_eq!(FileHandle::decode(&fh.encode(), 9), Err(HandleError::Stale));
        assert_eq!(
            FileHandle::decode(&fh.encode()[..20], 1),
            Err(HandleError::Bad)
        );
        let mut zero = fh;
        zero.ino = 0;
        assert_eq!(FileHandle::decode(&zero.encode(), 1), Err(HandleError::Bad));
    }
}
