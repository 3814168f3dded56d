//! Waiting on a JetStream consumer instead of sleeping: "nothing else happened" is only true once
//! the thing that could have caused it was delivered and acknowledged.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};

/// Waits until durable `consumer` of `stream` is idle past stream sequence `seen`: it delivered the
/// message at `seen` (its delivered and acked stream sequences reached it), nothing it delivered is
/// still unacknowledged, and nothing on its subjects waits to be delivered. Returns the consumer's
/// info at that moment; panics with the last info after `patience`.
///
/// Pass the sequence of the message the test is about (the `sequence` of its publish ack, e.g. a
/// duplicate it published), so that a message the consumer never received (a subject outside its
/// filter, a worker that is not running) fails the wait instead of passing it; `0` only asks for
/// idleness as of now. A consumer that acknowledges only after the message's effect committed has
/// then committed every effect of everything up to `seen`.
pub async fn wait_consumer_idle(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    seen: u64,
    patience: Duration,
) -> consumer::Info {
    let deadline = tokio::time::Instant::now() + patience;
    let mut last: Option<consumer::Info> = None;
    loop {
        // Asked fresh each turn: num_pending counts what the stream holds at the time of the
        // answer, so a message stored before this call shows as pending until it is delivered.
        let info = match js.get_stream(stream).await {
            Ok(stream) => stream.consumer_info(consumer).await.ok(),
            Err(_) => None,
        };
        if let Some(info) = info {
            if is_idle_past(&info, seen) {
                return info;
            }
            last = Some(info);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumer {consumer} of {stream} is not idle past stream sequence {seen} after \
             {patience:?} (delivered, acked and nothing pending): {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `info` shows the message at stream sequence `seen` delivered and acked, nothing else
/// unacked and nothing pending.
pub fn is_idle_past(info: &consumer::Info, seen: u64) -> bool {
    info.num_pending == 0
        && info.num_ack_pending == 0
        && info.delivered.stream_sequence >= seen
        && info.ack_floor.stream_sequence >= seen
}
