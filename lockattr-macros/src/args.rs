//! The attribute's arguments: `key = "..", wait = "..", lease = "..", renew = .., fenced = ..,
//! locker = ..`.
//!
//! Parsing keeps going after a bad argument so that every mistake is reported in one build; an
//! argument that failed to parse is left out (`None`) so later checks do not pile secondary
//! errors on top.

use std::fmt::Write as _;

use proc_macro2::{Span, TokenStream};
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Lit, LitBool, LitStr};

use crate::diag::{backticked, closest_meaning, Errors};
use crate::duration;
use crate::template::{self, Template};

/// Every argument the attribute accepts, in the order the docs list them.
pub(crate) const NAMES: [&str; 6] = ["key", "wait", "lease", "renew", "fenced", "locker"];

/// Names people bring from other lock libraries (Redisson's `waitTime`/`leaseTime`, `ttl`,
/// `timeout`, ...) and the argument that means the same thing here.
const SYNONYMS: &[(&str, &str)] = &[
    ("timeout", "wait"),
    ("wait_time", "wait"),
    ("waittime", "wait"),
    ("wait_for", "wait"),
    ("max_wait", "wait"),
    ("acquire_timeout", "wait"),
    ("lock_timeout", "wait"),
    ("try_for", "wait"),
    ("ttl", "lease"),
    ("lease_time", "lease"),
    ("leasetime", "lease"),
    ("expire", "lease"),
    ("expiry", "lease"),
    ("expires", "lease"),
    ("expiration", "lease"),
    ("px", "lease"),
    ("hold", "lease"),
    ("hold_for", "lease"),
    ("name", "key"),
    ("lock", "key"),
    ("lock_key", "key"),
    ("lock_name", "key"),
    ("keys", "key"),
    ("resource", "key"),
    ("value", "key"),
    ("auto_renew", "renew"),
    ("autorenew", "renew"),
    ("watchdog", "renew"),
    ("renewal", "renew"),
    ("keep_alive", "renew"),
    ("keepalive", "renew"),
    ("extend", "renew"),
    ("refresh", "renew"),
    ("fence", "fenced"),
    ("fencing", "fenced"),
    ("fencing_token", "fenced"),
    ("fenced_token", "fenced"),
    ("with_token", "fenced"),
    ("client", "locker"),
    ("redis", "locker"),
    ("connection", "locker"),
    ("conn", "locker"),
    ("pool", "locker"),
    ("manager", "locker"),
    ("lock_manager", "locker"),
    ("redlock", "locker"),
];

/// A key template and the literal it came from (for spans).
pub(crate) struct Key {
    pub(crate) lit: LitStr,
    pub(crate) template: Template,
}

/// `wait` or `lease`.
pub(crate) enum DurationArg {
    /// A string literal, validated here.
    Fixed { millis: u64, span: Span },
    /// Any other expression, which must evaluate to a `Duration` at run time.
    Runtime(Expr),
}

/// `renew` or `fenced`: a `bool`.
pub(crate) enum FlagArg {
    Fixed(LitBool),
    Runtime(Expr),
}

/// The parsed arguments. A field is `None` when the argument was absent or invalid.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) key: Option<Key>,
    pub(crate) wait: Option<DurationArg>,
    pub(crate) lease: Option<DurationArg>,
    pub(crate) renew: Option<FlagArg>,
    pub(crate) fenced: Option<FlagArg>,
    pub(crate) locker: Option<Expr>,
}

