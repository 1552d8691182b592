//! The HTTP API's routes as plain functions: a parsed request in, a status and JSON body
//! out. Every answer comes from the same `Fs` handle the NFS export uses. Runs on a
//! blocking thread (the `Fs` calls block); the hyper shell is in [`super::server`].

use std::collections::HashMap;
use std::sync::Arc;

use scoutgw_cluster::fs::{FileType, Fs, FsError, SeqIndex};
use serde_json::{json, Value};

/// Entries per page when the request gives no `limit`.
pub const DEFAULT_PAGE: usize = 1000;

/// What the node tells about the cluster (`GET /v1/cluster`).
pub type ClusterView = Arc<dyn Fn() -> Result<Value, String> + Send + Sync>;

/// An answer: status code and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// The body already serialized (large pages skip building a `Value` per entry); when
    /// set, `body` is `Null`.
    pub raw: Option<Vec<u8>>,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Reply {
            status: 200,
            body,
            raw: None,
        }
    }

    fn ok_serialized(body: &impl serde::Serialize) -> Self {
        Reply {
            status: 200,
            body: Value::Null,
            raw: Some(serde_json::to_vec(body).expect("plain data serializes")),
        }
    }

    /// The JSON body, parsed back if it was serialized directly (for tests and callers).
    pub fn json(&self) -> Value {
        match &self.raw {
            Some(bytes) => serde_json::from_slice(bytes).expect("we wrote JSON"),
            None => self.body.clone(),
        }
    }
}

/// One entry of an index page.
#[derive(serde::Serialize)]
struct SeqEntry {
    seq: u64,
    ino: u64,
}

/// A page of an index walk.
#[derive(serde::Serialize)]
struct SeqPage<'a> {
    index: &'a str,
    first: u64,
    last: u64,
    horizon: u64,
    limit: usize,
    entries: Vec<SeqEntry>,
    next: Option<String>,
}

/// A refused or failed request, with the JSON error body it becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub parameter: Option<&'static str>,
}

impl ApiError {
    pub fn bad_param(parameter: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            code: "bad_parameter",
            message: message.into(),
            parameter: Some(parameter),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: 404,
            code: "not_found",
            message: message.into(),
            parameter: None,
        }
    }

    pub fn into_reply(self) -> Reply {
        let mut err = json!({
            "status": self.status,
            "code": self.code,
            "message": self.message,
        });
        if let Some(p) = self.parameter {
            err["parameter"] = json!(p);
        }
        Reply {
            status: self.status,
            body: json!({ "error": err }),
            raw: None,
        }
    }
}

/// A filesystem error at the HTTP edge.
fn fs_error(e: FsError) -> ApiError {
    let (status, code) = match &e {
        FsError::NotFound | FsError::Stale => (404, "not_found"),
        FsError::Invalid(_) | FsError::NameTooLong => (400, "bad_request"),
        FsError::Io(_) | FsError::Corrupt(_) => (503, "filesystem_unavailable"),
        FsError::NoSpace => (507, "no_space"),
        _ => (500, "filesystem_error"),
    };
    ApiError {
        status,
        code,
        message: e.to_string(),
        parameter: None,
    }
}

/// Decode `%XX` escapes and `+` of a query component.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Parsed query parameters; a repeated or undecodable parameter is an error.
pub fn parse_query(q: Option<&str>) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for part in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let (Some(k), Some(v)) = (percent_decode(k), percent_decode(v)) else {
            return Err(ApiError {
                status: 400,
                code: "bad_query",
                message: format!("undecodable query parameter {part:?}"),
                parameter: None,
            });
        };
        if out.insert(k.clone(), v).is_some() {
            return Err(ApiError {
                status: 400,
                code: "bad_query",
                message: format!("parameter {k:?} given twice"),
                parameter: None,
            });
        }
    }
    Ok(out)
}

fn u64_param(q: &HashMap<String, String>, name: &'static str) -> Result<Option<u64>, ApiError> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_param(
                name,
                format!("{name} must be an unsigned integer, not {v:?}"),
            )
        }),
    }
}

