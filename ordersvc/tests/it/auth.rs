//! Hostile clients: one test per row of the token table. Each asserts the answer, that nothing was
//! appended and that nothing of another customer came back.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use ordersvc::AppState;
use serde_json::{Value, json};
use testkit::tokens::{self, TokenIssuer, unix_now};
use uuid::Uuid;

use crate::harness::{
    AUDIENCE, Answer, ISSUER, Stack, call_raw, get, post_json, tokens, with_token,
};

/// Customer A, whose order the hostile client is after, and customer B, the hostile client.
const A: &str = "customer-a";
const B: &str = "customer-b";

/// A's order, placed with A's token and projected into the read model as querymodelworker would.
async fn a_order(stack: &Stack) -> Uuid {
    let body = json!({"restaurant_id": "r1",
        "order_items": [{"code": "p1", "name": "Pizza", "unit_price": "12.50", "quantity": 2}]});
    let answer = stack
        .call_raw(with_token(
            post_json("/api/orders", body.to_string()),
            &tokens().customer(A),
        ))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.body["customer_id"], A, "the customer is the token's");
    let order_id: Uuid = answer.body["order_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an order id");
    sqlx::query(
        "INSERT INTO orders (order_id, customer_id, restaurant_id, status, amount, refunded, \
         version, reason, trace_id, created_on, updated_at) \
         VALUES ($1, $2, 'r1', 'Pending', 25.00, false, 1, NULL, '0af7651916cd43dd8448eb211c80319c', now(), now())",
    )
    .bind(order_id)
    .bind(A)
    .execute(&stack.orders_db)
    .await
    .expect("the read model row");
    order_id
}

/// Every protected operation, aimed at `order_id` and its customer A.
fn operations(order_id: Uuid) -> Vec<(&'static str, Request<Body>)> {
    let body = json!({"customer_id": A, "restaurant_id": "r1",
        "order_items": [{"code": "p1", "name": "Pizza", "unit_price": "1.00", "quantity": 1}]});
    vec![
        (
            "POST /api/orders",
            post_json("/api/orders", body.to_string()),
        ),
        (
            "GET /api/orders?customer_id=A",
            get(&format!("/api/orders?customer_id={A}")),
        ),
        (
            "GET /api/orders/{id}",
            get(&format!("/api/orders/{order_id}")),
        ),
        (
            "GET /api/orders/{id}/events",
            get(&format!("/api/orders/{order_id}/events")),
        ),
        (
            "POST /api/orders/{id}/cancel",
            post_json(&format!("/api/orders/{order_id}/cancel"), "{}"),
        ),
    ]
}

/// Nothing of A's came back: neither the order id nor the customer id appears in the answer.
fn assert_nothing_of_a(answer: &Answer, order_id: Uuid, what: &str) {
    let text = answer.body.to_string();
    assert!(
        !text.contains(&order_id.to_string()) && !text.contains(A),
        "{what} leaked A's order: {text}"
    );
}

/// `token` (or none) is refused with 401 on every protected operation, with `description` in
/// the challenge (`None`: no token, no error code), and nothing is appended or leaked.
async fn refused_everywhere(token: Option<&str>, description: Option<&str>) {
    let stack = Stack::start().await;
    let order_id = a_order(&stack).await;
    let before = stack.stored_events().await;
    for (what, request) in operations(order_id) {
        let request = match token {
            Some(token) => with_token(request, token),
            None => request,
        };
        let answer = stack.call_raw(request).await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            answer.body
        );
        let challenge = answer
            .headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(challenge.starts_with("Bearer "), "{what}: {challenge}");
        match description {
            None => assert!(!challenge.contains("error="), "{what}: {challenge}"),
            Some(description) => {
                assert!(
                    challenge.contains(r#"error="invalid_token""#)
                        && challenge.contains(description),
                    "{what}: {challenge}"
                );
                assert!(
                    !challenge.contains(tokens().issuer.kid()),
                    "{what} names the key: {challenge}"
                );
            }
        }
        assert!(answer.body["error"].is_string(), "{what}: {}", answer.body);
        assert_nothing_of_a(&answer, order_id, what);
    }
    assert_eq!(stack.stored_events().await, before, "nothing was appended");
}

/// Claims of a customer B token, changed by `adjust`.
fn claims_of_b(adjust: impl FnOnce(&mut Value)) -> Value {
    let mut claims = tokens()
        .issuer
        .claims(B, None, std::time::Duration::from_secs(3600));
    adjust(&mut claims);
    claims
}

#[tokio::test]
async fn a_request_without_a_token_is_401_with_a_bare_bearer_challenge() {
    refused_everywhere(None, None).await;
}

