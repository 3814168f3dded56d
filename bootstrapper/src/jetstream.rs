//! The JetStream streams and the workers' durable consumers.
//!
//! nats-server fills in defaults for every field a request leaves out, so a stored configuration never
//! equals the one we send: only the fields we set are compared.

use anyhow::Context as _;
use async_nats::jetstream::Context;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
use async_nats::jetstream::stream;
use pipeline_runtime::stream::{
    CONSUMERS, ConsumerSpec, STREAM, dead_letter_stream_config, orders_stream_config,
};

use crate::Outcome;

/// Creates or updates both streams, `ORDERS` and `DEADLETTERS` (workers publish to the latter), and
/// returns the most significant outcome: `Created` if one was created, else `Updated` if one was
/// updated, else `Unchanged`. [`ensure_streams`] tells them apart.
pub async fn ensure_stream(js: &Context, replicas: usize) -> anyhow::Result<Outcome> {
    let outcomes = ensure_streams(js, replicas).await?;
    Ok(outcomes
        .into_iter()
        .map(|(_, outcome)| outcome)
        .fold(Outcome::Unchanged, Outcome::max))
}

/// Creates or updates `ORDERS` and `DEADLETTERS`, with the outcome of each, by stream name.
pub async fn ensure_streams(
    js: &Context,
    replicas: usize,
) -> anyhow::Result<Vec<(String, Outcome)>> {
    anyhow::ensure!(
        (1..=5).contains(&replicas),
        "a stream has 1 to 5 replicas, not {replicas}"
    );
    let mut outcomes = Vec::new();
    for desired in [
        orders_stream_config(replicas),
        dead_letter_stream_config(replicas),
    ] {
        let name = desired.name.clone();
        let outcome = ensure_stream_config(js, desired).await?;
        outcomes.push((name, outcome));
    }
    Ok(outcomes)
}

/// Creates the stream `desired.name` with `desired`, or updates the fields of `desired` that differ
/// in the stored configuration (keeping any other field as it is).
#[tracing::instrument(skip_all, fields(stream = %desired.name))]
pub async fn ensure_stream_config(
    js: &Context,
    desired: stream::Config,
) -> anyhow::Result<Outcome> {
    let name = desired.name.clone();
    let (outcome, stored) = match js.get_stream(&name).await {
        Ok(stream) => {
            let info = stream.cached_info();
            let current = info.config.clone();
            check_immutable(&current, &desired)?;
            // A standalone nats-server 2.9 refuses to create a stream with replicas but accepts
            // the update, stores the count and keeps running one copy: refuse it here instead.
            let clustered = info.cluster.as_ref().is_some_and(|c| c.name.is_some());
            anyhow::ensure!(
                desired.num_replicas <= 1 || clustered,
                "stream {name} cannot have {} replicas: NATS is not running as a cluster",
                desired.num_replicas
            );
            if stream_differences(&current, &desired).is_empty() {
                return Ok(Outcome::Unchanged);
            }
            let mut updated = current;
            updated.subjects = desired.subjects.clone();
            updated.discard = desired.discard;
            updated.max_age = desired.max_age;
            updated.num_replicas = desired.num_replicas;
            if !desired.duplicate_window.is_zero() {
                updated.duplicate_window = desired.duplicate_window;
            }
            let info = js
                .update_stream(&updated)
                .await
                .with_context(|| format!("cannot update stream {name}"))?;
            (Outcome::Updated, info.config)
        }
        Err(err) if stream_not_found(&err) => {
            let stream = js
                .create_stream(desired.clone())
                .await
                .with_context(|| format!("cannot create stream {name}"))?;
            (Outcome::Created, stream.cached_info().config.clone())
        }
        Err(err) => return Err(err).with_context(|| format!("cannot look up stream {name}")),
    };
    // Should the server adjust a field we set, every later run would "update" it again: say so now.
    let ignored = stream_differences(&stored, &desired);
    anyhow::ensure!(
        ignored.is_empty(),
        "nats-server did not apply to stream {name}: {}",
        ignored.join(", ")
    );
    Ok(outcome)
}

/// nats-server refuses to change these; say which and how to proceed rather than pass its error on.
fn check_immutable(current: &stream::Config, desired: &stream::Config) -> anyhow::Result<()> {
    let name = &desired.name;
    anyhow::ensure!(
        current.storage == desired.storage,
        "stream {name} has {:?} storage but {:?} is required, and storage cannot be changed: \
         delete the stream (its messages can be republished from the event store) and run again",
        current.storage,
        desired.storage
    );
    anyhow::ensure!(
        current.retention == desired.retention,
        "stream {name} has {:?} retention but {:?} is required, and retention cannot be changed: \
         delete the stream and run again",
        current.retention,
        desired.retention
    );
    Ok(())
}

/// The fields we set that differ, as `field: stored -> wanted`; a zero duplicate window in `desired`
/// means "the server's default".
fn stream_differences(current: &stream::Config, desired: &stream::Config) -> Vec<String> {
    let mut differences = Vec::new();
    let mut compare = |field: &str, stored: String, wanted: String| {
        if stored != wanted {
            differences.push(format!("{field}: {stored} -> {wanted}"));
        }
    };
    compare(
        "subjects",
        format!("{:?}", current.subjects),
        format!("{:?}", desired.subjects),
    );
    compare(
        "discard",
        format!("{:?}", current.discard),
        format!("{:?}", desired.discard),
    );
    compare(
        "max_age",
        format!("{:?}", current.max_age),
        format!("{:?}", desired.max_age),
    );
    compare(
        "num_replicas",
        current.num_replicas.to_string(),
        desired.num_replicas.to_string(),
    );
    if !desired.duplicate_window.is_zero() {
        compare(
            "duplicate_window",
            format!("{:?}", current.duplicate_window),
            format!("{:?}", desired.duplicate_window),
        );
    }
    differences
}

