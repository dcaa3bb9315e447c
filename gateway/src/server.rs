//! The HTTP server: the gateway's router on hyper's HTTP/1 connections, with the limits a public service needs so
//! slow or idle clients cannot exhaust it, and a graceful shutdown.
//!
//! - **Header read / idle**: a request's head must arrive whole within [`Limits::header_read_timeout`], counted
//!   from the moment the connection is idle, so the same bound closes keep-alive connections that send nothing.
//! - **Body read**: [`Settings::body_read_timeout`](crate::Settings::body_read_timeout), per handler (408).
//! - **Connections**: at most [`Limits::max_connections`] at once; the next waits in the kernel's backlog until
//!   one closes, so file descriptors never run out.
//! - **Shutdown**: when `shutdown` resolves the listener closes, open connections finish their current request,
//!   and the exchanges in flight settle, within [`Limits::shutdown_grace`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;

use crate::Gateway;

/// The server's bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    /// How long a request's head may take to arrive, from when the connection is idle (so also how long an
    /// idle keep-alive connection stays open). Default 30 s.
    pub header_read_timeout: Duration,
    /// Connections served at once. Default 1,024.
    pub max_connections: usize,
    /// How long shutdown waits for open connections and exchanges in flight. Default 30 s.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Serves `gateway` on `listener` until `shutdown` resolves, then shuts down gracefully: stops accepting, lets
/// open connections finish (up to the grace), waits for the exchanges in flight to settle and closes the store.
///
/// # Errors
/// None once serving has started (an accept error is logged and retried); the type leaves room for setup errors.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    let mut warned_full = false;
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        if connections.available_permits() == 0 && !warned_full {
            tracing::warn!(
                max = limits.max_connections,
                "connection cap reached: new connections wait until one closes"
            );
            warned_full = true;
        } else if connections.available_permits() > 0 {
            warned_full = false;
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = gateway.router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().call(request)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections");
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace over with connections still open");
    }
    gateway.app.shutdown(limits.shutdown_grace).await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("interrupt received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
