//! A WebSocket client's frames: subscribe, unsubscribe, publish, and rpc, whose calls to
//! the backend run beside the connection (a slow backend holds up no delivery) and come
//! back to it as [`Step::Rpc`] answers.

use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::{Connection, Stop};
use crate::config::HookEvent;
use crate::error::{Error, Result};
use crate::protocol::ClientFrame;
use crate::transport::publish::{self, acknowledgement, validate};
use crate::transport::rpc::check_method;
use crate::transport::{allowed, wanted_cursor};

/// The RPCs of one connection: the answers of those in flight come back on `answers`.
pub(super) struct Rpcs {
    tx: mpsc::Sender<String>,
    /// Frames to send, one per finished call.
    pub(super) answers: mpsc::Receiver<String>,
    /// Calls not yet answered.
    pub(super) in_flight: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    pub(super) async fn on_text(&mut self, text: &str) -> Result<(), Stop> {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err((id, err)) => return self.send_error(id, &err).await,
        };
        match frame {
            ClientFrame::Subscribe { channels, cursor } => {
                let names = channels.as_ref().map(|c| c.iter().map(String::as_str));
                match self.subscribe(names, cursor.as_deref().unwrap_or("")).await {
                    Ok(reply) => self.send_text(reply).await,
                    Err(err) => self.send_error(None, &err).await,
                }
            }
            ClientFrame::Unsubscribe { channels } => match self.unsubscribe(&channels) {
                Ok(reply) => self.send_text(reply).await,
                Err(err) => self.send_error(None, &err).await,
            },
            ClientFrame::Rpc { id, method, params } => match self.rpc(id, method, params) {
                Ok(()) => Ok(()),
                Err(err) => self.send_error(Some(id), &err).await,
            },
            ClientFrame::Presence { id, channel } => match self.presence(&channel).await {
                Ok(reply) => {
                    let id = id.map_or_else(|| "null".to_owned(), |id| id.to_string());
                    self.send_text(format!(r#"{{"op":"presence","id":{id},{}"#, &reply[1..]))
                        .await
                }
                Err(err) => self.send_error(id, &err).await,
            },
            ClientFrame::Publish {
                channel,
                data,
                id,
                exclude_client,
            } => {
                match self
                    .publish(&channel, data, exclude_client.as_deref())
                    .await
                {
                    Ok(ack) => match id {
                        Some(id) => {
                            self.send_text(format!(r#"{{"op":"ack","id":{id},{}"#, &ack[1..]))
                                .await
                        }
                        None => Ok(()),
                    },
                    Err(err) => self.send_error(id, &err).await,
                }
            }
        }
    }

    async fn subscribe<'a>(
        &mut self,
        channels: Option<impl IntoIterator<Item = &'a str>>,
        cursor: &str,
    ) -> Result<String> {
        let max = self.app.config.limits.max_channels;
        let mut wanted = wanted_cursor(channels, cursor, max)?;
        // The refused channels are left out before counting: they will not be followed.
        // The socket is the session: nothing to remember in a value.
        let (refused, _, _) = allowed(&self.app, &self.who, &mut wanted).await?;
        let new = wanted
            .entries
            .iter()
            .filter(|(c, _)| !self.subscription.follows(c))
            .count();
        if self.subscription.len() + new > max {
            return Err(Error::TooManyChannels(max));
        }
        let start = self.subscription.add(&wanted).await?;
        let names: Vec<&str> = start.entries.iter().map(|(c, _)| c.as_str()).collect();
        let mut reply =
            serde_json::json!({"op": "subscribed", "channels": names, "cursor": start.to_string()});
        if !refused.is_empty() {
            reply["refused"] = serde_json::json!(refused);
        }
        Ok(reply.to_string())
    }

    fn unsubscribe(&mut self, names: &[String]) -> Result<String> {
        let channels = names
            .iter()
            .map(|n| crate::protocol::Channel::parse(n))
            .collect::<Result<Vec<_>>>()?;
        self.subscription.remove(&channels);
        Ok(serde_json::json!({"op": "unsubscribed", "channels": names}).to_string())
    }

    async fn publish(
        &mut self,
        channel: &str,
        data: &RawValue,
        exclude_client: Option<&str>,
    ) -> Result<String> {
        let (channel, data) = validate(channel, data, self.app.config.limits.max_message_bytes)?;
        let exclude = publish::excluded(exclude_client)?;
        self.app.auth.check_publish(&self.who, &channel)?;
        if let (false, Some(conn)) = (self.who.server, &self.conn) {
            // The client behind a proxy was named at the handshake: the connection is its.
            conn.take_publish(None)?;
        }
        let data = publish::hooked(&self.app, &self.who, &channel, data).await?;
        let publication = publish::publication(&self.who, data, exclude);
        let message = self.app.bus.publish_as(&channel, publication).await?;
        self.app.metrics.published("websocket");
        Ok(acknowledgement(&message))
    }

    /// Who is in `channel`, as `GET /presence` answers it, if this client may ask.
    async fn presence(&mut self, channel: &str) -> Result<String> {
        let channel = crate::protocol::Channel::parse(channel)?;
        crate::transport::presence::check(&self.app, &self.who, &channel)?;
        crate::transport::presence::answer(&self.app, &channel).await
    }

    /// Starts a call to the backend's `method`; its answer, `rpc_result` or `error` with
    /// the `id`, is sent when it comes. Refused at once beyond
    /// `hooks.max_rpc_in_flight` calls in flight, or beyond the connection's publish
    /// budget, which RPCs share.
    fn rpc(&mut self, id: u64, method: String, params: Option<&RawValue>) -> Result<()> {
        let app = &self.app;
        let Some(hooks) = app.hooks.clone().filter(|h| h.on(HookEvent::Rpc)) else {
            return Err(Error::BadFrame(
                "rpc is not enabled on this gateway (hooks.events)".into(),
            ));
        };
        check_method(&method)?;
        let params = params.map_or("null", RawValue::get);
        let max = app.config.limits.max_message_bytes;
        if params.len() > max {
            return Err(Error::MessageTooLarge(max));
        }
        let limit = app.config.hooks.max_rpc_in_flight;
        let rpcs = self.rpcs.get_or_insert_with(|| {
            let (tx, answers) = mpsc::channel(limit);
            Box::new(Rpcs {
                tx,
                answers,
                in_flight: 0,
            })
        });
        if rpcs.in_flight >= limit {
            return Err(Error::RateLimited);
        }
        if let (false, Some(conn)) = (self.who.server, &self.conn) {
            conn.take_publish(None)?;
        }
        rpcs.in_flight += 1;
        let params =
            RawValue::from_string(params.to_owned()).map_err(|e| Error::BadJson(e.to_string()))?;
        let (tx, who, metrics) = (rpcs.tx.clone(), self.who.clone(), app.clone());
        tokio::spawn(async move {
            let answer = match hooks.rpc(&who, &method, &params).await {
                Ok(result) => format!(
                    r#"{{"op":"rpc_result","id":{id},"result":{}}}"#,
                    result.get()
                ),
                Err(err) => {
                    metrics.metrics.error_answer(&err);
                    error_frame(Some(id), &err)
                }
            };
            // The channel has room for every call in flight; a closed one is a connection
            // that ended meanwhile.
            let _ = tx.send(answer).await;
        });
        Ok(())
    }
}

/// The `error` frame for `err`, with the `id` of the frame it answers.
pub(super) fn error_frame(id: Option<u64>, err: &Error) -> String {
    let mut body = serde_json::json!({"op": "error", "code": err.code(), "message": err.message()});
    if let Some(id) = id {
        body["id"] = id.into();
    }
    if !err.refused().is_empty() {
        body["refused"] = serde_json::json!(err.refused());
    }
    body.to_string()
}
