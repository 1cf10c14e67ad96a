//! Public-key tokens (RS256, ES256): key pairs made with the `openssl` CLI in a temp dir,
//! the public half given to the gateway, tokens signed with the private half.

use std::path::{Path, PathBuf};
use std::process::Command;

use cascade::app::App;
use cascade::auth::token::now_secs;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::support::TestServer;
use super::*;

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "cascade-security-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("these tests need the openssl CLI on PATH (apt-get install openssl): {e}")
        });
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A PKCS#8 private key and its SPKI public key, both PEM, as (private, public path).
fn key_pair(dir: &Path, name: &str, algorithm: Algorithm) -> (Vec<u8>, PathBuf) {
    let private = dir.join(format!("{name}.key.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let private_s = private.to_str().expect("utf8 path");
    match algorithm {
        Algorithm::RS256 => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private_s,
        ]),
        Algorithm::ES256 => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            private_s,
        ]),
        other => panic!("no key pair for {other:?}"),
    }
    openssl(&[
        "pkey",
        "-in",
        private_s,
        "-pubout",
        "-out",
        public.to_str().expect("utf8"),
    ]);
    (std::fs::read(&private).expect("private key"), public)
}

fn sign(algorithm: Algorithm, private_pem: &[u8], claims: Value) -> String {
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem),
        other => panic!("{other:?}"),
    }
    .expect("encoding key");
    jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).expect("sign")
}

/// The gateway verifies `algorithm` tokens with the public key only, and refuses tokens
/// signed by another key, with another algorithm, or with the public key as an HMAC secret.
async fn public_key_tokens(algorithm: Algorithm, name: &str, other_algorithm: Algorithm) {
    let dir = TempDir::new(name);
    let (private, public) = key_pair(&dir.0, name, algorithm);
    let (stranger, _) = key_pair(&dir.0, "stranger", algorithm);
    let (other_kind, _) = key_pair(&dir.0, "other", other_algorithm);
    let mut config = secure_config();
    config.token.hmac_secret = "".into();
    config.token.algorithm = name.into();
    config.token.public_key_file = public.to_str().expect("utf8").into();
    let server = TestServer::start(config).await;
    let exp = now_secs() + 60;
    let claims = json!({"sub": "alice", "exp": exp, "channels": ["vip:*"], "publish": ["room:*"]});

    let good = sign(algorithm, &private, claims.clone());
    served(
        get(&server, "/poll?channels=user:alice").bearer_auth(&good),
        "own key",
    )
    .await;
    served(
        publish(&server, "room:a", 1).bearer_auth(&good),
        "publish claim",
    )
    .await;
    let mut ws = ws_open(&server, &format!("token={good}"), &[])
        .await
        .expect("ws");
    ws_subscribed(&mut ws, "user:alice").await;
    // Tickets work without any shared secret (a per-process key, single node).
    let response = served(get(&server, "/negotiate").bearer_auth(&good), "negotiate").await;
    let body: Value = response.json().await.expect("json");
    let ticket = body["ticket"].as_str().expect("ticket");
    let mut ws = ws_open(&server, &format!("ticket={ticket}"), &[])
        .await
        .expect("ws");
    ws_subscribed(&mut ws, "user:alice").await;

    let poll = |token: &str| get(&server, "/poll?channels=user:alice").bearer_auth(token);
    let forged = sign(algorithm, &stranger, claims.clone());
    refused(
        &server,
        poll(&forged),
        401,
        "token_invalid",
        "another key pair",
    )
    .await;
    let wrong_alg = sign(other_algorithm, &other_kind, claims.clone());
    refused(
        &server,
        poll(&wrong_alg),
        401,
        "token_invalid",
        "another algorithm",
    )
    .await;
    // Algorithm confusion: HS256 keyed with the public key the attacker can read.
    let public_pem = std::fs::read(&public).expect("public key");
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&public_pem).expect("key"),
    )
    .expect("hs256");
    refused(
        &server,
        poll(&confused),
        401,
        "token_invalid",
        "HS256 with the public key",
    )
    .await;
    let hs = token(&secure_config(), "alice", &[], &[], 60);
    refused(&server, poll(&hs), 401, "token_invalid", "an HS256 token").await;
    let expired = sign(
        algorithm,
        &private,
        json!({"sub": "alice", "exp": now_secs() - 10}),
    );
    refused(&server, poll(&expired), 401, "token_expired", "expired").await;
    ws_refused(
        &server,
        &format!("token={expired}"),
        &[],
        4002,
        "token_expired",
    )
    .await;
    ws_refused(
        &server,
        &format!("token={forged}"),
        &[],
        4001,
        "token_invalid",
    )
    .await;
}

