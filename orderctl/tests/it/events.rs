//! `orderctl events ORDER_ID` against a real event store.

use std::collections::BTreeMap;

use order_domain::{AGGREGATE_TYPE, Approved, OrderEvent};
use pipeline_harness::Stack;
use pipeline_runtime::eventstore::NewEvent;
use uuid::Uuid;

use crate::harness::orderctl_binary;

#[tokio::test]
async fn events_prints_an_orders_history_in_version_order() {
    let stack = Stack::start().await;
    let eventstore_url = stack.eventstore_url.clone();

    let order_id = Uuid::new_v4();
    // The store does not check the domain's rules: two events are enough for a history.
    for (version, event_type) in [(0, "created"), (1, "approved")] {
        let event = OrderEvent::Approved(Approved { order_id });
        stack
            .store
            .append(
                NewEvent {
                    event_id: Uuid::new_v4(),
                    event_type: event_type.to_owned(),
                    aggregate_id: order_id.to_string(),
                    aggregate_type: AGGREGATE_TYPE.to_owned(),
                    data: event.to_json(),
                    metadata: BTreeMap::new(),
                },
                version,
            )
            .await
            .expect("appended");
    }

    let output = orderctl_binary(
        vec![
            "events".into(),
            order_id.to_string(),
            "--eventstore-url".into(),
            eventstore_url.clone(),
        ],
        vec![],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].trim_start().starts_with("1 ") && lines[0].contains("created"));
    assert!(lines[1].trim_start().starts_with("2 ") && lines[1].contains("approved"));

    let unknown = orderctl_binary(
        vec!["events".into(), Uuid::new_v4().to_string()],
        vec![("EVENTSTORE_URL", eventstore_url.clone())],
    )
    .await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("has no events"));
}
