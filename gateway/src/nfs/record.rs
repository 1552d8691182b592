//! RPC record marking over TCP (RFC 5531 §11): a record is one or more fragments, each
//! preceded by a 4-byte header (top bit: last fragment; low 31 bits: length).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record of at least {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("connection closed in the middle of a record")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

const LAST_FRAGMENT: u32 = 1 << 31;

/// Read one whole record of at most `max` bytes; `None` at a clean end of stream.
pub async fn read_record<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, RecordError> {
    let mut record = Vec::new();
    loop {
        let mut hdr = [0u8; 4];
        match r.read_exact(&mut hdr).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return if record.is_empty() {
                    Ok(None)
                } else {
                    Err(RecordError::Truncated)
                };
            }
            Err(e) => return Err(e.into()),
        }
        let word = u32::from_be_bytes(hdr);
        let len = (word & !LAST_FRAGMENT) as usize;
        let total = record.len() + len;
        if total > max {
            return Err(RecordError::TooLarge { len: total, max });
        }
        let at = record.len();
        record.resize(total, 0);
        r.read_exact(&mut record[at..]).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                RecordError::Truncated
            } else {
                RecordError::Io(e)
            }
        })?;
        if word & LAST_FRAGMENT != 0 {
            return Ok(Some(record));
        }
    }
}

/// Write `msg` as one record (a single last fragment).
pub async fn write_record<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> std::io::Result<()> {
    let hdr = (msg.len() as u32 | LAST_FRAGMENT).to_be_bytes();
    // Header and body in one vectored write where the stream takes it (no copy of a 1 MiB
    // READ reply), the rest of whatever it did not take after.
    let mut done = 0usize;
    let total = 4 + msg.len();
    while done < total {
        let n = if done < 4 {
            let bufs = [
                std::io::IoSlice::new(&hdr[done..]),
                std::io::IoSlice::new(msg),
            ];
            w.write_vectored(&bufs).await?
        } else {
            w.write(&msg[done - 4..]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(data: &[u8], last: bool) -> Vec<u8> {
        let mut v = ((data.len() as u32) | if last { LAST_FRAGMENT } else { 0 })
            .to_be_bytes()
            .to_vec();
        v.extend_from_slice(data);
        v
    }

    #[tokio::test]
    async fn written_records_read_back_whole() {
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let (mut a, mut b) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            write_record(&mut a, &body).await.unwrap();
            write_record(&mut a, b"").await.unwrap();
            body
        });
        let got = read_record(&mut b, 1 << 20).await.unwrap().unwrap();
        let empty = read_record(&mut b, 1 << 20).await.unwrap().unwrap();
        assert_eq!(got, writer.await.unwrap());
        assert!(empty.is_empty());
    }

    #[tokio::test]
    async fn fragments_are_reassembled() {
        let mut bytes = frag(b"hello ", false);
        bytes.extend(frag(b"world", true));
        bytes.extend(frag(b"next", true));
        let mut r = &bytes[..];
        assert_eq!(
            read_record(&mut r, 100).await.unwrap().unwrap(),
            b"hello world"
        );
        assert_eq!(read_record(&mut r, 100).await.unwrap().unwrap(), b"next");
        assert!(read_record(&mut r, 100).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_and_truncated_records_are_errors() {
        let bytes = [0xFF, 0xFF, 0xFF, 0xFF];
        let mut r = &bytes[..];
        assert!(matches!(
            read_record(&mut r, 1 << 20).await,
            Err(RecordError::TooLarge { .. })
        ));
        let bytes = frag(b"abcdef", true);
        let mut r = &bytes[..7];
        assert!(matches!(
            read_record(&mut r, 100).await,
            Err(RecordError::Truncated)
        ));
        let mut bytes = frag(b"abc", false);
        bytes.truncate(7);
        let mut r = &bytes[..];
        assert!(matches!(
            read_record(&mut r, 100).await,
            Err(RecordError::Truncated)
        ));
    }

    #[tokio::test]
    async fn written_records_read_back() {
        let mut out = Vec::new();
        write_record(&mut out, b"reply").await.unwrap();
        let mut r = &out[..];
        assert_eq!(read_record(&mut r, 100).await.unwrap().unwrap(), b"reply");
    }
}
