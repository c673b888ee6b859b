//! Test support for lockattr: throwaway Redis deployments on free loopback ports, a
//! fault-injecting proxy, and a history checker for multi-process lock tests.
//!
//! Every Redis test starts its own servers, so tests are isolated from each other and from any
//! Redis the machine runs, and fault tests can kill, restart or pause a server under a lock
//! holder. Servers keep nothing on disk (`--save ""`, no AOF), log into a temporary directory,
//! and are killed when their handle is dropped; if the test is panicking the logs are printed so
//! the failure can be diagnosed.
//!
//! - [`RedisServer`]: one plain server ([`start`](RedisServer::start)), or one with only a TLS
//!   port ([`start_tls`](RedisServer::start_tls), certificates in [`tls::TlsFiles`]); ACL users
//!   in [`acl`].
//! - [`cluster::RedisCluster`]: masters with replicas, failover and kill helpers.
//! - [`sentinel::RedisSentinel`]: a master, replicas and sentinels, failover helpers.
//! - [`proxy::Proxy`]: delays, stalls, fragmentation, cuts between a client and a server.
//! - [`history`]: records of critical sections and the checker that judges them;
//!   [`chaos`] drives proxies at random while a history is recorded.
//!
//! When `redis-server`, `redis-cli` or `openssl` is missing the harness panics with install
//! instructions ([`binaries`]): Redis tests never skip silently.
//!
//! The deployment helpers are synchronous (they run processes and poll with short sleeps);
//! from a multi-threaded Tokio test, call the slow ones (cluster or sentinel failover) inside
//! `tokio::task::block_in_place` so that the runtime's other tasks keep running.

#![allow(missing_docs)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod acl;
pub mod binaries;
pub mod chaos;
pub mod clock;
pub mod cluster;
pub mod history;
pub mod proxy;
pub mod rng;
pub mod sentinel;
pub mod tls;

pub use acl::AclUser;
pub use binaries::{openssl_binary, redis_cli_binary, redis_server_binary, INSTALL_HINT};
pub use cluster::RedisCluster;
pub use sentinel::RedisSentinel;
pub use tls::{ClientAuth, TlsFiles};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("local addr").port()
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A new, empty temporary directory named after `tag`, the process and a counter.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "lockattr-{tag}-{}-{n}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir for redis-server");
    dir
}

/// Calls `f` every `every` until it returns `Ok`, for at most `limit`; the last error otherwise.
pub fn poll_until<T>(
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= limit => return Err(e),
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// Like [`poll_until`] (every 20 ms), panicking with `what` and the last error on time-out.
pub fn eventually<T>(what: &str, limit: Duration, f: impl FnMut() -> Result<T, String>) -> T {
    poll_until(limit, Duration::from_millis(20), f)
        .unwrap_or_else(|e| panic!("{what}: not reached within {limit:?}; last state: {e}"))
}

/// A synchronous connection to `addr` whose connect, reads and writes are bounded by `limit`,
/// so that a helper never hangs on a paused or dead server.
pub fn connect_bounded(addr: SocketAddr, limit: Duration) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://{addr}"))?;
    let conn = client.get_connection_with_timeout(limit)?;
    conn.set_read_timeout(Some(limit))?;
    conn.set_write_timeout(Some(limit))?;
    Ok(conn)
}

/// A `redis-server` child process on a loopback port, killed on drop.
///
/// Either a plain data server ([`start`](Self::start)), a server with only a TLS port
/// ([`start_tls`](Self::start_tls)), or, inside [`RedisCluster`] and [`RedisSentinel`], a
/// cluster node or a sentinel.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    // Boxed: the handle stays small (the examples keep it in an enum beside a `String`).
    launch: Box<Launch>,
}

/// How a server is (re)started.
#[derive(Debug, Clone)]
pub(crate) enum Launch {
    /// A data server: plain, or TLS-only when `tls` is set.
    Data {
        tls: Option<(TlsFiles, ClientAuth)>,
        extra_args: Vec<String>,
    },
    /// `redis-server <config> --sentinel`; the config names the port, directory and log.
    Sentinel { config: PathBuf },
}

