//! The router: both HTTP/1 paths (the lean one and hyper's) and HTTP/2 dispatch from one
//! route table ([`table`]), after one admission (the origin, and HTTP's own rules). Errors
//! from any handler become responses here, and are counted, so no handler picks a status
//! itself.

mod lean;
pub mod table;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::app::App;
use crate::config::{Config, Transport};
use crate::error::{Error, Result};
use crate::http::{Body, RequestHead, add_implied_headers, error_response, full, json, read_body};
use crate::transport::{
    assets, demo, long_poll, negotiate, presence, publish, rpc, server_api, short_poll, socketio,
    sse, websocket,
};

use crate::sync::Unpoisoned;
use table::Handler;

/// Routes one request; never fails (errors are answered as JSON).
///
/// A browser origin outside the allowlist is refused before any route runs (for `/ws`
/// this is the cross-site WebSocket hijacking check); an allowed cross-origin caller gets
/// CORS headers on every answer, errors included, so that it can read them.
///
/// `kept` is the connection's: a long poll's subscription, kept for the connection's next
/// poll as on the lean path ([`crate::http1::Kept::carry`]).
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    kept: KeptPoll,
) -> Result<Response<Body>, Infallible> {
    let mut admission = Admission::of(&app, req.headers(), req.method() == Method::OPTIONS);
    if let Err(err) = one_host(&req) {
        admission.origin = Err(err);
    }
    let mut response = answer(app, admission, req, |app, req| route(app, req, kept)).await;
    add_implied_headers(&mut response);
    Ok(response)
}

/// The answer to a request refused before routing (a client at its connection limit),
/// counted like any other refusal.
pub fn refuse(app: &App, err: &Error) -> Response<Body> {
    app.metrics.error(err.label());
    let mut response = error_response(err);
    add_implied_headers(&mut response);
    response
}

/// A long poll's subscription, kept between the requests of a connection hyper serves: a
/// lock, as HTTP/2 may carry requests at once (the first poll takes it, the others read
/// history).
pub type KeptPoll = Arc<Mutex<Option<long_poll::Carry>>>;

/// Admits the caller of a route that acts for it (a publish), in the one order both
/// HTTP paths keep, before a byte of its body is read: the browser origin, then who is
/// asking, then their budget. A cross-origin caller spends neither a connect ticket nor
/// the budget before it is refused. (Every request's origin is checked again by
/// [`answer`], for its CORS headers; the check is pure.)
pub(crate) async fn admit_caller(
    app: &App,
    head: &(impl RequestHead + Sync),
) -> Result<crate::auth::Identity> {
    app.auth.origins.check(head.headers())?;
    publish::admit(app, head).await
}

/// What is decided about a request before any route runs.
struct Admission {
    /// The allowed browser origin, if any; an error for a refused one.
    origin: Result<Option<HeaderValue>>,
    preflight: bool,
}

impl Admission {
    fn of(app: &App, headers: &HeaderMap, preflight: bool) -> Self {
        Admission {
            origin: app.auth.origins.check(headers),
            preflight,
        }
    }
}

/// Refuses an HTTP/1 request without exactly one `Host` (RFC 9112 §3.2; HTTP/1.0 may
/// omit it). The lean path hands such a request here, so the rule is kept once; over
/// HTTP/2 the authority is in the request line.
fn one_host<B>(req: &Request<B>) -> Result<()> {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    let needed = if req.version() == http::Version::HTTP_11 {
        1..=1
    } else {
        0..=1
    };
    if needed.contains(&hosts) {
        Ok(())
    } else if hosts == 0 {
        Err(Error::BadRequest("an HTTP/1.1 request needs a Host header"))
    } else {
        Err(Error::BadRequest(
            "a request may carry only one Host header",
        ))
    }
}

/// Runs `route` for an admitted request, turns its error into an answer and adds CORS
/// headers.
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
fn answer<R, F, Fut>(
    app: Arc<App>,
    admission: Admission,
    req: R,
    route: F,
) -> impl Future<Output = Response<Body>>
where
    F: FnOnce(Arc<App>, R) -> Fut,
    Fut: Future<Output = Result<Response<Body>>>,
{
    // Decided before the future exists, so that it keeps the outcome (an error or the
    // origin to echo), not the admission it came from.
    let is_preflight = admission.preflight;
    // The refusal is boxed: rare, and a parked poll would otherwise keep room for one.
    let (refused, cors) = match admission.origin {
        Err(err) => (Some(Box::new(err)), None),
        Ok(origin) => (None, origin.map(|origin| (origin, is_preflight))),
    };
    async move {
        let result = match refused {
            Some(err) => Err(*err),
            None if is_preflight => Ok(preflight()),
            None => route(app.clone(), req).await,
        };
        let mut response = result.unwrap_or_else(|err| {
            app.metrics.error_answer(&err);
            tracing::debug!(code = err.code(), error = %err, "request refused");
            error_response(&err)
        });
        if let Some((origin, is_preflight)) = cors {
            let headers = response.headers_mut();
            if is_preflight {
                app.auth.origins.preflight(&origin, headers);
            } else {
                app.auth.origins.decorate(&origin, headers);
            }
        }
        response
    }
}

