//! One WebSocket test on each wire a client may come by: plain `ws://`, `wss://` on
//! HTTP/1.1 (ALPN http/1.1), and RFC 8441 extended CONNECT on an HTTP/2 stream over TLS
//! (ALPN h2). A [`Gateway`] serves the wire, opens WebSockets on it, and makes the HTTP
//! calls a test needs beside them (publish, metrics) on the same listener.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use cascade::config::Config;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::tls::{self, Alpn, H2, TestCert};
use super::{
    DEADLINE, TestServer, WsClient, metric_value, raw_ws, status_and_body, test_config, within,
};

/// A byte stream a WebSocket runs on, whichever the wire.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A WebSocket client on any wire.
pub type Ws = WsClient<Box<dyn Io>>;

/// How a client reaches the gateway's WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// `ws://`: HTTP/1.1 Upgrade on a plain TCP connection.
    Plain,
    /// `wss://`: HTTP/1.1 Upgrade on a TLS connection whose ALPN chose http/1.1.
    TlsH1,
    /// An extended CONNECT stream of an HTTP/2 connection over TLS (ALPN h2), one
    /// connection per WebSocket, as a plain client has one TCP connection per WebSocket.
    TlsH2,
}

/// A gateway serving one wire; drained when dropped.
pub struct Gateway {
    pub server: TestServer,
    pub wire: Wire,
    /// The certificate of a TLS wire (its files live as long as the gateway).
    cert: Option<TestCert>,
    http: Http,
}

impl Gateway {
    /// A gateway with `config`, given a test certificate when `wire` is over TLS.
    pub async fn start(wire: Wire, mut config: Config) -> Self {
        let cert = (wire != Wire::Plain).then(TestCert::new);
        if let Some(cert) = &cert {
            config.tls.cert_file = cert.cert_file.display().to_string();
            config.tls.key_file = cert.key_file.display().to_string();
        }
        let server = TestServer::start(config).await;
        let http = match &cert {
            None => Http::Plain(super::http(), server.url("")),
            Some(cert) => {
                // hyper-rustls sets the ALPN itself (http/1.1, the only one enabled).
                let mut config = tls::client_config(&cert.der, Alpn::Http1);
                config.alpn_protocols.clear();
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only()
                    .enable_http1()
                    .build();
                let client = Client::builder(TokioExecutor::new()).build(connector);
                Http::Tls(client, format!("https://{}", server.addr))
            }
        };
        Gateway {
            server,
            wire,
            cert,
            http,
        }
    }

    /// A gateway with [`test_config`].
    pub async fn default(wire: Wire) -> Self {
        Self::start(wire, test_config()).await
    }

    /// The gateway's configuration.
    pub fn config(&self) -> &Config {
        &self.server.app.config
    }

    /// An HTTP client of this gateway (over TLS on the TLS wires), for calls beside the
    /// WebSockets.
    pub fn http(&self) -> Http {
        self.http.clone()
    }

    /// Publishes over HTTP; returns (epoch, offset).
    pub async fn publish(&self, channel: &str, data: Value) -> (String, u64) {
        self.http.publish(channel, data).await
    }

