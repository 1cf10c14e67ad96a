//! The peers the targets are quoted against, run on the same machine with the same
//! generator: Nchan 1.3.6 on nginx and Socket.IO 4.8 on Node, each as one process pinned
//! where the gateway would be. Each gets the fanout's publishes as `POST /publish` with
//! Cascade's body (`{"channel":..,"data":{"t":..,"n":..}}`), and its WebSocket
//! subscribers speak the peer's own wire; the receivers find `"t"` and `"n"` in whatever
//! frame carries them, so the report is the same as for Cascade.
//!
//! Their servers are `benches/peers/`: an nginx config for Nchan, a script for Socket.IO.
//! Neither is needed by the tests, so neither is installed by `.ci/run`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::clients::{Follow, Ready, Receiver, open_websocket};

/// The program and arguments that start a peer on `$CASCADE_LISTEN`.
pub fn launch(nchan: bool) -> Result<(PathBuf, Vec<String>), String> {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers");
    if nchan {
        let module = Path::new("/usr/lib/nginx/modules/ngx_nchan_module.so");
        if !module.is_file() {
            return Err(format!(
                "{} is missing: apt-get install nginx libnginx-mod-nchan",
                module.display()
            ));
        }
        let prefix = crate::gateway::target_dir().join("nchan");
        std::fs::create_dir_all(&prefix).map_err(|e| format!("{}: {e}", prefix.display()))?;
        // nginx reads its address from the config alone: the shell writes it in, then
        // becomes nginx, so the PID (and the pinning) is nginx's.
        let script = format!(
            "sed -e \"s|LISTEN|$CASCADE_LISTEN|\" -e 's|PREFIX|{prefix}|g' {conf} > \
             {prefix}/nginx.conf && exec nginx -p {prefix} -c {prefix}/nginx.conf",
            prefix = prefix.display(),
            conf = peers.join("nchan.conf").display(),
        );
        return Ok((PathBuf::from("/bin/sh"), vec!["-c".to_owned(), script]));
    }
    if !peers.join("node_modules/socket.io").is_dir() {
        return Err("socket.io is not installed: npm ci --prefix benches/peers".to_owned());
    }
    let node = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("node"))
        .find(|candidate| candidate.is_file())
        .ok_or("node is not on the PATH")?;
    let script = peers.join("socketio.mjs").display().to_string();
    Ok((node, vec![script]))
}

/// A WebSocket that subscribes by its URL and gets each published body as a text frame.
pub async fn nchan(
    addr: SocketAddr,
    follow: &Follow,
    receiver: &mut Receiver,
    ready: &mut Ready,
) -> Result<(), String> {
    let mut ws = open_websocket(addr, follow, "/ws").await?;
    // Subscribed once the upgrade is answered: Nchan confirms nothing else.
    ready.confirm();
    while let Some(frame) = ws.next().await {
        match frame.map_err(|e| format!("read: {e}"))? {
            Frame::Text(text) => receiver.take(text.as_bytes()),
            Frame::Close(close) => return Err(format!("closed by the server: {close:?}")),
            _ => {}
        }
    }
    Err("connection ended".to_owned())
}

/// An Engine.IO v4 WebSocket: the open packet, the namespace's connect, `subscribe` to
/// the channel's room (on Cascade: the channel asked for in the connect), then `message`
/// events; pings are answered.
pub async fn socketio(
    addr: SocketAddr,
    follow: &Follow,
    receiver: &mut Receiver,
    ready: &mut Ready,
) -> Result<(), String> {
    let mut ws = open_websocket(addr, follow, "/socket.io/?EIO=4&transport=websocket").await?;
    let channel = follow.channels.split(',').next().unwrap_or_default();
    let cascade = follow.wire == crate::clients::Wire::CascadeSocketio;
    while let Some(frame) = ws.next().await {
        let Frame::Text(text) = frame.map_err(|e| format!("read: {e}"))? else {
            continue;
        };
        let packet = text.as_bytes();
        let reply = match packet {
            // A message event: the usual case first.
            [b'4', b'2', ..] if packet.starts_with(br#"42["message""#) => {
                receiver.take(packet);
                None
            }
            [b'4', b'2', ..] if packet.starts_with(br#"42["subscribed""#) => {
                ready.confirm();
                None
            }
            // Engine.IO's open: connect to the default namespace (on Cascade, asking for
            // the channel: its rooms are decided at connect).
            [b'0', ..] if cascade => Some(format!(r#"40{{"channels":["{channel}"]}}"#)),
            [b'0', ..] => Some("40".to_owned()),
            // The namespace is connected: on Cascade, with the channel; else join its room.
            [b'4', b'0', ..] if cascade => {
                ready.confirm();
                None
            }
            [b'4', b'0', ..] => Some(format!(r#"42["subscribe","{channel}"]"#)),
            // Ping: pong, or the server drops the client.
            [b'2'] => Some("3".to_owned()),
            [b'4', b'4', ..] => return Err(format!("connect refused: {}", text.as_str())),
            _ => None,
        };
        if let Some(reply) = reply {
            ws.send(Frame::text(reply))
                .await
                .map_err(|e| format!("send: {e}"))?;
        }
    }
    Err("connection ended".to_owned())
}
