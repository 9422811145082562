//! **Implementation detail of tidings**: `#[derive(Event)]`.
//!
//! Use it as `tidings::Event`; this crate is not meant to be depended on
//! directly, and what it generates names only `::tidings` paths (typetag,
//! inventory and serde are reached through `tidings::__private`).

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, GenericParam, LitInt, LitStr, Token, parse_macro_input};

/// Derives `tidings::Event` and `tidings::EventType` for a struct or enum
/// that also derives serde's `Serialize` and `Deserialize`.
///
/// Attributes, all optional, in one or several `#[event(..)]`:
///
/// - `name = "orders.placed"`: the wire tag (default: the type's name as
///   written). Not empty, at most 255 bytes, no whitespace or control
///   characters.
/// - `routing_key = "orders.eu.placed"`: the AMQP routing key (default: the
///   tag). At most 255 bytes, no `*` or `#`.
/// - `version = 2`: the version of a breaking change (default 1). Two
///   versions of one tag may live in one process.
/// - `upcast_from = OrderPlacedV1`: the previous version, which a receiver
///   of this one turns into it with `From`.
///
/// The deep schema fingerprint is traced at run time (tidings' `Schema`);
/// the one computed here, of the fields as written (the crate's `shape`
/// function), stands in for a type whose format cannot be traced.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The longest AMQP short string, in bytes.
const MAX_SHORT_STRING: usize = 255;

/// The keys `#[event(..)]` accepts.
const KNOWN_KEYS: &str = "`name`, `routing_key`, `version`, `upcast_from`";

/// Every error found in one derive, reported together (serde's `Ctxt`).
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn spanned(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// The `#[event(..)]` values, each checked.
#[derive(Default)]
struct Attributes {
    name: Option<LitStr>,
    routing_key: Option<LitStr>,
    version: Option<LitInt>,
    upcast_from: Option<syn::Path>,
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let mut errors = Errors::default();
    check_generics(input, &mut errors);
    if let Data::Union(union) = &input.data {
        errors.push(syn::Error::new(
            union.union_token.span,
            "`Event` cannot be derived for unions: serde cannot tell which field is set; use an enum",
        ));
    }
    let attributes = parse_attributes(input, &mut errors);
    errors.finish()?;

    let ident = &input.ident;
    let tag = attributes
        .name
        .as_ref()
        .map_or_else(|| ident.unraw().to_string(), LitStr::value);
    let routing_key = attributes
        .routing_key
        .as_ref()
        .map_or_else(|| tag.clone(), LitStr::value);
    let version: u32 = attributes
        .version
        .as_ref()
        .and_then(|n| n.base10_parse().ok())
        .unwrap_or(1);
    if let Some(from) = &attributes.upcast_from
        && version < 2
    {
        return Err(syn::Error::new_spanned(
            from,
            "`upcast_from` names the previous version, so this type needs `version = N` with N of 2 or more",
        ));
    }
    let written = LitInt::new(
        &format!("{:#018x}u64", fnv1a(shape(&tag, &input.data).as_bytes())),
        Span::call_site(),
    );
    let wire_name = if version == 1 {
        tag.clone()
    } else {
        format!("{tag}@v{version}")
    };
    let aliases = field_aliases(&input.data);
    let type_name = ident.unraw().to_string();

    // Spanned at the type's name, so a missing serde derive is reported
    // there rather than deep inside typetag's expansion.
    let assert_serde = quote_spanned! {ident.span()=>
        fn event_types_derive_serialize_and_deserialize<T>()
        where
            T: ::tidings::__private::serde::Serialize
                + for<'de> ::tidings::__private::serde::Deserialize<'de>,
        {
        }
        let _ = event_types_derive_serialize_and_deserialize::<#ident>;
    };

    // The previous version: the same tag, one version less, and `From`.
    let upcast = match &attributes.upcast_from {
        Some(from) => {
            let previous = version - 1;
            let message = format!(
                "`upcast_from` must name the previous version of this event: tag {tag:?} at version {previous}"
            );
            quote_spanned! {from.span()=>
                const _: () = ::core::assert!(
                    ::tidings::__private::same_str(<#from as ::tidings::EventType>::TAG, #tag)
                        && <#from as ::tidings::EventType>::VERSION == #previous,
                    #message
                );
                const UPCAST: ::core::option::Option<::tidings::__private::UpcastFn> =
                    ::core::option::Option::Some(::tidings::__private::upcast::<#from, #ident>);
            }
        }
        None => quote! {
            const UPCAST: ::core::option::Option<::tidings::__private::UpcastFn> =
                ::core::option::Option::None;
        },
    };

    Ok(quote! {
        const _: () = {
            use ::tidings::__private::typetag;

            #assert_serde

            #upcast

            fn schema() -> &'static ::tidings::Schema {
                static SCHEMA: ::std::sync::OnceLock<::tidings::Schema> = ::std::sync::OnceLock::new();
                SCHEMA.get_or_init(|| {
                    ::tidings::Schema::trace::<#ident>(
                        #tag,
                        #version,
                        &[#(&[#(#aliases),*]),*],
                        ::tidings::Fingerprint::from_u64(#written),
                    )
                })
            }

            impl ::tidings::EventType for #ident {
                const TAG: &'static str = #tag;
                const VERSION: u32 = #version;
                const ROUTING_KEY: &'static str = #routing_key;

                fn schema() -> &'static ::tidings::Schema {
                    schema()
                }
            }

            // The values themselves, not `<Self as EventType>::TAG`: naming
            // `EventType` here would repeat each missing-serde error six times.
            #[typetag::serde(name = #wire_name)]
            impl ::tidings::Event for #ident {
                fn tag(&self) -> &'static str {
                    #tag
                }
                fn version(&self) -> u32 {
                    #version
                }
                fn fingerprint(&self) -> ::tidings::Fingerprint {
                    schema().fingerprint()
                }
                fn routing_key(&self) -> &'static str {
                    #routing_key
                }
                fn as_any(&self) -> &dyn ::core::any::Any {
                    self
                }
                fn into_any_arc(
                    self: ::std::sync::Arc<Self>,
                ) -> ::std::sync::Arc<dyn ::core::any::Any + ::core::marker::Send + ::core::marker::Sync> {
                    self
                }
            }

            ::tidings::__private::inventory::submit! {
                ::tidings::Registration::new(
                    #tag,
                    #version,
                    ::core::concat!(::core::module_path!(), "::", #type_name),
                    #wire_name,
                    schema,
                    ::tidings::__private::read_event::<#ident>,
                    UPCAST,
                )
            }
        };
    })
}

