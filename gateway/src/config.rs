//! Node configuration: a TOML file plus `SCOUTGW_<SECTION>__<KEY>` environment overrides
//! (for example `SCOUTGW_NFS__BIND=127.0.0.2:2049`), read with the `config` crate. Every key
//! is documented in `packaging/scoutgw.toml`, the commented sample; a key missing from the
//! file takes the default listed there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::nfs::export::{ExportOptions, Network};
use crate::CliError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    #[serde(default)]
    pub nfs: NfsSection,
    #[serde(default)]
    pub export: ExportSection,
    #[serde(default)]
    pub fs: FsSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub cluster: ClusterSection,
}

/// Membership and failure handling (`[cluster]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// The quorum slot this node owns (`mkfs -Q NR,...`); `None`: it only mounts.
    pub quorum_slot: Option<usize>,
    /// Shell command that fences a node (env SCOUTGW_FENCE_RID, _ADDR, _REASON); empty: kill
    /// the node's process from its pid file in `fence_dir` (local clusters).
    pub fence_command: String,
    /// Where every node of a local cluster keeps `<rid>.pid` for pid-file fencing; empty:
    /// `fence/` beside the metadata device file.
    pub fence_dir: Option<PathBuf>,
    pub fence_timeout_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub recovery_timeout_ms: u64,
    pub reconnect_timeout_ms: u64,
    pub idle_timeout_ms: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            quorum_slot: None,
            fence_command: String::new(),
            fence_dir: None,
            fence_timeout_ms: 15_000,
            heartbeat_timeout_ms: 3_000,
            recovery_timeout_ms: 10_000,
            reconnect_timeout_ms: 5_000,
            idle_timeout_ms: 10_000,
        }
    }
}

