//! The Sentinel form of `redis_url`, parsed once at config load so that a bad URL is a
//! startup error, never a retry loop. Plain `redis://` URLs are the redis crate's to parse.

use std::fmt;

/// Sentinels assumed when a host names no port: Sentinel's default.
const SENTINEL_PORT: u16 = 26379;

/// At most this many sentinels: each is asked in turn when the master is looked up.
const MAX_SENTINELS: usize = 16;

/// `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]
/// [?sentinel_username=..&sentinel_password=..]`: where to ask for the master, and how
/// to log in to it.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// The sentinels, asked in this order.
    pub sentinels: Vec<(String, u16)>,
    /// The name the sentinels monitor the master under.
    pub master: String,
    /// The database of the master.
    pub db: i64,
    /// ACL user of the master (and its replicas).
    pub username: Option<String>,
    /// Password of the master (and its replicas).
    pub password: Option<String>,
    /// ACL user of the sentinels.
    pub sentinel_username: Option<String>,
    /// Password of the sentinels (their `requirepass`), which may differ from the master's.
    pub sentinel_password: Option<String>,
}

impl fmt::Debug for SentinelUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Passwords stay out of logs and panics.
        f.debug_struct("SentinelUrl")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("sentinel_username", &self.sentinel_username)
            .finish_non_exhaustive()
    }
}

impl SentinelUrl {
    /// `Ok(None)` for a URL that is not a Sentinel one; an error says what is wrong.
    pub fn parse(url: &str) -> Result<Option<SentinelUrl>, String> {
        if url.starts_with("rediss+sentinel://") {
            return Err(
                "rediss+sentinel:// (TLS) is not supported: this build has no TLS to \
                        Redis; use redis+sentinel:// on a private network"
                    .into(),
            );
        }
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            return Ok(None);
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest
            .split_once('/')
            .ok_or("name the master after the sentinels: redis+sentinel://host:26379/mymaster")?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (non_empty(decode(user)?), non_empty(decode(password)?))
            }
        };
        let sentinels = hosts
            .split(',')
            .map(host_port)
            .collect::<Result<Vec<_>, _>>()?;
        if sentinels.len() > MAX_SENTINELS {
            return Err(format!("at most {MAX_SENTINELS} sentinels"));
        }
        let (master, db) = path.split_once('/').unwrap_or((path, ""));
        let name_ok = !master.is_empty()
            && master.len() <= 128
            && master
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            return Err(format!(
                "master name {master:?}: use 1 to 128 of A-Z a-z 0-9 _ - ."
            ));
        }
        let db = match db.trim_end_matches('/') {
            "" => 0,
            db => db
                .parse::<u16>()
                .map_err(|_| format!("database {db:?} is not a number"))?,
        };
        let mut parsed = SentinelUrl {
            sentinels,
            master: master.to_owned(),
            db: i64::from(db),
            username,
            password,
            sentinel_username: None,
            sentinel_password: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = non_empty(decode(value)?);
            match key {
                "sentinel_username" => parsed.sentinel_username = value,
                "sentinel_password" => parsed.sentinel_password = value,
                _ => {
                    return Err(format!(
                        "unknown parameter {key:?} (known: sentinel_username, sentinel_password)"
                    ));
                }
            }
        }
        Ok(Some(parsed))
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// `host`, `host:port` or `[v6]:port`.
fn host_port(item: &str) -> Result<(String, u16), String> {
    let item = item.trim();
    let (host, port) = if let Some(v6) = item.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("sentinel {item:?}: unclosed ["))?;
        (host, after.strip_prefix(':'))
    } else {
        match item.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (item, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if !host_ok {
        return Err(format!("sentinel {item:?}: not a host name or address"));
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("sentinel {item:?}: port must be 1-65535"))?,
    };
    Ok((host.to_owned(), port))
}

/// Undoes URL percent-encoding, so that a password may hold `@ : / ? & %`.
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a bad %-escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a %-escape that is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url_parses() {
        let url = SentinelUrl::parse(
            "redis+sentinel://app:p%40ss@s1:26380,10.0.0.2,[::1]:26381/mymaster/3\
             ?sentinel_password=sp",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            url.sentinels,
            vec![
                ("s1".to_owned(), 26380),
                ("10.0.0.2".to_owned(), 26379),
                ("::1".to_owned(), 26381)
            ]
        );
        assert_eq!((url.master.as_str(), url.db), ("mymaster", 3));
        assert_eq!(url.username.as_deref(), Some("app"));
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        assert_eq!(url.sentinel_password.as_deref(), Some("sp"));
        assert!(!format!("{url:?}").contains("p@ss"));
        let bare = SentinelUrl::parse("redis+sentinel://:pw@h/m")
            .unwrap()
            .unwrap();
        assert_eq!(
            (bare.username, bare.password.as_deref()),
            (None, Some("pw"))
        );
    }

    #[test]
    fn other_urls_are_not_sentinel_ones() {
        assert_eq!(SentinelUrl::parse("redis://127.0.0.1:6379/0"), Ok(None));
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in [
            "redis+sentinel://h:26379",
            "redis+sentinel://h:26379/",
            "redis+sentinel://h:0/m",
            "redis+sentinel://h:x/m",
            "redis+sentinel://,h/m",
            "redis+sentinel://h/m/x",
            "redis+sentinel://h/m?db=2",
            "redis+sentinel://h/my master",
            "redis+sentinel://a%zz@h/m",
            "redis+sentinel://[::1/m",
            "rediss+sentinel://h/m",
        ] {
            assert!(SentinelUrl::parse(url).is_err(), "{url}");
        }
    }
}
