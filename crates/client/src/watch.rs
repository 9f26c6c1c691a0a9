//! Watching keys with failover: [`Client::watch`] returns a [`WatchStream`] that follows one
//! key or a prefix and, when its stream breaks (the node stops, is unreachable, or cancels
//! a watcher that fell behind), resumes on the next endpoint from the last index it
//! completed, so the joined stream has no gap and no repeat.

use std::time::Duration;

use proto::kv::v1::kv_client::KvClient;
use proto::kv::v1::watch_response::Kind;
use proto::kv::v1::{WatchRequest, WatchResponse};

use crate::{Client, ClientError, MAX_MESSAGE_BYTES};

/// What to watch beyond the key.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Watch every key starting with the key.
    pub prefix: bool,
    /// The first index whose changes are wanted; 0: from now.
    pub start_index: u64,
    /// Leave values out.
    pub keys_only: bool,
    /// How often the server sends progress; `None`: the server's default.
    pub progress_interval: Option<Duration>,
    /// The seed's heartbeat (`timeout_seconds`); 0: none.
    pub timeout_seconds: i64,
}

/// A watch that resumes on another endpoint after a disconnect. See the module docs.
#[derive(Debug)]
pub struct WatchStream<'a> {
    client: &'a Client,
    request: WatchRequest,
    /// The index to resume from: every change before it was returned.
    resume_index: u64,
    stream: Option<tonic::Streaming<WatchResponse>>,
    /// Which endpoint (in the client's list) to use next.
    endpoint: usize,
    /// Connection attempts that failed in a row.
    failures: u32,
    serving: Option<String>,
    reconnects: u32,
}

impl Client {
    /// Watches `key` (or the prefix `key`), resuming on the next endpoint when a stream
    /// breaks. Nothing is sent until [`WatchStream::next`] is called.
    pub fn watch(&self, key: impl Into<Vec<u8>>, options: WatchOptions) -> WatchStream<'_> {
        let progress_interval_ms =
            options.progress_interval.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let request = WatchRequest {
            key: key.into().into(),
            prefix: options.prefix,
            start_index: options.start_index,
            keys_only: options.keys_only,
            progress_interval_ms,
            timeout_seconds: options.timeout_seconds,
        };
        WatchStream {
            client: self,
            resume_index: options.start_index,
            request,
            stream: None,
            endpoint: self.preferred.load(std::sync::atomic::Ordering::Relaxed),
            failures: 0,
            serving: None,
            reconnects: 0,
        }
    }
}

/// Whether a watch failure is final (the request itself is wrong or cannot be served from
/// its index anywhere): resuming elsewhere would fail the same way.
fn is_final(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::OutOfRange
            | tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::NotFound
            | tonic::Code::PermissionDenied
            | tonic::Code::Unimplemented
            | tonic::Code::Unauthenticated
    )
}

