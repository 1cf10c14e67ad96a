//! `[tls]`: the certificate the gateway serves HTTPS with, and how long a handshake may
//! take. Off while `cert_file` is empty: the gateway then speaks plain HTTP.

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// `[tls]`: TLS termination in the gateway (HTTP/2 to browsers needs it).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The certificate chain, PEM, leaf first; empty: plain HTTP.
    pub cert_file: String,
    /// The private key of the leaf certificate, PEM (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_file: String,
    /// How long a client may take to finish its handshake, in milliseconds; 0 is the
    /// default (10 000).
    pub handshake_timeout_ms: u64,
    /// How often the two files are checked for a change, in milliseconds; 0 is the
    /// default (10 000). SIGHUP reloads them at once.
    pub reload_check_ms: u64,
}

impl TlsConfig {
    /// The handshake deadline when none is set, in milliseconds.
    pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
    /// The files' check interval when none is set, in milliseconds.
    pub const RELOAD_CHECK_MS: u64 = 10_000;

    /// Whether the gateway serves TLS.
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }

    /// The handshake deadline, in milliseconds.
    pub fn handshake_timeout_ms(&self) -> u64 {
        match self.handshake_timeout_ms {
            0 => Self::HANDSHAKE_TIMEOUT_MS,
            ms => ms,
        }
    }

    /// The files' check interval, in milliseconds.
    pub fn reload_check_ms(&self) -> u64 {
        match self.reload_check_ms {
            0 => Self::RELOAD_CHECK_MS,
            ms => ms,
        }
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            bail!(
                "tls: set both cert_file and key_file (CASCADE_TLS_CERT_FILE, CASCADE_TLS_KEY_FILE), or neither"
            );
        }
        Ok(())
    }
}
