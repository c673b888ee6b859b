//! Key templates: `"party:<party_id>"`, `"user:<req.user.id>"`, `"a<<b"` (a literal `<`).
//!
//! Pure: takes the literal's text and returns the parsed template or a message; the caller
//! attaches the span. Whether a placeholder names a real argument is checked later, against
//! the function (`check.rs`).
//!
//! # Two different argument values never render the same key
//!
//! The attribute's docs promise that a template names one lock per value of its placeholders.
//! [`Template::collisions`] enforces the rule that makes this true: **two consecutive
//! placeholders for different values are separated by literal text that contains `:`**.
//! Placeholders at the very start or end of the template need nothing.
//!
//! Why it is enough. The runtime (`lockattr/src/key.rs`, `KeyBuilder`) renders a template
//! `L0 <p1> L1 <p2> .. <pn> Ln` as `E(L0) V(v1) E(L1) .. V(vn) E(Ln)`, where `vi` is the
//! `Display` text of the i-th value and both `E` (literal text) and `V` (values) replace
//! character by character: `%`, `{`, `}` and control characters become `%XX`, and `V`
//! replaces `:` too. So:
//!
//! 1. `V` is injective: `%` itself is escaped, so the `%XX` written for one character cannot
//!    be confused with characters written as they are; and `V(v)` never contains `:`.
//! 2. `E(Li)` is fixed by the template, and contains `:` exactly when `Li` does (`E` leaves
//!    `:` alone and writes no other character as `:`).
//!
//! Take a rendered key. It starts with the fixed `E(L0)`: strip it. What follows is `V(v1)`,
//! then `E(L1)`. If `L1` contains `:`, let `c` be the length of `E(L1)` up to its first `:`.
//! Neither `V(v1)` nor that part of `E(L1)` contains `:`, so the first `:` after `E(L0)` is at
//! `|V(v1)| + c`: the key determines `|V(v1)|`, hence `V(v1)`, hence `v1` by (1). Strip
//! `V(v1) E(L1)` and repeat for `v2`, and so on; the last value `vn` is what lies between
//! `E(L(n-1))` and the fixed suffix `E(Ln)`. Every value is recovered from the key, so two
//! different tuples of values give two different keys. A placeholder repeated right after
//! itself (`<a>-<a>`) needs no `:` either: the run `V(v) E(L) V(v)` has no `:`, is found the
//! same way, and its length fixes `|V(v)|`. Text that looks like an escape needs no care,
//! in a value or in the template: the argument uses only (1) and (2), and both hold for it
//! (a value `"1%3A2"` is written `1%253A2`, with no `:`; literal `%3A` is written `%253A`,
//! fixed text like any other).
//!
//! Why it is needed. Between two different placeholders, literal text `L` without `:` is
//! something a value can contain too (`V(L) = E(L)`), so `(a, b) = ("1" + L + "2", "3")` and
//! `("1", "2" + L + "3")` render the same key; with `L` empty, `(1, 23)` and `(12, 3)` do. The
//! types of the values are not known here (`<a>-<b>` would be injective if both were
//! integers), so the rule is the one that holds for every type.
//!
//! The promise is about one template. Two different templates can name the same key on
//! purpose (`"party:<id>"` with `id = 7` and `"party:7"`): give each kind of resource its
//! own prefix.

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

    /// One message for each two consecutive placeholders that two different tuples of values
    /// could render as the same key (see the module docs); empty when rendering is injective.
    pub(crate) fn collisions(&self) -> Vec<String> {
        let mut messages = Vec::new();
        // The previous placeholder's index, and the literal text since it.
        let mut previous: Option<usize> = None;
        let mut between = String::new();
        for (index, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Literal(text) => between.push_str(text),
                Segment::Placeholder(placeholder) => {
                    if let Some(before) = previous {
                        let same = matches!(
                            &self.segments[before],
                            Segment::Placeholder(p) if p == placeholder
                        );
                        if !same && !between.contains(':') {
                            messages.push(self.collision(before, index, &between));
                        }
                    }
                    previous = Some(index);
                    between.clear();
                }
            }
        }
        messages
    }

    /// The message for the placeholders at `first` and `second`, separated by `between`.
    fn collision(&self, first: usize, second: usize, between: &str) -> String {
        let name = |index: usize| match &self.segments[index] {
            Segment::Placeholder(p) => p.text(),
            Segment::Literal(_) => String::new(),
        };
        let (a, b) = (name(first), name(second));
        let fixed = self.with_separators_fixed();
        if between.is_empty() {
            let key = self.rendered_with(first, "1", second, "23");
            format!(
                "placeholders `<{a}>` and `<{b}>` are adjacent, so `({a}, {b}) = (1, 23)` and \
                 `(12, 3)` would both lock `{key}`; separate them with `:`, e.g. `{fixed:?}`"
            )
        } else {
            let (one, two) = (format!("1{between}2"), format!("2{between}3"));
            let key = self.rendered_with(first, &one, second, "3");
            format!(
                "placeholders `<{a}>` and `<{b}>` are separated only by `{}`, which a value can \
                 contain too, so `({a}, {b}) = ({one:?}, \"3\")` and `(\"1\", {two:?})` would \
                 both lock `{key}`; separate them with text containing `:`, which no value \
                 contains once escaped, e.g. `{fixed:?}`",
                between.escape_debug()
            )
        }
    }

    /// The key's text with `x` and `y` in place of the placeholders at `first` and `second`,
    /// and the other placeholders as written.
    fn rendered_with(&self, first: usize, x: &str, second: usize, y: &str) -> String {
        let mut key = String::new();
        for (index, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Literal(text) => key.push_str(text),
                Segment::Placeholder(_) if index == first => key.push_str(x),
                Segment::Placeholder(_) if index == second => key.push_str(y),
                Segment::Placeholder(p) => {
                    key.push('<');
                    key.push_str(&p.text());
                    key.push('>');
                }
            }
        }
        key
    }

    /// The template as it would be written with a `:` in every separator that lacks one
    /// (`<a><b>` → `<a>:<b>`, `<a>-<b>` → `<a>:<b>`, `<a>by<b>` → `<a>:by:<b>`), for the
    /// suggestion.
    fn with_separators_fixed(&self) -> String {
        let mut text = String::new();
        let mut previous: Option<&Placeholder> = None;
        let mut pending = String::new();
        let flush = |text: &mut String, literal: &str| text.push_str(&literal.replace('<', "<<"));
        for segment in &self.segments {
            match segment {
                Segment::Literal(literal) => pending.push_str(literal),
                Segment::Placeholder(p) => {
                    if previous.is_some_and(|q| q != p) && !pending.contains(':') {
                        let word = pending.trim_matches(|c: char| !c.is_alphanumeric());
                        pending = if word.is_empty() {
                            ":".to_owned()
                        } else {
                            format!(":{word}:")
                        };
                    }
                    flush(&mut text, &pending);
                    pending.clear();
                    text.push('<');
                    text.push_str(&p.text());
                    text.push('>');
                    previous = Some(p);
                }
            }
        }
        flush(&mut text, &pending);
        text
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

    /// What `lockattr`'s `KeyBuilder` (`lockattr/src/key.rs`) makes of a template and values,
    /// written again here as a model: `%`, `{`, `}` and control characters become `%XX` in
    /// literal text and values, `:` too in values.
    fn render(template: &Template, values: &[(&str, &str)]) -> String {
        fn escape(out: &mut String, s: &str, colon: bool) {
            for c in s.chars() {
                if matches!(c, '%' | '{' | '}') || c.is_control() || (colon && c == ':') {
                    let mut buf = [0; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("%{b:02X}"));
                    }
                } else {
                    out.push(c);
                }
            }
        }
        let mut out = String::new();
        for segment in &template.segments {
            match segment {
                Segment::Literal(text) => escape(&mut out, text, false),
                Segment::Placeholder(p) => {
                    let value = values.iter().find(|(name, _)| *name == p.text()).unwrap().1;
                    escape(&mut out, value, true);
                }
            }
        }
        out
    }

    fn names(template: &Template) -> Vec<String> {
        let mut names: Vec<String> = template.placeholders().map(Placeholder::text).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Two different assignments of values to the placeholders that render the same key,
    /// searched over values chosen to break weak rules, and values made of the template's own
    /// literal text (`L`, `1L2`, `2L3`, `1L1`, `1L1L1`).
    fn find_collision(template: &Template) -> Option<(Vec<String>, Vec<String>)> {
        let mut values: Vec<String> = [
            "", "1", "12", "2", "23", ":", "-", "1-2", "2-3", "%", "%3A", "{", "\n",
        ]
        .map(str::to_owned)
        .to_vec();
        for segment in &template.segments {
            if let Segment::Literal(text) = segment {
                values.extend([
                    text.clone(),
                    format!("1{text}2"),
                    format!("2{text}3"),
                    format!("1{text}1"),
                    format!("1{text}1{text}1"),
                ]);
            }
        }
        values.sort();
        values.dedup();
        let names = names(template);
        let mut seen = std::collections::HashMap::new();
        let mut choice = vec![0; names.len()];
        loop {
            let chosen: Vec<String> = choice.iter().map(|&i| values[i].clone()).collect();
            let assignment: Vec<(&str, &str)> = names
                .iter()
                .map(String::as_str)
                .zip(chosen.iter().map(String::as_str))
                .collect();
            if let Some(previous) = seen.insert(render(template, &assignment), chosen.clone()) {
                return Some((previous, chosen));
            }
            // The next assignment, counting in base `values.len()`; none left after the last.
            let digit = choice.iter().position(|&i| i + 1 < values.len())?;
            choice[digit] += 1;
            choice[..digit].fill(0);
        }
    }

    #[test]
    fn separated_placeholders_render_injectively() {
        for text in [
            "global",
            "<a>",
            "p:<a>",
            "<a>:p",
            "<a>:<b>",
            "p:<a>:<b>:q",
            "<a>x:y<b>",
            "<a>::<b>",
            "<a>:<b>:<c>",
            "<a>:-<b>-:<c>",
            "<a>%3A:<b>",
            "<<<a>:<b>>>",
            "<a.x>:<a.y>",
            "<a><a>",
            "<a>-<a>:<b>",
        ] {
            let template = parse(text).unwrap();
            assert_eq!(template.collisions(), Vec::<String>::new(), "{text}");
            assert_eq!(find_collision(&template), None, "{text}");
        }
    }

    #[test]
    fn unseparated_placeholders_are_refused_and_do_collide() {
        for (text, count) in [
            ("<a><b>", 1),
            ("p:<a><b>", 1),
            ("<a>-<b>", 1),
            ("pair:<a>-<b>", 1),
            ("<a>%3A<b>", 1),
            ("<a><<<b>", 1),
            ("<a>{<b>", 1),
            ("<a>:<b><c>", 1),
            ("<a><b><c>", 2),
            ("<a>-<b>-<a>", 2),
            ("<x.a><x.b>", 1),
        ] {
            let template = parse(text).unwrap();
            assert_eq!(template.collisions().len(), count, "{text}");
            assert!(find_collision(&template).is_some(), "{text}");
        }
    }

    #[test]
    fn collision_messages() {
        assert_eq!(
            parse("p:<a><b>").unwrap().collisions(),
            [
                "placeholders `<a>` and `<b>` are adjacent, so `(a, b) = (1, 23)` and `(12, 3)` \
              would both lock `p:123`; separate them with `:`, e.g. `\"p:<a>:<b>\"`"
            ]
        );
        assert_eq!(
            parse("pair:<a>-<b>").unwrap().collisions(),
            ["placeholders `<a>` and `<b>` are separated only by `-`, which a value can contain \
              too, so `(a, b) = (\"1-2\", \"3\")` and `(\"1\", \"2-3\")` would both lock \
              `pair:1-2-3`; separate them with text containing `:`, which no value contains \
              once escaped, e.g. `\"pair:<a>:<b>\"`"]
        );
        // Other placeholders are shown as written; every gap is fixed in the suggestion.
        let messages = parse("<a><b>:<c>/<d.e>").unwrap().collisions();
        assert_eq!(messages.len(), 2);
        assert!(
            messages[0].contains("would both lock `123:<c>/<d.e>`"),
            "{messages:?}"
        );
        assert!(
            messages[1].contains("`(c, d.e) = (\"1/2\", \"3\")`"),
            "{messages:?}"
        );
        assert!(
            messages[1].contains("would both lock `<a><b>:1/2/3`"),
            "{messages:?}"
        );
        for message in &messages {
            assert!(
                message.ends_with("e.g. `\"<a>:<b>:<c>:<d.e>\"`"),
                "{message}"
            );
        }
    }

    #[test]
    fn the_example_values_in_the_messages_collide() {
        for (text, first, second) in [
            ("p:<a><b>", ["1", "23"], ["12", "3"]),
            ("pair:<a>-<b>", ["1-2", "3"], ["1", "2-3"]),
            ("<a>by<b>", ["1by2", "3"], ["1", "2by3"]),
        ] {
            let template = parse(text).unwrap();
            let one = render(&template, &[("a", first[0]), ("b", first[1])]);
            let two = render(&template, &[("a", second[0]), ("b", second[1])]);
            assert_eq!(one, two, "{text}");
        }
    }

    #[test]
    fn suggested_separators() {
        for (text, fixed) in [
            ("<a><b>", "<a>:<b>"),
            ("<a>/<b>", "<a>:<b>"),
            ("<a> - <b>", "<a>:<b>"),
            ("<a>by<b>", "<a>:by:<b>"),
            ("<a>-by-<b>", "<a>:by:<b>"),
            ("<<<a><<<b>>", "<<<a>:<b>>"),
            ("<a>-<a>-<b>:<c>", "<a>-<a>:<b>:<c>"),
        ] {
            let template = parse(text).unwrap();
            assert_eq!(template.with_separators_fixed(), fixed, "{text}");
            let again = parse(fixed).unwrap();
            assert_eq!(again.collisions(), Vec::<String>::new(), "{fixed}");
        }
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
