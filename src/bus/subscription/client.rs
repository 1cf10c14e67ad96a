//! A subscription as a client session's: left out of the messages that exclude it, and
//! reached by the server API's commands for its user (see [`crate::bus::control`]).

use std::sync::Arc;

use super::{Event, Subscription};
use crate::bus::Present;
use crate::bus::control::{Control, Member, Op};
use crate::protocol::Cursor;

impl Subscription {
    /// Makes this the subscription of client session `client`: a message published with
    /// it as `exclude_client` is not handed out, yet the cursor moves past it, so the
    /// client sees neither the message nor a hole. With `streams`, the channels it
    /// follows from now on make the client present (where they keep presence).
    /// A stream of a user is reached by the server API's commands for that user.
    ///
    /// Set it first, before the subscription follows a channel or lends an express
    /// writer: it is kept by the inbox, which is then not yet shared.
    pub fn set_client(&mut self, client: Option<Present>, streams: bool) {
        let member = client.map(|present| Arc::new(Member::new(present, streams)));
        if !self.inbox.set_client(member) {
            tracing::error!("a subscription's client was set after it was shared; ignored");
            debug_assert!(false, "set_client after add or set_express");
            return;
        }
        // A parked long poll too: a server command wakes it, and its answer tells the
        // client at once instead of after its hold.
        if let Some(member) = self.inbox.client() {
            let subscriber = self.inbox.subscriber();
            self.bus.users().register(self.id, member, subscriber);
        }
    }

    pub(super) fn release_member(&self) {
        if let Some(member) = self.inbox.client() {
            self.bus.users().unregister(self.id, member);
        }
    }

    /// Applies the server commands queued for this subscription's user, queueing what
    /// the transport must tell the client.
    pub(super) async fn apply_commands(&mut self) {
        let Some(member) = self.inbox.client().cloned() else {
            return;
        };
        for command in member.take() {
            let channel = command.channel();
            match (command.op, channel) {
                (Op::Subscribe, Some(channel)) if !self.follows(&channel) => {
                    let at = self.pending.len();
                    let wanted = Cursor {
                        entries: vec![(channel.clone(), command.start(&channel))],
                    };
                    match self.add(&wanted).await {
                        Ok(start) => {
                            let at = at.min(self.pending.len());
                            self.pending
                                .insert(at, Event::Control(Control::Subscribed(start)));
                        }
                        Err(err) => {
                            tracing::warn!(%channel, %err, "server subscribe not applied");
                        }
                    }
                }
                (Op::Unsubscribe, Some(channel)) if self.follows(&channel) => {
                    self.remove(std::slice::from_ref(&channel));
                    self.pending
                        .push_back(Event::Control(Control::Unsubscribed(channel)));
                }
                (Op::Disconnect, _) => {
                    self.pending
                        .push_back(Event::Control(Control::Disconnected));
                }
                _ => {}
            }
        }
    }

    /// Whether `event` is a message this subscriber is left out of.
    pub(super) fn skipped(&self, event: &Event) -> bool {
        match (event, self.inbox.client()) {
            // The id is compared only when the message names one: most name none.
            (Event::Message(message), Some(member)) => message
                .excluded()
                .is_some_and(|excluded| member.present.client == *excluded),
            _ => false,
        }
    }

    /// The client present by this stream, if it is one.
    pub(super) fn streaming(&self) -> Option<&Present> {
        self.inbox
            .client()
            .filter(|m| m.streams)
            .map(|member| &member.present)
    }
}
