//! The spans, kept in memory by trace, with a bound on how many: the oldest traces go first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

/// A span as Zipkin's v2 JSON has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    pub trace_id: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// CLIENT, SERVER, PRODUCER or CONSUMER; none for a local span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Start, microseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// Microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    pub timestamp: u64,
    pub value: String,
}

impl Span {
    /// The local service.
    pub fn service(&self) -> Option<&str> {
        self.local_endpoint
            .as_ref()
            .and_then(|endpoint| endpoint.service_name.as_deref())
    }

    pub fn remote_service(&self) -> Option<&str> {
        self.remote_endpoint
            .as_ref()
            .and_then(|endpoint| endpoint.service_name.as_deref())
    }

    /// Checks the ids and lower-cases them. Service and span names keep the case they were sent
    /// in (Zipkin lower-cases them; the pages read better as sent) and are matched ignoring case.
    pub fn normalized(mut self) -> Result<Span, String> {
        self.trace_id = trace_id(&self.trace_id)
            .ok_or_else(|| format!("traceId {:?} is not 16 or 32 hex digits", self.trace_id))?;
        self.id =
            span_id(&self.id).ok_or_else(|| format!("id {:?} is not 16 hex digits", self.id))?;
        if let Some(parent) = &self.parent_id {
            self.parent_id = Some(
                span_id(parent)
                    .ok_or_else(|| format!("parentId {parent:?} is not 16 hex digits"))?,
            );
        }
        Ok(self)
    }
}

fn hex(raw: &str, lengths: &[usize]) -> Option<String> {
    let lower = raw.to_lowercase();
    (lengths.contains(&lower.len()) && lower.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(lower)
}

/// A trace id as Zipkin takes it: 16 or 32 hex digits, lower-cased.
pub fn trace_id(raw: &str) -> Option<String> {
    hex(raw, &[16, 32])
}

fn span_id(raw: &str) -> Option<String> {
    hex(raw, &[16])
}

/// The spans of one trace.
#[derive(Debug, Default)]
struct Trace {
    spans: Vec<Span>,
    /// When its first span arrived, in arrival order: the eviction order.
    arrival: u64,
}

#[derive(Debug, Default)]
struct Inner {
    traces: HashMap<String, Trace>,
    /// Arrival → trace id, oldest first.
    by_arrival: BTreeMap<u64, String>,
    spans: usize,
    next_arrival: u64,
    evicted_traces: u64,
}

/// The span store; cheap to clone, shared by every request.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    max_spans: usize,
}

/// What a trace query asks for (the parameters of `GET /api/v2/traces`).
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    pub service_name: Option<String>,
    pub span_name: Option<String>,
    /// Microseconds.
    pub min_duration: Option<u64>,
    pub max_duration: Option<u64>,
    /// Milliseconds since the epoch: traces that started at or before.
    pub end_ts: u64,
    /// Milliseconds before `end_ts`.
    pub lookback: u64,
    pub limit: usize,
}

/// How full the store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub traces: usize,
    pub spans: usize,
    pub max_spans: usize,
    pub evicted_traces: u64,
}