fn check_generics(input: &DeriveInput, errors: &mut Errors) {
    let params = &input.generics.params;
    if params.is_empty() {
        return;
    }
    let message = if params
        .iter()
        .all(|p| matches!(p, GenericParam::Lifetime(_)))
    {
        "`Event` cannot be derived for types with lifetime parameters: events are decoded into owned, `'static` values; use owned fields (`String` instead of `&str`)"
    } else {
        "`Event` cannot be derived for generic types: each wire tag names one concrete type; derive it on a concrete type instead (for example a struct wrapping `MyEvent<u32>`)"
    };
    errors.spanned(&input.generics, message);
}

fn parse_attributes(input: &DeriveInput, errors: &mut Errors) -> Attributes {
    let mut attributes = Attributes::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        let parsed = attr.parse_nested_meta(|meta| {
            parse_key(&meta, &mut attributes, errors);
            Ok(())
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    attributes
}

/// Parses one `key = "value"`, recording what is wrong and skipping to the
/// next `,` so that later keys are still checked.
fn parse_key(meta: &ParseNestedMeta<'_>, attributes: &mut Attributes, errors: &mut Errors) {
    let value = if meta.input.peek(Token![=]) {
        meta.input.parse::<Token![=]>().ok();
        Some(rest_of_item(meta))
    } else {
        None
    };
    let path = &meta.path;
    let key: String = path
        .to_token_stream()
        .to_string()
        .split_whitespace()
        .collect();
    if key == "version" || key == "upcast_from" {
        parse_version_key(&key, path, value, attributes, errors);
        return;
    }
    let slot = match key.as_str() {
        "name" => &mut attributes.name,
        "routing_key" => &mut attributes.routing_key,
        _ => {
            rest_of_item(meta);
            errors.spanned(
                path,
                format!("unknown key `{key}` in #[event(..)]; the known keys are {KNOWN_KEYS}"),
            );
            return;
        }
    };
    let Some(value) = value else {
        let rest = rest_of_item(meta);
        errors.spanned(
            quote!(#path #rest),
            format!("`{key}` needs a value: write #[event({key} = \"...\")]"),
        );
        return;
    };
    let Ok(text) = syn::parse2::<LitStr>(value.clone()) else {
        errors.spanned(
            if value.is_empty() {
                path.to_token_stream()
            } else {
                value
            },
            format!("`{key}` takes a string literal: write #[event({key} = \"...\")]"),
        );
        return;
    };
    if slot.is_some() {
        errors.spanned(
            path,
            format!("duplicate key `{key}` in #[event(..)]; give it once"),
        );
        return;
    }
    if let Err(message) = check_value(&key, &text.value()) {
        errors.spanned(&text, message);
    }
    *slot = Some(text);
}

/// Parses `version = N` or `upcast_from = Type`.
fn parse_version_key(
    key: &str,
    path: &syn::Path,
    value: Option<TokenStream2>,
    attributes: &mut Attributes,
    errors: &mut Errors,
) {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        let example = if key == "version" {
            "2"
        } else {
            "OrderPlacedV1"
        };
        errors.spanned(
            path,
            format!("`{key}` needs a value: write #[event({key} = {example})]"),
        );
        return;
    };
    if key == "version" {
        let parsed = syn::parse2::<LitInt>(value.clone())
            .ok()
            .filter(|n| n.base10_parse::<u32>().is_ok_and(|n| n >= 1));
        let Some(number) = parsed else {
            errors.spanned(
                value,
                "`version` takes a whole number from 1 to 4294967295: write #[event(version = 2)]",
            );
            return;
        };
        if attributes.version.replace(number).is_some() {
            errors.spanned(
                path,
                "duplicate key `version` in #[event(..)]; give it once",
            );
        }
        return;
    }
    let Ok(from) = syn::parse2::<syn::Path>(value.clone()) else {
        errors.spanned(value, "`upcast_from` takes the type of the previous version: write #[event(upcast_from = OrderPlacedV1)]");
        return;
    };
    if attributes.upcast_from.replace(from).is_some() {
        errors.spanned(
            path,
            "duplicate key `upcast_from` in #[event(..)]; give it once",
        );
    }
}

/// The `#[serde(alias = "..")]` names of each field of a struct that serde
/// reads (not `skip`ped), in order; empty when no field has one.
fn field_aliases(data: &Data) -> Vec<Vec<LitStr>> {
    let Data::Struct(data) = data else {
        return Vec::new();
    };
    let mut all = Vec::new();
    for field in &data.fields {
        let mut aliases = Vec::new();
        let mut skipped = false;
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("serde")) {
            let _ = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("alias") {
                    if let Ok(alias) = meta.value().and_then(|v| v.parse::<LitStr>()) {
                        aliases.push(alias);
                    }
                    return Ok(());
                }
                skipped |= meta.path.is_ident("skip") || meta.path.is_ident("skip_deserializing");
                if meta.input.peek(Token![=]) {
                    meta.input.parse::<Token![=]>()?;
                }
                rest_of_item(&meta);
                Ok(())
            });
        }
        if !skipped {
            all.push(aliases);
        }
    }
    if all.iter().all(Vec::is_empty) {
        all.clear();
    }
    all
}

