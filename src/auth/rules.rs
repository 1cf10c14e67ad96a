//! Channel namespaces: the part of a channel name before the first `:` picks the rules for
//! subscribing and publishing, and may override history retention.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Identity;
use super::pattern::any_matches;
use crate::error::Error;
use crate::protocol::Channel;

/// Who may subscribe to a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribeRule {
    /// Everyone, with or without a token.
    Anyone,
    /// Any valid token.
    Authenticated,
    /// A token whose `channels` claim matches the channel.
    Token,
    /// Only the user named after the namespace: `user:alice` is alice's.
    Owner,
}

/// Who may publish to a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishRule {
    /// Everyone, with or without a token.
    Anyone,
    /// Any valid token.
    Authenticated,
    /// A token whose `publish` claim matches the channel.
    Token,
    /// Only the owner of a personal channel (or a matching `publish` claim).
    Owner,
    /// Only backends holding an API key.
    Server,
}

/// The rules of one namespace; unset keys take the secure defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceConfig {
    /// Who may subscribe.
    pub subscribe: SubscribeRule,
    /// Who may publish.
    pub publish: PublishRule,
    /// Messages retained per channel, overriding `history.max_messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_max_messages: Option<usize>,
    /// Retention age in milliseconds, overriding `history.max_age_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_max_age_ms: Option<u64>,
    /// Whether its channels keep presence (`GET /presence`, the `presence` frame).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub presence: bool,
    /// Whether its channels announce joins and leaves to their subscribers (with
    /// `presence`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join_leave: bool,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            subscribe: SubscribeRule::Anyone,
            publish: PublishRule::Token,
            history_max_messages: None,
            history_max_age_ms: None,
            presence: false,
            join_leave: false,
        }
    }
}

/// The namespace of personal channels, whose subscribe rule is always `owner`.
pub const PERSONAL: &str = "user";

/// The namespace of the gateway's own channels (a Socket.IO session's mailbox,
/// `sio:<session id>`): no client may read or write them, whatever the rules say.
pub const RESERVED: &str = "sio";

/// Refuses a client a channel of the [`RESERVED`] namespace.
fn reserved(who: &Identity, channel: &Channel) -> Result<(), Error> {
    if channel.namespace() == Some(RESERVED) && !who.server {
        return Err(Error::Forbidden(format!(
            "{channel}: the {RESERVED}: namespace is the gateway's own"
        )));
    }
    Ok(())
}

/// The built-in namespaces: personal channels, readable by their owner only.
pub fn default_namespaces() -> BTreeMap<String, NamespaceConfig> {
    BTreeMap::from([(
        PERSONAL.to_owned(),
        NamespaceConfig {
            subscribe: SubscribeRule::Owner,
            publish: PublishRule::Token,
            history_max_messages: None,
            history_max_age_ms: None,
            presence: false,
            join_leave: false,
        },
    )])
}

/// Every namespace's rules, and the default for channels in none of them.
pub struct Rules {
    default: NamespaceConfig,
    namespaces: BTreeMap<String, NamespaceConfig>,
    /// Whether client tokens can be verified; without, only an API key can pass a rule
    /// other than `anyone`, and refusals say so.
    tokens: bool,
}

impl Rules {
    /// Rules from config; the personal namespace always reads as `owner`.
    pub fn new(
        default: NamespaceConfig,
        mut namespaces: BTreeMap<String, NamespaceConfig>,
    ) -> Self {
        namespaces
            .entry(PERSONAL.to_owned())
            .or_insert_with(|| default_namespaces().remove(PERSONAL).expect("built in"))
            .subscribe = SubscribeRule::Owner;
        Rules {
            default,
            namespaces,
            tokens: true,
        }
    }

    /// The same rules on a gateway that verifies client tokens (`true`, the default) or
    /// accepts none.
    pub fn tokens(self, tokens: bool) -> Self {
        Rules { tokens, ..self }
    }

