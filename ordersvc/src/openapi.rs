//! The parts of the OpenAPI document that are not a handler's own: its title, the bearer scheme,
//! the answers every protected or admitted operation may give. [`crate::routes::document`] puts
//! them together with the routes: each handler's `#[utoipa::path]` says its parameters and answers,
//! and the router that serves it is built from the same registration.
//!
//! Why utoipa with utoipa-axum rather than aide: a handler is routed and documented by one
//! `routes!(handler)` call, so a route cannot exist undocumented or the other way round; the wire
//! types only need utoipa's derive (aide needs schemars, a second schema model beside serde's);
//! and it is what crates.io does (`src/openapi.rs`), a pattern the project's style guide names.

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi as Document, Ref, RefOr, Required, Response,
    ResponseBuilder,
};

use crate::error::RETRY_AFTER_SECS;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "ordersvc",
        description = "The order API of the event-sourced order pipeline. Every error is JSON {\"error\": \"...\"}."
    ),
    // Referenced from a field whose schema is written by hand (its bounds are the domain's).
    components(schemas(orders_api::OrderItemRequest)),
    modifiers(&BearerScheme)
)]
pub(crate) struct ApiDoc;

/// The name of the security scheme of [`protected`] operations.
pub(crate) const BEARER: &str = "bearer";

/// Declares the bearer scheme: a JWT access token from the identity provider.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, document: &mut Document) {
        let components = document.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token (JWT) from the identity provider: its `sub` is the \
                         customer, who reaches only their own orders (another's answers 404, \
                         like a missing one); the scope `orders:admin` reaches every order.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Marks every operation of `document` as needing a bearer token, answering 401 without a valid
/// one.
pub(crate) fn protected(document: &mut Document) {
    for operation in operations(document) {
        operation.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
        operation
            .responses
            .responses
            .insert("401".to_owned(), RefOr::T(unauthorized()));
    }
}

/// Every operation of `document`, whatever its path and method.
fn operations(document: &mut Document) -> impl Iterator<Item = &mut Operation> {
    document.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
    })
}

fn unauthorized() -> Response {
    let challenge = HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .description(Some(
            "Bearer, with error=\"invalid_token\" and error_description when a token was sent.",
        ))
        .build();
    ResponseBuilder::new()
        .description(
            "No bearer token, or one that is not valid (expired, not yet valid, another \
             issuer or audience, a bad signature, an unknown key or algorithm, no sub).",
        )
        .header("WWW-Authenticate", challenge)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .build()
}

/// Adds the 503 of the bound of requests in flight to every operation of `document`: a dependency
/// is down, or the instance refused the request before doing anything.
pub(crate) fn refusable(document: &mut Document) {
    for operation in operations(document) {
        operation
            .responses
            .responses
            .insert("503".to_owned(), RefOr::T(unavailable()));
    }
}

/// Marks the request body of the POST on `path` as optional.
pub(crate) fn optional_post_body(document: &mut Document, path: &str) {
    let body = document
        .paths
        .paths
        .get_mut(path)
        .and_then(|item| item.post.as_mut())
        .and_then(|operation| operation.request_body.as_mut());
    if let Some(RefOr::T(body)) = body {
        body.required = Some(Required::False);
    }
}

fn unavailable() -> Response {
    let retry_after = HeaderBuilder::new()
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .examples([RETRY_AFTER_SECS]),
        ))
        .description(Some("Seconds to wait before retrying."))
        .build();
    ResponseBuilder::new()
        .description(
            "The event store or the orders database is unavailable, or too many requests are in \
             flight (ORDERSVC_MAX_IN_FLIGHT). Nothing was written unless the event store's answer \
             was lost: retry after Retry-After seconds, with the same Idempotency-Key.",
        )
        .header("Retry-After", retry_after)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .build()
}
