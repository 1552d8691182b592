//! `walk-inodes`, `stat`, `search-xattrs` and `cluster`: the scoutfs utilities' index,
//! inode and cluster queries, asked of a node's HTTP API (as those utilities ask a mount).

use std::os::unix::fs::MetadataExt;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::cli::{ApiArgs, ClusterArgs, SearchXattrsArgs, StatArgs, WalkInodesArgs};
use crate::CliError;

/// `http://HOST:PORT` → `HOST:PORT`.
fn authority(base: &str) -> Result<&str, CliError> {
    let rest = base.strip_prefix("http://").ok_or_else(|| {
        CliError::Usage(format!(
            "--api {base:?}: only http://HOST:PORT URLs are supported"
        ))
    })?;
    Ok(rest.trim_end_matches('/'))
}

/// GET `path_and_query` from the node; the JSON body of a 200, or the API's error.
fn get(api: &ApiArgs, path_and_query: &str) -> Result<Value, CliError> {
    let body = get_raw(api, path_and_query)?;
    serde_json::from_slice(&body).map_err(|e| {
        CliError::Node(format!(
            "the node answered with a body that is not JSON: {e}"
        ))
    })
}

/// GET `path_and_query`; the body bytes of a 200, or the API's error.
fn get_raw(api: &ApiArgs, path_and_query: &str) -> Result<Vec<u8>, CliError> {
    let host = authority(&api.api)?.to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Node(format!("runtime: {e}")))?;
    rt.block_on(async {
        let unreachable = |e: &dyn std::fmt::Display| {
            CliError::Node(format!("cannot reach the node's API at {}: {e}", api.api))
        };
        let stream = tokio::net::TcpStream::connect(&host)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(conn);
        let mut req = Request::get(path_and_query).header(HOST, &host);
        if let Some(t) = &api.token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| CliError::Usage(format!("bad request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        if status == 200 {
            return Ok(body.to_vec());
        }
        let json: Value = serde_json::from_slice(&body).map_err(|e| {
            CliError::Node(format!(
                "the node answered {status} with a body that is not JSON: {e}"
            ))
        })?;
        let msg = json["error"]["message"]
            .as_str()
            .unwrap_or("no message")
            .to_string();
        Err(match status {
            400 => CliError::Usage(msg),
            401 => CliError::Usage(format!("{msg} (give --token or SCOUTGW_TOKEN)")),
            _ => CliError::Node(format!("{msg} (HTTP {status})")),
        })
    })
}

/// The fields of an index page the CLI uses.
#[derive(serde::Deserialize)]
struct IndexPage {
    horizon: u64,
    entries: Vec<IndexEntry>,
    next: Option<String>,
}

#[derive(serde::Deserialize)]
struct IndexEntry {
    seq: u64,
    ino: u64,
}

/// A command's report on standard output. A reader that goes away (`scoutgw … | head`)
/// ends the report quietly; other write errors are errors.
struct Out {
    w: std::io::StdoutLock<'static>,
    closed: bool,
}

impl Out {
    fn new() -> Self {
        Self {
            w: std::io::stdout().lock(),
            closed: false,
        }
    }

    fn line(&mut self, args: std::fmt::Arguments) -> Result<(), CliError> {
        use std::io::Write as _;
        if self.closed {
            return Ok(());
        }
        match writeln!(self.w, "{args}") {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(CliError::Node(format!("writing the output: {e}"))),
        }
    }
}

/// `outln!(out, "fmt", args…)??`: one line of a report.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {
        $out.line(format_args!($($arg)*))
    };
}

fn print_json(v: &Value) -> Result<(), CliError> {
    outln!(
        Out::new(),
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialize")
    )
}

pub fn walk_inodes(a: &WalkInodesArgs) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut after: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let mut q = format!(
            "/v1/index/{}?first={}&last={}&limit=10000",
            a.index, a.first, a.last
        );
        if let Some(c) = &after {
            q.push_str(&format!("&after={c}"));
        }
        let body = get_raw(&a.api, &q)?;
        let page: IndexPage = serde_json::from_slice(&body).map_err(|e| {
            CliError::Node(format!(
                "the node answered with an unexpected index page: {e}"
            ))
        })?;
        for e in &page.entries {
            if a.json {
                all.push(serde_json::json!({ "seq": e.seq, "ino": e.ino }));
            } else {
                let _ = writeln!(out, "{} {}", e.seq, e.ino);
            }
        }
        match page.next {
            Some(c) if !page.entries.is_empty() => after = Some(c),
            _ => {
                let _ = out.flush();
                if a.json {
                    print_json(&serde_json::json!({
                        "index": a.index,
                        "horizon": page.horizon,
                        "entries": all,
                    }))?;
                }
                return Ok(());
            }
        }
    }
}

