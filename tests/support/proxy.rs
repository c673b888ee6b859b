//! A loopback TCP proxy for fault tests.
//!
//! [`Proxy::start`] listens on a free loopback port and forwards every connection to a target
//! (a `redis-server`). From the test, through the [`Proxy`] handle, faults can be switched on
//! and off at any time; they apply at once to the connections already open as well as to new
//! ones:
//!
//! - **delay** per direction ([`Proxy::set_delay`]): every chunk of bytes read from one side is
//!   written to the other no earlier than `delay + jitter × U[0,1)` after it was read. Bytes keep
//!   their order (one writer per direction writes chunks one after another), so a delayed reply
//!   path models the interesting case: Redis has executed the command, the client learns it late.
//! - **stall** ([`Proxy::stall`] / [`Proxy::resume`]): stop forwarding one or both directions
//!   while the sockets stay open; bytes read meanwhile are buffered and delivered in order on
//!   resume. Nothing is lost.
//! - **fragment** ([`Proxy::fragment`]): write in pieces of a few bytes with a short pause between
//!   them, so that commands and replies arrive split across many TCP reads.
//! - **cut** ([`Proxy::cut_all`]): reset every open connection (`SO_LINGER` 0, so both peers see
//!   `ECONNRESET`, not an orderly end of stream); buffered bytes are dropped.
//! - **refuse** ([`Proxy::set_refuse`]): accept new connections and close them at once.
//!
//! [`Proxy::accepted`] counts the connections forwarded so far, so a test can see reconnects.
//!
//! How it works: each connection has two pipes (requests: client→server, replies:
//! server→client). A pipe's reader stamps each chunk with the time it was read and queues it;
//! the pipe's writer takes chunks in order and, for each, waits until it is due under the
//! *current* faults (re-evaluated whenever they change), then writes it. The queue is unbounded:
//! tests move little data, and a stall must not lose or block anything.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::rng::Rng;

/// Which way the bytes flow that a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server: the commands.
    Requests,
    /// Server to client: the replies (and pushes, e.g. pub/sub messages).
    Replies,
    /// Both ways.
    Both,
}

impl Direction {
    fn includes(self, side: Side) -> bool {
        matches!(
            (self, side),
            (Direction::Both, _)
                | (Direction::Requests, Side::Requests)
                | (Direction::Replies, Side::Replies)
        )
    }
}

/// One pipe of a connection (`Direction` without `Both`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Requests,
    Replies,
}

/// Writes in pieces of `size` bytes with `pause` between pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Bytes per piece (at least 1).
    pub size: usize,
    /// Pause between two pieces of one chunk.
    pub pause: Duration,
}

/// The faults of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipeFaults {
    /// Fixed delay of every chunk.
    pub delay: Duration,
    /// Extra random delay, uniform in `[0, jitter)`, drawn per chunk.
    pub jitter: Duration,
    /// While `true` nothing is forwarded (but everything is kept).
    pub stalled: bool,
    /// Split writes into small pieces.
    pub fragment: Option<Fragment>,
}

/// The faults of both directions; [`Faults::default`] is a clean proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Client to server.
    pub requests: PipeFaults,
    /// Server to client.
    pub replies: PipeFaults,
}

impl Faults {
    fn pipe(&self, side: Side) -> &PipeFaults {
        match side {
            Side::Requests => &self.requests,
            Side::Replies => &self.replies,
        }
    }

    fn modify(&mut self, direction: Direction, f: impl Fn(&mut PipeFaults)) {
        if direction.includes(Side::Requests) {
            f(&mut self.requests);
        }
        if direction.includes(Side::Replies) {
            f(&mut self.replies);
        }
    }
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    faults: watch::Sender<Faults>,
    /// Bumped by every `cut_all`; each connection watches it.
    cut: watch::Sender<u64>,
    refuse: AtomicBool,
    accepted: AtomicU64,
    refused: AtomicU64,
    open: AtomicU64,
    seed: u64,
}

