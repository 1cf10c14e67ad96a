//! Limits that keep one client from costing the gateway more than its share: connection
//! caps (total and per IP) and a publish rate, per connection, or per client behind a
//! trusted proxy (whose connections carry many clients).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use http::HeaderMap;

use crate::forwarded::TrustedProxies;
use crate::sync::Unpoisoned;

/// Most clients behind trusted proxies whose publish budgets are tracked at once; past
/// it, budgets that have refilled (and so equal a fresh one) are forgotten first.
const MAX_CLIENT_BUDGETS: usize = 100_000;

/// A token bucket: `rate` tokens per second, holding at most `burst`. Every connection
/// has one, so the rates are kept as the `u32`s they are configured as.
#[derive(Debug)]
pub struct TokenBucket {
    rate: u32,
    burst: u32,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = burst.max(1);
        TokenBucket {
            rate,
            burst,
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * f64::from(self.rate);
        self.tokens = (self.tokens + refill).min(f64::from(self.burst));
        self.last = now;
    }

    /// Whether the bucket is full again: then it is no different from a new one.
    fn is_full(&mut self) -> bool {
        self.refill();
        self.tokens >= f64::from(self.burst)
    }
}

/// The publish budget of one connection, or of the clients a trusted proxy's connections
/// carry.
#[derive(Clone, Copy, Debug)]
pub struct PublishRate {
    /// Sustained publishes per second.
    pub per_second: u32,
    /// Publishes above the sustained rate.
    pub burst: u32,
}

/// Counts open connections, in total and per client IP, and keeps the publish budgets of
/// the clients behind trusted proxies.
pub struct ConnectionLimiter {
    max: usize,
    per_ip: usize,
    // std Mutex: a counter update, never held across an await.
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    proxies: TrustedProxies,
    rate: PublishRate,
    client_budgets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

/// One admitted connection; dropping it frees the slot. Upgraded WebSockets keep a clone,
/// so the slot stays taken for as long as the socket is open.
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    /// Whom it admitted: the connection's only record of its peer's address.
    remote: SocketAddr,
    /// For a trusted proxy's connection, which is not counted against the proxy's own
    /// address: the client its first request came from, counted once known.
    client: Option<Box<OnceLock<IpAddr>>>,
}

impl ConnectionPermit {
    /// The address of the admitted peer, or of the client behind it when the peer is a
    /// trusted proxy that named one (port 0: the proxy does not say).
    pub fn remote(&self) -> SocketAddr {
        match self.client.as_deref().and_then(OnceLock::get) {
            Some(ip) => SocketAddr::new(*ip, 0),
            None => self.remote,
        }
    }

    /// Whether the peer is a trusted proxy.
    pub fn proxied(&self) -> bool {
        self.client.is_some()
    }

    /// The client a trusted proxy's request names (see [`TrustedProxies::client`]);
    /// `None` from any other peer, whatever its headers say.
    pub fn forwarded_client(&self, headers: &HeaderMap) -> Option<IpAddr> {
        self.client.as_ref()?;
        self.limiter.proxies.client(headers)
    }

    /// Takes one publish from the budget of `client`, a client behind a trusted proxy.
    pub fn take_client_publish(&self, client: IpAddr) -> bool {
        let mut budgets = self.limiter.client_budgets.locked();
        if budgets.len() >= MAX_CLIENT_BUDGETS && !budgets.contains_key(&client) {
            budgets.retain(|_, bucket| !bucket.is_full());
            if budgets.len() >= MAX_CLIENT_BUDGETS {
                // Every tracked client is busy: forget one rather than grow.
                let any = budgets.keys().next().copied();
                any.map(|ip| budgets.remove(&ip));
            }
        }
        let rate = self.limiter.rate;
        budgets
            .entry(client)
            .or_insert_with(|| TokenBucket::new(rate.per_second, rate.burst))
            .try_take()
    }

    /// Counts a trusted proxy's connection against the client it carries (the first one
    /// named; later ones are not counted again), or refuses it when that client is at its
    /// per-IP limit. Nothing to do for any other connection.
    pub fn admit_client(&self, ip: IpAddr) -> Result<(), &'static str> {
        let Some(client) = &self.client else {
            return Ok(());
        };
        if client.get().is_some() {
            return Ok(());
        }
        let mut open = self.limiter.open.locked();
        // Checked again under the lock: two requests of one connection never race here,
        // but the permit is shared with the connection's WebSocket.
        if client.get().is_some() {
            return Ok(());
        }
        let from_ip = open.1.get(&ip).copied().unwrap_or(0);
        if self.limiter.per_ip > 0 && from_ip >= self.limiter.per_ip {
            return Err("this address is at its connection limit");
        }
        open.1.insert(ip, from_ip + 1);
        let _ = client.set(ip);
        Ok(())
    }
}

