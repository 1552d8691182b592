//! The HTTP API of a node (JSON, versioned under `/v1/`), its health routes and the
//! Prometheus `/metrics` endpoint: [`api`] holds the routes as plain functions over `Fs`,
//! [`server`] the hyper shell. The OpenAPI document is `openapi.json` next to them, served
//! at `/v1/openapi.json`.

pub mod api;
pub mod server;
