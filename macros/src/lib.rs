//! # streamrun-macros
//!
//! The attribute macros of Streamrun's dynamic API (`streamrun-core`):
//!
//! - **`#[remote]`** on a function registers it by a stable name (its module path and
//!   name), so that every process of the same binary can run it, and adds a module of the
//!   same name whose `remote(&rt, args…)` submits it as a task and returns an `ObjectRef` at
//!   once. Arguments may be values or `ObjectRef`s of the parameter's type. A function with a
//!   tuple result and `#[remote(num_returns = 2)]` gives one `ObjectRef` per element.
//! - **`#[actor]`** on a type's `impl` block registers its constructors (functions that
//!   return `Self`) and methods, and adds a handle type, `<Type>Handle`, with the same methods
//!   returning `ObjectRef`s. `Type::remote(&rt, args…)` creates the actor with the first
//!   constructor.
//!
//! Both go on items at module level (not inside a function's body): the module they add
//! refers to the function through `super`.
//!
//! Parameters and results of type `RecordBatch` travel as Arrow data; every other type
//! travels with serde. A result of type `Result<T, E>` with `E: Display` turns `Err` into a
//! task error. The macros expand to code that names `::streamrun_core`, so a crate that uses
//! them depends on it.
//!
//! ```ignore
//! use streamrun_core::{remote, Runtime};
//!
//! #[remote]
//! fn calculate_square(x: i64) -> i64 {
//!     x * x
//! }
//!
//! let rt = Runtime::init()?;
//! let square = calculate_square::remote(&rt, 5)?;
//! assert_eq!(rt.get(&square)?, 25);
//! ```

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{
    FnArg, GenericArgument, ImplItem, ItemFn, ItemImpl, Pat, PathArguments, ReturnType, Token,
    Type, parse_macro_input,
};

/// The last identifier of a type's path, if it is a path.
fn last_ident(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(p) => p.path.segments.last(),
        _ => None,
    }
}

/// Whether `ty` is an Arrow `RecordBatch`, which travels as Arrow data.
fn is_batch(ty: &Type) -> bool {
    last_ident(ty).is_some_and(|s| s.ident == "RecordBatch")
}

/// `T` of `Result<T, E>`, if `ty` is one.
fn result_ok(ty: &Type) -> Option<&Type> {
    let segment = last_ident(ty)?;
    if segment.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &segment.arguments else {
        return None;
    };
    if args.args.len() != 2 {
        return None;
    }
    match args.args.first()? {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    }
}