    /// Whether some channel may be published to without credentials.
    pub fn anyone_publishes(&self) -> bool {
        std::iter::once(&self.default)
            .chain(self.namespaces.values())
            .any(|ns| ns.publish == PublishRule::Anyone)
    }

    fn namespace(&self, channel: &Channel) -> &NamespaceConfig {
        // A channel without a `:` is in no namespace: no map lookup for it.
        channel
            .namespace()
            .and_then(|namespace| self.namespaces.get(namespace))
            .unwrap_or(&self.default)
    }

    /// Allows or refuses a subscription.
    pub fn check_subscribe(&self, who: &Identity, channel: &Channel) -> Result<(), Error> {
        reserved(who, channel)?;
        // A channel the connect hook granted is the backend's decision, not the rules'.
        if who.server || who.session.as_ref().is_some_and(|s| s.grants(channel)) {
            return Ok(());
        }
        let allowed = match self.namespace(channel).subscribe {
            SubscribeRule::Anyone => true,
            SubscribeRule::Authenticated => who.user.is_some(),
            SubscribeRule::Token => any_matches(&who.subscribe, channel.as_str()),
            SubscribeRule::Owner => is_owner(who, channel),
        };
        if allowed {
            Ok(())
        } else {
            Err(self.refusal(who, "subscribe to", channel, false))
        }
    }

    /// Allows or refuses a publish.
    pub fn check_publish(&self, who: &Identity, channel: &Channel) -> Result<(), Error> {
        reserved(who, channel)?;
        if who.server {
            return Ok(());
        }
        let rule = self.namespace(channel).publish;
        let allowed = match rule {
            PublishRule::Anyone => true,
            PublishRule::Authenticated => who.user.is_some(),
            PublishRule::Token => any_matches(&who.publish, channel.as_str()),
            PublishRule::Owner => {
                is_owner(who, channel) || any_matches(&who.publish, channel.as_str())
            }
            PublishRule::Server => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(self.refusal(who, "publish to", channel, rule == PublishRule::Server))
        }
    }

    /// Anonymous clients are told to authenticate (401) with what can work here, a
    /// token or only an API key; known ones that they may not (403).
    fn refusal(&self, who: &Identity, action: &str, channel: &Channel, server: bool) -> Error {
        if who.user.is_some() {
            return Error::Forbidden(format!("not allowed to {action} {channel}"));
        }
        Error::TokenInvalid(if server {
            format!("an API key (X-Cascade-Api-Key) is needed to {action} {channel}")
        } else if !self.tokens {
            format!(
                "an API key (X-Cascade-Api-Key) is needed to {action} {channel}: this \
                 gateway accepts no client tokens (no token key is configured)"
            )
        } else {
            format!("a token is needed to {action} {channel}")
        })
    }
}

