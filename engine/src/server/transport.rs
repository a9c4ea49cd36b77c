//! The gRPC listener's guard against clients that hold connections without using them.
//!
//! Every accepted connection takes one of `limits.connections_max` slots for as long as it
//! is open; a connection past the limit is closed at accept, so idle sockets can never use
//! up the descriptors the ledger needs for its own files. A connection that sends nothing
//! within `limits.handshake_timeout_ms` of being accepted is closed, so a slot held by a
//! socket that never speaks comes back. Live but silent connections are found by HTTP/2
//! keepalive pings (set on the server builder). A failed accept (the descriptor limit
//! reached) waits a moment before the next, rather than spinning a core.
//!
//! This module knows sockets and time only: never a request, a token or a tap.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::metrics::Metrics;

/// How long the listener waits after a failed accept before it accepts again.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Descriptors kept free of connections and RocksDB's table files: the write-ahead log,
/// RocksDB's own logs and manifest, the metrics listener, settlement files being pulled,
/// the key registry written back.
pub const DESCRIPTORS_RESERVED: u64 = 64;

/// Fewest connections an engine starts with: a descriptor limit that leaves fewer is a
/// misconfigured machine, not a small deployment.
pub const CONNECTIONS_MIN: usize = 16;

/// How the process's descriptors are shared out, from its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// The process's soft limit on open files.
    pub limit: u64,
    /// Table files RocksDB may keep open.
    pub ledger_files_max: usize,
    /// Connections the listener accepts at once.
    pub connections_max: usize,
}

impl DescriptorBudget {
    /// Shares out `limit` descriptors: RocksDB's table files first (up to what it asks,
    /// at most half of what is left after the reserve), then connections (up to what is
    /// configured). Refused when fewer than [`CONNECTIONS_MIN`] connections would fit.
    pub fn share(
        limit: u64,
        ledger_files_wanted: usize,
        connections_wanted: usize,
    ) -> Result<DescriptorBudget, String> {
        let usable = limit.saturating_sub(DESCRIPTORS_RESERVED);
        let ledger_files_max = (ledger_files_wanted as u64).min(usable / 2);
        let connections_max =
            (connections_wanted as u64).min(usable.saturating_sub(ledger_files_max));
        if connections_max < CONNECTIONS_MIN as u64 {
            return Err(format!(
                "the open-file limit of {limit} descriptors leaves room for {connections_max} connections beside the ledger's {ledger_files_max} files and {DESCRIPTORS_RESERVED} reserved; at least {CONNECTIONS_MIN} are needed: raise it (ulimit -n)"
            ));
        }
        Ok(DescriptorBudget {
            limit,
            ledger_files_max: ledger_files_max as usize,
            connections_max: connections_max as usize,
        })
    }
}

/// The process's soft limit on open files, from `/proc/self/limits` (no limit reads as
/// `u64::MAX`). `None` where the file cannot be read.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        number => number.parse().ok(),
    }
}

/// Accepted connections, each holding a slot; past the limit, closed at once.
#[derive(Debug)]
pub struct GuardedIncoming {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
    backoff: Option<Pin<Box<Sleep>>>,
}

impl GuardedIncoming {
    /// Guards `listener` with `connections_max` slots.
    pub fn new(
        listener: TcpListener,
        connections_max: usize,
        handshake_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> GuardedIncoming {
        GuardedIncoming {
            listener,
            slots: Arc::new(Semaphore::new(connections_max)),
            handshake_timeout,
            metrics,
            backoff: None,
        }
    }
}

impl tokio_stream::Stream for GuardedIncoming {
    type Item = io::Result<GuardedStream>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(backoff) = self.backoff.as_mut() {
                ready!(backoff.as_mut().poll(context));
                self.backoff = None;
            }
            match ready!(self.listener.poll_accept(context)) {
                Ok((stream, _peer)) => {
                    let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
                        // Dropping the socket closes it: the client sees the connection
                        // end at once and may try another engine node.
                        self.metrics.record_connection_refused();
                        continue;
                    };
                    // Taps are small and answered at once: no Nagle delay.
                    let _ = stream.set_nodelay(true);
                    let open = self.metrics.connections_open();
                    return Poll::Ready(Some(Ok(GuardedStream::new(
                        stream,
                        slot,
                        self.handshake_timeout,
                        open,
                    ))));
                }
                Err(err) => {
                    self.metrics.record_accept_failure(&err);
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_RETRY)));
                }
            }
        }
    }
}

/// One accepted connection: its socket, its slot, and the deadline for its first byte.
#[derive(Debug)]
pub struct GuardedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Until the client's first byte arrives.
    handshake: Option<Pin<Box<Sleep>>>,
    open: Gauge,
}

impl GuardedStream {
    fn new(
        stream: TcpStream,
        slot: OwnedSemaphorePermit,
        handshake_timeout: Duration,
        open: Gauge,
    ) -> GuardedStream {
        open.inc();
        GuardedStream {
            stream,
            _slot: slot,
            handshake: Some(Box::pin(tokio::time::sleep(handshake_timeout))),
            open,
        }
    }
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(context, buf);
        let Some(deadline) = self.handshake.as_mut() else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.handshake = None;
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(context).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent nothing within the handshake timeout",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(context, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_shared_between_the_ledger_and_connections() {
        // Plenty: each gets what it asks.
        let plenty = DescriptorBudget::share(20_000, 1_024, 1_024).unwrap();
        assert_eq!(
            (plenty.ledger_files_max, plenty.connections_max),
            (1_024, 1_024)
        );
        // Debian's default soft limit: the ledger keeps half of what is usable.
        let debian = DescriptorBudget::share(1_024, 1_024, 1_024).unwrap();
        assert_eq!(
            (debian.ledger_files_max, debian.connections_max),
            (480, 480)
        );
        // 256 descriptors, as in the report that found the bug: still room for both.
        let small = DescriptorBudget::share(256, 1_024, 1_024).unwrap();
        assert_eq!((small.ledger_files_max, small.connections_max), (96, 96));
        let none = DescriptorBudget::share(64, 1_024, 1_024).unwrap_err();
        assert!(none.contains("ulimit -n"), "{none}");
    }

    #[test]
    fn the_open_files_limit_is_read_from_proc() {
        let limit = open_files_limit().unwrap();
        assert!(limit >= 64, "{limit}");
    }
}
