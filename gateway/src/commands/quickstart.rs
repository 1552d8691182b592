//! `scoutgw quickstart`: a one-node filesystem on device files under a local folder.

use std::fs::OpenOptions;
use std::path::Path;

use scoutgw_cluster::format::super_block::existing_fsid;
use scoutgw_cluster::inspect::inspect;
use scoutgw_cluster::mkfs::{mkfs, MkfsOptions, QuorumSlot};

use super::open_device;
use crate::cli::QuickstartArgs;
use crate::CliError;

/// Create `path` as a sparse file of `bytes` if it does not exist yet.
fn ensure_device_file(path: &Path, bytes: u64) -> Result<bool, CliError> {
    let io = |source| CliError::Io {
        path: path.to_path_buf(),
        source,
    };
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(f) => {
            f.set_len(bytes).map_err(io)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io(e)),
    }
}

pub fn run(a: &QuickstartArgs) -> Result<(), CliError> {
    std::fs::create_dir_all(&a.dir).map_err(|source| CliError::Io {
        path: a.dir.clone(),
        source,
    })?;
    let meta_path = a.dir.join("meta.dev");
    let data_path = a.dir.join("data.dev");
    for (path, bytes) in [(&meta_path, a.meta_size), (&data_path, a.data_size)] {
        if ensure_device_file(path, bytes)? {
            println!("created {} ({} bytes, sparse)", path.display(), bytes);
        }
    }
    let meta = open_device(&meta_path, false)?;
    let data = open_device(&data_path, false)?;
    if let Some(fsid) = existing_fsid(&*meta) {
        if existing_fsid(&*data) != Some(fsid) {
            return Err(CliError::Usage(format!(
                "{} holds filesystem {fsid:016x} but {} does not belong to it; move the \
                 folder aside or use another --dir",
                meta_path.display(),
                data_path.display()
            )));
        }
        println!(
            "{} already holds filesystem {fsid:016x}; using it",
            meta_path.display()
        );
    } else {
        let opts = MkfsOptions {
            slots: vec![QuorumSlot {
                nr: 0,
                addr: a.quorum_addr,
            }],
            allow_small_size: true,
            ..MkfsOptions::default()
        };
        let summary = mkfs(meta.clone(), data, &opts)?;
        super::mkfs::print_summary(&summary, &meta_path, &data_path);
    }
    let report = inspect(meta)?;
    print!("{}", super::print::render(&report));
    if !report.errors.is_empty() {
        return Err(CliError::Damaged(report.errors.len()));
    }
    println!();
    println!(
        "Next: `scoutgw print {}` shows the filesystem again. Serving it over NFS and HTTP \
         (`scoutgw serve`) arrives with the gateway issue.",
        meta_path.display()
    );
    Ok(())
}
