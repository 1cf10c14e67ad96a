//! The sizes the idle-memory figures in BENCHMARKS.md rest on: every open connection keeps
//! one of these futures for as long as it waits, so each budget is a test, and a change
//! that grows one must say so here (and re-measure the idle rows).

use std::mem::size_of_val;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::hyper::Protocols;
use super::serve;
use crate::app::App;
use crate::config::Transport;
use crate::conn::ConnInfo;
use crate::http::LeanRequest;
use crate::http1::{Kept, Router, Streaming};
use crate::limits::TokenBucket;

/// A connected pair of sockets on loopback: the server's side and the client's.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (server, client)
}

fn app() -> Arc<App> {
    App::new(crate::config::Config::default()).unwrap()
}

fn info(app: &App, stream: &TcpStream) -> ConnInfo {
    let permit = app.connections.admit(stream.peer_addr().unwrap()).unwrap();
    ConnInfo::new(permit, TokenBucket::new(1, 1))
}

/// Every connection's task: a parked long poll's and a short poller's between polls.
#[tokio::test]
async fn a_connection_task_fits_its_budget() {
    let app = app();
    let (stream, _client) = pair().await;
    let info = info(&app, &stream);
    let protocols = Arc::new(Protocols::new(&app));
    let task = serve(stream, info, app, protocols);
    budget("connection task", size_of_val(&task), 528, 536);
}

/// The routing and the long poll under it, boxed once while a poll is parked.
#[tokio::test]
async fn a_parked_long_polls_routing_fits_its_budget() {
    let app = app();
    let target = format!("{}?channels=a", Transport::Longpoll.path());
    let req = Box::new(LeanRequest::new(&target, http::HeaderMap::new(), None));
    let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let routed = App::route(app, req, Kept::default(), timer.as_mut());
    // 392 before the hooks (issue 23): the client session grew the identity.
    budget("parked long poll routing", size_of_val(&routed), 400, 400);
}

/// An upgraded WebSocket's task on the lean path.
#[tokio::test]
async fn a_websocket_task_fits_its_budget() {
    let app = app();
    let (stream, _client) = pair().await;
    let req = LeanRequest::new(Transport::Websocket.path(), websocket_headers(), None);
    let (_, accepted) = crate::transport::websocket::handshake(app, &req)
        .await
        .unwrap();
    let task = accepted.run_on(stream, Vec::new());
    // 1544 before the hooks (issue 23): the client session in the identity, the RPCs in
    // flight, the disconnect hook's goodbye; 1616 with them, until the expiry timer, the
    // identity copy it borrowed and the close's timer left the task; 1216 until the
    // accepted handshake's box was freed at once, then 8 more for the subscription's
    // count of messages taken, which tells the node's backlog once per batch instead of
    // once per message (issue 26); 24 fewer once the subscription's pending events were
    // boxed and made only while it holds some.
    budget("websocket task", size_of_val(&task), 1192, 1192);
}

/// An SSE stream's task on the lean path, once it has its socket.
#[tokio::test]
async fn an_sse_stream_task_fits_its_budget() {
    let app = app();
    let (stream, _client) = pair().await;
    let info = info(&app, &stream);
    let streaming = Box::new(Streaming {
        head: Vec::new(),
        body: crate::http::full(""),
        extensions: Default::default(),
        buf: Default::default(),
    });
    let task = crate::transport::sse::stream::run(stream, info, app, streaming);
    budget("sse stream task", size_of_val(&task), 496, 504);
}

/// Fails when `size` is over its budget: `release` bytes in an optimised build (the
/// figures BENCHMARKS.md measures), `debug` in a test build, which lays futures out
/// larger.
fn budget(what: &str, size: usize, release: usize, debug: usize) {
    let budget = if cfg!(debug_assertions) {
        debug
    } else {
        release
    };
    eprintln!("{what}: {size} bytes (budget {budget})");
    assert!(
        size <= budget,
        "{what}: {size} bytes, over its budget of {budget}"
    );
}

fn websocket_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ] {
        headers.insert(name, value.parse().unwrap());
    }
    headers
}
