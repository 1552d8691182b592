//! A [`BlockDevice`] wrapper that counts the bytes and times every read, write and flush
//! into the node's metrics (`scoutgw_device_io_*`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use scoutgw_blockdev::{BlockDevice, BlockError};
use scoutgw_metrics::NodeMetrics;

pub struct MeteredDevice {
    inner: Arc<dyn BlockDevice>,
    /// "meta" or "data".
    name: &'static str,
    metrics: Arc<NodeMetrics>,
}

impl std::fmt::Debug for MeteredDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredDevice")
            .field("inner", &self.inner)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl MeteredDevice {
    pub fn wrap(
        inner: Arc<dyn BlockDevice>,
        name: &'static str,
        metrics: Arc<NodeMetrics>,
    ) -> Arc<dyn BlockDevice> {
        Arc::new(Self {
            inner,
            name,
            metrics,
        })
    }

    fn timed<T>(&self, op: &'static str, bytes: usize, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.metrics
            .device_io_seconds
            .with_label_values(&[self.name, op])
            .observe(start.elapsed().as_secs_f64());
        if bytes > 0 {
            self.metrics.add_device_bytes(self.name, op, bytes as u64);
        }
        out
    }
}

impl BlockDevice for MeteredDevice {
    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn len_bytes(&self) -> u64 {
        self.inner.len_bytes()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let n = buf.len();
        self.timed("read", n, || self.inner.read_at(buf, offset))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.timed("write", buf.len(), || self.inner.write_at(buf, offset))
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.timed("flush", 0, || self.inner.flush())
    }
}
