//! The relay: one thread per process that moves bytes between the
//! program's socketpair ends and the hvsock streams, and turns connections
//! a listener accepts into records on the listening descriptor.
//!
//! One epoll set watches, edge-triggered, the shim's end of every
//! socketpair and every stream's and listener's readiness eventfd. Each
//! event pumps its connection in both directions until nothing moves:
//!
//! - program → peer: read the pair, write the stream; end of file on the
//!   pair (the program shut down writing, or closed every copy of its
//!   descriptor) sends the FIN after the last byte;
//! - peer → program: read the stream, write the pair; the peer's FIN shuts
//!   the pair down for writing, so the program reads end of file after the
//!   last byte; a stream that can no longer be written shuts the pair down
//!   for reading, so the program's writes fail with EPIPE (and SIGPIPE) as
//!   the kernel decides.
//!
//! A connection ends when both directions have; a listener when the
//! program has closed it. The thread blocks every signal (it is started
//! with all signals blocked) and never calls an interposed function.

use std::io::{self, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

use hvsock_shm::EventFd;
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{self, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

use crate::runtime::{AnyListener, AnyStream, Runtime};
use crate::sock::{Sock, VmAddr, CID_HOST};

/// Bytes in flight per direction inside the relay.
const BUF: usize = 128 * 1024;

/// Size of a record on a listening descriptor: peer CID, peer port, local
/// CID, local port (native-endian u32s), with the connection's descriptor
/// attached (SCM_RIGHTS).
pub(crate) const RECORD: usize = 16;

const WAKE: u64 = u64::MAX;

/// What application threads hand the relay.
enum Command {
    /// A connected stream: relay between `pair` and `stream`.
    Conn {
        pair: OwnedFd,
        stream: AnyStream,
        sock: Weak<Sock>,
    },
    /// A listener: deliver its connections as records on `pair`.
    Listen {
        pair: OwnedFd,
        listener: AnyListener,
        port: u32,
        rt: Arc<Runtime>,
    },
    /// The process is exiting: forward what the program has written, send
    /// the FINs, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

#[derive(Debug)]
struct Shared {
    commands: Mutex<Vec<CommandBox>>,
    wake: EventFd,
}

/// `Command` is not `Debug` (streams are, runtimes are); a box that is.
struct CommandBox(Command);

impl std::fmt::Debug for CommandBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// The handle application threads use to reach the relay thread.
#[derive(Debug)]
pub(crate) struct Relay {
    shared: Arc<Shared>,
}

impl Relay {
    /// Starts the relay thread. Call with signals blocked.
    pub(crate) fn start() -> io::Result<Relay> {
        let shared = Arc::new(Shared {
            commands: Mutex::default(),
            wake: EventFd::new().map_err(io::Error::other)?,
        });
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            shared.wake.as_fd(),
            epoll::EventData::new_u64(WAKE),
            epoll::EventFlags::IN,
        )?;
        let mut thread = RelayThread {
            shared: shared.clone(),
            epoll,
            entries: std::collections::HashMap::new(),
            next_id: 0,
            flushing: None,
        };
        std::thread::Builder::new()
            .name("hvsock-relay".into())
            .spawn(move || {
                crate::inside::mark_thread();
                thread.run();
            })?;
        Ok(Relay { shared })
    }

    fn send(&self, command: Command) {
        self.shared
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(CommandBox(command));
        let _ = self.shared.wake.signal();
    }

    /// Relays between `pair` (the shim's end) and `stream`.
    pub(crate) fn add_conn(&self, pair: OwnedFd, stream: AnyStream, sock: Weak<Sock>) {
        self.send(Command::Conn { pair, stream, sock });
    }

    /// At exit: waits (up to `limit`) until the bytes the program wrote
    /// have gone into the streams and the FINs are sent; the process's
    /// exit would otherwise end the relay thread with data still in the
    /// socketpairs.
    pub(crate) fn flush(&self, limit: std::time::Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(Command::Flush(tx));
        let _ = rx.recv_timeout(limit);
    }

    /// Serves `listener`, delivering connections on `pair`.
    pub(crate) fn add_listener(
        &self,
        pair: OwnedFd,
        listener: AnyListener,
        port: u32,
        rt: Arc<Runtime>,
    ) {
        self.send(Command::Listen {
            pair,
            listener,
            port,
            rt,
        });
    }
}

/// Bytes read but not yet written on.
struct Buf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buf {
    fn new() -> Self {
        Self {
            data: vec![0u8; BUF].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }
    fn is_empty(&self) -> bool {
        self.start == self.end
    }
    fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }
}

impl AnyStream {
    /// The stream's readiness descriptor (made on first use).
    fn fd(&self) -> io::Result<BorrowedFd<'_>> {
        match self {
            AnyStream::Guest(s) => s.readiness_fd(),
            AnyStream::Host(s) => s.readiness_fd(),
        }
    }
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            AnyStream::Guest(s) => { s }.read(buf),
            AnyStream::Host(s) => { s }.read(buf),
        }
    }
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            AnyStream::Guest(s) => { s }.write(buf),
            AnyStream::Host(s) => { s }.write(buf),
        }
    }
    fn shutdown_write(&self) {
        let _ = match self {
            AnyStream::Guest(s) => s.shutdown(Shutdown::Write),
            AnyStream::Host(s) => s.shutdown(Shutdown::Write),
        };
    }
    pub(crate) fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            AnyStream::Guest(s) => s.set_nonblocking(true),
            AnyStream::Host(s) => s.set_nonblocking(true),
        }
    }
}

