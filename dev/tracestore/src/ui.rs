//! The pages: `/zipkin/` lists recent traces, `/zipkin/traces/{id}` draws one as a waterfall (the
//! paths of Zipkin's own UI, so a link works with either). Rendered here as plain HTML and CSS: no
//! script, no front-end build, nothing fetched from anywhere.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::store::{Span, Store, duration_of, start_of};

/// One colour per service of a page, in the order of their names.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];
const INDEX_LIMIT: usize = 50;

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
a { color: #1f5fa8; }
code { font-size: 13px; }
table.traces { border-collapse: collapse; width: 100%; }
table.traces th, table.traces td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #ddd; }
.swatch { display: inline-block; padding: 0 6px; margin: 1px; border-radius: 3px; color: #fff; font-size: 12px; }
.legend { margin: .5em 0 1em; }
#waterfall { border-top: 1px solid #ccc; }
.row { display: grid; grid-template-columns: 38% 62%; border-bottom: 1px solid #eee; }
.label { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; padding: 3px 4px; }
.kind { color: #777; font-size: 12px; }
.lane { position: relative; height: 22px; }
.bar { position: absolute; top: 5px; height: 12px; min-width: 2px; border-radius: 2px; }
.dur { position: absolute; top: 3px; font-size: 12px; color: #444; padding-left: 4px; }
.row details { grid-column: 1 / span 2; padding: 0 0 4px 2em; font-size: 12px; }
.row details table td { padding: 0 8px; vertical-align: top; }
.axis { display: grid; grid-template-columns: 38% 62%; font-size: 12px; color: #777; }
.ticks { position: relative; height: 16px; }
.ticks span { position: absolute; transform: translateX(-50%); white-space: nowrap; }
.ticks span:first-child { transform: none; }
.ticks span:last-child { transform: translateX(-100%); }
.dur.before { padding: 0 4px 0 0; }
.error .label { color: #c00; }
"#;

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn millis(micros: u64) -> String {
    format!("{:.3}", micros as f64 / 1000.0)
}

fn utc(micros: u64) -> String {
    i128::from(micros)
        .checked_mul(1000)
        .and_then(|nanos| time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok())
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{}</title><style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n",
        escape(title)
    )
}

fn colours(services: &BTreeSet<&str>) -> HashMap<String, &'static str> {
    services
        .iter()
        .enumerate()
        .map(|(i, service)| ((*service).to_owned(), PALETTE[i % PALETTE.len()]))
        .collect()
}

fn services_of(spans: &[Span]) -> BTreeSet<&str> {
    spans.iter().map(|s| s.service().unwrap_or("?")).collect()
}

/// The list of recent traces, newest first.
pub fn render_index(
    traces: &[Vec<Span>],
    service: Option<&str>,
    all_services: &[String],
) -> String {
    let mut body =
        String::from("<h1>Traces</h1>\n<form method=\"get\" action=\"/zipkin/\">service ");
    body.push_str("<select name=\"serviceName\"><option value=\"\">all</option>");
    for name in all_services {
        let selected = if Some(name.as_str()) == service {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<option{selected} value=\"{0}\">{0}</option>",
            escape(name)
        );
    }
    body.push_str("</select> <button>show</button></form>\n");
    if traces.is_empty() {
        body.push_str("<p id=\"empty\">No traces yet.</p>\n");
        return page("Traces", &body);
    }
    body.push_str(
        "<table class=\"traces\" id=\"traces\"><thead><tr><th>trace</th><th>root</th>\
         <th>services</th><th>spans</th><th>duration (ms)</th><th>started (UTC)</th></tr></thead><tbody>\n",
    );
    for spans in traces {
        let Some(first) = spans.first() else { continue };
        let ids: HashSet<&str> = spans.iter().map(|s| s.id.as_str()).collect();
        let root = spans
            .iter()
            .filter(|s| s.parent_id.as_deref().is_none_or(|p| !ids.contains(p)))
            .min_by_key(|s| s.timestamp.unwrap_or(u64::MAX))
            .unwrap_or(first);
        let services = services_of(spans);
        let colour = colours(&services);
        let _ = write!(
            body,
            "<tr class=\"trace\" data-trace-id=\"{id}\" data-span-count=\"{count}\">\
             <td><a href=\"/zipkin/traces/{id}\"><code>{id}</code></a></td><td>{root_service}: {root_name}</td><td>",
            id = escape(&first.trace_id),
            count = spans.len(),
            root_service = escape(root.service().unwrap_or("?")),
            root_name = escape(root.name.as_deref().unwrap_or("")),
        );
        for service in &services {
            let _ = write!(
                body,
                "<span class=\"swatch\" style=\"background:{}\">{}</span>",
                colour.get(*service).copied().unwrap_or(PALETTE[0]),
                escape(service)
            );
        }
        let _ = writeln!(
            body,
            "</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            spans.len(),
            millis(duration_of(spans)),
            utc(start_of(spans).unwrap_or(0))
        );
    }
    body.push_str("</tbody></table>\n");
    page("Traces", &body)
}

/// One trace as a waterfall: a row per span, children under their parent in start order, bars on
/// one time axis, the service as the colour, tags folded under each row.
pub fn render_trace(trace_id: &str, spans: &[Span]) -> String {
    let start = start_of(spans).unwrap_or(0);
    let total = duration_of(spans).max(1);
    let services = services_of(spans);
    let colour = colours(&services);
    let ids: HashSet<&str> = spans.iter().map(|s| s.id.as_str()).collect();
    let mut children: HashMap<Option<&str>, Vec<&Span>> = HashMap::new();
    for span in spans {
        let parent = span
            .parent_id
            .as_deref()
            .filter(|p| ids.contains(p) && *p != span.id);
        children.entry(parent).or_default().push(span);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| (s.timestamp.unwrap_or(u64::MAX), s.id.clone()));
    }

    let mut body = String::new();
    let _ = write!(
        body,
        "<p><a href=\"/zipkin/\">Traces</a> › trace <code>{}</code></p>\n<h1>{}</h1>\n\
         <p class=\"summary\">{} spans · {} services · {} ms · started {}</p>\n<div class=\"legend\">",
        escape(trace_id),
        escape(&root_title(&children)),
        spans.len(),
        services.len(),
        millis(total),
        utc(start)
    );
    for service in &services {
        let _ = write!(
            body,
            "<span class=\"swatch service\" data-service=\"{0}\" style=\"background:{1}\">{0}</span>",
            escape(service),
            colour.get(*service).copied().unwrap_or(PALETTE[0])
        );
    }
    body.push_str("</div>\n<div class=\"axis\"><div></div><div class=\"ticks\">");
    for quarter in 0..=4u64 {
        let _ = write!(
            body,
            "<span style=\"left:{}%\">{} ms</span>",
            quarter * 25,
            millis(total * quarter / 4)
        );
    }
    let _ = writeln!(
        body,
        "</div></div>\n<div id=\"waterfall\" data-trace-id=\"{}\" data-span-count=\"{}\">",
        escape(trace_id),
        spans.len()
    );
    // Depth first, iteratively: a hostile trace cannot overflow the stack.
    let mut stack: Vec<(&Span, usize)> = children
        .get(&None)
        .map(|roots| roots.iter().rev().map(|s| (*s, 0)).collect())
        .unwrap_or_default();
    let mut drawn = HashSet::new();
    while let Some((span, depth)) = stack.pop() {
        if !drawn.insert(span.id.as_str()) {
            continue;
        }
        row(&mut body, span, depth, start, total, &colour);
        if let Some(kids) = children.get(&Some(span.id.as_str())) {
            stack.extend(kids.iter().rev().map(|kid| (*kid, depth + 1)));
        }
    }
    // Spans only reachable through a cycle of parents: shown, flat, rather than lost.
    for span in spans {
        if !drawn.contains(span.id.as_str()) {
            row(&mut body, span, 0, start, total, &colour);
        }
    }
    body.push_str("</div>\n");
    page(&format!("Trace {trace_id}"), &body)
}

fn root_title(children: &HashMap<Option<&str>, Vec<&Span>>) -> String {
    children
        .get(&None)
        .and_then(|roots| roots.first())
        .map(|root| {
            format!(
                "{}: {}",
                root.service().unwrap_or("?"),
                root.name.as_deref().unwrap_or("")
            )
        })
        .unwrap_or_else(|| "trace".to_owned())
}

fn row(
    body: &mut String,
    span: &Span,
    depth: usize,
    start: u64,
    total: u64,
    colour: &HashMap<String, &'static str>,
) {
    let service = span.service().unwrap_or("?");
    let offset = span.timestamp.unwrap_or(start).saturating_sub(start);
    let duration = span.duration.unwrap_or(0);
    let left = offset as f64 * 100.0 / total as f64;
    let width = (duration as f64 * 100.0 / total as f64).min(100.0 - left);
    let error = span.tags.contains_key("error");
    let _ = write!(
        body,
        "<div class=\"row{error_class}\" data-span-id=\"{id}\" data-parent-id=\"{parent}\" \
         data-service=\"{service}\" data-depth=\"{depth}\">\
         <div class=\"label\" style=\"padding-left:{indent}px\" title=\"{service}: {name}\">\
         <span class=\"swatch\" style=\"background:{colour}\">{service}</span> {name} \
         <span class=\"kind\">{kind}</span></div>\
         <div class=\"lane\"><div class=\"bar\" style=\"left:{left:.3}%;width:{width:.3}%;background:{colour}\"></div>\
         <span class=\"dur{before}\" style=\"{place}\">{ms} ms</span></div>",
        error_class = if error { " error" } else { "" },
        id = escape(&span.id),
        parent = escape(span.parent_id.as_deref().unwrap_or("")),
        service = escape(service),
        indent = 4 + depth.min(40) * 14,
        name = escape(span.name.as_deref().unwrap_or("")),
        colour = colour.get(service).copied().unwrap_or(PALETTE[0]),
        kind = escape(span.kind.as_deref().unwrap_or("")),
        // The duration after the bar, or before it when the bar ends near the right edge.
        before = if left + width > 85.0 { " before" } else { "" },
        place = if left + width > 85.0 {
            format!("right:{:.3}%", 100.0 - left)
        } else {
            format!("left:{:.3}%", left + width)
        },
        ms = millis(duration),
    );
    if !span.tags.is_empty() || !span.annotations.is_empty() {
        let _ = write!(
            body,
            "<details><summary>{} tags</summary><table>",
            span.tags.len()
        );
        for (key, value) in &span.tags {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td></tr>",
                escape(key),
                escape(value)
            );
        }
        for annotation in &span.annotations {
            let _ = write!(
                body,
                "<tr><td>at +{} ms</td><td>{}</td></tr>",
                millis(annotation.timestamp.saturating_sub(start)),
                escape(&annotation.value)
            );
        }
        body.push_str("</table></details>");
    }
    body.push_str("</div>\n");
}

pub(crate) async fn index(
    State(store): State<Store>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let query = match crate::api::trace_query(&params, INDEX_LIMIT) {
        Ok(query) => query,
        Err(refusal) => return refusal.into_response(),
    };
    let traces = store.traces(&query);
    Html(render_index(
        &traces,
        query.service_name.as_deref(),
        &store.services(),
    ))
    .into_response()
}

pub(crate) async fn trace_page(State(store): State<Store>, Path(id): Path<String>) -> Response {
    let Some(trace_id) = crate::store::trace_id(&id) else {
        let body = format!(
            "<p>{} is not a trace id (16 or 32 hex digits).</p>",
            escape(&id)
        );
        return (StatusCode::BAD_REQUEST, Html(page("Not a trace id", &body))).into_response();
    };
    match store.trace(&trace_id) {
        Some(spans) => Html(render_trace(&trace_id, &spans)).into_response(),
        None => {
            let body = format!(
                "<p><a href=\"/zipkin/\">Traces</a></p><p>Trace <code>{}</code> is not here (yet, or any more: the oldest traces are evicted).</p>",
                escape(&trace_id)
            );
            (StatusCode::NOT_FOUND, Html(page("Trace not found", &body))).into_response()
        }
    }
}

pub(crate) async fn to_index() -> Redirect {
    Redirect::to("/zipkin/")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::Endpoint;

    fn span(id: &str, parent: Option<&str>, service: &str, ts: u64, dur: u64) -> Span {
        Span {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            id: id.into(),
            parent_id: parent.map(str::to_owned),
            name: Some(format!("<{service}> step")),
            kind: Some("SERVER".into()),
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
            tags: BTreeMap::from([("k".to_owned(), "<v>".to_owned())]),
            debug: None,
            shared: None,
        }
    }

    #[test]
    fn a_trace_renders_one_row_per_span_children_after_their_parent_and_escaped() {
        let spans = vec![
            span(
                "000000000000000b",
                Some("000000000000000a"),
                "eventstore",
                1_500,
                500,
            ),
            span("000000000000000a", None, "ordersvc", 1_000, 2_000),
            // A parent that is not in the trace: a root of its own.
            span(
                "000000000000000c",
                Some("00000000000000ff"),
                "reviewworker",
                2_000,
                100,
            ),
        ];
        let html = render_trace("0af7651916cd43dd8448eb211c80319c", &spans);
        assert_eq!(html.matches("class=\"row").count(), 3);
        let a = html.find("data-span-id=\"000000000000000a\"").expect("a");
        let b = html.find("data-span-id=\"000000000000000b\"").expect("b");
        assert!(a < b, "the child comes after its parent");
        assert!(html.contains("data-depth=\"1\""));
        assert!(!html.contains("<ordersvc>"), "names are escaped");
        assert!(html.contains("&lt;v&gt;"), "tags are there, escaped");
    }

    #[test]
    fn a_cycle_of_parents_still_shows_every_span() {
        let spans = vec![
            span("000000000000000a", Some("000000000000000b"), "a", 1, 1),
            span("000000000000000b", Some("000000000000000a"), "b", 2, 1),
        ];
        let html = render_trace("0af7651916cd43dd8448eb211c80319c", &spans);
        assert_eq!(html.matches("class=\"row").count(), 2);
    }

    #[test]
    fn the_index_links_each_trace_to_its_waterfall() {
        let spans = vec![span("000000000000000a", None, "ordersvc", 1_000, 2_000)];
        let html = render_index(&[spans], None, &["ordersvc".to_owned()]);
        assert!(html.contains("href=\"/zipkin/traces/0af7651916cd43dd8448eb211c80319c\""));
        assert!(html.contains("data-span-count=\"1\""));
    }
}
