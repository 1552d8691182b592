//! The client end of the transport: [`NetClient`], one per mount.
//!
//! Threads: a *manager* thread finds the leader (`find_server`), connects, greets, resends
//! unanswered requests, then sends pings and watches for silence until the connection breaks,
//! and starts over; a *reader* thread per connection decodes frames, completes waiting calls,
//! delivers lock grants and server calls to [`ClientCalls`]. Callers write their own
//! requests to the socket (one writer lock), so a call costs no thread hand-off.
//!
//! Reliable delivery (digest §7.2): every request gets an id from one counter that only grows,
//! stays in `pending` (id order) until its response arrives, and remembers the connection it
//! was last sent on; after a reconnect every pending request not yet sent on the new
//! connection is resent in id order. A response whose id is no longer pending is ignored. A
//! [`ServerError::Fenced`] answer fails that call, every waiting call and every later one.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use super::wire::{self, Frame, Message};
use super::{lock, millis, ping_interval};
use crate::msg::{ClientReply, NetLock, Request, Response, ServerCall, ServerError, ServerLink};

/// What the client hands to the mount: calls from the server, lock grants, connections.
/// Called from the client's threads; they must not block for long (a blocking `call` from
/// `server_call` is fine, `connected` and `lock_granted` should return promptly).
pub trait ClientCalls: Send + Sync {
    /// The server calls the client (invalidate, lock recover). Answer via
    /// [`NetClient::reply`]`(call_id, ..)`, possibly later and from another thread.
    fn server_call(&self, call_id: u64, call: ServerCall);
    /// The grant for a lock request sent with [`NetClient::send_lock`].
    fn lock_granted(&self, grant: NetLock);
    /// Connected and greeted: `new_server` = the server term differs from the last one we
    /// knew. Called before any frame of the connection is read or any unanswered request
    /// resent, under the connection's writer lock: it must not send.
    fn connected(&self, server_term: u64, new_server: bool);
}

/// How a [`NetClient`] finds and watches its server.
#[derive(Debug, Clone)]
pub struct NetClientOptions {
    pub fsid: u64,
    pub format_version: u64,
    pub rid: u64,
    /// Limit of one TCP connect.
    pub connect_timeout: Duration,
    /// A connection that brought no frame for this long is dead; pings go out every quarter
    /// of it. Also the limit for the answer to a greeting.
    pub idle_timeout: Duration,
    /// Fail everything after being without a server this long; `None` = keep trying forever.
    pub give_up_after: Option<Duration>,
}

impl NetClientOptions {
    /// Defaults: connect timeout 1 s, idle timeout 10 s, never give up.
    pub fn new(fsid: u64, format_version: u64, rid: u64) -> Self {
        Self {
            fsid,
            format_version,
            rid,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            give_up_after: None,
        }
    }
}

/// First delay between attempts to reach a server, doubled after each failure.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
const RETRY_MAX: Duration = Duration::from_millis(250);
/// The id of the transport's own greeting on each connection (callers' ids start at 1).
const GREETING_ID: u64 = 0;

/// A mount's connection to the server; see the module documentation.
pub struct NetClient {
    inner: Arc<Inner>,
    manager: Mutex<Option<JoinHandle<()>>>,
}

/// Returns the current leader's address, or `None` when none is known.
pub type FindServer = Box<dyn Fn() -> Option<SocketAddr> + Send + Sync>;

struct Inner {
    opts: NetClientOptions,
    find_server: FindServer,
    calls: Arc<dyn ClientCalls>,
    state: Mutex<State>,
    /// Wakes the manager (reader ended, shutdown) and `start` (first greeting, death).
    cond: Condvar,
    /// The writing side of the current connection; `None` while disconnected. Lock order:
    /// `writer` before `state`.
    writer: Mutex<Option<Writer>>,
    base: Instant,
    last_recv: AtomicU64,
    last_sent: AtomicU64,
    /// The reader is inside a [`ClientCalls`] callback: not reading is not silence.
    reader_busy: AtomicBool,
}

struct Writer {
    gen: u64,
    stream: TcpStream,
}

struct State {
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    server_term: u64,
    greeted_once: bool,
    /// Generation of the newest connection (each greeted connection gets the next one).
    gen: u64,
    /// Highest generation whose reader has ended.
    reader_done: u64,
    up: bool,
    /// Once set, every call fails with this error and the threads stop.
    dead: Option<ServerError>,
    /// A handle on the socket being connected or used, to shut it down from any thread.
    ctl: Option<TcpStream>,
    /// The client's own threads (manager and current reader): `shutdown` from them must not
    /// join.
    threads: Vec<ThreadId>,
}

struct Pending {
    frame: Arc<Vec<u8>>,
    /// Connection generation it was last written to (0 = never).
    sent_gen: u64,
    /// The blocked caller; `None` for lock requests (grants go to `lock_granted`).
    waiter: Option<SyncSender<Result<Response, ServerError>>>,
}

/// Why one attempt to reach a server failed.
enum Attempt {
    /// Try again later.
    Retry(String),
    /// The server refused us for good (fenced, wrong filesystem or format).
    Fatal(ServerError),
}

