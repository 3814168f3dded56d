//! `orderctl trace ORDER_ID`: the order's trace from Zipkin as an indented timeline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::time::Duration;

use serde::Deserialize;
use uuid::Uuid;

use crate::Endpoints;

/// Print the order's trace (every service's spans, from the POST to the last event) from Zipkin.
#[derive(Debug, clap::Args)]
pub struct Trace {
    /// The order's id (a UUID).
    pub order_id: Uuid,
    /// Zipkin's base URL (`ZIPKIN_URL`).
    #[arg(long, env = "ZIPKIN_URL", default_value = "http://127.0.0.1:9411")]
    pub zipkin_url: String,
}

/// A span as Zipkin's v2 API returns it (only what the timeline shows).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    pub trace_id: String,
    pub id: String,
    pub parent_id: Option<String>,
    pub name: Option<String>,
    pub kind: Option<String>,
    /// Start, microseconds since the epoch.
    pub timestamp: Option<u64>,
    /// Microseconds.
    pub duration: Option<u64>,
    pub local_endpoint: Option<Endpoint>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub service_name: Option<String>,
}

impl Span {
    fn service(&self) -> &str {
        self.local_endpoint
            .as_ref()
            .and_then(|endpoint| endpoint.service_name.as_deref())
            .unwrap_or("?")
    }
}

fn millis(micros: u64) -> String {
    format!("{}.{:03}", micros / 1000, micros % 1000)
}

/// The trace as a timeline: one line per span, children under their parent (indented) in start
/// order; start offset from the trace's first span and duration in milliseconds; a span's `error`
/// tag on a line of its own. Spans whose parent is not in the trace are shown as roots.
pub fn render_trace(spans: &[Span]) -> String {
    if spans.is_empty() {
        return "no spans\n".to_owned();
    }
    let ids: HashSet<&str> = spans.iter().map(|span| span.id.as_str()).collect();
    let mut children: HashMap<Option<&str>, Vec<&Span>> = HashMap::new();
    for span in spans {
        // A span that names itself as parent would never be reached otherwise.
        let parent = span
            .parent_id
            .as_deref()
            .filter(|parent| ids.contains(parent) && *parent != span.id);
        children.entry(parent).or_default().push(span);
    }
    for list in children.values_mut() {
        list.sort_by_key(|span| (span.timestamp.unwrap_or(u64::MAX), span.id.clone()));
    }
    let start = spans
        .iter()
        .filter_map(|span| span.timestamp)
        .min()
        .unwrap_or(0);
    let end = spans
        .iter()
        .filter_map(|span| Some(span.timestamp? + span.duration.unwrap_or(0)))
        .max()
        .unwrap_or(start);
    let services: HashSet<&str> = spans.iter().map(Span::service).collect();
    let service_width = services.iter().map(|s| s.len()).max().unwrap_or(7).max(7);

    let mut out = format!(
        "trace {}: {} spans, {} services, {} ms\n",
        spans[0].trace_id,
        spans.len(),
        services.len(),
        millis(end - start),
    );
    out.push_str(&format!(
        "{:>10}  {:>10}  {:<service_width$}  SPAN\n",
        "START ms", "DUR ms", "SERVICE"
    ));
    // Depth-first, iteratively; `seen` guards against a cycle of parents.
    let mut stack: Vec<(&Span, usize)> = children
        .get(&None)
        .map(|roots| roots.iter().rev().map(|span| (*span, 0)).collect())
        .unwrap_or_default();
    let mut seen: HashSet<&str> = HashSet::new();
    while let Some((span, depth)) = stack.pop() {
        if !seen.insert(span.id.as_str()) {
            continue;
        }
        let offset = span
            .timestamp
            .map_or_else(|| "?".to_owned(), |at| millis(at.saturating_sub(start)));
        let duration = span.duration.map_or_else(|| "?".to_owned(), millis);
        let kind = span
            .kind
            .as_deref()
            .map(|kind| format!(" [{kind}]"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{offset:>10}  {duration:>10}  {:<service_width$}  {}{}{kind}\n",
            span.service(),
            "  ".repeat(depth),
            span.name.as_deref().unwrap_or("(unnamed)"),
        ));
        if let Some(error) = span.tags.get("error") {
            let error = if error.is_empty() {
                "(no message)"
            } else {
                error
            };
            out.push_str(&format!(
                "{:>10}  {:>10}  {:<service_width$}  {}! error: {error}\n",
                "",
                "",
                "",
                "  ".repeat(depth + 1)
            ));
        }
        if let Some(list) = children.get(&Some(span.id.as_str())) {
            stack.extend(list.iter().rev().map(|child| (*child, depth + 1)));
        }
    }
    let errors = spans
        .iter()
        .filter(|span| span.tags.contains_key("error"))
        .count();
    if errors > 0 {
        out.push_str(&format!("{errors} span(s) with an error\n"));
    }
    out
}

impl Trace {
    pub async fn run(&self, endpoints: &Endpoints, out: &mut impl Write) -> anyhow::Result<()> {
        let order = endpoints.api()?.order(self.order_id, None).await?;
        let trace_id = order.trace_id.filter(|id| !id.is_empty()).ok_or_else(|| {
            anyhow::anyhow!(
                "order {} has no trace id (was it placed with tracing off?)",
                self.order_id
            )
        })?;
        let spans = fetch(&self.zipkin_url, &trace_id).await?;
        write!(out, "{}", render_trace(&spans))?;
        Ok(())
    }
}

async fn fetch(zipkin_url: &str, trace_id: &str) -> anyhow::Result<Vec<Span>> {
    let base = zipkin_url.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("{base}/api/v2/trace/{trace_id}");
    let response = http.get(&url).send().await.map_err(|err| {
        let mut cause: &dyn std::error::Error = &err;
        while let Some(next) = cause.source() {
            cause = next;
        }
        anyhow::anyhow!("cannot reach Zipkin at {base}: {cause}")
    })?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        anyhow::bail!(
            "Zipkin at {base} has no trace {trace_id} (yet: spans are exported in batches)"
        );
    }
    anyhow::ensure!(
        status.is_success(),
        "Zipkin at {base} answered HTTP {status} for trace {trace_id}"
    );
    let body = response
        .bytes()
        .await
        .map_err(|err| anyhow::anyhow!("reading the trace from Zipkin at {base}: {err}"))?;
    serde_json::from_slice(&body).map_err(|err| {
        anyhow::anyhow!("Zipkin at {base} sent a trace that is not Zipkin v2 JSON: {err}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> Vec<Span> {
        serde_json::from_str(include_str!("../../tests/fixtures/zipkin-trace.json"))
            .expect("the fixture is Zipkin v2 JSON")
    }

    #[test]
    fn a_recorded_trace_renders_as_an_indented_timeline() {
        let shown = render_trace(&recorded());
        let expected = include_str!("../../tests/fixtures/zipkin-trace.txt");
        assert_eq!(shown, expected, "got:\n{shown}");
    }

    #[test]
    fn a_span_whose_parent_is_missing_is_shown_as_a_root() {
        let mut spans = recorded();
        spans.retain(|span| span.parent_id.is_some());
        let shown = render_trace(&spans);
        // Nothing is dropped: every span still has its line.
        assert_eq!(
            shown.lines().filter(|line| line.contains('[')).count(),
            spans.len(),
            "{shown}"
        );
    }
}
