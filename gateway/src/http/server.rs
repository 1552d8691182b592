//! The hyper shell of the HTTP API: HTTP/1.1 connections, the bearer-token check, health
//! and readiness, `/metrics`, the OpenAPI document, and per-route metrics. Routes that read
//! the filesystem run on the blocking pool through [`super::api::Api`].

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http_body_util::Full;
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use scoutgw_metrics::NodeMetrics;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::api::{Api, ApiError, Reply};

/// The OpenAPI document of this API, served at `/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Everything the HTTP port answers from.
pub struct HttpService {
    pub api: Arc<Api>,
    /// Required as `Authorization: Bearer <token>` on everything but the health routes.
    pub token: Option<String>,
    pub metrics: Arc<NodeMetrics>,
    /// True while the node serves (after mount, before shutdown).
    pub ready: Arc<AtomicBool>,
    /// Copies values kept elsewhere (caches, merges, locks) into the metrics before a scrape.
    pub refresh_metrics: Box<dyn Fn() + Send + Sync>,
}

/// A bounded label for a request path (inode numbers and unknown paths folded).
fn route_label(path: &str) -> &'static str {
    match path.trim_end_matches('/') {
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/v1/openapi.json" => "/v1/openapi.json",
        "/v1/index/meta_seq" => "/v1/index/meta_seq",
        "/v1/index/data_seq" => "/v1/index/data_seq",
        "/v1/search/xattrs" => "/v1/search/xattrs",
        "/v1/data_waiting" => "/v1/data_waiting",
        "/v1/cluster" => "/v1/cluster",
        p if p.starts_with("/v1/inodes/") => "/v1/inodes/{ino}",
        _ => "other",
    }
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_vec(body).expect("JSON values serialize");
    text.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn reply_response(r: Reply) -> Response<Full<Bytes>> {
    match r.raw {
        Some(mut text) => {
            text.push(b'\n');
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            *resp.status_mut() =
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        None => json_response(r.status, &r.body),
    }
}

impl HttpService {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(given) = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // The scheme is case-insensitive (RFC 9110 §11.1).
                let (scheme, rest) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| rest.trim_start())
            })
        else {
            return false;
        };
        // Compare every byte so the time taken does not tell how much matched.
        given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    async fn respond(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let start = Instant::now();
        let path = req.uri().path().to_string();
        let route = route_label(&path);
        let mut resp = self.route(&req, &path).await;
        if req.method() == Method::HEAD {
            // HEAD answers like GET (RFC 9110 §9.3.2): same headers, no body.
            let len = resp.body().size_hint().exact().unwrap_or(0);
            *resp.body_mut() = Full::new(Bytes::new());
            resp.headers_mut()
                .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        let status = resp.status().as_u16().to_string();
        self.metrics
            .http_requests
            .with_label_values(&[route, &status])
            .inc();
        self.metrics
            .http_request_seconds
            .with_label_values(&[route])
            .observe(start.elapsed().as_secs_f64());
        resp
    }

    async fn route(self: &Arc<Self>, req: &Request<Incoming>, path: &str) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = reply_response(
                ApiError {
                    status: 405,
                    code: "method_not_allowed",
                    message: format!(
                        "{} is not allowed; this API is read-only (GET)",
                        req.method()
                    ),
                    parameter: None,
                }
                .into_reply(),
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            return r;
        }
        match path {
            "/healthz" => return json_response(200, &json!({ "status": "ok" })),
            "/readyz" => {
                // A mount whose commit failed answers every request with an I/O error.
                return if self.ready.load(Ordering::Relaxed) && !self.api.fs.is_failed() {
                    json_response(200, &json!({ "status": "ready" }))
                } else {
                    json_response(503, &json!({ "status": "not ready" }))
                };
            }
            _ => {}
        }
        if !self.authorized(req) {
            let mut r = reply_response(
                ApiError {
                    status: 401,
                    code: "unauthorized",
                    message: "this node requires Authorization: Bearer <token>".into(),
                    parameter: None,
                }
                .into_reply(),
            );
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        match path {
            "/metrics" => {
                (self.refresh_metrics)();
                let mut r = Response::new(Full::new(Bytes::from(self.metrics.encode())));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(scoutgw_metrics::CONTENT_TYPE),
                );
                r
            }
            "/v1/openapi.json" => {
                let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI_JSON.as_bytes())));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            _ => {
                let api = self.api.clone();
                let path = path.to_string();
                let query = req.uri().query().map(str::to_string);
                match tokio::task::spawn_blocking(move || api.get(&path, query.as_deref())).await {
                    Ok(reply) => reply_response(reply),
                    Err(_) => reply_response(
                        ApiError {
                            status: 500,
                            code: "internal_error",
                            message: "the request failed inside the node".into(),
                            parameter: None,
                        }
                        .into_reply(),
                    ),
                }
            }
        }
    }
}

/// Accept HTTP/1.1 connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    svc: Arc<HttpService>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let svc = svc.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let svc = svc.clone();
                            async move { Ok::<_, Infallible>(svc.respond(req).await) }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(e) => {
                    tracing::warn!("http: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_bounded() {
        assert_eq!(route_label("/v1/inodes/12345"), "/v1/inodes/{ino}");
        assert_eq!(route_label("/v1/inodes/1/"), "/v1/inodes/{ino}");
        assert_eq!(route_label("/random/path"), "other");
        assert_eq!(route_label("/metrics"), "/metrics");
    }

    #[test]
    fn the_openapi_document_is_json_and_lists_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for p in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/index/{index}",
            "/v1/inodes/{ino}",
            "/v1/search/xattrs",
            "/v1/data_waiting",
            "/v1/cluster",
            "/v1/openapi.json",
        ] {
            assert!(doc["paths"].get(p).is_some(), "missing {p}");
        }
    }
}
