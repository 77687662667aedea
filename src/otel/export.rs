//! Delivery of finished spans as OTLP/HTTP protobuf: a span processor that
//! only hands each span to a channel (so ending a span never waits for the
//! network), and a task that POSTs `ExportTraceServiceRequest`s built with
//! `opentelemetry-proto`'s types over hyper, each bounded by
//! [`super::EXPORT_TIMEOUT`].
//!
//! Why not `opentelemetry-otlp`: its HTTP clients are a blocking reqwest
//! (a second reqwest major in the tree, its own runtime thread, and it must
//! not be dropped inside the runner's runtime) or hyper behind the SDK's
//! experimental async batch processor; neither gives the hard "at most 1 s
//! at the end of a run" bound as plainly as a timeout on our own future.
//! The wire format is the same (the proto crate's transform from the
//! SDK's `SpanData`).

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::Uri;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry::Context;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use prost::Message;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::EXPORT_TIMEOUT;

/// Hands every ended span to the exporter task.
#[derive(Debug)]
pub struct ChannelProcessor {
    tx: Mutex<Option<UnboundedSender<SpanData>>>,
}

impl ChannelProcessor {
    /// The processor and the receiving end for [`deliver`].
    pub fn new() -> (ChannelProcessor, UnboundedReceiver<SpanData>) {
        let (tx, rx) = unbounded_channel();
        (ChannelProcessor { tx: Mutex::new(Some(tx)) }, rx)
    }
}

impl SpanProcessor for ChannelProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tx.as_ref() {
            // The receiver is gone only after the run gave up waiting.
            let _ = tx.send(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    /// Closes the channel: the exporter sends what is queued and ends.
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(())
    }
}

/// Why one batch did not reach the collector.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// No answer within [`EXPORT_TIMEOUT`] (a hanging collector).
    #[error("the collector did not answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or sending failed (refused, reset, DNS).
    #[error("{0}")]
    Transport(String),
    /// The collector answered, but not with 2xx.
    #[error("the collector answered HTTP {0}")]
    Status(http::StatusCode),
}

/// What the exporter achieved.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Spans the collector accepted.
    pub spans: usize,
    /// The last failure, if any batch was not accepted.
    pub error: Option<String>,
}

impl Delivery {
    /// Nothing delivered, for `why`.
    pub fn failed(why: String) -> Delivery {
        Delivery { spans: 0, error: Some(why) }
    }
}

type Http = Client<HttpConnector, Full<Bytes>>;

/// Sends spans as they arrive (whatever is queued goes in one request)
/// until the channel closes.
pub async fn deliver(
    mut rx: UnboundedReceiver<SpanData>,
    endpoint: Uri,
    resource: ResourceAttributesWithSchema,
) -> Delivery {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(EXPORT_TIMEOUT));
    let client: Http = Client::builder(TokioExecutor::new()).build(connector);
    let mut delivery = Delivery::default();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(s) = rx.try_recv() {
            batch.push(s);
        }
        let n = batch.len();
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &resource),
        };
        let body = Bytes::from(request.encode_to_vec());
        let sent = tokio::time::timeout(EXPORT_TIMEOUT, post(&client, &endpoint, body))
            .await
            .unwrap_or(Err(ExportError::Timeout(EXPORT_TIMEOUT)));
        match sent {
            Ok(()) => delivery.spans += n,
            Err(e) => {
                tracing::debug!(%endpoint, error = %e, spans = n, "OTLP export failed");
                delivery.error = Some(e.to_string());
            }
        }
    }
    delivery
}

async fn post(client: &Http, endpoint: &Uri, body: Bytes) -> Result<(), ExportError> {
    let req = http::Request::post(endpoint.clone())
        .header(CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(body))
        .map_err(|e| ExportError::Transport(e.to_string()))?;
    let resp =
        client.request(req).await.map_err(|e| ExportError::Transport(error_chain(&e)))?;
    let status = resp.status();
    // Read the (small) answer so the connection can be reused.
    let _ = Limited::new(resp.into_body(), 64 * 1024).collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(ExportError::Status(status))
    }
}

/// "client error (Connect): tcp connect error: Connection refused": hyper's
/// top-level error alone does not say why.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}
