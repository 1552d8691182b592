//! `scoutgw fsck`.

use scoutgw_cluster::fsck::fsck;

use super::open_device;
use crate::cli::FsckArgs;
use crate::CliError;

pub fn run(a: &FsckArgs) -> Result<(), CliError> {
    let failed = |e: CliError| CliError::FsckFailed(e.to_string());
    let meta = open_device(&a.meta_dev, true).map_err(failed)?;
    let data = open_device(&a.data_dev, true).map_err(failed)?;
    let report = fsck(meta, Some(data)).map_err(|e| CliError::FsckFailed(e.to_string()))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        println!("fsck of filesystem {}", report.fsid);
        println!(
            "  metadata blocks  {} total, {} used, {} free",
            report.meta_blocks_total, report.meta_blocks_used, report.meta_blocks_free
        );
        println!(
            "  data blocks      {} total, {} free",
            report.data_blocks_total, report.data_blocks_free
        );
        println!(
            "  items            {} in fs_root, {} in {} log trees",
            report.fs_items, report.log_items, report.log_trees
        );
        for w in &report.warnings {
            println!("  warning: {w}");
        }
        if report.is_clean() {
            println!("  clean");
        } else {
            println!("problems");
            for p in &report.problems {
                println!("  {p}");
            }
        }
    }
    if report.is_clean() {
        Ok(())
    } else {
        Err(CliError::FsckProblems(report.problems.len()))
    }
}