/// The log file inside a server's directory.
pub(crate) const LOG_FILE: &str = "redis.log";

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING` (at most 10 s).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra `redis-server` arguments (e.g. `["--maxclients", "50"]`).
    pub fn start_with(extra_args: &[&str]) -> Self {
        let launch = Launch::Data {
            tls: None,
            extra_args: owned(extra_args),
        };
        Self::start_on_free_port(temp_dir("redis"), launch)
    }

    /// Starts a server that listens only on a TLS port (`--port 0 --tls-port <port>`), with
    /// certificates generated for this server by the `openssl` CLI (see [`TlsFiles`]); clients
    /// need not present a certificate. [`url`](Self::url) is `rediss://127.0.0.1:<port>`.
    ///
    /// # Panics
    /// When `openssl` or `redis-cli` (used to check the server is up) is missing, with
    /// install instructions.
    pub fn start_tls() -> Self {
        Self::start_tls_with(ClientAuth::No, &[])
    }

    /// Like [`start_tls`](Self::start_tls), with a client-certificate policy
    /// (`--tls-auth-clients`) and extra arguments.
    pub fn start_tls_with(client_auth: ClientAuth, extra_args: &[&str]) -> Self {
        let dir = temp_dir("redis-tls");
        let files = TlsFiles::generate(&dir.join("tls"));
        let launch = Launch::Data {
            tls: Some((files, client_auth)),
            extra_args: owned(extra_args),
        };
        Self::start_on_free_port(dir, launch)
    }

    fn start_on_free_port(dir: PathBuf, launch: Launch) -> Self {
        // A port can be taken between `free_port` and the server's bind; try a few.
        let mut last_err = String::new();
        for _ in 0..5 {
            match Self::start_on(free_port(), dir.clone(), launch.clone()) {
                Ok(server) => return server,
                Err(e) => last_err = e,
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("could not start redis-server: {last_err}");
    }

    /// Starts a server on `port` with `dir` as its directory, which the server owns from now
    /// on (it is removed on drop, also when the start fails).
    pub(crate) fn start_on(port: u16, dir: PathBuf, launch: Launch) -> Result<Self, String> {
        let mut server = RedisServer {
            port,
            dir,
            child: None,
            launch: Box::new(launch),
        };
        match server.spawn() {
            Ok(()) => Ok(server),
            Err(e) => {
                // Keep the directory for a retry on another port: forget it before dropping.
                server.dir = PathBuf::new();
                Err(e)
            }
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(redis_server_binary());
        match &*self.launch {
            Launch::Sentinel { config } => {
                cmd.arg(config).arg("--sentinel");
            }
            Launch::Data { tls, extra_args } => {
                match tls {
                    None => cmd.arg("--port").arg(self.port.to_string()),
                    Some((files, auth)) => cmd
                        .args(["--port", "0", "--tls-port"])
                        .arg(self.port.to_string())
                        .arg("--tls-cert-file")
                        .arg(&files.server_cert)
                        .arg("--tls-key-file")
                        .arg(&files.server_key)
                        .arg("--tls-ca-cert-file")
                        .arg(&files.ca_cert)
                        .args(["--tls-auth-clients", auth.as_arg()]),
                };
                cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--protected-mode", "yes", "--daemonize", "no"])
                    // Replicas sync at once instead of waiting 5 s for more replicas to join.
                    .args(["--repl-diskless-sync-delay", "0"])
                    .arg("--dir")
                    .arg(&self.dir)
                    .arg("--logfile")
                    .arg(self.dir.join(LOG_FILE))
                    .args(extra_args);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = self
            .command()
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e} ({INSTALL_HINT})"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "redis-server exited with {status}; log:\n{}",
                        self.log()
                    ));
                }
            }
            if self.answers_ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        Err(format!(
            "redis-server did not answer PING within 10 s; log:\n{}",
            self.log()
        ))
    }

    fn answers_ping(&self) -> bool {
        if self.tls().is_none() {
            return ping(self.addr());
        }
        // Cheap check first: the port is bound; then a real TLS round trip.
        std::net::TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
            && self.cli(&["PING"]).is_ok_and(|out| out == "PONG")
    }

    /// The port the server listens on (the TLS port for a TLS server).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://127.0.0.1:<port>` for a TLS server (whose
    /// certificate is valid for `127.0.0.1` and `localhost`, signed by [`TlsFiles::ca_cert`]).
    pub fn url(&self) -> String {
        let scheme = if self.tls().is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `rediss://127.0.0.1:<port>/#insecure`: TLS without certificate verification.
    ///
    /// # Panics
    /// If this is not a TLS server.
    pub fn insecure_url(&self) -> String {
        assert!(self.tls().is_some(), "insecure_url() of a plain server");
        format!("{}/#insecure", self.url())
    }

    /// The certificates of a TLS server (`None` for a plain one).
    pub fn tls(&self) -> Option<&TlsFiles> {
        match &*self.launch {
            Launch::Data {
                tls: Some((files, _)),
                ..
            } => Some(files),
            _ => None,
        }
    }

    /// Whether a TLS server requires, accepts or ignores client certificates.
    pub fn client_auth(&self) -> Option<ClientAuth> {
        match &*self.launch {
            Launch::Data {
                tls: Some((_, auth)),
                ..
            } => Some(*auth),
            _ => None,
        }
    }

    /// The server's directory (log, cluster or sentinel config, TLS files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh redis-rs client for inspecting the server from a test.
    ///
    /// # Panics
    /// For a TLS server: this workspace's redis-rs is built without TLS; use [`cli`](Self::cli).
    pub fn client(&self) -> redis::Client {
        assert!(
            self.tls().is_none(),
            "redis-rs is built without TLS in this workspace; talk to a TLS server with cli()"
        );
        redis::Client::open(self.url()).expect("valid redis url")
    }

    /// A synchronous connection for inspecting the server from a test.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to test redis-server")
    }

    /// Runs `redis-cli` against this server (with `--tls`, the CA and the client certificate
    /// for a TLS server) and returns its output, trimmed. Redis error replies are errors.
    ///
    /// # Panics
    /// When `redis-cli` is missing, with install instructions.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(redis_cli_binary());
        cmd.args(["-e", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string());
        if let Some(files) = self.tls() {
            cmd.arg("--tls")
                .arg("--cacert")
                .arg(&files.ca_cert)
                .arg("--cert")
                .arg(&files.client_cert)
                .arg("--key")
                .arg(&files.client_key);
        }
        run_cli(cmd.args(args))
    }

    /// Whether the server process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL (no shutdown, nothing saved) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts a new, empty one on the same port (a cluster node keeps its
    /// `nodes.conf`, a sentinel its rewritten config).
    pub fn restart(&mut self) {
        self.kill();
        // The old socket can linger briefly; retry the bind for a bounded time.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => panic!("restart redis-server: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Freezes the server process (SIGSTOP): connections stay open but nothing is answered.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // `kill(2)` has no memory-safety preconditions; the workspace denies `unsafe_code`, so
        // this test-support call opts out explicitly.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.join(LOG_FILE))
    }

    /// Total commands executed per command name, from `INFO commandstats` (commands run inside
    /// Lua scripts included, as Redis counts them).
    pub fn command_counts(&self) -> std::collections::BTreeMap<String, u64> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.conn())
            .expect("INFO commandstats");
        parse_commandstats(&info)
    }

    /// Resets `INFO commandstats`.
    pub fn reset_stats(&self) {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut self.conn())
            .expect("CONFIG RESETSTAT");
    }

    /// Every key in the server (tests use few keys).
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut self.conn())
            .expect("KEYS *");
        keys.sort();
        keys
    }
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs a prepared `redis-cli` command: its trimmed stdout, or an error with its output when
/// it fails or prints a Redis error reply (`-e`: without it redis-cli exits with 0 after an
/// error reply).
pub(crate) fn run_cli(cmd: &mut Command) -> Result<String, String> {
    // `--cluster create` waits for the cluster to join; a minute is far beyond that.
    let out = binaries::run_bounded(cmd, Duration::from_secs(60))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "redis-cli {:?} failed ({}): {stdout} {stderr}",
            cmd.get_args().collect::<Vec<_>>(),
            out.status
        ))
    }
}

