//! Channel patterns from token claims and config: `*` matches any run of characters
//! (`room:*`, `*`); every other character matches itself.

/// A channel pattern with `*` wildcards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Wraps a pattern; any string is a valid pattern.
    pub fn new(pattern: impl Into<String>) -> Self {
        Pattern(pattern.into())
    }

    /// Whether `name` matches. A two-pointer glob, at worst pattern length times name
    /// length: hostile patterns such as `*a*a*a*b` cannot backtrack exponentially.
    pub fn matches(&self, name: &str) -> bool {
        let (p, s) = (self.0.as_bytes(), name.as_bytes());
        let (mut pi, mut si) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, si));
                pi += 1;
            } else if pi < p.len() && p[pi] == s[si] {
                pi += 1;
                si += 1;
            } else if let Some((star_p, star_s)) = star {
                pi = star_p + 1;
                si = star_s + 1;
                star = Some((star_p, star_s + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|b| *b == b'*')
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether any of `patterns` matches `name`.
pub fn any_matches(patterns: &[Pattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        let cases = [
            ("*", "anything", true),
            ("*", "", true),
            ("room:*", "room:lobby", true),
            ("room:*", "room:", true),
            ("room:*", "rooms:x", false),
            ("chat", "chat", true),
            ("chat", "chat2", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXcYYb", false),
            ("*:admin", "team:admin", true),
            ("user:alice", "user:alicex", false),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(
                Pattern::new(pattern).matches(name),
                expected,
                "{pattern} ~ {name}"
            );
        }
    }

    #[test]
    fn hostile_patterns_stay_linear() {
        let pattern = Pattern::new(format!("{}b", "*a".repeat(64)));
        assert!(!pattern.matches(&"a".repeat(128)));
    }
}
