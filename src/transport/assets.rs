//! `GET /cascade.js` and the chat demo (`/`, `/demo.js`, `/demo.css`): static files
//! compiled into the binary, so a deployed gateway needs nothing beside it.
//!
//! Each asset carries a strong `ETag` computed once from its bytes; a matching
//! `If-None-Match` is answered `304 Not Modified`. This module never sees the bus.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::http::{Body, full};

/// One file served as-is.
pub struct Asset {
    /// The request path it answers.
    pub path: &'static str,
    content_type: &'static str,
    cache_control: &'static str,
    bytes: &'static [u8],
    /// FNV-1a of `bytes`, computed at compile time: the strong `ETag`.
    hash: u64,
}

impl Asset {
    const fn new(
        path: &'static str,
        content_type: &'static str,
        cache_control: &'static str,
        bytes: &'static [u8],
    ) -> Self {
        Asset {
            path,
            content_type,
            cache_control,
            bytes,
            hash: fnv1a(bytes),
        }
    }

    /// The strong `ETag`: `"<16 hex digits>"`.
    fn etag(&self) -> String {
        format!("\"{:016x}\"", self.hash)
    }
}

const SCRIPT: &str = "application/javascript; charset=utf-8";
/// Short: a deploy reaches every browser within minutes; the ETag makes revalidation cheap.
const CACHED: &str = "public, max-age=300";

/// The browser client, served whether or not the demo is on.
pub const CLIENT: Asset = Asset::new(
    "/cascade.js",
    SCRIPT,
    CACHED,
    include_bytes!("../../client/cascade.js"),
);

/// The demo's page, script and style, served only when `demo = true`.
pub const DEMO: [Asset; 3] = [
    // The page names the other files, so it is always revalidated.
    Asset::new(
        "/",
        "text/html; charset=utf-8",
        "no-cache",
        include_bytes!("../../demo/index.html"),
    ),
    Asset::new(
        "/demo.js",
        SCRIPT,
        CACHED,
        include_bytes!("../../demo/demo.js"),
    ),
    Asset::new(
        "/demo.css",
        "text/css; charset=utf-8",
        CACHED,
        include_bytes!("../../demo/demo.css"),
    ),
];

/// The asset at `path`, if there is one (demo files only when `demo` is on).
pub fn find(path: &str, demo: bool) -> Option<&'static Asset> {
    if path == CLIENT.path {
        return Some(&CLIENT);
    }
    if demo {
        return DEMO.iter().find(|a| a.path == path);
    }
    None
}

/// Whether `path` names an asset at all, whatever the config (for `405` on other methods).
pub fn is_asset_path(path: &str) -> bool {
    path == CLIENT.path || DEMO.iter().any(|a| a.path == path)
}

/// Answers a `GET` for `asset`: the bytes, or `304` when `If-None-Match` matches.
pub fn serve(asset: &'static Asset, request_headers: &HeaderMap) -> Response<Body> {
    let etag = asset.etag();
    let fresh = request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| matches_etag(v, &etag));
    let mut response = if fresh {
        let mut response = Response::new(full(""));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = Response::new(full(asset.bytes));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        response
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(asset.cache_control),
    );
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// FNV-1a, 64 bits: plenty to tell two builds of a file apart, and no dependency.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash = (hash ^ bytes[i] as u64).wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `If-None-Match` uses weak comparison: `*`, or any listed tag equal up to a `W/` prefix.
fn matches_etag(header_value: &str, etag: &str) -> bool {
    header_value.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_files_exist_only_when_enabled() {
        assert!(find("/cascade.js", false).is_some());
        assert!(find("/", false).is_none());
        assert!(find("/demo.js", false).is_none());
        assert_eq!(
            find("/", true).map(|a| a.content_type),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            find("/demo.css", true).map(|a| a.content_type),
            Some("text/css; charset=utf-8")
        );
        assert!(find("/nope", true).is_none());
        assert!(is_asset_path("/") && is_asset_path("/demo.js") && !is_asset_path("/x"));
    }

    #[test]
    fn etag_is_stable_and_distinct() {
        let client = CLIENT.etag();
        assert_eq!(client, CLIENT.etag());
        assert!(client.starts_with('"') && client.ends_with('"') && client.len() == 18);
        let tags: Vec<String> = DEMO.iter().map(Asset::etag).collect();
        assert!(!tags.contains(&client));
        assert_ne!(tags[0], tags[1]);
    }

    #[test]
    fn if_none_match_answers_304() {
        let tag = CLIENT.etag();
        let mut headers = HeaderMap::new();
        assert_eq!(serve(&CLIENT, &headers).status(), StatusCode::OK);
        for value in [
            tag.to_owned(),
            format!("W/{tag}"),
            format!("\"x\", {tag}"),
            "*".into(),
        ] {
            headers.insert(
                header::IF_NONE_MATCH,
                HeaderValue::from_str(&value).unwrap(),
            );
            let response = serve(&CLIENT, &headers);
            assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{value}");
            assert_eq!(response.headers()[header::ETAG], tag.as_str());
        }
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        let response = serve(&CLIENT, &headers);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/javascript; charset=utf-8"
        );
        assert_eq!(
            response.headers()[header::CACHE_CONTROL],
            "public, max-age=300"
        );
    }
}