impl AnyListener {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            AnyListener::Guest(l) => l.as_fd(),
            AnyListener::Host(l) => l.as_fd(),
        }
    }
}

/// One relayed connection.
struct Conn {
    pair: OwnedFd,
    stream: AnyStream,
    sock: Weak<Sock>,
    to_peer: Buf,
    to_app: Buf,
    /// The program will send no more (end of file on the pair).
    app_eof: bool,
    to_peer_done: bool,
    /// The peer will send no more (FIN, or gone).
    peer_eof: bool,
    to_app_done: bool,
    /// The process is exiting: no more bytes will come from the program
    /// once the pair is empty.
    exiting: bool,
}

impl Conn {
    fn new(pair: OwnedFd, stream: AnyStream, sock: Weak<Sock>) -> Self {
        Self {
            pair,
            stream,
            sock,
            to_peer: Buf::new(),
            to_app: Buf::new(),
            app_eof: false,
            to_peer_done: false,
            peer_eof: false,
            to_app_done: false,
            exiting: false,
        }
    }

    fn record_error(&self, errno: i32) {
        if let Some(sock) = self.sock.upgrade() {
            sock.state().so_error = errno;
        }
    }

    /// Moves bytes both ways until nothing moves; true when the
    /// connection is over.
    fn pump(&mut self) -> bool {
        loop {
            let mut moved = false;
            if !self.to_peer_done {
                moved |= self.pump_to_peer();
            }
            if !self.to_app_done {
                moved |= self.pump_to_app();
            }
            if !moved {
                return self.to_peer_done && self.to_app_done;
            }
        }
    }

    fn pump_to_peer(&mut self) -> bool {
        let mut moved = false;
        if self.to_peer.is_empty() && !self.app_eof {
            let buf = &mut self.to_peer.data[..];
            match net::recv(&self.pair, buf, RecvFlags::DONTWAIT) {
                Ok((_, 0)) => {
                    self.app_eof = true;
                    moved = true;
                }
                Ok((_, n)) => {
                    self.to_peer.end = n;
                    moved = true;
                }
                Err(Errno::AGAIN) if self.exiting => {
                    self.app_eof = true;
                    moved = true;
                }
                Err(Errno::AGAIN) | Err(Errno::INTR) => {}
                Err(_) => {
                    self.app_eof = true;
                    moved = true;
                }
            }
        }
        if !self.to_peer.is_empty() {
            match self.stream.write(self.to_peer.pending()) {
                Ok(n) => {
                    self.to_peer.consume(n);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // The peer cannot take more: the program's writes now
                    // fail with EPIPE.
                    self.record_error(crate::runtime::errno_of(&e));
                    self.to_peer.clear();
                    let _ = net::shutdown(&self.pair, net::Shutdown::Read);
                    self.to_peer_done = true;
                    return true;
                }
            }
        }
        if self.to_peer.is_empty() && self.app_eof {
            self.stream.shutdown_write();
            self.to_peer_done = true;
            moved = true;
        }
        moved
    }

