//! The `cascade` binary: parse arguments, load the config, start logging, serve.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use cascade::app::App;
use cascade::auth::Auth;
use cascade::auth::token::{Claims, now_secs};
use cascade::config::{Config, EngineKind};

/// A realtime gateway: WebSocket, SSE, long polling and short polling from one bus.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file; built-in defaults and CASCADE_* variables apply without one.
    #[arg(long, global = true, env = "CASCADE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Print a client token signed with the configured token.hmac_secret, for trying
    /// things out: `cascade token --sub alice --channels 'chat,room:*' --ttl 1h`.
    Token {
        /// The user id (`sub`); `user:<sub>` is this user's personal channel.
        #[arg(long)]
        sub: String,
        /// Comma-separated patterns the user may subscribe to (`*` is a wildcard).
        #[arg(long, default_value = "")]
        channels: String,
        /// Comma-separated patterns the user may publish to.
        #[arg(long, default_value = "")]
        publish: String,
        /// Lifetime: seconds, or a number with s, m, h or d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
    },
}

/// `90`, `90s`, `15m`, `1h`, `7d` as seconds.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let number: u64 = number.parse().map_err(|_| format!("bad ttl {text:?}"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad ttl unit in {text:?}: use s, m, h or d")),
    };
    Ok(number * scale)
}

fn patterns(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(args.config.as_deref())?;
    init_logging();
    match args.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::Token {
            sub,
            channels,
            publish,
            ttl,
        } => {
            let auth = Auth::from_config(&config).map_err(anyhow::Error::msg)?;
            let claims = Claims {
                sub,
                exp: now_secs() + ttl,
                channels: patterns(&channels),
                publish: patterns(&publish),
            };
            println!("{}", auth.sign(&claims).map_err(anyhow::Error::msg)?);
            Ok(())
        }
    }
}

/// Logs go to stderr: human-readable on a terminal, one JSON object per line when
/// `CASCADE_LOG_FORMAT=json` (for log shippers). `CASCADE_LOG` sets the filter.
fn init_logging() {
    let filter = EnvFilter::try_from_env("CASCADE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var("CASCADE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        // Everything that can refuse the configuration (secrets, keys, the engine's URL)
        // runs before the port is bound: a gateway that logs "listening" is one that serves.
        let listen = config.listen;
        let app = App::new(config)?;
        if app.config.uses_development_secret() {
            tracing::warn!(
                "INSECURE: tokens or tickets are signed with the development secret published \
                 in config/cascade.toml, so anyone can sign a token for any user; set \
                 CASCADE_TOKEN_HMAC_SECRET (and CASCADE_TOKEN_TICKET_SECRET) to secrets of \
                 your own, or run without the development config"
            );
        }
        if app.config.demo {
            tracing::warn!(
                "demo = true: POST /demo/login signs a token for any user name it is given; \
                 turn the demo off outside development"
            );
        }
        open_files_limit(app.config.limits.max_connections);
        if app.auth.nobody_can_publish() {
            tracing::warn!(
                "nothing can publish: no api_keys, no token key (token.hmac_secret or \
                 token.public_key_file) and no channel whose publish rule is \"anyone\"; \
                 set CASCADE_API_KEYS for your backend"
            );
        }
        let sighup = app.tls.clone().map(reload_on_sighup);
        let listener = bind(listen).with_context(|| format!("binding {listen}"))?;
        tracing::info!(listen = %listener.local_addr()?, "cascade listening");
        if app.config.engine != EngineKind::Memory {
            tokio::spawn(warn_if_engine_down(app.clone()));
        }
        if let Some(sighup) = sighup {
            tokio::spawn(sighup);
        }
        let shutdown = app.shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            shutdown.cancel();
        });
        // On a worker, not on this thread: per-connection allocations made by the accept
        // loop are then freed in the same malloc arena as the connection's own, instead
        // of pinning pages in a second one (measured: 2.9 KiB more per idle WebSocket).
        tokio::spawn(cascade::server::run(listener, app))
            .await
            .context("the accept loop panicked")?;
        Ok(())
    })
}

/// File descriptors the gateway needs besides its clients' connections: the listener,
/// the engine's connections, the runtime's own, with room to spare.
#[cfg(unix)]
const SPARE_FILES: libc::rlim_t = 64;

/// Raises the soft open-files limit to the hard one, where the platform allows (container
/// runtimes often start processes at a soft limit of 1024, and every connection is a
/// file), and warns when even that is too low for `limits.max_connections`: connections
/// past the limit fail at accept (EMFILE) instead of being answered 503.
fn open_files_limit(max_connections: usize) {
    #[cfg(unix)]
    {
        let (before, after) = match raise_open_files_limit() {
            Ok(limits) => limits,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the open-files limit");
                return;
            }
        };
        if after > before {
            tracing::info!(from = before, to = after, "raised the open-files limit");
        }
        let needed = (max_connections as libc::rlim_t).saturating_add(SPARE_FILES);
        if after < needed {
            tracing::warn!(
                open_files = after,
                max_connections,
                "the open-files limit is below limits.max_connections + {SPARE_FILES}: \
                 connections past it fail at accept instead of being answered 503; raise \
                 the hard limit (docker run --ulimit nofile=N:N, systemd LimitNOFILE=N) or \
                 lower limits.max_connections"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = max_connections;
}

/// Sets the soft `RLIMIT_NOFILE` to the hard one; returns the soft limit before and after
/// (unchanged when the kernel refuses, as macOS does for an unlimited hard limit).
#[cfg(unix)]
fn raise_open_files_limit() -> std::io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok((before, raised.rlim_cur));
        }
    }
    Ok((before, before))
}

/// Warns once when the engine has not answered a few seconds after start-up: the gateway
/// starts anyway (Redis may come up later), but it cannot carry a message until it does.
async fn warn_if_engine_down(app: Arc<App>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        if app.bus.engine_health().1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(
        redis_url = %without_password(&app.config.redis_url),
        "redis does not answer; serving anyway: /readyz answers 503 and publishes fail \
         until it does"
    );
}

/// `url` (or each of a comma-separated list) with its user and password, if any,
/// replaced by `***`, for the log.
fn without_password(url: &str) -> String {
    let one = |url: &str| match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    };
    url.split(',').map(one).collect::<Vec<_>>().join(",")
}

/// Binds with a deep accept backlog: after a deploy, thousands of clients reconnect at
/// once, and the default backlog of 128 would make most of them wait for a SYN retry.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Reloads the TLS certificate and key on each SIGHUP (a bad pair keeps the old one).
/// The handler is installed before this returns, so that a SIGHUP sent once the port is
/// bound never meets the default action (exit).
fn reload_on_sighup(tls: std::sync::Arc<cascade::tls::Tls>) -> impl Future<Output = ()> {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        match hup {
            Ok(mut hup) => {
                while hup.recv().await.is_some() {
                    tls.reload();
                }
            }
            Err(_) => tracing::warn!(
                "cannot listen for SIGHUP: the certificate reloads on file changes only"
            ),
        }
        #[cfg(not(unix))]
        let _ = tls;
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_redis_urls_carry_no_password() {
        assert_eq!(
            without_password("redis://:hunter2@db:6379/0"),
            "redis://***@db:6379/0"
        );
        assert_eq!(
            without_password("rediss://user:p@ss@db/0"),
            "rediss://***@db/0"
        );
        assert_eq!(
            without_password("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            without_password("redis://:a@n1:7000,redis://n2:7001,redis://u:b@n3:7002"),
            "redis://***@n1:7000,redis://n2:7001,redis://***@n3:7002"
        );
    }
}
