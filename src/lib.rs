//! Cascade: a realtime gateway that serves WebSocket, Server-Sent Events, long polling and
//! short polling from one message bus.
//!
//! # The map
//!
//! ```text
//!   clients ──> server (accept, limits, TLS (tls), HTTP/1 or HTTP/2, hand-offs, drain)
//!                 │ HTTP/1: http1 (hand-written, generic over the socket) while requests
//!                 │ are lean routes, asking routes through its Router trait; else hyper
//!                 ▼
//!               routes (THE route table; one admission; one handler per route)
//!                 │
//!        transport::{websocket, sse, long_poll, short_poll, negotiate, publish, assets,
//!                   socketio (Engine.IO/Socket.IO; its polling sessions kept in the engine)}
//!                │ auth: who is asking, may they    │ only Bus and Subscription
//!                ▼ subscribe / publish here?        ▼
//!              auth                      bus: Bus ── Subscription (history/live seam)
//!                                               │            ▲
//!                                          dyn Engine ──> Hub (local fan-out, bounded queues)
//!                                               │
//!            bus::memory (embedded) | bus::redis (many nodes; Sentinel) | bus::redis_cluster
//!
//!   leaves: protocol, conn, query, forwarded, limits, metrics, config, error
//! ```
//!
//! - [`protocol`] is the wire contract: channels, epochs, positions, cursors, messages,
//!   gaps, WebSocket client frames. Every transport encodes the same bytes from it; a
//!   transport's own encoding of a message lives with the transport and is kept by the
//!   message, built once for all its subscribers.
//! - [`bus`] is the one boundary: transports never see an engine, engines never see HTTP.
//!   The hub and the seam are shared by both engines. The one call the other way is
//!   [`bus::Express`]: a transport lends the hub a writer, and while its connection idles
//!   the hub writes live messages to its socket itself, without waking it.
//! - [`auth`] decides who may connect, subscribe and publish; [`limits`] bounds what one
//!   client may cost, and [`conn::ConnInfo`] carries a connection's share of it.
//! - [`server::run`] takes a bound listener and an [`app::App`]; cancel
//!   `App::shutdown` to drain. HTTP/1 connections start on [`http1`], a hand-written path
//!   without hyper's per-connection buffers (idle connections are most of a gateway's);
//!   the routes that [`routes::table`] marks lean are served there, and a connection moves
//!   to hyper at its first other request. Both dispatch from the one table. `http1` knows
//!   HTTP/1 and the [`socket::Socket`] contract, not the transports: it asks through
//!   [`http1::Router`] and ends in a typed hand-off ([`http1::Next`]).
//! - [`tls`] terminates TLS when a certificate is configured: ALPN `h2` goes to hyper's
//!   HTTP/2, `http/1.1` to the lean path over [`tls::TlsSocket`], which keeps the socket
//!   contract; the certificate reloads without a restart.
//! - Errors are one enum, [`error::Error`], turned into responses only in [`http`].
//! - [`wake`]: a long-lived connection polls its occasional waits (shutdown, expiry,
//!   timers, the socket's read side) only after one fired, not on every delivery.

pub mod app;
pub mod auth;
pub mod bus;
pub mod config;
pub mod conn;
pub mod error;
pub mod forwarded;
pub mod hooks;
pub mod http;
pub mod http1;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod query;
pub mod routes;
pub mod server;
pub mod session;
pub mod socket;
pub mod sync;
pub mod tls;
pub mod transport;
pub mod wake;