/// The tokens up to the next top-level `,` (or the end).
fn rest_of_item(meta: &ParseNestedMeta<'_>) -> TokenStream2 {
    let mut rest = TokenStream2::new();
    while !meta.input.is_empty() && !meta.input.peek(Token![,]) {
        match meta.input.parse::<TokenTree>() {
            Ok(token) => rest.extend([token]),
            Err(_) => break,
        }
    }
    rest
}

fn check_value(key: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_SHORT_STRING {
        return Err(format!(
            "`{key}` is {} bytes long, over the AMQP short string limit of {MAX_SHORT_STRING}; shorten it",
            value.len()
        ));
    }
    match key {
        "name" if value.is_empty() => Err(
            "`name` is empty; give the event a wire tag such as \"orders.placed\", or remove `name` to use the type's name".to_owned(),
        ),
        "name" => match value.chars().find(|c| c.is_whitespace() || c.is_control()) {
            Some(c) => Err(format!(
                "`name` contains whitespace or a control character ({c:?}); use letters, digits, `.`, `_` or `-`"
            )),
            None => Ok(()),
        },
        "routing_key" => match value.chars().find(|c| matches!(c, '*' | '#')) {
            Some(c) => Err(format!(
                "`routing_key` contains `{c}`: `*` and `#` are binding patterns, not keys; publish with a concrete key such as \"orders.eu.placed\""
            )),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The canonical form of a type's shape, which the fingerprint hashes with
/// 64-bit FNV-1a:
///
/// ```text
/// tag=<tag>;struct{<field>:<type>,<field>:<type>}    named struct
/// tag=<tag>;tuple(<type>,<type>)                     tuple struct
/// tag=<tag>;unit                                     unit struct
/// tag=<tag>;enum{<Variant>{<field>:<type>},<Variant>(<type>),<Variant>}
/// ```
///
/// Fields and variants are in declaration order. `<tag>` is the wire tag;
/// names are identifiers without `r#`; each `<type>` is the type as written
/// (`quote!(#ty).to_string()`) with all whitespace removed, so formatting
/// does not change the fingerprint but renaming, retyping, adding, removing
/// or reordering a field or variant does. Type aliases are not resolved.
/// Not part of it: the routing key, enum discriminants, attributes
/// (including `#[serde(..)]`) and doc comments.
fn shape(tag: &str, data: &Data) -> String {
    let mut out = format!("tag={tag};");
    match data {
        Data::Struct(data) => {
            out.push_str(match data.fields {
                Fields::Named(_) => "struct",
                Fields::Unnamed(_) => "tuple",
                Fields::Unit => "unit",
            });
            push_fields(&mut out, &data.fields);
        }
        Data::Enum(data) => {
            out.push_str("enum{");
            for (i, variant) in data.variants.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&variant.ident.unraw().to_string());
                push_fields(&mut out, &variant.fields);
            }
            out.push('}');
        }
        // Rejected before the fingerprint is computed.
        Data::Union(_) => out.push_str("union"),
    }
    out
}

fn push_fields(out: &mut String, fields: &Fields) {
    let (open, close) = match fields {
        Fields::Named(_) => ('{', '}'),
        Fields::Unnamed(_) => ('(', ')'),
        Fields::Unit => return,
    };
    out.push(open);
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if let Some(name) = &field.ident {
            out.push_str(&name.unraw().to_string());
            out.push(':');
        }
        let written = field.ty.to_token_stream().to_string();
        out.extend(written.chars().filter(|c| !c.is_whitespace()));
    }
    out.push(close);
}

