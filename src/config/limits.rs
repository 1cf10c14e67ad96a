//! `[limits]`: what one client may cost the gateway, HTTP/2's per-connection limits
//! among them.

use serde::{Deserialize, Serialize};

/// Limits that bound what one client can cost the gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest `data` payload of one message, in bytes.
    pub max_message_bytes: usize,
    /// Largest HTTP request body, in bytes.
    pub max_body_bytes: usize,
    /// Most channels one subscription may follow.
    pub max_channels: usize,
    /// Messages queued for one subscriber before it is cut off as `slow_consumer`.
    pub subscriber_queue: usize,
    /// Deliveries queued on the node, not yet written, above which an HTTP publish's
    /// answer waits for the writers to catch up (at most a second, and only while they
    /// do); 0 never waits.
    pub publish_backlog: u64,
    /// How long one write to a client may block before it is cut off, in milliseconds.
    pub write_timeout_ms: u64,
    /// Open connections in total; beyond, new ones are refused.
    pub max_connections: usize,
    /// Open connections per client IP; 0 means no per-IP limit.
    pub max_connections_per_ip: usize,
    /// Sustained publishes per second on one connection (token bucket).
    pub publish_rate_per_second: u32,
    /// Publishes one connection may burst above the sustained rate.
    pub publish_burst: u32,
    /// How long a client may take to send its request headers, in milliseconds.
    pub header_read_timeout_ms: u64,
    /// How long a client may take to send a request body, in milliseconds.
    pub body_read_timeout_ms: u64,
    /// How long an HTTP/2 connection may stay open with no request in flight, in
    /// milliseconds.
    pub http2_idle_timeout_ms: u64,
    /// Streams one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub http2_max_concurrent_streams: u32,
    /// Largest request header list on HTTP/2, in bytes (SETTINGS_MAX_HEADER_LIST_SIZE).
    pub http2_max_header_list_bytes: u32,
    /// HTTP/2 flow-control window of each stream, in bytes: how much of a request body the
    /// client may send before the gateway reads it.
    pub http2_stream_window_bytes: u32,
    /// HTTP/2 flow-control window of a whole connection, in bytes: the most request body
    /// data one connection can have waiting in the gateway.
    pub http2_connection_window_bytes: u32,
    /// An HTTP/2 connection is sent a PING after this long without a frame from it, and
    /// closed when the PING is not answered within as long again, in milliseconds.
    pub http2_keepalive_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 64 * 1024,
            max_body_bytes: 128 * 1024,
            max_channels: 128,
            subscriber_queue: 1024,
            publish_backlog: 8_192,
            write_timeout_ms: 10_000,
            max_connections: 50_000,
            max_connections_per_ip: 1000,
            publish_rate_per_second: 20,
            publish_burst: 50,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            http2_idle_timeout_ms: 60_000,
            http2_max_concurrent_streams: 128,
            http2_max_header_list_bytes: 16 * 1024,
            http2_stream_window_bytes: 64 * 1024,
            http2_connection_window_bytes: 256 * 1024,
            http2_keepalive_ms: 30_000,
        }
    }
}
