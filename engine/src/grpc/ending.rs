//! A response stream that ends with the status its producer decided, however full its
//! channel of messages was. A producer that fails (a stalled reader, a failed read) cannot
//! always put its error status into a full channel; this stream takes the end on a
//! channel of its own and delivers it after the messages already queued. It ends OK only
//! when the producer said so: one that died without a word ends `INTERNAL`.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Messages, then the producer's end.
#[derive(Debug)]
pub struct EndingStream<T> {
    messages: ReceiverStream<Result<T, Status>>,
    ended: Option<oneshot::Receiver<Result<(), Status>>>,
}

impl<T> EndingStream<T> {
    /// The messages of `messages`, then the end sent on `ended` (once every sender of
    /// `messages` is gone).
    pub fn new(
        messages: mpsc::Receiver<Result<T, Status>>,
        ended: oneshot::Receiver<Result<(), Status>>,
    ) -> EndingStream<T> {
        EndingStream {
            messages: ReceiverStream::new(messages),
            ended: Some(ended),
        }
    }
}

impl<T> tokio_stream::Stream for EndingStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.messages).poll_next(context) {
            Poll::Ready(None) => {}
            other => return other,
        }
        let Some(ended) = self.ended.as_mut() else {
            return Poll::Ready(None);
        };
        let outcome = match Pin::new(ended).poll(context) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(outcome)) => outcome,
            Poll::Ready(Err(_)) => Err(Status::internal(
                "the call's work stopped without saying how it ended",
            )),
        };
        self.ended = None;
        Poll::Ready(outcome.err().map(Err))
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

    use super::*;

    /// Collects a stream's items: the messages, then the end's status code.
    async fn drain(stream: EndingStream<u8>) -> (Vec<u8>, Option<tonic::Code>) {
        let mut messages = Vec::new();
        let mut end = None;
        for item in stream.collect::<Vec<_>>().await {
            match item {
                Ok(message) => messages.push(message),
                Err(status) => end = Some(status.code()),
            }
        }
        (messages, end)
    }

    fn stream(messages: &[u8], outcome: Option<Result<(), Status>>) -> EndingStream<u8> {
        let (sender, receiver) = mpsc::channel(4);
        for message in messages {
            sender
                .try_send(Ok(*message))
                .unwrap_or_else(|_| unreachable!());
        }
        drop(sender);
        let (end, ended) = oneshot::channel();
        if let Some(outcome) = outcome {
            end.send(outcome).unwrap_or_else(|_| unreachable!());
        }
        EndingStream::new(receiver, ended)
    }

    #[tokio::test]
    async fn a_stream_ends_ok_only_when_its_producer_says_so() {
        assert_eq!(
            drain(stream(&[1, 2], Some(Ok(())))).await,
            (vec![1, 2], None)
        );
        // A stalled reader: the messages already queued (the channel full), then the error.
        let stalled = Err(Status::deadline_exceeded("the client stopped reading"));
        assert_eq!(
            drain(stream(&[1, 2, 3, 4], Some(stalled))).await,
            (vec![1, 2, 3, 4], Some(tonic::Code::DeadlineExceeded))
        );
        // A producer that died without a word never ends OK either.
        assert_eq!(
            drain(stream(&[1], None)).await,
            (vec![1], Some(tonic::Code::Internal))
        );
    }
}
