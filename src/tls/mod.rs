//! TLS termination: the certificate (reloaded without a restart), the rustls settings,
//! and [`TlsSocket`], a finished session over its TCP socket that keeps the
//! [`crate::socket::Socket`] contract, so that TLS connections take the lean HTTP/1 path
//! and the express writes like plain ones. Knows rustls and files, not HTTP: the server
//! decides what a connection speaks from its ALPN.
//!
//! Settings, and why: TLS 1.3 and 1.2 only; ALPN `h2` then `http/1.1`; the `ring`
//! provider (as the hooks' client); no TLS 1.3 session tickets (each costs a write and a
//! ticket's worth of memory on every connection, and a gateway's clients reconnect rarely;
//! TLS 1.2 session IDs are still resumed from rustls' bounded in-memory cache).
//!
//! Reload: the files are read again on SIGHUP ([`Tls::reload`]) and whenever either
//! file's modification time or size changes (checked every `tls.reload_check_ms`). A new
//! pair that does not load (unreadable, not PEM, a key that does not match) is logged and
//! counted (`tls_reload_failed`), and the old certificate stays. Open connections keep
//! the session they have; new handshakes get the new certificate.

mod socket;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::config::TlsConfig;
use crate::error::ConfigError;
use crate::sync::{Unpoisoned, UnpoisonedRw};

pub use socket::TlsSocket;

/// ALPN ids offered, best first.
pub const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Most plaintext a session encrypts ahead of what its socket takes (rustls' own default
/// is 64 KiB): the gateway writes a frame only when the last one left, so this bounds one
/// frame's backlog.
pub const SEND_BUFFER_LIMIT: usize = 64 * 1024;

/// The gateway's TLS: what handshakes, and the files its certificate came from.
pub struct Tls {
    acceptor: TlsAcceptor,
    certs: Arc<Certs>,
    cert_file: PathBuf,
    key_file: PathBuf,
    /// The files as last loaded (or last found unloadable), to see a change.
    seen: Mutex<Option<Stamp>>,
    /// How long a handshake may take.
    pub handshake_within: Duration,
    check_every: Duration,
    /// Counts reloads that kept the old pair.
    failed: IntCounter,
}

/// A file pair's modification times and sizes.
type Stamp = [(SystemTime, u64); 2];

impl Tls {
    /// TLS as `config` says, or `None` when it names no certificate; an error when the
    /// files do not load.
    /// `failed` counts the reloads that kept the old pair.
    pub fn from_config(
        config: &TlsConfig,
        failed: IntCounter,
    ) -> Result<Option<Arc<Self>>, ConfigError> {
        if !config.enabled() {
            return Ok(None);
        }
        let cert_file = PathBuf::from(&config.cert_file);
        let key_file = PathBuf::from(&config.key_file);
        let seen = stamp(&cert_file, &key_file);
        let key = load(&cert_file, &key_file).map_err(ConfigError)?;
        let certs = Arc::new(Certs(RwLock::new(key)));
        let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
        // Deprecated in rustls 0.23.48 for lacking post-quantum key exchange, which only
        // the aws-lc-rs provider has; ring is this stack's choice (see Cargo.toml).
        #[allow(deprecated)]
        let ring = provider::default_provider();
        let mut server = ServerConfig::builder_with_provider(Arc::new(ring))
            .with_protocol_versions(&versions)
            .map_err(|err| ConfigError(format!("tls: {err}")))?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        server.send_tls13_tickets = 0;
        Ok(Some(Arc::new(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            certs,
            cert_file,
            key_file,
            seen: Mutex::new(seen),
            handshake_within: Duration::from_millis(config.handshake_timeout_ms()),
            check_every: Duration::from_millis(config.reload_check_ms()),
            failed,
        })))
    }

    /// What runs a server-side handshake on a socket.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the certificate and key again; on failure logs it and keeps the old pair.
    /// Whether the new pair is served.
    pub fn reload(&self) -> bool {
        *self.seen.locked() = stamp(&self.cert_file, &self.key_file);
        match load(&self.cert_file, &self.key_file) {
            Ok(key) => {
                *self.certs.0.writing() = key;
                tracing::info!(cert_file = %self.cert_file.display(), "tls certificate reloaded");
                true
            }
            Err(err) => {
                self.failed.inc();
                tracing::error!(error = %err, "tls certificate not reloaded; serving the previous one");
                false
            }
        }
    }

    /// Reloads whenever either file changes, until `stop` resolves.
    pub async fn watch(self: Arc<Self>, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.check_every) => {}
                () = &mut stop => return,
            }
            let now = stamp(&self.cert_file, &self.key_file);
            let changed = *self.seen.locked() != now;
            // A file half written (a deploy that copies over it) fails to load and is
            // tried again at the next change, which its last write is.
            if changed {
                self.reload();
            }
        }
    }

    /// Opens a session for a connection whose handshake is done.
    pub(crate) fn socket(tcp: tokio::net::TcpStream, mut session: ServerConnection) -> TlsSocket {
        session.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
        TlsSocket::new(tcp, session)
    }
}

/// The modification times and sizes of the two files, when both can be read.
fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    let one = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    Some([one(cert)?, one(key)?])
}

/// The certificate chain and its key from PEM files, checked to match.
fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| format!("tls.cert_file {}: {err}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls.cert_file {}: no CERTIFICATE in it",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|err| format!("tls.key_file {}: {err}", key_file.display()))?;
    let signer = provider::sign::any_supported_type(&key)
        .map_err(|err| format!("tls.key_file {}: {err}", key_file.display()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|err| {
        format!(
            "tls: the key in {} is not the certificate's in {}: {err}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// The certificate served, swapped by a reload.
#[derive(Debug)]
struct Certs(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Certs {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.reading().clone())
    }
}
