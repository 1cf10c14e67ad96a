//! The router as the hand-written HTTP/1 path ([`crate::http1`]) sees it: the lean routes
//! of the one table, the admission before a body is read, and the routing, with the same
//! origin checks, CORS headers and error answers as hyper's path.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http::header::{self, HeaderName};
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFuture;

use super::table::{self, Handler};
use super::{Admission, answer, asset, enabled};
use crate::app::App;
use crate::config::{Config, Transport};
use crate::error::{Error, Result};
use crate::http::{Body, LeanRequest, RequestHead};
use crate::http1::{Kept, LeanRoute, Limits, Router};
use crate::transport::{long_poll, negotiate, publish, short_poll, sse, websocket};

impl Router for App {
    type Carry = long_poll::Carry;
    type Upgrade = Box<websocket::Accepted>;
    fn lean_route(path: &str) -> Option<LeanRoute> {
        table::find(path).and_then(table::Route::lean)
    }

    fn admission_reads(&self, name: &str) -> Option<HeaderName> {
        // Compared as text first: a name is made only for a header kept (a browser sends
        // a dozen, nearly all dropped).
        let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
        if is("origin") {
            Some(header::ORIGIN)
        } else if is("authorization") {
            Some(header::AUTHORIZATION)
        } else if is(crate::auth::API_KEY_HEADER) {
            Some(crate::auth::API_KEY)
        } else {
            // The connect hook is given the headers the operator names (cookies): a
            // client's request may begin its session on any rung.
            let hooks = self.hooks.as_ref()?;
            hooks
                .forwarded_headers()
                .iter()
                .find(|kept| is(kept.as_str()))
                .cloned()
        }
    }

    fn limits(&self) -> Limits {
        let limits = &self.config.limits;
        Limits {
            header_timeout: Config::ms(limits.header_read_timeout_ms),
            body_timeout: Config::ms(limits.body_read_timeout_ms),
            max_body: limits.max_body_bytes,
        }
    }

    fn draining(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    fn drain_started(&self) -> WaitForCancellationFuture<'_> {
        self.shutdown.cancelled()
    }

    fn count(&self, code: &'static str) {
        self.metrics.error(code);
    }

    async fn admit(&self, req: &mut LeanRequest) -> Result<()> {
        let caller = super::admit_caller(self, &*req).await?;
        req.admit(caller);
        Ok(())
    }

    fn route<'t>(
        router: Arc<Self>,
        req: Box<LeanRequest>,
        kept: Kept<Self>,
        timer: Pin<&'t mut Sleep>,
    ) -> impl Future<Output = (Response<Body>, Kept<Self>)> + Send + 't {
        handle_lean(router, req, kept, timer)
    }
}

/// Routes a request taken by the server's lean HTTP/1 path (`GET /sse`, `/longpoll`,
/// `/poll`, `/negotiate` and `/ws`, their `OPTIONS` preflights, and `POST /publish`), with
/// the same origin checks, CORS headers and error answers; with the accepted WebSocket
/// handshake when the answer is `101`.
///
/// The request comes boxed: a parked long poll sits under these async layers, and each
/// would otherwise keep its own room for the request for as long as the poll waits.
/// `timer` is the connection's, lent for a long poll's hold.
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
pub fn handle_lean<'t>(
    app: Arc<App>,
    req: Box<LeanRequest>,
    mut kept: Kept<App>,
    timer: Pin<&'t mut Sleep>,
) -> impl Future<Output = (Response<Body>, Kept<App>)> + Send + 't {
    // `async move` blocks here and in `answer`, not async fns: a parked long poll keeps
    // these futures, and an async fn keeps its arguments twice.
    async move {
        let admission = Admission::of(&app, req.headers(), req.is_preflight());
        let response = answer(app, admission, req, |app, req| {
            route_lean(app, req, &mut kept, timer)
        })
        .await;
        (response, kept)
    }
}

