//! `POST /rpc`: a client on any rung calls the application's backend and gets its answer
//! (WebSocket clients send an `rpc` frame instead). The backend's rpc hook answers.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::app::App;
use crate::auth::Identity;
use crate::config::{Config, HookEvent};
use crate::error::{Error, Result};
use crate::http::{Body, json, read_body};

/// Longest method name.
const MAX_METHOD_LEN: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RpcRequest<'a> {
    method: String,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

/// Answers `{"method":..,"params":..}` with `{"result":..}`, the backend's, for `who`,
/// admitted as a publisher is (its credentials, its `session=`, one of its connection's
/// publish budget, which calls share) before a byte of the body was read.
pub async fn serve(app: Arc<App>, who: Identity, req: Request<Incoming>) -> Result<Response<Body>> {
    let hooks = enabled(&app)?;
    let limits = &app.config.limits;
    let read = read_body(req.into_body(), limits.max_body_bytes);
    let body = tokio::time::timeout(Config::ms(limits.body_read_timeout_ms), read)
        .await
        .map_err(|_| Error::RequestTimeout)??;
    let request: RpcRequest =
        serde_json::from_slice(&body).map_err(|e| Error::BadJson(e.to_string()))?;
    check_method(&request.method)?;
    let params = request.params.map_or("null", RawValue::get);
    if params.len() > limits.max_message_bytes {
        return Err(Error::MessageTooLarge(limits.max_message_bytes));
    }
    let params =
        RawValue::from_string(params.to_owned()).map_err(|e| Error::BadJson(e.to_string()))?;
    let result = hooks.rpc(&who, &request.method, &params).await?;
    Ok(json(
        StatusCode::OK,
        format!(r#"{{"result":{}}}"#, result.get()),
    ))
}

/// The hooks, if they call the backend for rpc; else `/rpc` is not served.
pub fn enabled(app: &App) -> Result<Arc<crate::hooks::Hooks>> {
    app.hooks
        .clone()
        .filter(|h| h.on(HookEvent::Rpc))
        .ok_or_else(|| {
            Error::NotFound("/rpc: this gateway calls no backend for rpc (hooks.events)".into())
        })
}

/// An RPC method: 1 to 128 of `A-Z a-z 0-9 _ - . : /`, like a channel name.
pub fn check_method(method: &str) -> Result<()> {
    let valid = (1..=MAX_METHOD_LEN).contains(&method.len())
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'));
    if valid {
        Ok(())
    } else {
        Err(Error::BadParam {
            name: "method",
            reason: "use 1 to 128 of A-Z a-z 0-9 _ - . : /".into(),
        })
    }
}
