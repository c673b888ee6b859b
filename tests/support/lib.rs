//! Test support for lockattr: throwaway `redis-server` processes on free loopback ports.
//!
//! Every Redis test starts its own server with [`RedisServer::start`], so tests are isolated from
//! each other and from any Redis the machine runs, and fault tests can kill, restart or pause the
//! server under a lock holder. The server keeps nothing on disk (`--save ""`, no AOF), logs into
//! a temporary directory, and is killed when the handle is dropped; if the test is panicking the
//! log is printed so the failure can be diagnosed.
//!
//! When `redis-server` is not on `PATH` the harness panics with install instructions: Redis
//! tests never skip silently.

#![allow(missing_docs)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod proxy;
pub mod rng;

/// How the harness explains a missing `redis-server`.
pub const INSTALL_HINT: &str = "redis-server was not found on PATH; the lockattr tests start \
their own Redis servers. Install it (Debian/Ubuntu: `sudo apt-get install redis-server`, \
macOS: `brew install redis`) or set LOCKATTR_REDIS_SERVER to the binary's path";

/// The `redis-server` binary: `$LOCKATTR_REDIS_SERVER`, else `redis-server` on `PATH`.
///
/// # Panics
/// With [`INSTALL_HINT`] when neither exists.
pub fn redis_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LOCKATTR_REDIS_SERVER") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "LOCKATTR_REDIS_SERVER={} is not a file",
            p.display()
        );
        return p;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("redis-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("{INSTALL_HINT}");
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("local addr").port()
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

fn temp_dir(tag: &str) -> PathBuf {
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

/// A `redis-server` child process on a loopback port, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING` (at most 10 s).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra `redis-server` arguments (e.g. `["--maxclients", "50"]`).
    pub fn start_with(extra_args: &[&str]) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|s| (*s).to_owned()).collect();
        // A port can be taken between `free_port` and the server's bind; try a few.
        let mut last_err = String::new();
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                dir: temp_dir("redis"),
                child: None,
                extra_args: extra_args.clone(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.join("redis.log");
        let child = Command::new(redis_server_binary())
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "yes", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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
                        read_log(&log)
                    ));
                }
            }
            if ping(self.addr()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        Err(format!(
            "redis-server did not answer PING within 10 s; log:\n{}",
            read_log(&log)
        ))
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A fresh redis-rs client for inspecting the server from a test.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid redis url")
    }

    /// A synchronous connection for inspecting the server from a test.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to test redis-server")
    }

    /// Kills the server with SIGKILL (no shutdown, nothing saved) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts a new, empty one on the same port.
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
        read_log(&self.dir.join("redis.log"))
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
        let _ = std::fs::remove_dir_all(&self.dir);
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
