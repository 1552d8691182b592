//! `scoutgw mkfs`.

use scoutgw_cluster::mkfs::{mkfs, MkfsOptions, MkfsSummary};

use super::open_device;
use crate::cli::MkfsArgs;
use crate::size::human;
use crate::CliError;

pub fn run(a: &MkfsArgs) -> Result<(), CliError> {
    let meta = open_device(&a.meta_dev, false)?;
    let data = open_device(&a.data_dev, false)?;
    let opts = MkfsOptions {
        slots: a.slots.clone(),
        force: a.force,
        allow_small_size: a.allow_small_size,
        max_meta_bytes: a.max_meta_size,
        max_data_bytes: a.max_data_size,
        format_version: a.format_version,
    };
    let summary = mkfs(meta, data, &opts)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summary serializes")
        );
    } else {
        print_summary(&summary, &a.meta_dev, &a.data_dev);
    }
    Ok(())
}

pub(crate) fn print_summary(s: &MkfsSummary, meta: &std::path::Path, data: &std::path::Path) {
    println!("Created scoutgw filesystem");
    println!("  fsid            {}", s.fsid);
    println!("  uuid            {}", s.uuid);
    println!("  format version  {}", s.format_version);
    println!(
        "  metadata device {} : {} blocks of 64 KiB ({}), {} free",
        meta.display(),
        s.total_meta_blocks,
        human(s.total_meta_blocks << 16),
        s.free_meta_blocks
    );
    println!(
        "  data device     {} : {} blocks of 4 KiB ({}), {} free",
        data.display(),
        s.total_data_blocks,
        human(s.total_data_blocks << 12),
        s.free_data_blocks
    );
    for slot in &s.quorum_slots {
        println!("  quorum slot     {slot}");
    }
}
