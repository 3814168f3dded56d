use serde_json::{Value, json};
use testkit::Zipkin;

#[tokio::test]
async fn the_zipkin_receiver_keeps_posted_spans_answers_like_zipkin_and_can_go_away() {
    let mut zipkin = Zipkin::start().expect("receiver starts");
    let http = reqwest::Client::new();
    // Now: `/api/v2/traces` looks back one day, as Zipkin does.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros();
    let span = |id: &str, service: &str| {
        json!({"traceId": "0af7651916cd43dd8448eb211c80319c", "id": id, "name": "x",
               "timestamp": u64::try_from(now).expect("micros"), "localEndpoint": {"serviceName": service}})
    };
    let posted = http
        .post(zipkin.endpoint())
        .json(&json!([
            span("b7ad6b7169203331", "ordersvc"),
            span("b7ad6b7169203332", "eventstore")
        ]))
        .send()
        .await
        .expect("POST answers");
    assert_eq!(
        posted.status().as_u16(),
        202,
        "spans are accepted like Zipkin does"
    );
    assert_eq!(zipkin.spans().len(), 2);

    let get = |path: String| {
        let http = http.clone();
        async move {
            let response = http.get(path).send().await.expect("GET answers");
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let base = zipkin.base_url();
    let (status, trace) = get(format!(
        "{base}/api/v2/trace/0af7651916cd43dd8448eb211c80319c"
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        trace.as_array().map(Vec::len),
        Some(2),
        "both spans of the trace"
    );
    let (status, _) = get(format!(
        "{base}/api/v2/trace/00000000000000000000000000000001"
    ))
    .await;
    assert_eq!(status, 404, "an unknown trace is not found");
    let (_, traces) = get(format!("{base}/api/v2/traces?serviceName=eventstore")).await;
    assert_eq!(
        traces.as_array().map(Vec::len),
        Some(1),
        "one trace involves eventstore"
    );
    let (_, services) = get(format!("{base}/api/v2/services")).await;
    assert_eq!(services, json!(["eventstore", "ordersvc"]));

    zipkin.stop();
    assert!(
        http.post(zipkin.endpoint())
            .json(&json!([]))
            .send()
            .await
            .is_err(),
        "a stopped receiver refuses connections"
    );
    assert_eq!(zipkin.spans().len(), 2, "what arrived stays readable");
}
