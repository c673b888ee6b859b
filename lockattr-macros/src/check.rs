//! Cross-checks of the arguments against the function: it is `async` (or what `#[async_trait]`
//! made of an `async fn`), it returns a type that can carry a lock error, every placeholder
//! names an argument (or a field of `self`), and the lease is not zero.
//!
//! The result is a [`Plan`]: everything `expand.rs` needs, already resolved to tokens that carry
//! the user's spans.

use std::fmt::Write as _;

use proc_macro2::{Ident, TokenStream};
use quote::{quote, ToTokens};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::visit_mut::VisitMut;
use syn::{Block, Expr, ExprAsync, FnArg, ItemFn, Local, Member, Pat, ReturnType, Stmt, Type};

use crate::args::{Args, DurationArg};
use crate::diag::{backticked, closest, Errors};
use crate::template::Placeholder;

/// How the function's body is laid out.
pub(crate) enum Shape {
    /// A plain `async fn`: the generated code replaces its block.
    AsyncFn,
    /// What `#[async_trait]` made of an `async fn` (it expands before us when it sits on the
    /// enclosing `impl`): `fn f(..) -> Pin<Box<dyn Future<Output = R> + ..>> { Box::pin(async
    /// move { ..; let __ret: R = BODY; __ret }) }`. The generated code replaces `BODY`.
    AsyncTrait,
}

/// What the expansion needs, checked.
pub(crate) struct Plan {
    pub(crate) shape: Shape,
    /// The function's declared return type (`R` of the future for `#[async_trait]`).
    pub(crate) return_type: Type,
    /// One expression per placeholder, in template order, such as `&party_id` (spanned at the
    /// parameter) or `&self.party.id` (spanned at the key).
    pub(crate) values: Vec<TokenStream>,
    /// The `locker = ..` expression, with `self` renamed where `#[async_trait]` renamed it.
    pub(crate) locker: Option<Expr>,
}

/// An argument name visible to the key template and the identifier that introduces it.
struct Binding {
    name: String,
    ident: Ident,
}

/// Checks the function against the arguments. Returns `None` (with `errors` filled in) when the
/// function cannot be expanded.
pub(crate) fn check(args: &Args, function: &ItemFn, errors: &mut Errors) -> Option<Plan> {
    let sig = &function.sig;
    let name = &sig.ident;

    check_lease(args, errors);

    let shape = if let Some(constness) = &sig.constness {
        errors.add(
            constness.span,
            "`#[distributed_lock]` cannot be applied to a `const fn`: taking a lock talks to \
             Redis at run time; make it an `async fn`",
        );
        None
    } else if sig.asyncness.is_some() {
        Some(Shape::AsyncFn)
    } else if async_trait_body(&function.block).is_some() {
        Some(Shape::AsyncTrait)
    } else {
        errors.add(
            sig.fn_token.span,
            format!(
                "`#[distributed_lock]` can only be applied to an `async fn`; `{name}` is not \
                 `async` (the lock is awaited before the body runs)"
            ),
        );
        None
    };

    let return_type = match &shape {
        Some(Shape::AsyncTrait) => async_trait_body(&function.block).and_then(|body| {
            if body.unit_return {
                errors.push(no_return_type(function));
            }
            body.return_type.cloned()
        }),
        _ => match &sig.output {
            ReturnType::Default => {
                errors.push(no_return_type(function));
                None
            }
            ReturnType::Type(_, ty) => {
                if let Type::ImplTrait(_) = **ty {
                    errors.add(
                        ty.span(),
                        "`#[distributed_lock]` needs a return type it can see: write \
                         `Result<T, E>` (with `E: From<lockattr::Error>`) instead of `impl Trait`, \
                         so a lock that cannot be taken can be returned as an `Err`",
                    );
                    None
                } else {
                    Some((**ty).clone())
                }
            }
        },
    };

    let (bindings, self_ident) = bindings(function, shape.as_ref());
    let values = placeholder_values(args, &bindings, self_ident.as_ref(), name, errors);
    let locker = args.locker.as_ref().map(|expr| match &self_ident {
        Some(ident) if ident != "self" => rename_self(expr, ident),
        _ => expr.clone(),
    });

    if !errors.is_empty() {
        return None;
    }
    Some(Plan {
        shape: shape?,
        return_type: return_type?,
        values: values?,
        locker,
    })
}

