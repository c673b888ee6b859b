//! Round trips, measured: a loopback TCP forwarder between an implementation and Redis that
//! counts request flights.
//!
//! A *flight* is what a client sends before it waits: on each connection, the first bytes from
//! the client after Redis has answered anything (or the first bytes of the connection) start a
//! new flight, and everything else the client sends until Redis answers again belongs to it. A
//! pipeline (`SET NX PX` + `INCR` written at once) is one flight; a script call is one flight;
//! a command sent only after the previous reply arrived is another. For one task doing one
//! lock + release at a time, flights per cycle is the number of round trips the cycle waits
//! for. Flights on all connections of the implementation are added up (a second connection's
//! request is a round trip too, even where it overlaps another one).
//!
//! The forwarder only counts; latencies are measured on direct connections, never through it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A running forwarder; dropping it closes every connection it carries.
pub struct FlightCounter {
    addr: SocketAddr,
    flights: Arc<AtomicU64>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl FlightCounter {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Result<FlightCounter> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the flight counter")?;
        let addr = listener.local_addr()?;
        let flights = Arc::new(AtomicU64::new(0));
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (accept_flights, accept_tasks) = (flights.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                // Small requests and replies: Nagle would only delay them.
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                // Set when Redis has answered since the client's last bytes: the client's next
                // bytes start a new flight. A new connection waits for its first request.
                let answered = Arc::new(AtomicBool::new(true));
                let up = tokio::spawn(requests(
                    client_read,
                    server_write,
                    answered.clone(),
                    accept_flights.clone(),
                ));
                let down = tokio::spawn(replies(server_read, client_write, answered));
                let mut tasks = accept_tasks.lock().unwrap_or_else(|p| p.into_inner());
                tasks.push(up.abort_handle());
                tasks.push(down.abort_handle());
            }
        });
        tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(accept.abort_handle());
        Ok(FlightCounter {
            addr,
            flights,
            tasks,
        })
    }

    /// `redis://<forwarder>`: what the implementation connects to.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Starts counting from zero (after connections and scripts are set up).
    pub fn reset(&self) {
        self.flights.store(0, Ordering::SeqCst);
    }

    /// Flights since the last [`reset`](Self::reset).
    pub fn flights(&self) -> u64 {
        self.flights.load(Ordering::SeqCst)
    }
}

impl Drop for FlightCounter {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

/// Client -> Redis: counts a flight when bytes arrive after an answer.
async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    answered: Arc<AtomicBool>,
    flights: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if answered.swap(false, Ordering::SeqCst) {
            flights.fetch_add(1, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Redis -> client. The mark is set before the bytes are passed on: the client cannot react to
/// an answer (and send its next flight) before the forwarder knows that it was answered.
async fn replies(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, answered: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        answered.store(true, Ordering::SeqCst);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake Redis that answers every line with `+OK`, and a client that pipelines.
    #[tokio::test]
    async fn counts_one_flight_per_wait() {
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = server.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
                if s.write_all(&b"+OK\r\n".repeat(lines)).await.is_err() {
                    break;
                }
            }
        });
        let counter = FlightCounter::start(target).await.expect("start");
        let mut c = TcpStream::connect(counter.addr).await.expect("connect");
        let mut reply = [0u8; 10];
        // Two commands in one write: one flight.
        c.write_all(b"A\r\nB\r\n").await.expect("write");
        c.read_exact(&mut reply).await.expect("two replies");
        // One command after the answer: a second flight.
        c.write_all(b"C\r\n").await.expect("write");
        c.read_exact(&mut reply[..5]).await.expect("a reply");
        assert_eq!(counter.flights(), 2);
        counter.reset();
        assert_eq!(counter.flights(), 0);
    }
}
