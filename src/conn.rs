//! What a handler knows about the connection its request came on: its peer (or the
//! client behind a trusted proxy), its slot under the connection limits, its publish
//! budget, and the token that cuts it off. A leaf below the server and the transports,
//! which both hold it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::limits::{ConnectionPermit, TokenBucket};
use crate::sync::Unpoisoned;

/// What a handler knows about the connection its request came on. One pointer, cheap to
/// clone: every connection's task keeps one for its whole life.
#[derive(Clone)]
pub struct ConnInfo {
    shared: Arc<ConnShared>,
}

struct ConnShared {
    /// Cancelling this drops the connection: used to cut off a stalled reader. Made on
    /// first use: a token is an allocation of its own, and only connections whose
    /// subscriber can be cut off (SSE, WebSocket) or that hyper serves take one; a
    /// parked long poll does not.
    kill: OnceLock<CancellationToken>,
    /// The connection's slot under the connection limits, held while any clone lives (an
    /// upgraded WebSocket keeps one), and the peer's address.
    permit: ConnectionPermit,
    /// Publishes allowed on this connection (token bucket), shared by its requests.
    publish_budget: Mutex<TokenBucket>,
}

impl ConnInfo {
    /// A connection admitted with `permit`, whose publishes spend `budget`.
    pub fn new(permit: ConnectionPermit, budget: TokenBucket) -> Self {
        ConnInfo {
            shared: Arc::new(ConnShared {
                kill: OnceLock::new(),
                permit,
                publish_budget: Mutex::new(budget),
            }),
        }
    }

    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        self.shared.permit.remote()
    }

    /// Cancelling this drops the connection (and cuts off its subscription): a stalled
    /// SSE reader, whose body hyper has stopped polling, cannot be reached otherwise.
    pub fn kill(&self) -> &CancellationToken {
        self.shared.kill.get_or_init(CancellationToken::new)
    }

    /// The kill token, if something has taken it: until then nothing can kill the
    /// connection (see [`ConnInfo::killed`]).
    pub fn kill_taken(&self) -> Option<&CancellationToken> {
        self.shared.kill.get()
    }

    /// Resolves once the connection is killed. Until something takes the token with
    /// [`ConnInfo::kill`] nothing can kill the connection, so this waits forever; a wait
    /// begun before the token was taken does not see it, so wait anew after anything
    /// that may take it.
    pub async fn killed(&self) {
        match self.shared.kill.get() {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// Takes one publish from the budget of the request's sender, or refuses with
    /// `rate_limited`: the connection's, or, on a trusted proxy's connection, that of the
    /// client the request's `headers` name.
    pub fn take_publish(&self, headers: Option<&http::HeaderMap>) -> Result<()> {
        let permit = &self.shared.permit;
        let taken = match headers.and_then(|h| permit.forwarded_client(h)) {
            Some(client) => permit.take_client_publish(client),
            None => self.shared.publish_budget.locked().try_take(),
        };
        if taken {
            Ok(())
        } else {
            Err(Error::RateLimited)
        }
    }

    /// The client's address: the one a trusted proxy's `headers` name, else the peer's.
    pub fn client_ip(&self, headers: &http::HeaderMap) -> std::net::IpAddr {
        self.shared
            .permit
            .forwarded_client(headers)
            .unwrap_or_else(|| self.remote().ip())
    }

    /// Whether the peer is a trusted proxy, whose forwarding headers count.
    pub fn proxied(&self) -> bool {
        self.shared.permit.proxied()
    }

    /// On a trusted proxy's connection, applies a request's forwarding headers: the
    /// client they name takes the connection's per-IP slot (on its first request), and
    /// `X-Forwarded-Host` becomes the `Host` the same-origin check sees. Refuses a client
    /// at its connection limit. Nothing happens on any other connection.
    pub fn forwarded(&self, headers: &mut http::HeaderMap) -> Result<()> {
        let permit = &self.shared.permit;
        if !permit.proxied() {
            return Ok(());
        }
        if let Some(client) = permit.forwarded_client(headers) {
            permit
                .admit_client(client)
                .map_err(Error::TooManyConnections)?;
        }
        // The first of a chain of proxies is the host the client asked for.
        let host = headers
            .get(crate::forwarded::X_FORWARDED_HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| http::HeaderValue::from_str(v.trim()).ok());
        if let Some(host) = host {
            headers.insert(http::header::HOST, host);
        }
        Ok(())
    }
}
