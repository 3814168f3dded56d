//! The routes: the router and the OpenAPI document are both built from [`api`].

mod cancel;
mod create;
mod health;
mod history;
mod read;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::admission::Admission;
use crate::auth::Auth;
use crate::error::ApiError;

use crate::body::MAX_BODY_BYTES;

/// Every operation with its route and its documentation, registered together so none can be
/// routed undocumented. All but the probes are behind the bound of requests in flight, and
/// document the 503 it answers; the orders' operations need a bearer token (`auth`), and document
/// it and the 401, while the document itself stays open.
pub(crate) fn api(admission: Admission, auth: Auth) -> OpenApiRouter<AppState> {
    let mut protected = OpenApiRouter::new()
        .routes(routes!(create::create_order, read::list_orders))
        .routes(routes!(read::get_order))
        .routes(routes!(history::order_events))
        .routes(routes!(cancel::cancel_order));
    crate::openapi::protected(protected.get_openapi_mut());
    let protected = protected.route_layer(axum::middleware::from_fn_with_state(
        auth,
        crate::auth::authenticate,
    ));
    let mut admitted = OpenApiRouter::new()
        .merge(protected)
        .routes(routes!(health::openapi));
    crate::openapi::refusable(admitted.get_openapi_mut());
    crate::openapi::optional_post_body(admitted.get_openapi_mut(), "/api/orders/{id}/cancel");
    let admitted = admitted.route_layer(axum::middleware::from_fn_with_state(
        admission,
        crate::admission::admit,
    ));
    // Probes are exempt: an overloaded instance is alive and ready, only busy.
    let probes = OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz));
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .merge(admitted)
        .merge(probes)
}

/// The document served at `GET /api/openapi.json`: the routes' own, with [`crate::openapi`]'s
/// parts.
pub fn document() -> serde_json::Value {
    let document = api(
        crate::admission::Admission::new(1),
        crate::auth::Auth::open(),
    )
    .into_openapi();
    // Serializing these plain structures cannot fail; an empty object would fail every test.
    serde_json::to_value(document).unwrap_or_default()
}

/// The whole HTTP API, ready to serve (or to call with `tower::ServiceExt::oneshot` in tests).
pub fn router(state: AppState) -> Router {
    let (router, _) = api(state.admission.clone(), state.auth.clone()).split_for_parts();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Outermost, and after routing (Router::layer wraps each route), so the span knows the route.
        .layer(axum::middleware::from_fn(crate::trace::server_span))
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

/// True for text that PostgreSQL cannot store: a TEXT or JSONB value never holds U+0000, so such
/// text must be refused at the edge (422/400), not reach the database as a 500.
pub(crate) fn has_nul(text: &str) -> bool {
    text.contains('\0')
}

/// An order id from the path: 400 unless it is a UUID.
fn order_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::BadRequest(format!("order id {raw:?} is not a UUID")))
}
