//! Reads: by aggregate, by id, from a version, streaming, following.

use std::time::Duration;

use eventstore_proto::GetEventsRequest;
use serde_json::json;
use tokio_stream::StreamExt as _;
use tonic::Code;
use uuid::Uuid;

use crate::harness::{Stack, append, append_chain, event};

#[tokio::test]
async fn appended_events_read_back_in_version_order_with_their_metadata() {
    let stack = Stack::start().await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    let aggregate = Uuid::new_v4().to_string();
    let mut sent = Vec::new();
    for (version, kind) in ["created", "paymentdebited", "approved"]
        .into_iter()
        .enumerate()
    {
        let e = event(
            &aggregate,
            kind,
            json!({"order_id": aggregate, "step": version}),
        );
        let version = i64::try_from(version).expect("small");
        let response = append(&mut client, e.clone(), version)
            .await
            .expect("append");
        assert_eq!(response.aggregate_version, version + 1);
        sent.push(e);
    }

    let events = client
        .get_events(GetEventsRequest {
            aggregate_id: aggregate.clone(),
            ..Default::default()
        })
        .await
        .expect("read")
        .into_inner()
        .events;
    assert_eq!(events.len(), 3);
    for (i, (got, want)) in events.iter().zip(&sent).enumerate() {
        assert_eq!(got.event_id, want.event_id);
        assert_eq!(got.event_type, want.event_type);
        assert_eq!(got.aggregate_version, i64::try_from(i).expect("small") + 1);
        let got_data: serde_json::Value = serde_json::from_str(&got.event_data).expect("JSON");
        let want_data: serde_json::Value = serde_json::from_str(&want.event_data).expect("JSON");
        assert_eq!(got_data, want_data);
        assert_eq!(got.metadata, want.metadata);
        assert!(got.created_at.is_some());
    }

    let from_two = client
        .get_events(GetEventsRequest {
            aggregate_id: aggregate.clone(),
            from_version: 2,
            ..Default::default()
        })
        .await
        .expect("read")
        .into_inner()
        .events;
    assert_eq!(
        from_two
            .iter()
            .map(|e| e.aggregate_version)
            .collect::<Vec<_>>(),
        [2, 3]
    );

    let by_id = client
        .get_events(GetEventsRequest {
            event_id: sent[1].event_id.clone(),
            ..Default::default()
        })
        .await
        .expect("read")
        .into_inner()
        .events;
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].aggregate_version, 2);

    let streamed: Vec<_> = client
        .get_events_stream(GetEventsRequest {
            aggregate_id: aggregate.clone(),
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("every item");
    assert_eq!(
        streamed, events,
        "the stream carries what GetEvents answers"
    );
}

#[tokio::test]
async fn unknown_ids_read_as_empty_and_garbage_ids_are_invalid() {
    let stack = Stack::start().await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    let none = client
        .get_events(GetEventsRequest {
            aggregate_id: Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .expect("read")
        .into_inner()
        .events;
    assert!(none.is_empty());
    let none = client
        .get_events(GetEventsRequest {
            event_id: Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .expect("read")
        .into_inner()
        .events;
    assert!(none.is_empty());
    for bad in [
        GetEventsRequest {
            event_id: "not-a-uuid".into(),
            ..Default::default()
        },
        GetEventsRequest::default(),
        GetEventsRequest {
            aggregate_id: "a".into(),
            from_version: -1,
            ..Default::default()
        },
    ] {
        let status = client.get_events(bad).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}

#[tokio::test]
async fn a_stream_of_every_event_pages_through_all_of_them_and_follows_new_ones() {
    let stack = Stack::start().await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    // More than one page (500 rows) in all.
    let mut aggregates = Vec::new();
    for _ in 0..6 {
        aggregates.push(append_chain(&mut client, 100).await);
    }

    let mut stream = client
        .get_events_stream(GetEventsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 600 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("history arrives")
            .expect("stream open")
            .expect("event");
        assert!(seen.insert(event.event_id), "no event is sent twice");
    }

    // Appended after the reader caught up: followed.
    let late = event(&aggregates[0], "approved", json!({}));
    append(&mut client, late.clone(), 100)
        .await
        .expect("append");
    let followed = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the new event is followed")
        .expect("stream open")
        .expect("event");
    assert_eq!(followed.event_id, late.event_id);
    assert_eq!(followed.aggregate_version, 101);
}

#[tokio::test]
async fn a_followed_aggregate_stream_sends_events_from_the_asked_version() {
    let stack = Stack::start().await;
    let instance = stack.instance().await;
    let mut client = instance.client();
    let aggregate = append_chain(&mut client, 3).await;
    let mut stream = client
        .get_events_stream(GetEventsRequest {
            aggregate_id: aggregate.clone(),
            from_version: 3,
            follow: true,
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner();
    let third = stream.next().await.expect("open").expect("event");
    assert_eq!(third.aggregate_version, 3);
    append(&mut client, event(&aggregate, "approved", json!({})), 3)
        .await
        .expect("append");
    let fourth = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("followed")
        .expect("open")
        .expect("event");
    assert_eq!(fourth.aggregate_version, 4);
}
