//! The `EventStore` gRPC service.

use std::collections::HashMap;
use std::time::Duration;

use eventstore_proto as pb;
use pipeline_runtime::tracecontext;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::appender::Appender;
use crate::authz::{Caller, Read};
use crate::error::StoreError;
use crate::model::{EventToStore, Limits, MAX_BATCH_EVENTS, StoredAt, StoredEvent};
use crate::store;

/// Rows read per query by streaming reads.
const PAGE: i64 = 500;
/// `GetEvents` answers at most this many events; longer histories are read with `GetEventsStream`.
const MAX_GET_EVENTS: i64 = 10_000;
/// Following readers look for commits of other event store instances this often.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// A transaction's `created_at` is its start time, so an event can become visible after a later-stamped
/// one. Following readers of every aggregate re-read this far back and skip what they already sent;
/// append transactions are far shorter than this.
const LOOKBACK: time::Duration = time::Duration::seconds(5);

pub struct EventStoreService {
    appender: Appender,
    pool: PgPool,
    limits: Limits,
    commits: watch::Receiver<u64>,
    stop: CancellationToken,
    /// Callers are identified by their client certificate and authorized (`crate::authz`).
    mtls: bool,
}

impl EventStoreService {
    pub fn new(
        appender: Appender,
        pool: PgPool,
        limits: Limits,
        commits: watch::Receiver<u64>,
        stop: CancellationToken,
        mtls: bool,
    ) -> Self {
        Self {
            appender,
            pool,
            limits,
            commits,
            stop,
            mtls,
        }
    }

    /// The caller of `request`, recorded on the server span.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let caller = Caller::of(request, self.mtls)?;
        if let Some(identity) = caller.identity() {
            tracing::Span::current().record("client.identity", identity);
        }
        Ok(caller)
    }
}