fn limit_param(q: &HashMap<String, String>, max_page: usize) -> Result<usize, ApiError> {
    match u64_param(q, "limit")? {
        None => Ok(DEFAULT_PAGE.min(max_page)),
        Some(0) => Err(ApiError::bad_param("limit", "limit must be at least 1")),
        Some(n) => Ok((n as usize).min(max_page)),
    }
}

fn only_params(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    for k in q.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError {
                status: 400,
                code: "unknown_parameter",
                message: format!(
                    "unknown parameter {k:?}; this route takes {}",
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ),
                parameter: None,
            });
        }
    }
    Ok(())
}

/// An index cursor: `SEQ-INO` of the last entry returned.
fn parse_cursor(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn type_name(t: Option<FileType>) -> &'static str {
    match t {
        Some(FileType::Regular) => "file",
        Some(FileType::Directory) => "directory",
        Some(FileType::Symlink) => "symlink",
        Some(FileType::CharDevice) => "char_device",
        Some(FileType::BlockDevice) => "block_device",
        Some(FileType::Fifo) => "fifo",
        Some(FileType::Socket) => "socket",
        None => "unknown",
    }
}

/// The routes of the API over one mount.
pub struct Api {
    pub fs: Arc<Fs>,
    pub cluster: ClusterView,
    pub max_page: usize,
}

impl Api {
    /// Answer `GET path?query` (routes under `/v1/` other than the OpenAPI document).
    pub fn get(&self, path: &str, query: Option<&str>) -> Reply {
        let q = match parse_query(query) {
            Ok(q) => q,
            Err(e) => return e.into_reply(),
        };
        let res = match path.trim_end_matches('/') {
            "/v1/index/meta_seq" => self.index(SeqIndex::MetaSeq, "meta_seq", &q),
            "/v1/index/data_seq" => self.index(SeqIndex::DataSeq, "data_seq", &q),
            "/v1/search/xattrs" => self.search_xattrs(&q),
            "/v1/data_waiting" => only_params(&q, &[]).and_then(|_| self.data_waiting()),
            "/v1/cluster" => only_params(&q, &[]).and_then(|_| {
                (self.cluster)().map(Reply::ok).map_err(|m| ApiError {
                    status: 503,
                    code: "cluster_unavailable",
                    message: m,
                    parameter: None,
                })
            }),
            p if p.starts_with("/v1/inodes/") => only_params(&q, &[]).and_then(|_| {
                let raw = &p["/v1/inodes/".len()..];
                let ino = percent_decode(raw).unwrap_or_else(|| raw.to_string());
                self.inode(&ino)
            }),
            p if p.starts_with("/v1/index/") => Err(ApiError::not_found(format!(
                "no index {:?}; the indexes are meta_seq and data_seq",
                &p["/v1/index/".len()..]
            ))),
            p => Err(ApiError::not_found(format!("no route {p}"))),
        };
        res.unwrap_or_else(ApiError::into_reply)
    }

    fn index(
        &self,
        index: SeqIndex,
        name: &str,
        q: &HashMap<String, String>,
    ) -> Result<Reply, ApiError> {
        only_params(q, &["first", "last", "limit", "after"])?;
        let first = u64_param(q, "first")?.unwrap_or(0);
        let last = match q.get("last").map(String::as_str) {
            None | Some("-1") => u64::MAX,
            Some(_) => u64_param(q, "last")?.expect("present"),
        };
        if first > last {
            return Err(ApiError::bad_param("first", "first is above last"));
        }
        let limit = limit_param(q, self.max_page)?;
        let after = match q.get("after") {
            None => None,
            Some(c) => Some(parse_cursor(c).ok_or_else(|| {
                ApiError::bad_param(
                    "after",
                    format!("after must be a SEQ-INO cursor, not {c:?}"),
                )
            })?),
        };
        let page = self
            .fs
            .walk_inodes(index, first, last, after, limit)
            .map_err(fs_error)?;
        Ok(Reply::ok_serialized(&SeqPage {
            index: name,
            first,
            last: last.min(page.horizon),
            horizon: page.horizon,
            limit,
            entries: page
                .entries
                .iter()
                .map(|&(seq, ino)| SeqEntry { seq, ino })
                .collect(),
            next: page.next.map(|(s, i)| format!("{s}-{i}")),
        }))
    }

