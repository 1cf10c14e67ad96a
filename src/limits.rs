//! Limits that keep one client from costing the gateway more than its share: connection
//! caps (total and per IP) and a per-connection publish rate.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * f64::from(self.rate);
        self.tokens = (self.tokens + refill).min(f64::from(self.burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts open connections, in total and per client IP.
pub struct ConnectionLimiter {
    max: usize,
    per_ip: usize,
    // std Mutex: a counter update, never held across an await.
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; dropping it frees the slot. Upgraded WebSockets keep a clone,
/// so the slot stays taken for as long as the socket is open.
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    /// Whom it admitted: the connection's only record of its peer's address.
    remote: SocketAddr,
}

impl ConnectionPermit {
    /// The address of the admitted peer.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }
}

impl ConnectionLimiter {
    /// `per_ip` of 0 disables the per-IP cap.
    pub fn new(max: usize, per_ip: usize) -> Arc<Self> {
        Arc::new(ConnectionLimiter {
            max,
            per_ip,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Admits a connection from `remote`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, remote: SocketAddr) -> Result<ConnectionPermit, &'static str> {
        let ip = remote.ip();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= self.max {
            return Err("the gateway is at its connection limit");
        }
        let from_ip = open.1.get(&ip).copied().unwrap_or(0);
        if self.per_ip > 0 && from_ip >= self.per_ip {
            return Err("this address is at its connection limit");
        }
        open.0 += 1;
        open.1.insert(ip, from_ip + 1);
        Ok(ConnectionPermit {
            limiter: self.clone(),
            remote,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        let ip = self.remote.ip();
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

    #[test]
    fn bucket_allows_burst_then_refuses() {
        let mut bucket = TokenBucket::new(1, 3);
        assert!((0..3).all(|_| bucket.try_take()));
        assert!(!bucket.try_take());
    }

    #[test]
    fn limiter_counts_total_and_per_ip() {
        let limiter = ConnectionLimiter::new(3, 2);
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
}