/// 64-bit FNV-1a: tiny, and the same on every compiler and platform.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape_of(tag: &str, item: &str) -> String {
        let input: DeriveInput = syn::parse_str(item).unwrap();
        shape(tag, &input.data)
    }

    fn fingerprint(tag: &str, item: &str) -> u64 {
        fnv1a(shape_of(tag, item).as_bytes())
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn canonical_form() {
        let cases = [
            (
                "struct A { id: u64, r#type: Vec<String> }",
                "tag=t;struct{id:u64,type:Vec<String>}",
            ),
            ("struct A(u64, [u8; 4]);", "tag=t;tuple(u64,[u8;4])"),
            ("struct A;", "tag=t;unit"),
            ("struct A {}", "tag=t;struct{}"),
            (
                "enum E { A { x: u8 }, B(u8, String), C = 3 }",
                "tag=t;enum{A{x:u8},B(u8,String),C}",
            ),
        ];
        for (item, expected) in cases {
            assert_eq!(shape_of("t", item), expected, "{item}");
        }
    }

    #[test]
    fn fingerprint_is_pinned() {
        // Changing this value breaks every deployed fingerprint: don't,
        // unless the canonical form changes on purpose.
        assert_eq!(
            fingerprint(
                "orders.placed",
                "struct OrderPlaced { id: u64, item: String }"
            ),
            fnv1a(b"tag=orders.placed;struct{id:u64,item:String}"),
        );
        assert_eq!(
            fingerprint(
                "orders.placed",
                "struct OrderPlaced { id: u64, item: String }"
            ),
            0x838f_8dc8_4b8f_785a,
        );
    }

    #[test]
    fn formatting_and_type_name_do_not_matter() {
        let base = fingerprint("t", "struct A { id: u64, tags: Vec<Vec<String>> }");
        for same in [
            "struct B {id:u64,tags:Vec< Vec < String > >}",
            "struct A {\n    /// docs\n    #[serde(default)]\n    id: u64,\n    tags: Vec<Vec<String>>,\n}",
        ] {
            assert_eq!(base, fingerprint("t", same), "{same}");
        }
    }

    #[test]
    fn shape_changes_change_the_fingerprint() {
        let base = fingerprint("t", "struct A { id: u64, tags: Vec<String> }");
        for changed in [
            "struct A { ident: u64, tags: Vec<String> }",
            "struct A { id: u32, tags: Vec<String> }",
            "struct A { id: u64, tags: Vec<String>, extra: bool }",
            "struct A { tags: Vec<String>, id: u64 }",
            "struct A { id: u64 }",
            "struct A(u64, Vec<String>);",
            "struct A;",
        ] {
            assert_ne!(base, fingerprint("t", changed), "{changed}");
        }
        assert_ne!(
            base,
            fingerprint("u", "struct A { id: u64, tags: Vec<String> }")
        );
        assert_ne!(
            fingerprint("t", "struct A;"),
            fingerprint("t", "struct A();")
        );
        assert_ne!(
            fingerprint("t", "struct A;"),
            fingerprint("t", "struct A {}")
        );

        let base = fingerprint("t", "enum E { A { x: u8 }, B(u8), C }");
        for changed in [
            "enum E { A { x: u8 }, C, B(u8) }",
            "enum E { A { x: u8 }, B(u8), D }",
            "enum E { A { x: u8 }, B(u8) }",
            "enum E { A { x: u8 }, B(u8), C, D }",
            "enum E { A { y: u8 }, B(u8), C }",
            "enum E { A { x: u8 }, B(u16), C }",
            "enum E { A { x: u8 }, B(u8), C() }",
        ] {
            assert_ne!(base, fingerprint("t", changed), "{changed}");
        }
    }
}
