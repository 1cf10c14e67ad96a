//! Channel names and epochs: the two names every position carries, their alphabets, and
//! the shared text that makes comparing them cheap.

use std::fmt;
use std::sync::Arc;

use super::split_once_ascii;
use crate::error::Error;

/// Longest channel name, in bytes (all allowed characters are ASCII).
pub const MAX_CHANNEL_LEN: usize = 128;
/// Longest epoch token.
pub const MAX_EPOCH_LEN: usize = 16;

/// The text of a channel name or an epoch, shared by every copy. Compared by pointer
/// before text: every delivery compares the message's channel and epoch with the
/// subscriber's, and a subscriber's position holds the epoch of the last message it
/// took, the allocation every later message of that history shares.
#[derive(Clone, Eq, PartialOrd, Ord)]
struct SharedStr(Arc<str>);

impl PartialEq for SharedStr {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl std::hash::Hash for SharedStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl std::ops::Deref for SharedStr {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// A validated channel name: 1 to 128 characters from `A-Z a-z 0-9 _ - . : /`.
///
/// Cheap to clone; `,` and `@` can never appear because they delimit cursors.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(SharedStr);

impl Channel {
    /// Parses a channel name, rejecting anything outside the allowed alphabet.
    pub fn parse(name: &str) -> Result<Self, Error> {
        let ok =
            !name.is_empty() && name.len() <= MAX_CHANNEL_LEN && name.bytes().all(is_channel_byte);
        if ok {
            Ok(Channel(SharedStr(Arc::from(name))))
        } else {
            Err(Error::BadChannel(truncate_for_message(name)))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace: the part before the first `:`, if the name has one.
    pub fn namespace(&self) -> Option<&str> {
        split_once_ascii(&self.0, b':').map(|(ns, _)| ns)
    }
}

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/')
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// The identity of one channel history; offsets are only comparable within one epoch.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(SharedStr);

impl Epoch {
    /// Parses an epoch token: 1 to 16 ASCII letters and digits.
    pub fn parse(token: &str) -> Option<Self> {
        let ok = !token.is_empty()
            && token.len() <= MAX_EPOCH_LEN
            && token.bytes().all(|b| b.is_ascii_alphanumeric());
        ok.then(|| Epoch(SharedStr(Arc::from(token))))
    }

    /// A fresh random epoch of eight characters.
    pub fn random() -> Self {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let token: String = (0..8)
            .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
            .collect();
        Epoch(SharedStr(Arc::from(token)))
    }

    /// The token as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// Shortens hostile input before echoing it in an error message.
pub(crate) fn truncate_for_message(text: &str) -> String {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_alphabet() {
        for ok in [
            "chat",
            "room:lobby",
            "user:alice",
            "a/b.c-d_e",
            &"x".repeat(128),
        ] {
            assert!(Channel::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a,b", "a@b", "a b", "é", &"x".repeat(129), "a\0"] {
            assert!(Channel::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Channel::parse("room:lobby").unwrap().namespace(),
            Some("room")
        );
        assert_eq!(Channel::parse("chat").unwrap().namespace(), None);
    }

    #[test]
    fn random_epochs_are_valid_and_differ() {
        let a = Epoch::random();
        assert!(Epoch::parse(a.as_str()).is_some());
        assert_ne!(a, Epoch::random());
    }
}