/// The code that decodes argument `i` (from `args`) as a `ty`.
fn decode_arg(ty: &Type, i: usize) -> Tokens {
    if is_batch(ty) {
        quote! { ::streamrun_core::codec::decode_batch(&args[#i])? }
    } else {
        quote! { ::streamrun_core::codec::decode_serde::<#ty>(&args[#i])? }
    }
}

/// The code that turns a caller's argument `name` (an `impl Into<Arg<ty>>`) into what a task
/// carries.
fn encode_arg(ty: &Type, name: &syn::Ident) -> Tokens {
    if is_batch(ty) {
        quote! { ::streamrun_core::codec::batch_arg(#name.into())? }
    } else {
        quote! { ::streamrun_core::codec::serde_arg::<#ty>(#name.into())? }
    }
}

fn encode_value(ty: &Type, value: Tokens) -> Tokens {
    if is_batch(ty) {
        quote! { ::streamrun_core::codec::encode_batch(#value) }
    } else {
        quote! { ::streamrun_core::codec::encode_serde::<#ty>(&#value)? }
    }
}

/// What a call's results are: their types (one per `ObjectRef`), and the code that turns the
/// function's output `out` into encoded results, an `Err` becoming a task error.
struct Returns {
    types: Vec<Type>,
    encode: Tokens,
}

fn returns(output: &ReturnType, num_returns: usize) -> syn::Result<Returns> {
    let ty: Type = match output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    let (value_ty, unwrap) = match result_ok(&ty) {
        Some(ok) => (
            ok.clone(),
            quote! { let out = out.map_err(|e| ::streamrun_core::TaskError::Failed(e.to_string()))?; },
        ),
        None => (ty.clone(), quote! {}),
    };
    if num_returns <= 1 {
        let encode = encode_value(&value_ty, quote! { out });
        return Ok(Returns {
            types: vec![value_ty],
            encode: quote! { { #unwrap ::std::vec![#encode] } },
        });
    }
    let Type::Tuple(tuple) = &value_ty else {
        return Err(syn::Error::new_spanned(
            &ty,
            "num_returns > 1 needs a tuple result with that many elements",
        ));
    };
    if tuple.elems.len() != num_returns {
        return Err(syn::Error::new_spanned(
            &ty,
            format!(
                "num_returns = {num_returns}, but the tuple has {} elements",
                tuple.elems.len()
            ),
        ));
    }
    let types: Vec<Type> = tuple.elems.iter().cloned().collect();
    let parts: Vec<Tokens> = types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let index = syn::Index::from(i);
            encode_value(t, quote! { out.#index })
        })
        .collect();
    let encode = quote! { { #unwrap ::std::vec![#(#parts),*] } };
    Ok(Returns { types, encode })
}

/// The typed parameters of a function (not its receiver): names and types.
fn parameters<'a>(inputs: impl Iterator<Item = &'a FnArg>) -> syn::Result<Vec<(syn::Ident, Type)>> {
    let mut out = Vec::new();
    for (i, input) in inputs.enumerate() {
        let FnArg::Typed(typed) = input else { continue };
        let name = match &*typed.pat {
            Pat::Ident(p) => p.ident.clone(),
            _ => format_ident!("arg{i}"),
        };
        out.push((name, (*typed.ty).clone()));
    }
    Ok(out)
}

/// The type of the `ObjectRef`s a call gives back: one, or a tuple of them.
fn refs_type(types: &[Type]) -> Tokens {
    if types.len() == 1 {
        let t = &types[0];
        quote! { ::streamrun_core::ObjectRef<#t> }
    } else {
        quote! { (#(::streamrun_core::ObjectRef<#types>),*) }
    }
}

/// The code that turns the ids a submission returned (`ids`) into `refs_type`.
fn refs_value(types: &[Type]) -> Tokens {
    if types.len() == 1 {
        quote! { ::streamrun_core::codec::take_ref(&mut ids) }
    } else {
        let takes = types
            .iter()
            .map(|_| quote! { ::streamrun_core::codec::take_ref(&mut ids) });
        quote! { (#(#takes),*) }
    }
}

/// Registers a function as a remote function; see the crate docs.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    let function = parse_macro_input!(item as ItemFn);
    match remote_fn(attr.into(), function) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// `num_returns = N` from an attribute's arguments (1 when absent).
fn num_returns(attr: Tokens) -> syn::Result<usize> {
    let args = Punctuated::<syn::MetaNameValue, Token![,]>::parse_terminated.parse2(attr)?;
    let mut n = 1;
    for arg in args {
        if !arg.path.is_ident("num_returns") {
            return Err(syn::Error::new_spanned(
                arg.path,
                "the only option here is num_returns",
            ));
        }
        let syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(int),
            ..
        }) = &arg.value
        else {
            return Err(syn::Error::new_spanned(
                arg.value,
                "num_returns takes a number",
            ));
        };
        n = int.base10_parse()?;
    }
    Ok(n)
}

fn remote_fn(attr: Tokens, function: ItemFn) -> syn::Result<Tokens> {
    let n = num_returns(attr)?;
    let name = &function.sig.ident;
    let vis = &function.vis;
    let params = parameters(function.sig.inputs.iter())?;
    let returns = returns(&function.sig.output, n)?;
    let arity = params.len();
    let decoded = params
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| decode_arg(ty, i));
    let names: Vec<&syn::Ident> = params.iter().map(|(n, _)| n).collect();
    let types: Vec<&Type> = params.iter().map(|(_, t)| t).collect();
    let encoded = params.iter().map(|(n, t)| encode_arg(t, n));
    let encode_out = &returns.encode;
    let refs = refs_type(&returns.types);
    let refs_value = refs_value(&returns.types);
    let count = returns.types.len();
    Ok(quote! {
        #function

        #[doc = concat!("`", stringify!(#name), "` as a remote function: `remote` submits it as a task.")]
        #[allow(non_snake_case, clippy::too_many_arguments, clippy::unused_unit)]
        #vis mod #name {
            #[allow(unused_imports)]
            use super::*;

            /// The name every process knows the function by.
            pub const NAME: &str = module_path!();

            fn __call(
                args: &[::streamrun_core::codec::ArgValue],
            ) -> ::std::result::Result<::std::vec::Vec<::streamrun_core::codec::Encoded>, ::streamrun_core::TaskError> {
                ::streamrun_core::codec::check_arity(NAME, #arity, args.len())?;
                let out = super::#name(#(#decoded),*);
                Ok(#encode_out)
            }

            ::streamrun_core::inventory::submit! {
                ::streamrun_core::registry::RemoteFunction { name: NAME, call: __call }
            }

            /// Submits the function with default options; the result is a reference, at once.
            pub fn remote(
                rt: &::streamrun_core::Runtime,
                #(#names: impl ::std::convert::Into<::streamrun_core::Arg<#types>>),*
            ) -> ::streamrun_core::Result<#refs> {
                with(::streamrun_core::TaskOptions::default()).remote(rt, #(#names),*)
            }

            /// The function with `options` (resources, retries).
            pub fn with(options: ::streamrun_core::TaskOptions) -> Call {
                Call(options)
            }

            /// A call with options, ready to submit.
            pub struct Call(::streamrun_core::TaskOptions);

            impl Call {
                /// Submits the function; the result is a reference, at once.
                pub fn remote(
                    self,
                    rt: &::streamrun_core::Runtime,
                    #(#names: impl ::std::convert::Into<::streamrun_core::Arg<#types>>),*
                ) -> ::streamrun_core::Result<#refs> {
                    let args = ::std::vec![#(#encoded),*];
                    let mut ids = rt.submit(NAME, args, #count, self.0)?.into_iter();
                    Ok(#refs_value)
                }
            }
        }
    })
}

/// Registers a type's constructors and methods as an actor; see the crate docs.
#[proc_macro_attribute]
pub fn actor(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let block = parse_macro_input!(item as ItemImpl);
    match actor_impl(block) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn actor_impl(block: ItemImpl) -> syn::Result<Tokens> {
    let self_ty = &block.self_ty;
    let Some(type_name) = last_ident(self_ty).map(|s| s.ident.clone()) else {
        return Err(syn::Error::new_spanned(
            self_ty,
            "#[actor] goes on the impl of a named type",
        ));
    };
    let handle = format_ident!("{type_name}Handle");
    let call = format_ident!("{type_name}Call");
    let mut registrations = Vec::new();
    let mut handle_methods = Vec::new();
    let mut constructors = Vec::new();
    for item in &block.items {
        let ImplItem::Fn(method) = item else { continue };
        if !matches!(method.vis, syn::Visibility::Public(_)) {
            continue;
        }
        let name = &method.sig.ident;
        let params = parameters(method.sig.inputs.iter())?;
        let names: Vec<&syn::Ident> = params.iter().map(|(n, _)| n).collect();
        let types: Vec<&Type> = params.iter().map(|(_, t)| t).collect();
        let arity = params.len();
        let decoded: Vec<Tokens> = params
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| decode_arg(ty, i))
            .collect();
        let encoded: Vec<Tokens> = params.iter().map(|(n, t)| encode_arg(t, n)).collect();
        let call_fn = format_ident!("__actor_{}_{}", type_name, name);
        let receiver = method.sig.receiver();
        match receiver {
            None => {
                // A constructor: it returns the type.
                let returns_self = match &method.sig.output {
                    ReturnType::Type(_, ty) => {
                        let t = result_ok(ty).unwrap_or(ty);
                        last_ident(t).is_some_and(|s| s.ident == "Self" || s.ident == type_name)
                    }
                    ReturnType::Default => false,
                };
                if !returns_self {
                    continue;
                }
                let unwrap = if let ReturnType::Type(_, ty) = &method.sig.output
                    && result_ok(ty).is_some()
                {
                    quote! { .map_err(|e| ::streamrun_core::TaskError::Failed(e.to_string()))? }
                } else {
                    quote! {}
                };
                registrations.push(quote! {
                    #[doc(hidden)]
                    #[allow(non_snake_case)]
                    fn #call_fn(
                        args: &[::streamrun_core::codec::ArgValue],
                    ) -> ::std::result::Result<::std::boxed::Box<dyn ::std::any::Any + Send>, ::streamrun_core::TaskError> {
                        let name = concat!(module_path!(), "::", stringify!(#type_name), "::", stringify!(#name));
                        ::streamrun_core::codec::check_arity(name, #arity, args.len())?;
                        let made: #self_ty = <#self_ty>::#name(#(#decoded),*)#unwrap;
                        Ok(::std::boxed::Box::new(made))
                    }
                    ::streamrun_core::inventory::submit! {
                        ::streamrun_core::registry::ActorConstructor {
                            name: concat!(module_path!(), "::", stringify!(#type_name), "::", stringify!(#name)),
                            call: #call_fn,
                        }
                    }
                });
                constructors.push((
                    name.clone(),
                    names.iter().map(|n| (*n).clone()).collect::<Vec<_>>(),
                    types.iter().map(|t| (*t).clone()).collect::<Vec<_>>(),
                    encoded,
                ));
            }
            Some(receiver) => {
                let mutable = receiver.mutability.is_some();
                let returns = returns(&method.sig.output, 1)?;
                let encode_out = &returns.encode;
                let refs = refs_type(&returns.types);
                let refs_value = refs_value(&returns.types);
                let instance = if mutable {
                    quote! { instance.downcast_mut::<#self_ty>() }
                } else {
                    quote! { instance.downcast_ref::<#self_ty>() }
                };
                registrations.push(quote! {
                    #[doc(hidden)]
                    #[allow(non_snake_case)]
                    fn #call_fn(
                        instance: &mut (dyn ::std::any::Any + Send),
                        args: &[::streamrun_core::codec::ArgValue],
                    ) -> ::std::result::Result<::std::vec::Vec<::streamrun_core::codec::Encoded>, ::streamrun_core::TaskError> {
                        let name = concat!(module_path!(), "::", stringify!(#type_name), "::", stringify!(#name));
                        ::streamrun_core::codec::check_arity(name, #arity, args.len())?;
                        let Some(instance) = #instance else {
                            return Err(::streamrun_core::TaskError::Failed(format!("{name}: the actor is not a {}", stringify!(#type_name))));
                        };
                        let out = instance.#name(#(#decoded),*);
                        Ok(#encode_out)
                    }
                    ::streamrun_core::inventory::submit! {
                        ::streamrun_core::registry::ActorMethod {
                            name: concat!(module_path!(), "::", stringify!(#type_name), "::", stringify!(#name)),
                            call: #call_fn,
                        }
                    }
                });
                handle_methods.push(quote! {
                    #[doc = concat!("Calls `", stringify!(#name), "` on the actor; the result is a reference, at once.")]
                    pub fn #name(
                        &self,
                        #(#names: impl ::std::convert::Into<::streamrun_core::Arg<#types>>),*
                    ) -> ::streamrun_core::Result<#refs> {
                        let args = ::std::vec![#(#encoded),*];
                        let name = concat!(module_path!(), "::", stringify!(#type_name), "::", stringify!(#name));
                        let mut ids = self.0.call(name, args)?.into_iter();
                        Ok(#refs_value)
                    }
                });
            }
        }
    }
    let Some((ctor, ctor_names, ctor_types, ctor_encoded)) = constructors.first() else {
        return Err(syn::Error::new_spanned(
            self_ty,
            "an actor needs a public constructor: a function without self that returns Self",
        ));
    };
    Ok(quote! {
        #block

        #(#registrations)*

        #[doc = concat!("A handle to a `", stringify!(#type_name), "` actor: its methods run on the actor, in the order each caller calls them.")]
        #[derive(Clone, ::streamrun_core::serde::Serialize, ::streamrun_core::serde::Deserialize)]
        #[serde(crate = "::streamrun_core::serde", transparent)]
        pub struct #handle(::streamrun_core::ActorHandle);

        impl #handle {
            #(#handle_methods)*

            /// The untyped handle: to kill the actor, or read its id.
            pub fn handle(&self) -> &::streamrun_core::ActorHandle {
                &self.0
            }
        }

        impl ::streamrun_core::Actor for #self_ty {
            type Handle = #handle;
            const TYPE: &'static str = concat!(module_path!(), "::", stringify!(#type_name));
            fn handle(inner: ::streamrun_core::ActorHandle) -> #handle {
                #handle(inner)
            }
        }

        impl #self_ty {
            /// Creates the actor with default options, on a worker process of its own.
            pub fn remote(
                rt: &::streamrun_core::Runtime,
                #(#ctor_names: impl ::std::convert::Into<::streamrun_core::Arg<#ctor_types>>),*
            ) -> ::streamrun_core::Result<#handle> {
                Self::with(::streamrun_core::ActorOptions::default()).remote(rt, #(#ctor_names),*)
            }

            /// The actor with `options` (a name, restarts).
            pub fn with(options: ::streamrun_core::ActorOptions) -> #call {
                #call(options)
            }
        }

        #[doc = concat!("A `", stringify!(#type_name), "` actor to create, with options.")]
        pub struct #call(::streamrun_core::ActorOptions);

        impl #call {
            /// Creates the actor on a worker process of its own.
            pub fn remote(
                self,
                rt: &::streamrun_core::Runtime,
                #(#ctor_names: impl ::std::convert::Into<::streamrun_core::Arg<#ctor_types>>),*
            ) -> ::streamrun_core::Result<#handle> {
                let args = ::std::vec![#(#ctor_encoded),*];
                let constructor = concat!(module_path!(), "::", stringify!(#type_name), "::", stringify!(#ctor));
                let inner = rt.create_actor(<#self_ty as ::streamrun_core::Actor>::TYPE, constructor, args, self.0)?;
                Ok(#handle(inner))
            }
        }
    })
}