/// The routes the HTTP/1 path takes (those the table marks `lean`); it asks for nothing
/// else.
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
fn route_lean<'a>(
    app: Arc<App>,
    req: Box<LeanRequest>,
    kept: &'a mut Kept<App>,
    timer: Pin<&'a mut Sleep>,
) -> impl Future<Output = Result<Response<Body>>> + Send + 'a {
    async move {
        let Some(route) = table::find(req.path()).filter(|route| route.lean) else {
            return Err(Error::NotFound(crate::protocol::truncate_for_message(
                req.path(),
            )));
        };
        if route.handler != Handler::Transport(Transport::Longpoll) {
            kept.carry = None;
        }
        match route.handler {
            Handler::Transport(transport) => {
                enabled(&app, transport)?;
                match transport {
                    Transport::Websocket => {
                        let (response, accepted) =
                            Box::pin(websocket::handshake(app, &*req)).await?;
                        kept.upgrade = Some(accepted);
                        Ok(response)
                    }
                    Transport::Sse => Box::pin(sse::serve(app, *req)).await,
                    Transport::Poll => Box::pin(short_poll::serve(app, *req)).await,
                    // Not boxed, unlike the others: a parked poll keeps this future, and
                    // one allocation for the routing and the poll together is smaller
                    // than two.
                    Transport::Longpoll => long_poll::serve(app, req, &mut kept.carry, timer).await,
                }
            }
            Handler::Negotiate => Box::pin(negotiate::serve(app, *req)).await,
            // The connection's loop admitted the caller and read the body, or says why
            // it did neither; a request with no body is admitted here.
            Handler::Publish => {
                Box::pin(async move {
                    let mut req = req;
                    let (body, who) = match req.take_body()? {
                        Some(read) => read,
                        None => (Bytes::new(), super::admit_caller(&app, &*req).await?),
                    };
                    publish::publish(&app, &who, &body).await
                })
                .await
            }
            Handler::Asset => asset(&app, req.path(), req.headers()),
            // Not lean: `find` above filtered them out.
            Handler::Rpc
            | Handler::Presence
            | Handler::Server(_)
            | Handler::DemoLogin
            | Handler::SocketIo
            | Handler::Health
            | Handler::Ready
            | Handler::Metrics => Err(Error::NotFound(crate::protocol::truncate_for_message(
                req.path(),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::kept;

    #[tokio::test]
    async fn only_headers_the_routes_read_are_kept() {
        let find = |path| table::find(path).and_then(table::Route::lean).unwrap();
        let (sse, poll, ws) = (&find("/sse"), &find("/poll"), &find("/ws"));
        let app = App::new(Config::default()).unwrap();
        let kept = |route, name, origin, proxied| kept(&*app, route, name, origin, proxied);
        assert_eq!(
            kept(poll, "Origin", false, false),
            Some(http::header::ORIGIN)
        );
        assert_eq!(
            kept(poll, "X-Cascade-API-Key", false, false)
                .unwrap()
                .as_str(),
            crate::auth::API_KEY_HEADER
        );
        assert_eq!(
            kept(sse, "LAST-EVENT-ID", false, false).unwrap().as_str(),
            "last-event-id"
        );
        assert_eq!(kept(poll, "Last-Event-ID", false, false), None);
        assert_eq!(
            kept(ws, "Sec-WebSocket-Key", false, false),
            Some(http::header::SEC_WEBSOCKET_KEY)
        );
        assert_eq!(kept(sse, "Sec-WebSocket-Key", false, false), None);
        assert_eq!(kept(poll, "Host", true, false), Some(http::header::HOST));
        assert_eq!(kept(poll, "Host", false, false), None);
        for dropped in [
            "User-Agent",
            "Accept",
            "Cookie",
            "Sec-Fetch-Mode",
            "Referer",
        ] {
            assert_eq!(kept(sse, dropped, true, false), None, "{dropped}");
        }
        assert_eq!(kept(poll, "X-Forwarded-For", false, false), None);
        // With a connect hook, what it is given is kept on every route.
        let mut config = Config::default();
        config.hooks.url = "http://127.0.0.1:9".into();
        let hooked = App::new(config).unwrap();
        for name in ["Cookie", "user-agent", "X-Forwarded-For"] {
            assert!(
                crate::http1::kept(&*hooked, poll, name, false, false).is_some(),
                "{name}"
            );
        }
        assert_eq!(
            kept(poll, "X-Forwarded-For", false, true).unwrap().as_str(),
            "x-forwarded-for"
        );
        assert_eq!(
            kept(poll, "Forwarded", false, true),
            Some(http::header::FORWARDED)
        );
    }
}
