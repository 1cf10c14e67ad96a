//! THE route table: every route declared once, with what the server needs to know before
//! its handler runs. Both HTTP/1 paths dispatch from it: the lean path takes a request
//! only for a route marked `lean`, and keeps only the headers its route `reads`; hyper's
//! router answers `405` with the route's `Allow`; `/negotiate` names the transports'
//! paths from [`Transport::path`].

use http::Method;

use crate::bus::control::Op;
use crate::config::Transport;
use crate::http::Verb;
use crate::http1::LeanRoute;
use crate::transport::assets;

/// Who answers a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    /// A rung of the ladder, if the operator enabled it.
    Transport(Transport),
    /// `/negotiate`: the ladder, and failures reported.
    Negotiate,
    /// `POST /publish`.
    Publish,
    /// `POST /rpc`: a call to the application's backend.
    Rpc,
    /// `GET /presence`: who is in a channel.
    Presence,
    /// `POST /subscribe`, `/unsubscribe`, `/disconnect`: the server API.
    Server(Op),
    /// `/socket.io/`: Engine.IO 4 / Socket.IO 5 (polling and WebSocket).
    SocketIo,
    /// The demo's log-in (`demo = true` only).
    DemoLogin,
    /// Liveness.
    Health,
    /// Readiness.
    Ready,
    /// The Prometheus exposition.
    Metrics,
    /// A static file: the browser client, the demo's files.
    Asset,
}

/// One route.
#[derive(Debug)]
pub struct Route {
    /// The path, exactly; empty for the static files, whose paths are the assets'.
    pub path: &'static str,
    /// The method it answers.
    pub method: Verb,
    /// Whether it answers `HEAD` too (a `GET` without the body).
    pub head: bool,
    /// Its handler.
    pub handler: Handler,
    /// Whether the lean HTTP/1 path may serve it; else the connection goes to hyper.
    pub lean: bool,
    /// Whether its handler holds the connection (to cut a stream off, for the publish
    /// budget), and so the lean path hands it the connection's info.
    pub conn: bool,
    /// Whether it may upgrade the connection (to a WebSocket).
    pub upgrade: bool,
    /// Request headers its handler reads besides those every route's admission reads
    /// (`Origin`, `Host`, the credentials; a trusted proxy's forwarding headers). The lean
    /// path keeps no other: a handler that starts reading a header must be given it here.
    pub reads: &'static [&'static str],
}

/// Liveness's path, which the accept loop answers too for a connection over the limits.
pub const HEALTHZ: &str = "/healthz";

/// A `GET` route with no special needs.
const fn get(path: &'static str, handler: Handler, lean: bool, head: bool) -> Route {
    Route {
        path,
        method: Verb::Get,
        head,
        handler,
        lean,
        conn: false,
        upgrade: false,
        reads: &[],
    }
}

/// Every route but the static files (see [`ASSET`]).
static ROUTES: [Route; 16] = [
    Route {
        conn: true,
        upgrade: true,
        reads: &[
            "upgrade",
            "connection",
            "sec-websocket-version",
            "sec-websocket-key",
        ],
        ..get(
            Transport::Websocket.path(),
            Handler::Transport(Transport::Websocket),
            true,
            false,
        )
    },
    Route {
        conn: true,
        // What an SSE client resumes from.
        reads: &["last-event-id"],
        ..get(
            Transport::Sse.path(),
            Handler::Transport(Transport::Sse),
            true,
            false,
        )
    },
    get(
        Transport::Longpoll.path(),
        Handler::Transport(Transport::Longpoll),
        true,
        false,
    ),
    get(
        Transport::Poll.path(),
        Handler::Transport(Transport::Poll),
        true,
        false,
    ),
    get("/negotiate", Handler::Negotiate, true, false),
    // The connection carries the publish budget.
    Route {
        method: Verb::Post,
        conn: true,
        ..get("/publish", Handler::Publish, true, false)
    },
    // Not lean: rare beside polls, and its body is read by hyper's path.
    Route {
        method: Verb::Post,
        ..get("/rpc", Handler::Rpc, false, false)
    },
    // Not lean: rare, and asked of the engine.
    get("/presence", Handler::Presence, false, false),
    // The server API: backends only, rare.
    Route {
        method: Verb::Post,
        ..get("/subscribe", Handler::Server(Op::Subscribe), false, false)
    },
    Route {
        method: Verb::Post,
        ..get(
            "/unsubscribe",
            Handler::Server(Op::Unsubscribe),
            false,
            false,
        )
    },
    Route {
        method: Verb::Post,
        ..get("/disconnect", Handler::Server(Op::Disconnect), false, false)
    },
    Route {
        method: Verb::Post,
        ..get("/demo/login", Handler::DemoLogin, false, false)
    },
    // Not lean: its polls are read and written by hyper, and its WebSocket is upgraded
    // there (tokio-tungstenite over hyper's upgraded connection).
    Route {
        method: Verb::GetOrPost,
        upgrade: true,
        ..get(
            crate::transport::socketio::PATH,
            Handler::SocketIo,
            false,
            false,
        )
    },
    get(HEALTHZ, Handler::Health, false, true),
    get("/readyz", Handler::Ready, false, true),
    get("/metrics", Handler::Metrics, false, true),
];