    /// The value of one sample line in /metrics.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.http.get_text("/metrics").await, series)
    }

    fn cert(&self) -> &TestCert {
        self.cert.as_ref().expect("a TLS wire has a certificate")
    }

    /// A fresh connection that will speak HTTP/1.1: a TCP connection, or a TLS one whose
    /// ALPN chose http/1.1. There is none on the HTTP/2 wire.
    pub async fn http1_connection(&self) -> Box<dyn Io> {
        match self.wire {
            Wire::Plain => Box::new(within(TcpStream::connect(self.server.addr)).await.unwrap()),
            Wire::TlsH1 => {
                let tls = tls::connect(self.server.addr, &self.cert().der, Alpn::Http1).await;
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
                Box::new(tls)
            }
            Wire::TlsH2 => panic!("no HTTP/1.1 connection on the HTTP/2 wire"),
        }
    }

    /// A new HTTP/2 connection's extended CONNECT stream to `/ws`, on which the gateway
    /// speaks WebSocket frames from the first byte.
    async fn h2_stream(&self) -> Box<dyn Io> {
        // A browser's windows: with hyper's 2 MiB a stream, a client that pings while it
        // reads nothing fills its window sooner than a loopback TCP socket's buffers, and
        // owes more pongs than the gateway allows (`MAX_PONGS_OWED`, docs/SECURITY.md).
        let mut h2 = H2::connect_like_chromium(self.server.addr, &self.cert().der).await;
        // The server's SETTINGS (SETTINGS_ENABLE_CONNECT_PROTOCOL among them) precede its
        // first answer: after one, hyper lets an extended CONNECT go.
        assert_eq!(h2.get("/healthz").await.0, 200);
        let stream = h2.extended_connect().await;
        Box::new(H2Stream {
            stream,
            _connection: h2,
        })
    }

    /// A WebSocket client on this gateway's wire.
    pub async fn ws(&self) -> Ws {
        let ws = match self.wire {
            Wire::Plain | Wire::TlsH1 => {
                let scheme = if self.wire == Wire::Plain {
                    "ws"
                } else {
                    "wss"
                };
                let url = format!("{scheme}://{}/ws", self.server.addr);
                let stream = self.http1_connection().await;
                within(tokio_tungstenite::client_async(url, stream))
                    .await
                    .expect("websocket handshake")
                    .0
            }
            Wire::TlsH2 => {
                let stream = self.h2_stream().await;
                WebSocketStream::from_raw_socket(stream, Role::Client, None).await
            }
        };
        WsClient { ws }
    }

    /// A hand-rolled WebSocket client on this gateway's wire (see [`raw_ws`]).
    pub async fn raw_ws(&self) -> raw_ws::RawWs<Box<dyn Io>> {
        match self.wire {
            Wire::Plain | Wire::TlsH1 => {
                let stream = self.http1_connection().await;
                raw_ws::handshake(stream, &self.server.addr.to_string()).await
            }
            Wire::TlsH2 => raw_ws::upgraded(self.h2_stream().await),
        }
    }
}

/// An extended CONNECT stream and the HTTP/2 connection it is a stream of, held together
/// so that the connection's handle lives as long as the WebSocket.
struct H2Stream {
    stream: TokioIo<hyper::upgrade::Upgraded>,
    _connection: H2,
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// An HTTP client of one gateway, cheap to clone: reqwest on plain HTTP, hyper's pooled
/// client over rustls (trusting the test certificate only) on TLS.
#[derive(Clone)]
pub enum Http {
    Plain(reqwest::Client, String),
    Tls(
        Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
        String,
    ),
}

impl Http {
    /// Sends `method path` with `body`; status and body.
    async fn request(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Bytes) {
        match self {
            Http::Plain(client, base) => {
                let mut req = client.request(method, format!("{base}{path}"));
                if let Some(body) = body {
                    req = req.json(&body);
                }
                let response = req.send().await.expect("request");
                let status = response.status().as_u16();
                (status, response.bytes().await.expect("body"))
            }
            Http::Tls(client, base) => {
                let mut req = hyper::Request::builder()
                    .method(method)
                    .uri(format!("{base}{path}"));
                if body.is_some() {
                    req = req.header("content-type", "application/json");
                }
                let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
                let req = req.body(Full::new(body)).unwrap();
                let response = tokio::time::timeout(DEADLINE, client.request(req))
                    .await
                    .expect("timed out waiting for a response")
                    .expect("request");
                status_and_body(response).await
            }
        }
    }

    /// Publishes `data` to `channel`; returns (epoch, offset).
    pub async fn publish(&self, channel: &str, data: Value) -> (String, u64) {
        let body = serde_json::json!({"channel": channel, "data": data});
        let (status, body) = self
            .request(hyper::Method::POST, "/publish", Some(body))
            .await;
        assert_eq!(status, 200, "publish to {channel}: {body:?}");
        let body: Value = serde_json::from_slice(&body).expect("publish body");
        (
            body["epoch"].as_str().expect("epoch").to_owned(),
            body["offset"].as_u64().expect("offset"),
        )
    }

    /// The body of `GET path`, as text.
    pub async fn get_text(&self, path: &str) -> String {
        let (status, body) = self.request(hyper::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}");
        String::from_utf8(body.to_vec()).expect("utf-8")
    }
}
