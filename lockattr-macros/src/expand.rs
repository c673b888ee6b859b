//! Code generation.
//!
//! Input:
//!
//! ```text
//! #[distributed_lock(key = "party:<party_id>", wait = "100s", lease = "2s")]
//! pub async fn participate(&self, party_id: i64, name: String) -> Result<Participant, AppError> {
//!     body
//! }
//! ```
//!
//! Output (internal names are `Span::mixed_site()`, so the body cannot see them):
//!
//! ```text
//! pub async fn participate(&self, party_id: i64, name: String) -> Result<Participant, AppError> {
//!     let __lockattr_key = {
//!         let mut __lockattr_k = ::lockattr::__private::KeyBuilder::with_capacity(30usize);
//!         __lockattr_k.literal("party:");
//!         __lockattr_k.value(&party_id);            // `&party_id` carries the parameter's span
//!         __lockattr_k
//!     };
//!     let __lockattr_options = ::lockattr::__private::Options::new()
//!         .wait(::core::time::Duration::from_millis(100000u64))
//!         .lease(::core::time::Duration::from_millis(2000u64));
//!     let __lockattr_result = match ::lockattr::__private::default_locker() {
//!         // with `locker = self.locker`: Clone::clone(AsLocker::as_locker(&(self.locker)))
//!         ::core::result::Result::Ok(__lockattr_locker) => {
//!             ::lockattr::__private::run(__lockattr_locker, __lockattr_key, __lockattr_options,
//!                 async move { // the body's own braces: the body is not nested in a block
//!                     // Types the block as the function's return type before the body is
//!                     // checked, so `?` and `return` in the body resolve as they did before.
//!                     if let ::core::option::Option::Some(__lockattr_never) =
//!                         ::core::option::Option::None::<Result<Participant, AppError>>
//!                     {
//!                         return __lockattr_never;
//!                     };
//!                     body's statements
//!                 },
//!             )
//!             .await
//!         }
//!         ::core::result::Result::Err(__lockattr_error) => ::core::result::Result::Err(__lockattr_error),
//!     };
//!     match __lockattr_result {
//!         ::core::result::Result::Ok(__lockattr_output) => __lockattr_output,
//!         // spanned at the return type, so a type that cannot carry the error is reported there
//!         ::core::result::Result::Err(__lockattr_error) =>
//!             ::lockattr::__private::LockReturn::from_lock_error(__lockattr_error),
//!     }
//! }
//! ```
//!
//! For a method that `#[async_trait]` has already rewritten, the same code replaces `BODY` in
//! its `Box::pin(async move { ..; let __ret: R = BODY; __ret })`, also when an attribute in
//! between (`#[tracing::instrument]`) has moved that block into another `async` block.
//!
//! On any error the function is emitted unchanged next to the `compile_error!`s, so its callers
//! and the IDE do not report a cascade of secondary errors.

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{Block, Expr, ExprBlock, ItemFn, LitStr, Stmt, Type};

use crate::args::{self, Args, DurationArg, FlagArg};
use crate::check::{self, Plan, Shape};
use crate::diag::Errors;
use crate::template::Segment;

/// Bytes reserved per placeholder on top of the literal text: an `i64` is at most 20, a UUID 36.
const BYTES_PER_VALUE: usize = 24;