#[tokio::test]
async fn rs256_tokens_verify_with_the_public_key() {
    public_key_tokens(Algorithm::RS256, "RS256", Algorithm::ES256).await;
}

#[tokio::test]
async fn es256_tokens_verify_with_the_public_key() {
    public_key_tokens(Algorithm::ES256, "ES256", Algorithm::RS256).await;
}

#[tokio::test]
async fn public_key_settings_come_from_the_environment() {
    let dir = TempDir::new("env");
    let (private, public) = key_pair(&dir.0, "rsa", Algorithm::RS256);
    let env = vec![
        ("CASCADE_TOKEN_ALGORITHM".to_owned(), "RS256".to_owned()),
        (
            "CASCADE_TOKEN_PUBLIC_KEY_FILE".to_owned(),
            public.to_str().expect("utf8").to_owned(),
        ),
    ];
    let mut config = Config::from_sources("", env).expect("config");
    config.listen = "127.0.0.1:0".parse().expect("addr");
    assert_eq!(config.token.algorithm, "RS256");
    let server = TestServer::start(config.clone()).await;
    let good = sign(
        Algorithm::RS256,
        &private,
        json!({"sub": "bob", "exp": now_secs() + 60}),
    );
    served(
        get(&server, "/poll?channels=user:bob").bearer_auth(&good),
        "env key",
    )
    .await;
    // `cascade token` signs HS256 only: a public key cannot sign.
    assert!(
        Auth::from_config(&config)
            .expect("auth")
            .sign(&cascade::auth::token::Claims {
                sub: "bob".into(),
                exp: now_secs() + 60,
                channels: vec![],
                publish: vec![],
            })
            .is_err()
    );
}

#[tokio::test]
async fn unusable_key_settings_refuse_to_start() {
    let dir = TempDir::new("bad");
    let (_, rsa_public) = key_pair(&dir.0, "rsa", Algorithm::RS256);
    let garbage = dir.0.join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
    )
    .expect("write");
    type Change = Box<dyn Fn(&mut Config)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "short secret",
            Box::new(|c| c.token.hmac_secret = "too-short".into()),
        ),
        ("HS384", Box::new(|c| c.token.algorithm = "HS384".into())),
        (
            "RS256 without a key file",
            Box::new(|c| c.token.algorithm = "RS256".into()),
        ),
        (
            "missing key file",
            Box::new(|c| c.token.public_key_file = "/nonexistent/key.pem".into()),
        ),
        ("RS512", {
            let path = rsa_public.to_str().unwrap().to_owned();
            Box::new(move |c| {
                c.token.algorithm = "RS512".into();
                c.token.public_key_file = path.clone();
            })
        }),
        ("garbage PEM", {
            let path = garbage.to_str().unwrap().to_owned();
            Box::new(move |c| {
                c.token.algorithm = "RS256".into();
                c.token.public_key_file = path.clone();
            })
        }),
    ];
    for (what, change) in cases {
        let mut config = secure_config();
        change(&mut config);
        assert!(Auth::from_config(&config).is_err(), "{what}: Auth refuses");
        match App::new(config) {
            Err(err) => assert!(
                err.to_string().starts_with("configuration: "),
                "{what}: {err}"
            ),
            Ok(_) => panic!("{what}: the gateway must not start"),
        }
    }
}