#[tokio::test]
async fn another_authorization_scheme_counts_as_no_token() {
    let stack = Stack::start().await;
    let before = stack.stored_events().await;
    let request = Request::get("/api/orders?customer_id=c1")
        .header(header::AUTHORIZATION, "Basic YTpi")
        .body(Body::empty())
        .expect("request");
    let answer = stack.call_raw(request).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(stack.stored_events().await, before);
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let token = tokens().issuer.sign(&claims_of_b(|claims| {
        let now = unix_now();
        claims["iat"] = json!(now - 7200);
        claims["nbf"] = json!(now - 7200);
        // Beyond the leeway.
        claims["exp"] = json!(now - ordersvc::LEEWAY_SECS - 60);
    }));
    refused_everywhere(Some(&token), Some("expired")).await;
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let token = tokens().issuer.sign(&claims_of_b(|claims| {
        claims["nbf"] = json!(unix_now() + ordersvc::LEEWAY_SECS + 300);
    }));
    refused_everywhere(Some(&token), Some("not valid yet")).await;
}

#[tokio::test]
async fn a_token_of_another_issuer_is_refused() {
    let token = tokens().issuer.sign(&claims_of_b(|claims| {
        claims["iss"] = json!("https://id.elsewhere.test");
    }));
    refused_everywhere(Some(&token), Some("issuer")).await;
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let token = tokens().issuer.sign(&claims_of_b(|claims| {
        claims["aud"] = json!("another-api");
    }));
    refused_everywhere(Some(&token), Some("audience")).await;
}

#[tokio::test]
async fn a_token_with_a_bad_signature_is_refused() {
    // Signed by another key under the kid of ours.
    let forger = TokenIssuer::generate(ISSUER, AUDIENCE).expect("a key");
    let token = forger.sign_with_header(&tokens().issuer.header(), &claims_of_b(|_| {}));
    refused_everywhere(Some(&token), Some("signature")).await;
}

#[tokio::test]
async fn a_token_with_alg_none_is_refused() {
    let header = json!({"alg": "none", "typ": "at+jwt", "kid": tokens().issuer.kid()});
    let token = tokens::unsigned(&header, &claims_of_b(|_| {}));
    refused_everywhere(Some(&token), Some("not a JWT signed with")).await;
}

#[tokio::test]
async fn a_token_signed_with_hs256_under_the_public_key_is_refused() {
    // The public key as the attacker can fetch it, as the HMAC secret.
    let public = tokens().issuer.jwks().to_string();
    let token = tokens::hs256(
        public.as_bytes(),
        tokens().issuer.kid(),
        &claims_of_b(|_| {}),
    );
    refused_everywhere(Some(&token), Some("algorithm is not accepted")).await;
}

#[tokio::test]
async fn a_token_signed_by_a_key_unknown_after_a_refresh_is_refused() {
    let stranger = TokenIssuer::generate(ISSUER, AUDIENCE).expect("a key");
    let token = stranger.sign(&claims_of_b(|_| {}));
    refused_everywhere(Some(&token), Some("does not know")).await;
}

#[tokio::test]
async fn a_token_without_a_subject_is_refused() {
    let token = tokens().issuer.sign(&claims_of_b(|claims| {
        if let Some(claims) = claims.as_object_mut() {
            claims.remove("sub");
        }
    }));
    refused_everywhere(Some(&token), Some("subject")).await;
}

/// ordersvc's state checking tokens against a key set file (in the returned folder) that holds
/// one key, whose issuer is returned: a test rewrites the file to rotate keys.
fn checking_a_key_set_file(
    stack: &Stack,
) -> (tempfile::TempDir, std::path::PathBuf, TokenIssuer, AppState) {
    let dir = tempfile::tempdir().expect("a folder");
    let jwks = dir.path().join("jwks.json");
    let issuer = TokenIssuer::generate(ISSUER, AUDIENCE).expect("a key");
    issuer.write_jwks(&jwks).expect("the key set");
    let (_, state) = stack.state_with(|config| {
        *config =
            config
                .clone()
                .with_tokens(jwks.to_str().expect("a UTF-8 path"), ISSUER, AUDIENCE);
    });
    (dir, jwks, issuer, state)
}

