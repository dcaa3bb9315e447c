//! # keymeter-axum
//!
//! [keymeter]'s inbound-key checks for [axum] 0.8: a tower layer that verifies the request's API key
//! (`Authorization: Bearer …`, `x-api-key` or `x-goog-api-key`) against a route's scope requirement and the client
//! address, charges rate limits and counts statistics (through the [`Verifier`](keymeter::keys::Verifier) it is given), and puts
//! the verified key in the request's extensions ([`VerifiedKey`]); every refusal is JSON
//! `{"error": {"code": "<VERDICT>", "message": "…"}}` with the verdict's status
//! ([`VerdictCode::http_status`](keymeter::keys::VerdictCode::http_status)): 401 with `WWW-Authenticate: Bearer`,
//! 403, 429 with `Retry-After` and `RateLimit-Policy` / `RateLimit`, 402.
//!
//! The adapter is thin: no keymeter type knows axum. Its example `guard` guards one route, `service` is a small
//! metered service (key guard, the caller's own OpenAI key first, reserve, forward, settle, spend by day); the
//! reference service built on it (an OpenAI- and Anthropic-compatible metering proxy with key administration) is
//! the crate `keymeter-gateway`:
//!
//! ```sh
//! cargo run -p keymeter-axum --example guard
//! OPENAI_API_KEY=sk-proj-… cargo run -p keymeter-axum --example service
//! cargo run -p keymeter-gateway
//! ```
//!
//! [keymeter]: https://docs.rs/keymeter
//! [axum]: https://docs.rs/axum
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client_ip;
mod error;
mod extract;
mod layer;

pub use client_ip::ClientIp;
pub use error::{ApiError, RATELIMIT, RATELIMIT_POLICY, rate_limit_headers};
pub use extract::VerifiedKey;
pub use layer::{KeyAuth, RequireKey, RequireKeyLayer};