fn stream_not_found(err: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(err.kind(), GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// Creates every durable consumer of [`CONSUMERS`] on `ORDERS`, or updates it where the fields we set
/// differ. The stream must exist.
pub async fn ensure_consumers(js: &Context) -> anyhow::Result<Vec<(String, Outcome)>> {
    let stream = js
        .get_stream_no_info(STREAM)
        .await
        .with_context(|| format!("cannot open stream {STREAM}"))?;
    // On a server that filters on several subjects, a consumer made on 2.9 takes fewer now.
    let client = js.client();
    let mut outcomes = Vec::with_capacity(CONSUMERS.len());
    for spec in CONSUMERS {
        let outcome = ensure_consumer(&stream, spec, &client).await?;
        outcomes.push((spec.durable.to_owned(), outcome));
    }
    Ok(outcomes)
}

#[tracing::instrument(skip_all, fields(consumer = spec.durable))]
async fn ensure_consumer(
    stream: &stream::Stream<()>,
    spec: &ConsumerSpec,
    client: &async_nats::Client,
) -> anyhow::Result<Outcome> {
    let desired = spec.config_for(client);
    let outcome = match stream.consumer_info(spec.durable).await {
        Ok(info) if !consumer_differs(&info.config, &desired) => return Ok(Outcome::Unchanged),
        Ok(_) => Outcome::Updated,
        Err(err) if matches!(err.kind(), ConsumerInfoErrorKind::NotFound) => Outcome::Created,
        Err(err) => {
            return Err(err)
                .with_context(|| format!("cannot look up consumer {} on {STREAM}", spec.durable));
        }
    };
    // One request serves both: creating a durable that exists updates it. `update_consumer` would send
    // the 2.10 "update" action, which nats-server 2.9 ignores anyway. Some fields cannot change on a
    // live consumer (its deliver policy, for one); the server's refusal is passed on.
    let _: consumer::Consumer<pull::Config> =
        stream.create_consumer(desired).await.with_context(|| {
            let verb = if outcome == Outcome::Created {
                "create"
            } else {
                "update"
            };
            format!("cannot {verb} consumer {} on {STREAM}", spec.durable)
        })?;
    Ok(outcome)
}

/// True if a field that [`ConsumerSpec::config`] sets differs.
fn consumer_differs(current: &consumer::Config, desired: &pull::Config) -> bool {
    current.durable_name != desired.durable_name
        || current.filter_subject != desired.filter_subject
        || current.filter_subjects != desired.filter_subjects
        || current.ack_policy != desired.ack_policy
        || current.ack_wait != desired.ack_wait
        || current.max_ack_pending != desired.max_ack_pending
        || current.deliver_policy != desired.deliver_policy
        || current.deliver_subject.is_some()
        // Workers dead-letter by delivery count themselves: the server must not stop redelivering
        // (0 and -1 both mean "no limit").
        || max_deliver_limited(current.max_deliver) != max_deliver_limited(desired.max_deliver)
}

fn max_deliver_limited(max_deliver: i64) -> Option<i64> {
    (max_deliver > 0).then_some(max_deliver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_as_the_server_fills_it_in_is_unchanged() {
        let desired = orders_stream_config(1);
        let stored = stream::Config {
            max_bytes: -1,
            max_messages: -1,
            max_consumers: -1,
            max_messages_per_subject: -1,
            ..desired.clone()
        };
        assert!(stream_differences(&stored, &desired).is_empty());
        let shorter_window = stream::Config {
            duplicate_window: std::time::Duration::from_secs(10),
            ..stored
        };
        assert_eq!(
            stream_differences(&shorter_window, &desired),
            ["duplicate_window: 10s -> 120s"]
        );
    }

    #[test]
    fn the_dead_letter_stream_keeps_the_servers_duplicate_window() {
        let desired = dead_letter_stream_config(1);
        let stored = stream::Config {
            duplicate_window: std::time::Duration::from_secs(120),
            ..desired.clone()
        };
        assert!(stream_differences(&stored, &desired).is_empty());
    }

    #[test]
    fn a_consumer_as_the_server_fills_it_in_is_unchanged() {
        for several_filters in [false, true] {
            for spec in CONSUMERS {
                let desired = spec.config(several_filters);
                let mut stored: consumer::Config =
                    consumer::IntoConsumerConfig::into_consumer_config(&desired);
                stored.max_deliver = -1;
                stored.max_waiting = 512;
                assert!(!consumer_differs(&stored, &desired), "{}", spec.durable);
                stored.max_deliver = 5;
                assert!(consumer_differs(&stored, &desired), "{}", spec.durable);
            }
        }
    }

    #[test]
    fn a_consumer_made_on_2_9_is_updated_on_a_server_that_filters_on_several_subjects() {
        let spec = pipeline_runtime::stream::consumer("paymentworker").expect("defined");
        let made_on_2_9: consumer::Config =
            consumer::IntoConsumerConfig::into_consumer_config(spec.config(false));
        assert!(consumer_differs(&made_on_2_9, &spec.config(true)));
        assert!(!consumer_differs(&made_on_2_9, &spec.config(false)));
    }
}