    fn pump_to_app(&mut self) -> bool {
        let mut moved = false;
        if self.to_app.is_empty() && !self.peer_eof {
            match self.stream.read(&mut self.to_app.data[..]) {
                Ok(0) => {
                    self.peer_eof = true;
                    moved = true;
                }
                Ok(n) => {
                    self.to_app.end = n;
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.record_error(crate::runtime::errno_of(&e));
                    self.peer_eof = true;
                    moved = true;
                }
            }
        }
        if !self.to_app.is_empty() {
            match net::send(
                &self.pair,
                self.to_app.pending(),
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(n) => {
                    self.to_app.consume(n);
                    moved = true;
                }
                Err(Errno::AGAIN) | Err(Errno::INTR) => {}
                Err(_) => {
                    // The program closed its end: drop what it will never
                    // read.
                    self.to_app.clear();
                    self.to_app_done = true;
                    return true;
                }
            }
        }
        if self.to_app.is_empty() && self.peer_eof {
            let _ = net::shutdown(&self.pair, net::Shutdown::Write);
            self.to_app_done = true;
            moved = true;
        }
        moved
    }
}

/// One listener.
struct Listener {
    pair: OwnedFd,
    listener: AnyListener,
    port: u32,
    rt: Arc<Runtime>,
}

enum Entry {
    Conn(Box<Conn>),
    Listener(Box<Listener>),
}

struct RelayThread {
    shared: Arc<Shared>,
    epoll: OwnedFd,
    entries: std::collections::HashMap<u64, Entry>,
    next_id: u64,
    /// Who waits for the exit flush to finish.
    flushing: Option<std::sync::mpsc::Sender<()>>,
}

