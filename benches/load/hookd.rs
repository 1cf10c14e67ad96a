//! A stand-in application backend for the gateway's hooks (`--hooks`), so that a run can
//! measure what hooks cost the gateway: every connect is accepted as a user of its own
//! (`u1`, `u2`, …, the worst case for the gateway's per-user records), every subscribe and
//! RPC is allowed, and every other event is acknowledged.
//!
//! It runs as a child process of the load tool (`load --serve-hooks`, on the generator's
//! core), like the floor server, so its CPU and memory are not the gateway's. It checks no
//! signature: the gateway's cost of signing is the same either way.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serves the hook events on `addr` until killed.
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("binding {addr}: {e}"))?;
        let users = Arc::new(AtomicU64::new(0));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let users = users.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| answer(request, users.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// The answer to one hook call (or to the load tool's `GET /healthz`).
async fn answer(
    request: Request<Incoming>,
    users: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let event = request.uri().path().trim_start_matches('/').to_owned();
    // Read the whole body, as a backend must, so the gateway's request completes.
    let _ = request.into_body().collect().await;
    let body = match event.as_str() {
        "connect" => {
            let n = users.fetch_add(1, Ordering::Relaxed) + 1;
            format!(r#"{{"result":{{"user":"u{n}"}}}}"#)
        }
        "rpc" => r#"{"result":null}"#.to_owned(),
        _ => r#"{"result":{}}"#.to_owned(),
    };
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response"))
}