fn no_return_type(function: &ItemFn) -> syn::Error {
    let name = &function.sig.ident;
    syn::Error::new(
        name.span(),
        format!(
            "`#[distributed_lock]` functions must return `Result<T, E>` with \
             `E: From<lockattr::Error>`, so a lock that cannot be taken can be returned as an \
             `Err`; `{name}` returns `()`"
        ),
    )
}

fn check_lease(args: &Args, errors: &mut Errors) {
    if let Some(DurationArg::Fixed { millis: 0, span }) = &args.lease {
        errors.add(
            *span,
            "`lease` must be greater than zero: a lock with no lease would expire the moment it \
             is taken; omit `lease` to use the locker's default",
        );
    }
}

/// The pieces of an `#[async_trait]` body we need.
pub(crate) struct AsyncTraitBody<'a> {
    /// Statements before `let __ret: R = BODY;`: the arguments re-bound (`let __self = self;`,
    /// `let party_id = party_id;`, `let Path(id) = __arg1;`).
    pub(crate) prelude: &'a [Stmt],
    /// `R`, or `None` when the function returns `()`.
    pub(crate) return_type: Option<&'a Type>,
    pub(crate) unit_return: bool,
}

/// The `async move { .. }` block of `Box::pin(async move { .. })` when that is the whole body.
fn boxed_async_block(block: &Block) -> Option<&ExprAsync> {
    let [Stmt::Expr(Expr::Call(call), None)] = block.stmts.as_slice() else {
        return None;
    };
    let Expr::Path(func) = &*call.func else {
        return None;
    };
    let segments: Vec<String> = func
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    if !segments.ends_with(&["Box".to_owned(), "pin".to_owned()]) || call.args.len() != 1 {
        return None;
    }
    match &call.args[0] {
        Expr::Async(inner) if inner.capture.is_some() => Some(inner),
        _ => None,
    }
}

/// The mutable twin of [`boxed_async_block`] (the shape was checked by `check`).
fn boxed_async_block_mut(block: &mut Block) -> Option<&mut ExprAsync> {
    let [Stmt::Expr(Expr::Call(call), None)] = block.stmts.as_mut_slice() else {
        return None;
    };
    match call.args.first_mut() {
        Some(Expr::Async(inner)) => Some(inner),
        _ => None,
    }
}

/// `let __ret: R = BODY;` (`false`) or `let _: () = BODY;` (`true`, a function returning `()`).
fn async_trait_local(stmt: &Stmt) -> Option<(&Local, bool)> {
    let Stmt::Local(local) = stmt else {
        return None;
    };
    let Pat::Type(typed) = &local.pat else {
        return None;
    };
    local.init.as_ref()?;
    match &*typed.pat {
        Pat::Ident(ident) if ident.ident == "__ret" => Some((local, false)),
        Pat::Wild(_) if matches!(&*typed.ty, Type::Tuple(t) if t.elems.is_empty()) => {
            Some((local, true))
        }
        _ => None,
    }
}

/// Finds the block `#[async_trait]` wrote (the one holding `let __ret: R = BODY;`) inside the
/// boxed `async` block: the boxed block itself, or a block nested in it when an attribute
/// below `#[distributed_lock]` rewrote the method after `#[async_trait]` did
/// (`#[tracing::instrument]` moves it into `let __tracing_instrument_future = async move {..}`,
/// or into `match async move {..}.await` with `err`). Blocks are searched in source order,
/// outer before inner, so the user's own body, which is `BODY`, is never searched before the
/// block that holds it. Nested items are not searched.
struct FindAsyncTraitBlock<'a> {
    found: Option<&'a Block>,
}

