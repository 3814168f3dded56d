//! `eventstore republish`: makes the `ORDERS` stream whole again from the event store.
//!
//! The event store is the system of record and the stream a copy of it, which a broker can lose:
//! nats-server syncs its files on a timer, so a power loss drops acknowledged messages whose outbox
//! rows the relay already deleted; a lost store folder or a purge by mistake drops them all. This
//! command reads a range of the store in commit order and the `Nats-Msg-Id`s the stream holds for
//! that range, and publishes the events the stream lacks through the relay's
//! [`Publisher`](crate::relay::Publisher): same subject, headers, body and `Nats-Msg-Id`, and each
//! aggregate's versions in order (see [`plan`]).
//!
//! **What counts as missing:** an event of the range whose id the stream does not hold and that has
//! no outbox row (a row means the relay still owes its publish and will make it).
//!
//! **Safe at any time:** sending an event the stream holds is dropped by JetStream within its
//! duplicate window and applied at most once by every consumer after it, so running it twice or
//! while the pipeline runs doubles nothing.
//!
//! **The duplicate window.** JetStream remembers a published `Nats-Msg-Id` for the stream's
//! duplicate window (120 s) even after the message was deleted or purged, and acknowledges the same
//! id again as a duplicate without storing it. Such an ack is reported, holds back the aggregate's
//! later versions, and makes the command fail with advice; `--wait-duplicate-window` waits the
//! window out once and tries again. (A stream whose store folder was lost remembers only what it
//! still holds, so that case is not affected.)

mod check;
mod plan;
mod sql;
mod stream;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use pipeline_runtime::stream::STREAM;
use secrecy::ExposeSecret as _;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::time::Instant;
use uuid::Uuid;

pub use check::{Tail, check_at_start, lost_tail};
pub use plan::{Blocked, PagePlan, plan_page};

use crate::Config;
use crate::relay::{Ack, Publisher};

/// Events read from the store per page (and published per batch of rounds).
const PAGE: i64 = 2000;
/// How much earlier than an event's commit its message may carry the broker's time (the two
/// clocks differ): the stream is read from that much before the range.
const CLOCK_SLACK: Duration = Duration::from_secs(60);
/// Messages whose ids one run reads from the stream, at most (about 40 bytes each in memory).
const MAX_STREAM_IDS: u64 = 50_000_000;
/// Tries of a JetStream API request that timed out.
const API_ATTEMPTS: u32 = 5;
/// A progress line at least this often.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// How far back from the stream's last message to look for a deleted one.
const LAST_MESSAGE_SEARCH: u64 = 1000;

/// `eventstore republish`: publish again the events the `ORDERS` stream lacks.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Compare every event of the store (after a lost or purged stream, once the bootstrapper
    /// recreated it). Default: the events from shortly before the stream's last one (a lost tail).
    #[arg(long, conflicts_with_all = ["from_position", "since"])]
    pub from_start: bool,

    /// Compare from the N-th event of the store in commit order (1 = the oldest).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub from_position: Option<u64>,

    /// Compare the events committed at or after TIME (RFC 3339, e.g. 2025-12-01T10:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time, conflicts_with = "from_position")]
    pub since: Option<OffsetDateTime>,

    /// Without a range: how long before the stream's last event to start comparing. The relay can
    /// publish an event after younger ones (a sweep after an outage): this covers such delays.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = order_domain::parse_duration)]
    pub lookback: Duration,

    /// When JetStream acknowledges republished events as duplicates (it still remembers their ids
    /// from before a delete or purge), wait its duplicate window out once and try them again.
    #[arg(long)]
    pub wait_duplicate_window: bool,

    /// A progress line every N events examined (and every 5 s).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_every: u64,
}

fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|err| format!("{text:?} is not an RFC 3339 time like 2025-12-01T10:00:00Z: {err}"))
}