/// The commands lockattr's locking sends (as `INFO commandstats` names them), for counting what
/// reached a server that should not get any: an old master after a failover, another node.
pub const LOCK_COMMANDS: [&str; 8] = [
    "set", "evalsha", "eval", "pexpire", "pttl", "wait", "del", "time",
];

/// Parses `INFO commandstats` into command name -> calls.
pub fn parse_commandstats(info: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        let calls = fields
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        out.insert(name.to_owned(), calls);
    }
    out
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()))
}

fn ping(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A paused server cannot be killed cleanly by everyone; make sure it runs.
            let pid = libc::pid_t::try_from(child.id()).unwrap_or(0);
            #[allow(unsafe_code)]
            let _ = unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        if std::thread::panicking() {
            eprintln!(
                "--- redis-server on port {} log ---\n{}\n--- end of log ---",
                self.port,
                self.log()
            );
        }
        self.kill();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_parse() {
        let info = "# Commandstats\r\ncmdstat_get:calls=3,usec=1,usec_per_call=0.3,rejected_calls=0,failed_calls=0\r\ncmdstat_evalsha:calls=12,usec=9\r\n";
        let m = parse_commandstats(info);
        assert_eq!(m["get"], 3);
        assert_eq!(m["evalsha"], 12);
    }

    #[test]
    fn server_starts_answers_and_restarts() {
        let mut s = RedisServer::start();
        let _: () = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query(&mut s.conn())
            .unwrap();
        assert_eq!(s.keys(), vec!["k".to_owned()]);
        s.restart();
        assert!(s.keys().is_empty(), "a restarted server is empty");
    }
}
