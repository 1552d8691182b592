//! Bloom filter blocks: which lock groups a log tree holds items for.
//!
//! A 64 KiB block: header, `total_set` (le64), then bit words. Three bit positions per lock
//! start key, each 19 bits of one FNV-1a 64-bit hash of the key's 32 bytes, modulo the
//! number of bits.

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{assert_disk_size, Key};
use scoutgw_blockdev::{BlockHeader, BlockSize};

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct BloomBlockHeader {
    pub hdr: BlockHeader,
    pub total_set: U64,
}
assert_disk_size!(BloomBlockHeader, 40);

/// Bytes of bits after the header.
pub const BLOOM_BYTES: usize = BlockSize::Large.bytes() - core::mem::size_of::<BloomBlockHeader>();
/// Number of bits.
pub const BLOOM_BITS: u64 = (BLOOM_BYTES * 8) as u64;
/// Bit positions per key.
pub const BLOOM_NRS: usize = 3;
const FUNC_BITS: u32 = 19;

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The bit positions of a lock start key.
pub fn bloom_bits(lock_start: &Key) -> [u64; BLOOM_NRS] {
    let h = fnv1a64(lock_start.as_bytes());
    let mut out = [0; BLOOM_NRS];
    for (i, o) in out.iter_mut().enumerate() {
        *o = ((h >> (FUNC_BITS * i as u32)) & ((1 << FUNC_BITS) - 1)) % BLOOM_BITS;
    }
    out
}

/// True if bit `bit` is set in the bit bytes.
pub fn test_bit(bits: &[u8], bit: u64) -> bool {
    bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0
}

/// Whether a whole bloom block (`block`: header and bits) may hold the lock group that
/// starts at `lock_start`.
pub fn block_may_hold(block: &[u8], lock_start: &Key) -> bool {
    let bits = &block[core::mem::size_of::<BloomBlockHeader>()..];
    bloom_bits(lock_start).iter().all(|b| test_bit(bits, *b))
}

/// Set bit `bit`; true if it was clear.
pub fn set_bit(bits: &mut [u8], bit: u64) -> bool {
    let (i, m) = ((bit / 8) as usize, 1u8 << (bit % 8));
    let was_clear = bits[i] & m == 0;
    bits[i] |= m;
    was_clear
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn bits_are_within_range_and_settable() {
        let mut bits = vec![0u8; BLOOM_BYTES];
        for n in 0..1000 {
            let k = Key::new(16, n * 1024, 0, 0, 0, 0);
            for b in bloom_bits(&k) {
                assert!(b < BLOOM_BITS);
                set_bit(&mut bits, b);
                assert!(test_bit(&bits, b));
            }
        }
    }
}
