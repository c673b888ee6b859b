//! TLS: `rediss://` URLs and user-built clients with a private CA, through rustls.

use std::time::{Duration, Instant};

use lockattr::{Error, Locker};
use lockattr_tests::tls::ClientAuth;
use lockattr_tests::RedisServer;

use crate::wake_up_after_release;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_lock_and_wake_waiters_over_tls() {
    let server = RedisServer::start_tls();
    let url = server.insecure_url();
    let a = Locker::connect(&url).await.expect("a TLS connection");
    let b = Locker::connect(&url).await.unwrap();
    // Exclusion across two lockers, and a waiter woken through the TLS pub/sub connection.
    let g = a.lock("t").await.unwrap();
    assert!(matches!(b.try_lock("t").await, Err(Error::Timeout { .. })));
    g.release().await.unwrap();
    let woken = wake_up_after_release(&a, &b, "t").await;
    assert!(
        woken < Duration::from_secs(2),
        "woken {woken:?} after the release"
    );
    assert!(a.inspect("t").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_private_ca_and_client_certificates() {
    for auth in [ClientAuth::No, ClientAuth::Required] {
        let server = RedisServer::start_tls_with(auth, &[]);
        let files = server.tls().unwrap();
        let client_tls = (auth == ClientAuth::Required).then(|| redis::ClientTlsConfig {
            client_cert: files.client_cert_pem(),
            client_key: files.client_key_pem(),
        });
        let build = || {
            redis::Client::build_with_tls(
                server.url(),
                redis::TlsCertificates {
                    client_tls: client_tls.clone(),
                    root_cert: Some(files.ca_pem()),
                },
            )
            .unwrap()
        };
        let a = Locker::builder_with_client(build())
            .build()
            .await
            .expect("verified TLS");
        let b = Locker::builder_with_client(build()).build().await.unwrap();
        let woken = wake_up_after_release(&a, &b, "ca").await;
        assert!(
            woken < Duration::from_secs(2),
            "{auth:?}: woken {woken:?} after the release"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_connection_to_the_tls_port_fails_promptly() {
    let server = RedisServer::start_tls();
    let started = Instant::now();
    let r = Locker::builder(format!("redis://127.0.0.1:{}", server.port()))
        .operation_timeout(Duration::from_millis(800))
        .build()
        .await;
    assert!(
        matches!(r, Err(Error::Redis(_) | Error::OperationTimeout { .. })),
        "{r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // And a certificate from an unknown CA is refused.
    let other = RedisServer::start_tls();
    let client = redis::Client::build_with_tls(
        server.url(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(other.tls().unwrap().ca_pem()),
        },
    )
    .unwrap();
    let r = Locker::builder_with_client(client)
        .operation_timeout(Duration::from_millis(800))
        .build()
        .await;
    assert!(r.is_err(), "a server certificate from another CA: {r:?}");
}