impl WatchStream<'_> {
    /// The endpoint serving the stream now, once connected.
    #[must_use]
    pub fn serving(&self) -> Option<&str> {
        self.serving.as_deref()
    }

    /// The index the stream would resume from: every change before it has been returned.
    #[must_use]
    pub fn resume_index(&self) -> u64 {
        self.resume_index
    }

    /// How many times the stream was resumed after a break.
    #[must_use]
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// The next message. Errors only when no endpoint can serve the watch (after the
    /// client's `max_retries` failed attempts in a row) or the watch is refused for good
    /// (a compacted start index: `OUT_OF_RANGE`, or bad input).
    pub async fn next(&mut self) -> Result<WatchResponse, ClientError> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                self.connect().await?;
                continue;
            };
            match stream.message().await {
                Ok(Some(msg)) => {
                    self.advance(&msg);
                    self.failures = 0;
                    return Ok(msg);
                }
                Ok(None) => self.broken("the stream ended"),
                Err(status) if is_final(status.code()) => return Err(ClientError::Status(status)),
                Err(status) => {
                    let why = format!("{}: {}", status.code(), status.message());
                    // A status the server did not make came from the transport: reconnect.
                    if status.metadata().get(crate::RETRYABLE_HEADER).is_none()
                        && let Some(addr) = &self.serving
                    {
                        self.client.forget(addr);
                    }
                    self.broken(&why);
                }
            }
        }
    }

    /// Records how far the stream got.
    fn advance(&mut self, msg: &WatchResponse) {
        let complete = match Kind::try_from(msg.kind) {
            Ok(Kind::Created | Kind::Progress) => true,
            Ok(Kind::Events | Kind::Abandoned) => !msg.more,
            Ok(Kind::Timeout) | Err(_) => false,
        };
        if complete {
            self.resume_index = self.resume_index.max(msg.index + 1);
        }
    }

    fn broken(&mut self, why: &str) {
        tracing::info!(endpoint = ?self.serving, resume_index = self.resume_index, why, "watch stream broke; resuming on the next endpoint");
        self.stream = None;
        self.serving = None;
        self.endpoint += 1;
        self.reconnects += 1;
    }

    /// Opens the stream on the next endpoint that serves it, from the resume index.
    async fn connect(&mut self) -> Result<(), ClientError> {
        let mut backoff = Duration::from_millis(50);
        let mut refreshed = false;
        loop {
            let endpoints = self.client.endpoints();
            let addr = endpoints[self.endpoint % endpoints.len()].clone();
            let mut request = self.request.clone();
            request.start_index = self.resume_index;
            let last_error = match self.client.connect(&addr).await {
                Ok(ch) => {
                    let mut kv = KvClient::new(ch).max_decoding_message_size(MAX_MESSAGE_BYTES);
                    let mut call = tonic::Request::new(request);
                    let sent = self.client.current_token();
                    if let Some(token) = &sent {
                        call.metadata_mut().insert(rpc::metadata::AUTHORIZATION_HEADER, token.clone());
                    }
                    match kv.watch(call).await {
                        Ok(resp) => {
                            self.stream = Some(resp.into_inner());
                            self.serving = Some(addr);
                            return Ok(());
                        }
                        // The token expired (or there is none yet, only credentials):
                        // authenticate again (once) and reopen here.
                        Err(status)
                            if status.code() == tonic::Code::Unauthenticated
                                && !refreshed
                                && (sent.is_some() || self.client.credentials().is_some()) =>
                        {
                            refreshed = true;
                            if self.client.refresh_token(sent).await? {
                                continue;
                            }
                            return Err(ClientError::Status(status));
                        }
                        Err(status) if is_final(status.code()) => return Err(ClientError::Status(status)),
                        Err(status) => {
                            self.client.forget(&addr);
                            format!("{addr}: {}: {}", status.code(), status.message())
                        }
                    }
                }
                Err(e) => format!("{addr}: {e}"),
            };
            self.failures += 1;
            if self.failures > self.client.options.max_retries {
                return Err(ClientError::Unreachable { endpoints: endpoints.join(","), last: last_error });
            }
            tracing::debug!(error = %last_error, "cannot open the watch here; trying the next endpoint");
            self.endpoint += 1;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: Kind, index: u64, more: bool) -> WatchResponse {
        WatchResponse { kind: kind as i32, index, more, ..Default::default() }
    }

    #[test]
    fn resumes_after_what_was_complete() -> Result<(), ClientError> {
        let client = Client::new(["127.0.0.1:1"], crate::ClientOptions::default())?;
        let mut w = client.watch("k", WatchOptions::default());
        assert_eq!(w.resume_index(), 0);
        w.advance(&msg(Kind::Created, 9, false));
        assert_eq!(w.resume_index(), 10);
        w.advance(&msg(Kind::Events, 12, true));
        assert_eq!(w.resume_index(), 10, "not past an index whose events continue");
        w.advance(&msg(Kind::Events, 12, false));
        assert_eq!(w.resume_index(), 13);
        w.advance(&msg(Kind::Timeout, 40, false));
        assert_eq!(w.resume_index(), 13, "a heartbeat says nothing about what was sent");
        w.advance(&msg(Kind::Progress, 30, false));
        assert_eq!(w.resume_index(), 31);
        w.advance(&msg(Kind::Created, 20, false));
        assert_eq!(w.resume_index(), 31, "never backwards");
        Ok(())
    }

    #[test]
    fn compacted_and_bad_requests_are_final() {
        assert!(is_final(tonic::Code::OutOfRange));
        assert!(is_final(tonic::Code::InvalidArgument));
        assert!(!is_final(tonic::Code::Unavailable));
        assert!(!is_final(tonic::Code::ResourceExhausted));
        assert!(!is_final(tonic::Code::Unknown));
    }
}