impl Store {
    /// A store holding at most `max_spans` spans (at least one).
    pub fn new(max_spans: usize) -> Store {
        Store {
            inner: Arc::default(),
            max_spans: max_spans.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `spans` (already normalized); evicts the oldest traces while over the bound. A trace
    /// alone larger than the bound keeps its first `max_spans` spans.
    pub fn add(&self, spans: Vec<Span>) {
        let mut inner = self.lock();
        for span in spans {
            let arrival = inner.next_arrival;
            let trace_id = span.trace_id.clone();
            let trace = inner.traces.entry(trace_id.clone()).or_default();
            if trace.spans.len() >= self.max_spans {
                continue;
            }
            let new = trace.spans.is_empty();
            if new {
                trace.arrival = arrival;
            }
            trace.spans.push(span);
            if new {
                inner.by_arrival.insert(arrival, trace_id.clone());
                inner.next_arrival += 1;
            }
            inner.spans += 1;
            while inner.spans > self.max_spans {
                let Some((_, oldest)) = inner.by_arrival.pop_first() else {
                    break;
                };
                if oldest == trace_id {
                    // Never evict the trace being added to: put it back and stop.
                    let arrival = inner.traces.get(&oldest).map_or(0, |t| t.arrival);
                    inner.by_arrival.insert(arrival, oldest);
                    break;
                }
                if let Some(gone) = inner.traces.remove(&oldest) {
                    inner.spans -= gone.spans.len();
                    inner.evicted_traces += 1;
                }
            }
        }
    }

    /// The spans of a trace; a 16-digit id also finds a 32-digit trace by its low half.
    pub fn trace(&self, id: &str) -> Option<Vec<Span>> {
        let id = trace_id(id)?;
        let inner = self.lock();
        if let Some(trace) = inner.traces.get(&id) {
            return Some(trace.spans.clone());
        }
        if id.len() == 16 {
            return inner
                .traces
                .iter()
                .find(|(full, _)| full.len() == 32 && full.ends_with(&id))
                .map(|(_, trace)| trace.spans.clone());
        }
        None
    }

    /// The traces the query matches, newest first, at most `limit`.
    pub fn traces(&self, query: &TraceQuery) -> Vec<Vec<Span>> {
        let end = query.end_ts.saturating_mul(1000);
        let begin = query
            .end_ts
            .saturating_sub(query.lookback)
            .saturating_mul(1000);
        let inner = self.lock();
        let mut found: Vec<(u64, &Trace)> = inner
            .traces
            .values()
            .filter_map(|trace| {
                let start = start_of(&trace.spans)?;
                ((begin..=end).contains(&start) && matches(&trace.spans, query))
                    .then_some((start, trace))
            })
            .collect();
        found.sort_by_key(|(start, _)| std::cmp::Reverse(*start));
        found
            .into_iter()
            .take(query.limit)
            .map(|(_, trace)| trace.spans.clone())
            .collect()
    }

    /// Every local service name, sorted.
    pub fn services(&self) -> Vec<String> {
        let inner = self.lock();
        let names: BTreeSet<String> = inner
            .traces
            .values()
            .flat_map(|trace| trace.spans.iter().filter_map(Span::service))
            .map(str::to_lowercase)
            .collect();
        names.into_iter().collect()
    }

    /// The span names of `service`, sorted.
    pub fn span_names(&self, service: &str) -> Vec<String> {
        self.names_in(service, |span| span.name.as_deref())
    }

    /// The remote services `service` called, sorted.
    pub fn remote_services(&self, service: &str) -> Vec<String> {
        self.names_in(service, Span::remote_service)
    }

    /// What `pick` names in the spans of `service`, lower-cased, sorted, once each.
    fn names_in(&self, service: &str, pick: impl Fn(&Span) -> Option<&str>) -> Vec<String> {
        let service = service.to_lowercase();
        let inner = self.lock();
        let names: BTreeSet<String> = inner
            .traces
            .values()
            .flat_map(|trace| trace.spans.iter())
            .filter(|span| same(span.service(), &service))
            .filter_map(pick)
            .map(str::to_lowercase)
            .collect();
        names.into_iter().collect()
    }

    /// Every span, trace by trace in arrival order (for tests and dumps).
    pub fn all_spans(&self) -> Vec<Span> {
        let inner = self.lock();
        inner
            .by_arrival
            .values()
            .filter_map(|id| inner.traces.get(id))
            .flat_map(|trace| trace.spans.iter().cloned())
            .collect()
    }

    pub fn usage(&self) -> Usage {
        let inner = self.lock();
        Usage {
            traces: inner.traces.len(),
            spans: inner.spans,
            max_spans: self.max_spans,
            evicted_traces: inner.evicted_traces,
        }
    }
}

/// The earliest start of the spans, microseconds.
pub fn start_of(spans: &[Span]) -> Option<u64> {
    spans.iter().filter_map(|span| span.timestamp).min()
}

/// From the earliest start to the latest end, microseconds.
pub fn duration_of(spans: &[Span]) -> u64 {
    let start = start_of(spans).unwrap_or(0);
    let end = spans
        .iter()
        .filter_map(|span| Some(span.timestamp? + span.duration.unwrap_or(0)))
        .max()
        .unwrap_or(start);
    end.saturating_sub(start)
}

/// Whether a name is `wanted`, ignoring case.
fn same(name: Option<&str>, wanted: &str) -> bool {
    name.is_some_and(|name| name.eq_ignore_ascii_case(wanted))
}

/// Zipkin's rule: one span of the trace satisfies every criterion given.
fn matches(spans: &[Span], query: &TraceQuery) -> bool {
    spans.iter().any(|span| {
        query
            .service_name
            .as_deref()
            .is_none_or(|s| same(span.service(), s))
            && query
                .span_name
                .as_deref()
                .is_none_or(|n| same(span.name.as_deref(), n))
            && query
                .min_duration
                .is_none_or(|min| span.duration.is_some_and(|d| d >= min))
            && query
                .max_duration
                .is_none_or(|max| span.duration.is_some_and(|d| d <= max))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: &str, id: &str, service: &str, name: &str, ts: u64, dur: u64) -> Span {
        Span {
            trace_id: trace.into(),
            id: id.into(),
            parent_id: None,
            name: Some(name.into()),
            kind: None,
            timestamp: Some(ts),
            duration: Some(dur),
            local_endpoint: Some(Endpoint {
                service_name: Some(service.into()),
                ipv4: None,
                ipv6: None,
                port: None,
            }),
            remote_endpoint: None,
            annotations: Vec::new(),
            tags: BTreeMap::new(),
            debug: None,
            shared: None,
        }
    }

    fn trace_hex(n: u64) -> String {
        format!("{n:032x}")
    }

    fn span_hex(n: u64) -> String {
        format!("{n:016x}")
    }

    #[test]
    fn the_oldest_traces_are_evicted_beyond_the_bound() {
        let store = Store::new(4);
        for t in 1..=3 {
            store.add(vec![
                span(&trace_hex(t), &span_hex(t * 10), "a", "x", t, 1),
                span(&trace_hex(t), &span_hex(t * 10 + 1), "a", "y", t, 1),
            ]);
        }
        // Expected: 6 spans for a bound of 4: the first trace went, the last two stayed whole.
        assert!(store.trace(&trace_hex(1)).is_none());
        assert_eq!(store.trace(&trace_hex(2)).map(|s| s.len()), Some(2));
        assert_eq!(store.trace(&trace_hex(3)).map(|s| s.len()), Some(2));
        let usage = store.usage();
        assert_eq!((usage.spans, usage.traces, usage.evicted_traces), (4, 2, 1));
    }

    #[test]
    fn a_trace_larger_than_the_bound_keeps_its_first_spans() {
        let store = Store::new(2);
        store.add(
            (0..5)
                .map(|i| span(&trace_hex(7), &span_hex(i + 1), "a", "x", i, 1))
                .collect(),
        );
        assert_eq!(store.trace(&trace_hex(7)).map(|s| s.len()), Some(2));
        assert_eq!(store.usage().spans, 2);
    }

    #[test]
    fn queries_match_like_zipkin() {
        let store = Store::new(100);
        store.add(vec![
            span(
                &trace_hex(1),
                &span_hex(1),
                "ordersvc",
                "post /api/orders",
                1_000_000,
                9_000,
            ),
            span(
                &trace_hex(1),
                &span_hex(2),
                "eventstore",
                "append",
                1_001_000,
                2_000,
            ),
            span(
                &trace_hex(2),
                &span_hex(3),
                "reviewworker",
                "process",
                5_000_000,
                100,
            ),
        ]);
        let all = TraceQuery {
            end_ts: 10_000,
            lookback: 10_000,
            limit: 10,
            ..TraceQuery::default()
        };
        // Expected: newest first.
        let found = store.traces(&all);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0][0].trace_id, trace_hex(2));
        let by_service = TraceQuery {
            service_name: Some("EventStore".into()),
            ..all.clone()
        };
        assert_eq!(store.traces(&by_service).len(), 1);
        // Expected: the duration applies to a span of the named service, not to any span.
        let slow_store = TraceQuery {
            min_duration: Some(5_000),
            ..by_service.clone()
        };
        assert!(store.traces(&slow_store).is_empty());
        let window = TraceQuery {
            end_ts: 2_000,
            lookback: 1_500,
            ..all.clone()
        };
        assert_eq!(
            store.traces(&window).len(),
            1,
            "only the trace started at 1 s"
        );
        assert_eq!(store.services(), ["eventstore", "ordersvc", "reviewworker"]);
        assert_eq!(store.span_names("ORDERSVC"), ["post /api/orders"]);
    }

    #[test]
    fn a_short_trace_id_finds_the_low_half_of_a_long_one() {
        let store = Store::new(10);
        let long = format!("{:016x}{:016x}", 0xabc_u64, 0xdef_u64);
        store.add(vec![span(&long, &span_hex(1), "a", "x", 1, 1)]);
        assert!(store.trace(&format!("{:016x}", 0xdef_u64)).is_some());
        assert!(store.trace("not-hex").is_none());
    }

    #[test]
    fn ids_are_checked_and_lower_cased_names_kept_as_sent() {
        let good = span(
            "ABCDEF0123456789",
            "0123456789ABCDEF",
            "OrderSvc",
            "POST",
            1,
            1,
        );
        let good = good.normalized().expect("valid");
        assert_eq!(good.trace_id, "abcdef0123456789");
        assert_eq!(good.id, "0123456789abcdef");
        assert_eq!(good.service(), Some("OrderSvc"));
        assert_eq!(good.name.as_deref(), Some("POST"));
        assert!(
            span("xyz", &span_hex(1), "a", "b", 1, 1)
                .normalized()
                .is_err()
        );
        assert!(
            span(&trace_hex(1), "12", "a", "b", 1, 1)
                .normalized()
                .is_err()
        );
    }
}