/// The static files: the browser client's script, which a page may load from the gateway
/// on the connection its client then polls on, and the demo's files.
static ASSET: Route = Route {
    reads: &["if-none-match"],
    ..get("", Handler::Asset, true, true)
};

/// The route at `path`, whatever the method.
pub fn find(path: &str) -> Option<&'static Route> {
    ROUTES
        .iter()
        .find(|route| route.path == path)
        .or_else(|| assets::is_asset_path(path).then_some(&ASSET))
}

impl Route {
    /// Whether it answers `method`.
    pub fn allows(&self, method: &Method) -> bool {
        match self.method {
            // RFC 8441: a WebSocket on an HTTP/2 stream is an extended CONNECT.
            Verb::Get => {
                *method == Method::GET
                    || (self.head && *method == Method::HEAD)
                    || (self.upgrade && *method == Method::CONNECT)
            }
            Verb::Post => *method == Method::POST,
            Verb::GetOrPost => *method == Method::GET || *method == Method::POST,
        }
    }

    /// The `Allow` header of its `405`.
    pub fn allow(&self) -> &'static str {
        match (self.method, self.head) {
            (Verb::Post, _) => "POST",
            (Verb::GetOrPost, _) => "GET, POST",
            (_, true) => "GET, HEAD",
            _ => "GET",
        }
    }

    /// What the HTTP/1 path needs of it, if it may serve it.
    pub fn lean(&self) -> Option<LeanRoute> {
        self.lean.then_some(LeanRoute {
            method: self.method,
            conn: self.conn,
            upgrade: self.upgrade,
            reads: self.reads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_declared_once() {
        for (i, route) in ROUTES.iter().enumerate() {
            assert!(
                ROUTES[i + 1..].iter().all(|other| other.path != route.path),
                "{} twice",
                route.path
            );
            assert!(
                !assets::is_asset_path(route.path),
                "{} is an asset",
                route.path
            );
        }
    }

    #[test]
    fn methods_and_allow_follow_the_table() {
        let sse = find("/sse").unwrap();
        assert!(sse.allows(&Method::GET) && !sse.allows(&Method::HEAD));
        assert!(!sse.allows(&Method::CONNECT));
        assert!(find("/ws").unwrap().allows(&Method::CONNECT));
        assert_eq!(sse.allow(), "GET");
        let health = find("/healthz").unwrap();
        assert!(health.allows(&Method::HEAD));
        assert_eq!(health.allow(), "GET, HEAD");
        assert_eq!(find("/publish").unwrap().allow(), "POST");
        assert_eq!(find("/cascade.js").unwrap().handler, Handler::Asset);
        assert!(find("/nowhere").is_none());
        let lean = |path| find(path).and_then(Route::lean).unwrap();
        assert!(lean("/ws").reads("Sec-WebSocket-Key").is_some());
        assert!(lean("/poll").reads("Last-Event-ID").is_none());
        assert!(find("/metrics").unwrap().lean().is_none());
    }
}
