//! Where the client's address comes from: the connection, or a forwarded header set by a proxy you trust.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::{HeaderName, Request};
use ipnet::IpNet;

/// The source of the client address a key's IP rules are checked against.
///
/// Without an address (no `ConnectInfo`, an untrusted or unreadable header), a key with IP rules is refused and a
/// key without them is unaffected: the rules fail closed.
#[derive(Debug, Clone, Default)]
pub enum ClientIp {
    /// The connection's peer. Serve with
    /// `router.into_make_service_with_connect_info::<SocketAddr>()` so the address is known.
    #[default]
    Connection,
    /// The rightmost address of `header` (an `X-Forwarded-For` list) that is not one of `proxies`, read only when
    /// the connection's peer is one of `proxies`; otherwise the peer itself. A client can prepend addresses to the
    /// header, never append, so the rightmost untrusted entry is the one the last trusted proxy saw.
    Forwarded {
        /// The header, for example `x-forwarded-for`.
        header: HeaderName,
        /// The proxies whose header is believed.
        proxies: Vec<IpNet>,
    },
}

impl ClientIp {
    /// The client address of `request`, if it can be known.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use axum::extract::ConnectInfo;
    /// use axum::http::{HeaderName, Request};
    /// use keymeter_axum::ClientIp;
    ///
    /// let source = ClientIp::Forwarded {
    ///     header: HeaderName::from_static("x-forwarded-for"),
    ///     proxies: vec!["10.0.0.0/8".parse().unwrap()],
    /// };
    /// let mut request = Request::builder()
    ///     .header("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2")
    ///     .body(())
    ///     .unwrap();
    /// request.extensions_mut().insert(ConnectInfo("10.0.0.1:5000".parse::<SocketAddr>().unwrap()));
    /// assert_eq!(source.of(&request), Some("203.0.113.7".parse().unwrap()));
    ///
    /// // An unreadable header is no address at all (IP rules then refuse), not the proxy's.
    /// let mut request = Request::builder()
    ///     .header("x-forwarded-for", axum::http::HeaderValue::from_bytes(b"203.0.113.7\xff").unwrap())
    ///     .body(())
    ///     .unwrap();
    /// request.extensions_mut().insert(ConnectInfo("10.0.0.1:5000".parse::<SocketAddr>().unwrap()));
    /// assert_eq!(source.of(&request), None);
    /// ```
    pub fn of<B>(&self, request: &Request<B>) -> Option<IpAddr> {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        match self {
            ClientIp::Connection => peer,
            ClientIp::Forwarded { header, proxies } => {
                let peer = peer?;
                let trusted = |ip: &IpAddr| proxies.iter().any(|net| net.contains(ip));
                if !trusted(&peer) {
                    return Some(peer);
                }
                let mut last = peer;
                // Every value of the header, in order, as one list; walked from the right. A value that is not
                // readable text (a non-ASCII byte) makes the address unknown, never skipped: skipping it would
                // fall back to the proxy's own address and let IP rules pass.
                let values: Vec<&str> = request
                    .headers()
                    .get_all(header)
                    .iter()
                    .map(|v| v.to_str().ok())
                    .collect::<Option<_>>()?;
                let entries: Vec<&str> = values.iter().flat_map(|v| v.split(',')).collect();
                for entry in entries.iter().rev() {
                    let ip: IpAddr = entry.trim().parse().ok()?;
                    last = ip;
                    if !trusted(&ip) {
                        return Some(ip);
                    }
                }
                Some(last)
            }
        }
    }
}
