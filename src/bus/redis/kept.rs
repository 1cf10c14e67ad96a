//! Values kept for a while under `P:kept:<key>` ([`crate::bus::Engine::keep`]): the state
//! of Socket.IO polling sessions, which any node may serve, and one-time claims under
//! `P:once:<key>`. Shared by both Redis engines.

use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionLike;

use crate::bus::redis_script::unavailable;
use crate::error::Result;

/// `SET P:kept:<key> value PX ttl`.
pub(in crate::bus) async fn keep<C: ConnectionLike>(
    mut connection: C,
    prefix: &str,
    key: &str,
    value: Bytes,
    ttl: Duration,
) -> Result<()> {
    redis::cmd("SET")
        .arg(format!("{prefix}:kept:{key}"))
        .arg(value.as_ref())
        .arg("PX")
        .arg(ttl.as_millis().max(1) as u64)
        .query_async::<()>(&mut connection)
        .await
        .map_err(unavailable)
}

/// `GET P:kept:<key>`.
pub(in crate::bus) async fn kept<C: ConnectionLike>(
    mut connection: C,
    prefix: &str,
    key: &str,
) -> Result<Option<Bytes>> {
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(format!("{prefix}:kept:{key}"))
        .query_async(&mut connection)
        .await
        .map_err(unavailable)?;
    Ok(value.map(Bytes::from))
}

/// `SET P:kept:<key> value XX PX ttl`: true when something was kept there.
pub(in crate::bus) async fn rekeep<C: ConnectionLike>(
    connection: C,
    prefix: &str,
    key: &str,
    value: Bytes,
    ttl: Duration,
) -> Result<bool> {
    let key = format!("{prefix}:kept:{key}");
    set_if(connection, &key, value.as_ref(), "XX", ttl).await
}

/// `SET P:once:<key> 1 NX PX ttl`: true for the first caller ([`crate::bus::Engine::claim_once`]).
pub(in crate::bus) async fn claim_once<C: ConnectionLike>(
    connection: C,
    prefix: &str,
    key: &str,
    ttl: Duration,
) -> Result<bool> {
    set_if(connection, &format!("{prefix}:once:{key}"), b"1", "NX", ttl).await
}

/// `SET key value <NX|XX> PX ttl`: whether it was set.
async fn set_if<C: ConnectionLike>(
    mut connection: C,
    key: &str,
    value: &[u8],
    condition: &str,
    ttl: Duration,
) -> Result<bool> {
    let reply: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg(condition)
        .arg("PX")
        .arg(ttl.as_millis().max(1) as u64)
        .query_async(&mut connection)
        .await
        .map_err(unavailable)?;
    Ok(reply.is_some())
}

/// `PEXPIRE P:kept:<key> ttl`: true when something was kept there.
pub(in crate::bus) async fn prolong<C: ConnectionLike>(
    mut connection: C,
    prefix: &str,
    key: &str,
    ttl: Duration,
) -> Result<bool> {
    let set: u8 = redis::cmd("PEXPIRE")
        .arg(format!("{prefix}:kept:{key}"))
        .arg(ttl.as_millis().max(1) as u64)
        .query_async(&mut connection)
        .await
        .map_err(unavailable)?;
    Ok(set == 1)
}