impl NetClient {
    /// Start: find the server with `find_server` (returns the leader's address or `None`;
    /// called again on every reconnect attempt, every 100 ms with back-off to 1 s), connect,
    /// greet (`Request::Greeting` with our rid and the last server_term we knew, 0 at first),
    /// and keep a reader thread.
    ///
    /// Returns once the first greeting was answered; fails if the server refused the greeting
    /// for good (fenced, wrong fsid or format) or no server answered within
    /// `give_up_after` (with `None` it waits for a server forever). The client stops when
    /// [`NetClient::shutdown`] is called or the last `Arc` is dropped (a [`ClientCalls`] that
    /// holds the client must call `shutdown`).
    pub fn start(
        opts: NetClientOptions,
        find_server: FindServer,
        calls: Arc<dyn ClientCalls>,
    ) -> Result<Arc<NetClient>, ServerError> {
        let inner = Arc::new(Inner {
            opts,
            find_server,
            calls,
            state: Mutex::new(State {
                next_id: GREETING_ID + 1,
                pending: BTreeMap::new(),
                server_term: 0,
                greeted_once: false,
                gen: 0,
                reader_done: 0,
                up: false,
                dead: None,
                ctl: None,
                threads: Vec::new(),
            }),
            cond: Condvar::new(),
            writer: Mutex::new(None),
            base: Instant::now(),
            last_recv: AtomicU64::new(0),
            last_sent: AtomicU64::new(0),
            reader_busy: AtomicBool::new(false),
        });
        let run = inner.clone();
        let manager = thread::Builder::new()
            .name("scoutgw-net-client".into())
            .spawn(move || run.run())
            .map_err(|e| ServerError::Unreachable(format!("spawn client thread: {e}")))?;
        let client = Arc::new(NetClient {
            inner,
            manager: Mutex::new(Some(manager)),
        });
        let failed = {
            let st = lock(&client.inner.state);
            let st = client
                .inner
                .cond
                .wait_while(st, |s| !s.greeted_once && s.dead.is_none())
                .unwrap_or_else(|e| e.into_inner());
            st.dead.clone()
        };
        match failed {
            Some(e) => {
                client.shutdown();
                Err(e)
            }
            None => Ok(client),
        }
    }

    /// Send a lock request without waiting: the grant arrives through
    /// [`ClientCalls::lock_granted`]. Like every request it is resent until answered.
    pub fn send_lock(&self, req: NetLock) -> Result<(), ServerError> {
        self.inner.submit(&Request::Lock(req), None).map(|_| ())
    }

    /// Answer server call `call_id`. Dropped when there is no connection (the server resends
    /// the call after the reconnect and this client answers again).
    pub fn reply(&self, call_id: u64, reply: ClientReply) {
        if lock(&self.inner.state).dead.is_some() {
            return;
        }
        match wire::encode_reply(call_id, &reply) {
            Ok(frame) => {
                let mut w = lock(&self.inner.writer);
                if let Some(wr) = w.as_mut() {
                    self.inner.write(wr, &frame);
                }
            }
            Err(e) => eprintln!("scoutgw: reply to server call {call_id} not sent: {e}"),
        }
    }

    /// The term of the last server that answered our greeting (0 before the first).
    pub fn server_term(&self) -> u64 {
        lock(&self.inner.state).server_term
    }

    /// Connected and greeted right now.
    pub fn connected(&self) -> bool {
        lock(&self.inner.state).up
    }

    /// Why the client stopped for good (fenced, shut down, gave up), if it did.
    pub fn stopped(&self) -> Option<ServerError> {
        lock(&self.inner.state).dead.clone()
    }

