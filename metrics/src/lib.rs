//! The metrics of one scoutgw node: their definitions (names, help, labels, units), the
//! registry that holds them, and the Prometheus text exposition.
//!
//! Conventions: every name starts with `scoutgw_`, values are in base units (seconds,
//! bytes), counters end in `_total`, latency histograms in `_seconds`. Event counters are
//! incremented where the event happens (the NFS and HTTP layers); values other crates keep
//! (block cache statistics, merge backlog, device I/O) are copied in by the node just
//! before each scrape with the `set_*` methods.
//!
//! This crate must not depend on any other scoutgw crate: everyone may use it.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets from 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Every metric of a node.
pub struct NodeMetrics {
    registry: Registry,
    pub nfs_requests: IntCounterVec,
    pub nfs_request_seconds: HistogramVec,
    pub nfs_read_bytes: IntCounter,
    pub nfs_write_bytes: IntCounter,
    pub nfs_drc_replays: IntCounter,
    pub nfs_bad_records: IntCounter,
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    pub commits: IntCounter,
    pub commit_seconds: Histogram,
    block_cache_hits: IntCounterVec,
    block_cache_misses: IntCounterVec,
    block_cache_bytes: IntGaugeVec,
    item_cache_events: IntCounterVec,
    item_cache_items: IntGauge,
    item_cache_bytes: IntGauge,
    device_bytes: IntCounterVec,
    pub device_io_seconds: HistogramVec,
    merge_backlog: IntGauge,
    trees_merged: IntCounter,
    lock_requests: IntCounterVec,
    pub quorum_term: IntGauge,
    quorum_role: IntGaugeVec,
    pub quorum_heartbeat_age_seconds: prometheus::Gauge,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

/// Move a counter up to a total kept elsewhere (totals only grow; a smaller one is ignored).
fn catch_up(c: &IntCounter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let nfs_requests = counter_vec(
            &r,
            "scoutgw_nfs_requests_total",
            "NFS, MOUNT and portmapper requests answered, by procedure and NFS status",
            &["procedure", "status"],
        );
        let nfs_request_seconds = histogram_vec(
            &r,
            "scoutgw_nfs_request_duration_seconds",
            "Time to answer an NFS request, by procedure",
            &["procedure"],
        );
        let nfs_read_bytes = counter(
            &r,
            "scoutgw_nfs_read_bytes_total",
            "File bytes returned by NFS READ",
        );
        let nfs_write_bytes = counter(
            &r,
            "scoutgw_nfs_write_bytes_total",
            "File bytes written by NFS WRITE",
        );
        let nfs_drc_replays = counter(
            &r,
            "scoutgw_nfs_drc_replays_total",
            "Retransmitted NFS requests answered from the duplicate-request cache",
        );
        let nfs_bad_records = counter(
            &r,
            "scoutgw_nfs_bad_records_total",
            "RPC records that were not acceptable calls (garbage, oversized, bad credentials)",
        );
        let http_requests = counter_vec(
            &r,
            "scoutgw_http_requests_total",
            "HTTP API requests, by route and status code",
            &["route", "status"],
        );
        let http_request_seconds = histogram_vec(
            &r,
            "scoutgw_http_request_duration_seconds",
            "Time to answer an HTTP API request, by route",
            &["route"],
        );
        let commits = counter(
            &r,
            "scoutgw_transaction_commits_total",
            "Commits requested by the node (COMMIT, FILE_SYNC writes, sync exports, periodic)",
        );
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "scoutgw_transaction_commit_duration_seconds",
                "Time of a commit requested by the node",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        r.register(Box::new(commit_seconds.clone()))
            .expect("unique metric");
        let block_cache_hits = counter_vec(
            &r,
            "scoutgw_block_cache_hits_total",
            "Metadata block reads answered by the block cache, by cache user",
            &["user"],
        );
        let block_cache_misses = counter_vec(
            &r,
            "scoutgw_block_cache_misses_total",
            "Metadata block reads that went to the device, by cache user",
            &["user"],
        );
        let block_cache_bytes = IntGaugeVec::new(
            Opts::new(
                "scoutgw_block_cache_bytes",
                "Bytes held by the block cache, by cache user",
            ),
            &["user"],
        )
        .expect("valid metric");
        r.register(Box::new(block_cache_bytes.clone()))
            .expect("unique metric");
        let item_cache_events = counter_vec(
            &r,
            "scoutgw_item_cache_events_total",
            "Item cache events: hit and miss (reads), fill (ranges read from the trees), \
             eviction (ranges dropped for space), invalidation (emptied for other nodes' changes)",
            &["event"],
        );
        let item_cache_items = IntGauge::new(
            "scoutgw_item_cache_items",
            "Committed items held by the mount's item cache",
        )
        .expect("valid metric");
        r.register(Box::new(item_cache_items.clone()))
            .expect("unique metric");
        let item_cache_bytes = IntGauge::new(
            "scoutgw_item_cache_bytes",
            "Estimated memory held by the mount's item cache",
        )
        .expect("valid metric");
        r.register(Box::new(item_cache_bytes.clone()))
            .expect("unique metric");
        let device_bytes = counter_vec(
            &r,
            "scoutgw_device_io_bytes_total",
            "Bytes read from and written to the shared devices",
            &["device", "op"],
        );
        let device_io_seconds = histogram_vec(
            &r,
            "scoutgw_device_io_duration_seconds",
            "Time of one device read, write or flush",
            &["device", "op"],
        );
        let merge_backlog = IntGauge::new(
            "scoutgw_log_merge_backlog_trees",
            "Finalized log trees waiting to be merged into fs_root",
        )
        .expect("valid metric");
        r.register(Box::new(merge_backlog.clone()))
            .expect("unique metric");
        let trees_merged = counter(
            &r,
            "scoutgw_log_trees_merged_total",
            "Log trees merged into fs_root",
        );
        let lock_requests = counter_vec(
            &r,
            "scoutgw_lock_events_total",
            "Cluster lock requests, grants and invalidations, by mode",
            &["event", "mode"],
        );
        let quorum_term =
            IntGauge::new("scoutgw_quorum_term", "The quorum term this node last saw")
                .expect("valid metric");
        r.register(Box::new(quorum_term.clone()))
            .expect("unique metric");
        let quorum_role = IntGaugeVec::new(
            Opts::new(
                "scoutgw_quorum_role",
                "1 for this node's current quorum role",
            ),
            &["role"],
        )
        .expect("valid metric");
        r.register(Box::new(quorum_role.clone()))
            .expect("unique metric");
        let quorum_heartbeat_age_seconds = prometheus::Gauge::new(
            "scoutgw_quorum_heartbeat_age_seconds",
            "Seconds since the last heartbeat from the leader (0 on the leader)",
        )
        .expect("valid metric");
        r.register(Box::new(quorum_heartbeat_age_seconds.clone()))
            .expect("unique metric");
        Self {
            registry: r,
            nfs_requests,
            nfs_request_seconds,
            nfs_read_bytes,
            nfs_write_bytes,
            nfs_drc_replays,
            nfs_bad_records,
            http_requests,
            http_request_seconds,
            commits,
            commit_seconds,
            block_cache_hits,
            block_cache_misses,
            block_cache_bytes,
            item_cache_events,
            item_cache_items,
            item_cache_bytes,
            device_bytes,
            device_io_seconds,
            merge_backlog,
            trees_merged,
            lock_requests,
            quorum_term,
            quorum_role,
            quorum_heartbeat_age_seconds,
        }
    }