/// Parses the attribute's arguments, adding every problem to `errors`.
pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Args {
    let mut args = Args::default();
    // Which arguments were seen, valid or not, to report duplicates and a missing `key` once.
    let mut seen: Vec<String> = Vec::new();
    let parser = |input: ParseStream<'_>| {
        if input.peek(LitStr) {
            let lit: LitStr = input.parse()?;
            errors.add(
                lit.span(),
                format!(
                    "the key is a named argument; write `key = {}`",
                    quote::ToTokens::to_token_stream(&lit)
                ),
            );
            seen.push("key".to_owned());
            if input.is_empty() {
                return Ok(());
            }
            input.parse::<syn::Token![,]>()?;
        }
        syn::meta::parser(|meta| {
            let name = meta
                .path
                .get_ident()
                .map_or_else(|| path_text(&meta.path), ToString::to_string);
            let span = meta.path.span();
            if !NAMES.contains(&name.as_str()) {
                errors.add(span, unknown_argument(&name));
                return skip_value(&meta);
            }
            if seen.contains(&name) {
                errors.add(span, format!("duplicate argument `{name}`"));
                return skip_value(&meta);
            }
            seen.push(name.clone());
            if !meta.input.peek(syn::Token![=]) {
                errors.add(span, needs_value(&name));
                return skip_value(&meta);
            }
            let value: Expr = meta.value()?.parse()?;
            match name.as_str() {
                "key" => args.key = parse_key(&value, errors),
                "wait" | "lease" => {
                    let parsed = parse_duration(&name, value, errors);
                    if name == "wait" {
                        args.wait = parsed;
                    } else {
                        args.lease = parsed;
                    }
                }
                "renew" => args.renew = parse_flag("renew", value, errors),
                "fenced" => args.fenced = parse_flag("fenced", value, errors),
                "locker" => args.locker = parse_locker(value, errors),
                _ => unreachable!("NAMES and this match list the same arguments"),
            }
            Ok(())
        })
        .parse2(input.parse()?)
    };
    if let Err(e) = parser.parse2(tokens) {
        errors.push(e);
        // A syntax error can hide a `key` that came later: do not also report it missing.
        return args;
    }
    if !seen.iter().any(|n| n == "key") {
        errors.add(
            Span::call_site(),
            "missing argument `key`: name the lock, e.g. \
             `#[distributed_lock(key = \"order:<order_id>\")]`",
        );
    }
    args
}

fn path_text(path: &syn::Path) -> String {
    quote::ToTokens::to_token_stream(path)
        .to_string()
        .replace(' ', "")
}

fn unknown_argument(name: &str) -> String {
    let suggestion = closest_meaning(name, &NAMES, SYNONYMS);
    let mut message = format!(
        "unknown argument `{name}`; expected one of {}",
        backticked(NAMES)
    );
    if let Some(s) = suggestion {
        let _ = write!(message, " (did you mean `{s}`?)");
    }
    message
}

fn needs_value(name: &str) -> String {
    let example = match name {
        "key" => "key = \"order:<order_id>\"",
        "wait" => "wait = \"5s\"",
        "lease" => "lease = \"30s\"",
        "renew" => "renew = false",
        "fenced" => "fenced = true",
        _ => "locker = self.locker",
    };
    format!("`{name}` needs a value, e.g. `{example}`")
}

/// Consumes whatever follows an argument name we are not going to use, so parsing can go on
/// with the next argument.
fn skip_value(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren)
        || meta.input.peek(syn::token::Bracket)
        || meta.input.peek(syn::token::Brace)
    {
        meta.input.parse::<proc_macro2::Group>()?;
    }
    Ok(())
}

fn literal_kind(lit: &Lit) -> &'static str {
    match lit {
        Lit::Str(_) => "a string",
        Lit::ByteStr(_) | Lit::CStr(_) => "a byte string",
        Lit::Byte(_) => "a byte",
        Lit::Char(_) => "a character",
        Lit::Int(_) => "an integer",
        Lit::Float(_) => "a float",
        Lit::Bool(_) => "a boolean",
        _ => "a literal",
    }
}

fn parse_key(value: &Expr, errors: &mut Errors) -> Option<Key> {
    let found = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => {
            return match template::parse(&lit.value()) {
                Ok(template) => {
                    // The key is kept, so its placeholders are still checked against the
                    // function and every mistake is reported in one build.
                    for message in template.collisions() {
                        errors.add(lit.span(), message);
                    }
                    Some(Key {
                        lit: lit.clone(),
                        template,
                    })
                }
                Err(message) => {
                    errors.add(lit.span(), message);
                    None
                }
            };
        }
        Expr::Lit(ExprLit { lit, .. }) => literal_kind(lit),
        _ => "an expression",
    };
    errors.add(
        value.span(),
        format!(
            "`key` must be a string literal, like `key = \"order:<order_id>\"`, found {found}; \
             the template is checked against the arguments at compile time, so it cannot be \
             computed"
        ),
    );
    None
}

