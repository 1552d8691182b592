//! The server end of the transport: [`NetServer`], the elected leader's listener.
//!
//! Threads: an accept thread; one reader thread per connection, which handles that
//! connection's frames in order (greeting first, then requests, replies and pings); a ticker
//! that pings quiet connections and closes silent ones.
//!
//! Each greeted connection belongs to a rid; a newer connection greeting with the same rid
//! replaces the older one (latest wins). Requests go to [`ServerCalls::request`], answered at
//! once or later through [`NetServer::respond`] (lock requests), which goes to whatever
//! connection the rid has then — a response for a rid that is not connected is dropped, the
//! client resends the request. Server calls to a client wait in a per-rid outbox until the
//! client replies; the outbox is resent, in call id order, every time the rid greets again.
//! A reply to a call no longer in the outbox (answered already, or cancelled) is dropped.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use super::wire::{self, Frame, Message};
use super::{lock, millis, ping_interval};
use crate::msg::{ClientReply, Request, Response, ServerCall, ServerError};

/// What the transport asks of the server. Called from connection reader threads.
pub trait ServerCalls: Send + Sync {
    /// A new connection greeted (`req` is the `Request::Greeting`). Answer with
    /// `Response::Greeting { server_term, fsid }` or an error (sent, then the connection
    /// closes).
    fn greeting(&self, peer: SocketAddr, req: &Request) -> Result<Response, ServerError>;
    /// Any other request of a greeted client (a later `Request::Greeting` on the same
    /// connection included). `Some(answer)` = reply now; `None` = the server answers later
    /// with [`NetServer::respond`] (lock requests).
    fn request(&self, rid: u64, req_id: u64, req: Request)
        -> Option<Result<Response, ServerError>>;
    /// A client's reply to a server call (each call's reply is delivered once).
    fn reply(&self, rid: u64, call_id: u64, reply: ClientReply);
    /// The client's connection closed (it may reconnect). Not called when a newer
    /// connection of the same rid replaced it.
    fn disconnected(&self, rid: u64);
}