/// A running proxy; dropping it stops it and cuts its connections.
///
/// All methods are cheap and synchronous (they only publish the new setting), so a chaos
/// controller can call them from anywhere. The proxy's tasks run on the Tokio runtime that
/// called [`Proxy::start`].
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            target,
            faults: watch::Sender::new(Faults::default()),
            cut: watch::Sender::new(0),
            refuse: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            open: AtomicU64::new(0),
            seed: Rng::seed_from_time(),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Proxy { addr, shared, task }
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Cuts (resets) every connection currently open through the proxy.
    pub fn cut_all(&self) {
        self.shared.cut.send_modify(|n| *n += 1);
    }

    /// While `true`, new connections are accepted and immediately closed.
    pub fn set_refuse(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Delays every chunk in `direction` by `delay` plus a random `[0, jitter)`.
    /// `Duration::ZERO` for both switches the delay off.
    pub fn set_delay(&self, direction: Direction, delay: Duration, jitter: Duration) {
        self.update(direction, |p| {
            p.delay = delay;
            p.jitter = jitter;
        });
    }

    /// Stops forwarding in `direction`, keeping the sockets open and the bytes buffered.
    pub fn stall(&self, direction: Direction) {
        self.update(direction, |p| p.stalled = true);
    }

    /// Forwards again what [`stall`](Self::stall) held back, in order.
    pub fn resume(&self, direction: Direction) {
        self.update(direction, |p| p.stalled = false);
    }

    /// Writes in `direction` in pieces of `size` bytes (at least 1) with `pause` between them.
    pub fn fragment(&self, direction: Direction, size: usize, pause: Duration) {
        let fragment = Fragment {
            size: size.max(1),
            pause,
        };
        self.update(direction, |p| p.fragment = Some(fragment));
    }

    /// Writes in `direction` whole again.
    pub fn unfragment(&self, direction: Direction) {
        self.update(direction, |p| p.fragment = None);
    }

    /// Replaces all faults at once.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults.send_replace(faults);
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        *self.shared.faults.borrow()
    }

    /// Removes every delay, stall and fragmentation (buffered bytes are then delivered).
    /// Does not change [`set_refuse`](Self::set_refuse).
    pub fn clear(&self) {
        self.set_faults(Faults::default());
    }

    /// How many connections the proxy has accepted and forwarded (refused ones not included).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// How many connections were refused under [`set_refuse`](Self::set_refuse).
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// How many forwarded connections are open right now.
    pub fn open_connections(&self) -> u64 {
        self.shared.open.load(Ordering::SeqCst)
    }

    fn update(&self, direction: Direction, f: impl Fn(&mut PipeFaults)) {
        self.shared
            .faults
            .send_modify(|faults| faults.modify(direction, f));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut_all();
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut n: u64 = 0;
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // E.g. out of file descriptors: back off instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.refuse.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        n += 1;
        // `subscribe` marks the current cut count as seen: only later cuts end this connection.
        let cut = shared.cut.subscribe();
        let seed = shared.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        tokio::spawn(connection(client, shared.clone(), cut, seed));
    }
}

/// Decrements the open-connection count however the connection ends.
struct OpenGuard<'a>(&'a AtomicU64);

