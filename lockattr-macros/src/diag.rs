//! Diagnostics helpers: accumulating errors, and "did you mean" suggestions.

use proc_macro2::{Span, TokenStream};

/// Every error found so far, reported together (serde's habit): a user fixing a key template
/// should see all bad placeholders and durations at once, not one per build.
#[derive(Default)]
pub(crate) struct Errors {
    combined: Option<syn::Error>,
}

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.combined {
            Some(all) => all.combine(error),
            None => self.combined = Some(error),
        }
    }

    pub(crate) fn add(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.combined.is_none()
    }

    /// `compile_error!` invocations for every error, or nothing.
    pub(crate) fn to_compile_errors(&self) -> TokenStream {
        self.combined
            .as_ref()
            .map(syn::Error::to_compile_error)
            .unwrap_or_default()
    }
}

/// Levenshtein distance between two strings, counted in `char`s.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    // One row of the dynamic-programming table at a time.
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The candidate closest to `wrong`, if it is close enough to be a likely typo: a small edit
/// distance (relative to the length), the same name in another case, one name a prefix of
/// the other (`party` for `party_id`), or a word of a `snake_case` name (`id` for `party_id`).
pub(crate) fn closest<'a>(
    wrong: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let wrong_lower = wrong.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        if candidate == wrong {
            continue;
        }
        let lower = candidate.to_lowercase();
        let distance = if lower == wrong_lower {
            0
        } else {
            edit_distance(&wrong_lower, &lower)
        };
        let limit = 1 + wrong.chars().count().max(candidate.chars().count()) / 3;
        let prefix = wrong_lower.len() >= 3
            && lower.len() >= 3
            && (lower.starts_with(&wrong_lower) || wrong_lower.starts_with(&lower));
        // `id` for `party_id`, `party` for `party_id`: one word of a snake_case name.
        let word = lower.split('_').any(|w| w == wrong_lower);
        if (distance <= limit || prefix || word) && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// The name `wrong` most likely stands for, among `names` and `aliases` (other spellings of
/// the same names, `(alias, name)`): the name of an alias spelled exactly (in any case), else
/// the [`closest`] of the names and aliases together, an alias standing for its name. So a
/// typo of an alias (`tiemout` for `timeout`) gets the same suggestion as the alias.
pub(crate) fn closest_meaning<'a>(
    wrong: &str,
    names: &[&'a str],
    aliases: &[(&str, &'a str)],
) -> Option<&'a str> {
    let lower = wrong.to_lowercase();
    if let Some((_, name)) = aliases.iter().find(|(alias, _)| *alias == lower) {
        return Some(name);
    }
    // Names first, so a tie goes to the name itself.
    let candidates = names
        .iter()
        .copied()
        .chain(aliases.iter().map(|(alias, _)| *alias));
    let found = closest(wrong, candidates)?;
    let name = match aliases.iter().find(|(alias, _)| *alias == found) {
        Some((_, name)) => name,
        None => names.iter().find(|name| **name == found)?,
    };
    // `key` is close to its own alias `keys`: a name is not a suggestion for itself.
    (*name != wrong).then_some(*name)
}

/// `` `a`, `b`, `c` ``: names in backticks, for "expected one of" lists.
pub(crate) fn backticked<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("lease", "lese"), 1);
        assert_eq!(edit_distance("key", "kye"), 2);
        assert_eq!(edit_distance("größe", "grösse"), 2);
    }

    #[test]
    fn suggestions() {
        let args = ["self", "party_id", "name"];
        assert_eq!(closest("party", args), Some("party_id"));
        assert_eq!(closest("partyid", args), Some("party_id"));
        assert_eq!(closest("nme", args), Some("name"));
        assert_eq!(closest("Name", args), Some("name"));
        assert_eq!(closest("zzz", args), None);
        assert_eq!(closest("id", args), Some("party_id"));
        assert_eq!(closest("x", args), None);
        assert_eq!(
            closest("name", args),
            None,
            "an exact match is not a suggestion"
        );
        assert_eq!(closest("lese", ["key", "wait", "lease"]), Some("lease"));
    }

    #[test]
    fn meanings_through_aliases() {
        let names = ["key", "wait", "lease"];
        let aliases = [("timeout", "wait"), ("ttl", "lease"), ("expiry", "lease")];
        let meaning = |wrong| closest_meaning(wrong, &names, &aliases);
        // Aliases, exactly and in another case.
        assert_eq!(meaning("timeout"), Some("wait"));
        assert_eq!(meaning("TTL"), Some("lease"));
        // Typos of names.
        assert_eq!(meaning("lese"), Some("lease"));
        assert_eq!(meaning("kye"), Some("key"));
        // Typos of aliases.
        assert_eq!(meaning("tiemout"), Some("wait"));
        assert_eq!(meaning("timout"), Some("wait"));
        assert_eq!(meaning("tll"), Some("lease"));
        assert_eq!(meaning("expirey"), Some("lease"));
        assert_eq!(meaning("Expiry"), Some("lease"));
        // Nothing close.
        assert_eq!(meaning("fairness"), None);
        assert_eq!(meaning("x"), None);
        // A name is never its own suggestion, not even through a close alias of it.
        assert_eq!(meaning("wait"), None);
        assert_eq!(closest_meaning("key", &["key"], &[("keys", "key")]), None);
    }

    #[test]
    fn backticked_lists() {
        assert_eq!(backticked(["a", "b"]), "`a`, `b`");
        assert_eq!(backticked([]), "");
    }

    #[test]
    fn errors_accumulate() {
        let mut errors = Errors::default();
        assert!(errors.is_empty());
        assert!(errors.to_compile_errors().is_empty());
        errors.add(Span::call_site(), "first");
        errors.add(Span::call_site(), "second");
        let text = errors.to_compile_errors().to_string();
        assert!(text.contains("first") && text.contains("second"), "{text}");
    }
}
