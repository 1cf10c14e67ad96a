//! TLS for tests: certificates made at run time (rcgen; nothing private is committed), a
//! gateway serving them, and clients over TLS on HTTP/1.1 and HTTP/2, WebSockets
//! included (`wss://`, and RFC 8441 extended CONNECT on an HTTP/2 stream).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cascade::config::Config;
use http_body_util::{Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::{TestServer, WsClient, status_and_body, test_config, within};

/// A certificate for `localhost` and 127.0.0.1 and its key, as PEM files in a directory
/// of their own (removed on drop).
pub struct TestCert {
    pub dir: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The certificate, for a client to trust.
    pub der: CertificateDer<'static>,
}

impl TestCert {
    /// A new self-signed ECDSA P-256 certificate.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "cascade-tls-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cert = TestCert {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            dir,
            der: CertificateDer::from(Vec::new()),
        };
        cert.renew()
    }

    /// A new certificate in the same files (a renewal, as certbot's).
    pub fn renew(mut self) -> Self {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let made = rcgen::generate_simple_self_signed(names).expect("rcgen");
        write_atomically(&self.key_file, made.signing_key.serialize_pem().as_bytes());
        write_atomically(&self.cert_file, made.cert.pem().as_bytes());
        self.der = made.cert.der().clone();
        self
    }

    /// A self-signed RSA (2048-bit) certificate, its key in PKCS#8.
    pub fn rsa() -> Self {
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        use rsa::{Generate, PrivateKey};
        let mut cert = Self::new();
        let key = PrivateKey::generate()
            .to_pkcs8_pem(LineEnding::LF)
            .expect("pkcs8");
        let pair = rcgen::KeyPair::from_pem_and_sign_algo(&key, &rcgen::PKCS_RSA_SHA256)
            .expect("rsa key pair");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let made = rcgen::CertificateParams::new(names)
            .and_then(|params| params.self_signed(&pair))
            .expect("rsa certificate");
        write_atomically(&cert.key_file, key.as_bytes());
        write_atomically(&cert.cert_file, made.pem().as_bytes());
        cert.der = made.der().clone();
        cert
    }

    /// The gateway's config with this certificate.
    pub fn config(&self) -> Config {
        let mut config = test_config();
        config.tls.cert_file = self.cert_file.display().to_string();
        config.tls.key_file = self.key_file.display().to_string();
        config
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `bytes` to `path` through a rename, as a deploy should.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let next = path.with_extension("next");
    std::fs::write(&next, bytes).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

/// Which HTTP a client asks for in its ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    H2,
}

/// A client's TLS config that trusts `cert` only and offers `alpn`.
pub fn client_config(cert: &CertificateDer<'static>, alpn: Alpn) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).expect("trust the test cert");
    // The gateway's provider (deprecated only for lacking post-quantum key exchange).
    #[allow(deprecated)]
    let provider = ring::default_provider();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = match alpn {
        Alpn::Http1 => vec![b"http/1.1".to_vec()],
        Alpn::H2 => vec![b"h2".to_vec()],
    };
    config
}

/// A TLS connection to `addr` that trusts `cert` only and offers `alpn`.
pub async fn connect(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
    alpn: Alpn,
) -> TlsStream<TcpStream> {
    let config = client_config(cert, alpn);
    let tcp = within(TcpStream::connect(addr)).await.expect("tcp connect");
    let name = ServerName::try_from("localhost").expect("name");
    within(TlsConnector::from(Arc::new(config)).connect(name, tcp))
        .await
        .expect("tls handshake")
}

/// The leaf certificate the gateway at `addr` presents.
pub async fn presented(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
) -> Option<CertificateDer<'static>> {
    let tls = connect(addr, trusted, Alpn::Http1).await;
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first().cloned())
}

/// An HTTP/2 connection over TLS: send requests on it with [`H2::get`], [`H2::websocket`].
pub struct H2 {
    pub sender: http2::SendRequest<Full<Bytes>>,
}

impl H2 {
    pub async fn connect(addr: SocketAddr, cert: &CertificateDer<'static>) -> Self {
        Self::connect_with(addr, cert, http2::Builder::new(TokioExecutor::new())).await
    }

    /// Connects as Chromium does, with its receive windows (6 MiB a stream, 15 MiB the
    /// connection), not hyper's smaller defaults (2 MiB, 5 MiB).
    pub async fn connect_like_chromium(addr: SocketAddr, cert: &CertificateDer<'static>) -> Self {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .initial_stream_window_size(6 * 1024 * 1024)
            .initial_connection_window_size(15 * 1024 * 1024);
        Self::connect_with(addr, cert, builder).await
    }

    /// Connects with `builder`'s settings.
    pub async fn connect_with(
        addr: SocketAddr,
        cert: &CertificateDer<'static>,
        builder: http2::Builder<TokioExecutor>,
    ) -> Self {
        let tls = connect(addr, cert, Alpn::H2).await;
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "the gateway chose h2"
        );
        let (sender, conn) = builder
            .handshake(TokioIo::new(tls))
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        H2 { sender }
    }

    /// Sends `req`; the response head, its body left to the caller.
    pub async fn send(
        &mut self,
        req: hyper::Request<Full<Bytes>>,
    ) -> hyper::Response<hyper::body::Incoming> {
        within(self.sender.ready()).await.expect("h2 ready");
        within(self.sender.send_request(req))
            .await
            .expect("h2 request")
    }

    /// GETs `path`: status and body.
    pub async fn get(&mut self, path: &str) -> (u16, Bytes) {
        let req = hyper::Request::get(format!("https://localhost{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = self.send(req).await;
        status_and_body(response).await
    }

    /// A WebSocket on a new stream of this connection (RFC 8441).
    pub async fn websocket(&mut self) -> WsClient<TokioIo<hyper::upgrade::Upgraded>> {
        let stream = self.extended_connect().await;
        let ws = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
        WsClient { ws }
    }

    /// A new stream of this connection opened to `/ws` by an extended CONNECT (RFC 8441),
    /// ready for WebSocket frames.
    pub async fn extended_connect(&mut self) -> TokioIo<hyper::upgrade::Upgraded> {
        let mut req = hyper::Request::connect("https://localhost/ws")
            .header("sec-websocket-version", "13")
            .body(Full::new(Bytes::new()))
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let response = self.send(req).await;
        assert_eq!(response.status(), 200, "extended CONNECT is answered 200");
        let upgraded = within(hyper::upgrade::on(response))
            .await
            .expect("upgraded stream");
        TokioIo::new(upgraded)
    }
}

/// A WebSocket over `wss://` on HTTP/1.1.
pub async fn wss(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
) -> WsClient<TlsStream<TcpStream>> {
    let tls = connect(addr, cert, Alpn::Http1).await;
    let (ws, _) = within(tokio_tungstenite::client_async("wss://localhost/ws", tls))
        .await
        .expect("wss handshake");
    WsClient { ws }
}

/// One HTTP/1.1 GET over TLS: status and body.
pub async fn https1_get(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
    path: &str,
) -> (u16, Bytes) {
    let tls = connect(addr, cert, Alpn::Http1).await;
    let (mut sender, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within(sender.send_request(req)).await.expect("h1 request");
    status_and_body(response).await
}

/// A gateway over TLS with `cert`, and `config` for the rest.
pub async fn start(cert: &TestCert, edit: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = cert.config();
    edit(&mut config);
    TestServer::start(config).await
}
