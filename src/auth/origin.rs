//! Browser origins: the allowlist behind the WebSocket `Origin` check (cross-site
//! WebSocket hijacking) and CORS on the HTTP transports.

use http::{HeaderMap, HeaderValue, header};

use crate::error::{Error, Result};

/// The configured origin allowlist.
pub struct Origins {
    allowed: Vec<String>,
    any: bool,
    credentials: bool,
}

impl Origins {
    /// `allowed` holds exact origins (`https://app.example.com`) or `*`.
    pub fn new(allowed: &[String], credentials: bool) -> Self {
        let any = allowed.iter().any(|o| o == "*");
        if any {
            tracing::warn!("allowed_origins contains '*': any web page may call this gateway");
        }
        Origins {
            allowed: allowed
                .iter()
                .filter(|o| *o != "*")
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            any,
            credentials,
        }
    }

    /// Checks the request's `Origin`. Requests without one (backends, curl, same-origin
    /// navigations) pass; a browser origin passes when it is allowed or is the gateway's
    /// own origin. Returns the origin to echo in CORS headers.
    pub fn check(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(None);
        };
        let text = origin
            .to_str()
            .map_err(|_| Error::OriginNotAllowed("unreadable Origin".into()))?
            .to_ascii_lowercase();
        let same_origin = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| {
                text.split_once("://")
                    .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host))
            });
        if self.any || same_origin || self.allowed.contains(&text) {
            Ok(Some(origin.clone()))
        } else {
            Err(Error::OriginNotAllowed(
                crate::protocol::truncate_for_message(&text),
            ))
        }
    }

    /// Adds the CORS response headers for an allowed cross-origin request.
    pub fn decorate(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// Adds the answer to a CORS preflight.
    pub fn preflight(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        self.decorate(origin, headers);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "Authorization, Content-Type, Last-Event-ID, X-Cascade-Api-Key",
            ),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn allowlist_and_same_origin() {
        let origins = Origins::new(&["https://app.example.com".into()], false);
        assert!(origins.check(&headers(None, "gw:8080")).unwrap().is_none());
        assert!(
            origins
                .check(&headers(Some("https://app.example.com"), "gw"))
                .unwrap()
                .is_some()
        );
        assert!(
            origins
                .check(&headers(Some("http://gw:8080"), "gw:8080"))
                .unwrap()
                .is_some()
        );
        let err = origins
            .check(&headers(Some("https://evil.example"), "gw"))
            .unwrap_err();
        assert_eq!(err.code(), "origin_not_allowed");
        assert!(
            Origins::new(&["*".into()], false)
                .check(&headers(Some("https://x.y"), "gw"))
                .is_ok()
        );
    }
}
