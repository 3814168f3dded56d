//! A nats-server with the pipeline's streams, and dead letters made the way workers make them.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt as _;
use orderctl::Cli;
use pipeline_runtime::{deadletter, stream};
use testkit::NatsServer;
use uuid::Uuid;

pub struct Nats {
    pub server: NatsServer,
    pub js: jetstream::Context,
}

impl Nats {
    /// nats-server with the `ORDERS` and `DEADLETTERS` streams and the workers' consumers.
    pub async fn start() -> Nats {
        testkit::init_tracing();
        let server = NatsServer::start().expect("nats-server starts");
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = jetstream::new(client);
        pipeline_harness::create_streams(&js, true).await;
        Nats { server, js }
    }

    /// Runs `orderctl ARGS` in this process and returns what it printed.
    pub async fn orderctl(&self, args: &[&str]) -> anyhow::Result<String> {
        use clap::Parser as _;
        let mut argv = vec!["orderctl", "--nats-url"];
        let url = self.server.url();
        argv.push(&url);
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv)?;
        let mut out = Vec::new();
        cli.run(&mut out).await?;
        Ok(String::from_utf8(out)?)
    }

    /// Publishes an event on `ORDERS.<event_type>`, takes it from `worker`'s consumer and
    /// dead-letters it as the worker would; returns the event id.
    pub async fn dead_letter(&self, worker: &str, event_type: &str, reason: &str) -> Uuid {
        let event_id = Uuid::new_v4();
        let subject = stream::subject(stream::STREAM, event_type);
        let payload = serde_json::json!({
            "event_id": event_id,
            "event_type": event_type,
            "aggregate_id": Uuid::new_v4().to_string(),
            "aggregate_type": "order",
            "aggregate_version": 1,
            "stream": "ORDERS",
            "event_data": {},
            "metadata": {},
            "created_at": "2024-01-01T00:00:00Z",
        });
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(stream::headers::MSG_ID, event_id.to_string().as_str());
        self.js
            .publish_with_headers(subject.clone(), headers, payload.to_string().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
        let spec = stream::consumer(worker).expect("a worker");
        let consumer: jetstream::consumer::PullConsumer = self
            .js
            .get_stream(stream::STREAM)
            .await
            .expect("stream")
            .get_consumer(spec.durable)
            .await
            .expect("consumer");
        let mut messages = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .expect("fetch");
        // The consumer may hold older messages (published for other workers' letters): pass them.
        let message = loop {
            let message = messages.next().await.expect("a message").expect("no error");
            if message.payload.as_ref() == payload.to_string().as_bytes() {
                break message;
            }
            message.ack().await.expect("acked");
        };
        deadletter::publish(&self.js, worker, &message, 3, reason)
            .await
            .expect("dead-lettered");
        message.ack_with(AckKind::Term).await.expect("terminated");
        event_id
    }

    /// The messages on `ORDERS` with `subject`, payloads as text.
    pub async fn on_subject(&self, subject: &str) -> Vec<String> {
        let mut stream = self.js.get_stream(stream::STREAM).await.expect("stream");
        let state = stream.info().await.expect("info").state.clone();
        let mut found = Vec::new();
        if state.messages == 0 {
            return found;
        }
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(message) = stream.get_raw_message(seq).await
                && message.subject.as_str() == subject
            {
                found.push(String::from_utf8_lossy(&message.payload).into_owned());
            }
        }
        found
    }
}

/// Runs the built `orderctl` binary off the async runtime (the services it talks to may run on it).
pub async fn orderctl_binary(
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_orderctl"))
            .args(args)
            .envs(env)
            .output()
            .expect("orderctl runs")
    })
    .await
    .expect("joins")
}
