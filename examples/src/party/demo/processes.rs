//! Service processes started by the driver, killed when their handle is dropped.

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};

use super::redis::RedisTarget;
use crate::party::http::LISTENING_PREFIX;

/// How long a service may take to connect to its database and Redis and start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The program (and its leading arguments) that runs one service process; the driver appends
/// the service options.
#[derive(Debug, Clone)]
pub struct ServiceCommand {
    program: PathBuf,
    leading_args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl ServiceCommand {
    /// `program` with no leading arguments, e.g. the `party-service` binary.
    pub fn new(program: impl Into<PathBuf>) -> ServiceCommand {
        ServiceCommand {
            program: program.into(),
            leading_args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for the service (`RUST_LOG`, for example; without one the
    /// service logs at `info`, or as the caller's own `RUST_LOG` says).
    #[must_use]
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> ServiceCommand {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Appends a leading argument (such as a subcommand).
    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> ServiceCommand {
        self.leading_args.push(arg.into());
        self
    }

    /// The running executable with `serve`: how `party-demo` starts its services, so that the
    /// one binary `cargo run --bin party-demo` builds is all the demo needs.
    ///
    /// # Errors
    /// When the running executable cannot be located.
    pub fn current_exe_serve() -> anyhow::Result<ServiceCommand> {
        let exe = std::env::current_exe()
            .context("locate the running executable (the demo re-runs it as `serve`)")?;
        Ok(ServiceCommand::new(exe).arg("serve"))
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }
}

/// What every service process of a run shares.
#[derive(Debug, Clone)]
pub struct ServiceArgs {
    /// The database URL (one database for all processes).
    pub database_url: String,
    /// The Redis the locks live on.
    pub redis: RedisTarget,
    /// The lock namespace.
    pub lock_namespace: String,
    /// Simulated work between check and insert.
    pub think: Duration,
}

/// A running service child process.
///
/// Dropping the handle kills the process and waits for it, so every exit path of the driver
/// (return, `?`, panic, Ctrl-C cancelling the driver's future) stops it. The child also exits
/// by itself when the driver dies without running destructors: its stdin is a pipe from the
/// driver, and the service is started with `--exit-on-stdin-eof`.
#[derive(Debug)]
pub struct ServiceProcess {
    index: usize,
    child: Child,
    // Held open so that the child sees EOF exactly when this handle (or the driver) goes away.
    _stdin: Option<ChildStdin>,
    addr: SocketAddr,
    log: PathBuf,
}

impl ServiceProcess {
    /// Starts `command` on a free loopback port, logging to `log`, and waits until it listens.
    ///
    /// # Errors
    /// When the process cannot be started, exits, or does not listen within 30 s; the error
    /// includes the end of its log.
    pub async fn start(
        service: &ServiceCommand,
        index: usize,
        args: &ServiceArgs,
        log: PathBuf,
    ) -> anyhow::Result<ServiceProcess> {
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("create the service log {}", log.display()))?;
        let mut command = Command::new(&service.program);
        command
            .args(&service.leading_args)
            .args(["--bind", "127.0.0.1:0", "--exit-on-stdin-eof"])
            .arg("--database-url")
            .arg(&args.database_url);
        match &args.redis {
            RedisTarget::Server(url) => command.arg("--redis-url").arg(url),
            RedisTarget::Cluster(seeds) => command.arg("--redis-cluster").arg(seeds.join(",")),
        };
        command
            .arg("--lock-namespace")
            .arg(&args.lock_namespace)
            .arg("--think-ms")
            .arg(args.think.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        command.envs(service.env.iter().map(|(k, v)| (k, v)));
        #[cfg(unix)]
        {
            // Own process group: a Ctrl-C in the terminal reaches the driver only, and the
            // driver stops its children in order instead of racing them.
            use std::os::unix::process::CommandExt as _;
            command.process_group(0);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("start {}", service.program.display()))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe to the service"))?;
        // From here on the handle owns the child: any early return or cancellation kills it.
        let mut process = ServiceProcess {
            index,
            child,
            _stdin: stdin,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };

        // The service prints its address once it listens. The read blocks, so it runs on a
        // blocking thread; killing the child (timeout, cancellation) ends it with EOF.
        let first_line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = match tokio::time::timeout(STARTUP_TIMEOUT, first_line).await {
            Ok(Ok(Ok(line))) => line,
            Ok(Ok(Err(e))) => bail!("read the output of service {index}: {e}"),
            Ok(Err(e)) => bail!("read the output of service {index}: {e}"),
            Err(_) => bail!(
                "service {index} did not start listening within {} s; its log ends with:\n{}",
                STARTUP_TIMEOUT.as_secs(),
                process.log_tail(20)
            ),
        };
        let Some(addr) = line.trim().strip_prefix(LISTENING_PREFIX) else {
            // Most likely it exited (EOF, empty line); give it a moment to be reaped.
            let status = process.wait_exit(Duration::from_millis(500));
            bail!(
                "service {index} did not start ({}); its log ends with:\n{}",
                status.unwrap_or_else(|| format!("printed {:?}", line.trim())),
                process.log_tail(20)
            );
        };
        process.addr = addr
            .parse()
            .with_context(|| format!("service {index} printed a bad address {addr:?}"))?;
        Ok(process)
    }

    /// Which service this is (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        match std::fs::read_to_string(&self.log) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(no log at {}: {e})", self.log.display()),
        }
    }

    /// `Some(description)` if the process has exited (waiting at most `timeout` for that).
    fn wait_exit(&mut self, timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(format!("exited with {status}")),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        // SIGKILL: the service holds nothing worth a graceful shutdown (its locks have short
        // leases, its database writes are committed or not) and the driver must not hang.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
