//! The OpenAPI document tells the truth about the router.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use ordersvc::{AppState, openapi_document, router};
use uuid::Uuid;

use crate::harness::{REFERENCE_BODY, call};

/// ordersvc with both dependencies unreachable: every operation still exists and answers.
fn app() -> axum::Router {
    let mut config = crate::harness::config(
        "http://127.0.0.1:1",
        "postgresql://root@127.0.0.1:1/ordersdb?sslmode=disable",
    );
    config.timeout_ms = 300;
    router(AppState::new(&config).expect("state"))
}

/// Required query parameters of an operation, filled with a plain value.
fn required_query(method: &str, path: &str) -> String {
    let document = openapi_document();
    let parameters = &document["paths"][path][method.to_lowercase()]["parameters"];
    let names: Vec<String> = parameters
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == "query" && p["required"] == true)
        .filter_map(|p| p["name"].as_str().map(|name| format!("{name}=x")))
        .collect();
    if names.is_empty() {
        String::new()
    } else {
        format!("?{}", names.join("&"))
    }
}

fn documented() -> BTreeSet<(String, String)> {
    let document = openapi_document();
    let mut operations = BTreeSet::new();
    for (path, methods) in document["paths"].as_object().expect("paths") {
        for (method, operation) in methods.as_object().expect("methods") {
            assert!(
                operation["responses"].is_object(),
                "{method} {path} has responses"
            );
            operations.insert((method.to_uppercase(), path.clone()));
        }
    }
    operations
}

/// The API's operations: what the router must serve and the document must list.
const OPERATIONS: [(&str, &str); 8] = [
    ("POST", "/api/orders"),
    ("GET", "/api/orders"),
    ("GET", "/api/orders/{id}"),
    ("GET", "/api/orders/{id}/events"),
    ("POST", "/api/orders/{id}/cancel"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/api/openapi.json"),
];

#[tokio::test]
async fn every_route_is_documented_and_every_documented_operation_answers() {
    testkit::init_tracing();
    let operations: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(
        documented(),
        operations,
        "the document lists exactly the API's operations"
    );

    let served = call(
        app(),
        Request::get("/api/openapi.json")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.body, openapi_document());
    assert_eq!(served.body["openapi"], "3.1.0");

    // The router serves each of them (the routes the document was generated from)...
    let id = Uuid::new_v4().to_string();
    for (method, path) in operations {
        let uri = path.replace("{id}", &id) + &required_query(&method, &path);
        let request = if method == "POST" && path == "/api/orders" {
            Request::post(&uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(REFERENCE_BODY))
        } else {
            Request::builder()
                .method(method.as_str())
                .uri(&uri)
                .body(Body::empty())
        }
        .expect("request");
        let answer = call(app(), request).await;
        assert!(
            answer.status != StatusCode::NOT_FOUND
                && answer.status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} answered {}",
            answer.status
        );
        // Every answer is JSON, and a dependency outage is a 503 rather than a 500.
        assert!(
            answer.body.is_object() || answer.body.is_array(),
            "{method} {path}"
        );
        assert_ne!(
            answer.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{method} {path}: {}",
            answer.body
        );
        if path != "/healthz" && path != "/api/openapi.json" {
            assert_eq!(
                answer.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{method} {path}: {}",
                answer.body
            );
        }
    }

    // What is not documented is not routed: other methods 405, other paths 404, both JSON.
    for (method, path) in documented() {
        let other = if method == "GET" {
            Method::DELETE
        } else {
            Method::PUT
        };
        let uri = path.replace("{id}", &id);
        let answer = call(
            app(),
            Request::builder()
                .method(other)
                .uri(&uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{uri}");
        assert!(answer.body["error"].is_string());
    }
    let answer = call(
        app(),
        Request::get("/api/nothing")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(answer.body["error"].is_string());
}