    fn inode(&self, ino: &str) -> Result<Reply, ApiError> {
        let ino: u64 =
            ino.parse().ok().filter(|i| *i != 0).ok_or_else(|| {
                ApiError::bad_param("ino", format!("{ino:?} is not an inode number"))
            })?;
        let a = self.fs.getattr(ino).map_err(|e| match e {
            FsError::NotFound => ApiError::not_found(format!("no inode {ino}")),
            e => fs_error(e),
        })?;
        let paths: Vec<String> = self
            .fs
            .ino_paths(ino, 64)
            .map_err(fs_error)?
            .into_iter()
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .collect();
        let mut body = serde_json::to_value(a).expect("Attr serializes");
        body["type"] = json!(type_name(a.file_type()));
        body["permissions"] = json!(format!("{:04o}", a.mode & 0o7777));
        body["paths"] = json!(paths);
        Ok(Reply::ok(body))
    }

    fn search_xattrs(&self, q: &HashMap<String, String>) -> Result<Reply, ApiError> {
        only_params(q, &["name", "after", "limit"])?;
        let name = q
            .get("name")
            .ok_or_else(|| ApiError::bad_param("name", "name is required"))?;
        if !name.starts_with("scoutfs.srch.") {
            return Err(ApiError::bad_param(
                "name",
                "only xattrs named scoutfs.srch.* are indexed",
            ));
        }
        let after = u64_param(q, "after")?.unwrap_or(0);
        let limit = limit_param(q, self.max_page)?;
        let mut inos = self.fs.search_xattrs(name.as_bytes()).map_err(fs_error)?;
        inos.sort_unstable();
        inos.dedup();
        let page: Vec<u64> = inos
            .iter()
            .copied()
            .filter(|i| *i > after)
            .take(limit + 1)
            .collect();
        let more = page.len() > limit;
        let page = &page[..page.len().min(limit)];
        Ok(Reply::ok(json!({
            "name": name,
            "inodes": page,
            "next": if more { page.last().copied() } else { None },
        })))
    }

    fn data_waiting(&self) -> Result<Reply, ApiError> {
        let waiters: Vec<Value> = self
            .fs
            .data_waiting()
            .iter()
            .map(|w| {
                json!({
                    "id": w.id,
                    "ino": w.ino,
                    "block": w.block,
                    "op": w.op,
                    "waited_seconds": w.waited_secs,
                })
            })
            .collect();
        Ok(Reply::ok(json!({ "waiters": waiters })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_and_refuse_repeats() {
        let q = parse_query(Some("name=scoutfs.srch.a%20b&limit=5")).unwrap();
        assert_eq!(q["name"], "scoutfs.srch.a b");
        assert_eq!(q["limit"], "5");
        assert!(parse_query(Some("a=1&a=2")).is_err());
        assert!(parse_query(Some("a=%zz")).is_err());
        assert!(parse_query(Some("a=%e2%82")).is_err());
        assert!(parse_query(None).unwrap().is_empty());
    }

    #[test]
    fn cursors_are_seq_dash_ino() {
        assert_eq!(parse_cursor("12-34"), Some((12, 34)));
        assert_eq!(parse_cursor("12"), None);
        assert_eq!(parse_cursor("-3"), None);
    }

    #[test]
    fn errors_name_the_parameter() {
        let r = ApiError::bad_param("first", "no").into_reply();
        assert_eq!(r.status, 400);
        assert_eq!(r.body["error"]["parameter"], "first");
        assert_eq!(r.body["error"]["code"], "bad_parameter");
    }
}