/// Which part of the store one pass compares.
#[derive(Debug, Clone, Copy)]
enum Range {
    Everything,
    /// The events after this key.
    After(sql::Key),
}

/// What one pass found and did.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    /// The range compared, in words.
    pub range: String,
    /// Messages of the stream read for the comparison.
    pub stream_messages: u64,
    /// Events of the store examined, and their first and last positions (1 = the oldest).
    pub examined: u64,
    pub first_position: Option<u64>,
    pub last_position: Option<u64>,
    pub in_stream: u64,
    /// Still in the outbox: the relay publishes them.
    pub in_outbox: u64,
    /// Events the stream lacked.
    pub missing: u64,
    /// Stored by JetStream, and the positions of the first and last.
    pub sent: u64,
    pub first_sent: Option<u64>,
    pub last_sent: Option<u64>,
    /// Acknowledged as duplicates and not in the stream: JetStream remembers their ids.
    pub duplicates: Vec<Uuid>,
    /// Acknowledged as duplicates because the relay published them while the command ran.
    pub published_meanwhile: u64,
    /// Not acknowledged (timeout, NATS down).
    pub failed: u64,
    /// Held back behind an earlier version of their aggregate still in the outbox.
    pub behind_outbox: u64,
    /// Held back behind an earlier version that was not stored in this pass.
    pub behind_refused: u64,
    /// The stream's duplicate window.
    pub duplicate_window: Duration,
}

impl Pass {
    /// Events the stream lacks that this pass did not put there.
    pub fn left(&self) -> u64 {
        self.duplicates.len() as u64 + self.failed + self.behind_outbox + self.behind_refused
    }
}

/// Every pass of one run (two with `--wait-duplicate-window` after duplicates).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub passes: Vec<Pass>,
}

impl Report {
    /// Whether the stream now holds every event of the range (the relay's own aside).
    pub fn complete(&self) -> bool {
        self.passes.last().is_some_and(|pass| pass.left() == 0)
    }

    pub fn sent(&self) -> u64 {
        self.passes.iter().map(|pass| pass.sent).sum()
    }
}

impl fmt::Display for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let span = |first: Option<u64>, last: Option<u64>| match (first, last) {
            (Some(first), Some(last)) => format!(" (positions {first}..{last})"),
            _ => String::new(),
        };
        writeln!(f, "compared: {}", self.range)?;
        writeln!(
            f,
            "found: {} events in the store{}, {} in the stream ({} messages read), {} still in the outbox (the relay's), {} missing",
            self.examined,
            span(self.first_position, self.last_position),
            self.in_stream,
            self.stream_messages,
            self.in_outbox,
            self.missing
        )?;
        write!(
            f,
            "sent: {} republished{}",
            self.sent,
            span(self.first_sent, self.last_sent)
        )?;
        if self.published_meanwhile > 0 {
            write!(
                f,
                ", {} published by the relay meanwhile",
                self.published_meanwhile
            )?;
        }
        if !self.duplicates.is_empty() {
            write!(
                f,
                "\nnot stored: {} acknowledged as duplicates: JetStream still remembers their ids (a delete or purge less than its {}s duplicate window ago), e.g. {}. \
                 Run again once the window has passed, or with --wait-duplicate-window",
                self.duplicates.len(),
                self.duplicate_window.as_secs(),
                self.duplicates[0]
            )?;
        }
        if self.failed > 0 {
            write!(
                f,
                "\nnot stored: {} publishes failed (no ack); run again",
                self.failed
            )?;
        }
        if self.behind_refused > 0 {
            write!(
                f,
                "\nheld back: {} later versions of those aggregates, so that none overtakes an earlier one",
                self.behind_refused
            )?;
        }
        if self.behind_outbox > 0 {
            write!(
                f,
                "\nheld back: {} events behind an earlier version still in the outbox; run again once the relay published it",
                self.behind_outbox
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, pass) in self.passes.iter().enumerate() {
            if self.passes.len() > 1 {
                writeln!(f, "pass {}:", index + 1)?;
            }
            writeln!(f, "{pass}")?;
        }
        if self.complete() {
            write!(f, "the stream holds every event of the range")
        } else {
            write!(
                f,
                "INCOMPLETE: the stream still lacks events of the range (see above)"
            )
        }
    }
}