impl ConnectionLimiter {
    /// `per_ip` of 0 disables the per-IP cap; `rate` is the budget of each client behind
    /// one of the `proxies`.
    pub fn new(max: usize, per_ip: usize, proxies: TrustedProxies, rate: PublishRate) -> Arc<Self> {
        Arc::new(ConnectionLimiter {
            max,
            per_ip,
            open: Mutex::new((0, HashMap::new())),
            proxies,
            rate,
            client_budgets: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a connection from `remote`, or says which limit refuses it. A trusted
    /// proxy's connection counts in the total only: its per-IP share is the client's (see
    /// [`ConnectionPermit::admit_client`]).
    pub fn admit(self: &Arc<Self>, remote: SocketAddr) -> Result<ConnectionPermit, &'static str> {
        let ip = remote.ip();
        let proxied = self.proxies.trusts(ip);
        let mut open = self.open.locked();
        if open.0 >= self.max {
            return Err("the gateway is at its connection limit");
        }
        if !proxied {
            let from_ip = open.1.get(&ip).copied().unwrap_or(0);
            if self.per_ip > 0 && from_ip >= self.per_ip {
                return Err("this address is at its connection limit");
            }
            open.1.insert(ip, from_ip + 1);
        }
        open.0 += 1;
        Ok(ConnectionPermit {
            limiter: self.clone(),
            remote,
            client: proxied.then(Default::default),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.locked().0
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.locked();
        open.0 = open.0.saturating_sub(1);
        let ip = match &self.client {
            None => self.remote.ip(),
            Some(client) => match client.get() {
                Some(ip) => *ip,
                None => return,
            },
        };
        if let Some(count) = open.1.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.1.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: PublishRate = PublishRate {
        per_second: 1,
        burst: 2,
    };

    #[test]
    fn bucket_allows_burst_then_refuses() {
        let mut bucket = TokenBucket::new(1, 3);
        assert!((0..3).all(|_| bucket.try_take()));
        assert!(!bucket.try_take());
    }

    #[test]
    fn limiter_counts_total_and_per_ip() {
        let limiter = ConnectionLimiter::new(3, 2, TrustedProxies::default(), RATE);
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1000".parse().unwrap();
        let first = limiter.admit(a).unwrap();
        let _second = limiter.admit(a).unwrap();
        assert!(limiter.admit(a).is_err(), "per-ip cap");
        let _third = limiter.admit(b).unwrap();
        assert!(limiter.admit(b).is_err(), "total cap");
        assert_eq!(first.remote(), a);
        drop(first);
        let _again = limiter.admit("127.0.0.1:1001".parse().unwrap()).unwrap();
        assert_eq!(limiter.open(), 3);
    }

    #[test]
    fn a_proxied_connection_counts_against_its_client() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".to_owned()]).unwrap();
        let limiter = ConnectionLimiter::new(10, 1, proxies, RATE);
        let proxy: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let first = limiter.admit(proxy).unwrap();
        let second = limiter.admit(proxy).unwrap();
        assert_eq!(first.remote(), proxy, "until the client is known");
        first.admit_client(client).unwrap();
        assert_eq!(first.remote(), SocketAddr::new(client, 0));
        assert!(
            second.admit_client(client).is_err(),
            "the client's per-ip cap"
        );
        let other: IpAddr = "203.0.113.8".parse().unwrap();
        second.admit_client(other).unwrap();
        drop(first);
        let third = limiter.admit(proxy).unwrap();
        third.admit_client(client).unwrap();
        assert_eq!(limiter.open(), 2);
    }

    #[test]
    fn clients_behind_a_proxy_each_have_a_publish_budget() {
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".to_owned()]).unwrap();
        let limiter = ConnectionLimiter::new(10, 0, proxies, RATE);
        let one = limiter.admit("10.0.0.1:1".parse().unwrap()).unwrap();
        let two = limiter.admit("10.0.0.1:2".parse().unwrap()).unwrap();
        let alice: IpAddr = "203.0.113.7".parse().unwrap();
        let bob: IpAddr = "203.0.113.8".parse().unwrap();
        assert!(one.take_client_publish(alice) && two.take_client_publish(alice));
        assert!(
            !one.take_client_publish(alice),
            "alice's burst, across connections"
        );
        assert!(one.take_client_publish(bob), "bob has his own");
    }
}
