//! The HTTP server's connections, bounded against clients that hold them without using them.
//!
//! - At most [`MAX_CONNECTIONS`] are open. When all are taken, a new connection closes the one
//!   that has waited longest for a request to arrive (silent since it was accepted, sending
//!   a request slowly, or idle after its answers) if it has waited at least [`EVICT_AFTER`]:
//!   clients that hold connections without sending requests cannot lock others out. Answers
//!   in progress and live streams (which write every 10 s) are never taken.
//! - A request must arrive whole within [`REQUEST_DEADLINE`] of its first byte (the first within
//!   that of the connection's accept): headers sent a byte at a time do not hold a connection,
//!   and bytes that trickle in do not extend it.
//! - A connection idle after its answers is closed after [`IDLE_TIMEOUT`], and one whose client
//!   stops reading an answer as well.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::sync::lock;

/// Most HTTP connections open at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// A connection idle after its answers for this long is closed (live streams send a keep-alive
/// comment far more often).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A request must arrive whole within this long of its first byte (or of the accept).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// With every slot taken, a connection waiting this long for a request may be closed to make
/// room for a new one.
pub const EVICT_AFTER: Duration = Duration::from_secs(1);
/// A connection silent this long since its last answer is idle (live streams write every 10 s).
const QUIET_AFTER_ANSWER: Duration = Duration::from_secs(30);

/// A listener that holds at most [`MAX_CONNECTIONS`] connections open, and sets `TCP_NODELAY`
/// (answers are small and written in pieces: Nagle's algorithm would hold them back).
pub struct Bounded {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    open: Arc<Open>,
}

impl Bounded {
    pub fn new(inner: TcpListener) -> Self {
        Bounded { inner, permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)), open: Arc::default() }
    }
}

impl axum::serve::Listener for Bounded {
    type Io = Connection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Connection, std::net::SocketAddr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(%error, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Every slot taken: room is made by closing a connection that is only waiting, as
            // soon as one has waited long enough (this one waits meanwhile, unanswered).
            let permit = loop {
                if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                    break permit;
                }
                if let Some(waited) = self.open.evict() {
                    tracing::debug!(
                        waited_ms = waited.as_millis() as u64,
                        "closed a waiting HTTP connection to make room"
                    );
                }
                tokio::select! {
                    permit = self.permits.clone().acquire_owned() => match permit {
                        Ok(permit) => break permit,
                        // The semaphore is never closed; wait forever rather than spin if it were.
                        Err(_) => std::future::pending::<()>().await,
                    },
                    () = tokio::time::sleep(EVICT_AFTER / 4) => {}
                }
            };
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            return (Connection::new(stream, permit, &self.open), addr);
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// The open connections, as eviction sees them.
#[derive(Default)]
struct Open {
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next: AtomicU64,
}

impl Open {
    /// Closes the connection that has waited longest for a request, if one waited at least
    /// [`EVICT_AFTER`]; returns how long it waited.
    fn evict(&self) -> Option<Duration> {
        let now = Instant::now();
        let slots = lock(&self.slots);
        let (victim, waited) = slots
            .values()
            .filter_map(|slot| {
                let waited = lock(&slot.state).waiting(now)?;
                (waited >= EVICT_AFTER).then_some((slot, waited))
            })
            .max_by_key(|(_, waited)| *waited)?;
        victim.evicted.store(true, Ordering::Relaxed);
        victim.waker.wake();
        Some(waited)
    }
}

/// One connection, as eviction sees it.
struct Slot {
    state: Mutex<State>,
    /// Closed to make room: its next read fails.
    evicted: AtomicBool,
    /// Its task, woken when it is evicted.
    waker: AtomicWaker,
}

/// What a connection is doing.
struct State {
    /// Whether the last thing it did was to write an answer (else it is waiting for a request:
    /// just accepted, or request bytes arriving).
    answered: bool,
    /// Since when it is in that state (for an answered one: its last write).
    since: Instant,
}

impl State {
    /// How long it has been waiting for a request, if it is.
    fn waiting(&self, now: Instant) -> Option<Duration> {
        let quiet = now.saturating_duration_since(self.since);
        match self.answered {
            false => Some(quiet),
            true => (quiet >= QUIET_AFTER_ANSWER).then_some(quiet),
        }
    }
}

/// An accepted connection (see the module's bounds); frees its slot when dropped.
pub struct Connection {
    stream: TcpStream,
    slot: Arc<Slot>,
    /// When it is closed: the request deadline while waiting for one, the idle timeout after
    /// an answer.
    deadline: Pin<Box<tokio::time::Sleep>>,
    id: u64,
    open: Arc<Open>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, open: &Arc<Open>) -> Self {
        let now = Instant::now();
        let slot = Arc::new(Slot {
            state: Mutex::new(State { answered: false, since: now }),
            evicted: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let id = open.next.fetch_add(1, Ordering::Relaxed);
        lock(&open.slots).insert(id, slot.clone());
        let deadline = Box::pin(tokio::time::sleep_until(now + REQUEST_DEADLINE));
        Connection { stream, slot, deadline, id, open: open.clone(), _permit: permit }
    }

    /// Bytes read: the first after an answer start a request, which has until the deadline to
    /// arrive whole.
    fn on_read(&mut self) {
        let mut slot = lock(&self.slot.state);
        if slot.answered {
            let now = Instant::now();
            (slot.answered, slot.since) = (false, now);
            self.deadline.as_mut().reset(now + REQUEST_DEADLINE);
        }
    }

    /// A write's outcome: progress is an answer (idle timeout from now); a client that has not
    /// read for the idle timeout is dropped.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(written)) => {
                let now = Instant::now();
                let mut slot = lock(&self.slot.state);
                (slot.answered, slot.since) = (true, now);
                self.deadline.as_mut().reset(now + IDLE_TIMEOUT);
                Poll::Ready(Ok(written))
            }
            Poll::Pending if self.deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "HTTP client stopped reading")))
            }
            other => other,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        lock(&self.open.slots).remove(&self.id);
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.slot.evicted.load(Ordering::Relaxed) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room: every connection slot was taken",
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.on_read();
                }
                Poll::Ready(result)
            }
            Poll::Pending if this.deadline.as_mut().poll(cx).is_ready() => {
                let why = match lock(&this.slot.state).answered {
                    true => "idle HTTP connection",
                    false => "HTTP request not received in time",
                };
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
            }
            Poll::Pending => {
                this.slot.waker.register(cx.waker());
                // Evicted between the check above and the registration: not to be missed.
                if this.slot.evicted.load(Ordering::Relaxed) {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, data);
        this.after_write(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