/// Runs the command: one pass, and a second after the duplicate window when asked to and the first
/// met duplicates. `progress` gets a line every `--progress-every` events or 5 s.
pub async fn run(
    config: &Config,
    args: &Args,
    progress: &mut dyn FnMut(String),
) -> anyhow::Result<Report> {
    let pool =
        pipeline_runtime::db::lazy_pool(config.database_url.expose_secret(), 2, config.timeout())
            .context("EVENTSTORE_DATABASE_URL")?;
    let nats =
        pipeline_runtime::nats::connect(&config.nats, "eventstore-republish", config.timeout())
            .await?;
    let mut js = jetstream::new(nats.clone());
    js.set_timeout(config.timeout());
    let publisher = Publisher {
        jetstream: js.clone(),
        timeout: config.timeout(),
    };
    let mut report = Report::default();
    let first = pass(&pool, &js, &publisher, args, progress).await?;
    let wait = args.wait_duplicate_window && !first.duplicates.is_empty();
    let window = first.duplicate_window;
    report.passes.push(first);
    if wait {
        // Ids are forgotten one window after their first publish, which was before now: one
        // window from now is enough, and the second pass is the last (no loop).
        let wait = window + Duration::from_secs(1);
        progress(format!(
            "waiting {}s for JetStream's duplicate window to pass, then trying again",
            wait.as_secs()
        ));
        tokio::time::sleep(wait).await;
        report
            .passes
            .push(pass(&pool, &js, &publisher, args, progress).await?);
    }
    if let Err(err) = nats.flush().await {
        tracing::debug!(error = %err, "NATS flush at the end");
    }
    pool.close().await;
    Ok(report)
}