impl<'a> Visit<'a> for FindAsyncTraitBlock<'a> {
    fn visit_block(&mut self, block: &'a Block) {
        if self.found.is_some() {
            return;
        }
        if block.stmts.iter().any(|s| async_trait_local(s).is_some()) {
            self.found = Some(block);
            return;
        }
        syn::visit::visit_block(self, block);
    }

    fn visit_item(&mut self, _: &'a syn::Item) {}
}

/// Replaces `BODY` in the block [`FindAsyncTraitBlock`] finds.
struct ReplaceAsyncTraitBody<F> {
    replace: Option<F>,
}

impl<F: FnOnce(Expr) -> Expr> VisitMut for ReplaceAsyncTraitBody<F> {
    fn visit_block_mut(&mut self, block: &mut Block) {
        if self.replace.is_none() {
            return;
        }
        let Some(index) = block
            .stmts
            .iter()
            .position(|s| async_trait_local(s).is_some())
        else {
            syn::visit_mut::visit_block_mut(self, block);
            return;
        };
        let replace = self.replace.take();
        if let (Some(replace), Stmt::Local(local)) = (replace, &mut block.stmts[index]) {
            if let Some(init) = &mut local.init {
                let body = std::mem::replace(&mut *init.expr, Expr::Verbatim(TokenStream::new()));
                *init.expr = replace(body);
            }
        }
    }

    fn visit_item_mut(&mut self, _: &mut syn::Item) {}
}

/// Recognises the body `#[async_trait]` generates for an `async fn`.
pub(crate) fn async_trait_body(block: &Block) -> Option<AsyncTraitBody<'_>> {
    let inner = boxed_async_block(block)?;
    let mut finder = FindAsyncTraitBlock { found: None };
    finder.visit_block(&inner.block);
    let stmts = &finder.found?.stmts;
    let (index, (local, unit)) = stmts
        .iter()
        .enumerate()
        .find_map(|(i, s)| async_trait_local(s).map(|found| (i, found)))?;
    let Pat::Type(typed) = &local.pat else {
        return None;
    };
    Some(AsyncTraitBody {
        prelude: &stmts[..index],
        return_type: (!unit).then_some(&*typed.ty),
        unit_return: unit,
    })
}

/// Replaces the `BODY` of `let __ret: R = BODY;` in an `#[async_trait]` body with
/// `replace(BODY)`; returns whether it was found.
pub(crate) fn replace_async_trait_body(
    block: &mut Block,
    replace: impl FnOnce(Expr) -> Expr,
) -> bool {
    let Some(inner) = boxed_async_block_mut(block) else {
        return false;
    };
    let mut replacer = ReplaceAsyncTraitBody {
        replace: Some(replace),
    };
    replacer.visit_block_mut(&mut inner.block);
    replacer.replace.is_none()
}

/// Names the key template may use, and the identifier that stands for `self` in the body
/// (`self`, or `__self` after `#[async_trait]`).
fn bindings(function: &ItemFn, shape: Option<&Shape>) -> (Vec<Binding>, Option<Ident>) {
    let mut out = Vec::new();
    let mut self_ident = None;
    for input in &function.sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                self_ident = Some(Ident::new("self", receiver.self_token.span));
            }
            FnArg::Typed(typed) => pattern_bindings(&typed.pat, &mut out),
        }
    }
    if let Some(Shape::AsyncTrait) = shape {
        // `#[async_trait]` moved pattern arguments into `__argN` parameters (which the body
        // cannot name) and destructures them again in `let` statements.
        out.retain(|b| !b.name.starts_with("__arg"));
        if let Some(body) = async_trait_body(&function.block) {
            for stmt in body.prelude {
                if let Stmt::Local(local) = stmt {
                    let mut found = Vec::new();
                    pattern_bindings(&local.pat, &mut found);
                    for binding in found {
                        if binding.name == "__self" {
                            if let Some(receiver) = &self_ident {
                                self_ident = Some(Ident::new("__self", receiver.span()));
                            }
                        } else if !out.iter().any(|b| b.name == binding.name) {
                            out.push(binding);
                        }
                    }
                }
            }
        }
    }
    (out, self_ident)
}