fn parse_duration(name: &str, value: Expr, errors: &mut Errors) -> Option<DurationArg> {
    match &value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => match duration::parse(&lit.value()) {
            Ok(millis) => Some(DurationArg::Fixed {
                millis,
                span: lit.span(),
            }),
            Err(message) => {
                errors.add(lit.span(), format!("invalid `{name}`: {message}"));
                None
            }
        },
        Expr::Lit(ExprLit { lit, .. }) => {
            let hint = match lit {
                Lit::Int(int) => format!(
                    "; a number needs a unit, e.g. `{name} = \"{}s\"` or `{name} = \"{}ms\"`",
                    int.base10_digits(),
                    int.base10_digits()
                ),
                _ => String::new(),
            };
            errors.add(
                lit.span(),
                format!(
                    "`{name}` must be a duration string such as `\"500ms\"`, `\"30s\"` or \
                     `\"1m30s\"`, or a `Duration` expression, found {}{hint}",
                    literal_kind(lit)
                ),
            );
            None
        }
        _ => Some(DurationArg::Runtime(value)),
    }
}

fn parse_flag(name: &str, value: Expr, errors: &mut Errors) -> Option<FlagArg> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Some(FlagArg::Fixed(b)),
        Expr::Lit(ExprLit { lit, .. }) => {
            errors.add(
                lit.span(),
                format!(
                    "`{name}` must be `true` or `false`, found {}",
                    literal_kind(&lit)
                ),
            );
            None
        }
        other => Some(FlagArg::Runtime(other)),
    }
}