/// The attribute: `args` are its arguments, `item` the annotated item.
pub(crate) fn distributed_lock(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = args::parse(args, &mut errors);
    let Ok(mut function) = syn::parse2::<ItemFn>(item.clone()) else {
        errors.push(not_a_function(item.clone()));
        return unchanged(&errors, item);
    };
    let plan = check::check(&args, &function, &mut errors);
    let Some(plan) = plan.filter(|_| errors.is_empty()) else {
        return unchanged(&errors, item);
    };
    match plan.shape {
        Shape::AsyncFn => {
            let body = (*function.block).clone();
            let locked = locked_body(&args, &plan, body);
            *function.block = syn::parse_quote!({ #locked });
        }
        Shape::AsyncTrait => {
            check::replace_async_trait_body(&mut function.block, |expr| {
                let locked = locked_body(&args, &plan, into_block(expr));
                syn::parse_quote!({ #locked })
            });
        }
    }
    function.into_token_stream()
}

/// The errors, and the item exactly as the user wrote it.
fn unchanged(errors: &Errors, item: TokenStream) -> TokenStream {
    let mut out = errors.to_compile_errors();
    out.extend(item);
    out
}

fn not_a_function(item: TokenStream) -> syn::Error {
    if let Ok(declaration) = syn::parse2::<syn::TraitItemFn>(item) {
        if declaration.default.is_none() {
            return syn::Error::new(
                declaration.sig.ident.span(),
                "`#[distributed_lock]` goes on a function with a body: put it on the method in \
                 the `impl`, not on the trait's declaration",
            );
        }
    }
    syn::Error::new(
        Span::call_site(),
        "`#[distributed_lock]` can only be applied to an `async fn`",
    )
}

fn internal(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// The statements that replace the body: build the key, pick the locker, run the body under
/// the lock, turn a lock error into the function's error type.
fn locked_body(args: &Args, plan: &Plan, body: Block) -> TokenStream {
    let key = internal("__lockattr_key");
    let options = internal("__lockattr_options");
    let locker = internal("__lockattr_locker");
    let result = internal("__lockattr_result");
    let output = internal("__lockattr_output");
    let error = internal("__lockattr_error");

    let build_key = key_builder(args, plan);
    let options_expr = options_builder(args);
    let future = body_future(plan, body);
    let run = quote! {
        ::lockattr::__private::run(#locker, #key, #options, #future).await
    };
    let run_under_lock = if let Some(expr) = &plan.locker {
        let as_locker = quote_spanned! {expr.span()=>
            ::lockattr::__private::AsLocker::as_locker(&(#expr))
        };
        quote! {
            let #locker = ::core::clone::Clone::clone(#as_locker);
            let #result = #run;
        }
    } else {
        quote! {
            let #result = match ::lockattr::__private::default_locker() {
                ::core::result::Result::Ok(#locker) => #run,
                ::core::result::Result::Err(#error) => ::core::result::Result::Err(#error),
            };
        }
    };
    let from_lock_error = quote_spanned! {plan.return_type.span()=>
        ::lockattr::__private::LockReturn::from_lock_error(#error)
    };
    quote! {
        let #key = #build_key;
        let #options = #options_expr;
        #run_under_lock
        match #result {
            ::core::result::Result::Ok(#output) => #output,
            ::core::result::Result::Err(#error) => #from_lock_error,
        }
    }
}

fn key_builder(args: &Args, plan: &Plan) -> TokenStream {
    let builder = internal("__lockattr_k");
    let Some(key) = &args.key else {
        // `check` refuses a missing key; nothing reaches here without one.
        return TokenStream::new();
    };
    let template = &key.template;
    let capacity = template.literal_len() + BYTES_PER_VALUE * plan.values.len();
    let capacity = Literal::usize_suffixed(capacity);
    let mut values = plan.values.iter();
    let parts = template.segments.iter().map(|segment| match segment {
        Segment::Literal(text) => {
            let text = LitStr::new(text, Span::call_site());
            quote!(#builder.literal(#text);)
        }
        Segment::Placeholder(_) => {
            let value = values.next();
            quote!(#builder.value(#value);)
        }
    });
    quote! {{
        let mut #builder = ::lockattr::__private::KeyBuilder::with_capacity(#capacity);
        #(#parts)*
        #builder
    }}
}

fn duration(arg: &DurationArg) -> TokenStream {
    match arg {
        DurationArg::Fixed { millis, span } => {
            let millis = Literal::u64_suffixed(*millis);
            quote_spanned!(*span=> ::core::time::Duration::from_millis(#millis))
        }
        DurationArg::Runtime(expr) => expr.to_token_stream(),
    }
}

fn options_builder(args: &Args) -> TokenStream {
    let mut options = quote!(::lockattr::__private::Options::new());
    if let Some(wait) = &args.wait {
        let wait = duration(wait);
        options.extend(quote!(.wait(#wait)));
    }
    if let Some(lease) = &args.lease {
        let lease = duration(lease);
        options.extend(quote!(.lease(#lease)));
    }
    match &args.renew {
        Some(FlagArg::Fixed(value)) => options.extend(quote!(.renew(#value))),
        Some(FlagArg::Runtime(expr)) => options.extend(quote!(.renew(#expr))),
        None => {}
    }
    match &args.fenced {
        Some(FlagArg::Fixed(value)) => options.extend(quote!(.fenced(#value))),
        Some(FlagArg::Runtime(expr)) => options.extend(quote!(.fenced(#expr))),
        None => {}
    }
    options
}

/// `async move { <typing hint>; body's statements }`, in the body's own braces.
///
/// The body is not nested as a block inside the `async` block (`async move { hint; { body } }`):
/// a block that is the tail of another block is what `unused_braces` looks for, and as the
/// braces are the user's tokens, rustc would blame the user's code for a one-line body (issue
/// 14). Giving the `async` block the user's braces leaves no inner block at all, keeps the
/// body's statements in one scope exactly as written, and keeps the braces' spans, which type
/// errors about the body's value point at.
fn body_future(plan: &Plan, mut body: Block) -> TokenStream {
    let never = internal("__lockattr_never");
    let mut hint_type = plan.return_type.clone();
    EraseImplTrait.visit_type_mut(&mut hint_type);
    // With its `;`, the hint is a statement even when the body is empty, so an empty body is
    // reported as the user's mismatched `()`, not as an `if` without `else`.
    let hint: Stmt = syn::parse_quote! {
        if let ::core::option::Option::Some(#never) = ::core::option::Option::None::<#hint_type> {
            return #never;
        };
    };
    body.stmts.insert(0, hint);
    quote! {
        async move #body
    }
}

/// The block of `let __ret: R = BODY;` in an `#[async_trait]` body: `BODY` itself when it is
/// a plain block (as `#[async_trait]` emits it), else a block around it.
fn into_block(expr: Expr) -> Block {
    match expr {
        Expr::Block(ExprBlock {
            attrs,
            label: None,
            block,
            ..
        }) if attrs.is_empty() => block,
        other => {
            let span = other.span();
            Block {
                brace_token: syn::token::Brace(span),
                stmts: vec![Stmt::Expr(other, None)],
            }
        }
    }
}

/// Replaces `impl Trait` with `_` (`Result<impl Display, E>` becomes `Result<_, E>`): an
/// opaque type cannot be named inside the function, but the rest of the type still guides
/// inference.
struct EraseImplTrait;

impl VisitMut for EraseImplTrait {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(opaque) = ty {
            *ty = Type::Infer(syn::TypeInfer {
                underscore_token: syn::Token![_](opaque.impl_token.span),
            });
        } else {
            syn::visit_mut::visit_type_mut(self, ty);
        }
    }
}

/// Checks that a block parses, for the unit tests below.
#[cfg(test)]
fn expand_to_string(args: TokenStream, item: TokenStream) -> String {
    let out = distributed_lock(args, item);
    syn::parse2::<syn::File>(out.clone()).expect("the expansion parses as a file");
    out.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_of_the_documented_example() {
        let out = expand_to_string(
            quote!(key = "party:<party_id>", wait = "100s", lease = "2s"),
            quote!(
                /// Docs stay.
                #[inline]
                pub async fn participate(
                    &self,
                    party_id: i64,
                    name: String,
                ) -> Result<P, AppError> {
                    body(name).await
                }
            ),
        );
        for expected in [
            "# [doc = r\" Docs stay.\"] # [inline] pub async fn participate (& self , party_id : i64 , name : String ,) -> Result < P , AppError >",
            ":: lockattr :: __private :: KeyBuilder :: with_capacity (30usize)",
            "__lockattr_k . literal (\"party:\") ; __lockattr_k . value (& party_id) ;",
            ". wait (:: core :: time :: Duration :: from_millis (100000u64)) . lease (:: core :: time :: Duration :: from_millis (2000u64))",
            ":: lockattr :: __private :: default_locker ()",
            ":: core :: option :: Option :: None :: < Result < P , AppError > >",
            "return __lockattr_never ; } ; body (name) . await }",
            ":: lockattr :: __private :: LockReturn :: from_lock_error (__lockattr_error)",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
        assert!(
            !out.contains(".renew"),
            "renew is left to the default: {out}"
        );
    }

    /// The `async` blocks of an expansion, outermost first.
    fn async_blocks(out: &str) -> Vec<syn::ExprAsync> {
        struct Collect(Vec<syn::ExprAsync>);
        impl<'a> syn::visit::Visit<'a> for Collect {
            fn visit_expr_async(&mut self, node: &'a syn::ExprAsync) {
                self.0.push(node.clone());
                syn::visit::visit_expr_async(self, node);
            }
        }
        let file: syn::File = syn::parse_str(out).unwrap();
        let mut collect = Collect(Vec::new());
        syn::visit::Visit::visit_file(&mut collect, &file);
        collect.0
    }

    #[test]
    fn the_body_is_not_nested_in_a_block() {
        // `async move { hint; { Ok(id) } }` would make rustc's `unused_braces` blame the
        // user's braces for a one-line body (issue 14).
        for (body, tail) in [
            (quote!({ Ok(id) }), "Ok (id)"),
            (
                quote!({
                    let x = id;
                    return Ok(x);
                }),
                "return Ok (x) ;",
            ),
            (
                quote!({
                    {
                        Ok(id)
                    }
                }),
                "{ Ok (id) }",
            ),
        ] {
            let out = expand_to_string(
                quote!(key = "k:<id>"),
                quote!(async fn f(id: u8) -> Result<u8, E> #body),
            );
            let blocks = async_blocks(&out);
            let [future] = blocks.as_slice() else {
                panic!("one async block expected in {out}");
            };
            let stmts = &future.block.stmts;
            assert!(
                matches!(&stmts[0], Stmt::Expr(Expr::If(_), Some(_))),
                "the hint comes first, as a statement: {out}"
            );
            let rest: TokenStream = stmts[1..].iter().map(ToTokens::to_token_stream).collect();
            assert!(rest.to_string().ends_with(tail), "{body} gave {out}");
            let user = syn::parse2::<Block>(body).unwrap();
            assert_eq!(stmts.len(), 1 + user.stmts.len(), "{out}");
        }
    }

    #[test]
    fn explicit_locker_and_runtime_options() {
        let out = expand_to_string(
            quote!(
                key = "a<<b",
                locker = self.locker,
                wait = WAIT,
                renew = false
            ),
            quote!(
                async fn f(&self) -> anyhow::Result<()> {
                    Ok(())
                }
            ),
        );
        for expected in [
            ":: core :: clone :: Clone :: clone (:: lockattr :: __private :: AsLocker :: as_locker (& (self . locker)))",
            "__lockattr_k . literal (\"a<b\")",
            ". wait (WAIT) . renew (false)",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
        assert!(!out.contains("default_locker"), "{out}");
    }

    #[test]
    fn impl_trait_in_the_return_type_is_erased_in_the_hint() {
        let out = expand_to_string(
            quote!(key = "k"),
            quote!(
                async fn f() -> Result<impl std::fmt::Display, E> {
                    Ok(1)
                }
            ),
        );
        assert!(
            out.contains(":: core :: option :: Option :: None :: < Result < _ , E > >"),
            "{out}"
        );
    }

    #[test]
    fn errors_keep_the_function_unchanged() {
        let item = quote!(
            fn not_async(x: i64) -> Result<(), E> {
                Ok(())
            }
        );
        let out = distributed_lock(quote!(key = "<y>", lease = "0s", bogus = 1), item.clone());
        let text = out.to_string();
        assert!(text.ends_with(&item.to_string()), "{text}");
        for expected in [
            "unknown argument `bogus`",
            "`lease` must be greater than zero",
            "can only be applied to an `async fn`",
            "`<y>` names no argument",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in {text}");
        }
    }

    #[test]
    fn items_that_are_not_functions() {
        let out = distributed_lock(
            quote!(key = "k"),
            quote!(
                struct S;
            ),
        )
        .to_string();
        assert!(
            out.contains("can only be applied to an `async fn`"),
            "{out}"
        );
        assert!(out.ends_with("struct S ;"), "{out}");
        let out = distributed_lock(
            quote!(key = "k"),
            quote!(
                async fn declared(&self) -> Result<(), E>;
            ),
        )
        .to_string();
        assert!(out.contains("not on the trait's declaration"), "{out}");
    }
}
