//! Bounded XDR (RFC 4506) decoding and encoding of the primitives the RPC layer needs.
//!
//! Decoding works on a byte slice and checks every length against what is left before it
//! allocates anything, so a hostile length field is an error, not a 4 GiB allocation.

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XdrError {
    #[error("message ends {needed} bytes early at offset {at}")]
    Short { at: usize, needed: usize },
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Reads XDR items from a byte slice.
#[derive(Debug, Clone)]
pub struct XdrReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> XdrReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        if self.remaining() < n {
            return Err(XdrError::Short {
                at: self.pos,
                needed: n - self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u32(&mut self) -> Result<u32, XdrError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, XdrError> {
        Ok(((self.u32()? as u64) << 32) | self.u32()? as u64)
    }

    pub fn bool(&mut self) -> Result<bool, XdrError> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(XdrError::Invalid("boolean")),
        }
    }

    /// Fixed-length opaque data (padded to 4 bytes).
    pub fn fixed(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        let data = self.take(n)?;
        self.take(n.next_multiple_of(4) - n)?;
        Ok(data)
    }

    /// Variable-length opaque data of at most `max` bytes.
    pub fn opaque(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], XdrError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(XdrError::TooLong { what, len, max });
        }
        self.fixed(len)
    }

    /// The bytes not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
}

/// Writes XDR items into a growing buffer.
#[derive(Debug, Clone, Default)]
pub struct XdrWriter {
    pub buf: Vec<u8>,
}

impl XdrWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u32(v as u32)
    }

    pub fn fixed(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        let pad = data.len().next_multiple_of(4) - data.len();
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self
    }

    pub fn opaque(&mut self, data: &[u8]) -> &mut Self {
        self.u32(data.len() as u32).fixed(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn items_round_trip(a: u32, b: u64, c: bool, d in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut w = XdrWriter::new();
            w.u32(a).u64(b).bool(c).opaque(&d).fixed(&d);
            prop_assert_eq!(w.buf.len() % 4, 0);
            let mut r = XdrReader::new(&w.buf);
            prop_assert_eq!(r.u32().unwrap(), a);
            prop_assert_eq!(r.u64().unwrap(), b);
            prop_assert_eq!(r.bool().unwrap(), c);
            prop_assert_eq!(r.opaque("d", 40).unwrap(), &d[..]);
            prop_assert_eq!(r.fixed(d.len()).unwrap(), &d[..]);
            prop_assert_eq!(r.remaining(), 0);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = XdrReader::new(&bytes);
            let _ = r.u32().and_then(|_| r.opaque("x", 1 << 20)).and_then(|_| r.u64());
        }
    }

    #[test]
    fn a_huge_length_is_refused_before_allocating() {
        let mut w = XdrWriter::new();
        w.u32(u32::MAX);
        let mut r = XdrReader::new(&w.buf);
        assert_eq!(
            r.opaque("name", 255),
            Err(XdrError::TooLong {
                what: "name",
                len: u32::MAX as usize,
                max: 255
            })
        );
        let mut r = XdrReader::new(&w.buf);
        assert!(matches!(
            r.opaque("data", usize::MAX),
            Err(XdrError::Short { .. })
        ));
    }
}
