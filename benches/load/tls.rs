//! `--tls`: the started gateway serves a certificate made for the run (rcgen, in a
//! temporary directory removed afterwards), and every client socket of this generator
//! speaks TLS to it, offering ALPN `http/1.1` (one connection per client, as a browser's
//! WebSocket or a non-browser client's stream). `--h2-streams N` (idle, sse) instead
//! carries the SSE streams N to an HTTP/2 connection, as a browser does: the idle figure
//! is then per stream.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A client socket, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A client socket as the clients hold it.
pub type Stream = Box<dyn Io>;

/// The client settings of a `--tls` run; unset in a plain one.
static CLIENT: OnceLock<(Arc<ClientConfig>, Arc<ClientConfig>)> = OnceLock::new();

/// The run's certificate files, removed on drop.
pub struct Certificate {
    dir: PathBuf,
    /// PEM files for the gateway's `CASCADE_TLS_CERT_FILE` and `CASCADE_TLS_KEY_FILE`.
    pub cert_file: PathBuf,
    /// The key's PEM file.
    pub key_file: PathBuf,
}

impl Drop for Certificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes the run's certificate and has every later client socket trust it over TLS.
pub fn enable() -> Result<Certificate, String> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .map_err(|e| format!("rcgen: {e}"))?;
    let dir = std::env::temp_dir().join(format!("cascade-load-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cert = Certificate {
        cert_file: dir.join("cert.pem"),
        key_file: dir.join("key.pem"),
        dir,
    };
    std::fs::write(&cert.cert_file, made.cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(&cert.key_file, made.signing_key.serialize_pem()).map_err(|e| e.to_string())?;
    let der: CertificateDer<'static> = made.cert.der().clone();
    let config = |alpn: &[u8]| -> Result<Arc<ClientConfig>, String> {
        let mut roots = RootCertStore::empty();
        roots.add(der.clone()).map_err(|e| e.to_string())?;
        // The gateway's provider (deprecated only for lacking post-quantum key exchange).
        #[allow(deprecated)]
        let provider = ring::default_provider();
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        // Thousands of clients in this process: no resumption state kept for them.
        config.resumption = tokio_rustls::rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    };
    let _ = CLIENT.set((config(b"http/1.1")?, config(b"h2")?));
    Ok(cert)
}

/// Whether client sockets speak TLS.
pub fn enabled() -> bool {
    CLIENT.get().is_some()
}

/// A client socket to `addr`: TLS (ALPN `http/1.1`) in a `--tls` run.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<Stream> {
    let tcp = crate::http::connect(addr, source).await?;
    match CLIENT.get() {
        None => Ok(Box::new(tcp)),
        Some((http1, _)) => Ok(Box::new(handshake(http1, tcp).await?)),
    }
}

async fn handshake(
    config: &Arc<ClientConfig>,
    tcp: tokio::net::TcpStream,
) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let name = ServerName::try_from("localhost").expect("a valid name");
    TlsConnector::from(config.clone()).connect(name, tcp).await
}

/// Opens `streams` SSE streams on `path` over one HTTP/2 connection and holds them until
/// `stop`; `opened` is called once per stream whose answer head came (200).
pub async fn h2_sse(
    addr: SocketAddr,
    source: Option<IpAddr>,
    path: &str,
    streams: usize,
    opened: impl Fn(),
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let (_, h2) = CLIENT.get().ok_or("--h2-streams needs --tls")?;
    let tcp = crate::http::connect(addr, source)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let tls = handshake(h2, tcp).await.map_err(|e| format!("tls: {e}"))?;
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let mut bodies = Vec::with_capacity(streams);
    for _ in 0..streams {
        let mut sender = sender.clone();
        sender.ready().await.map_err(|e| format!("h2: {e}"))?;
        let req = hyper::Request::get(format!("https://localhost{path}"))
            .body(Empty::new())
            .expect("a valid request");
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| format!("h2 request: {e}"))?;
        if response.status() != 200 {
            return Err(format!("status {}", response.status()));
        }
        opened();
        bodies.push(response.into_body());
    }
    // Held, and read (heartbeats) so that the flow-control windows stay open.
    let read = async {
        let mut reads: futures_util::stream::FuturesUnordered<_> = bodies
            .into_iter()
            .map(|mut body| async move { while let Some(Ok(_)) = body.frame().await {} })
            .collect();
        use futures_util::StreamExt;
        while reads.next().await.is_some() {}
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = read => {}
    }
    conn.abort();
    Ok(())
}