/// The leader's listener; see the module documentation.
pub struct NetServer {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Inner {
    calls: Arc<dyn ServerCalls>,
    idle_timeout: Duration,
    local_addr: SocketAddr,
    base: Instant,
    state: Mutex<State>,
    /// Wakes the ticker at shutdown and `shutdown` when a connection ends.
    cond: Condvar,
}

struct State {
    stopping: bool,
    next_conn: u64,
    next_call: u64,
    conns: HashMap<u64, Arc<Conn>>,
    /// The connection of each greeted rid.
    by_rid: HashMap<u64, u64>,
    /// Unanswered server calls of each rid, by call id.
    outbox: HashMap<u64, BTreeMap<u64, Outgoing>>,
}

struct Outgoing {
    frame: Arc<Vec<u8>>,
    /// The connection it was last written to (0 = none).
    sent_on: u64,
}

struct Conn {
    id: u64,
    peer: SocketAddr,
    /// Lock order: a connection's `writer` before `State`.
    writer: Mutex<TcpStream>,
    /// To shut the socket down without waiting for a blocked writer.
    ctl: TcpStream,
    rid: OnceLock<u64>,
    thread: OnceLock<ThreadId>,
    last_recv: AtomicU64,
    last_sent: AtomicU64,
    /// The reader is inside a [`ServerCalls`] callback: not reading is not silence.
    busy: AtomicBool,
}

impl Conn {
    /// Run a callback of the reader; the time it takes does not count as silence.
    fn busy<R>(&self, now: impl Fn() -> u64, f: impl FnOnce() -> R) -> R {
        self.busy.store(true, Ordering::Relaxed);
        let r = f();
        self.last_recv.store(now(), Ordering::Relaxed);
        self.busy.store(false, Ordering::Relaxed);
        r
    }
}

impl NetServer {
    /// Listen on `addr`: an accept thread, a ticker, and one reader thread per connection
    /// (requests of one connection are handled in order on it, except that `None` answers
    /// come later). `idle_timeout`: a connection silent this long is closed; quiet ones are
    /// pinged every quarter of it.
    pub fn listen(
        addr: SocketAddr,
        calls: Arc<dyn ServerCalls>,
        idle_timeout: Duration,
    ) -> std::io::Result<NetServer> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            calls,
            idle_timeout,
            local_addr,
            base: Instant::now(),
            state: Mutex::new(State {
                stopping: false,
                next_conn: 1,
                next_call: 1,
                conns: HashMap::new(),
                by_rid: HashMap::new(),
                outbox: HashMap::new(),
            }),
            cond: Condvar::new(),
        });
        let accept = {
            let inner = inner.clone();
            thread::Builder::new()
                .name("scoutgw-net-accept".into())
                .spawn(move || inner.accept_loop(listener))?
        };
        let ticker = {
            let inner = inner.clone();
            thread::Builder::new()
                .name("scoutgw-net-ticker".into())
                .spawn(move || inner.tick_loop())?
        };
        Ok(NetServer {
            inner,
            threads: Mutex::new(vec![accept, ticker]),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Answer request `req_id` of `rid` on its current connection; dropped if `rid` is not
    /// connected (it will resend the request).
    pub fn respond(&self, rid: u64, req_id: u64, res: Result<Response, ServerError>) {
        let Some(conn) = self.inner.conn_of(rid) else {
            return;
        };
        match wire::encode_response(req_id, &res) {
            Ok(frame) => {
                let mut w = lock(&conn.writer);
                self.inner.write(&conn, &mut w, &frame);
            }
            Err(e) => eprintln!("scoutgw: response to {rid:016x}/{req_id} not sent: {e}"),
        }
    }

    /// Call client `rid`; kept in a per-rid outbox until the reply arrives and resent when
    /// that rid reconnects to this server. Returns the call id.
    pub fn call(&self, rid: u64, call: ServerCall) -> u64 {
        let id = {
            let mut st = lock(&self.inner.state);
            let id = st.next_call;
            st.next_call += 1;
            id
        };
        self.call_with_id(rid, id, call);
        id
    }

    /// [`NetServer::call`] with an id the caller chose (the lock server names its
    /// invalidations); it must not be one [`NetServer::call`] hands out or an id of a call
    /// to `rid` still in the outbox.
    pub fn call_with_id(&self, rid: u64, id: u64, call: ServerCall) {
        let inner = &self.inner;
        let conn = {
            let mut st = lock(&inner.state);
            let frame = wire::encode_call(id, &call).expect("server calls fit in a frame");
            st.outbox.entry(rid).or_default().insert(
                id,
                Outgoing {
                    frame: Arc::new(frame),
                    sent_on: 0,
                },
            );
            st.by_rid.get(&rid).and_then(|c| st.conns.get(c)).cloned()
        };
        if let Some(conn) = conn {
            let mut w = lock(&conn.writer);
            let frame = {
                let mut st = lock(&inner.state);
                let current = st.by_rid.get(&rid) == Some(&conn.id);
                match st.outbox.get_mut(&rid).and_then(|o| o.get_mut(&id)) {
                    Some(out) if current && out.sent_on != conn.id => {
                        out.sent_on = conn.id;
                        Some(out.frame.clone())
                    }
                    _ => None,
                }
            };
            if let Some(frame) = frame {
                inner.write(&conn, &mut w, &frame);
            }
        }
    }

    /// Forget the rid's outbox (it was fenced or left): replies to those calls are dropped.
    pub fn cancel_calls(&self, rid: u64) {
        lock(&self.inner.state).outbox.remove(&rid);
    }

    /// The greeted rids and their peer addresses.
    pub fn connected_rids(&self) -> Vec<(u64, SocketAddr)> {
        let st = lock(&self.inner.state);
        let mut v: Vec<(u64, SocketAddr)> = st
            .by_rid
            .iter()
            .filter_map(|(rid, c)| st.conns.get(c).map(|c| (*rid, c.peer)))
            .collect();
        v.sort_unstable();
        v
    }

    /// Close the connection of `rid` (its reader ends and reports `disconnected`).
    pub fn close_client(&self, rid: u64) {
        if let Some(conn) = self.inner.conn_of(rid) {
            let _ = conn.ctl.shutdown(Shutdown::Both);
        }
    }

    /// Close the listener and every connection; the threads exit (joined, except the
    /// calling thread if it is one of them).
    pub fn shutdown(&self) {
        let inner = &self.inner;
        {
            let mut st = lock(&inner.state);
            st.stopping = true;
            for c in st.conns.values() {
                let _ = c.ctl.shutdown(Shutdown::Both);
            }
            inner.cond.notify_all();
        }
        // Wake the accept thread.
        let mut wake = inner.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        let me = thread::current().id();
        for h in std::mem::take(&mut *lock(&self.threads)) {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
        // Wait for the connection threads (not ourselves, if called from one).
        let st = lock(&inner.state);
        let _ = inner
            .cond
            .wait_timeout_while(st, Duration::from_secs(10), |s| {
                s.conns.values().any(|c| c.thread.get() != Some(&me))
            });
    }
}

impl Drop for NetServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    fn now(&self) -> u64 {
        millis(self.base)
    }

    fn conn_of(&self, rid: u64) -> Option<Arc<Conn>> {
        let st = lock(&self.state);
        st.by_rid.get(&rid).and_then(|c| st.conns.get(c)).cloned()
    }

    /// Write one frame; a failed write closes the connection.
    fn write(&self, conn: &Conn, w: &mut TcpStream, frame: &[u8]) -> bool {
        match w.write_all(frame) {
            Ok(()) => {
                conn.last_sent.store(self.now(), Ordering::Relaxed);
                true
            }
            Err(_) => {
                let _ = conn.ctl.shutdown(Shutdown::Both);
                false
            }
        }
    }

    fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = listener.accept();
            if lock(&self.state).stopping {
                break;
            }
            match accepted {
                Ok((stream, peer)) => self.add_conn(stream, peer),
                // Out of descriptors and the like: let connections drain.
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn add_conn(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let setup = stream
            .set_nodelay(true)
            .and_then(|_| stream.set_write_timeout(Some(self.idle_timeout)))
            .and_then(|_| Ok((stream.try_clone()?, stream.try_clone()?)));
        let Ok((writer, ctl)) = setup else {
            return;
        };
        let now = self.now();
        let conn = {
            let mut st = lock(&self.state);
            if st.stopping {
                return;
            }
            let id = st.next_conn;
            st.next_conn += 1;
            let conn = Arc::new(Conn {
                id,
                peer,
                writer: Mutex::new(writer),
                ctl,
                rid: OnceLock::new(),
                thread: OnceLock::new(),
                last_recv: AtomicU64::new(now),
                last_sent: AtomicU64::new(now),
                busy: AtomicBool::new(false),
            });
            st.conns.insert(id, conn.clone());
            conn
        };
        let me = self.clone();
        let c = conn.clone();
        let spawned = thread::Builder::new()
            .name("scoutgw-net-conn".into())
            .spawn(move || me.conn_thread(c, stream));
        match spawned {
            Ok(h) => {
                let _ = conn.thread.set(h.thread().id());
            }
            Err(_) => {
                let _ = conn.ctl.shutdown(Shutdown::Both);
                lock(&self.state).conns.remove(&conn.id);
            }
        }
    }

    /// A connection's reader thread.
    fn conn_thread(&self, conn: Arc<Conn>, stream: TcpStream) {
        let _ = conn.thread.set(thread::current().id());
        self.serve_conn(&conn, stream);
        let _ = conn.ctl.shutdown(Shutdown::Both);
        let lost_rid = {
            let mut st = lock(&self.state);
            conn.rid
                .get()
                .copied()
                .filter(|rid| st.by_rid.get(rid) == Some(&conn.id))
                .inspect(|rid| {
                    st.by_rid.remove(rid);
                })
        };
        if let Some(rid) = lost_rid {
            self.calls.disconnected(rid);
        }
        let mut st = lock(&self.state);
        st.conns.remove(&conn.id);
        self.cond.notify_all();
    }

    /// Read and handle frames until the connection ends or misbehaves.
    fn serve_conn(&self, conn: &Arc<Conn>, mut stream: TcpStream) {
        // The greeting comes first.
        let (greet_id, greeting) = loop {
            let Ok(f) = wire::read_frame(&mut stream) else {
                return;
            };
            conn.last_recv.store(self.now(), Ordering::Relaxed);
            match f.msg {
                Message::Ping => continue,
                Message::Request(r @ Request::Greeting { .. }) => break (f.id, r),
                Message::Request(_) => {
                    self.answer(conn, f.id, &Err(ServerError::NotGreeted { rid: 0 }));
                    return;
                }
                _ => return,
            }
        };
        let Request::Greeting { rid, .. } = greeting else {
            return;
        };
        let answer = conn.busy(|| self.now(), || self.calls.greeting(conn.peer, &greeting));
        if answer.is_err() {
            self.answer(conn, greet_id, &answer);
            return;
        }
        if !self.register(conn, rid, greet_id, &answer) {
            return;
        }

        loop {
            let Ok(Frame { id, msg }) = wire::read_frame(&mut stream) else {
                return;
            };
            conn.last_recv.store(self.now(), Ordering::Relaxed);
            match msg {
                Message::Ping => {}
                Message::Request(req) => {
                    let res = conn.busy(|| self.now(), || self.calls.request(rid, id, req));
                    if let Some(res) = res {
                        self.answer(conn, id, &res);
                    }
                }
                Message::Reply(reply) => {
                    let known = lock(&self.state)
                        .outbox
                        .get_mut(&rid)
                        .and_then(|o| o.remove(&id))
                        .is_some();
                    if known {
                        conn.busy(|| self.now(), || self.calls.reply(rid, id, reply));
                    }
                }
                Message::Call(_) | Message::Response(_) => return,
            }
        }
    }

    /// Make `conn` the rid's connection (closing an older one), send the greeting's answer
    /// and resend the rid's outbox — all under the connection's writer lock, so no call
    /// overtakes the answer or the resends, and a client that saw the answer is registered.
    fn register(
        &self,
        conn: &Arc<Conn>,
        rid: u64,
        greet_id: u64,
        answer: &Result<Response, ServerError>,
    ) -> bool {
        let Ok(frame) = wire::encode_response(greet_id, answer) else {
            return false;
        };
        let mut w = lock(&conn.writer);
        let (old, resend) = {
            let mut st = lock(&self.state);
            if st.stopping {
                return false;
            }
            let _ = conn.rid.set(rid);
            let old = st
                .by_rid
                .insert(rid, conn.id)
                .filter(|c| *c != conn.id)
                .and_then(|c| st.conns.get(&c).cloned());
            let resend: Vec<Arc<Vec<u8>>> = st
                .outbox
                .get_mut(&rid)
                .map(|o| {
                    o.values_mut()
                        .filter(|out| out.sent_on != conn.id)
                        .map(|out| {
                            out.sent_on = conn.id;
                            out.frame.clone()
                        })
                        .collect()
                })
                .unwrap_or_default();
            (old, resend)
        };
        if let Some(old) = old {
            let _ = old.ctl.shutdown(Shutdown::Both);
        }
        if !self.write(conn, &mut w, &frame) {
            return false;
        }
        for frame in resend {
            if !self.write(conn, &mut w, &frame) {
                return false;
            }
        }
        true
    }

    fn answer(&self, conn: &Conn, id: u64, res: &Result<Response, ServerError>) {
        match wire::encode_response(id, res) {
            Ok(frame) => {
                let mut w = lock(&conn.writer);
                self.write(conn, &mut w, &frame);
            }
            Err(e) => eprintln!("scoutgw: response {id} to {} not sent: {e}", conn.peer),
        }
    }

    /// Ping quiet connections, close silent ones.
    fn tick_loop(&self) {
        let tick = ping_interval(self.idle_timeout);
        let tick_ms = tick.as_millis() as u64;
        let idle_ms = self.idle_timeout.as_millis() as u64;
        let ping = wire::encode_ping();
        loop {
            let conns: Vec<Arc<Conn>> = {
                let st = lock(&self.state);
                let (st, _) = self
                    .cond
                    .wait_timeout_while(st, tick, |s| !s.stopping)
                    .unwrap_or_else(|e| e.into_inner());
                if st.stopping {
                    return;
                }
                st.conns.values().cloned().collect()
            };
            let now = self.now();
            for c in conns {
                let busy = c.busy.load(Ordering::Relaxed);
                if !busy && now.saturating_sub(c.last_recv.load(Ordering::Relaxed)) > idle_ms {
                    let _ = c.ctl.shutdown(Shutdown::Both);
                } else if now.saturating_sub(c.last_sent.load(Ordering::Relaxed)) >= tick_ms {
                    // A busy writer is traffic enough.
                    if let Ok(mut w) = c.writer.try_lock() {
                        self.write(&c, &mut w, &ping);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const FSID: u64 = 0xf5;

    /// Greets every rid, answers `GetLastSeq` with 7, records everything.
    #[derive(Default)]
    struct Recorder {
        greetings: Mutex<Vec<u64>>,
        requests: Mutex<Vec<(u64, u64)>>,
        disconnects: Mutex<Vec<u64>>,
        replies: Mutex<Vec<(u64, u64)>>,
    }

    impl ServerCalls for Recorder {
        fn greeting(&self, _: SocketAddr, req: &Request) -> Result<Response, ServerError> {
            let Request::Greeting { rid, fsid, .. } = req else {
                unreachable!()
            };
            lock(&self.greetings).push(*rid);
            if *fsid != FSID {
                return Err(ServerError::WrongFsid {
                    client: *fsid,
                    server: FSID,
                });
            }
            Ok(Response::Greeting {
                server_term: 1,
                fsid: FSID,
            })
        }
        fn request(&self, rid: u64, id: u64, _: Request) -> Option<Result<Response, ServerError>> {
            lock(&self.requests).push((rid, id));
            Some(Ok(Response::LastSeq(7)))
        }
        fn reply(&self, rid: u64, call_id: u64, _: ClientReply) {
            lock(&self.replies).push((rid, call_id));
        }
        fn disconnected(&self, rid: u64) {
            lock(&self.disconnects).push(rid);
        }
    }

    fn server(idle: Duration) -> (Arc<Recorder>, NetServer) {
        let rec = Arc::new(Recorder::default());
        let s = NetServer::listen("127.0.0.1:0".parse().unwrap(), rec.clone(), idle).unwrap();
        (rec, s)
    }

    fn greet(addr: SocketAddr, rid: u64, fsid: u64) -> (TcpStream, Frame) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let g = Request::Greeting {
            fsid,
            format_version: 1,
            rid,
            server_term: 0,
        };
        s.write_all(&wire::encode_request(0, &g).unwrap()).unwrap();
        let f = read_skipping_pings(&mut s).unwrap();
        (s, f)
    }

    fn read_skipping_pings(s: &mut TcpStream) -> Result<Frame, wire::FrameError> {
        loop {
            let f = wire::read_frame(s)?;
            if !matches!(f.msg, Message::Ping) {
                return Ok(f);
            }
        }
    }

    /// The peer closed: a read returns EOF or an error (a reset), never data.
    fn assert_closed(s: &mut TcpStream) {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                // Pings or an error response may come first.
                Ok(_) => continue,
            }
        }
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_request_before_the_greeting_gets_not_greeted_and_the_connection_closes() {
        let (rec, srv) = server(Duration::from_secs(10));
        let mut s = TcpStream::connect(srv.local_addr()).unwrap();
        s.write_all(&wire::encode_request(3, &Request::GetRoots).unwrap())
            .unwrap();
        let f = read_skipping_pings(&mut s).unwrap();
        assert_eq!(f.id, 3);
        assert!(matches!(
            f.msg,
            Message::Response(Err(ServerError::NotGreeted { .. }))
        ));
        assert_closed(&mut s);
        assert!(lock(&rec.requests).is_empty());
    }

    #[test]
    fn a_refused_greeting_is_answered_then_the_connection_closes() {
        let (_rec, srv) = server(Duration::from_secs(10));
        let (mut s, f) = greet(srv.local_addr(), 1, 0xbad);
        assert!(matches!(
            f.msg,
            Message::Response(Err(ServerError::WrongFsid { client: 0xbad, .. }))
        ));
        assert_closed(&mut s);
        assert!(srv.connected_rids().is_empty());
    }

    #[test]
    fn garbage_frames_close_the_connection_without_panicking() {
        let (rec, srv) = server(Duration::from_secs(10));
        let addr = srv.local_addr();
        let mut bad_len = wire::encode_request(1, &Request::GetRoots).unwrap();
        bad_len[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut bad_version = wire::encode_request(1, &Request::GetRoots).unwrap();
        bad_version[4] = 9;
        let mut bad_cmd = wire::encode_request(1, &Request::GetRoots).unwrap();
        bad_cmd[7] = 200;
        let inputs: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            bad_len,
            bad_version,
            bad_cmd,
            (0..=255u8).cycle().take(5000).collect(),
        ];
        for (i, garbage) in inputs.iter().enumerate() {
            // Before the greeting.
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(garbage);
            assert_closed(&mut s);
            // After the greeting.
            let (mut s, f) = greet(addr, 100 + i as u64, FSID);
            assert!(matches!(f.msg, Message::Response(Ok(_))));
            let _ = s.write_all(garbage);
            assert_closed(&mut s);
        }
        wait_for("disconnects", || {
            lock(&rec.disconnects).len() == inputs.len()
        });
        // Still serving.
        let (mut s, _) = greet(addr, 78, FSID);
        s.write_all(&wire::encode_request(5, &Request::GetLastSeq).unwrap())
            .unwrap();
        let f = read_skipping_pings(&mut s).unwrap();
        assert!(matches!(f.msg, Message::Response(Ok(Response::LastSeq(7)))));
        assert_eq!(f.id, 5);
    }

    #[test]
    fn a_second_connection_of_the_same_rid_replaces_the_first() {
        let (rec, srv) = server(Duration::from_secs(10));
        let (mut a, _) = greet(srv.local_addr(), 5, FSID);
        wait_for("registered", || srv.connected_rids().len() == 1);
        let (mut b, _) = greet(srv.local_addr(), 5, FSID);
        assert_closed(&mut a);
        assert_eq!(srv.connected_rids().len(), 1);
        assert_eq!(srv.connected_rids()[0].1, b.local_addr().unwrap());
        // Replacement is not a disconnect.
        thread::sleep(Duration::from_millis(50));
        assert!(lock(&rec.disconnects).is_empty());
        // Late answers go to the new connection.
        srv.respond(5, 99, Ok(Response::Committed));
        let f = read_skipping_pings(&mut b).unwrap();
        assert_eq!(f.id, 99);
        drop(b);
        wait_for("disconnect", || *lock(&rec.disconnects) == vec![5]);
        assert!(srv.connected_rids().is_empty());
    }

    #[test]
    fn the_outbox_is_resent_on_reconnect_and_cancel_calls_forgets_it() {
        let (rec, srv) = server(Duration::from_secs(10));
        let l = crate::msg::NetLock {
            key: crate::format::Key::MIN,
            write_seq: 0,
            old_mode: crate::lock::LockMode::Write,
            new_mode: crate::lock::LockMode::Null,
        };
        // Queued before the client is even connected.
        let c1 = srv.call(9, ServerCall::Invalidate(l));
        let (mut s, _) = greet(srv.local_addr(), 9, FSID);
        let f = read_skipping_pings(&mut s).unwrap();
        assert_eq!(f.id, c1);
        let c2 = srv.call(9, ServerCall::LockRecover { start: l.key });
        assert_eq!(read_skipping_pings(&mut s).unwrap().id, c2);
        // Answer c2 only, then reconnect: only c1 comes again.
        s.write_all(&wire::encode_reply(c2, &ClientReply::Recovered(vec![])).unwrap())
            .unwrap();
        wait_for("the reply", || lock(&rec.replies).len() == 1);
        drop(s);
        let (mut s, _) = greet(srv.local_addr(), 9, FSID);
        let f = read_skipping_pings(&mut s).unwrap();
        assert_eq!(f.id, c1);
        assert!(matches!(f.msg, Message::Call(ServerCall::Invalidate(_))));
        srv.cancel_calls(9);
        s.write_all(&wire::encode_reply(c1, &ClientReply::Invalidated(l)).unwrap())
            .unwrap();
        s.write_all(&wire::encode_request(1, &Request::GetLastSeq).unwrap())
            .unwrap();
        read_skipping_pings(&mut s).unwrap();
        assert_eq!(
            *lock(&rec.replies),
            vec![(9, c2)],
            "cancelled calls' replies dropped"
        );
    }

    #[test]
    fn idle_timeout_closes_a_silent_client_and_pings_keep_a_quiet_one() {
        let (rec, srv) = server(Duration::from_millis(200));
        // Silent: greets, then never sends anything (its pings are not answered).
        let (mut silent, _) = greet(srv.local_addr(), 1, FSID);
        // Quiet: greets and only answers with pings.
        let (quiet, _) = greet(srv.local_addr(), 2, FSID);
        let pings = Arc::new(AtomicU64::new(0));
        let keeper = {
            let mut q = quiet.try_clone().unwrap();
            let pings = pings.clone();
            thread::spawn(move || {
                while let Ok(f) = wire::read_frame(&mut q) {
                    if matches!(f.msg, Message::Ping) {
                        pings.fetch_add(1, Ordering::SeqCst);
                        if q.write_all(&wire::encode_ping()).is_err() {
                            break;
                        }
                    }
                }
            })
        };
        let t0 = Instant::now();
        assert_closed(&mut silent);
        assert!(t0.elapsed() >= Duration::from_millis(150));
        wait_for("disconnect", || lock(&rec.disconnects).contains(&1));
        thread::sleep(Duration::from_millis(500));
        assert!(pings.load(Ordering::SeqCst) >= 2);
        assert_eq!(srv.connected_rids().len(), 1);
        assert_eq!(srv.connected_rids()[0].0, 2);
        srv.shutdown();
        keeper.join().unwrap();
        assert!(srv.connected_rids().is_empty());
    }

    #[test]
    fn shutdown_closes_the_listener_and_every_connection() {
        let (rec, srv) = server(Duration::from_secs(10));
        let addr = srv.local_addr();
        let (mut a, _) = greet(addr, 1, FSID);
        let (mut b, _) = greet(addr, 2, FSID);
        srv.shutdown();
        assert_closed(&mut a);
        assert_closed(&mut b);
        assert_eq!(lock(&rec.disconnects).len(), 2);
        assert!(TcpStream::connect(addr).is_err());
    }
}
