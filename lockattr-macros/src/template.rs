//! Key templates: `"party:<party_id>"`, `"user:<req.user.id>"`, `"a<<b"` (a literal `<`).
//!
//! Pure: takes the literal's text and returns the parsed template or a message; the caller
//! attaches the span. Whether a placeholder names a real argument is checked later, against
//! the function (`check.rs`).

/// One piece of a key template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Text copied into the key as written (`<<` already turned into `<`).
    Literal(String),
    /// A value formatted with `Display`.
    Placeholder(Placeholder),
}

/// `<root.field.field>`: an argument (or `self`) and a path of fields into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Placeholder {
    pub(crate) root: String,
    /// Named fields or tuple indices (`0`, `1`, ...).
    pub(crate) fields: Vec<String>,
}

impl Placeholder {
    /// The placeholder as the user wrote it, without the angle brackets.
    pub(crate) fn text(&self) -> String {
        let mut s = self.root.clone();
        for f in &self.fields {
            s.push('.');
            s.push_str(f);
        }
        s
    }
}

/// A parsed key template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template {
    pub(crate) segments: Vec<Segment>,
}

impl Template {
    pub(crate) fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Placeholder(p) => Some(p),
            Segment::Literal(_) => None,
        })
    }

    /// Bytes of literal text; the generated code reserves this plus a guess per placeholder, so
    /// the key is built with one allocation in the usual case.
    pub(crate) fn literal_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.len(),
                Segment::Placeholder(_) => 0,
            })
            .sum()
    }
}

/// Parses a key template.
///
/// - `<name>` and `<name.field.field>` are placeholders; names are Rust identifiers (`self`
///   included), fields are identifiers or tuple indices;
/// - `<<` is a literal `<`; a lone `>` is literal text;
/// - every other character is literal text.
pub(crate) fn parse(text: &str) -> Result<Template, String> {
    if text.is_empty() {
        return Err(
            "the key is empty; give the lock a name, e.g. `key = \"order:<order_id>\"`".to_owned(),
        );
    }
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        literal.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        if let Some(after_escape) = after.strip_prefix('<') {
            literal.push('<');
            rest = after_escape;
            continue;
        }
        let Some(close) = after
            .find(['>', '<'])
            .filter(|&i| after.as_bytes()[i] == b'>')
        else {
            let shown = shorten(&rest[open..]);
            return Err(format!(
                "unclosed `<` in key template at `{shown}`; close the placeholder with `>`, \
                 or write `<<` for a literal `<`"
            ));
        };
        let inner = &after[..close];
        let placeholder = parse_placeholder(inner)?;
        if !literal.is_empty() {
            segments.push(Segment::Literal(std::mem::take(&mut literal)));
        }
        segments.push(Segment::Placeholder(placeholder));
        rest = &after[close + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(Template { segments })
}

fn parse_placeholder(inner: &str) -> Result<Placeholder, String> {
    if inner.is_empty() {
        return Err(
            "empty placeholder `<>` in key template; write `<argument>` to insert an \
                    argument, or `<<` for a literal `<`"
                .to_owned(),
        );
    }
    if inner.trim() != inner {
        return Err(format!(
            "placeholder `<{inner}>` has spaces; write `<{}>`",
            inner.trim()
        ));
    }
    let mut parts = inner.split('.');
    let root = parts.next().unwrap_or_default();
    if !is_identifier(root) {
        return Err(invalid(inner, root));
    }
    let mut fields = Vec::new();
    for field in parts {
        if !(is_identifier(field) || is_tuple_index(field)) || field == "self" {
            return Err(invalid(inner, field));
        }
        fields.push(field.to_owned());
    }
    Ok(Placeholder {
        root: root.to_owned(),
        fields,
    })
}

fn invalid(inner: &str, part: &str) -> String {
    let what = if part.is_empty() {
        "an empty name".to_owned()
    } else {
        format!("`{part}`")
    };
    format!(
        "invalid placeholder `<{inner}>`: {what} is not an identifier; a placeholder is an \
         argument name, optionally followed by fields (`<arg>`, `<arg.field>`, `<self.field>`); \
         write `<<` for a literal `<`"
    )
}

/// A Rust identifier as a placeholder may name it: ASCII letters, digits and `_`, not starting
/// with a digit, not `_` alone. Non-ASCII identifiers are accepted too.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first == '_' || first.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
        && s != "_"
}

