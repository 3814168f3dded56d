//! W3C trace context (`traceparent`, `tracestate`) across the pipeline's boundaries: HTTP headers,
//! gRPC metadata, the event's stored metadata and NATS message headers.
//!
//! Spans are `tracing` spans; their OpenTelemetry context comes from the layer that
//! [`crate::telemetry::init`] installs. Without that layer (tests that do not set it up) every
//! function here does nothing and returns nothing.
//!
//! A span takes a remote parent only before it is first entered: call [`set_parent`] right after
//! creating it.

use std::collections::BTreeMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{Status, TraceContextExt as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub use opentelemetry_http::{HeaderExtractor, HeaderInjector};

use crate::stream::headers::{TRACEPARENT, TRACESTATE};

/// The remote context in `carrier`, when it holds a valid `traceparent`.
pub fn extract(carrier: &dyn Extractor) -> Option<Context> {
    let context = TraceContextPropagator::new().extract(carrier);
    context.span().span_context().is_valid().then_some(context)
}

/// Makes `span` a child of the context in `carrier`; without a valid `traceparent` there the span
/// keeps its local parent. True when a remote parent was set.
pub fn set_parent(span: &Span, carrier: &dyn Extractor) -> bool {
    match extract(carrier) {
        Some(context) => span.set_parent(context).is_ok(),
        None => false,
    }
}

/// Writes `span`'s context (`traceparent`, `tracestate`) into `carrier`.
pub fn inject(span: &Span, carrier: &mut dyn Injector) {
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, carrier);
    }
}

/// `span`'s context as a `traceparent` value.
pub fn traceparent(span: &Span) -> Option<String> {
    let mut map = BTreeMap::new();
    inject(span, &mut MapInjector(&mut map));
    map.remove(TRACEPARENT)
}

/// The 32-hex-digit trace id of `span`.
pub fn trace_id(span: &Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Puts `span`'s context into an event's metadata unless the caller already set a `traceparent`.
pub fn fill_metadata(span: &Span, metadata: &mut BTreeMap<String, String>) {
    if metadata.contains_key(TRACEPARENT) {
        return;
    }
    inject(span, &mut MapInjector(metadata));
}

/// Marks `span` as failed (`otel.status_code = ERROR`) with `description`.
pub fn mark_error(span: &Span, description: impl Into<String>) {
    span.set_status(Status::error(description.into()));
}

/// An event's metadata (or any string map) read as a carrier.
pub struct MapExtractor<'a>(pub &'a BTreeMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// An event's metadata written as a carrier.
pub struct MapInjector<'a>(pub &'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// NATS message headers read as a carrier.
pub struct NatsExtractor<'a>(pub &'a async_nats::HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// NATS message headers written as a carrier; replaces what is there.
pub struct NatsInjector<'a>(pub &'a mut async_nats::HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// gRPC request metadata written as a carrier.
pub struct GrpcInjector<'a>(pub &'a mut tonic::metadata::MetadataMap);

impl Injector for GrpcInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// The trace context keys, for code that copies metadata selectively.
pub const KEYS: [&str; 2] = [TRACEPARENT, TRACESTATE];

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_valid_traceparent_is_extracted_and_garbage_is_not() {
        let map = BTreeMap::from([(TRACEPARENT.to_owned(), PARENT.to_owned())]);
        let context = extract(&MapExtractor(&map)).expect("valid");
        assert_eq!(
            context.span().span_context().trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        let garbage = BTreeMap::from([(TRACEPARENT.to_owned(), "nonsense".to_owned())]);
        assert!(extract(&MapExtractor(&garbage)).is_none());
        assert!(extract(&MapExtractor(&BTreeMap::new())).is_none());
    }

    #[test]
    fn nats_headers_carry_the_context_both_ways() {
        let mut headers = async_nats::HeaderMap::new();
        let map = BTreeMap::from([(TRACEPARENT.to_owned(), PARENT.to_owned())]);
        let context = extract(&MapExtractor(&map)).expect("valid");
        TraceContextPropagator::new().inject_context(&context, &mut NatsInjector(&mut headers));
        assert_eq!(
            headers.get(TRACEPARENT).map(|v| v.as_str().to_owned()),
            Some(PARENT.to_owned())
        );
        assert!(extract(&NatsExtractor(&headers)).is_some());
    }

    #[test]
    fn without_the_tracing_layer_nothing_is_injected() {
        let span = tracing::info_span!("no subscriber");
        let mut metadata = BTreeMap::new();
        fill_metadata(&span, &mut metadata);
        assert!(metadata.is_empty());
        assert_eq!(trace_id(&span), None);
    }
}