pub fn stat(a: &StatArgs) -> Result<(), CliError> {
    let mut out = Out::new();
    // A path (on a mount of the gateway: st_ino is the inode number) or an inode number.
    let ino = match std::fs::metadata(&a.target) {
        Ok(m) => m.ino(),
        Err(_) => a
            .target
            .to_str()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "{}: neither an existing path nor an inode number",
                    a.target.display()
                ))
            })?,
    };
    let v = get(&a.api, &format!("/v1/inodes/{ino}"))?;
    if a.json {
        print_json(&v)?;
        return Ok(());
    }
    for key in [
        "ino",
        "generation",
        "type",
        "permissions",
        "nlink",
        "uid",
        "gid",
        "size",
        "data_version",
        "online_blocks",
        "offline_blocks",
        "meta_seq",
        "data_seq",
    ] {
        match &v[key] {
            Value::String(s) => outln!(out, "{key}: {s}")?,
            other => outln!(out, "{key}: {other}")?,
        }
    }
    outln!(
        out,
        "crtime: {}.{:09}",
        v["crtime"]["sec"],
        v["crtime"]["nsec"].as_u64().unwrap_or(0)
    )?;
    for p in v["paths"].as_array().into_iter().flatten() {
        outln!(out, "path: {}", p.as_str().unwrap_or(""))?;
    }
    Ok(())
}

pub fn search_xattrs(a: &SearchXattrsArgs) -> Result<(), CliError> {
    let mut out = Out::new();
    let name: String = a
        .name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let mut after = 0u64;
    loop {
        let page = get(
            &a.api,
            &format!("/v1/search/xattrs?name={name}&after={after}&limit=10000"),
        )?;
        for ino in page["inodes"].as_array().into_iter().flatten() {
            outln!(out, "{ino}")?;
        }
        match page["next"].as_u64() {
            Some(n) => after = n,
            None => return Ok(()),
        }
    }
}

/// Text of a JSON scalar (strings without quotes).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn cluster(a: &ClusterArgs) -> Result<(), CliError> {
    let mut out = Out::new();
    let v = get(&a.api, "/v1/cluster")?;
    if a.json {
        print_json(&v)?;
        return Ok(());
    }
    outln!(out, "fsid: {}", text(&v["fsid"]))?;
    outln!(out, "term: {}", text(&v["term"]))?;
    match v["leader"].as_object() {
        Some(l) => outln!(
            out,
            "leader: slot {} at {} (term {}, rid {})",
            text(&l["slot"]),
            text(&l["addr"]),
            text(&l["term"]),
            text(&l["rid"])
        )?,
        None => outln!(out, "leader: none elected")?,
    }
    let me = &v["this_node"];
    outln!(
        out,
        "this node: rid {} role {} slot {} server term {} connected {}",
        text(&me["rid"]),
        text(&me["role"]),
        text(&me["quorum_slot"]),
        text(&me["server_term"]),
        text(&me["connected"])
    )?;
    outln!(out, "quorum slots:")?;
    for s in v["quorum_slots"].as_array().into_iter().flatten() {
        let events: Vec<String> = s["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["write_nr"].as_u64().unwrap_or(0) > 0)
            .map(|e| format!("{}={}", text(&e["event"]), text(&e["term"])))
            .collect();
        outln!(
            out,
            "  slot {} {} {}",
            text(&s["slot"]),
            text(&s["addr"]),
            events.join(" ")
        )?;
    }
    outln!(out, "mounted clients:")?;
    for c in v["mounted_clients"].as_array().into_iter().flatten() {
        outln!(out, "  rid {}", text(&c["rid"]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_are_accepted() {
        assert_eq!(
            authority("http://127.0.0.1:8049/").unwrap(),
            "127.0.0.1:8049"
        );
        assert!(authority("https://x").is_err());
    }
}
