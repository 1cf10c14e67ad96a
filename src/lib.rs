//! Cascade: a realtime gateway that serves WebSocket, Server-Sent Events, long polling and
//! short polling from one message bus.
//!
//! # The map
//!
//! ```text
//!   clients ──> server (accept, drain) ──> routes (method, path)
//!                                            │
//!          transport::{websocket, sse, long_poll, short_poll, negotiate, publish}
//!                                            │   only Bus and Subscription
//!                                            ▼
//!                        bus: Bus ── Subscription (history/live seam)
//!                                   │            ▲
//!                              dyn Engine ──> Hub (local fan-out, bounded queues)
//!                                   │
//!                              bus::memory (embedded)
//! ```
//!
//! - [`protocol`] is the wire contract: channels, epochs, positions, cursors, messages,
//!   gaps. Every transport encodes the same bytes from it.
//! - [`bus`] is the one boundary: transports never see an engine, engines never see HTTP.
//! - [`server::run`] takes a bound listener and an [`app::App`]; cancel
//!   `App::shutdown` to drain.
//! - Errors are one enum, [`error::Error`], turned into responses only in [`http`].

pub mod app;
pub mod bus;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod routes;
pub mod server;
pub mod transport;
