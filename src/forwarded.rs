//! Who a request really comes from when a load balancer or proxy sits in front of the
//! gateway: `trusted_proxies` (CIDRs) names the peers whose `Forwarded` /
//! `X-Forwarded-For` and `X-Forwarded-Host` headers are believed. From any other peer
//! those headers are ignored, since a client can send whatever it likes.
//!
//! A leaf: HTTP headers in, addresses out.

use std::net::IpAddr;
use std::str::FromStr;

use http::{HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`: the de facto list of hops, client first.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Host`: the `Host` the client sent to the proxy.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a block of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an address or a CIDR block (10.0.0.0/8, ::1/128)");
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(bad)?,
            None => bits,
        };
        Ok(Cidr {
            network: addr,
            prefix,
        })
    }
}

impl Cidr {
    /// Whether `ip` lies in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32)
                    == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(net.into(), self.prefix, 128) == masked(ip.into(), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The first `prefix` bits of a `bits`-wide address.
fn masked(addr: u128, prefix: u8, bits: u32) -> u128 {
    let drop = bits - u32::from(prefix);
    if drop >= 128 { 0 } else { addr >> drop }
}

/// The peers whose forwarding headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Parses the configured list; the error names the entry that is not a block.
    pub fn parse(list: &[String]) -> Result<Self, String> {
        list.iter()
            .map(|entry| entry.parse())
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|cidr| cidr.contains(ip))
    }

    /// The client behind a trusted proxy: walking the hops from the right (the one
    /// nearest the gateway), the first that is not a trusted proxy. `Forwarded` (RFC
    /// 7239) wins over `X-Forwarded-For`. `None` when the headers name no usable hop
    /// (absent, `unknown`, obfuscated): the peer itself is then all that is known.
    pub fn client(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let forwarded = headers.get_all(http::header::FORWARDED);
        let hops: Vec<&str> = if forwarded.iter().next().is_some() {
            forwarded
                .iter()
                .flat_map(split_list)
                .map(|element| for_of(element).unwrap_or(""))
                .collect()
        } else {
            headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .flat_map(split_list)
                .collect()
        };
        let mut client = None;
        for hop in hops.iter().rev() {
            let ip = parse_hop(hop)?;
            client = Some(ip);
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// The comma-separated items of one header value.
fn split_list(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// The `for=` parameter of one `Forwarded` element.
fn for_of(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// One hop's address: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1` or `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    let (ip, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_contain() {
        let block: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(block.contains(ip("10.1.200.3")));
        assert!(!block.contains(ip("10.2.0.1")));
        assert!(block.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped");
        let six: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(six.contains(ip("2001:db8:1::5")));
        assert!(!six.contains(ip("10.1.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        for bad in ["10.0.0.0/33", "::/129", "host.example", "10.0.0/8", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let trusted = proxies(&["10.0.0.0/8"]);
        // A client's own claim (1.1.1.1) comes first and is skipped over.
        let xff = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7, 10.0.0.2")]);
        assert_eq!(trusted.client(&xff), Some(ip("203.0.113.7")));
        let lines = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.8"),
        ]);
        assert_eq!(trusted.client(&lines), Some(ip("203.0.113.8")));
        let forwarded = headers(&[
            (
                "forwarded",
                r#"for=198.51.100.1;proto=https, for="[2001:db8::7]:4711""#,
            ),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(trusted.client(&forwarded), Some(ip("2001:db8::7")));
        let ported = headers(&[("x-forwarded-for", "203.0.113.10:5555")]);
        assert_eq!(trusted.client(&ported), Some(ip("203.0.113.10")));
        // Only proxies: the left-most is as far as the headers go.
        let inside = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.2")]);
        assert_eq!(trusted.client(&inside), Some(ip("10.9.9.9")));
    }

    #[test]
    fn unusable_hops_name_no_client() {
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(trusted.client(&HeaderMap::new()), None);
        let unknown = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(trusted.client(&unknown), None);
        let junk = headers(&[("x-forwarded-for", "203.0.113.7, not-an-address")]);
        assert_eq!(trusted.client(&junk), None);
    }
}
