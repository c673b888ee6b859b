//! Finding the external programs the harness runs, with install instructions when one is
//! missing: Redis tests never skip silently.
//!
//! Each program can be pointed to explicitly with an environment variable (useful for a Redis
//! built from source); otherwise it is looked up on `PATH`.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How the harness explains a missing `redis-server`.
pub const INSTALL_HINT: &str = "redis-server was not found on PATH; the lockattr tests start \
their own Redis servers. Install it (Debian/Ubuntu: `sudo apt-get install redis-server`, \
macOS: `brew install redis`) or set LOCKATTR_REDIS_SERVER to the binary's path";

/// How the harness explains a missing `redis-cli`.
pub const REDIS_CLI_HINT: &str = "redis-cli was not found on PATH; the lockattr tests use it to \
create Redis Clusters and to talk to TLS servers. Install it (Debian/Ubuntu: \
`sudo apt-get install redis-tools`, macOS: `brew install redis`) or set LOCKATTR_REDIS_CLI to \
the binary's path";

/// How the harness explains a missing `openssl`.
pub const OPENSSL_HINT: &str = "openssl was not found on PATH; the lockattr TLS tests use it to \
generate throwaway certificates. Install it (Debian/Ubuntu: `sudo apt-get install openssl`, \
macOS: `brew install openssl`) or set LOCKATTR_OPENSSL to the binary's path";

/// The `redis-server` binary: `$LOCKATTR_REDIS_SERVER`, else `redis-server` on `PATH`.
///
/// # Panics
/// With [`INSTALL_HINT`] when neither exists.
pub fn redis_server_binary() -> PathBuf {
    find("redis-server", "LOCKATTR_REDIS_SERVER").unwrap_or_else(|e| panic!("{e}{INSTALL_HINT}"))
}

/// The `redis-cli` binary: `$LOCKATTR_REDIS_CLI`, else `redis-cli` on `PATH`.
///
/// # Panics
/// With [`REDIS_CLI_HINT`] when neither exists.
pub fn redis_cli_binary() -> PathBuf {
    find("redis-cli", "LOCKATTR_REDIS_CLI").unwrap_or_else(|e| panic!("{e}{REDIS_CLI_HINT}"))
}

/// The `openssl` binary: `$LOCKATTR_OPENSSL`, else `openssl` on `PATH`.
///
/// # Panics
/// With [`OPENSSL_HINT`] when neither exists.
pub fn openssl_binary() -> PathBuf {
    find("openssl", "LOCKATTR_OPENSSL").unwrap_or_else(|e| panic!("{e}{OPENSSL_HINT}"))
}

/// `$env_var` if set (it must name a file), else `name` on `PATH`. The error is a prefix for
/// the install hint: empty when the program is simply missing.
fn find(name: &str, env_var: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(format!("{env_var}={} is not a file. ", p.display()));
    }
    find_on_path(name, std::env::var_os("PATH")).ok_or_else(String::new)
}

fn find_on_path(name: &str, path: Option<std::ffi::OsString>) -> Option<PathBuf> {
    std::env::split_paths(&path?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs `cmd` (stdin closed) to completion within `limit`, killing it if it takes longer.
/// Stdout and stderr are read by threads, so a chatty program cannot block on a full pipe.
///
/// # Errors
/// When the program cannot be started or runs out of time (with what it printed so far).
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let what = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {what}: {e}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("{what} did not finish within {limit:?}"));
            }
            Err(e) => break Err(format!("wait for {what}: {e}")),
        }
    };
    // The pipes close when the child is gone (killed or exited), so the threads end.
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Ok(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        Err(e) => Err(format!(
            "{e}; output: {}{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_on_path_and_hints_say_how_to_install() {
        let sh = find_on_path("sh", Some("/nonexistent:/bin:/usr/bin".into()));
        assert!(sh.is_some_and(|p| p.ends_with("sh")));
        assert_eq!(find_on_path("sh", Some("/nonexistent".into())), None);
        assert_eq!(find_on_path("sh", None), None);
        let out = run_bounded(
            Command::new("sh").args(["-c", "echo hi; echo ho >&2"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(
            (out.stdout.as_slice(), out.stderr.as_slice()),
            (&b"hi\n"[..], &b"ho\n"[..])
        );
        let t = Instant::now();
        let err = run_bounded(Command::new("sleep").arg("30"), Duration::from_millis(200))
            .expect_err("killed after the limit");
        assert!(err.contains("did not finish"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(10));
        for (hint, package) in [
            (INSTALL_HINT, "apt-get install redis-server"),
            (REDIS_CLI_HINT, "apt-get install redis-tools"),
            (OPENSSL_HINT, "apt-get install openssl"),
        ] {
            assert!(hint.contains(package), "{hint}");
        }
    }
}
