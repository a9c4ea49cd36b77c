//! Counts the calls that tonic refuses before any handler of ours runs: a message larger
//! than its service takes (`OUT_OF_RANGE`) and one that does not parse as protobuf
//! (`INVALID_ARGUMENT` from the codec in `fareway-proto`). Handlers count their own
//! faults; these would otherwise be invisible to an operator, however many a client sent.
//!
//! It reads only a response's status headers; it never looks at a body, a token or a tap.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::server::metrics::Metrics;

/// The start of the codec's message for a message that does not parse.
const UNPARSABLE_MESSAGE: &str = "the message does not parse";

/// The fault code a refused call is counted under, from its response's headers (a call
/// refused before its handler is answered with its status in the headers).
pub fn refusal_code(headers: &http::HeaderMap) -> Option<&'static str> {
    let status = headers.get("grpc-status")?.to_str().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|message| message.to_str().ok())
        .unwrap_or_default();
    match status {
        "11" => Some("message_too_large"),
        // grpc-message is percent-encoded: spaces as "%20".
        "3" if message.replace("%20", " ").starts_with(UNPARSABLE_MESSAGE) => {
            Some("unparsable_message")
        }
        _ => None,
    }
}

/// The layer that counts refusals into the server's faults metric.
#[derive(Debug, Clone)]
pub struct CountRefusals {
    metrics: Arc<Metrics>,
}

impl CountRefusals {
    /// Counting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> CountRefusals {
        CountRefusals { metrics }
    }
}

impl<S> tower_layer::Layer<S> for CountRefusals {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// A service whose refused calls are counted.
#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, Request, Body> tower_service::Service<Request> for Counted<S>
where
    S: tower_service::Service<Request, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let answered = self.inner.call(request);
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let response = answered.await?;
            if let Some(code) = refusal_code(response.headers()) {
                metrics.record_fault(code);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(status: &str, message: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "grpc-status",
            status.parse().unwrap_or_else(|_| unreachable!()),
        );
        headers.insert(
            "grpc-message",
            message.parse().unwrap_or_else(|_| unreachable!()),
        );
        headers
    }

    #[test]
    fn only_tonics_own_refusals_are_counted() {
        assert_eq!(
            refusal_code(&headers(
                "11",
                "Error,%20decoded%20message%20length%20too%20large"
            )),
            Some("message_too_large")
        );
        assert_eq!(
            refusal_code(&headers(
                "3",
                "the%20message%20does%20not%20parse%20as%20protobuf"
            )),
            Some("unparsable_message")
        );
        // A handler's INVALID_ARGUMENT is counted by the handler, not again here.
        assert_eq!(
            refusal_code(&headers("3", "gate_id:%20must%20not%20be%20zero")),
            None
        );
        assert_eq!(refusal_code(&headers("0", "")), None);
        assert_eq!(refusal_code(&http::HeaderMap::new()), None);
    }
}
