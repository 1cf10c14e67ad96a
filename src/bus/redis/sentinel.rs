//! The Redis engine's way to its master: one fixed server, or whichever server the
//! sentinels name, followed across failovers. Owns the command connection and tells the
//! pub/sub listener where the master is; knows nothing of channels or scripts.
//!
//! The redis crate's `sentinel` module looks a master up, but it hands back a `Client`
//! pinned to one address: no `ConnectionManager` or pub/sub connection follows a
//! failover, and its lookups have no per-sentinel timeout (a silent sentinel early in the
//! list holds every lookup up). So the lookup is written here: ask the sentinels in
//! order `SENTINEL get-master-addr-by-name`, the first to answer wins, and the master
//! must say `ROLE` master. A follower task looks again whenever a sentinel announces
//! `+switch-master`, a command meets a lost connection or a `READONLY` (a demoted
//! master), its sentinel connection drops, or every [`RECHECK`]; when the address
//! changes it swaps in a connection manager for the new master and tells the listener,
//! which resubscribes and checks each channel's tail (see `listener`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, RedisResult, Value,
};
use tokio::sync::{Notify, watch};

use crate::config::SentinelUrl;
use crate::error::Result;
use crate::sync::Unpoisoned;

use super::super::redis_script::{COMMAND_TIMEOUT, unavailable};

/// How often the follower asks the sentinels even when nothing happened: a
/// `+switch-master` missed while its sentinel connection was down is found this late.
const RECHECK: Duration = Duration::from_secs(5);

/// The least time between two lookups that suspicion (not an announcement) triggers.
const SUSPICION_PAUSE: Duration = Duration::from_millis(250);

/// How long one sentinel or master may take to answer during a lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(1000);

/// The command connection to the current master; cloned freely, every clone follows it.
#[derive(Clone)]
pub(in crate::bus) struct Primary {
    shared: Arc<Shared>,
}

struct Shared {
    /// None until the sentinels first name a master. std Mutex: never held across .await.
    current: Mutex<Option<ConnectionManager>>,
    /// The master the listener should subscribe on.
    master: watch::Sender<Option<Client>>,
    /// Set by a command that met a lost connection or a demoted master.
    suspect: Notify,
    /// Whether a sentinel names the master (else the master is fixed).
    followed: bool,
}

impl Primary {
    /// The master named by `url`: a fixed server, or one the sentinels name.
    pub(in crate::bus) fn open(url: &str) -> Result<Primary> {
        let bad = |e: String| crate::error::Error::EngineUnavailable(format!("bad redis_url: {e}"));
        match SentinelUrl::parse(url).map_err(bad)? {
            None => {
                let client = Client::open(url).map_err(|e| bad(e.to_string()))?;
                let connection = ConnectionManager::new_lazy_with_config(client.clone(), config())
                    .map_err(unavailable)?;
                Ok(Primary::with(Some(connection), Some(client), false))
            }
            Some(sentinel) => {
                let primary = Primary::with(None, None, true);
                tokio::spawn(follow(primary.clone(), sentinel));
                Ok(primary)
            }
        }
    }

    fn with(connection: Option<ConnectionManager>, client: Option<Client>, followed: bool) -> Self {
        Primary {
            shared: Arc::new(Shared {
                current: Mutex::new(connection),
                master: watch::channel(client).0,
                suspect: Notify::new(),
                followed,
            }),
        }
    }

    /// Whether a failover may replace the master under this engine.
    pub(in crate::bus) fn followed(&self) -> bool {
        self.shared.followed
    }

    /// Where the pub/sub listener should connect; changes after a failover.
    pub(in crate::bus) fn master(&self) -> watch::Receiver<Option<Client>> {
        self.shared.master.subscribe()
    }

    fn connection(&self) -> RedisResult<ConnectionManager> {
        self.shared.current.locked().clone().ok_or_else(|| {
            RedisError::from((
                redis::ErrorKind::Io,
                "no master yet: the sentinels have not named one",
            ))
        })
    }

    /// Notes an error a command met: a lost connection or a demoted master makes the
    /// follower look the master up again.
    fn saw(&self, err: &RedisError) {
        let demoted = matches!(err.code(), Some("READONLY" | "MASTERDOWN"))
            || err.to_string().contains("READONLY");
        if self.shared.followed && (err.code().is_none() || demoted) {
            self.shared.suspect.notify_one();
        }
    }
}

