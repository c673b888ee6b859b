//! Lock keys: escaping, namespacing and the Redis key names derived from one lock key.
//!
//! A key the caller writes (`"party:42"`) becomes these Redis keys, which all share the hash
//! tag `{party:42}` so they live in one Redis Cluster slot:
//!
//! | Redis name | what |
//! |---|---|
//! | `<namespace>:{<key>}` | the lock itself, while it is held: a string holding the owner's token (see `protocol`) |
//! | `<namespace>:{<key>}:released` | the pub/sub channel on which releases are announced (not a key) |
//!
//! Escaping is injective, so two different keys never map to the same Redis key and no key can
//! break out of its hash tag: `%`, `{`, `}`, and control characters (and, inside values
//! substituted into an attribute key template, the `:` separator) are written `%XX`.

use std::fmt::{self, Write as _};

use crate::Error;

/// Longest escaped key accepted, in bytes (namespace and suffixes not counted).
///
/// Redis itself accepts keys up to 512 MB, but every lock key travels in every command and
/// pub/sub message of that lock; a kilobyte is far more than any sane key needs and keeps a
/// runaway value (a whole request body formatted into the key) from being accepted silently.
pub const MAX_KEY_LEN: usize = 1024;

/// Characters escaped in every key.
fn needs_escape(c: char) -> bool {
    matches!(c, '%' | '{' | '}') || c.is_control()
}

