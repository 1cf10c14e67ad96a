//! What the server tells a WebSocket client on its own: the session its handshake began,
//! the channels the connect hook subscribed for it, and the server API's commands.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Connection, Stop};
use crate::bus::control::Control;
use crate::protocol::Cursor;
use crate::transport::session::Issued;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    /// Tells the client of the session its handshake began, then subscribes the channels
    /// the connect hook granted it.
    pub(super) async fn greet(&mut self, issued: Box<Issued>) -> Result<(), Stop> {
        let mut frame = serde_json::json!({"op": "session"});
        issued.add_to(&mut frame);
        self.send_text(frame.to_string()).await?;
        self.subscribe_granted().await
    }

    /// Subscribes the channels the connect hook granted the session this connection
    /// began, from now, and tells the client as of a server subscription.
    async fn subscribe_granted(&mut self) -> Result<(), Stop> {
        let Some(session) = &self.who.session else {
            return Ok(());
        };
        if session.granted.is_empty() {
            return Ok(());
        }
        let cursor = Cursor {
            entries: session.granted.iter().map(|c| (c.clone(), None)).collect(),
        };
        match self.subscription.add(&cursor).await {
            Ok(start) => {
                self.send_text(control_frame(&Control::Subscribed(start)))
                    .await
            }
            Err(err) => self.send_error(None, &err).await,
        }
    }
}

/// The frame that tells a client the server subscribed or unsubscribed it:
/// `{"op":"subscribed","channels":[..],"cursor":"..","server":true}` and
/// `{"op":"unsubscribed","channels":[..],"server":true}`.
pub(super) fn control_frame(control: &Control) -> String {
    match control {
        Control::Subscribed(start) => {
            let names: Vec<&str> = start.entries.iter().map(|(c, _)| c.as_str()).collect();
            serde_json::json!({"op": "subscribed", "channels": names,
                "cursor": start.to_string(), "server": true})
            .to_string()
        }
        Control::Unsubscribed(channel) => {
            serde_json::json!({"op": "unsubscribed", "channels": [channel.as_str()], "server": true})
                .to_string()
        }
        Control::Disconnected => r#"{"op":"disconnected"}"#.to_owned(),
    }
}
