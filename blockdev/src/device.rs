//! Devices: positional I/O and durable flush on a regular file or a block device.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::buf::BlockBuf;
use crate::error::BlockError;

/// A device that several processes may read and write at once.
///
/// Implementations do positional I/O only: there is no shared file position and no
/// exclusive lock. `write_at` makes no durability promise; [`BlockDevice::flush`] makes every
/// completed write durable (`fdatasync`).
pub trait BlockDevice: Send + Sync + std::fmt::Debug {
    /// The path the device was opened from, for messages.
    fn path(&self) -> &Path;
    /// Size in bytes, as found when the device was opened.
    fn len_bytes(&self) -> u64;
    /// Read exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError>;
    /// Write all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError>;
    /// Make every completed write durable.
    fn flush(&self) -> Result<(), BlockError>;
}

/// How to open a device.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceOptions {
    /// Open read-only (`print`, `fsck`).
    pub read_only: bool,
    /// Bypass the page cache with `O_DIRECT`. Transfers must then be 512-byte aligned in
    /// offset and length; unaligned memory is bounced through an aligned buffer.
    pub direct: bool,
}

/// A regular file or a block device.
#[derive(Debug)]
pub struct FileDevice {
    path: PathBuf,
    file: File,
    len: u64,
    direct: bool,
}

impl FileDevice {
    pub fn open(path: impl AsRef<Path>, opts: DeviceOptions) -> Result<Self, BlockError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |source| BlockError::Open {
            path: path.clone(),
            source,
        };
        let mut oo = OpenOptions::new();
        oo.read(true).write(!opts.read_only);
        if opts.direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = oo.open(&path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let ft = meta.file_type();
        let len = if ft.is_block_device() {
            block_device_bytes(&file).map_err(open_err)?
        } else if ft.is_file() {
            meta.len()
        } else {
            return Err(open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or a block device",
            )));
        };
        Ok(Self {
            path,
            file,
            len,
            direct: opts.direct,
        })
    }

    fn io_err(&self, op: &'static str, offset: u64, len: usize, source: io::Error) -> BlockError {
        if source.kind() == io::ErrorKind::UnexpectedEof
            || source.kind() == io::ErrorKind::WriteZero
        {
            BlockError::Truncated {
                path: self.path.clone(),
                op,
                offset,
                len,
                device_bytes: self.len,
            }
        } else {
            BlockError::Io {
                path: self.path.clone(),
                op,
                offset,
                len,
                source,
            }
        }
    }

    fn check_range(&self, op: &'static str, offset: u64, len: usize) -> Result<(), BlockError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(BlockError::Truncated {
                path: self.path.clone(),
                op,
                offset,
                len,
                device_bytes: self.len,
            }),
        }
    }
}

/// The size of a block device, from the `BLKGETSIZE64` ioctl.
fn block_device_bytes(file: &File) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    // _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at a live,
    // properly aligned u64 on our stack; the fd is owned by `file` and open for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut bytes as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(bytes)
}

impl BlockDevice for FileDevice {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len_bytes(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.check_range("read", offset, buf.len())?;
        let res = if self.direct && !BlockBuf::is_aligned(buf) {
            let mut bounce = BlockBuf::zeroed(buf.len());
            self.file
                .read_exact_at(bounce.as_mut_slice(), offset)
                .map(|()| buf.copy_from_slice(bounce.as_slice()))
        } else {
            self.file.read_exact_at(buf, offset)
        };
        res.map_err(|e| self.io_err("read", offset, buf.len(), e))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.check_range("write", offset, buf.len())?;
        let res = if self.direct && !BlockBuf::is_aligned(buf) {
            let bounce = BlockBuf::from_slice(buf);
            self.file.write_all_at(bounce.as_slice(), offset)
        } else {
            self.file.write_all_at(buf, offset)
        };
        res.map_err(|e| self.io_err("write", offset, buf.len(), e))
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.file
            .sync_data()
            .map_err(|e| self.io_err("flush", 0, 0, e))
    }
}

/// Faults a [`FaultyDevice`] injects into the device it wraps.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Fail every write (and flush) with EIO.
    pub fail_writes: bool,
    /// Fail every read with EIO.
    pub fail_reads: bool,
    /// Writes are kept in memory and only reach the inner device at the next flush; when
    /// [`FaultyDevice::crash`] is called they are lost ("lost flush"), as after a power cut.
    pub buffer_until_flush: bool,
    /// The next write longer than this many bytes is torn: only its first bytes reach the
    /// device, then the write reports success.
    pub tear_next_write_at: Option<usize>,
    /// Let this many more writes (and flushes) succeed, then fail every later one with EIO,
    /// as a node that dies part-way through a sequence of writes.
    pub fail_after_writes: Option<usize>,
}