impl<'a> OpenGuard<'a> {
    fn new(open: &'a AtomicU64) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connection(
    mut client: TcpStream,
    shared: Arc<Shared>,
    mut cut: watch::Receiver<u64>,
    seed: u64,
) {
    let _open = OpenGuard::new(&shared.open);
    let server = tokio::select! {
        server = TcpStream::connect(shared.target) => server,
        _ = cut.changed() => Err(std::io::ErrorKind::ConnectionAborted.into()),
    };
    let Ok(mut server) = server else {
        reset_on_close(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let was_cut = {
        let mut rng = Rng::new(seed);
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let requests = pipe(
            client_read,
            server_write,
            Side::Requests,
            shared.faults.subscribe(),
            rng.next_u64(),
        );
        let replies = pipe(
            server_read,
            client_write,
            Side::Replies,
            shared.faults.subscribe(),
            rng.next_u64(),
        );
        tokio::select! {
            _ = async { tokio::try_join!(requests, replies) } => false,
            _ = cut.changed() => true,
        }
    };
    if was_cut {
        // Abortive close: both peers see a reset, as after a network failure.
        reset_on_close(&client);
        reset_on_close(&server);
    }
}

/// Makes closing `stream` send a reset (`SO_LINGER` 0) instead of an orderly end of stream.
fn reset_on_close(stream: &TcpStream) {
    // `set_linger` is deprecated from Tokio 1.50 because a *non-zero* linger blocks the thread
    // on drop; zero does not. Its replacement, `set_zero_linger`, needs 1.50, and the workspace
    // asks only for 1.47.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
}

/// Bytes read from one side, waiting to be written to the other. Empty `data` is the end of
/// the stream.
struct Chunk {
    data: Vec<u8>,
    read_at: Instant,
    /// This chunk's draw for the jitter, in `[0, 1)`.
    jitter: f64,
}

/// Forwards one direction until its source ends (then half-closes the destination) or an I/O
/// error occurs.
async fn pipe(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    side: Side,
    mut faults: watch::Receiver<Faults>,
    seed: u64,
) -> std::io::Result<()> {
    let (queue, mut queued) = mpsc::unbounded_channel::<Chunk>();
    let read = async move {
        let mut rng = Rng::new(seed);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            let chunk = Chunk {
                data: buf[..n].to_vec(),
                read_at: Instant::now(),
                jitter: rng.unit(),
            };
            if queue.send(chunk).is_err() || n == 0 {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    let write = async move {
        while let Some(chunk) = queued.recv().await {
            until_due(&mut faults, side, &chunk).await;
            if chunk.data.is_empty() {
                to.shutdown().await?;
                return Ok(());
            }
            write_chunk(&mut to, &chunk.data, &mut faults, side).await?;
        }
        Ok(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Waits until `chunk` may be written under the current faults: not stalled, and its delay
/// (counted from when it was read) has passed. Re-evaluates whenever the faults change, so
/// shortening a delay or resuming a stall takes effect on bytes already queued.
async fn until_due(faults: &mut watch::Receiver<Faults>, side: Side, chunk: &Chunk) {
    loop {
        let now = *faults.borrow_and_update().pipe(side);
        if !now.stalled {
            let due = chunk.read_at + now.delay + now.jitter.mul_f64(chunk.jitter);
            if Instant::now() >= due {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(due) => return,
                changed = faults.changed() => if changed.is_err() { return },
            }
        } else if faults.changed().await.is_err() {
            return;
        }
    }
}

async fn write_chunk(
    to: &mut WriteHalf<'_>,
    data: &[u8],
    faults: &mut watch::Receiver<Faults>,
    side: Side,
) -> std::io::Result<()> {
    let mut rest = data;
    while !rest.is_empty() {
        let now = *faults.borrow_and_update().pipe(side);
        if now.stalled {
            if faults.changed().await.is_err() {
                return Ok(());
            }
            continue;
        }
        let size = now
            .fragment
            .map_or(rest.len(), |f| f.size.clamp(1, rest.len()));
        let (piece, after) = rest.split_at(size);
        to.write_all(piece).await?;
        rest = after;
        if let (Some(f), false) = (now.fragment, rest.is_empty()) {
            tokio::time::sleep(f.pause).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisServer;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const MS: Duration = Duration::from_millis(1);

    /// Fails the test instead of hanging when a step takes far too long.
    async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .unwrap_or_else(|_| panic!("{what} took more than 10 s"))
    }

    async fn raw(proxy: &Proxy) -> TcpStream {
        let s = TcpStream::connect(proxy.addr())
            .await
            .expect("connect proxy");
        s.set_nodelay(true).unwrap();
        s
    }

    /// Reads exactly `n` bytes.
    async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        bounded("read", s.read_exact(&mut buf)).await.expect("read");
        buf
    }

    /// A connection without redis-rs's default 500 ms response timeout: the tests bound their
    /// waits themselves, and delays or fragmentation may take longer than that on purpose.
    /// Whether the proxy's open connections reach `n` within 2 s (polled without blocking the
    /// runtime the proxy runs on).
    async fn open_connections_become(proxy: &Proxy, n: u64) -> bool {
        for _ in 0..400 {
            if proxy.open_connections() == n {
                return true;
            }
            tokio::time::sleep(5 * MS).await;
        }
        proxy.open_connections() == n
    }

    async fn multiplexed(url: &str) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect through proxy")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delayed_replies_arrive_late_but_redis_executes_at_once() {
        let server = RedisServer::start();
        let proxy = Proxy::start(server.addr()).await;
        let mut conn = multiplexed(&proxy.url()).await;
        proxy.set_delay(Direction::Replies, 200 * MS, Duration::ZERO);

        let t = Instant::now();
        let pong: String = bounded("PING", redis::cmd("PING").query_async(&mut conn))
            .await
            .unwrap();
        assert_eq!(pong, "PONG");
        let took = t.elapsed();
        assert!(
            took >= 200 * MS,
            "a reply delayed by 200 ms came after {took:?}"
        );
        assert!(took < 3000 * MS, "PING took {took:?}");

        // The key scenario: Redis has executed the SET long before the client sees the reply.
        proxy.set_delay(Direction::Replies, 600 * MS, Duration::ZERO);
        let mut set_conn = conn.clone();
        let t = Instant::now();
        let set = tokio::spawn(async move {
            let () = redis::cmd("SET")
                .arg("k")
                .arg("v")
                .query_async(&mut set_conn)
                .await
                .unwrap();
            Instant::now()
        });
        let mut direct = server.conn();
        let seen = (0..400).any(|_| {
            std::thread::sleep(5 * MS);
            redis::cmd("EXISTS")
                .arg("k")
                .query::<bool>(&mut direct)
                .unwrap()
        });
        assert!(seen, "the SET never reached Redis");
        assert!(!set.is_finished(), "the SET's reply was not delayed");
        let replied = bounded("SET", set).await.unwrap() - t;
        assert!(replied >= 600 * MS, "SET replied after {replied:?}");

        // Changing the delay applies to bytes already queued: a reply held for 2 s is released
        // when the delay is switched off.
        proxy.set_delay(Direction::Replies, 2000 * MS, Duration::ZERO);
        let mut get_conn = conn.clone();
        let t = Instant::now();
        let get = tokio::spawn(async move {
            redis::cmd("GET")
                .arg("k")
                .query_async::<String>(&mut get_conn)
                .await
        });
        tokio::time::sleep(100 * MS).await;
        proxy.set_delay(Direction::Replies, Duration::ZERO, Duration::ZERO);
        assert_eq!(bounded("GET", get).await.unwrap().unwrap(), "v");
        assert!(
            t.elapsed() < 1500 * MS,
            "the cleared delay still held the reply: {:?}",
            t.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delayed_requests_reach_redis_late() {
        let server = RedisServer::start();
        let proxy = Proxy::start(server.addr()).await;
        let mut s = raw(&proxy).await;
        proxy.set_delay(Direction::Requests, 300 * MS, Duration::ZERO);
        let t = Instant::now();
        s.write_all(b"SET k v\r\n").await.unwrap();
        tokio::time::sleep(100 * MS).await;
        let exists: bool = redis::cmd("EXISTS")
            .arg("k")
            .query(&mut server.conn())
            .unwrap();
        assert!(
            !exists,
            "a request delayed by 300 ms executed within 100 ms"
        );
        assert_eq!(read_n(&mut s, 5).await, b"+OK\r\n");
        assert!(t.elapsed() >= 300 * MS, "reply after {:?}", t.elapsed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jitter_keeps_byte_order() {
        let server = RedisServer::start();
        let proxy = Proxy::start(server.addr()).await;
        proxy.set_delay(Direction::Both, MS, 5 * MS);
        let mut s = raw(&proxy).await;
        let mut expected = Vec::new();
        for i in 1..=100 {
            s.write_all(b"INCR n\r\n").await.unwrap();
            expected.extend_from_slice(format!(":{i}\r\n").as_bytes());
            if i % 10 == 0 {
                tokio::time::sleep(MS).await;
            }
        }
        let got = read_n(&mut s, expected.len()).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stall_holds_bytes_until_resumed() {
        let server = RedisServer::start();
        let proxy = Proxy::start(server.addr()).await;
        let mut conn = multiplexed(&proxy.url()).await;

        // Replies stalled: the command runs, its reply waits.
        proxy.stall(Direction::Replies);
        let mut c = conn.clone();
        let mut ping = tokio::spawn(async move {
            redis::cmd("SET")
                .arg("a")
                .arg("1")
                .query_async::<()>(&mut c)
                .await
        });
        let early = tokio::time::timeout(400 * MS, &mut ping).await;
        assert!(early.is_err(), "a stalled reply was delivered: {early:?}");
        let exists: bool = redis::cmd("EXISTS")
            .arg("a")
            .query(&mut server.conn())
            .unwrap();
        assert!(exists, "the request direction was not stalled");
        proxy.resume(Direction::Replies);
        bounded("resumed SET", ping).await.unwrap().unwrap();

        // Requests stalled: nothing reaches Redis; on resume everything arrives, in order.
        proxy.stall(Direction::Requests);
        let mut pipe = redis::pipe();
        for i in 0..50 {
            pipe.cmd("RPUSH").arg("list").arg(i).ignore();
        }
        pipe.cmd("LRANGE").arg("list").arg(0).arg(-1);
        let mut c = conn.clone();
        let list = tokio::spawn(async move { pipe.query_async::<(Vec<u32>,)>(&mut c).await });
        tokio::time::sleep(300 * MS).await;
        let len: u64 = redis::cmd("LLEN")
            .arg("list")
            .query(&mut server.conn())
            .unwrap();
        assert_eq!(len, 0, "stalled requests reached Redis");
        proxy.resume(Direction::Requests);
        let (list,) = bounded("resumed pipeline", list).await.unwrap().unwrap();
        assert_eq!(list, (0..50).collect::<Vec<_>>());
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        assert_eq!(pong, "PONG");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fragmented_traffic_still_gives_correct_replies() {
        let server = RedisServer::start();
        let proxy = Proxy::start(server.addr()).await;
        let mut conn = multiplexed(&proxy.url()).await;
        proxy.fragment(Direction::Both, 5, MS);
        assert_eq!(
            proxy.faults().replies.fragment,
            Some(Fragment { size: 5, pause: MS })
        );

        let value = "x".repeat(60);
        let mut pipe = redis::pipe();
        for i in 0..10 {
            pipe.cmd("SET")
                .arg(format!("k{i}"))
                .arg(format!("{i}{value}"))
                .ignore();
        }
        for i in 0..10 {
            pipe.cmd("GET").arg(format!("k{i}"));
        }
        let t = Instant::now();
        let got: Vec<String> = bounded("pipeline", pipe.query_async(&mut conn))
            .await
            .unwrap();
        let took = t.elapsed();
        let want: Vec<String> = (0..10).map(|i| format!("{i}{value}")).collect();
        assert_eq!(got, want);
        // 10 replies of ~310 bytes in 3-byte pieces with 1 ms pauses: ~1000 pauses at least.
        assert!(
            took >= 500 * MS,
            "fragmentation did not slow the replies: {took:?}"
        );

        proxy.unfragment(Direction::Both);
        assert_eq!(proxy.faults(), Faults::default());

        // Unfragmenting applies to a chunk being written: a reply trickling out one byte per
        // 10 ms (2 s in all) comes out at once.
        let () = redis::cmd("SET")
            .arg("big")
            .arg("y".repeat(200))
            .query_async(&mut conn)
            .await
            .unwrap();
        proxy.fragment(Direction::Replies, 1, 10 * MS);
        let mut s = raw(&proxy).await;
        let t = Instant::now();
        s.write_all(b"GET big\r\n").await.unwrap();
        assert_eq!(read_n(&mut s, 6).await, b"$200\r\n");
        proxy.unfragment(Direction::Replies);
        let rest = read_n(&mut s, 202).await;
        assert_eq!(&rest[..200], "y".repeat(200).as_bytes());
        assert!(
            t.elapsed() < 1500 * MS,
            "still fragmented after unfragment: {:?}",
            t.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cut_resets_connections_and_reconnects_are_counted() {
        let server = RedisServer::start();
        let proxy = Proxy::start(server.addr()).await;

        let mut s = raw(&proxy).await;
        s.write_all(b"PING\r\n").await.unwrap();
        assert_eq!(read_n(&mut s, 7).await, b"+PONG\r\n");
        let mut conn = multiplexed(&proxy.url()).await;
        let () = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(proxy.accepted(), 2);
        assert_eq!(proxy.open_connections(), 2);

        proxy.cut_all();
        let mut buf = [0u8; 16];
        let read = bounded("read after cut", s.read(&mut buf)).await;
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "a cut connection should be reset, got {read:?}"
        );
        // Send the next command only once the proxy has reset both connections, so it is never
        // in flight while the proxy tears the connection down (once, on a loaded machine, a GET
        // sent in that moment got neither a reply nor an error for 10 s: redis-rs's connection
        // here has no response timeout).
        assert!(
            open_connections_become(&proxy, 0).await,
            "a cut closes every connection"
        );
        let err = bounded("GET after cut", async {
            // The reset reaches redis-rs's connection task asynchronously; a command sent in
            // the moment before may still be written into the dead socket and fail the same way.
            redis::cmd("GET")
                .arg("k")
                .query_async::<String>(&mut conn)
                .await
        })
        .await
        .expect_err("a command on a cut connection fails");
        assert!(err.is_connection_dropped() || err.is_io_error(), "{err:?}");

        // A new connection goes through and is counted; the old ones are gone.
        let mut again = multiplexed(&proxy.url()).await;
        let v: String = redis::cmd("GET")
            .arg("k")
            .query_async(&mut again)
            .await
            .unwrap();
        assert_eq!(v, "v");
        assert_eq!(proxy.accepted(), 3);
        assert!(
            open_connections_become(&proxy, 1).await,
            "cut connections are closed"
        );

        proxy.set_refuse(true);
        let mut refused = raw(&proxy).await;
        let n = bounded("read refused", refused.read(&mut buf))
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "a refused connection is closed");
        assert_eq!((proxy.accepted(), proxy.refused()), (3, 1));
        proxy.set_refuse(false);
        let mut s = raw(&proxy).await;
        s.write_all(b"PING\r\n").await.unwrap();
        assert_eq!(read_n(&mut s, 7).await, b"+PONG\r\n");
        assert_eq!(proxy.accepted(), 4);
    }
}