    /// Fail waiting calls with [`ServerError::Unreachable`], close the socket, stop the
    /// threads (joined unless called from one of them).
    pub fn shutdown(&self) {
        self.inner
            .die(ServerError::Unreachable("client shut down".into()));
        let own_thread = lock(&self.inner.state)
            .threads
            .contains(&thread::current().id());
        if !own_thread {
            if let Some(h) = lock(&self.manager).take() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for NetClient {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl ServerLink for NetClient {
    /// A blocking call: waits for the response however many reconnects it takes, until the
    /// client is fenced, shut down or gives up. `rid` must be the client's own.
    fn call(&self, rid: u64, req: Request) -> Result<Response, ServerError> {
        if rid != self.inner.opts.rid {
            return Err(ServerError::Invalid(format!(
                "call for rid {rid:016x} on the connection of rid {:016x}",
                self.inner.opts.rid
            )));
        }
        let (tx, rx) = sync_channel(1);
        self.inner.submit(&req, Some(tx))?;
        rx.recv()
            .unwrap_or_else(|_| Err(ServerError::Unreachable("client stopped".into())))
    }
}

impl Inner {
    fn now(&self) -> u64 {
        millis(self.base)
    }

    /// Queue a request and send it if connected.
    fn submit(
        &self,
        req: &Request,
        waiter: Option<SyncSender<Result<Response, ServerError>>>,
    ) -> Result<u64, ServerError> {
        let id = {
            let mut st = lock(&self.state);
            if let Some(e) = &st.dead {
                return Err(e.clone());
            }
            let id = st.next_id;
            let frame =
                wire::encode_request(id, req).map_err(|e| ServerError::Invalid(e.to_string()))?;
            st.next_id += 1;
            st.pending.insert(
                id,
                Pending {
                    frame: Arc::new(frame),
                    sent_gen: 0,
                    waiter,
                },
            );
            id
        };
        let mut w = lock(&self.writer);
        if let Some(wr) = w.as_mut() {
            let frame = {
                let mut st = lock(&self.state);
                match st.pending.get_mut(&id) {
                    Some(p) if p.sent_gen != wr.gen => {
                        p.sent_gen = wr.gen;
                        Some(p.frame.clone())
                    }
                    _ => None,
                }
            };
            if let Some(frame) = frame {
                self.write(wr, &frame);
            }
        }
        Ok(id)
    }

    /// Write one frame; a failed write shuts the socket down so the reader ends and the
    /// manager reconnects (the request stays pending).
    fn write(&self, wr: &mut Writer, frame: &[u8]) -> bool {
        match wr.stream.write_all(frame) {
            Ok(()) => {
                self.last_sent.store(self.now(), Ordering::Relaxed);
                true
            }
            Err(_) => {
                let _ = wr.stream.shutdown(Shutdown::Both);
                false
            }
        }
    }

    /// Fail everything with `err` (the first error sticks) and stop.
    fn die(&self, err: ServerError) {
        let mut st = lock(&self.state);
        let err = st.dead.get_or_insert(err).clone();
        for (_, p) in std::mem::take(&mut st.pending) {
            if let Some(w) = p.waiter {
                let _ = w.try_send(Err(err.clone()));
            }
        }
        if let Some(s) = &st.ctl {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.cond.notify_all();
    }

    fn stopping(&self) -> bool {
        lock(&self.state).dead.is_some()
    }

    /// The manager thread.
    fn run(self: Arc<Self>) {
        lock(&self.state).threads.push(thread::current().id());
        let mut backoff = RETRY_FIRST;
        let mut down_since = Instant::now();
        while !self.stopping() {
            match self.connect_and_greet() {
                Ok((stream, term)) => {
                    backoff = RETRY_FIRST;
                    self.serve(stream, term);
                    down_since = Instant::now();
                }
                Err(Attempt::Fatal(e)) => {
                    self.die(e);
                    break;
                }
                Err(Attempt::Retry(why)) => {
                    lock(&self.state).ctl = None;
                    if let Some(limit) = self.opts.give_up_after {
                        if down_since.elapsed() >= limit {
                            self.die(ServerError::Unreachable(format!(
                                "no server answered for {limit:?}: {why}"
                            )));
                            break;
                        }
                    }
                    let st = lock(&self.state);
                    let _ = self
                        .cond
                        .wait_timeout_while(st, backoff, |s| s.dead.is_none())
                        .unwrap_or_else(|e| e.into_inner());
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Find the leader, connect and greet it. Returns the stream and the server's term.
    fn connect_and_greet(&self) -> Result<(TcpStream, u64), Attempt> {
        let addr = (self.find_server)().ok_or(Attempt::Retry("no leader known".into()))?;
        let retry = |what: &str, e: &dyn std::fmt::Display| Attempt::Retry(format!("{what}: {e}"));
        let mut stream = TcpStream::connect_timeout(&addr, self.opts.connect_timeout)
            .map_err(|e| retry("connect", &e))?;
        let setup = stream
            .set_nodelay(true)
            .and_then(|_| stream.set_write_timeout(Some(self.opts.idle_timeout)))
            .and_then(|_| stream.set_read_timeout(Some(self.opts.idle_timeout)))
            .and_then(|_| stream.try_clone());
        let ctl = setup.map_err(|e| retry("socket setup", &e))?;
        let last_term = {
            let mut st = lock(&self.state);
            if st.dead.is_some() {
                return Err(Attempt::Retry("stopping".into()));
            }
            st.ctl = Some(ctl);
            st.server_term
        };
        let greeting = Request::Greeting {
            fsid: self.opts.fsid,
            format_version: self.opts.format_version,
            rid: self.opts.rid,
            server_term: last_term,
        };
        let frame = wire::encode_request(GREETING_ID, &greeting)
            .map_err(|e| Attempt::Fatal(ServerError::Invalid(e.to_string())))?;
        stream
            .write_all(&frame)
            .map_err(|e| retry("send greeting", &e))?;
        let answer = loop {
            match wire::read_frame(&mut stream) {
                Ok(Frame {
                    msg: Message::Ping, ..
                }) => continue,
                Ok(Frame {
                    id: GREETING_ID,
                    msg: Message::Response(res),
                }) => break res,
                Ok(other) => {
                    return Err(Attempt::Retry(format!(
                        "unexpected frame before the greeting's answer: {other:?}"
                    )))
                }
                Err(e) => return Err(retry("greeting", &e)),
            }
        };
        match answer {
            Ok(Response::Greeting { server_term, fsid }) if fsid == self.opts.fsid => {
                stream
                    .set_read_timeout(None)
                    .map_err(|e| retry("socket setup", &e))?;
                Ok((stream, server_term))
            }
            Ok(Response::Greeting { fsid, .. }) => Err(Attempt::Fatal(ServerError::WrongFsid {
                client: self.opts.fsid,
                server: fsid,
            })),
            Ok(other) => Err(Attempt::Retry(format!("greeting answered with {other:?}"))),
            Err(
                e @ (ServerError::Fenced { .. }
                | ServerError::WrongFsid { .. }
                | ServerError::WrongFormat { .. }),
            ) => Err(Attempt::Fatal(e)),
            Err(e) => Err(retry("greeting refused", &e)),
        }
    }

    /// Use a greeted connection until it breaks: resend, ping, watch for silence.
    fn serve(self: &Arc<Self>, stream: TcpStream, term: u64) {
        let Ok(read_half) = stream.try_clone() else {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        };
        let now = self.now();
        self.last_recv.store(now, Ordering::Relaxed);
        self.last_sent.store(now, Ordering::Relaxed);
        let (gen, reader) = {
            let mut w = lock(&self.writer);
            let (gen, new_server) = {
                let mut st = lock(&self.state);
                if st.dead.is_some() {
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
                st.gen += 1;
                let new_server = term != st.server_term;
                st.server_term = term;
                st.greeted_once = true;
                st.up = true;
                (st.gen, new_server)
            };
            // Before any frame of this server is read (see `ClientCalls::connected`).
            self.calls.connected(term, new_server);
            let wr = w.insert(Writer { gen, stream });
            let me = self.clone();
            let reader = thread::Builder::new()
                .name("scoutgw-net-client-read".into())
                .spawn(move || me.read_loop(gen, read_half));
            let Ok(reader) = reader else {
                let _ = wr.stream.shutdown(Shutdown::Both);
                *w = None;
                lock(&self.state).up = false;
                return;
            };
            // Resend everything unanswered, in id order.
            let resend: Vec<Arc<Vec<u8>>> = {
                let mut st = lock(&self.state);
                st.pending
                    .values_mut()
                    .filter(|p| p.sent_gen != gen)
                    .map(|p| {
                        p.sent_gen = gen;
                        p.frame.clone()
                    })
                    .collect()
            };
            for frame in resend {
                if !self.write(wr, &frame) {
                    break;
                }
            }
            (gen, reader)
        };
        self.cond.notify_all();

        let tick = ping_interval(self.opts.idle_timeout);
        let idle_ms = self.opts.idle_timeout.as_millis() as u64;
        loop {
            {
                let st = lock(&self.state);
                let (st, _) = self
                    .cond
                    .wait_timeout_while(st, tick, |s| s.dead.is_none() && s.reader_done < gen)
                    .unwrap_or_else(|e| e.into_inner());
                if st.dead.is_some() || st.reader_done >= gen {
                    break;
                }
            }
            let now = self.now();
            let busy = self.reader_busy.load(Ordering::Relaxed);
            if !busy && now.saturating_sub(self.last_recv.load(Ordering::Relaxed)) > idle_ms {
                break; // silent server
            }
            if now.saturating_sub(self.last_sent.load(Ordering::Relaxed)) >= tick.as_millis() as u64
            {
                if let Ok(mut w) = self.writer.try_lock() {
                    if let Some(wr) = w.as_mut().filter(|wr| wr.gen == gen) {
                        self.write(wr, &wire::encode_ping());
                    }
                }
            }
        }

        // Tear down: shut the socket first so a blocked writer or the reader returns.
        {
            let mut st = lock(&self.state);
            st.up = false;
            if let Some(s) = st.ctl.take() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        {
            let mut w = lock(&self.writer);
            if w.as_ref().is_some_and(|wr| wr.gen == gen) {
                *w = None;
            }
        }
        let reader_id = reader.thread().id();
        let _ = reader.join();
        lock(&self.state).threads.retain(|t| *t != reader_id);
    }

    /// The reader thread of connection `gen`.
    fn read_loop(&self, gen: u64, mut stream: TcpStream) {
        // Registered before any callback can run on this thread.
        lock(&self.state).threads.push(thread::current().id());
        while let Ok(frame) = wire::read_frame(&mut stream) {
            self.last_recv.store(self.now(), Ordering::Relaxed);
            self.reader_busy.store(true, Ordering::Relaxed);
            let ok = self.handle(frame);
            self.last_recv.store(self.now(), Ordering::Relaxed);
            self.reader_busy.store(false, Ordering::Relaxed);
            if !ok {
                break;
            }
        }
        let _ = stream.shutdown(Shutdown::Both);
        let mut st = lock(&self.state);
        st.reader_done = st.reader_done.max(gen);
        self.cond.notify_all();
    }

    /// Handle one frame from the server; false = protocol violation, close.
    fn handle(&self, frame: Frame) -> bool {
        match frame.msg {
            Message::Ping => true,
            Message::Call(call) => {
                self.calls.server_call(frame.id, call);
                true
            }
            Message::Response(res) => {
                if let Err(e @ ServerError::Fenced { .. }) = &res {
                    // Fails this call (still pending), every other one and all later ones.
                    self.die(e.clone());
                    return true;
                }
                let Some(p) = lock(&self.state).pending.remove(&frame.id) else {
                    return true; // answered before, or cancelled
                };
                match (p.waiter, res) {
                    (Some(w), res) => {
                        let _ = w.try_send(res);
                    }
                    (None, Ok(Response::Lock(grant))) => self.calls.lock_granted(grant),
                    (None, other) => {
                        eprintln!("scoutgw: lock request {} answered with {other:?}", frame.id)
                    }
                }
                true
            }
            Message::Request(_) | Message::Reply(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Key;
    use crate::lock::LockMode;
    use crate::net::server::{NetServer, ServerCalls};
    use std::io::Read;
    use std::net::TcpListener;

    const FSID: u64 = 0xf5;
    const RID: u64 = 0x1d;

    /// What a test client was told.
    #[derive(Default)]
    struct Seen {
        calls: Mutex<Vec<(u64, ServerCall)>>,
        grants: Mutex<Vec<NetLock>>,
        connects: Mutex<Vec<(u64, bool)>>,
        /// Reply to server calls at once through this client.
        auto_reply: Mutex<Option<Arc<NetClient>>>,
    }

    impl ClientCalls for Seen {
        fn server_call(&self, call_id: u64, call: ServerCall) {
            lock(&self.calls).push((call_id, call.clone()));
            if let Some(c) = lock(&self.auto_reply).clone() {
                if let ServerCall::Invalidate(l) = call {
                    c.reply(call_id, ClientReply::Invalidated(l));
                }
            }
        }
        fn lock_granted(&self, grant: NetLock) {
            lock(&self.grants).push(grant);
        }
        fn connected(&self, server_term: u64, new_server: bool) {
            lock(&self.connects).push((server_term, new_server));
        }
    }

    /// A scriptable server: counts requests; `AllocInodes` answers `first = count * 1000`
    /// unless `hold` (then never: the response is "lost"); `Lock` is answered later.
    struct TestServer {
        term: u64,
        greetings: Mutex<Vec<Request>>,
        requests: Mutex<Vec<(u64, u64, Request)>>,
        replies: Mutex<Vec<(u64, u64, ClientReply)>>,
        disconnects: Mutex<Vec<u64>>,
        hold: AtomicBool,
        fence: AtomicBool,
        /// Each request takes this long.
        delay_ms: AtomicU64,
    }

    impl TestServer {
        fn new(term: u64) -> Arc<Self> {
            Arc::new(Self {
                term,
                greetings: Mutex::default(),
                requests: Mutex::default(),
                replies: Mutex::default(),
                disconnects: Mutex::default(),
                hold: AtomicBool::new(false),
                fence: AtomicBool::new(false),
                delay_ms: AtomicU64::new(0),
            })
        }
    }

    impl ServerCalls for TestServer {
        fn greeting(&self, _peer: SocketAddr, req: &Request) -> Result<Response, ServerError> {
            lock(&self.greetings).push(req.clone());
            Ok(Response::Greeting {
                server_term: self.term,
                fsid: FSID,
            })
        }
        fn request(
            &self,
            rid: u64,
            req_id: u64,
            req: Request,
        ) -> Option<Result<Response, ServerError>> {
            lock(&self.requests).push((rid, req_id, req.clone()));
            thread::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)));
            if self.fence.load(Ordering::SeqCst) {
                return Some(Err(ServerError::Fenced { rid }));
            }
            match req {
                Request::AllocInodes { count } => {
                    (!self.hold.load(Ordering::SeqCst)).then_some(Ok(Response::AllocInodes {
                        first: count * 1000,
                        count,
                    }))
                }
                Request::Lock(_) => None,
                Request::GetLastSeq => Some(Ok(Response::LastSeq(self.term * 100))),
                Request::Greeting { .. } => Some(Ok(Response::Greeting {
                    server_term: self.term,
                    fsid: FSID,
                })),
                _ => Some(Err(ServerError::Invalid("not in this test".into()))),
            }
        }
        fn reply(&self, rid: u64, call_id: u64, reply: ClientReply) {
            lock(&self.replies).push((rid, call_id, reply));
        }
        fn disconnected(&self, rid: u64) {
            lock(&self.disconnects).push(rid);
        }
    }

    fn opts() -> NetClientOptions {
        NetClientOptions::new(FSID, 1, RID)
    }

    /// A `find_server` answering whatever address the test puts in the cell.
    fn leader_cell(addr: SocketAddr) -> (Arc<Mutex<Option<SocketAddr>>>, FindServer) {
        let cell = Arc::new(Mutex::new(Some(addr)));
        let c = cell.clone();
        (cell, Box::new(move || *lock(&c)))
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn listen(calls: Arc<TestServer>) -> NetServer {
        NetServer::listen(
            "127.0.0.1:0".parse().unwrap(),
            calls,
            Duration::from_secs(10),
        )
        .unwrap()
    }

    fn a_lock(n: u64) -> NetLock {
        NetLock {
            key: Key::new(20, n, 0, 0, 0, 0),
            write_seq: 0,
            old_mode: LockMode::Null,
            new_mode: LockMode::Write,
        }
    }

    #[test]
    fn many_concurrent_blocking_calls_are_matched_to_their_responses() {
        // The server answers every request later, in reverse order of arrival, so responses
        // come back out of order.
        struct Reverse {
            inbox: Mutex<Vec<(u64, u64, u64)>>,
        }
        impl ServerCalls for Reverse {
            fn greeting(&self, _: SocketAddr, _: &Request) -> Result<Response, ServerError> {
                Ok(Response::Greeting {
                    server_term: 1,
                    fsid: FSID,
                })
            }
            fn request(
                &self,
                rid: u64,
                id: u64,
                req: Request,
            ) -> Option<Result<Response, ServerError>> {
                let Request::AllocInodes { count } = req else {
                    return Some(Err(ServerError::Invalid("?".into())));
                };
                lock(&self.inbox).push((rid, id, count));
                None
            }
            fn reply(&self, _: u64, _: u64, _: ClientReply) {}
            fn disconnected(&self, _: u64) {}
        }
        let calls = Arc::new(Reverse {
            inbox: Mutex::default(),
        });
        let server = Arc::new(
            NetServer::listen(
                "127.0.0.1:0".parse().unwrap(),
                calls.clone(),
                Duration::from_secs(10),
            )
            .unwrap(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let responder = {
            let (server, calls, stop) = (server.clone(), calls.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(2));
                    let batch = std::mem::take(&mut *lock(&calls.inbox));
                    for (rid, id, count) in batch.into_iter().rev() {
                        server.respond(
                            rid,
                            id,
                            Ok(Response::AllocInodes {
                                first: count * 7,
                                count,
                            }),
                        );
                    }
                }
            })
        };
        let (_cell, find) = leader_cell(server.local_addr());
        let client = NetClient::start(opts(), find, Arc::new(Seen::default())).unwrap();
        let workers: Vec<_> = (0..8u64)
            .map(|t| {
                let client = client.clone();
                thread::spawn(move || {
                    for i in 0..50u64 {
                        let count = t * 1000 + i + 1;
                        let res = client.call(RID, Request::AllocInodes { count }).unwrap();
                        let Response::AllocInodes { first, count: c } = res else {
                            panic!("{res:?}")
                        };
                        assert_eq!((first, c), (count * 7, count));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        responder.join().unwrap();
        client.shutdown();
        server.shutdown();
    }

    #[test]
    fn a_lock_request_answered_late_does_not_block_other_calls() {
        let calls = TestServer::new(1);
        let server = listen(calls.clone());
        let (_cell, find) = leader_cell(server.local_addr());
        let seen = Arc::new(Seen::default());
        let client = NetClient::start(opts(), find, seen.clone()).unwrap();

        client.send_lock(a_lock(1)).unwrap();
        // A blocking lock call from another thread waits too.
        let blocked = {
            let client = client.clone();
            thread::spawn(move || client.call(RID, Request::Lock(a_lock(2))))
        };
        wait_for("both lock requests", || lock(&calls.requests).len() == 2);
        for _ in 0..3 {
            let r = client.call(RID, Request::GetLastSeq).unwrap();
            assert!(matches!(r, Response::LastSeq(100)), "{r:?}");
        }
        assert!(lock(&seen.grants).is_empty());

        let reqs = lock(&calls.requests).clone();
        for (rid, id, req) in reqs {
            if let Request::Lock(mut l) = req {
                l.write_seq = 42;
                server.respond(rid, id, Ok(Response::Lock(l)));
            }
        }
        let r = blocked.join().unwrap().unwrap();
        assert!(matches!(r, Response::Lock(l) if l.write_seq == 42 && l.key == a_lock(2).key));
        wait_for("the grant", || lock(&seen.grants).len() == 1);
        assert_eq!(lock(&seen.grants)[0].key, a_lock(1).key);
        client.shutdown();
    }

    /// Seed 004: the first server processed a request but its response was lost when it
    /// died; the client resends it to the next server, which processes it again. The
    /// handlers see it twice, the caller sees one answer.
    #[test]
    fn unanswered_requests_are_resent_in_order_to_the_next_server_after_failover() {
        let old = TestServer::new(1);
        old.hold.store(true, Ordering::SeqCst);
        let first = listen(old.clone());
        let (cell, find) = leader_cell(first.local_addr());
        let seen = Arc::new(Seen::default());
        let client = NetClient::start(opts(), find, seen.clone()).unwrap();
        assert_eq!(client.server_term(), 1);

        let callers: Vec<_> = (1..=4u64)
            .map(|n| {
                let client = client.clone();
                let h = thread::spawn(move || client.call(RID, Request::AllocInodes { count: n }));
                // One at a time so ids follow n.
                wait_for("the request", || lock(&old.requests).len() == n as usize);
                h
            })
            .collect();

        // The old server dies with four requests processed and unanswered.
        let new = TestServer::new(2);
        let second = listen(new.clone());
        first.shutdown();
        *lock(&cell) = Some(second.local_addr());

        for (n, h) in callers.into_iter().enumerate() {
            let count = n as u64 + 1;
            let r = h.join().unwrap().unwrap();
            assert!(
                matches!(r, Response::AllocInodes { first, count: c } if first == count * 1000 && c == count),
                "{r:?}"
            );
        }
        // The new server was greeted with the old term, then got the resends in id order.
        let greeting = lock(&new.greetings)[0].clone();
        assert!(matches!(
            greeting,
            Request::Greeting {
                rid: RID,
                server_term: 1,
                fsid: FSID,
                ..
            }
        ));
        let old_ids: Vec<u64> = lock(&old.requests).iter().map(|r| r.1).collect();
        let new_ids: Vec<u64> = lock(&new.requests).iter().map(|r| r.1).collect();
        assert_eq!(old_ids, new_ids);
        assert!(new_ids.windows(2).all(|w| w[0] < w[1]), "{new_ids:?}");
        // Counted twice: once per server.
        let total = lock(&old.requests).len() + lock(&new.requests).len();
        assert_eq!(total, 8);
        assert_eq!(client.server_term(), 2);
        wait_for("connected", || lock(&seen.connects).len() == 2);
        assert_eq!(*lock(&seen.connects), vec![(1, true), (2, true)]);
        // New ids keep growing past the resent ones.
        client.call(RID, Request::AllocInodes { count: 9 }).unwrap();
        let last = lock(&new.requests).last().unwrap().1;
        assert!(last > *new_ids.last().unwrap());
        client.shutdown();
    }

    #[test]
    fn a_response_lost_by_the_same_server_is_answered_once_after_reconnect() {
        let calls = TestServer::new(3);
        calls.hold.store(true, Ordering::SeqCst);
        let server = listen(calls.clone());
        let (_cell, find) = leader_cell(server.local_addr());
        let seen = Arc::new(Seen::default());
        let client = NetClient::start(opts(), find, seen.clone()).unwrap();
        let h = {
            let client = client.clone();
            thread::spawn(move || client.call(RID, Request::AllocInodes { count: 5 }))
        };
        wait_for("the request", || lock(&calls.requests).len() == 1);
        calls.hold.store(false, Ordering::SeqCst);
        server.close_client(RID);
        let r = h.join().unwrap().unwrap();
        assert!(matches!(
            r,
            Response::AllocInodes {
                first: 5000,
                count: 5
            }
        ));
        assert_eq!(lock(&calls.requests).len(), 2);
        wait_for("reconnect", || lock(&seen.connects).len() == 2);
        // Same server term: not a new server.
        assert_eq!(*lock(&seen.connects), vec![(3, true), (3, false)]);
        client.shutdown();
    }

    #[test]
    fn fenced_errors_fail_that_call_and_every_later_one() {
        let calls = TestServer::new(1);
        let server = listen(calls.clone());
        let (_cell, find) = leader_cell(server.local_addr());
        let client = NetClient::start(opts(), find, Arc::new(Seen::default())).unwrap();
        client.call(RID, Request::GetLastSeq).unwrap();
        calls.fence.store(true, Ordering::SeqCst);
        let e = client.call(RID, Request::GetLastSeq).unwrap_err();
        assert_eq!(e, ServerError::Fenced { rid: RID });
        calls.fence.store(false, Ordering::SeqCst);
        for _ in 0..3 {
            assert_eq!(
                client.call(RID, Request::GetLastSeq).unwrap_err(),
                ServerError::Fenced { rid: RID }
            );
            assert_eq!(
                client.send_lock(a_lock(1)).unwrap_err(),
                ServerError::Fenced { rid: RID }
            );
        }
        assert_eq!(
            lock(&calls.requests).len(),
            2,
            "later calls never reach the server"
        );
        client.shutdown();
    }

    #[test]
    fn a_fenced_greeting_fails_start() {
        struct Refuse;
        impl ServerCalls for Refuse {
            fn greeting(&self, _: SocketAddr, req: &Request) -> Result<Response, ServerError> {
                let Request::Greeting { rid, .. } = req else {
                    unreachable!()
                };
                Err(ServerError::Fenced { rid: *rid })
            }
            fn request(&self, _: u64, _: u64, _: Request) -> Option<Result<Response, ServerError>> {
                None
            }
            fn reply(&self, _: u64, _: u64, _: ClientReply) {}
            fn disconnected(&self, _: u64) {}
        }
        let server = NetServer::listen(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Refuse),
            Duration::from_secs(10),
        )
        .unwrap();
        let (_cell, find) = leader_cell(server.local_addr());
        let e = NetClient::start(opts(), find, Arc::new(Seen::default())).err();
        assert_eq!(e, Some(ServerError::Fenced { rid: RID }));
    }

    #[test]
    fn server_calls_are_resent_to_a_client_that_reconnects() {
        let calls = TestServer::new(1);
        let server = listen(calls.clone());
        let (_cell, find) = leader_cell(server.local_addr());
        let seen = Arc::new(Seen::default());
        let client = NetClient::start(opts(), find, seen.clone()).unwrap();
        wait_for("registered", || !server.connected_rids().is_empty());

        let id = server.call(RID, ServerCall::Invalidate(a_lock(4)));
        wait_for("the call", || lock(&seen.calls).len() == 1);
        // Not answered; the connection breaks.
        server.close_client(RID);
        wait_for("the resent call", || lock(&seen.calls).len() == 2);
        let got = lock(&seen.calls).clone();
        assert_eq!(got[0], (id, ServerCall::Invalidate(a_lock(4))));
        assert_eq!(got[1], got[0]);

        client.reply(id, ClientReply::Invalidated(a_lock(4)));
        wait_for("the reply", || lock(&calls.replies).len() == 1);
        // A duplicate reply (answering both deliveries) reaches the server callbacks once.
        client.reply(id, ClientReply::Invalidated(a_lock(4)));
        client.call(RID, Request::GetLastSeq).unwrap();
        assert_eq!(
            *lock(&calls.replies),
            vec![(RID, id, ClientReply::Invalidated(a_lock(4)))]
        );
        client.shutdown();
    }

    #[test]
    fn a_reply_made_while_disconnected_is_dropped_and_the_call_answered_after_reconnect() {
        let calls = TestServer::new(1);
        let server = listen(calls.clone());
        let (cell, find) = leader_cell(server.local_addr());
        let seen = Arc::new(Seen::default());
        let client = NetClient::start(opts(), find, seen.clone()).unwrap();
        wait_for("registered", || !server.connected_rids().is_empty());
        let id = server.call(RID, ServerCall::LockRecover { start: Key::MIN });
        wait_for("the call", || lock(&seen.calls).len() == 1);

        // Hide the server and break the connection: the reply has nowhere to go.
        *lock(&cell) = None;
        server.close_client(RID);
        wait_for("disconnected", || !client.connected());
        client.reply(id, ClientReply::Recovered(vec![a_lock(1)]));
        thread::sleep(Duration::from_millis(50));
        assert!(lock(&calls.replies).is_empty());

        // Reconnected: the server resends the call and the reply now arrives.
        *lock(&cell) = Some(server.local_addr());
        wait_for("the resent call", || lock(&seen.calls).len() == 2);
        client.reply(id, ClientReply::Recovered(vec![a_lock(1)]));
        wait_for("the reply", || lock(&calls.replies).len() == 1);
        assert_eq!(lock(&calls.replies)[0].1, id);
        client.shutdown();
    }

    #[test]
    fn server_calls_answered_from_the_callback_reach_the_server() {
        let calls = TestServer::new(1);
        let server = listen(calls.clone());
        let (_cell, find) = leader_cell(server.local_addr());
        let seen = Arc::new(Seen::default());
        let client = NetClient::start(opts(), find, seen.clone()).unwrap();
        *lock(&seen.auto_reply) = Some(client.clone());
        wait_for("registered", || !server.connected_rids().is_empty());
        let ids: Vec<u64> = (0..20)
            .map(|n| server.call(RID, ServerCall::Invalidate(a_lock(n))))
            .collect();
        wait_for("the replies", || lock(&calls.replies).len() == 20);
        let got: Vec<u64> = lock(&calls.replies).iter().map(|r| r.1).collect();
        assert_eq!(got, ids);
        lock(&seen.auto_reply).take();
        client.shutdown();
    }

    #[test]
    fn idle_timeout_detects_a_listener_that_never_answers() {
        // Accepts and reads, never writes.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        {
            let accepted = accepted.clone();
            thread::spawn(move || {
                for s in silent.incoming() {
                    let Ok(mut s) = s else { break };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    thread::spawn(move || {
                        let mut buf = [0u8; 256];
                        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                    });
                }
            });
        }
        let (_cell, find) = leader_cell(addr);
        let mut o = opts();
        o.idle_timeout = Duration::from_millis(200);
        o.give_up_after = Some(Duration::from_millis(700));
        let t0 = Instant::now();
        let e = NetClient::start(o, find, Arc::new(Seen::default())).err();
        assert!(matches!(e, Some(ServerError::Unreachable(_))), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(
            accepted.load(Ordering::SeqCst) >= 2,
            "the client gave up on a silent connection and tried again"
        );
    }

    #[test]
    fn idle_timeout_detects_a_server_that_goes_silent_after_greeting() {
        // Greets, then reads and never writes again.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        {
            let accepted = accepted.clone();
            thread::spawn(move || {
                for s in silent.incoming() {
                    let Ok(mut s) = s else { break };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    thread::spawn(move || {
                        let Ok(f) = wire::read_frame(&mut s) else {
                            return;
                        };
                        let res = Ok(Response::Greeting {
                            server_term: 9,
                            fsid: FSID,
                        });
                        let _ = s.write_all(&wire::encode_response(f.id, &res).unwrap());
                        while wire::read_frame(&mut s).is_ok() {}
                    });
                }
            });
        }
        let (_cell, find) = leader_cell(addr);
        let mut o = opts();
        o.idle_timeout = Duration::from_millis(200);
        let seen = Arc::new(Seen::default());
        let client = NetClient::start(o, find, seen.clone()).unwrap();
        wait_for("a reconnect", || lock(&seen.connects).len() >= 2);
        assert!(accepted.load(Ordering::SeqCst) >= 2);
        assert_eq!(lock(&seen.connects)[1], (9, false), "same server again");
        client.shutdown();
    }

    #[test]
    fn a_request_slower_than_the_idle_timeout_keeps_its_connection() {
        let calls = TestServer::new(1);
        let server = NetServer::listen(
            "127.0.0.1:0".parse().unwrap(),
            calls.clone(),
            Duration::from_millis(200),
        )
        .unwrap();
        let (_cell, find) = leader_cell(server.local_addr());
        let mut o = opts();
        o.idle_timeout = Duration::from_millis(200);
        let seen = Arc::new(Seen::default());
        let client = NetClient::start(o, find, seen.clone()).unwrap();
        calls.delay_ms.store(700, Ordering::SeqCst);
        let r = client.call(RID, Request::GetLastSeq).unwrap();
        assert!(matches!(r, Response::LastSeq(100)));
        assert_eq!(lock(&calls.requests).len(), 1, "not resent");
        assert_eq!(lock(&seen.connects).len(), 1, "no reconnect");
        assert!(lock(&calls.disconnects).is_empty());
        client.shutdown();
    }

    #[test]
    fn garbage_from_the_server_closes_the_connection_and_the_client_reconnects() {
        // Greets properly, then sends garbage; the second connection is a real server.
        let garbage = TcpListener::bind("127.0.0.1:0").unwrap();
        let gaddr = garbage.local_addr().unwrap();
        let calls = TestServer::new(5);
        let real = listen(calls.clone());
        let raddr = real.local_addr();
        let sent = Arc::new(AtomicBool::new(false));
        {
            let sent = sent.clone();
            thread::spawn(move || {
                let (mut s, _) = garbage.accept().unwrap();
                let f = wire::read_frame(&mut s).unwrap();
                let res = Ok(Response::Greeting {
                    server_term: 4,
                    fsid: FSID,
                });
                s.write_all(&wire::encode_response(f.id, &res).unwrap())
                    .unwrap();
                s.write_all(b"SGWN\x01\x00\x07\x09garbage garbage garbage garbage")
                    .unwrap();
                sent.store(true, Ordering::SeqCst);
                while wire::read_frame(&mut s).is_ok() {}
            });
        }
        let sent2 = sent.clone();
        let find: FindServer = Box::new(move || {
            Some(if sent2.load(Ordering::SeqCst) {
                raddr
            } else {
                gaddr
            })
        });
        let seen = Arc::new(Seen::default());
        let client = NetClient::start(opts(), find, seen.clone()).unwrap();
        let r = client.call(RID, Request::GetLastSeq).unwrap();
        assert!(matches!(r, Response::LastSeq(500)), "{r:?}");
        assert_eq!(client.server_term(), 5);
        client.shutdown();
    }

    #[test]
    fn shutdown_fails_waiting_calls_with_unreachable() {
        let calls = TestServer::new(1);
        calls.hold.store(true, Ordering::SeqCst);
        let server = listen(calls.clone());
        let (_cell, find) = leader_cell(server.local_addr());
        let client = NetClient::start(opts(), find, Arc::new(Seen::default())).unwrap();
        let h = {
            let client = client.clone();
            thread::spawn(move || client.call(RID, Request::AllocInodes { count: 1 }))
        };
        wait_for("the request", || lock(&calls.requests).len() == 1);
        client.shutdown();
        assert!(matches!(
            h.join().unwrap(),
            Err(ServerError::Unreachable(_))
        ));
        assert!(matches!(
            client.call(RID, Request::GetLastSeq),
            Err(ServerError::Unreachable(_))
        ));
        wait_for("the server noticed", || server.connected_rids().is_empty());
    }
}
