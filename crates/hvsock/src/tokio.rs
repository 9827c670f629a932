//! The tokio API: [`VsockListener`], [`VsockStream`], [`HvListener`] and
//! [`HvStream`] with `accept().await`, `AsyncRead` and `AsyncWrite`, and
//! read/write halves.
//!
//! Built on the blocking API's non-blocking attempts. A stream that would
//! block registers the task's waker with its channel's signal, which fires
//! when the peer signals the channel (one thread per process watches the
//! peers' signals for every such stream, see `doorbell`), so no thread and
//! no descriptor is spent per connection. The reading and writing sides
//! register on the same signal (it means data *or* space) and each
//! re-checks its own condition. A listener's queue is watched through its
//! eventfd with `AsyncFd`. Setting up (connect, bind) waits for the host on
//! a blocking-pool thread.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::addr::{HvAddr, VsockAddr};
use crate::blocking::{self, ConnectOptions, Guest, Host, Listener, Stream};
use crate::channel::{ChannelIo, Wait};

const NONBLOCKING: Wait = Wait {
    nonblocking: true,
    deadline: None,
};

/// Registers a duplicate of `fd` with the reactor.
#[expect(
    deprecated,
    reason = "AsyncFd::register is unsafe for AsRawFd types that may close or swap their fd; \
              an OwnedFd does neither, and this crate forbids unsafe code"
)]
fn async_fd(fd: impl AsFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::new(fd.as_fd().try_clone_to_owned()?)
}

/// A stream shared by the stream type and its halves.
#[derive(Debug)]
struct Inner {
    stream: Stream,
}

impl Inner {
    fn new(stream: Stream) -> Arc<Self> {
        Arc::new(Self { stream })
    }

    /// Makes one non-blocking `attempt`; if it would block, arranges for the
    /// task to be woken by the channel's next signal.
    fn poll_io<T>(
        &self,
        cx: &mut Context<'_>,
        mut attempt: impl FnMut(&ChannelIo) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        let io = self.stream.io();
        loop {
            // Taken before the attempt: a signal between the attempt and
            // the registration moves it, and we try again.
            let seen = io.generation();
            match attempt(io) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return Poll::Ready(other),
            }
            io.register_waker(cx.waker())?;
            if io.generation() == seen {
                return Poll::Pending;
            }
        }
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let n = ready!(self.poll_io(cx, |io| io.read(buf.initialize_unfilled(), NONBLOCKING)))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_io(cx, |io| io.write(buf, NONBLOCKING))
    }

    async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_io(cx, |io| io.peek(buf, NONBLOCKING))).await
    }
}

/// Defines a tokio stream type and its halves over [`Inner`].
macro_rules! async_stream {
    ($name:ident, $read_half:ident, $write_half:ident, $addr:ty, $blocking:ty) => {
        /// An async stream (see the module docs).
        #[derive(Debug)]
        pub struct $name(Arc<Inner>);

        /// The reading half of a stream, owned.
        #[derive(Debug)]
        pub struct $read_half(Arc<Inner>);

        /// The writing half of a stream, owned. Dropping it does not shut
        /// down writing; call `shutdown()` (or drop both halves).
        #[derive(Debug)]
        pub struct $write_half(Arc<Inner>);

        impl $name {
            /// Wraps a blocking stream.
            pub fn from_std(stream: $blocking) -> io::Result<Self> {
                Ok(Self(Inner::new(stream.0)))
            }

            /// The peer's address.
            pub fn peer_addr(&self) -> io::Result<$addr> {
                <$blocking>::from_stream(self.0.stream.clone()).peer_addr()
            }

            /// Our address.
            pub fn local_addr(&self) -> io::Result<$addr> {
                <$blocking>::from_stream(self.0.stream.clone()).local_addr()
            }

            /// Reads without consuming (MSG_PEEK).
            pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
                self.0.peek(buf).await
            }

            /// Splits into owned halves that can move to different tasks.
            pub fn into_split(self) -> ($read_half, $write_half) {
                (($read_half)(self.0.clone()), ($write_half)(self.0))
            }

            /// Splits into borrowed halves.
            pub fn split(&mut self) -> ($read_half, $write_half) {
                (($read_half)(self.0.clone()), ($write_half)(self.0.clone()))
            }
        }

        impl AsyncRead for $name {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                self.0.poll_read(cx, buf)
            }
        }

        impl AsyncRead for $read_half {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                self.0.poll_read(cx, buf)
            }
        }

        impl AsyncWrite for $name {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.0.poll_write(cx, buf)
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            /// Sends the FIN.
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(self.0.stream.shutdown(Shutdown::Write))
            }
        }

        impl AsyncWrite for $write_half {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.0.poll_write(cx, buf)
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            /// Sends the FIN.
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(self.0.stream.shutdown(Shutdown::Write))
            }
        }
    };
}