fn parse_locker(value: Expr, errors: &mut Errors) -> Option<Expr> {
    if let Expr::Lit(ExprLit { lit, .. }) = &value {
        let hint = if matches!(lit, Lit::Str(_)) {
            "; to use another Redis, build a `Locker` for it once (`Locker::connect(url)`) and \
             keep it where the function can reach it"
        } else {
            ""
        };
        errors.add(
            lit.span(),
            format!(
                "`locker` must be an expression giving a `lockattr::Locker` (or a reference, \
                 `Arc` or `Box` of one), like `locker = self.locker`, found {}{hint}",
                literal_kind(lit)
            ),
        );
        return None;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn run(tokens: TokenStream) -> (Args, String) {
        let mut errors = Errors::default();
        let args = parse(tokens, &mut errors);
        (args, errors.to_compile_errors().to_string())
    }

    fn ok(tokens: TokenStream) -> Args {
        let (args, errors) = run(tokens);
        assert!(errors.is_empty(), "unexpected errors: {errors}");
        args
    }

    fn millis(arg: Option<&DurationArg>) -> Option<u64> {
        match arg {
            Some(DurationArg::Fixed { millis, .. }) => Some(*millis),
            _ => None,
        }
    }

    #[test]
    fn all_arguments() {
        let args = ok(quote!(
            key = "party:<id>",
            wait = "100s",
            lease = "2s",
            renew = false,
            fenced = true,
            locker = self.locker,
        ));
        assert_eq!(args.key.unwrap().template.segments.len(), 2);
        assert!(matches!(args.fenced, Some(FlagArg::Fixed(ref b)) if b.value));
        assert_eq!(millis(args.wait.as_ref()), Some(100_000));
        assert_eq!(millis(args.lease.as_ref()), Some(2_000));
        assert!(matches!(args.renew, Some(FlagArg::Fixed(ref b)) if !b.value));
        assert!(matches!(args.locker, Some(Expr::Field(_))));
    }

    #[test]
    fn runtime_expressions() {
        let args = ok(quote!(
            key = "k",
            wait = Duration::from_secs(5),
            lease = LEASE,
            renew = cfg!(test),
            fenced = FENCED
        ));
        assert!(matches!(args.fenced, Some(FlagArg::Runtime(_))));
        assert!(matches!(args.wait, Some(DurationArg::Runtime(_))));
        assert!(matches!(args.lease, Some(DurationArg::Runtime(_))));
        assert!(matches!(args.renew, Some(FlagArg::Runtime(_))));
    }

    #[test]
    fn missing_key() {
        let (_, e) = run(quote!(wait = "1s"));
        assert!(e.contains("missing argument `key`"), "{e}");
        let (_, e) = run(quote!());
        assert!(e.contains("missing argument `key`"), "{e}");
    }

    #[test]
    fn unknown_arguments_suggest() {
        for (wrong, right) in [
            ("timeout", "wait"),
            ("ttl", "lease"),
            ("lease_time", "lease"),
            ("leaseTime", "lease"),
            ("wait_time", "wait"),
            ("lese", "lease"),
            ("kye", "key"),
            ("auto_renew", "renew"),
            // Typos of names from other libraries, suggested like the names themselves.
            ("tiemout", "wait"),
            ("tll", "lease"),
            ("leaseTiem", "lease"),
            ("expirey", "lease"),
            ("watchdgo", "renew"),
            ("conection", "locker"),
            ("fencing", "fenced"),
            ("fencing_token", "fenced"),
            ("fenced_tokne", "fenced"),
        ] {
            let ident = syn::Ident::new(wrong, Span::call_site());
            let (_, e) = run(quote!(key = "k", #ident = "1s"));
            assert!(
                e.contains(&format!("unknown argument `{wrong}`"))
                    && e.contains(&format!("did you mean `{right}`")),
                "{wrong}: {e}"
            );
        }
        let (_, e) = run(quote!(key = "k", fairness = true));
        assert!(
            e.contains("expected one of `key`, `wait`, `lease`, `renew`, `fenced`, `locker`")
                && !e.contains("did you mean"),
            "{e}"
        );
    }

    #[test]
    fn errors_accumulate_and_parsing_goes_on() {
        let (args, e) = run(quote!(
            timeout = "1s",
            key = "a",
            key = "b",
            wait = 5,
            lease = "2x",
            renew = "yes",
            fenced = 1,
            locker = "redis://x",
            retry(3)
        ));
        for expected in [
            "unknown argument `timeout`",
            "duplicate argument `key`",
            "`wait` must be a duration string",
            "e.g. `wait = \\\"5s\\\"`",
            "invalid `lease`: unknown unit `x`",
            "`renew` must be `true` or `false`, found a string",
            "`fenced` must be `true` or `false`, found an integer",
            "`locker` must be an expression",
            "unknown argument `retry`",
        ] {
            assert!(e.contains(expected), "missing {expected:?} in {e}");
        }
        assert!(!e.contains("missing argument `key`"));
        // The first `key` is kept.
        assert_eq!(
            args.key.unwrap().template.segments,
            template::parse("a").unwrap().segments
        );
    }

    #[test]
    fn keys_must_be_string_literals() {
        let (_, e) = run(quote!(key = 42));
        assert!(e.contains("`key` must be a string literal") && e.contains("an integer"));
        let (_, e) = run(quote!(key = KEY));
        assert!(e.contains("found an expression"), "{e}");
        let (_, e) = run(quote!(key = ""));
        assert!(e.contains("the key is empty"), "{e}");
        let (_, e) = run(quote!(key = "a<b"));
        assert!(e.contains("unclosed `<`"), "{e}");
    }

    #[test]
    fn positional_key_and_bare_names() {
        let (_, e) = run(quote!("party:<id>", wait = "1s"));
        assert!(e.contains("the key is a named argument"), "{e}");
        assert!(!e.contains("missing argument `key`"), "{e}");
        let (_, e) = run(quote!(key = "k", renew));
        assert!(e.contains("`renew` needs a value"), "{e}");
        let (_, e) = run(quote!(key = "k", fenced));
        assert!(
            e.contains("`fenced` needs a value, e.g. `fenced = true`"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        let (_, e) = run(quote!(key "k"));
        assert!(e.contains("compile_error"), "{e}");
    }
}
