//! `scoutgw print`.

use scoutgw_cluster::inspect::{inspect, FsReport};

use super::open_device;
use crate::cli::PrintArgs;
use crate::size::human;
use crate::CliError;

pub fn run(a: &PrintArgs) -> Result<(), CliError> {
    let meta = open_device(&a.meta_dev, true)?;
    let report = inspect(meta)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        print!("{}", render(&report));
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(CliError::Damaged(report.errors.len()))
    }
}

/// The text form of a report.
pub fn render(r: &FsReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let s = &r.super_block;
    let _ = writeln!(o, "scoutgw filesystem on {}", r.device);
    let _ = writeln!(o, "super block");
    let _ = writeln!(o, "  fsid              {}", s.fsid);
    let _ = writeln!(o, "  uuid              {}", s.uuid);
    let _ = writeln!(o, "  format version    {}", s.format_version);
    let _ = writeln!(o, "  seq               {}", s.seq);
    let _ = writeln!(o, "  next_ino          {}", s.next_ino);
    let _ = writeln!(o, "  inode_count       {}", s.inode_count);
    let _ = writeln!(
        o,
        "  metadata          {} blocks of 64 KiB ({}), first {}",
        s.total_meta_blocks,
        human(s.total_meta_blocks << 16),
        s.first_meta_blkno
    );
    let _ = writeln!(
        o,
        "  data              {} blocks of 4 KiB ({}), first {}",
        s.total_data_blocks,
        human(s.total_data_blocks << 12),
        s.first_data_blkno
    );
    let _ = writeln!(
        o,
        "  free              meta_alloc {} + {} blocks, data_alloc {} blocks",
        s.meta_alloc_free_blocks[0], s.meta_alloc_free_blocks[1], s.data_alloc_free_blocks
    );
    let _ = writeln!(o, "quorum (config version {})", s.quorum_config_version);
    for q in &r.quorum_slots {
        let _ = write!(
            o,
            "  slot {:<2} {:<21} block {} write_nr {}",
            q.slot, q.addr, q.blkno, q.write_nr
        );
        if let Some(e) = &q.error {
            let _ = write!(o, "  ERROR: {e}");
        } else if q.events.is_empty() {
            let _ = write!(o, "  no events");
        }
        let _ = writeln!(o);
        for e in &q.events {
            let _ = writeln!(
                o,
                "           {:<6} write_nr {} rid {} term {} time {:.3}",
                e.event, e.write_nr, e.rid, e.term, e.unix_time
            );
        }
    }
    let _ = writeln!(o, "trees");
    let _ = writeln!(
        o,
        "  {:<16} {:>10} {:>8} {:>6} {:>8} {:>10}  free",
        "name", "root", "seq", "height", "blocks", "items"
    );
    for t in &r.trees {
        let free = match (t.free_extents, t.free_blocks) {
            (Some(e), Some(b)) => format!("{b} blocks in {e} extents"),
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "  {:<16} {:>10} {:>8} {:>6} {:>8} {:>10}  {free}",
            t.name, t.root_blkno, t.root_seq, t.height, t.blocks, t.items
        );
        if let Some(e) = &t.error {
            let _ = writeln!(o, "    ERROR: {e}");
        }
    }
    let _ = writeln!(o, "alloc lists");
    for l in &r.alloc_lists {
        let _ = writeln!(
            o,
            "  {:<22} first {:>8} blocks {:>4} entries {:>6} (head says {})",
            l.name, l.first_blkno, l.blocks, l.entries, l.total_nr
        );
        if let Some(e) = &l.error {
            let _ = writeln!(o, "    ERROR: {e}");
        }
    }
    if !r.warnings.is_empty() {
        let _ = writeln!(o, "warnings");
        for w in &r.warnings {
            let _ = writeln!(o, "  {w}");
        }
    }
    if !r.errors.is_empty() {
        let _ = writeln!(o, "problems");
        for e in &r.errors {
            let _ = writeln!(o, "  {e}");
        }
    }
    o
}