async_stream!(
    VsockStream,
    VsockReadHalf,
    VsockWriteHalf,
    VsockAddr,
    blocking::VsockStream
);
async_stream!(
    HvStream,
    HvReadHalf,
    HvWriteHalf,
    HvAddr,
    blocking::HvStream
);

impl VsockStream {
    /// Connects to `addr` on the host; see [`blocking::VsockStream::connect`].
    pub async fn connect(guest: &Guest, addr: VsockAddr) -> io::Result<Self> {
        Self::connect_with(guest, addr, ConnectOptions::default()).await
    }

    /// Connects with options (ring size, timeout).
    pub async fn connect_with(
        guest: &Guest,
        addr: VsockAddr,
        options: ConnectOptions,
    ) -> io::Result<Self> {
        let guest = guest.clone();
        let stream =
            blocking_task(move || blocking::VsockStream::connect_with(&guest, addr, &options))
                .await?;
        Self::from_std(stream)
    }
}

impl HvStream {
    /// Connects to `addr`; see [`blocking::HvStream::connect`].
    pub async fn connect(host: &Host, addr: HvAddr) -> io::Result<Self> {
        let host = host.clone();
        let stream = blocking_task(move || blocking::HvStream::connect(&host, addr)).await?;
        Self::from_std(stream)
    }
}

async fn blocking_task<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("the set-up task failed: {e}")))?
}

/// Waits on a listener's queue.
async fn accept(listener: &Listener, ready: &AsyncFd<OwnedFd>) -> io::Result<Stream> {
    loop {
        let mut guard = ready.readable().await?;
        match listener.accept_nonblocking() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
            other => return other,
        }
    }
}

/// Defines a tokio listener over a blocking one: `from_std`, `accept`,
/// `local_addr`.
macro_rules! async_listener {
    ($(#[$doc:meta])* $name:ident, $blocking:ty, $stream:ident, $addr:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            listener: $blocking,
            ready: AsyncFd<OwnedFd>,
        }

        impl $name {
            /// Wraps a blocking listener.
            pub fn from_std(listener: $blocking) -> io::Result<Self> {
                let ready = async_fd(&listener)?;
                // Connections may be queued already (see `Inner::new`).
                listener.inner.shared.waiter.wake();
                Ok(Self { listener, ready })
            }

            /// Waits for the peer to connect.
            pub async fn accept(&self) -> io::Result<($stream, $addr)> {
                let stream = $stream(Inner::new(
                    accept(&self.listener.inner, &self.ready).await?,
                ));
                let peer = stream.peer_addr()?;
                Ok((stream, peer))
            }

            /// The address listened on.
            pub fn local_addr(&self) -> io::Result<$addr> {
                self.listener.local_addr()
            }
        }
    };
}

async_listener!(
    /// A guest listening on a vsock port.
    VsockListener,
    blocking::VsockListener,
    VsockStream,
    VsockAddr
);
async_listener!(
    /// The host listening on a service.
    HvListener,
    blocking::HvListener,
    HvStream,
    HvAddr
);

impl VsockListener {
    /// Listens on `addr.port`; see [`blocking::VsockListener::bind`].
    pub async fn bind(guest: &Guest, addr: VsockAddr) -> io::Result<Self> {
        let guest = guest.clone();
        let listener = blocking_task(move || blocking::VsockListener::bind(&guest, addr)).await?;
        Self::from_std(listener)
    }
}

impl HvListener {
    /// Listens; see [`blocking::HvListener::bind`].
    pub async fn bind(host: &Host, addr: HvAddr) -> io::Result<Self> {
        let host = host.clone();
        let listener = blocking_task(move || blocking::HvListener::bind(&host, addr)).await?;
        Self::from_std(listener)
    }
}
