//! A request's client session, where the gateway keeps them (with `[hooks]`): resumed
//! from the `session=` value the client echoes, or begun, by the backend's connect hook
//! when it is on; and the subscribe hook asked about each channel. Every transport, and
//! `POST /publish` and `POST /rpc`, admit their callers through here.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use futures_util::future::join_all;
use http::HeaderMap;

use crate::app::App;
use crate::auth::Identity;
use crate::config::HookEvent;
use crate::conn::ConnInfo;
use crate::error::{Error, Refusal, Result};
use crate::hooks::Connecting;
use crate::protocol::{Channel, Cursor};
use crate::query::Query;
use crate::session::ClientSession;
use crate::transport::keep_allowed;

/// A session begun by this request: the client learns its id and the value to send back.
#[derive(Debug)]
pub struct Issued {
    /// The client id (what hooks receive).
    pub client: String,
    /// The signed value the client sends back as `session=`.
    pub value: String,
}

impl Issued {
    /// Appends `,"client":"..","session":".."` to a JSON object being written.
    pub fn put(&self, out: &mut BytesMut) {
        // Neither needs escaping: an id is base64url, a value is a JWT.
        out.put_slice(b",\"client\":\"");
        out.put_slice(self.client.as_bytes());
        out.put_slice(b"\",\"session\":\"");
        out.put_slice(self.value.as_bytes());
        out.put_u8(b'"');
    }

    /// The same two fields on a JSON value.
    pub fn add_to(&self, object: &mut serde_json::Value) {
        object["client"] = self.client.as_str().into();
        object["session"] = self.value.as_str().into();
    }
}

/// Identifies a request's caller ([`crate::auth::Auth::identify`]) and, with `[hooks]`,
/// its client session: the one its `session=` names if that verifies, else a new one
/// that the connect hook accepted (when it is on), returned as [`Issued`] to hand the
/// client. Backends (API keys) have no session.
pub async fn identify(
    app: &App,
    transport: &'static str,
    headers: &HeaderMap,
    query: &Query<'_>,
    conn: Option<&ConnInfo>,
) -> Result<(Identity, Option<Box<Issued>>)> {
    let who = app.auth.identify(headers, query, &app.bus).await?;
    super::server_api::refuse_disconnected(app, &who)?;
    let Some(hooks) = app.hooks.as_ref().filter(|_| !who.server) else {
        return Ok((who, None));
    };
    if let Some(session) = query.get("session").and_then(|v| app.sessions.verify(v)) {
        return Ok((who.in_session(Arc::new(session)), None));
    }
    let session = if hooks.on(HookEvent::Connect) {
        let connecting = Connecting {
            transport,
            remote: conn.map(|c| c.client_ip(headers)),
            headers,
            query,
            user: who.user.as_deref(),
            auth: None,
        };
        hooks.connect(connecting).await.map_err(unavailable)?
    } else {
        ClientSession::fresh()
    };
    let issued = Issued {
        client: session.client.as_str().to_owned(),
        value: app.sessions.issue(&session)?,
    };
    Ok((who.in_session(Arc::new(session)), Some(Box::new(issued))))
}

/// `who` in the client session its request's `session=` names, if that verifies: how
/// `POST /publish` and `POST /rpc` know the session of a client that began one on its
/// subscribing rung. They begin none (a client without one acts on its credentials
/// alone, with no `client`).
pub fn resume(app: &App, who: Identity, query: &Query<'_>) -> Identity {
    if app.hooks.is_none() || who.server {
        return who;
    }
    match query.get("session").and_then(|v| app.sessions.verify(v)) {
        Some(session) => who.in_session(Arc::new(session)),
        None => who,
    }
}

/// A connect that could not be decided is `backend_unavailable` whatever went wrong (a
/// slow backend, nonsense): the client should come back later. A refusal stays one.
fn unavailable(err: Error) -> Error {
    match err {
        Error::BackendTimeout => Error::BackendUnavailable("it did not answer in time".into()),
        Error::BackendInvalid(why) => Error::BackendUnavailable(format!("invalid answer: {why}")),
        other => other,
    }
}

/// Keeps the channels of `cursor` that the rules ([`keep_allowed`]) and then the
/// subscribe hook let `who` read, asking the hook about every channel at once; names the
/// others. Not asked: a channel the connect hook granted, or one the hook allowed earlier
/// in the session. A backend that cannot be asked refuses the channel with
/// `backend_unavailable`, `backend_timeout` or `backend_invalid`.
///
/// When the hook allowed channels, the session value is issued again remembering them
/// (returned, for the client to send from then on): a poller's next polls, on any node,
/// ask the hook nothing.
pub async fn allowed(
    app: &App,
    who: &Identity,
    cursor: &mut Cursor,
) -> Result<(Vec<Refusal>, Option<Box<Issued>>)> {
    let mut refused = keep_allowed(app, who, cursor)?;
    let Some(hooks) = app.hooks.as_ref().filter(|h| h.on(HookEvent::Subscribe)) else {
        return Ok((refused, None));
    };
    if who.server {
        return Ok((refused, None));
    }
    let known = |channel: &Channel| {
        who.session
            .as_ref()
            .is_some_and(|s| s.grants(channel) || s.allows(channel))
    };
    let asked: Vec<Channel> = cursor
        .entries
        .iter()
        .filter(|(channel, _)| !known(channel))
        .map(|(channel, _)| channel.clone())
        .collect();
    if asked.is_empty() {
        return Ok((refused, None));
    }
    let answers = join_all(asked.iter().map(|channel| hooks.subscribe(who, channel))).await;
    let mut answers = answers.into_iter();
    let mut first = None;
    let mut labels = Vec::new();
    let mut yes = Vec::new();
    cursor.entries.retain(|(channel, _)| {
        if known(channel) {
            return true;
        }
        match answers.next() {
            Some(Err(err)) => {
                labels.push(err.label());
                refused.push(Refusal {
                    channel: channel.as_str().to_owned(),
                    code: err.refusal_code(),
                });
                first.get_or_insert(err);
                false
            }
            _ => {
                yes.push(channel.clone());
                true
            }
        }
    });
    if let Some(first) = first.filter(|_| cursor.entries.is_empty()) {
        return Err(Error::Refused {
            first: Box::new(first),
            refused,
        });
    }
    // Counted here only when the request goes on; else where it is answered.
    for label in labels {
        app.metrics.error(label);
    }
    let remembered = match who.session.as_ref().and_then(|s| s.allowing(&yes)) {
        Some(session) => Some(Box::new(Issued {
            client: session.client.as_str().to_owned(),
            value: app.sessions.issue(&session)?,
        })),
        None => None,
    };
    Ok((refused, remembered))
}

/// Records a poll by `who`, whose session ends once it stops polling.
pub fn polled(app: &App, who: &Identity) {
    if let Some(hooks) = &app.hooks {
        hooks.polled(who);
    }
}
