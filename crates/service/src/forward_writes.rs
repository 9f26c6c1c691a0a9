//! The leader's side of the stream of forwarded writes (`raftkv.forward.v1.Forward/Writes`,
//! the follower's side is in [`crate::forward`]): each message is served as the unary KV
//! call it stands for, concurrently, and answered with its id as soon as it is done.
//!
//! A message is the unary call with the same metadata: marked as forwarded (so it is never
//! forwarded again), the caller's `authorization` (the KV service checks the token and the
//! key range, as [`crate::AuthGuard`] and the unary call do) and its deadline. Under the
//! overload guard each message takes its own place ([`Overload::admit`]): shed with the
//! same `RESOURCE_EXHAUSTED`, its deadline lowered to the request timeout and cut off
//! after it as a unary call is. The stream itself takes a place only while it is set up.
//!
//! The service is not behind [`crate::AuthGuard`]: the stream is the follower's, not one
//! user's, and every message is checked on its own credentials.
//!
//! When the node stops, the stream takes no more messages, answers those it took, and
//! ends with `UNAVAILABLE`: an open stream must not hold up a graceful stop.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use proto::kv::forward::v1::forward_server::{Forward, ForwardServer};
use proto::kv::forward::v1::{ForwardedAnswer, ForwardedWrite, forwarded_answer, forwarded_write};
use proto::kv::v1::kv_server::Kv;
use tokio::sync::mpsc;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status, Streaming};

use crate::forward::{FORWARDED_HEADER, MAX_STREAMED_WRITE_BYTES, STREAM_ENVELOPE_BYTES, status_message};
use crate::overload::{Overload, TIMEOUT_GRACE};
use crate::{KvService, ServiceError};

/// The `raftkv.forward.v1.Forward` service of one node.
#[derive(Debug, Clone)]
pub struct ForwardService {
    kv: KvService,
    overload: Overload,
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
}

impl ForwardService {
    /// Serves forwarded writes with `kv`, each under the limits of `overload`.
    #[must_use]
    pub fn new(kv: KvService, overload: Overload) -> Self {
        Self { kv, overload, stopping: None }
    }

    /// Ends every open stream (`UNAVAILABLE`) once `stopping` is true.
    #[must_use]
    pub fn with_stop(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = Some(stopping);
        self
    }

    /// The tonic server, with the stream's message size limit both ways.
    #[must_use]
    pub fn into_server(self) -> ForwardServer<Self> {
        ForwardServer::new(self)
            .max_decoding_message_size(MAX_STREAMED_WRITE_BYTES + STREAM_ENVELOPE_BYTES)
            .max_encoding_message_size(MAX_STREAMED_WRITE_BYTES + STREAM_ENVELOPE_BYTES)
    }
}

/// Completes once `stopping` is true; never without one (or once its sender is gone).
async fn until_stopping(stopping: Option<tokio::sync::watch::Receiver<bool>>) {
    if let Some(mut stopping) = stopping
        && stopping.wait_for(|s| *s).await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await;
}

/// The answers of one stream.
type AnswerStream = Pin<Box<dyn Stream<Item = Result<ForwardedAnswer, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Forward for ForwardService {
    type WritesStream = AnswerStream;

    async fn writes(&self, request: Request<Streaming<ForwardedWrite>>) -> Result<Response<AnswerStream>, Status> {
        let mut inbound = request.into_inner();
        let (answers, answered) = mpsc::unbounded_channel::<ForwardedAnswer>();
        let this = self.clone();
        tokio::spawn(async move {
            let stop = until_stopping(this.stopping.clone());
            tokio::pin!(stop);
            loop {
                let message = tokio::select! {
                    message = inbound.message() => message,
                    () = &mut stop => break,
                };
                // The follower ended the stream, or went away: no more writes.
                let Ok(Some(write)) = message else { break };
                let (this, answers) = (this.clone(), answers.clone());
                tokio::spawn(async move {
                    let id = write.id;
                    let answer = this.serve(write).await;
                    let _ = answers.send(ForwardedAnswer { id, answer: Some(answer) });
                });
            }
        });
        let stopping = self.stopping.clone();
        let answers = futures::stream::unfold(answered, |mut a| async move { a.recv().await.map(|m| (Ok(m), a)) });
        // After the last answer, a stop ends the stream with UNAVAILABLE.
        let last = futures::stream::once(async move {
            stopping.is_some_and(|s| *s.borrow()).then(|| Err(Status::from(ServiceError::ShuttingDown)))
        })
        .filter_map(std::future::ready);
        Ok(Response::new(Box::pin(answers.chain(last))))
    }
}

