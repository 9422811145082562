//! **W3C trace context across processes** (`traceparent`, `tracestate`),
//! with the `opentelemetry` cargo feature: a publish span's OpenTelemetry
//! context goes into the message's headers, and the handling span on the
//! receiving side becomes its child. Spans are `tracing` spans; the
//! application's `tracing-opentelemetry` layer turns them into
//! OpenTelemetry spans. Without the feature both functions do nothing.

use std::borrow::Cow;

use tracing::Span;

use crate::transport::seam::Received;

/// Adds the trace context of `span` (or, when it is disabled, of the
/// current span) to `headers`, if there is one.
pub(crate) fn inject(span: &Span, headers: &mut Vec<(Cow<'static, str>, String)>) {
    #[cfg(feature = "opentelemetry")]
    otel::inject(span, headers);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, headers);
}

/// Makes `span` a child of the trace context in `incoming`'s headers, if
/// it has one.
pub(crate) fn extract(span: &Span, incoming: &dyn Received) {
    #[cfg(feature = "opentelemetry")]
    otel::extract(span, incoming);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, incoming);
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use std::borrow::Cow;

    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::headers::{TRACEPARENT_HEADER, TRACESTATE_HEADER};
    use crate::transport::seam::{Header, Received};

    pub(super) fn inject(span: &Span, headers: &mut Vec<(Cow<'static, str>, String)>) {
        let span = if span.is_disabled() {
            Span::current()
        } else {
            span.clone()
        };
        let context = span.context();
        if !context.span().span_context().is_valid() {
            return;
        }
        TraceContextPropagator::new().inject_context(&context, &mut Headers(headers));
    }

    pub(super) fn extract(span: &Span, incoming: &dyn Received) {
        if span.is_disabled() {
            return;
        }
        let context = TraceContextPropagator::new().extract(&Incoming(incoming));
        if context.span().span_context().is_valid() {
            let _ = span.set_parent(context);
        }
    }

    struct Headers<'a>(&'a mut Vec<(Cow<'static, str>, String)>);

    impl Injector for Headers<'_> {
        fn set(&mut self, key: &str, value: String) {
            let name = match key {
                TRACEPARENT_HEADER => Cow::Borrowed(TRACEPARENT_HEADER),
                TRACESTATE_HEADER => Cow::Borrowed(TRACESTATE_HEADER),
                other => Cow::Owned(other.to_owned()),
            };
            self.0.push((name, value));
        }
    }

    struct Incoming<'a>(&'a dyn Received);

    impl Extractor for Incoming<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match self.0.header(key) {
                Header::Text(value) => Some(value),
                _ => None,
            }
        }

        fn keys(&self) -> Vec<&str> {
            [TRACEPARENT_HEADER, TRACESTATE_HEADER]
                .into_iter()
                .filter(|key| matches!(self.0.header(key), Header::Text(_)))
                .collect()
        }
    }
}
