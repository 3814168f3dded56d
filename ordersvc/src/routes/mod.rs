//! The route table: the router and the OpenAPI document are both built from [`ROUTES`].

mod cancel;
mod create;
mod health;
mod history;
mod read;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::{MethodFilter, MethodRouter, on};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

/// Largest request body accepted (413 above).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Every operation the API offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    CreateOrder,
    ListOrders,
    GetOrder,
    OrderEvents,
    CancelOrder,
    Health,
    Ready,
    OpenApi,
}

impl Operation {
    /// The OpenAPI `operationId`.
    pub fn id(self) -> &'static str {
        match self {
            Operation::CreateOrder => "createOrder",
            Operation::ListOrders => "listOrders",
            Operation::GetOrder => "getOrder",
            Operation::OrderEvents => "listOrderEvents",
            Operation::CancelOrder => "cancelOrder",
            Operation::Health => "health",
            Operation::Ready => "ready",
            Operation::OpenApi => "openApi",
        }
    }
}

/// One route: a method on a path (axum's `{param}` syntax is also OpenAPI's).
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub operation: Operation,
}

const fn route(method: Method, path: &'static str, operation: Operation) -> Route {
    Route {
        method,
        path,
        operation,
    }
}

pub const ROUTES: &[Route] = &[
    route(Method::POST, "/api/orders", Operation::CreateOrder),
    route(Method::GET, "/api/orders", Operation::ListOrders),
    route(Method::GET, "/api/orders/{id}", Operation::GetOrder),
    route(
        Method::GET,
        "/api/orders/{id}/events",
        Operation::OrderEvents,
    ),
    route(
        Method::POST,
        "/api/orders/{id}/cancel",
        Operation::CancelOrder,
    ),
    route(Method::GET, "/healthz", Operation::Health),
    route(Method::GET, "/readyz", Operation::Ready),
    route(Method::GET, "/api/openapi.json", Operation::OpenApi),
];

fn endpoint(route: &Route) -> MethodRouter<AppState> {
    // Every method of the table is one axum knows; GET stands in should that ever change, and the
    // OpenAPI test would catch the mismatch.
    let filter = MethodFilter::try_from(route.method.clone()).unwrap_or(MethodFilter::GET);
    match route.operation {
        Operation::CreateOrder => on(filter, create::create_order),
        Operation::ListOrders => on(filter, read::list_orders),
        Operation::GetOrder => on(filter, read::get_order),
        Operation::OrderEvents => on(filter, history::order_events),
        Operation::CancelOrder => on(filter, cancel::cancel_order),
        Operation::Health => on(filter, health::healthz),
        Operation::Ready => on(filter, health::readyz),
        Operation::OpenApi => on(filter, health::openapi),
    }
}

/// The whole HTTP API, ready to serve (or to call with `tower::ServiceExt::oneshot` in tests).
pub fn router(state: AppState) -> Router {
    let admission = state.admission.clone();
    ROUTES
        .iter()
        .fold(Router::new(), |router, route| {
            let endpoint = endpoint(route);
            // Probes are exempt: an overloaded instance is alive and ready, only busy.
            let endpoint = match route.operation {
                Operation::Health | Operation::Ready => endpoint,
                _ => endpoint.route_layer(axum::middleware::from_fn_with_state(
                    admission.clone(),
                    crate::admission::admit,
                )),
            };
            router.route(route.path, endpoint)
        })
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