impl Faults {
    /// Count one write or flush against `fail_after_writes`; true once it is used up.
    fn countdown_expired(&mut self) -> bool {
        match &mut self.fail_after_writes {
            Some(0) => true,
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }
}

/// A real device wrapped with fault injection for crash and error tests.
///
/// It is not a mock: every byte that is not faulted goes to the inner device.
#[derive(Debug)]
pub struct FaultyDevice<D: BlockDevice> {
    inner: D,
    faults: Mutex<Faults>,
    pending: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl<D: BlockDevice> FaultyDevice<D> {
    pub fn new(inner: D) -> Self {
        Self {
            inner,
            faults: Mutex::new(Faults::default()),
            pending: Mutex::new(Vec::new()),
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().expect("faults lock") = faults;
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Drop every write not yet flushed, as a power cut would.
    pub fn crash(&self) {
        self.pending.lock().expect("pending lock").clear();
    }

    fn eio(&self, op: &'static str, offset: u64, len: usize) -> BlockError {
        BlockError::Io {
            path: self.inner.path().to_path_buf(),
            op,
            offset,
            len,
            source: io::Error::from_raw_os_error(libc::EIO),
        }
    }
}

impl<D: BlockDevice> BlockDevice for FaultyDevice<D> {
    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn len_bytes(&self) -> u64 {
        self.inner.len_bytes()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        if self.faults.lock().expect("faults lock").fail_reads {
            return Err(self.eio("read", offset, buf.len()));
        }
        self.inner.read_at(buf, offset)?;
        // Unflushed writes are visible to reads of this process, as in a page cache.
        for (woff, data) in self.pending.lock().expect("pending lock").iter() {
            let (rs, re) = (offset, offset + buf.len() as u64);
            let (ws, we) = (*woff, *woff + data.len() as u64);
            let (s, e) = (rs.max(ws), re.min(we));
            if s < e {
                buf[(s - rs) as usize..(e - rs) as usize]
                    .copy_from_slice(&data[(s - ws) as usize..(e - ws) as usize]);
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        let mut f = self.faults.lock().expect("faults lock");
        if f.fail_writes || f.countdown_expired() {
            return Err(self.eio("write", offset, buf.len()));
        }
        let mut data = buf;
        if let Some(torn) = f.tear_next_write_at {
            if buf.len() > torn {
                f.tear_next_write_at = None;
                data = &buf[..torn];
            }
        }
        if f.buffer_until_flush {
            self.pending
                .lock()
                .expect("pending lock")
                .push((offset, data.to_vec()));
            Ok(())
        } else {
            self.inner.write_at(data, offset)
        }
    }

    fn flush(&self) -> Result<(), BlockError> {
        let mut f = self.faults.lock().expect("faults lock");
        if f.fail_writes || f.countdown_expired() {
            return Err(self.eio("flush", 0, 0));
        }
        drop(f);
        let pending = std::mem::take(&mut *self.pending.lock().expect("pending lock"));
        for (off, data) in pending {
            self.inner.write_at(&data, off)?;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(len: u64) -> (tempfile::NamedTempFile, FileDevice) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        let d = FileDevice::open(f.path(), DeviceOptions::default()).unwrap();
        (f, d)
    }

    #[test]
    fn positional_io_round_trips() {
        let (_f, d) = dev(1 << 20);
        d.write_at(b"hello", 4096).unwrap();
        let mut b = [0u8; 5];
        d.read_at(&mut b, 4096).unwrap();
        assert_eq!(&b, b"hello");
        d.flush().unwrap();
    }

    #[test]
    fn io_past_the_end_is_truncated_error() {
        let (_f, d) = dev(8192);
        let mut b = [0u8; 4096];
        assert!(matches!(
            d.read_at(&mut b, 8192),
            Err(BlockError::Truncated {
                device_bytes: 8192,
                ..
            })
        ));
        assert!(matches!(
            d.write_at(&b, 6000),
            Err(BlockError::Truncated { .. })
        ));
        assert!(matches!(
            d.read_at(&mut b, u64::MAX - 10),
            Err(BlockError::Truncated { .. })
        ));
    }

    #[test]
    fn a_file_shrunk_under_us_reads_as_truncated() {
        let (f, d) = dev(65536);
        f.as_file().set_len(4096).unwrap();
        let mut b = [0u8; 4096];
        let err = d.read_at(&mut b, 8192).unwrap_err();
        assert!(matches!(err, BlockError::Truncated { .. }), "{err:?}");
    }

    #[test]
    fn missing_device_is_open_error() {
        let err = FileDevice::open("/nonexistent/meta.dev", DeviceOptions::default()).unwrap_err();
        assert!(matches!(err, BlockError::Open { .. }));
        assert!(err.to_string().contains("/nonexistent/meta.dev"));
    }

    #[test]
    fn directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let err = FileDevice::open(
            d.path(),
            DeviceOptions {
                read_only: true,
                direct: false,
            },
        )
        .unwrap_err();
        assert!(matches!(err, BlockError::Open { .. }), "{err:?}");
    }

    #[test]
    fn lost_flush_drops_unflushed_writes() {
        let (_f, d) = dev(65536);
        let fd = FaultyDevice::new(d);
        fd.set_faults(Faults {
            buffer_until_flush: true,
            ..Faults::default()
        });
        fd.write_at(b"durable", 0).unwrap();
        fd.flush().unwrap();
        fd.write_at(b"volatil", 0).unwrap();
        let mut b = [0u8; 7];
        fd.read_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"volatil");
        fd.crash();
        fd.read_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"durable");
    }

    #[test]
    fn writes_fail_after_the_countdown() {
        let (_f, d) = dev(65536);
        let fd = FaultyDevice::new(d);
        fd.set_faults(Faults {
            fail_after_writes: Some(2),
            ..Faults::default()
        });
        fd.write_at(b"a", 0).unwrap();
        fd.flush().unwrap();
        assert!(fd.write_at(b"b", 1).is_err());
        assert!(fd.flush().is_err());
        let mut b = [0u8; 2];
        fd.read_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"a\0");
    }

    #[test]
    fn torn_write_stores_only_a_prefix() {
        let (_f, d) = dev(65536);
        let fd = FaultyDevice::new(d);
        fd.set_faults(Faults {
            tear_next_write_at: Some(100),
            ..Faults::default()
        });
        fd.write_at(&[0xAB; 4096], 0).unwrap();
        let mut b = [0u8; 4096];
        fd.read_at(&mut b, 0).unwrap();
        assert!(b[..100].iter().all(|&x| x == 0xAB));
        assert!(b[100..].iter().all(|&x| x == 0));
    }
}
