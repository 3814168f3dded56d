//! Schemas of the fields whose bounds come from the domain's limits, so the document states the
//! same numbers the service enforces.

use order_domain::{OrderStatus, limits};
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, Object, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
};
use utoipa::openapi::{RefOr, Schema};

/// Text the service accepts: not blank (a character that is not white space, as Rust's
/// `str::trim` sees it: the regex `\s` plus U+0085) and without U+0000, which PostgreSQL cannot store.
pub const NON_BLANK_TEXT: &str = "^[^\\u0000]*[^\\s\\u0000\\u0085][^\\u0000]*$";

/// The `after` cursor exactly as `GET /api/orders` hands it out: the hex of
/// `<unix nanoseconds>|<order uuid>`, so any value of this shape is one the server can read.
pub const CURSOR_PATTERN: &str = concat!(
    "^(2d)?(3[0-9]){1,20}7c",
    "(3[0-9]|6[1-6]){8}2d(3[0-9]|6[1-6]){4}2d(3[0-9]|6[1-6]){4}2d(3[0-9]|6[1-6]){4}2d(3[0-9]|6[1-6]){12}$"
);

/// The reason of a cancel that gives none.
pub const DEFAULT_CANCEL_REASON: &str = "cancelled by customer";
/// Longest cancel reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Longest `Idempotency-Key`, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;
/// Orders per page of `GET /api/orders`, when not given and at most.
pub const DEFAULT_PAGE_LIMIT: u32 = 20;
pub const MAX_PAGE_LIMIT: u32 = 100;

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn non_blank(max_chars: usize) -> ObjectBuilder {
    string()
        .min_length(Some(1))
        .max_length(Some(max_chars))
        .pattern(Some(NON_BLANK_TEXT))
}

pub(crate) fn text() -> Object {
    non_blank(limits::MAX_TEXT_CHARS).build()
}

pub(crate) fn reason() -> Object {
    non_blank(MAX_REASON_CHARS)
        .default(Some(DEFAULT_CANCEL_REASON.into()))
        .build()
}

/// Money in an answer: always two decimals.
pub(crate) fn money() -> Object {
    string()
        .pattern(Some("^[0-9]+\\.[0-9]{2}$"))
        .examples(["25.00"])
        .build()
}

pub(crate) fn unit_price() -> RefOr<Schema> {
    let max = limits::MAX_UNIT_PRICE.to_cents() / 100;
    OneOfBuilder::new()
        .description(Some(format!(
            "A number or a decimal string, at most 2 decimals, from 0 to {max}."
        )))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(0))
                .maximum(Some(max)),
        )
        .item(string().pattern(Some("^[0-9]+(\\.[0-9]{1,2})?$")))
        .into()
}

pub(crate) fn quantity() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .minimum(Some(1))
        .maximum(Some(limits::MAX_QUANTITY))
        .build()
}

pub(crate) fn request_items() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(utoipa::openapi::Ref::from_schema_name("OrderItemRequest"))
        .min_items(Some(1))
        .max_items(Some(limits::MAX_ITEMS))
}

fn statuses(statuses: &[OrderStatus]) -> Object {
    string()
        .enum_values(Some(statuses.iter().map(|status| status.as_str())))
        .build()
}

pub(crate) fn status() -> Object {
    statuses(&OrderStatus::ALL)
}

pub(crate) fn pending() -> Object {
    statuses(&[OrderStatus::Pending])
}

pub(crate) fn cancelled() -> Object {
    statuses(&[OrderStatus::Cancelled])
}

pub(crate) fn page_limit() -> Object {
    ObjectBuilder::new()
        .description(Some("Orders per page."))
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(MAX_PAGE_LIMIT))
        .default(Some(DEFAULT_PAGE_LIMIT.into()))
        .build()
}

pub(crate) fn cursor() -> Object {
    string()
        .description(Some(
            "The `next` cursor of the previous page (opaque; its shape is given for validation only).",
        ))
        .pattern(Some(CURSOR_PATTERN))
        .build()
}

pub(crate) fn min_version() -> Object {
    ObjectBuilder::new()
        .description(Some(
            "Wait briefly until the read model reached this version. Still behind: the order as \
             it is, with X-Read-Model-Stale: true (404 when there is no row yet).",
        ))
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(1))
        .maximum(Some(i64::MAX))
        .build()
}

/// Printable ASCII with at least one character that is not a space.
pub(crate) fn idempotency_key() -> Object {
    string()
        .description(Some(
            "1 to 200 printable ASCII characters. A retry with the same key and order answers \
             the stored order and appends nothing.",
        ))
        .min_length(Some(1))
        .max_length(Some(MAX_IDEMPOTENCY_KEY_CHARS))
        .pattern(Some("^[ -~]*[!-~][ -~]*$"))
        .build()
}