#[tokio::test]
async fn a_new_key_in_the_key_set_is_found_by_one_refresh_and_no_more_often() {
    let stack = Stack::start().await;
    let (_dir, jwks, old, state) = checking_a_key_set_file(&stack);
    let list = || get("/api/orders?customer_id=c1");
    let answer = call_raw(
        ordersvc::router(state.clone()),
        with_token(list(), &old.customer("c1")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    // The issuer rotates: the new key is published first, then used.
    let new = TokenIssuer::generate(ISSUER, AUDIENCE).expect("a key");
    std::fs::write(&jwks, old.jwks_with(&[&new]).to_string()).expect("the key set");
    let answer = call_raw(
        ordersvc::router(state.clone()),
        with_token(list(), &new.customer("c1")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    // Another key right after: the set was just refreshed, so it is not read again yet.
    let newer = TokenIssuer::generate(ISSUER, AUDIENCE).expect("a key");
    std::fs::write(&jwks, old.jwks_with(&[&new, &newer]).to_string()).expect("the key set");
    let answer = call_raw(
        ordersvc::router(state.clone()),
        with_token(list(), &newer.customer("c1")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
}

/// A token that was accepted once (so ordersvc remembers it) and then sent again with the same
/// header and claims but another signature: the forgery is checked in full and refused.
#[tokio::test]
async fn a_forged_copy_of_an_accepted_token_is_refused() {
    let stack = Stack::start().await;
    let claims = claims_of_b(|_| {});
    let genuine = tokens().issuer.sign(&claims);
    let list = || get(&format!("/api/orders?customer_id={B}"));
    let answer = stack.call_raw(with_token(list(), &genuine)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    let forger = TokenIssuer::generate(ISSUER, AUDIENCE).expect("a key");
    let forged = forger.sign_with_header(&tokens().issuer.header(), &claims);
    assert_ne!(forged, genuine);
    let answer = stack.call_raw(with_token(list(), &forged)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
    // And the genuine one still passes.
    let answer = stack.call_raw(with_token(list(), &genuine)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

/// A token accepted (and remembered) under a key that the issuer then takes out of its key set:
/// once ordersvc has read the new set, the token is refused, though it has not expired.
#[tokio::test]
async fn a_token_accepted_before_its_key_left_the_key_set_is_refused_after_the_refresh() {
    let stack = Stack::start().await;
    let (_dir, jwks, old, state) = checking_a_key_set_file(&stack);
    let list = || get("/api/orders?customer_id=c1");
    let remembered = old.customer("c1");
    for _ in 0..2 {
        let answer = call_raw(
            ordersvc::router(state.clone()),
            with_token(list(), &remembered),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }

    // The old key is withdrawn; a token of the new one makes ordersvc read the set again.
    let new = TokenIssuer::generate(ISSUER, AUDIENCE).expect("a key");
    new.write_jwks(&jwks).expect("the key set");
    let answer = call_raw(
        ordersvc::router(state.clone()),
        with_token(list(), &new.customer("c1")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    let answer = call_raw(
        ordersvc::router(state.clone()),
        with_token(list(), &remembered),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
}

/// What B gets for `request` aimed at A's `order_id`: a 404, worded as for an order that does not
/// exist (the ids aside), with nothing of A's in it.
async fn b_is_answered_as_for_a_missing_order(
    stack: &Stack,
    order_id: Uuid,
    request: impl Fn(Uuid) -> Request<Body>,
) {
    let b = tokens().customer(B);
    let missing = Uuid::new_v4();
    let answer = stack.call_raw(with_token(request(order_id), &b)).await;
    let absent = stack.call_raw(with_token(request(missing), &b)).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
    assert_eq!(
        answer.body["error"]
            .as_str()
            .map(|e| e.replace(&order_id.to_string(), "ID")),
        absent.body["error"]
            .as_str()
            .map(|e| e.replace(&missing.to_string(), "ID")),
        "the same answer as for an order that does not exist"
    );
    assert!(!answer.body.to_string().contains(A), "{}", answer.body);
}

/// A, whose order it is, reads `path` with their own token: what B was refused is there.
async fn a_reads(stack: &Stack, path: &str) {
    let answer = stack
        .call_raw(with_token(get(path), &tokens().customer(A)))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

#[tokio::test]
async fn customer_b_cannot_read_a_s_order_which_answers_as_a_missing_one() {
    let stack = Stack::start().await;
    let order_id = a_order(&stack).await;
    b_is_answered_as_for_a_missing_order(&stack, order_id, |id| get(&format!("/api/orders/{id}")))
        .await;
    // The `min_version` wait as well.
    b_is_answered_as_for_a_missing_order(&stack, order_id, |id| {
        get(&format!("/api/orders/{id}?min_version=1"))
    })
    .await;
    a_reads(&stack, &format!("/api/orders/{order_id}")).await;
}

#[tokio::test]
async fn customer_b_cannot_read_the_history_of_a_s_order() {
    let stack = Stack::start().await;
    let order_id = a_order(&stack).await;
    b_is_answered_as_for_a_missing_order(&stack, order_id, |id| {
        get(&format!("/api/orders/{id}/events"))
    })
    .await;
    a_reads(&stack, &format!("/api/orders/{order_id}/events")).await;
}

#[tokio::test]
async fn customer_b_cannot_cancel_a_s_order_and_nothing_is_appended() {
    let stack = Stack::start().await;
    let order_id = a_order(&stack).await;
    let before = stack.stored_events().await;
    b_is_answered_as_for_a_missing_order(&stack, order_id, |id| {
        post_json(&format!("/api/orders/{id}/cancel"), "{}")
    })
    .await;
    assert_eq!(stack.stored_events().await, before, "nothing was appended");
}

#[tokio::test]
async fn customer_b_lists_only_their_own_orders() {
    let stack = Stack::start().await;
    let order_id = a_order(&stack).await;
    let b = tokens().customer(B);
    for path in [
        format!("/api/orders?customer_id={A}"),
        format!("/api/orders?customer_id={B}"),
    ] {
        let answer = stack.call_raw(with_token(get(&path), &b)).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        assert_eq!(answer.body["orders"], json!([]), "{path}");
        assert_nothing_of_a(&answer, order_id, &path);
    }
    let answer = stack
        .call_raw(with_token(
            get(&format!("/api/orders?customer_id={A}")),
            &tokens().customer(A),
        ))
        .await;
    assert_eq!(answer.body["orders"][0]["order_id"], order_id.to_string());
}

#[tokio::test]
async fn a_customer_posting_in_another_customer_s_name_is_403_and_nothing_is_appended() {
    let stack = Stack::start().await;
    let before = stack.stored_events().await;
    let body = json!({"customer_id": A, "restaurant_id": "r1",
        "order_items": [{"code": "p1", "name": "Pizza", "unit_price": "12.50", "quantity": 2}]});
    let answer = stack
        .call_raw(with_token(
            post_json("/api/orders", body.to_string()),
            &tokens().customer(B),
        ))
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    assert!(answer.body["order_id"].is_null(), "{}", answer.body);
    assert_eq!(stack.stored_events().await, before, "nothing was appended");

    // The reference body with the matching token is placed as before.
    let answer = stack
        .call_raw(with_token(
            post_json("/api/orders", crate::harness::REFERENCE_BODY),
            &tokens().customer("c1"),
        ))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
}

#[tokio::test]
async fn an_operator_reaches_every_order() {
    let stack = Stack::start().await;
    let order_id = a_order(&stack).await;
    let operator = tokens().operator().to_owned();
    let ok = |answer: &Answer, what: &str| {
        assert!(
            answer.status.is_success(),
            "{what}: {} {}",
            answer.status,
            answer.body
        );
    };
    let answer = stack
        .call_raw(with_token(
            get(&format!("/api/orders/{order_id}")),
            &operator,
        ))
        .await;
    ok(&answer, "GET");
    assert_eq!(answer.body["customer_id"], A);
    let answer = stack
        .call_raw(with_token(
            get(&format!("/api/orders/{order_id}/events")),
            &operator,
        ))
        .await;
    ok(&answer, "history");
    let answer = stack
        .call_raw(with_token(
            get(&format!("/api/orders?customer_id={A}")),
            &operator,
        ))
        .await;
    ok(&answer, "list");
    assert_eq!(answer.body["orders"][0]["order_id"], order_id.to_string());
    let before = stack.stored_events().await;
    let answer = stack
        .call_raw(with_token(
            post_json(&format!("/api/orders/{order_id}/cancel"), "{}"),
            &operator,
        ))
        .await;
    ok(&answer, "cancel");
    assert_eq!(
        stack.stored_events().await,
        before + 1,
        "the cancel was appended"
    );
    let body = json!({"customer_id": B, "restaurant_id": "r1",
        "order_items": [{"code": "p1", "name": "Pizza", "unit_price": "12.50", "quantity": 2}]});
    let answer = stack
        .call_raw(with_token(
            post_json("/api/orders", body.to_string()),
            &operator,
        ))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.body["customer_id"], B);
}

#[tokio::test]
async fn probes_and_the_document_need_no_token() {
    let stack = Stack::start().await;
    for path in ["/healthz", "/readyz", "/api/openapi.json"] {
        let answer = stack.call_raw(get(path)).await;
        assert_ne!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[test]
fn the_document_declares_the_bearer_scheme_on_every_protected_operation() {
    let document = ordersvc::openapi_document();
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (path, methods) in document["paths"].as_object().expect("paths") {
        for (method, operation) in methods.as_object().expect("methods") {
            let protected = path.starts_with("/api/orders");
            assert_eq!(
                operation["security"] == json!([{"bearer": []}]),
                protected,
                "{method} {path}"
            );
            assert_eq!(
                operation["responses"]["401"].is_object(),
                protected,
                "{method} {path}"
            );
        }
    }
}