impl ConnectionLike for Primary {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = match self.connection() {
                Ok(mut connection) => connection.req_packed_command(cmd).await,
                Err(err) => Err(err),
            };
            if let Err(err) = &result {
                self.saw(err);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = match self.connection() {
                Ok(mut connection) => {
                    connection
                        .req_packed_commands(pipeline, offset, count)
                        .await
                }
                Err(err) => Err(err),
            };
            if let Err(err) = &result {
                self.saw(err);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.connection().map(|c| c.get_db()).unwrap_or(0)
    }
}

fn config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

/// Keeps `primary` on the master the sentinels name, for as long as the engine lives.
async fn follow(primary: Primary, url: SentinelUrl) {
    let engine_gone = || Arc::strong_count(&primary.shared) == 1;
    let mut known: Option<ConnectionAddr> = None;
    let mut backoff = Duration::from_millis(50);
    let mut last_lookup;
    let mut announcements = None;
    loop {
        if engine_gone() {
            return;
        }
        last_lookup = Instant::now();
        match look_up(&url).await {
            Ok(info) => {
                backoff = Duration::from_millis(50);
                if known.as_ref() != Some(info.addr()) {
                    if let Err(err) = switch(&primary, info.clone()) {
                        tracing::warn!(%err, "could not open the master's connection");
                    } else {
                        tracing::info!(master = %info.addr(), name = %url.master, "redis sentinel: following the master");
                        known = Some(info.addr().clone());
                    }
                }
            }
            Err(err) => {
                // Once per outage at warn: a failover takes many lookups.
                if backoff == Duration::from_millis(50) {
                    tracing::warn!(%err, name = %url.master, "redis sentinel: no master found");
                } else {
                    tracing::debug!(%err, name = %url.master, "redis sentinel: no master found");
                }
                tokio::time::sleep(backoff).await;
                // Short: during a failover the sentinels name the new master within
                // moments of each other, and every lookup is a few round trips.
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        }
        // Wait for a reason to look again, listening for announcements meanwhile.
        if announcements.is_none() {
            announcements = switch_announcements(&url)
                .await
                .map(|pubsub| pubsub.into_on_message());
        }
        let recheck = tokio::time::sleep(RECHECK);
        tokio::pin!(recheck);
        loop {
            tokio::select! {
                _ = &mut recheck => break,
                _ = primary.shared.suspect.notified() => {
                    let pause = SUSPICION_PAUSE.saturating_sub(last_lookup.elapsed());
                    tokio::time::sleep(pause).await;
                    break;
                }
                message = async {
                    match announcements.as_mut() {
                        Some(stream) => stream.next().await,
                        None => std::future::pending().await,
                    }
                } => match message {
                    // "<name> <old-ip> <old-port> <new-ip> <new-port>"
                    Some(message) => {
                        let payload: String = message.get_payload().unwrap_or_default();
                        if payload.split(' ').next() == Some(url.master.as_str()) {
                            tracing::info!(%payload, "redis sentinel: +switch-master");
                            break;
                        }
                    }
                    None => {
                        announcements = None;
                        break;
                    }
                },
            }
        }
    }
}

/// Swaps in a connection manager for the master at `info` and points the listener at it.
fn switch(primary: &Primary, info: ConnectionInfo) -> RedisResult<()> {
    let client = Client::open(info)?;
    let connection = ConnectionManager::new_lazy_with_config(client.clone(), config())?;
    *primary.shared.current.locked() = Some(connection);
    primary.shared.master.send_replace(Some(client));
    Ok(())
}

/// Asks the sentinels in order for the master's address; the first answer whose server
/// says it is a master wins.
async fn look_up(url: &SentinelUrl) -> RedisResult<ConnectionInfo> {
    let mut last_err = None;
    for (host, port) in &url.sentinels {
        let asked = async {
            let mut sentinel = sentinel_client(url, host, *port)?
                .get_multiplexed_async_connection()
                .await?;
            let (ip, port): (String, u16) = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&url.master)
                .query_async(&mut sentinel)
                .await?;
            let info = master_info(url, ip, port)?;
            let mut master = Client::open(info.clone())?
                .get_multiplexed_async_connection()
                .await?;
            let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut master).await?;
            match role.first() {
                Some(Value::BulkString(role)) if role == b"master" => Ok(info),
                _ => Err(RedisError::from((
                    redis::ErrorKind::Io,
                    "the server the sentinel named is not a master (yet)",
                ))),
            }
        };
        match tokio::time::timeout(LOOKUP_TIMEOUT, asked).await {
            Ok(Ok(info)) => return Ok(info),
            Ok(Err(err)) => last_err = Some(format!("sentinel {host}:{port}: {err}")),
            Err(_) => last_err = Some(format!("sentinel {host}:{port}: timed out")),
        }
    }
    Err(RedisError::from((
        redis::ErrorKind::Io,
        "no sentinel named a master",
        last_err.unwrap_or_default(),
    )))
}

/// A pub/sub connection to the first sentinel that answers, subscribed to
/// `+switch-master`.
async fn switch_announcements(url: &SentinelUrl) -> Option<redis::aio::PubSub> {
    for (host, port) in &url.sentinels {
        let subscribed = async {
            let mut pubsub = sentinel_client(url, host, *port)?
                .get_async_pubsub()
                .await?;
            pubsub.subscribe("+switch-master").await?;
            RedisResult::Ok(pubsub)
        };
        if let Ok(Ok(pubsub)) = tokio::time::timeout(LOOKUP_TIMEOUT, subscribed).await {
            return Some(pubsub);
        }
    }
    None
}

fn sentinel_client(url: &SentinelUrl, host: &str, port: u16) -> RedisResult<Client> {
    let mut redis = redis::RedisConnectionInfo::default();
    if let Some(user) = &url.sentinel_username {
        redis = redis.set_username(user);
    }
    if let Some(password) = &url.sentinel_password {
        redis = redis.set_password(password);
    }
    let info = ConnectionAddr::Tcp(host.to_owned(), port)
        .into_connection_info()?
        .set_redis_settings(redis);
    Client::open(info)
}

fn master_info(url: &SentinelUrl, ip: String, port: u16) -> RedisResult<ConnectionInfo> {
    let mut redis = redis::RedisConnectionInfo::default().set_db(url.db);
    if let Some(user) = &url.username {
        redis = redis.set_username(user);
    }
    if let Some(password) = &url.password {
        redis = redis.set_password(password);
    }
    Ok(ConnectionAddr::Tcp(ip, port)
        .into_connection_info()?
        .set_redis_settings(redis))
}
