//! ACL users for tests that run the locker under a restricted Redis user.
//!
//! ```no_run
//! # let server = lockattr_tests::RedisServer::start();
//! let user = server.create_user("locker", "s3cret", &["~lock:*", "&lock:*", "+@all"]);
//! let url = server.url_as(&user); // redis://locker:s3cret@127.0.0.1:<port>
//! ```

use crate::RedisServer;

/// A Redis ACL user created by [`RedisServer::create_user`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclUser {
    /// The user name.
    pub name: String,
    /// The user's (only) password.
    pub password: String,
}

impl RedisServer {
    /// Creates (or replaces) the user `name` with `password` and the given ACL `rules`
    /// (e.g. `["~lock:*", "&lock:*", "+eval", "+evalsha"]`), as
    /// `ACL SETUSER <name> reset on ><password> <rules...>`. `reset` first, so the user has
    /// exactly the rules given: no keys, channels or commands unless listed.
    ///
    /// # Panics
    /// When Redis refuses a rule (the message names it).
    pub fn create_user(&self, name: &str, password: &str, rules: &[&str]) -> AclUser {
        let password_rule = format!(">{password}");
        let mut args = vec![
            "ACL",
            "SETUSER",
            name,
            "reset",
            "on",
            password_rule.as_str(),
        ];
        args.extend_from_slice(rules);
        self.admin(&args)
            .unwrap_or_else(|e| panic!("ACL SETUSER {name} {rules:?}: {e}"));
        AclUser {
            name: name.to_owned(),
            password: password.to_owned(),
        }
    }

    /// Deletes an ACL user (its open connections are closed by Redis).
    pub fn delete_user(&self, name: &str) {
        self.admin(&["ACL", "DELUSER", name])
            .unwrap_or_else(|e| panic!("ACL DELUSER {name}: {e}"));
    }

    /// The user's rules as Redis reports them (`ACL GETUSER`-style, from `ACL LIST`).
    pub fn user_rules(&self, name: &str) -> Option<String> {
        let list = self.admin(&["ACL", "LIST"]).expect("ACL LIST");
        let prefix = format!("user {name} ");
        list.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_owned)
    }

    /// This server's URL with the user's credentials:
    /// `redis://<user>:<password>@127.0.0.1:<port>` (`rediss://` for a TLS server), both
    /// percent-encoded.
    pub fn url_as(&self, user: &AclUser) -> String {
        url_with_credentials(&self.url(), &user.name, &user.password)
    }

    /// One admin command as the default user, over redis-rs for a plain server and `redis-cli`
    /// for a TLS one; the reply as text (array items one per line).
    pub(crate) fn admin(&self, args: &[&str]) -> Result<String, String> {
        if self.tls().is_some() {
            return self.cli(args);
        }
        let (name, rest) = args.split_first().expect("a command");
        let mut cmd = redis::cmd(name);
        for arg in rest {
            cmd.arg(*arg);
        }
        let value: redis::Value = cmd.query(&mut self.conn()).map_err(|e| e.to_string())?;
        Ok(value_text(&value))
    }
}

fn value_text(value: &redis::Value) -> String {
    match value {
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().map(value_text).collect::<Vec<_>>().join("\n")
        }
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) | redis::Value::VerbatimString { text: s, .. } => s.clone(),
        redis::Value::Okay => "OK".to_owned(),
        redis::Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// Inserts `user:password@` into a `redis://` or `rediss://` URL, percent-encoding both.
///
/// # Panics
/// If `url` has no `://`.
pub fn url_with_credentials(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    format!(
        "{scheme}://{}:{}@{rest}",
        percent_encode(user),
        percent_encode(password)
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_encoded_into_the_url() {
        assert_eq!(
            url_with_credentials("redis://127.0.0.1:7000", "locker", "p@ss:w/rd%"),
            "redis://locker:p%40ss%3Aw%2Frd%25@127.0.0.1:7000"
        );
        assert_eq!(
            url_with_credentials("rediss://127.0.0.1:7000/#insecure", "a b", "x"),
            "rediss://a%20b:x@127.0.0.1:7000/#insecure"
        );
    }
}
