//! A small client of ordersvc's HTTP API (`/api/orders…`): orderctl's commands and every load
//! (orderctl's, the chaos run's) send through it.

use std::time::Duration;

use orders_api::{
    CancelRequest, Cancelled, CreatedOrder, ErrorBody, ListOrdersQuery, Order, OrderPage,
};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// How long one API request may take. Above ordersvc's `min_version` wait (3 s by default), so a
/// long-poll answers before the client gives up.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request to the API did not give the expected answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API answered with an error status; `message` is its `{"error": ...}`, `retry_after`
    /// its `Retry-After` (in seconds) when it sent one.
    #[error("{message} (HTTP {status})")]
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused or reset, DNS, a body cut short.
    #[error("cannot reach ordersvc: {0}")]
    Network(String),
    /// No answer within [`API_TIMEOUT`].
    #[error("ordersvc did not answer within {API_TIMEOUT:?}")]
    Timeout,
    /// An answer that is not the JSON the contract promises.
    #[error("unexpected answer from ordersvc: {0}")]
    Invalid(String),
}

impl ApiError {
    /// The error's class in a load report: `HTTP 422`, `network`, `timeout`, `invalid answer`.
    pub fn kind(&self) -> String {
        match self {
            ApiError::Status { status, .. } => format!("HTTP {status}"),
            ApiError::Network(_) => "network".to_owned(),
            ApiError::Timeout => "timeout".to_owned(),
            ApiError::Invalid(_) => "invalid answer".to_owned(),
        }
    }

    /// Whether the request may have never reached the API, so that sending it again (with the
    /// same `Idempotency-Key`) is the way to find out.
    pub fn is_transport(&self) -> bool {
        matches!(self, ApiError::Network(_) | ApiError::Timeout)
    }

    /// Whether the same request (with the same `Idempotency-Key`) may succeed later: a transport
    /// error, an overload (429) or a server error (5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Status { status, .. } => *status == 429 || *status >= 500,
            other => other.is_transport(),
        }
    }

    /// How long the API asked to wait before trying again (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn from_reqwest(err: reqwest::Error) -> ApiError {
        if err.is_timeout() {
            return ApiError::Timeout;
        }
        // The innermost cause says what happened ("Connection refused"); reqwest's own message
        // only says that sending failed.
        let mut cause: &dyn std::error::Error = &err;
        while let Some(next) = cause.source() {
            cause = next;
        }
        ApiError::Network(cause.to_string())
    }
}

/// ordersvc at `base` (e.g. `http://127.0.0.1:3000`).
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client that sends no token (an API run with `ORDERSVC_AUTH=none`).
    pub fn new(base: &str) -> anyhow::Result<ApiClient> {
        ApiClient::with_token(base, None)
    }

    /// A client that sends `token` as its bearer token (orderctl's `ORDERCTL_TOKEN`) with every
    /// request.
    pub fn with_token(base: &str, token: Option<&str>) -> anyhow::Result<ApiClient> {
        let base = base.trim_end_matches('/').to_owned();
        anyhow::ensure!(
            base.starts_with("http://") || base.starts_with("https://"),
            "ORDERSVC_URL must be an http:// URL, not {base:?}"
        );
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow::anyhow!("ORDERCTL_TOKEN is not a token (printable ASCII)"))?;
            // Kept out of debug output and HTTP/2 header compression tables.
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .timeout(API_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .default_headers(headers)
            .build()?;
        Ok(ApiClient { base, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /api/orders`: the created order (201). `body` is an [`orders_api::OrderRequest`], or any JSON
    /// a user gave to be sent as it is (`orderctl create --file`).
    pub async fn place(
        &self,
        body: &(impl Serialize + ?Sized),
        idempotency_key: Option<&str>,
    ) -> Result<CreatedOrder, ApiError> {
        let mut request = self
            .http
            .post(format!("{}/api/orders", self.base))
            .json(body);
        if let Some(key) = idempotency_key {
            request = request.header(orders_api::IDEMPOTENCY_KEY, key);
        }
        answer(request.send().await).await
    }

    /// `GET /api/orders/{id}`, waiting on the server side up to its limit for `min_version`.
    pub async fn order(&self, order_id: Uuid, min_version: Option<i64>) -> Result<Order, ApiError> {
        let mut url = format!("{}/api/orders/{order_id}", self.base);
        if let Some(version) = min_version {
            url.push_str(&format!("?min_version={version}"));
        }
        answer(self.http.get(url).send().await).await
    }

    /// `GET /api/orders?customer_id=…`: one page.
    pub async fn list(&self, query: &ListOrdersQuery) -> Result<OrderPage, ApiError> {
        let mut url = format!(
            "{}/api/orders?customer_id={}",
            self.base,
            query_value(&query.customer_id)
        );
        if let Some(limit) = query.limit {
            url.push_str(&format!("&limit={limit}"));
        }
        if let Some(after) = &query.after {
            url.push_str(&format!("&after={}", query_value(after)));
        }
        answer(self.http.get(url).send().await).await
    }

    /// `POST /api/orders/{id}/cancel`, with no body when there is no reason (the API's default).
    pub async fn cancel(
        &self,
        order_id: Uuid,
        reason: Option<&str>,
    ) -> Result<Cancelled, ApiError> {
        let mut request = self
            .http
            .post(format!("{}/api/orders/{order_id}/cancel", self.base));
        if let Some(reason) = reason {
            request = request.json(&CancelRequest {
                reason: Some(reason.to_owned()),
            });
        }
        answer(request.send().await).await
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The body of a 2xx answer as the contract's type, or the API's error.
async fn answer<T: DeserializeOwned>(
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<T, ApiError> {
    let response = sent.map_err(ApiError::from_reqwest)?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.bytes().await.map_err(ApiError::from_reqwest)?;
    if status.is_success() {
        return serde_json::from_slice(&body).map_err(|err| {
            ApiError::Invalid(format!(
                "HTTP {status} with a body that is not the API's: {err}"
            ))
        });
    }
    Err(ApiError::Status {
        status: status.as_u16(),
        message: error_message(status, &body),
        retry_after,
    })
}

/// `{"error": "..."}` as the contract says, or whatever came (a proxy's page), shortened.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    if let Ok(ErrorBody { error, .. }) = serde_json::from_slice::<ErrorBody>(body) {
        return error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return status
            .canonical_reason()
            .unwrap_or("no error message")
            .to_owned();
    }
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_message_is_the_apis_error_field_or_the_text_that_came() {
        assert_eq!(
            error_message(StatusCode::CONFLICT, br#"{"error":"too late to cancel"}"#),
            "too late to cancel"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
        assert_eq!(error_message(StatusCode::NOT_FOUND, b""), "Not Found");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("c1"), "c1");
        assert_eq!(query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn error_kinds_name_the_status_or_the_transport_failure() {
        let status = ApiError::Status {
            status: 422,
            message: "x".into(),
            retry_after: None,
        };
        assert_eq!(status.kind(), "HTTP 422");
        assert!(!status.is_transport());
        assert!(!status.is_retryable());
        let overloaded = ApiError::Status {
            status: 503,
            message: "busy".into(),
            retry_after: Some(Duration::from_secs(1)),
        };
        assert!(overloaded.is_retryable());
        assert_eq!(overloaded.retry_after(), Some(Duration::from_secs(1)));
        assert!(ApiError::Timeout.is_retryable());
        assert_eq!(ApiError::Timeout.kind(), "timeout");
        assert!(ApiError::Network("refused".into()).is_transport());
    }
}