impl ForwardService {
    /// One forwarded write, served as its unary call: the answer, or the call's status.
    async fn serve(&self, write: ForwardedWrite) -> forwarded_answer::Answer {
        let answer = match self.call(write).await {
            Ok(answer) => answer,
            Err(status) => return forwarded_answer::Answer::Status(status_message(&status)),
        };
        let size = match &answer {
            forwarded_answer::Answer::Put(r) => r.encoded_len(),
            forwarded_answer::Answer::Delete(r) => r.encoded_len(),
            forwarded_answer::Answer::Txn(r) => r.encoded_len(),
            forwarded_answer::Answer::Status(_) => 0,
        };
        if size > MAX_STREAMED_WRITE_BYTES {
            let e = ServiceError::ResourceExhausted(format!(
                "the answer to this forwarded write is {size} bytes, more than the {MAX_STREAMED_WRITE_BYTES} an answer may carry (MAX_DECODE_BYTES); the write was done: send the reads of the transaction to the leader directly, or read less at once"
            ));
            return forwarded_answer::Answer::Status(status_message(&Status::from(e)));
        }
        answer
    }

    async fn call(&self, write: ForwardedWrite) -> Result<forwarded_answer::Answer, Status> {
        let Some(op) = write.write else {
            return Err(ServiceError::InvalidArgument(
                "a forwarded write without a Put, Delete or Txn request; send one".into(),
            )
            .into());
        };
        let (path, bytes) = match &op {
            forwarded_write::Write::Put(r) => ("/raftkv.v1.KV/Put", r.encoded_len()),
            forwarded_write::Write::Delete(r) => ("/raftkv.v1.KV/Delete", r.encoded_len()),
            forwarded_write::Write::Txn(r) => ("/raftkv.v1.KV/Txn", r.encoded_len()),
        };
        let slot = self.overload.admit(path, bytes)?;
        let limit = self.overload.request_timeout();
        let timeout = Duration::from_micros(write.timeout_micros).min(limit);
        let mut metadata = MetadataMap::new();
        metadata.insert(FORWARDED_HEADER, MetadataValue::from_static("1"));
        if !write.authorization.is_empty() {
            let value = MetadataValue::try_from(write.authorization.as_str()).map_err(|_| {
                ServiceError::Unauthenticated(
                    "the forwarded write's authorization is not valid metadata; send `Bearer <token>`".into(),
                )
            })?;
            metadata.insert(crate::auth::AUTHORIZATION_HEADER, value);
        }
        let mut extensions = tonic::Extensions::new();
        extensions.insert(slot.clone());
        let kv = &self.kv;
        let served = async move {
            let parts = (metadata, extensions, timeout);
            match op {
                forwarded_write::Write::Put(r) => {
                    kv.put(unary_request(parts, r)).await.map(|a| forwarded_answer::Answer::Put(a.into_inner()))
                }
                forwarded_write::Write::Delete(r) => {
                    kv.delete(unary_request(parts, r)).await.map(|a| forwarded_answer::Answer::Delete(a.into_inner()))
                }
                forwarded_write::Write::Txn(r) => {
                    kv.txn(unary_request(parts, r)).await.map(|a| forwarded_answer::Answer::Txn(a.into_inner()))
                }
            }
        };
        let answer = match tokio::time::timeout(limit + TIMEOUT_GRACE, served).await {
            Ok(answer) => answer,
            Err(_) => Err(self.overload.timed_out()),
        };
        drop(slot);
        answer
    }
}

/// The unary request a forwarded write stands for: `message` with its metadata, its
/// extensions (its place under the overload limits) and its deadline.
fn unary_request<T>(
    (metadata, extensions, timeout): (MetadataMap, tonic::Extensions, Duration),
    message: T,
) -> Request<T> {
    let mut request = Request::from_parts(metadata, extensions, message);
    request.set_timeout(timeout);
    request
}