fn is_owner(who: &Identity, channel: &Channel) -> bool {
    let owner = channel.as_str().split_once(':').map(|(_, id)| id);
    who.user.is_some() && who.user.as_deref() == owner
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::pattern::Pattern;

    fn ns(subscribe: SubscribeRule, publish: PublishRule) -> NamespaceConfig {
        NamespaceConfig {
            subscribe,
            publish,
            history_max_messages: None,
            history_max_age_ms: None,
            presence: false,
            join_leave: false,
        }
    }

    fn user(name: &str, subscribe: &[&str], publish: &[&str]) -> Identity {
        Identity {
            user: Some(name.into()),
            subscribe: subscribe.iter().map(|p| Pattern::new(*p)).collect(),
            publish: publish.iter().map(|p| Pattern::new(*p)).collect(),
            expires_at: None,
            server: false,
            session: None,
        }
    }

    fn ch(name: &str) -> Channel {
        Channel::parse(name).unwrap()
    }

    #[test]
    fn secure_defaults() {
        let rules = Rules::new(
            ns(SubscribeRule::Anyone, PublishRule::Token),
            BTreeMap::new(),
        );
        let anon = Identity::anonymous();
        let alice = user("alice", &[], &["room:*"]);
        assert!(rules.check_subscribe(&anon, &ch("news")).is_ok());
        assert_eq!(
            rules.check_publish(&anon, &ch("news")).unwrap_err().code(),
            "token_invalid"
        );
        assert!(rules.check_publish(&alice, &ch("room:a")).is_ok());
        assert_eq!(
            rules.check_publish(&alice, &ch("news")).unwrap_err().code(),
            "forbidden"
        );
        // Personal channels: the owner only, whatever the default says.
        assert!(rules.check_subscribe(&alice, &ch("user:alice")).is_ok());
        assert_eq!(
            rules
                .check_subscribe(&alice, &ch("user:bob"))
                .unwrap_err()
                .code(),
            "forbidden"
        );
        assert_eq!(
            rules
                .check_subscribe(&anon, &ch("user:alice"))
                .unwrap_err()
                .code(),
            "token_invalid"
        );
        assert!(
            rules
                .check_publish(&Identity::server(), &ch("user:bob"))
                .is_ok()
        );
    }

    #[test]
    fn refusals_name_what_can_work() {
        let anon = Identity::anonymous();
        let message = |rules: &Rules, channel: &str| {
            rules
                .check_publish(&anon, &ch(channel))
                .unwrap_err()
                .to_string()
        };
        let namespaces = BTreeMap::from([(
            "ops".to_owned(),
            ns(SubscribeRule::Anyone, PublishRule::Server),
        )]);
        let rules = Rules::new(ns(SubscribeRule::Anyone, PublishRule::Token), namespaces);
        assert!(message(&rules, "news").contains("a token is needed"));
        // Under `server`, or with no token key, no token can work: say what can.
        assert!(message(&rules, "ops:deploys").contains("an API key (X-Cascade-Api-Key)"));
        let rules = rules.tokens(false);
        let news = message(&rules, "news");
        assert!(news.contains("an API key (X-Cascade-Api-Key)"), "{news}");
        assert!(news.contains("accepts no client tokens"), "{news}");
        assert!(!rules.anyone_publishes());
        let open = Rules::new(
            ns(SubscribeRule::Anyone, PublishRule::Anyone),
            BTreeMap::new(),
        );
        assert!(open.anyone_publishes());
    }

    #[test]
    fn namespace_rules_apply_by_prefix() {
        let rules = Rules::new(
            ns(SubscribeRule::Anyone, PublishRule::Server),
            BTreeMap::from([
                (
                    "room".to_owned(),
                    ns(SubscribeRule::Authenticated, PublishRule::Authenticated),
                ),
                (
                    "vip".to_owned(),
                    ns(SubscribeRule::Token, PublishRule::Token),
                ),
                (
                    "user".to_owned(),
                    ns(SubscribeRule::Anyone, PublishRule::Owner),
                ),
            ]),
        );
        let bob = user("bob", &["vip:gold"], &[]);
        assert!(rules.check_subscribe(&bob, &ch("room:x")).is_ok());
        assert!(
            rules
                .check_subscribe(&Identity::anonymous(), &ch("room:x"))
                .is_err()
        );
        assert!(rules.check_subscribe(&bob, &ch("vip:gold")).is_ok());
        assert!(rules.check_subscribe(&bob, &ch("vip:silver")).is_err());
        // A channel named like a namespace but without ':' is in the default namespace.
        assert!(
            rules
                .check_subscribe(&Identity::anonymous(), &ch("room"))
                .is_ok()
        );
        // Even configured as anyone, personal channels stay owner-only to read.
        assert!(rules.check_subscribe(&bob, &ch("user:alice")).is_err());
        assert!(rules.check_publish(&bob, &ch("user:bob")).is_ok());
        assert!(rules.check_publish(&bob, &ch("user:alice")).is_err());
        assert!(rules.check_publish(&bob, &ch("news")).is_err());
    }
}
