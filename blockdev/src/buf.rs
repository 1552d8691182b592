//! Page-aligned, zero-initialised block buffers.
//!
//! `O_DIRECT` requires the memory address, the file offset and the length of every transfer
//! to be aligned to the device's logical block size. Every [`BlockBuf`] starts on a
//! [`BUF_ALIGN`] boundary so it can be handed to the device as it is.

use std::fmt;

/// Alignment of every block buffer: the largest logical block size of devices we support.
pub const BUF_ALIGN: usize = 4096;

/// An owned, aligned, fixed-length byte buffer holding one or more blocks.
pub struct BlockBuf {
    raw: Box<[u8]>,
    off: usize,
    len: usize,
}

impl BlockBuf {
    /// A zeroed buffer of `len` bytes whose first byte is [`BUF_ALIGN`]-aligned.
    pub fn zeroed(len: usize) -> Self {
        let raw = vec![0u8; len + BUF_ALIGN].into_boxed_slice();
        let off = raw.as_ptr().align_offset(BUF_ALIGN);
        debug_assert!(off < BUF_ALIGN);
        Self { raw, off, len }
    }

    /// A buffer holding a copy of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut buf = Self::zeroed(bytes.len());
        buf.as_mut_slice().copy_from_slice(bytes);
        buf
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }

    /// True when `bytes` may be transferred with `O_DIRECT` as it is.
    pub fn is_aligned(bytes: &[u8]) -> bool {
        (bytes.as_ptr() as usize).is_multiple_of(BUF_ALIGN) && bytes.len().is_multiple_of(512)
    }
}

impl Clone for BlockBuf {
    fn clone(&self) -> Self {
        Self::from_slice(self.as_slice())
    }
}

impl fmt::Debug for BlockBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockBuf").field("len", &self.len).finish()
    }
}

impl AsRef<[u8]> for BlockBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_page_aligned_and_zeroed() {
        for len in [0usize, 1, 4096, 65536, 65536 * 3] {
            let b = BlockBuf::zeroed(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_slice().as_ptr() as usize % BUF_ALIGN, 0);
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
    }
}
