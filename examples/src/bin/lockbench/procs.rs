//! The two-process variant of the contended scenario: the bench re-executes itself with a hidden
//! `worker` subcommand, each worker runs half of the tasks, and the parent merges their records.
//!
//! Protocol (one line each): worker -> `READY`; parent -> `GO <deadline_ns>`; worker -> `REC ..`
//! lines, `ERR ..` lines, then `DONE <inside_violations>`; the worker exits when its stdin closes,
//! so the parent can read `INFO commandstats` while the workers still exist but are idle.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::clock::now_ns;
use crate::contended::{run_tasks, BodyMode, ProcOutcome, Record, TaskParams, DRAIN_GRACE};
use crate::impls::{build, Kind};

/// What the parent tells a worker (`lockbench worker ...`, a hidden subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub url: String,
    #[arg(long, value_enum)]
    pub kind: Kind,
    #[arg(long)]
    pub key: String,
    #[arg(long)]
    pub tasks: u32,
    #[arg(long)]
    pub max_acquisitions: u64,
    #[arg(long = "body-us", value_parser = micros)]
    pub body: Duration,
    #[arg(long, value_enum)]
    pub body_mode: BodyMode,
    #[arg(long)]
    pub proc_id: u32,
}

fn micros(value: &str) -> Result<Duration, String> {
    value
        .parse()
        .map(Duration::from_micros)
        .map_err(|_| format!("takes whole microseconds, not `{value}`"))
}

impl WorkerArgs {
    /// The command line that [`crate::Cli`] parses back into these arguments.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "worker".into(),
            "--url".into(),
            self.url.clone(),
            "--kind".into(),
            self.kind.id().into(),
            "--key".into(),
            self.key.clone(),
            "--tasks".into(),
            self.tasks.to_string(),
            "--max-acquisitions".into(),
            self.max_acquisitions.to_string(),
            "--body-us".into(),
            self.body.as_micros().to_string(),
            "--body-mode".into(),
            self.body_mode.id().into(),
            "--proc-id".into(),
            self.proc_id.to_string(),
        ]
    }
}

/// Entry point of a worker process.
pub fn worker_main(args: WorkerArgs) -> anyhow::Result<()> {
    let rt = crate::runtime()?;
    let imp = rt.block_on(async {
        let imp = build(args.kind, &args.url).await?;
        // Connections, script loading and first-use costs happen before the parent resets the
        // command statistics.
        let warm = format!("{}-warm-{}", args.key, args.proc_id);
        let held = imp.acquire(&warm, Duration::from_secs(5)).await?;
        held.release().await?;
        anyhow::Ok(imp)
    })?;
    let stdout = std::io::stdout();
    writeln!(stdout.lock(), "READY")?;
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let deadline_ns: u64 = line
        .trim()
        .strip_prefix("GO ")
        .ok_or_else(|| anyhow!("worker expected `GO <deadline>`, got {line:?}"))?
        .parse()?;
    let outcome = rt.block_on(run_tasks(
        imp.clone(),
        TaskParams {
            key: args.key.clone(),
            tasks: args.tasks,
            max_acquisitions: args.max_acquisitions,
            deadline_ns,
            body: args.body,
            body_mode: args.body_mode,
            proc_id: args.proc_id,
        },
    ));
    {
        let mut out = std::io::BufWriter::new(stdout.lock());
        for r in &outcome.records {
            writeln!(out, "{}", r.line())?;
        }
        for e in &outcome.errors {
            writeln!(out, "ERR {}", e.replace('\n', " "))?;
        }
        writeln!(out, "DONE {}", outcome.inside_violations)?;
        out.flush()?;
    }
    // Stay alive (and idle) until the parent has read the server's statistics.
    line.clear();
    let _ = stdin.read_line(&mut line);
    drop(imp);
    Ok(())
}

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `args` in `procs` worker processes (each with its own `proc_id`); `before_go` runs when
/// all are ready (reset the statistics), `after_done` when all have reported (read them).
/// Returns the merged outcome, `after_done`'s value and the deadline the workers were given.
pub fn run_workers<T>(
    args: &[WorkerArgs],
    duration: Duration,
    before_go: impl FnOnce(),
    after_done: impl FnOnce() -> T,
) -> anyhow::Result<(ProcOutcome, T, u64)> {
    let exe = std::env::current_exe().context("locate the bench binary")?;
    let (tx, rx) = mpsc::channel::<(usize, Option<String>)>();
    let mut workers = Vec::new();
    for (i, a) in args.iter().enumerate() {
        let mut child = Command::new(&exe)
            .args(a.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let stdin = child.stdin.take();
        workers.push(Worker { child, stdin });
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send((i, Some(l))).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send((i, None));
        });
    }
    drop(tx);

    let mut outcome = ProcOutcome::default();
    let mut ready = 0;
    let until = Instant::now() + Duration::from_secs(30);
    while ready < workers.len() {
        match next_line(&rx, until)? {
            (_, Some(l)) if l == "READY" => ready += 1,
            (i, Some(l)) => bail!("worker {i} said {l:?} before READY"),
            (i, None) => bail!("worker {i} exited before READY"),
        }
    }
    before_go();
    let deadline_ns = now_ns() + u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    for w in &mut workers {
        let stdin = w.stdin.as_mut().context("worker stdin")?;
        writeln!(stdin, "GO {deadline_ns}")?;
        stdin.flush()?;
    }
    let mut done = 0;
    let until = Instant::now() + duration + DRAIN_GRACE + Duration::from_secs(15);
    while done < workers.len() {
        match next_line(&rx, until)? {
            (_, Some(l)) if l.starts_with("REC ") => {
                outcome
                    .records
                    .push(Record::parse(&l).ok_or_else(|| anyhow!("bad record {l:?}"))?);
            }
            (i, Some(l)) if l.starts_with("ERR ") => {
                outcome.errors.push(format!("worker {i}: {}", &l[4..]))
            }
            (_, Some(l)) if l.starts_with("DONE ") => {
                outcome.inside_violations += l[5..].trim().parse::<u64>().unwrap_or(0);
                done += 1;
            }
            (i, Some(l)) => outcome.errors.push(format!("worker {i}: unexpected {l:?}")),
            (i, None) => bail!("worker {i} exited before DONE"),
        }
    }
    let after = after_done();
    drop(workers);
    Ok((outcome, after, deadline_ns))
}

fn next_line(
    rx: &mpsc::Receiver<(usize, Option<String>)>,
    until: Instant,
) -> anyhow::Result<(usize, Option<String>)> {
    let left = until.saturating_duration_since(Instant::now());
    rx.recv_timeout(left)
        .map_err(|_| anyhow!("workers did not answer in time"))
}
