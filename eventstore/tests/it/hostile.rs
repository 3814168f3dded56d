//! Hostile input over gRPC: bytes that are no protobuf, messages over the 4 MiB decode limit, huge
//! metadata and a megabyte event id. Each gets an error status, never a panic, the service keeps
//! serving, and nothing is written.

use std::collections::HashMap;

use bytes::{Buf, BufMut};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use uuid::Uuid;

use crate::harness::{Instance, Stack, append, event};

/// Sends and receives raw bytes: whatever is given goes on the wire as the message.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

async fn raw_create_event(instance: &Instance, body: Vec<u8>) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", instance.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connects");
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_encoding_message_size(64 * 1024 * 1024)
        .max_decoding_message_size(64 * 1024 * 1024);
    grpc.ready().await.expect("ready");
    grpc.unary(
        tonic::Request::new(body),
        PathAndQuery::from_static("/eventstore.EventStore/CreateEvent"),
        RawCodec,
    )
    .await
    .expect_err("hostile input is refused")
}

async fn stored_events(stack: &Stack) -> i64 {
    let pool = stack.pool().await;
    let n = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .expect("count");
    pool.close().await;
    n
}

#[tokio::test]
async fn malformed_and_oversized_messages_get_an_error_status_and_write_nothing() {
    let stack = Stack::start().await;
    let instance = Instance::start(stack.config()).await;
    let mut client = instance.client();

    // Not a protobuf: field 1 with wire type 7 (no such type), then garbage.
    let status = raw_create_event(&instance, vec![0x0f, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02]).await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");

    // Over the 4 MiB decode limit.
    let status = raw_create_event(&instance, vec![0u8; 5 * 1024 * 1024]).await;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // Huge metadata map (~3 MiB under the decode limit, over the event size limit).
    let aggregate = Uuid::new_v4().to_string();
    let mut huge = event(&aggregate, "created", serde_json::json!({}));
    huge.metadata = (0..30_000)
        .map(|i| (format!("key-{i}"), "v".repeat(100)))
        .collect::<HashMap<_, _>>();
    let status = append(&mut client, huge, 0).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // A 1 MiB+ event_id.
    let mut long_id = event(&aggregate, "created", serde_json::json!({}));
    long_id.event_id = "e".repeat(1024 * 1024 + 1);
    let status = append(&mut client, long_id, 0).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    assert_eq!(stored_events(&stack).await, 0, "nothing was written");
    // Still serving: a normal append succeeds.
    append(
        &mut client,
        event(&aggregate, "created", serde_json::json!({"n": 1})),
        0,
    )
    .await
    .expect("a normal append succeeds after hostile input");
    assert_eq!(stored_events(&stack).await, 1);
    instance.stop().await;
}
