//! `POST /demo/login`: the chat demo's log-in by name, served only with `demo = true`.
//!
//! It signs a token for whatever name it is given: impersonation by design, acceptable for
//! the development demo (whose config publishes its secret anyway) and never enabled by
//! the built-in defaults. It lets the demo's private messages (`user:<name>`, readable by
//! its owner only) work without minting tokens by hand.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::app::App;
use crate::auth::token::{Claims, now_secs};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::{Body, json, read_body};
use crate::protocol::Channel;

/// How long a demo token lasts, in seconds.
const DEMO_TOKEN_SECONDS: u64 = 12 * 3600;

#[derive(Deserialize)]
struct Login {
    name: String,
}

/// Answers `{"token": ..}` for `{"name": ..}`.
pub async fn login(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>> {
    if !app.config.demo {
        return Err(Error::NotFound("/demo/login".into()));
    }
    let read = read_body(req.into_body(), 1024);
    let body = tokio::time::timeout(Config::ms(app.config.limits.body_read_timeout_ms), read)
        .await
        .map_err(|_| Error::RequestTimeout)??;
    let login: Login = serde_json::from_slice(&body).map_err(|e| Error::BadJson(e.to_string()))?;
    // The name must make a valid personal channel.
    Channel::parse(&format!("user:{}", login.name))?;
    let claims = Claims {
        sub: login.name,
        exp: now_secs() + DEMO_TOKEN_SECONDS,
        channels: Vec::new(),
        publish: Vec::new(),
    };
    let token = app
        .auth
        .sign(&claims)
        .map_err(|e| Error::Forbidden(format!("the demo log-in needs token.hmac_secret: {e}")))?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "token": token }).to_string(),
    ))
}
