//! The one mapping from failures to HTTP answers: every error is JSON `{"error": "..."}`.
//!
//! Client errors carry a message meant for the client. Dependency outages become 503. Anything else
//! is a bug or a surprise: it is logged once, here, and the client gets an opaque message.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use order_domain::FieldError;
use orders_api::ErrorBody;
use pipeline_runtime::eventstore::ClientError;
use pipeline_runtime::orders::LoadError;

/// Seconds a client is asked to wait (`Retry-After`) before trying a 503 again.
pub const RETRY_AFTER_SECS: u32 = 1;

/// The protection space named in `WWW-Authenticate`.
const REALM: &str = "orders";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be understood (malformed JSON, a bad id, a bad query parameter).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no bearer token (`None`), or one that is not valid (what is wrong with it, never
    /// which key or value was expected). Answered with `WWW-Authenticate: Bearer` (RFC 6750).
    #[error("{}", .0.unwrap_or("a bearer token is required (Authorization: Bearer ...)"))]
    Unauthorized(Option<&'static str>),
    /// 403: a valid token that does not allow the request (an order in another customer's name).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the order's state forbids the command.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid; `details` names each field that is wrong.
    #[error("{message}")]
    Invalid {
        message: String,
        details: Vec<FieldError>,
    },
    /// 503: a dependency (the event store, ordersdb) cannot answer now.
    #[error("{0}")]
    Unavailable(String),
    /// 503: too many requests in flight; refused before anything was done.
    #[error("{0}")]
    Overloaded(String),
    /// 500: logged with its cause, answered opaquely.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::Invalid {
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let challenge = match &self {
            ApiError::Unauthorized(None) => Some(format!("Bearer realm=\"{REALM}\"")),
            ApiError::Unauthorized(Some(description)) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{description}\""
            )),
            _ => None,
        };
        let body = match self {
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "internal error");
                ErrorBody::new("internal error")
            }
            ApiError::Invalid { message, details } => ErrorBody {
                details: details.into_iter().map(Into::into).collect(),
                error: message,
            },
            other => ErrorBody::new(other.to_string()),
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Both kinds of 503 pass by themselves: an overload drains, a dependency reconnects.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

impl From<ClientError> for ApiError {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Unavailable(message) => {
                tracing::warn!(error = %message, "event store unavailable");
                ApiError::Unavailable("the event store is unavailable".to_owned())
            }
            other => ApiError::Internal(anyhow::Error::new(other)),
        }
    }
}

/// An order that cannot be read back: the event store's answer as above; stored events the code
/// cannot fold are a bug, not the client's fault.
impl From<LoadError> for ApiError {
    fn from(error: LoadError) -> Self {
        match error {
            LoadError::Store(error) => error.into(),
            unreadable @ LoadError::Unreadable { .. } => {
                ApiError::Internal(anyhow::Error::new(unreadable))
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if pipeline_runtime::db::is_unavailable(&error) {
            tracing::warn!(error = %error, "orders database unavailable");
            ApiError::Unavailable("the orders database is unavailable".to_owned())
        } else {
            ApiError::Internal(anyhow::Error::new(error).context("ordersdb query"))
        }
    }
}