    /// Block cache totals of one cache user ("client" or "server").
    pub fn set_block_cache(&self, user: &str, hits: u64, misses: u64, bytes: u64) {
        catch_up(&self.block_cache_hits.with_label_values(&[user]), hits);
        catch_up(&self.block_cache_misses.with_label_values(&[user]), misses);
        self.block_cache_bytes
            .with_label_values(&[user])
            .set(bytes as i64);
    }

    /// Item cache totals (event, count) and what it holds now.
    pub fn set_item_cache(&self, events: &[(&str, u64)], items: u64, bytes: u64) {
        for (event, total) in events {
            catch_up(&self.item_cache_events.with_label_values(&[event]), *total);
        }
        self.item_cache_items.set(items as i64);
        self.item_cache_bytes.set(bytes as i64);
    }

    /// Count `bytes` moved by `op` ("read" or "write") on `device` ("meta" or "data").
    pub fn add_device_bytes(&self, device: &str, op: &str, bytes: u64) {
        self.device_bytes
            .with_label_values(&[device, op])
            .inc_by(bytes);
    }

    pub fn set_merge(&self, backlog: u64, merged_total: u64) {
        self.merge_backlog.set(backlog as i64);
        catch_up(&self.trees_merged, merged_total);
    }

    /// Lock totals of one mode: requests, grants and invalidations.
    pub fn set_locks(&self, mode: &str, requests: u64, grants: u64, invalidations: u64) {
        for (event, total) in [
            ("request", requests),
            ("grant", grants),
            ("invalidation", invalidations),
        ] {
            catch_up(&self.lock_requests.with_label_values(&[event, mode]), total);
        }
    }

    /// This node's quorum role: exactly one of the roles is 1.
    pub fn set_role(&self, role: &str) {
        for r in ["leader", "follower", "candidate", "client"] {
            self.quorum_role
                .with_label_values(&[r])
                .set((r == role) as i64);
        }
    }

    /// The text exposition format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into a Vec never fails");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The content type of [`NodeMetrics::encode`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_follows_the_naming_conventions() {
        let m = NodeMetrics::new();
        m.nfs_requests
            .with_label_values(&["WRITE", "NFS3_OK"])
            .inc();
        m.nfs_request_seconds
            .with_label_values(&["WRITE"])
            .observe(0.001);
        m.set_block_cache("client", 10, 2, 4096);
        m.set_role("leader");
        let text = m.encode();
        assert!(
            text.contains("scoutgw_nfs_requests_total{procedure=\"WRITE\",status=\"NFS3_OK\"} 1")
        );
        assert!(text.contains("scoutgw_block_cache_hits_total{user=\"client\"} 10"));
        assert!(text.contains("scoutgw_quorum_role{role=\"leader\"} 1"));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("scoutgw_"), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            if kind == "histogram" {
                assert!(name.ends_with("_seconds"), "{line}");
            }
        }
    }

    #[test]
    fn totals_copied_in_only_move_forward() {
        let m = NodeMetrics::new();
        m.set_block_cache("server", 5, 1, 0);
        m.set_block_cache("server", 3, 1, 0);
        assert_eq!(m.block_cache_hits.with_label_values(&["server"]).get(), 5);
        m.set_block_cache("server", 9, 1, 0);
        assert_eq!(m.block_cache_hits.with_label_values(&["server"]).get(), 9);
    }
}
