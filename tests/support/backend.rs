//! An application backend for the hooks' tests: a real HTTP server on 127.0.0.1 that
//! checks every call's signature as docs/HOOKS.md tells a backend to, records the call,
//! and answers as the test says.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The secret the tests' gateways and backend share.
pub const SECRET: &str = "hooks-test-secret";

/// How the backend answers one call.
pub enum Reply {
    /// 200 with this JSON text.
    Json(String),
    /// This HTTP status, with an empty body.
    Status(u16),
    /// Waits, then answers.
    Slow(Duration, String),
}

impl Reply {
    /// `{"result":<value>}`.
    pub fn result(value: Value) -> Reply {
        Reply::Json(serde_json::json!({ "result": value }).to_string())
    }

    /// `{"error":{"code":..,"message":..}}`.
    pub fn error(code: &str, message: &str) -> Reply {
        Reply::Json(serde_json::json!({"error": {"code": code, "message": message}}).to_string())
    }
}

/// One call the backend received.
#[derive(Clone, Debug)]
pub struct Call {
    pub event: String,
    pub body: Value,
    /// Whether `X-Cascade-Signature` verified against `X-Cascade-Timestamp` and the body.
    pub signed: bool,
}

type Answer = dyn Fn(&str, &Value) -> Reply + Send + Sync;

/// The backend: dropped, it stops serving.
pub struct Backend {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Serves on a free port; `answer` decides each reply from the event and the body.
    pub async fn start(answer: impl Fn(&str, &Value) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let answer: Arc<Answer> = Arc::new(answer);
        let recorded = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (answer, calls) = (answer.clone(), recorded.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| serve(req, answer.clone(), calls.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend { addr, calls, task }
    }

    /// The gateway's `hooks.url` for this backend.
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// The calls of `event` so far.
    pub fn calls(&self, event: &str) -> Vec<Call> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.event == event).cloned().collect()
    }

    /// How many calls of `event` so far.
    pub fn count(&self, event: &str) -> usize {
        self.calls(event).len()
    }
}

async fn serve(
    req: Request<hyper::body::Incoming>,
    answer: Arc<Answer>,
    calls: Arc<Mutex<Vec<Call>>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let event = req
        .uri()
        .path()
        .strip_prefix("/hooks/")
        .unwrap_or("")
        .to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (timestamp, signature) = (header("x-cascade-timestamp"), header("x-cascade-signature"));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let signed = verify(timestamp.as_deref(), signature.as_deref(), &body);
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = answer(&event, &json);
    calls.lock().unwrap().push(Call {
        event,
        body: json,
        signed,
    });
    let (status, text) = match reply {
        Reply::Json(text) => (200, text),
        Reply::Status(status) => (status, String::new()),
        Reply::Slow(wait, text) => {
            tokio::time::sleep(wait).await;
            (200, text)
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    Ok(response)
}

/// The check docs/HOOKS.md gives backends: the HMAC of `timestamp.body`, and a timestamp
/// within five minutes.
fn verify(timestamp: Option<&str>, signature: Option<&str>, body: &[u8]) -> bool {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return false;
    };
    let Ok(at) = timestamp.parse::<u64>() else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(at) > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    signature == format!("sha256={expected}")
}