impl RelayThread {
    fn run(&mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        loop {
            events.clear();
            if self.flushing.is_some() && self.flushed() {
                if let Some(done) = self.flushing.take() {
                    let _ = done.send(());
                }
            }
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(_) => return,
            }
            for event in &events {
                let token = event.data.u64();
                if token == WAKE {
                    let _ = self.shared.wake.try_wait();
                    self.commands();
                } else {
                    self.handle(token >> 1, event.flags);
                }
            }
        }
    }

    fn commands(&mut self) {
        let commands = std::mem::take(
            &mut *self
                .shared
                .commands
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for CommandBox(command) in commands {
            let id = self.next_id;
            self.next_id += 1;
            match command {
                Command::Flush(done) => {
                    self.flushing = Some(done);
                    let ids: Vec<u64> = self.entries.keys().copied().collect();
                    for id in ids {
                        if let Some(Entry::Conn(conn)) = self.entries.get_mut(&id) {
                            conn.exiting = true;
                        }
                        self.handle(id, epoll::EventFlags::IN);
                    }
                }
                Command::Conn { pair, stream, sock } => {
                    if stream.set_nonblocking().is_err() {
                        let _ = net::shutdown(&pair, net::Shutdown::Both);
                        continue;
                    }
                    self.add_conn(id, Conn::new(pair, stream, sock));
                }
                Command::Listen {
                    pair,
                    listener,
                    port,
                    rt,
                } => {
                    let l = Listener {
                        pair,
                        listener,
                        port,
                        rt,
                    };
                    let ok = epoll::add(
                        &self.epoll,
                        &l.pair,
                        epoll::EventData::new_u64(id << 1),
                        epoll::EventFlags::RDHUP | epoll::EventFlags::ET,
                    )
                    .and_then(|()| {
                        epoll::add(
                            &self.epoll,
                            l.listener.fd(),
                            epoll::EventData::new_u64((id << 1) | 1),
                            epoll::EventFlags::IN | epoll::EventFlags::ET,
                        )
                    });
                    if ok.is_ok() {
                        self.entries.insert(id, Entry::Listener(Box::new(l)));
                        self.handle(id, epoll::EventFlags::IN);
                    }
                }
            }
        }
    }

    /// Every connection has sent all the program wrote, and its FIN.
    fn flushed(&self) -> bool {
        self.entries.values().all(|e| match e {
            Entry::Conn(conn) => conn.to_peer_done,
            Entry::Listener(_) => true,
        })
    }

    fn add_conn(&mut self, id: u64, conn: Conn) {
        let ok = epoll::add(
            &self.epoll,
            &conn.pair,
            epoll::EventData::new_u64(id << 1),
            epoll::EventFlags::IN
                | epoll::EventFlags::OUT
                | epoll::EventFlags::RDHUP
                | epoll::EventFlags::ET,
        )
        .map_err(io::Error::from)
        .and_then(|()| {
            epoll::add(
                &self.epoll,
                conn.stream.fd()?,
                epoll::EventData::new_u64((id << 1) | 1),
                epoll::EventFlags::IN | epoll::EventFlags::ET,
            )
            .map_err(io::Error::from)
        });
        if ok.is_err() {
            let _ = net::shutdown(&conn.pair, net::Shutdown::Both);
            return;
        }
        self.entries.insert(id, Entry::Conn(Box::new(conn)));
        self.handle(id, epoll::EventFlags::IN);
    }

    fn handle(&mut self, id: u64, flags: epoll::EventFlags) {
        let done = match self.entries.get_mut(&id) {
            None => return,
            Some(Entry::Conn(conn)) => conn.pump(),
            Some(Entry::Listener(l)) => {
                if flags.intersects(epoll::EventFlags::HUP | epoll::EventFlags::RDHUP) {
                    true
                } else {
                    let new = accept_all(l);
                    for (pair, stream) in new {
                        let id = self.next_id;
                        self.next_id += 1;
                        self.add_conn(id, Conn::new(pair, stream, Weak::new()));
                    }
                    false
                }
            }
        };
        if done {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: u64) {
        match self.entries.remove(&id) {
            Some(Entry::Conn(conn)) => {
                let _ = epoll::delete(&self.epoll, &conn.pair);
                if let Ok(fd) = conn.stream.fd() {
                    let _ = epoll::delete(&self.epoll, fd);
                }
                let _ = net::shutdown(&conn.pair, net::Shutdown::Both);
            }
            Some(Entry::Listener(l)) => {
                let _ = epoll::delete(&self.epoll, &l.pair);
                let _ = epoll::delete(&self.epoll, l.listener.fd());
                let _ = net::shutdown(&l.pair, net::Shutdown::Both);
            }
            None => {}
        }
    }
}

/// Accepts every queued connection and hands each to the program as a
/// record on the listening descriptor; returns the relay's ends.
fn accept_all(l: &Listener) -> Vec<(OwnedFd, AnyStream)> {
    let mut out = Vec::new();
    loop {
        let accepted = match &l.listener {
            AnyListener::Guest(listener) => listener.accept().map(|(s, peer)| {
                let local = VmAddr {
                    cid: l.rt.local_cid(),
                    port: l.port,
                };
                let peer = VmAddr {
                    cid: CID_HOST,
                    port: peer.port,
                };
                (AnyStream::Guest(s), local, peer)
            }),
            AnyListener::Host(listener) => listener.accept().map(|(s, peer)| {
                let local = VmAddr {
                    cid: CID_HOST,
                    port: l.port,
                };
                let peer = VmAddr {
                    cid: l.rt.cid_of(peer.vm_id),
                    port: peer.service_id.data1(),
                };
                (AnyStream::Host(s), local, peer)
            }),
        };
        let (stream, local, peer) = match accepted {
            Ok(a) => a,
            Err(_) => return out,
        };
        if stream.set_nonblocking().is_err() {
            continue;
        }
        let Ok((app, relay)) = net::socketpair(
            net::AddressFamily::UNIX,
            net::SocketType::STREAM,
            net::SocketFlags::CLOEXEC,
            None,
        ) else {
            continue;
        };
        let mut record = [0u8; RECORD];
        for (i, word) in [peer.cid, peer.port, local.cid, local.port]
            .into_iter()
            .enumerate()
        {
            record[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [app.as_fd()];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            continue;
        }
        let sent = net::sendmsg(
            &l.pair,
            &[IoSlice::new(&record)],
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        );
        // Our copy of the program's end goes; the one in flight stays.
        drop(app);
        if sent == Ok(RECORD) {
            out.push((relay, stream));
        }
    }
}