#[tonic::async_trait]
impl pb::event_store_server::EventStore for EventStoreService {
    // No span of its own: the server span (`server_span`) carries the event's fields.
    async fn create_event(
        &self,
        request: Request<pb::CreateEventRequest>,
    ) -> Result<Response<pb::CreateEventResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        caller.may_append(request.event.as_ref().map_or("", |e| e.event_type.as_str()))?;
        let mut event = EventToStore::from_request(request, self.limits)?;
        let span = tracing::Span::current();
        span.record("event.id", tracing::field::display(event.event_id));
        span.record("event.type", event.event_type.as_str());
        span.record("aggregate.id", event.aggregate_id.as_str());
        // A client that did not put its trace context into the event gets this request's, so the
        // outbox relay still continues the trace.
        tracecontext::fill_metadata(&span, &mut event.metadata);
        let commit = append_span(1);
        let appended = self
            .appender
            .append(event)
            .instrument(commit.clone())
            .await
            .inspect_err(|err| mark_append_error(&commit, err))?;
        span.record("aggregate.version", appended.version);
        tracing::debug!(
            aggregate.version = appended.version,
            duplicate = appended.duplicate,
            "appended"
        );
        Ok(Response::new(pb::CreateEventResponse {
            is_success: true,
            error: String::new(),
            aggregate_version: appended.version,
            duplicate: appended.duplicate,
        }))
    }

    async fn create_events(
        &self,
        request: Request<pb::CreateEventsRequest>,
    ) -> Result<Response<pb::CreateEventsResponse>, Status> {
        let caller = self.caller(&request)?;
        let requests = request.into_inner().events;
        // Every event's type before any is queued: one refused event refuses the whole call, so a
        // batch never commits in part because of who sent it.
        for request in &requests {
            caller.may_append(request.event.as_ref().map_or("", |e| e.event_type.as_str()))?;
        }
        if requests.is_empty() {
            return Err(Status::invalid_argument(
                "events is empty: send at least one event",
            ));
        }
        if requests.len() > MAX_BATCH_EVENTS {
            return Err(Status::invalid_argument(format!(
                "{} events in one call, more than the limit of {MAX_BATCH_EVENTS}",
                requests.len()
            )));
        }
        let span = tracing::Span::current();
        span.record("batch.size", requests.len());
        let mut outcomes: Vec<Option<pb::AppendOutcome>> = vec![None; requests.len()];
        let mut positions = Vec::with_capacity(requests.len());
        let mut valid = Vec::with_capacity(requests.len());
        for (position, request) in requests.into_iter().enumerate() {
            match EventToStore::from_request(request, self.limits) {
                Ok(mut event) => {
                    tracecontext::fill_metadata(&span, &mut event.metadata);
                    positions.push(position);
                    valid.push(event);
                }
                Err(err) => outcomes[position] = Some(outcome(Err(err))),
            }
        }
        if !valid.is_empty() {
            let commit = append_span(valid.len());
            // Only a refusal of the whole job (queue full, stopping) fails the call: then nothing
            // was appended.
            let appended = self
                .appender
                .append_all(valid)
                .instrument(commit.clone())
                .await
                .inspect_err(|err| mark_append_error(&commit, err))?;
            if let Some(err) = appended.iter().find_map(|o| o.as_ref().err()) {
                mark_append_error(&commit, err);
            }
            for (position, appended) in positions.into_iter().zip(appended) {
                outcomes[position] = Some(outcome(appended));
            }
        }
        let outcomes: Vec<pb::AppendOutcome> = outcomes.into_iter().flatten().collect();
        tracing::debug!(
            appended = outcomes
                .iter()
                .filter(|o| o.code == 0 && !o.duplicate)
                .count(),
            refused = outcomes.iter().filter(|o| o.code != 0).count(),
            "appended a batch"
        );
        Ok(Response::new(pb::CreateEventsResponse { outcomes }))
    }

    #[tracing::instrument(skip_all, fields(event.id, aggregate.id))]
    async fn get_events(
        &self,
        request: Request<pb::GetEventsRequest>,
    ) -> Result<Response<pb::GetEventsResponse>, Status> {
        self.caller(&request)?.may_read(Read::GetEvents)?;
        let request = request.into_inner();
        let events = if !request.event_id.is_empty() {
            let event_id = parse_event_id(&request.event_id)?;
            tracing::Span::current().record("event.id", tracing::field::display(event_id));
            store::event_by_id(&self.pool, event_id)
                .await
                .map_err(StoreError::from_sql)?
                .into_iter()
                .filter(|e| {
                    request.aggregate_id.is_empty() || e.aggregate_id == request.aggregate_id
                })
                .collect()
        } else if !request.aggregate_id.is_empty() {
            tracing::Span::current().record("aggregate.id", request.aggregate_id.as_str());
            check_from_version(request.from_version)?;
            let events = store::aggregate_events(
                &self.pool,
                &request.aggregate_id,
                request.from_version.max(1),
                MAX_GET_EVENTS + 1,
            )
            .await
            .map_err(StoreError::from_sql)?;
            if events.len() > usize::try_from(MAX_GET_EVENTS).unwrap_or(usize::MAX) {
                return Err(Status::out_of_range(format!(
                    "aggregate {} has more than {MAX_GET_EVENTS} events from version {}; read them with GetEventsStream",
                    request.aggregate_id, request.from_version
                )));
            }
            events
        } else {
            return Err(Status::invalid_argument(
                "event_id or aggregate_id is required",
            ));
        };
        Ok(Response::new(pb::GetEventsResponse {
            events: events.into_iter().map(StoredEvent::into_proto).collect(),
        }))
    }

    type GetEventsStreamStream = ReceiverStream<Result<pb::Event, Status>>;

    #[tracing::instrument(skip_all, fields(aggregate.id = %request.get_ref().aggregate_id, follow = request.get_ref().follow))]
    async fn get_events_stream(
        &self,
        request: Request<pb::GetEventsRequest>,
    ) -> Result<Response<Self::GetEventsStreamStream>, Status> {
        self.caller(&request)?.may_read(Read::GetEventsStream)?;
        let request = request.into_inner();
        if !request.event_id.is_empty() {
            return Err(Status::invalid_argument(
                "GetEventsStream reads one aggregate (aggregate_id) or every event (no id); use GetEvents for one event",
            ));
        }
        check_from_version(request.from_version)?;
        if request.aggregate_id.is_empty() && request.from_version != 0 {
            return Err(Status::invalid_argument(
                "from_version needs an aggregate_id",
            ));
        }
        let (sender, receiver) = mpsc::channel(64);
        let errors = sender.clone();
        let reader = StreamReader {
            pool: self.pool.clone(),
            commits: self.commits.clone(),
            stop: self.stop.clone(),
            sender,
        };
        tokio::spawn(async move {
            let result = if request.aggregate_id.is_empty() {
                reader.all(request.follow).await
            } else {
                reader
                    .aggregate(
                        &request.aggregate_id,
                        request.from_version.max(1),
                        request.follow,
                    )
                    .await
            };
            if let Err(Some(status)) = result {
                let _ = errors.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// The CLIENT span of one request's wait for its group commit (which runs elsewhere, for many
/// requests at once).
fn append_span(events: usize) -> tracing::Span {
    tracing::info_span!(
        "append",
        otel.name = "INSERT eventstoredb.events",
        otel.kind = "client",
        db.system = "postgresql",
        db.operation.name = "INSERT",
        db.collection.name = "events",
        db.operation.batch.size = events,
    )
}

/// Marks the append span failed when the database failed it (not for a conflict or a duplicate,
/// which are answers).
fn mark_append_error(span: &tracing::Span, err: &StoreError) {
    if matches!(err, StoreError::Unavailable(_) | StoreError::Internal(_)) {
        tracecontext::mark_error(span, err.to_string());
    }
}

/// The outcome of one event of a `CreateEvents` call (google.rpc.Code values).
fn outcome(result: Result<StoredAt, StoreError>) -> pb::AppendOutcome {
    let refused = |code: tonic::Code, message: String| pb::AppendOutcome {
        code: code as i32,
        message,
        ..Default::default()
    };
    match result {
        Ok(appended) => pb::AppendOutcome {
            code: tonic::Code::Ok as i32,
            message: String::new(),
            aggregate_version: appended.version,
            duplicate: appended.duplicate,
        },
        Err(err @ StoreError::InvalidArgument(_)) => {
            refused(tonic::Code::InvalidArgument, err.to_string())
        }
        Err(err @ StoreError::VersionConflict { .. }) => {
            refused(tonic::Code::FailedPrecondition, err.to_string())
        }
        Err(err @ StoreError::AlreadyExists(_)) => {
            refused(tonic::Code::AlreadyExists, err.to_string())
        }
        Err(
            err @ (StoreError::Unavailable(_)
            | StoreError::Overloaded(_)
            | StoreError::ShuttingDown),
        ) => refused(tonic::Code::Unavailable, err.to_string()),
        // Logged where it happened (`StoreError::from_sql`); the client learns only that it may retry.
        Err(StoreError::Internal(_)) => refused(
            tonic::Code::Unavailable,
            "internal error in the event store; retry with the same event_id".into(),
        ),
    }
}

/// The SERVER span of one gRPC request (OpenTelemetry RPC conventions), a child of the caller's
/// trace context when the request's metadata carries one. Appends record their event on it (and
/// have no handler span of their own).
pub fn server_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", path));
    let span = tracing::info_span!(
        "grpc",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        event.id = tracing::field::Empty,
        event.type = tracing::field::Empty,
        aggregate.id = tracing::field::Empty,
        aggregate.version = tracing::field::Empty,
        batch.size = tracing::field::Empty,
        client.identity = tracing::field::Empty,
    );
    tracecontext::set_parent(&span, &tracecontext::HeaderExtractor(request.headers()));
    span
}

fn parse_event_id(id: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(id)
        .map_err(|_| Status::invalid_argument(format!("event_id {id:?} is not a UUID")))
}

fn check_from_version(from_version: i64) -> Result<(), Status> {
    if from_version < 0 {
        return Err(Status::invalid_argument("from_version must be 0 or more"));
    }
    Ok(())
}

/// Feeds one streaming read. `Err(None)` means "stop quietly" (the client left, or shutdown).
struct StreamReader {
    pool: PgPool,
    commits: watch::Receiver<u64>,
    stop: CancellationToken,
    sender: mpsc::Sender<Result<pb::Event, Status>>,
}

type StreamResult = Result<(), Option<Status>>;

impl StreamReader {
    async fn send(&self, event: StoredEvent) -> StreamResult {
        self.sender
            .send(Ok(event.into_proto()))
            .await
            .map_err(|_| None)
    }

    /// Waits until something may have been committed. False when the stream should end.
    async fn wait_for_commit(&mut self) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = self.sender.closed() => false,
            changed = self.commits.changed() => changed.is_ok(),
            () = tokio::time::sleep(FOLLOW_POLL) => true,
        }
    }

    async fn aggregate(
        mut self,
        aggregate_id: &str,
        from_version: i64,
        follow: bool,
    ) -> StreamResult {
        let mut next = from_version;
        loop {
            let page = store::aggregate_events(&self.pool, aggregate_id, next, PAGE)
                .await
                .map_err(|err| Some(Status::from(StoreError::from_sql(err))))?;
            let full = page.len() >= usize::try_from(PAGE).unwrap_or(usize::MAX);
            for event in page {
                next = event.aggregate_version + 1;
                self.send(event).await?;
            }
            if full {
                continue;
            }
            if !follow || !self.wait_for_commit().await {
                return Ok(());
            }
        }
    }

    async fn all(mut self, follow: bool) -> StreamResult {
        // Events already sent whose created_at is within LOOKBACK of the newest one sent.
        let mut sent: HashMap<Uuid, OffsetDateTime> = HashMap::new();
        let mut newest = OffsetDateTime::UNIX_EPOCH;
        let mut from = (OffsetDateTime::UNIX_EPOCH, Uuid::nil());
        loop {
            let page = store::all_events_after(&self.pool, from, PAGE)
                .await
                .map_err(|err| Some(Status::from(StoreError::from_sql(err))))?;
            let full = page.len() >= usize::try_from(PAGE).unwrap_or(usize::MAX);
            for event in page {
                from = (event.created_at, event.event_id);
                newest = newest.max(event.created_at);
                if sent.insert(event.event_id, event.created_at).is_none() {
                    self.send(event).await?;
                }
            }
            sent.retain(|_, at| *at >= newest - LOOKBACK);
            if full {
                continue;
            }
            if !follow || !self.wait_for_commit().await {
                return Ok(());
            }
            from = (newest - LOOKBACK, Uuid::nil());
        }
    }
}
