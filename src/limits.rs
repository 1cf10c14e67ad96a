//! Limits that keep one client from costing the gateway more than its share: connection
//! caps (total and per IP) and a per-connection publish rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
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
    ip: IpAddr,
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

    /// Admits a connection from `ip`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, &'static str> {
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
            ip,
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
        if let Some(count) = open.1.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.1.remove(&self.ip);
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
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = limiter.admit(a).unwrap();
        let _second = limiter.admit(a).unwrap();
        assert!(limiter.admit(a).is_err(), "per-ip cap");
        let _third = limiter.admit(b).unwrap();
        assert!(limiter.admit(b).is_err(), "total cap");
        drop(first);
        let _again = limiter.admit(a).unwrap();
        assert_eq!(limiter.open(), 3);
    }
}