/// Every variable a pattern binds: `x`, `Path(x)`, `State(AppState { db, .. })`, `(a, b)`.
fn pattern_bindings(pat: &Pat, out: &mut Vec<Binding>) {
    match pat {
        Pat::Ident(p) => {
            out.push(Binding {
                name: unraw(&p.ident),
                ident: p.ident.clone(),
            });
            if let Some((_, sub)) = &p.subpat {
                pattern_bindings(sub, out);
            }
        }
        Pat::Or(p) => {
            // Every alternative binds the same names.
            if let Some(first) = p.cases.first() {
                pattern_bindings(first, out);
            }
        }
        Pat::Paren(p) => pattern_bindings(&p.pat, out),
        Pat::Reference(p) => pattern_bindings(&p.pat, out),
        Pat::Slice(p) => p.elems.iter().for_each(|e| pattern_bindings(e, out)),
        Pat::Struct(p) => p.fields.iter().for_each(|f| pattern_bindings(&f.pat, out)),
        Pat::Tuple(p) => p.elems.iter().for_each(|e| pattern_bindings(e, out)),
        Pat::TupleStruct(p) => p.elems.iter().for_each(|e| pattern_bindings(e, out)),
        Pat::Type(p) => pattern_bindings(&p.pat, out),
        _ => {}
    }
}

/// `r#type` is written `<type>` in a template.
fn unraw(ident: &Ident) -> String {
    let text = ident.to_string();
    match text.strip_prefix("r#") {
        Some(plain) => plain.to_owned(),
        None => text,
    }
}