/// The stream and its state. A JetStream API request that times out is tried again a few times:
/// seen on nats-server 2.9 for some seconds after a purge, while the pipeline runs.
async fn stream_and_state(
    js: &jetstream::Context,
) -> anyhow::Result<(jetstream::stream::Stream, jetstream::stream::Info)> {
    let mut attempt = 1;
    loop {
        let found = async {
            let mut orders = stream::orders(js).await?.with_context(|| {
                format!(
                    "stream {STREAM} does not exist: run the bootstrapper (it creates the streams and \
                     the consumers), then this command with --from-start"
                )
            })?;
            let info = orders
                .info()
                .await
                .with_context(|| format!("cannot read the state of stream {STREAM}"))?
                .clone();
            anyhow::Ok((orders, info))
        }
        .await;
        match found {
            Err(err) if attempt < API_ATTEMPTS && format!("{err:#}").contains("timed out") => {
                tracing::warn!(attempt, error = %format!("{err:#}"), "JetStream did not answer; trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// Finds where the range starts and describes it.
async fn resolve_range(
    pool: &PgPool,
    orders: &jetstream::stream::Stream,
    info: &jetstream::stream::Info,
    args: &Args,
) -> anyhow::Result<(Range, String)> {
    if args.from_start {
        return Ok((Range::Everything, "every event of the store".into()));
    }
    if let Some(position) = args.from_position {
        if position <= 1 {
            return Ok((Range::Everything, "from position 1".into()));
        }
        let before = sql::at_position(pool, position - 1)
            .await
            .context("reading the event store")?
            .with_context(|| format!("the store holds fewer than {position} events"))?;
        return Ok((Range::After(before), format!("from position {position}")));
    }
    if let Some(since) = args.since {
        return Ok((
            Range::After((since, Uuid::nil())),
            format!("the events committed since {since}"),
        ));
    }
    if info.state.messages == 0 {
        return Ok((
            Range::Everything,
            format!("every event of the store (stream {STREAM} is empty)"),
        ));
    }
    let (sequence, id) = last_event_id(orders, info).await?;
    let event = crate::store::event_by_id(pool, id)
        .await
        .context("reading the event store")?
        .with_context(|| {
            format!(
                "the stream's last event {id} (sequence {sequence}) is not in this event store: \
                 check EVENTSTORE_DATABASE_URL and NATS_URL, or give a range (--since, --from-start)"
            )
        })?;
    let lookback = time::Duration::try_from(args.lookback).unwrap_or(time::Duration::ZERO);
    Ok((
        Range::After((event.created_at - lookback, Uuid::nil())),
        format!(
            "from {}s before the stream's last event {id} (sequence {sequence}, committed {})",
            args.lookback.as_secs(),
            event.created_at
        ),
    ))
}

/// The sequence and event id of the stream's last message (skipping deleted ones).
async fn last_event_id(
    orders: &jetstream::stream::Stream,
    info: &jetstream::stream::Info,
) -> anyhow::Result<(u64, Uuid)> {
    let last = info.state.last_sequence;
    let first = info
        .state
        .first_sequence
        .max(last.saturating_sub(LAST_MESSAGE_SEARCH));
    for sequence in (first..=last).rev() {
        if let Ok(message) = orders.get_raw_message(sequence).await {
            return stream::event_id(Some(&message.headers))
                .map(|id| (sequence, id))
                .with_context(|| {
                    format!("message {sequence} of {STREAM} has no event id in its Nats-Msg-Id")
                });
        }
    }
    anyhow::bail!(
        "found no message in the last {LAST_MESSAGE_SEARCH} sequences of {STREAM}: give a range (--since, --from-start)"
    )
}

/// One comparison of the range with the stream, publishing what it lacks.
async fn pass(
    pool: &PgPool,
    js: &jetstream::Context,
    publisher: &Publisher,
    args: &Args,
    progress: &mut dyn FnMut(String),
) -> anyhow::Result<Pass> {
    let (orders, info) = stream_and_state(js).await?;
    // The store's end first, then the stream: an event committed after this is the relay's, and
    // an event the relay publishes while we read is either in the ids read or found in the tail
    // read after the publishes (see `published_meanwhile`).
    let Some(end) = sql::newest(pool).await.context("reading the event store")? else {
        return Ok(Pass {
            range: "nothing: the event store is empty".into(),
            duplicate_window: info.config.duplicate_window,
            ..Pass::default()
        });
    };
    let (range, description) = resolve_range(pool, &orders, &info, args).await?;
    let last_sequence = info.state.last_sequence;
    let (from, mut position) = match range {
        Range::Everything => (DeliverPolicy::All, 0),
        Range::After(key) => (
            DeliverPolicy::ByStartTime {
                start_time: key.0 - CLOCK_SLACK,
            },
            sql::count_up_to(pool, key)
                .await
                .context("reading the event store")?,
        ),
    };
    let stream_ids = stream::msg_ids(&orders, from, last_sequence, MAX_STREAM_IDS).await?;
    anyhow::ensure!(
        !stream_ids.truncated,
        "the range holds more than {MAX_STREAM_IDS} messages of {STREAM}: give a shorter one (--since, --from-position)"
    );
    if stream_ids.foreign > 0 {
        tracing::warn!(
            messages = stream_ids.foreign,
            "messages of {STREAM} without an event id in Nats-Msg-Id"
        );
    }
    let mut result = Pass {
        range: description,
        stream_messages: stream_ids.messages,
        duplicate_window: info.config.duplicate_window,
        ..Pass::default()
    };
    progress(format!(
        "comparing {}: {} messages of {STREAM} read",
        result.range, stream_ids.messages
    ));

    let mut after = match range {
        Range::Everything => (OffsetDateTime::UNIX_EPOCH, Uuid::nil()),
        Range::After(key) => key,
    };
    let mut blocked: HashMap<String, Blocked> = HashMap::new();
    let mut duplicates: Vec<Uuid> = Vec::new();
    let mut next_line_at = args.progress_every;
    let mut next_line_time = Instant::now() + PROGRESS_INTERVAL;
    loop {
        let mut page =
            pipeline_runtime::db::retry(|| crate::store::all_events_after(pool, after, PAGE))
                .await
                .context("reading the event store")?;
        page.retain(|event| (event.created_at, event.event_id) <= end);
        let Some(last) = page.last() else {
            break;
        };
        after = (last.created_at, last.event_id);
        let positions: HashMap<Uuid, u64> = page
            .iter()
            .enumerate()
            .map(|(index, event)| (event.event_id, position + index as u64 + 1))
            .collect();
        result.first_position.get_or_insert(position + 1);
        position += page.len() as u64;
        result.last_position = Some(position);
        result.examined += page.len() as u64;
        let unseen: Vec<Uuid> = page
            .iter()
            .map(|event| event.event_id)
            .filter(|id| !stream_ids.ids.contains(id))
            .collect();
        let in_outbox = pipeline_runtime::db::retry(|| sql::in_outbox(pool, &unseen))
            .await
            .context("reading the outbox")?;

        let plan = plan_page(page, &stream_ids.ids, &in_outbox, &mut blocked);
        result.in_stream += plan.in_stream;
        result.in_outbox += plan.in_outbox;
        result.missing += (plan.to_send() + plan.held_back.len()) as u64;
        for (_, reason) in &plan.held_back {
            match reason {
                Blocked::Outbox => result.behind_outbox += 1,
                Blocked::NotAccepted => result.behind_refused += 1,
            }
        }
        for ((id, aggregate, _), ack) in publisher
            .publish_chains(plan.chains, |ack| ack == Ack::Stored)
            .await
        {
            match ack {
                Ack::Stored => {
                    result.sent += 1;
                    if let Some(&at) = positions.get(&id) {
                        result.first_sent = Some(result.first_sent.map_or(at, |f| f.min(at)));
                        result.last_sent = Some(result.last_sent.map_or(at, |l| l.max(at)));
                    }
                    continue;
                }
                Ack::Duplicate => duplicates.push(id),
                Ack::Failed => result.failed += 1,
                Ack::NotSent => result.behind_refused += 1,
            }
            blocked.insert(aggregate, Blocked::NotAccepted);
        }
        if result.examined >= next_line_at || Instant::now() >= next_line_time {
            next_line_at = result.examined + args.progress_every;
            next_line_time = Instant::now() + PROGRESS_INTERVAL;
            progress(format!(
                "examined {} events (up to position {position}), {} missing, {} republished",
                result.examined, result.missing, result.sent
            ));
        }
    }

    if !duplicates.is_empty() {
        // A duplicate ack either means JetStream remembers an id it no longer holds, or that the
        // relay published the event after we read the stream: the tail since then tells them apart.
        let tail = stream::msg_ids(
            &orders,
            DeliverPolicy::ByStartSequence {
                start_sequence: last_sequence + 1,
            },
            u64::MAX,
            MAX_STREAM_IDS,
        )
        .await?;
        let (meanwhile, remembered): (Vec<Uuid>, Vec<Uuid>) =
            duplicates.into_iter().partition(|id| tail.ids.contains(id));
        result.published_meanwhile = meanwhile.len() as u64;
        result.duplicates = remembered;
    }
    Ok(result)
}

/// The subcommand as the binary runs it: progress and the report go to `say`; exit 1 when the
/// stream still lacks events of the range or the command could not run.
pub async fn main(
    config: &Config,
    args: &Args,
    mut say: impl FnMut(String),
) -> std::process::ExitCode {
    match run(config, args, &mut say).await {
        Ok(report) => {
            say(report.to_string());
            if report.complete() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(err) => {
            tracing::error!("republish failed: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