impl ClusterSection {
    /// The pid-file fencing directory for a node whose metadata device is `meta_device`.
    pub fn fence_dir_for(&self, meta_device: &Path) -> PathBuf {
        match &self.fence_dir {
            Some(d) => d.clone(),
            None => {
                let parent = meta_device
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                if parent == Path::new("/dev") {
                    PathBuf::from("/run/scoutgw/fence")
                } else {
                    parent.join("fence")
                }
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Address and TCP port of the HTTP API and /metrics.
    pub bind: SocketAddr,
    /// When set, every route but /healthz and /readyz needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Largest page of an index walk or xattr search.
    pub max_page: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8049".parse().expect("valid address"),
            token: None,
            max_page: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The shared metadata device (file or block device).
    pub meta_device: PathBuf,
    /// The shared data device.
    pub data_device: PathBuf,
    /// This node's own state: its rid (kept across restarts) and its pid file.
    pub state_dir: PathBuf,
    /// Block cache of the metadata device, per user (client and server), in MiB.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: u64,
    /// The mount's cache of committed items (inodes, entries, xattrs, extents), in MiB.
    #[serde(default = "default_item_cache_mib")]
    pub item_cache_mib: u64,
    /// Log level: error, warn, info, debug or trace.
    #[serde(default = "default_log")]
    pub log: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NfsSection {
    /// Address and TCP port of NFSv3, MOUNT v3 and the portmapper's GETPORT.
    pub bind: SocketAddr,
    /// Completed non-idempotent replies kept for retransmissions.
    pub drc_entries: usize,
}

impl Default for NfsSection {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:2049".parse().expect("valid address"),
            drc_entries: 8192,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    pub path: String,
    pub clients: Vec<String>,
    pub read_only: bool,
    pub root_squash: bool,
    pub all_squash: bool,
    pub anon_uid: u32,
    pub anon_gid: u32,
    /// Commit metadata changes (CREATE, REMOVE, RENAME, SETATTR, ...) before replying, as
    /// NFSv3 asks of a server. `false` replies first and commits within
    /// `fs.commit_interval_ms` (a crash can lose the last changes the client saw succeed).
    pub sync: bool,
}

impl Default for ExportSection {
    fn default() -> Self {
        let d = ExportOptions::default();
        Self {
            path: d.path,
            clients: d.clients.iter().map(|n| n.to_string()).collect(),
            read_only: d.read_only,
            root_squash: d.root_squash,
            all_squash: d.all_squash,
            anon_uid: d.anon_uid,
            anon_gid: d.anon_gid,
            sync: d.sync,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FsSection {
    /// Commit the open transaction once this many items are dirty.
    pub max_dirty_items: usize,
    /// Commit whatever is open at least this often (UNSTABLE writes without COMMIT, async
    /// exports).
    pub commit_interval_ms: u64,
    /// How long a read of released (offline) data waits for staging in total.
    pub data_wait_timeout_secs: u64,
    /// Background merge of finalized log trees into fs_root, every this many ms.
    pub merge_interval_ms: u64,
}

impl Default for FsSection {
    fn default() -> Self {
        Self {
            max_dirty_items: 50_000,
            commit_interval_ms: 5_000,
            data_wait_timeout_secs: 30,
            merge_interval_ms: 100,
        }
    }
}

fn default_cache_mib() -> u64 {
    256
}

fn default_item_cache_mib() -> u64 {
    256
}

fn default_log() -> String {
    "info".into()
}

/// The configuration sections environment variables may override.
const SECTIONS: [&str; 6] = ["NODE", "NFS", "EXPORT", "FS", "HTTP", "CLUSTER"];

/// The `SCOUTGW_<SECTION>__<KEY>` variables of the environment. Others starting with
/// `SCOUTGW_` (`SCOUTGW_API`, `SCOUTGW_TOKEN` of the CLI, a script's own) are not
/// configuration and are left alone.
fn config_env() -> HashMap<String, String> {
    config_vars(std::env::vars())
}

fn config_vars(vars: impl Iterator<Item = (String, String)>) -> HashMap<String, String> {
    vars.filter(|(k, _)| {
        k.strip_prefix("SCOUTGW_")
            .and_then(|rest| rest.split_once("__"))
            .is_some_and(|(section, _)| SECTIONS.contains(&section))
    })
    .collect()
}

impl NodeConfig {
    /// Read `path` (TOML) with `SCOUTGW_<SECTION>__<KEY>` environment overrides.
    pub fn load(path: &Path) -> Result<Self, CliError> {
        let bad = |e: config::ConfigError| CliError::Usage(format!("{}: {e}", path.display()));
        let cfg = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("SCOUTGW")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("export.clients")
                    .source(Some(config_env())),
            )
            .build()
            .map_err(bad)?;
        let c: NodeConfig = cfg.try_deserialize().map_err(bad)?;
        c.export_options()?;
        Ok(c)
    }

    pub fn export_options(&self) -> Result<ExportOptions, CliError> {
        let e = &self.export;
        let clients = e
            .clients
            .iter()
            .map(|s| s.parse::<Network>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| CliError::Usage(format!("export.clients: {m}")))?;
        if !e.path.starts_with('/') {
            return Err(CliError::Usage(format!(
                "export.path {:?} must start with '/'",
                e.path
            )));
        }
        Ok(ExportOptions {
            path: e.path.clone(),
            clients,
            read_only: e.read_only,
            root_squash: e.root_squash,
            all_squash: e.all_squash,
            anon_uid: e.anon_uid,
            anon_gid: e.anon_gid,
            sync: e.sync,
        })
    }

    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.fs.commit_interval_ms.max(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_sample_parses_and_has_the_defaults() {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/scoutgw.toml");
        let c = NodeConfig::load(&sample).unwrap();
        assert_eq!(c.nfs.bind, NfsSection::default().bind);
        assert_eq!(c.export.clients, ExportSection::default().clients);
        assert!(c.export.sync);
        assert_eq!(c.fs.max_dirty_items, FsSection::default().max_dirty_items);
        assert_eq!(c.node.cache_mib, default_cache_mib());
        assert_eq!(c.node.item_cache_mib, default_item_cache_mib());
        assert_eq!(c.http.bind, HttpSection::default().bind);
        assert_eq!(c.http.token, None);
    }

    #[test]
    fn only_section_variables_are_configuration() {
        let vars = [
            ("SCOUTGW_NFS__BIND", "127.0.0.1:1"),
            ("SCOUTGW_TOKEN", "secret"),
            ("SCOUTGW_API", "http://x"),
            ("SCOUTGW_BIN", "/bin/x"),
            ("SCOUTGW_BOGUS__KEY", "1"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let got = config_vars(vars.into_iter());
        assert_eq!(got.len(), 1);
        assert_eq!(got["SCOUTGW_NFS__BIND"], "127.0.0.1:1");
    }

    #[test]
    fn unknown_keys_and_bad_networks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let base = "[node]\nmeta_device='m'\ndata_device='d'\nstate_dir='s'\n";
        std::fs::write(&p, format!("{base}[nfs]\nbindd='1.2.3.4:1'\n")).unwrap();
        assert!(NodeConfig::load(&p).is_err());
        std::fs::write(&p, format!("{base}[export]\nclients=['10.0.0.0/99']\n")).unwrap();
        let e = NodeConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("export.clients"), "{e}");
        std::fs::write(&p, base).unwrap();
        assert!(NodeConfig::load(&p).is_ok());
    }
}