/// The answer to a CORS preflight from an allowed origin (headers added by `handle`).
fn preflight() -> Response<Body> {
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// Each handler's future is boxed, so a request costs the size of its own route's state
/// rather than that of the largest route.
async fn route(app: Arc<App>, req: Request<Incoming>, kept: KeptPoll) -> Result<Response<Body>> {
    // Any other request releases the kept subscription, as on the lean path.
    let carried = kept.locked().take();
    let path = req.uri().path();
    let Some(route) = table::find(path) else {
        return Err(Error::NotFound(crate::protocol::truncate_for_message(path)));
    };
    if !route.allows(req.method()) {
        return Err(Error::MethodNotAllowed {
            method: req.method().to_string(),
            allow: route.allow(),
        });
    }
    match route.handler {
        Handler::Transport(transport) => {
            enabled(&app, transport)?;
            match transport {
                Transport::Websocket => Box::pin(upgrade(app, req)).await,
                Transport::Sse => Box::pin(sse::serve(app, req)).await,
                // hyper's connections have no timer to lend: one for this poll.
                Transport::Longpoll => {
                    Box::pin(async move {
                        let timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
                        let mut carried = carried;
                        let answer =
                            long_poll::serve(app, Box::new(req), &mut carried, timer).await;
                        *kept.locked() = carried;
                        answer
                    })
                    .await
                }
                Transport::Poll => Box::pin(short_poll::serve(app, req)).await,
            }
        }
        Handler::Negotiate => Box::pin(negotiate::serve(app, req)).await,
        Handler::Publish => {
            Box::pin(async move {
                let who = admit_caller(&app, &req).await?;
                let limits = &app.config.limits;
                let read = read_body(req.into_body(), limits.max_body_bytes);
                let body = tokio::time::timeout(Config::ms(limits.body_read_timeout_ms), read)
                    .await
                    .map_err(|_| Error::RequestTimeout)??;
                publish::publish(&app, &who, &body).await
            })
            .await
        }
        Handler::Rpc => {
            Box::pin(async move {
                rpc::enabled(&app)?;
                let who = admit_caller(&app, &req).await?;
                rpc::serve(app, who, req).await
            })
            .await
        }
        Handler::Presence => Box::pin(presence::serve(app, &req)).await,
        Handler::Server(op) => {
            Box::pin(async move {
                let who = admit_caller(&app, &req).await?;
                let limits = &app.config.limits;
                let read = read_body(req.into_body(), limits.max_body_bytes);
                let body = tokio::time::timeout(Config::ms(limits.body_read_timeout_ms), read)
                    .await
                    .map_err(|_| Error::RequestTimeout)??;
                server_api::serve(&app, &who, op, &body).await
            })
            .await
        }
        Handler::SocketIo => Box::pin(socketio::serve(app, req)).await,
        Handler::DemoLogin => Box::pin(demo::login(app, req)).await,
        Handler::Health => Ok(health(&app)),
        Handler::Ready => ready(&app),
        Handler::Metrics => Ok(metrics(&app)),
        Handler::Asset => asset(&app, path, req.headers()),
    }
}

/// A WebSocket handshake hyper took: answered `101` (or `200` to an HTTP/2 extended
/// CONNECT), and the connection spawned on the socket (or stream) hyper switches.
async fn upgrade(app: Arc<App>, mut req: Request<Incoming>) -> Result<Response<Body>> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (response, accepted) = if req.method() == Method::CONNECT {
        let protocol = req.extensions().get::<hyper::ext::Protocol>();
        websocket::connect(app.clone(), &req, protocol.map(|p| p.as_str())).await?
    } else {
        websocket::handshake(app.clone(), &req).await?
    };
    // An HTTP/2 stream stays counted in flight for the WebSocket's life.
    let held = req.extensions_mut().remove::<crate::http::HeldStream>();
    app.streams.spawn(async move {
        let _held = held;
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                accepted.run_upgraded(io).await
            }
            Err(err) => tracing::debug!(error = %err, "websocket upgrade failed"),
        }
    });
    Ok(response)
}

/// A static file, if it is served (the demo's only with `demo = true`).
fn asset(app: &App, path: &str, headers: &HeaderMap) -> Result<Response<Body>> {
    match assets::find(path, app.config.demo) {
        Some(asset) => Ok(assets::serve(asset, headers)),
        None => Err(Error::NotFound(crate::protocol::truncate_for_message(path))),
    }
}

fn enabled(app: &App, transport: Transport) -> Result<()> {
    if app.config.enabled(transport) {
        Ok(())
    } else {
        Err(Error::TransportDisabled(transport.name()))
    }
}

/// Liveness: the process serves. Reports the engine without failing on it, so that an
/// orchestrator does not restart gateways because Redis blinked.
fn health(app: &App) -> Response<Body> {
    if app.shutdown.is_cancelled() {
        return error_response(&Error::ShuttingDown);
    }
    json(StatusCode::OK, liveness(app))
}

/// The body of a live gateway's `/healthz`: it serves, and whether its engine answers.
pub fn liveness(app: &App) -> String {
    let (engine, up) = app.bus.engine_health();
    format!(r#"{{"status":"ok","engine":"{engine}","engine_up":{up}}}"#)
}

/// Readiness: the gateway can carry messages right now (its engine answers).
fn ready(app: &App) -> Result<Response<Body>> {
    if app.shutdown.is_cancelled() {
        return Err(Error::ShuttingDown);
    }
    let (engine, up) = app.bus.engine_health();
    if !up {
        return Err(Error::EngineUnavailable(format!(
            "the {engine} engine does not answer"
        )));
    }
    Ok(json(
        StatusCode::OK,
        format!(r#"{{"status":"ready","engine":"{engine}"}}"#),
    ))
}

fn metrics(app: &App) -> Response<Body> {
    app.metrics
        .active_channels
        .set(app.bus.active_channels() as i64);
    app.metrics
        .fanout_backlog
        .set(app.bus.backlog().queued() as i64);
    let mut response = Response::new(full(app.metrics.encode()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