fn is_tuple_index(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

/// At most 24 characters of a template, for messages.
fn shorten(s: &str) -> String {
    const MAX: usize = 24;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Segment {
        Segment::Literal(s.to_owned())
    }

    fn ph(root: &str, fields: &[&str]) -> Segment {
        Segment::Placeholder(Placeholder {
            root: root.to_owned(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        })
    }

    fn segments(s: &str) -> Vec<Segment> {
        parse(s).unwrap().segments
    }

    #[test]
    fn literal_only() {
        assert_eq!(segments("global"), vec![lit("global")]);
        assert_eq!(segments("a>b"), vec![lit("a>b")]);
    }

    #[test]
    fn placeholders() {
        assert_eq!(
            segments("party:<party_id>"),
            vec![lit("party:"), ph("party_id", &[])]
        );
        assert_eq!(
            segments("<a>:<b>"),
            vec![ph("a", &[]), lit(":"), ph("b", &[])]
        );
        assert_eq!(segments("<a><b>"), vec![ph("a", &[]), ph("b", &[])]);
        assert_eq!(
            segments("user:<req.user.id>/x"),
            vec![lit("user:"), ph("req", &["user", "id"]), lit("/x")]
        );
        assert_eq!(segments("<self.id>"), vec![ph("self", &["id"])]);
        assert_eq!(segments("<pair.0>"), vec![ph("pair", &["0"])]);
        assert_eq!(segments("<_x>"), vec![ph("_x", &[])]);
        assert_eq!(segments("<größe>"), vec![ph("größe", &[])]);
    }

    #[test]
    fn escaped_angle_brackets() {
        assert_eq!(segments("a<<b"), vec![lit("a<b")]);
        assert_eq!(segments("<<<id>>"), vec![lit("<"), ph("id", &[]), lit(">")]);
        assert_eq!(segments("<<<<"), vec![lit("<<")]);
    }

    #[test]
    fn placeholder_text() {
        let t = parse("<a.b.0>").unwrap();
        assert_eq!(t.placeholders().next().unwrap().text(), "a.b.0");
        assert_eq!(parse("ab<x>cd<<").unwrap().literal_len(), 5);
    }

    #[test]
    fn errors() {
        assert!(parse("").unwrap_err().contains("the key is empty"));
        let e = parse("party:<party_id").unwrap_err();
        assert!(
            e.contains("unclosed `<`") && e.contains("`<party_id`"),
            "{e}"
        );
        let e = parse("a<b<c>").unwrap_err();
        assert!(e.contains("unclosed `<`"), "{e}");
        assert!(parse("x<").unwrap_err().contains("unclosed `<`"));
        assert!(parse("<>").unwrap_err().contains("empty placeholder `<>`"));
        let e = parse("<a b>").unwrap_err();
        assert!(
            e.contains("`a b`") && e.contains("not an identifier"),
            "{e}"
        );
        assert!(parse("< id >").unwrap_err().contains("has spaces"));
        assert!(parse("<a.>").unwrap_err().contains("an empty name"));
        assert!(parse("<.a>").unwrap_err().contains("an empty name"));
        assert!(parse("<1a>").unwrap_err().contains("`1a`"));
        assert!(parse("<a.01>").unwrap_err().contains("`01`"));
        assert!(parse("<a.self>").unwrap_err().contains("`self`"));
        assert!(parse("<_>").unwrap_err().contains("`_`"));
        assert!(parse("<a-b>").unwrap_err().contains("`a-b`"));
        let long = format!("k:<{}", "x".repeat(100));
        assert!(parse(&long).unwrap_err().contains("..."));
    }
}