fn push_escaped(out: &mut String, s: &str, escape_colon: bool) {
    // Most keys have nothing to escape: copy them whole (this runs on every acquisition). A
    // byte scan, conservative: the only control characters outside ASCII (U+0080 to U+009F)
    // start with the byte 0xC2, so a key with that byte takes the exact path below.
    let may_escape = |b: &u8| {
        matches!(b, 0x00..=0x1F | 0x7F | 0xC2 | b'%' | b'{' | b'}') || (escape_colon && *b == b':')
    };
    if !s.as_bytes().iter().any(may_escape) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        if needs_escape(c) || (escape_colon && c == ':') {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                // Writing to a String cannot fail.
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

/// A lock key after escaping, ready to be namespaced.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LockKey {
    /// What the caller wrote (for messages and tracing).
    pub(crate) display: String,
    /// The escaped form placed inside the hash tag.
    pub(crate) escaped: String,
}

impl LockKey {
    /// Escapes a key written by the caller as a whole string (`locker.lock("party:42")`).
    pub(crate) fn from_user(key: String) -> Result<Self, Error> {
        let mut escaped = String::with_capacity(key.len());
        push_escaped(&mut escaped, &key, false);
        Self::checked(key, escaped)
    }

    fn checked(display: String, escaped: String) -> Result<Self, Error> {
        if escaped.is_empty() {
            return Err(Error::invalid_key(&display, "the key is empty"));
        }
        if escaped.len() > MAX_KEY_LEN {
            return Err(Error::invalid_key(
                &display,
                format!(
                    "the escaped key is {} bytes, more than the limit of {MAX_KEY_LEN}; \
                     lock on an id rather than on a whole value",
                    escaped.len()
                ),
            ));
        }
        Ok(LockKey { display, escaped })
    }
}

/// Builds a key from an attribute template: literal parts are escaped like a whole user key,
/// substituted values additionally have `:` escaped, so `party:<a>` with `a = "1:2"` cannot
/// forge the key of `party:<a>:<b>` with `a = 1, b = 2`.
#[derive(Debug, Default)]
pub(crate) struct KeyBuilder {
    display: String,
    escaped: String,
}

impl KeyBuilder {
    pub(crate) fn with_capacity(n: usize) -> Self {
        KeyBuilder {
            display: String::with_capacity(n),
            escaped: String::with_capacity(n + 8),
        }
    }

    pub(crate) fn literal(&mut self, s: &str) {
        self.display.push_str(s);
        push_escaped(&mut self.escaped, s, false);
    }

    pub(crate) fn value<T: fmt::Display + ?Sized>(&mut self, v: &T) {
        let start = self.display.len();
        let _ = write!(self.display, "{v}");
        push_escaped(&mut self.escaped, &self.display[start..], true);
    }

    pub(crate) fn finish(self) -> Result<LockKey, Error> {
        LockKey::checked(self.display, self.escaped)
    }
}

/// The Redis names of one lock under one namespace (built on every acquisition).
#[derive(Clone, Debug)]
pub(crate) struct RedisNames {
    /// `<namespace>:{<key>}`.
    lock: String,
}

/// What the release channel's name adds to the lock's (the scripts append it too).
const CHANNEL_SUFFIX: &str = ":released";

impl RedisNames {
    pub(crate) fn new(namespace: &str, key: &LockKey) -> Self {
        let mut lock = String::with_capacity(namespace.len() + key.escaped.len() + 3);
        lock.push_str(namespace);
        lock.push_str(":{");
        lock.push_str(&key.escaped);
        lock.push('}');
        RedisNames { lock }
    }

    /// The lock: a string holding the owner's token.
    pub(crate) fn lock(&self) -> &str {
        &self.lock
    }

    /// The pub/sub channel on which releases are announced (needed only under contention).
    pub(crate) fn channel(&self) -> String {
        let mut c = String::with_capacity(self.lock.len() + CHANNEL_SUFFIX.len());
        c.push_str(&self.lock);
        c.push_str(CHANNEL_SUFFIX);
        c
    }
}

/// Checks a namespace given to the builder: it must not contain braces (it sits outside the
/// hash tag) or control characters, and must not be empty.
pub(crate) fn validate_namespace(ns: &str) -> Result<(), Error> {
    if ns.is_empty() {
        return Err(Error::config("the namespace is empty; use e.g. \"lock\""));
    }
    if ns.len() > 128 {
        return Err(Error::config("the namespace is longer than 128 bytes"));
    }
    if let Some(c) = ns.chars().find(|&c| needs_escape(c)) {
        return Err(Error::config(format!(
            "the namespace `{}` contains {c:?}; braces, `%` and control characters are not \
             allowed in a namespace (they would break the Redis Cluster hash tag)",
            ns.escape_debug()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(k: &str) -> String {
        LockKey::from_user(k.to_owned()).unwrap().escaped
    }

    fn templ(parts: &[(&str, bool)]) -> String {
        let mut b = KeyBuilder::default();
        for (s, is_value) in parts {
            if *is_value {
                b.value(s);
            } else {
                b.literal(s);
            }
        }
        b.finish().unwrap().escaped
    }

    #[test]
    fn plain_keys_are_unchanged() {
        assert_eq!(user("party:42"), "party:42");
        assert_eq!(templ(&[("party:", false), ("42", true)]), "party:42");
    }

    #[test]
    fn braces_percent_and_controls_are_escaped() {
        assert_eq!(user("a{b}c"), "a%7Bb%7Dc");
        assert_eq!(user("100%"), "100%25");
        assert_eq!(user("a\nb\0"), "a%0Ab%00");
        assert_eq!(user("é"), "é");
        assert_eq!(user("\u{85}"), "%C2%85");
        // Characters that start with 0xC2 but are not controls stay as they are.
        assert_eq!(user("\u{a0}\u{bf}x"), "\u{a0}\u{bf}x");
        assert_eq!(user("x\u{9f}\u{a0}"), "x%C2%9F\u{a0}");
    }

    #[test]
    fn the_whole_key_copy_agrees_with_the_escaping_of_every_character() {
        // Every character that decides anything, alone and around plain text: the output is
        // exactly the per-character escaping, whichever path produced it.
        let chars = [
            'a', 'Z', '0', ':', '%', '{', '}', '\0', '\n', '\u{1f}', ' ', '~', '\u{7f}', '\u{80}',
            '\u{85}', '\u{9f}', '\u{a0}', '\u{ff}', '\u{100}', 'é', '€', '\u{2028}', '😀',
        ];
        for c in chars {
            for s in [
                c.to_string(),
                format!("k:{c}"),
                format!("{c}:k"),
                format!("ab{c}{c}cd"),
            ] {
                for colon in [false, true] {
                    let mut expected = String::new();
                    for ch in s.chars() {
                        if needs_escape(ch) || (colon && ch == ':') {
                            let mut buf = [0u8; 4];
                            for b in ch.encode_utf8(&mut buf).bytes() {
                                expected.push_str(&format!("%{b:02X}"));
                            }
                        } else {
                            expected.push(ch);
                        }
                    }
                    let mut got = String::new();
                    push_escaped(&mut got, &s, colon);
                    assert_eq!(got, expected, "{s:?}, escape_colon {colon}");
                }
            }
        }
    }

    #[test]
    fn values_cannot_forge_separators() {
        let forged = templ(&[("party:", false), ("1:2", true)]);
        let real = templ(&[("party:", false), ("1", true), (":", false), ("2", true)]);
        assert_ne!(forged, real);
        assert_eq!(forged, "party:1%3A2");
    }

    #[test]
    fn escaping_is_injective_on_tricky_inputs() {
        let inputs = [
            "", "%", "%25", "%7B", "{", "}", "{}", "a:b", "a%3Ab", "\n", "%0A", "a}b{c",
        ];
        let mut seen = std::collections::HashMap::new();
        for i in inputs {
            let mut e = String::new();
            push_escaped(&mut e, i, false);
            if let Some(prev) = seen.insert(e.clone(), i) {
                panic!("{prev:?} and {i:?} both escape to {e:?}");
            }
            assert!(!e.contains('{') && !e.contains('}'));
        }
    }

    #[test]
    fn names_share_one_hash_tag() {
        let k = LockKey::from_user("x}y".into()).unwrap();
        let n = RedisNames::new("lock", &k);
        assert_eq!(n.lock(), "lock:{x%7Dy}");
        assert_eq!(n.channel(), "lock:{x%7Dy}:released");
    }

    #[test]
    fn empty_and_huge_keys_are_refused() {
        assert!(matches!(
            LockKey::from_user(String::new()),
            Err(Error::InvalidKey { .. })
        ));
        assert!(LockKey::from_user("k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(matches!(
            LockKey::from_user("k".repeat(MAX_KEY_LEN + 1)),
            Err(Error::InvalidKey { .. })
        ));
        // Escaping counts: 400 braces become 1200 bytes.
        assert!(LockKey::from_user("{".repeat(400)).is_err());
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(validate_namespace("lock").is_ok());
        assert!(validate_namespace("app:locks").is_ok());
        assert!(validate_namespace("").is_err());
        assert!(validate_namespace("a{b").is_err());
        assert!(validate_namespace("a\nb").is_err());
    }
}