/// Resolves every placeholder to an expression, reporting all that name nothing.
fn placeholder_values(
    args: &Args,
    bindings: &[Binding],
    self_ident: Option<&Ident>,
    function: &Ident,
    errors: &mut Errors,
) -> Option<Vec<TokenStream>> {
    let key = args.key.as_ref()?;
    let key_span = key.lit.span();
    let mut values = Vec::new();
    let mut failed = false;
    for placeholder in key.template.placeholders() {
        let root = if placeholder.root == "self" {
            if let Some(ident) = self_ident {
                ident.to_token_stream()
            } else {
                errors.add(
                    key_span,
                    format!(
                        "key placeholder `<{}>` reads `self`, but `{function}` has no `self` \
                         parameter",
                        placeholder.text()
                    ),
                );
                failed = true;
                continue;
            }
        } else if let Some(binding) = bindings.iter().find(|b| b.name == placeholder.root) {
            binding.ident.to_token_stream()
        } else {
            errors.add(
                key_span,
                unknown_placeholder(placeholder, bindings, self_ident.is_some(), function),
            );
            failed = true;
            continue;
        };
        if placeholder.fields.is_empty() {
            // `&party_id` spanned at the parameter: a type without `Display` is reported there.
            let root_span = root
                .clone()
                .into_iter()
                .next()
                .map_or(key_span, |t| t.span());
            let ampersand = syn::Token![&](root_span);
            values.push(quote!(#ampersand #root));
        } else {
            // The fields exist only in the key string, so a missing field or a field without
            // `Display` is reported on the key. (Both spans resolve names the same way: they
            // come from the user's source.)
            let root = respan(root, key_span);
            let fields = placeholder.fields.iter().map(|field| {
                let member = match field.parse::<u32>() {
                    Ok(index) => Member::Unnamed(syn::Index {
                        index,
                        span: key_span,
                    }),
                    Err(_) => Member::Named(Ident::new(field, key_span)),
                };
                quote!(. #member)
            });
            let ampersand = syn::Token![&](key_span);
            values.push(quote!(#ampersand #root #(#fields)*));
        }
    }
    (!failed).then_some(values)
}

fn respan(tokens: TokenStream, span: proc_macro2::Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            token.set_span(span);
            token
        })
        .collect()
}

fn unknown_placeholder(
    placeholder: &Placeholder,
    bindings: &[Binding],
    has_self: bool,
    function: &Ident,
) -> String {
    let mut names: Vec<&str> = Vec::new();
    if has_self {
        names.push("self");
    }
    names.extend(bindings.iter().map(|b| b.name.as_str()));
    let what = if placeholder.fields.is_empty() {
        format!(
            "key placeholder `<{}>` names no argument of `{function}`",
            placeholder.root
        )
    } else {
        format!(
            "key placeholder `<{}>`: `{}` is not an argument of `{function}`",
            placeholder.text(),
            placeholder.root
        )
    };
    let mut message = if names.is_empty() {
        format!("{what}, which has no arguments")
    } else if let [only] = names.as_slice() {
        format!("{what}; its only argument is `{only}`")
    } else {
        format!(
            "{what}; its arguments are {}",
            backticked(names.iter().copied())
        )
    };
    if let Some(s) = closest(&placeholder.root, names.iter().copied()) {
        let mut fixed = placeholder.clone();
        s.clone_into(&mut fixed.root);
        let _ = write!(message, " (did you mean `<{}>`?)", fixed.text());
    } else if has_self {
        let _ = write!(
            message,
            " (for a field of `self`, write `<self.{}>`)",
            placeholder.text()
        );
    }
    message
}

/// `self` in the `locker` expression, renamed to what `#[async_trait]` calls it.
fn rename_self(expr: &Expr, to: &Ident) -> Expr {
    fn walk(tokens: TokenStream, to: &Ident) -> TokenStream {
        let mut out = TokenStream::new();
        let mut iter = tokens.into_iter().peekable();
        while let Some(token) = iter.next() {
            match token {
                proc_macro2::TokenTree::Ident(ident) if ident == "self" => {
                    // `self::path` is a module path, not the receiver.
                    let is_path = matches!(iter.peek(), Some(proc_macro2::TokenTree::Punct(p)) if p.as_char() == ':');
                    if is_path {
                        out.extend([proc_macro2::TokenTree::Ident(ident)]);
                    } else {
                        out.extend([proc_macro2::TokenTree::Ident(Ident::new(
                            &to.to_string(),
                            ident.span(),
                        ))]);
                    }
                }
                proc_macro2::TokenTree::Group(group) => {
                    let mut new =
                        proc_macro2::Group::new(group.delimiter(), walk(group.stream(), to));
                    new.set_span(group.span());
                    out.extend([proc_macro2::TokenTree::Group(new)]);
                }
                other => out.extend([other]),
            }
        }
        out
    }
    let renamed = walk(expr.to_token_stream(), to);
    syn::parse2(renamed).unwrap_or_else(|_| expr.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args;
    use proc_macro2::Span;

    fn run(attr: TokenStream, item: TokenStream) -> Result<Plan, String> {
        let mut errors = Errors::default();
        let args = args::parse(attr, &mut errors);
        let function: ItemFn = syn::parse2(item).unwrap();
        let plan = check(&args, &function, &mut errors);
        match plan {
            Some(plan) if errors.is_empty() => Ok(plan),
            _ => Err(errors.to_compile_errors().to_string()),
        }
    }

    fn values(plan: &Plan) -> Vec<String> {
        plan.values.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn simple_method() {
        let plan = run(
            quote!(
                key = "party:<party_id>:<self.shard>",
                wait = "100s",
                lease = "2s"
            ),
            quote!(
                async fn participate(&self, party_id: i64, name: String) -> Result<P, E> {
                    todo()
                }
            ),
        )
        .unwrap();
        assert!(matches!(plan.shape, Shape::AsyncFn));
        assert_eq!(values(&plan), ["& party_id", "& self . shard"]);
        assert_eq!(
            plan.return_type.to_token_stream().to_string(),
            "Result < P , E >"
        );
    }

    #[test]
    fn pattern_arguments_and_fields() {
        let plan = run(
            quote!(
                key = "<id>:<app.cfg.0>:<a>:<b>:<type>:<whole>",
                locker = app.locker
            ),
            quote!(
                async fn handler(
                    Path(id): Path<i64>,
                    State(app): State<App>,
                    (a, mut b): (u8, u8),
                    r#type: &str,
                    whole @ Wrapper { .. }: Wrapper,
                ) -> Result<(), E> {
                    Ok(())
                }
            ),
        )
        .unwrap();
        assert_eq!(
            values(&plan),
            [
                "& id",
                "& app . cfg . 0",
                "& a",
                "& b",
                "& r#type",
                "& whole"
            ]
        );
        assert!(plan.locker.is_some());
    }

    #[test]
    fn unknown_placeholders_are_all_reported() {
        let e = run(
            quote!(key = "<party>:<user.id>:<zzz>"),
            quote!(
                async fn participate(&self, party_id: i64, user_name: String) -> Result<(), E> {
                    Ok(())
                }
            ),
        )
        .err()
        .unwrap();
        assert!(
            e.contains("key placeholder `<party>` names no argument of `participate`; its arguments are `self`, `party_id`, `user_name` (did you mean `<party_id>`?)"),
            "{e}"
        );
        assert!(
            e.contains("`<user.id>`: `user` is not an argument") && e.contains("`<user_name.id>`"),
            "{e}"
        );
        assert!(
            e.contains("`<zzz>` names no argument")
                && e.contains("(for a field of `self`, write `<self.zzz>`)"),
            "{e}"
        );
    }

    #[test]
    fn self_needs_a_receiver() {
        let e = run(
            quote!(key = "<self.id>"),
            quote!(
                async fn free(id: i64) -> Result<(), E> {
                    Ok(())
                }
            ),
        )
        .err()
        .unwrap();
        assert!(
            e.contains("`<self.id>` reads `self`, but `free` has no `self` parameter"),
            "{e}"
        );
        let e = run(
            quote!(key = "<x>"),
            quote!(
                async fn none() -> Result<(), E> {
                    Ok(())
                }
            ),
        )
        .err()
        .unwrap();
        assert!(e.contains("which has no arguments"), "{e}");
    }

    #[test]
    fn function_shape_errors() {
        let e = run(
            quote!(key = "k"),
            quote!(
                fn sync() -> Result<(), E> {
                    Ok(())
                }
            ),
        )
        .err()
        .unwrap();
        assert!(e.contains("can only be applied to an `async fn`"), "{e}");
        let e = run(
            quote!(key = "k"),
            quote!(
                const fn c() -> Result<(), E> {
                    Ok(())
                }
            ),
        )
        .err()
        .unwrap();
        assert!(
            e.contains("`const fn`") && !e.contains("only be applied"),
            "{e}"
        );
        let e = run(
            quote!(key = "k"),
            quote!(
                async fn unit() {}
            ),
        )
        .err()
        .unwrap();
        assert!(e.contains("`unit` returns `()`"), "{e}");
        let e = run(
            quote!(key = "k"),
            quote!(
                async fn opaque() -> impl Sized {}
            ),
        )
        .err()
        .unwrap();
        assert!(e.contains("instead of `impl Trait`"), "{e}");
    }

    #[test]
    fn zero_lease_is_refused_zero_wait_is_not() {
        let f = quote!(
            async fn f() -> Result<(), E> {
                Ok(())
            }
        );
        let e = run(quote!(key = "k", lease = "0ms"), f.clone())
            .err()
            .unwrap();
        assert!(e.contains("`lease` must be greater than zero"), "{e}");
        assert!(run(quote!(key = "k", wait = "0s"), f).is_ok());
    }

    #[test]
    fn async_trait_bodies_are_recognised() {
        // What `#[async_trait]` 0.1 emits for
        // `async fn f(&self, Path(id): Path<i64>, n: u8) -> Result<(), E> { body }`.
        let plan = run(
            quote!(key = "<self.k>:<id>:<n>", locker = self.locker),
            quote!(
                fn f<'life0, 'async_trait>(
                    &'life0 self,
                    __arg1: Path<i64>,
                    n: u8,
                ) -> ::core::pin::Pin<
                    Box<dyn ::core::future::Future<Output = Result<(), E>> + Send + 'async_trait>,
                > {
                    Box::pin(async move {
                        if let ::core::option::Option::Some(__ret) =
                            ::core::option::Option::None::<Result<(), E>>
                        {
                            return __ret;
                        }
                        let __self = self;
                        let Path(id) = {
                            let __arg1 = __arg1;
                            __arg1
                        };
                        let n = n;
                        let __ret: Result<(), E> = { body(__self) };
                        #[allow(unreachable_code)]
                        __ret
                    })
                }
            ),
        )
        .unwrap();
        assert!(matches!(plan.shape, Shape::AsyncTrait));
        assert_eq!(values(&plan), ["& __self . k", "& id", "& n"]);
        assert_eq!(
            plan.locker.unwrap().to_token_stream().to_string(),
            "__self . locker"
        );
        assert_eq!(
            plan.return_type.to_token_stream().to_string(),
            "Result < () , E >"
        );
    }

    #[test]
    fn async_trait_bodies_rewritten_again_by_tracing_are_recognised() {
        // `#[tracing::instrument(err)]` between `#[async_trait]` and `#[distributed_lock]`
        // (0.1.31) moves `#[async_trait]`'s block into `match async move { .. }.await`.
        let mut function: ItemFn = syn::parse2(quote!(
            fn f<'life0, 'async_trait>(
                &'life0 self,
                id: u8,
            ) -> ::core::pin::Pin<
                Box<dyn ::core::future::Future<Output = Result<u8, E>> + Send + 'async_trait>,
            > {
                ::std::boxed::Box::pin(async move {
                    let __tracing_attr_span = span();
                    let __tracing_instrument_future = async move {
                        match async move {
                            if let ::core::option::Option::Some(__ret) =
                                ::core::option::Option::None::<Result<u8, E>>
                            {
                                return __ret;
                            }
                            let __self = self;
                            let id = id;
                            let __ret: Result<u8, E> = { Ok(id) };
                            __ret
                        }
                        .await
                        {
                            Ok(x) => Ok(x),
                            Err(e) => Err(e),
                        }
                    };
                    __tracing_instrument_future.await
                })
            }
        ))
        .unwrap();
        let mut errors = Errors::default();
        let args = args::parse(quote!(key = "<self.k>:<id>"), &mut errors);
        let plan = check(&args, &function, &mut errors).unwrap();
        assert!(matches!(plan.shape, Shape::AsyncTrait));
        assert_eq!(values(&plan), ["& __self . k", "& id"]);
        assert!(replace_async_trait_body(&mut function.block, |body| {
            assert_eq!(body.to_token_stream().to_string(), "{ Ok (id) }");
            syn::parse_quote!(replaced)
        }));
        let text = function.to_token_stream().to_string();
        assert!(
            text.contains("let __ret : Result < u8 , E > = replaced ;"),
            "{text}"
        );
    }

    #[test]
    fn rename_self_keeps_module_paths() {
        let expr: Expr = syn::parse2(quote!(pick(&self.a, self::LOCKER, [self]))).unwrap();
        let renamed = rename_self(&expr, &Ident::new("__self", Span::call_site()));
        assert_eq!(
            renamed.to_token_stream().to_string(),
            "pick (& __self . a , self :: LOCKER , [__self])"
        );
    }
}
