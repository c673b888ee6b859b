//! Self-tests of the deployments in `lockattr-tests`: a TLS server, ACL users, a Redis Cluster
//! and a Sentinel deployment, each checked with plain clients (`redis-cli`, `openssl`, a
//! non-cluster redis-rs connection) so that a harness bug cannot hide behind the runtime.
//!
//! Start-up and failover times are printed (`cargo test --test harness -- --nocapture`).

use std::process::Command;
use std::time::{Duration, Instant};

use lockattr_tests::acl::url_with_credentials;
use lockattr_tests::binaries::run_bounded;
use lockattr_tests::{
    openssl_binary, redis_cli_binary, ClientAuth, RedisCluster, RedisSentinel, RedisServer,
    TlsFiles,
};

fn connect(url: &str) -> redis::RedisResult<redis::Connection> {
    let conn = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(3))?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    Ok(conn)
}

mod tls {
    use super::*;

    /// `openssl s_client` against the server: the handshake's verification line and success.
    fn s_client(server: &RedisServer, ca: &std::path::Path, verify: &[&str]) -> (bool, String) {
        let mut cmd = Command::new(openssl_binary());
        cmd.args(["s_client", "-connect"])
            .arg(server.addr().to_string())
            .arg("-CAfile")
            .arg(ca)
            .args(verify)
            .args(["-verify_return_error", "-brief"]);
        let out = run_bounded(&mut cmd, Duration::from_secs(30)).expect("run openssl s_client");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// `redis-cli --tls ... PING` with the given extra TLS arguments.
    fn cli_ping(server: &RedisServer, tls_args: &[&std::ffi::OsStr]) -> Result<String, String> {
        let mut cmd = Command::new(redis_cli_binary());
        cmd.args(["-e", "-h", "127.0.0.1", "-p"])
            .arg(server.port().to_string())
            .arg("--tls")
            .args(tls_args)
            .arg("PING");
        let out = run_bounded(&mut cmd, Duration::from_secs(30)).expect("run redis-cli");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(text + &String::from_utf8_lossy(&out.stderr))
        }
    }

    #[test]
    fn tls_server_speaks_only_verified_tls() {
        let t = Instant::now();
        let server = RedisServer::start_tls();
        eprintln!(
            "TLS server (certificates included) ready in {:?}",
            t.elapsed()
        );
        let files = server.tls().expect("a TLS server").clone();
        assert_eq!(server.client_auth(), Some(ClientAuth::No));
        assert_eq!(
            server.url(),
            format!("rediss://127.0.0.1:{}", server.port())
        );
        assert_eq!(server.insecure_url(), format!("{}/#insecure", server.url()));
        assert_eq!(server.cli(&["SET", "k", "v"]).unwrap(), "OK");
        assert_eq!(server.cli(&["GET", "k"]).unwrap(), "v");

        // The chain and both subject alternative names verify.
        let (ok, text) = s_client(&server, &files.ca_cert, &["-verify_ip", "127.0.0.1"]);
        assert!(ok && text.contains("Verification: OK"), "{text}");
        let (ok, text) = s_client(&server, &files.ca_cert, &["-verify_hostname", "localhost"]);
        assert!(ok && text.contains("Verification: OK"), "{text}");
        let (ok, text) = s_client(&server, &files.ca_cert, &["-verify_ip", "127.0.0.2"]);
        assert!(
            !ok,
            "a certificate for 127.0.0.1 must not verify for 127.0.0.2: {text}"
        );

        // Trust matters: the system store and another CA reject it, `--insecure` skips it.
        let ca = files.ca_cert.as_os_str();
        assert_eq!(
            cli_ping(&server, &["--cacert".as_ref(), ca]).as_deref(),
            Ok("PONG")
        );
        let err = cli_ping(&server, &[]).expect_err("an unknown CA is refused");
        assert!(err.contains("certificate verify failed"), "{err}");
        let other = TlsFiles::generate(&server.dir().join("other-ca"));
        let err = cli_ping(&server, &["--cacert".as_ref(), other.ca_cert.as_os_str()])
            .expect_err("another CA is refused");
        assert!(err.contains("certificate verify failed"), "{err}");
        assert_eq!(
            cli_ping(&server, &["--insecure".as_ref()]).as_deref(),
            Ok("PONG")
        );

        // A plain client on the TLS port fails, and promptly.
        let t = Instant::now();
        let plain = connect(&format!("redis://{}", server.addr()))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        assert!(plain.is_err(), "plain PING on the TLS port: {plain:?}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );

        for pem in [
            files.ca_pem(),
            files.server_cert_pem(),
            files.client_cert_pem(),
        ] {
            assert!(pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
        }
        assert!(files
            .client_key_pem()
            .starts_with(b"-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn tls_server_can_require_client_certificates() {
        let server = RedisServer::start_tls_with(ClientAuth::Required, &[]);
        let files = server.tls().unwrap();
        let (ca, cert, key) = (
            files.ca_cert.as_os_str(),
            files.client_cert.as_os_str(),
            files.client_key.as_os_str(),
        );
        let with_cert = [
            "--cacert".as_ref(),
            ca,
            "--cert".as_ref(),
            cert,
            "--key".as_ref(),
            key,
        ];
        assert_eq!(cli_ping(&server, &with_cert).as_deref(), Ok("PONG"));
        assert!(
            cli_ping(&server, &["--cacert".as_ref(), ca]).is_err(),
            "a client without a certificate is refused"
        );
        // The server certificate is not a client certificate (extended key usage).
        let (scert, skey) = (files.server_cert.as_os_str(), files.server_key.as_os_str());
        let wrong = [
            "--cacert".as_ref(),
            ca,
            "--cert".as_ref(),
            scert,
            "--key".as_ref(),
            skey,
        ];
        assert!(cli_ping(&server, &wrong).is_err());
        assert_eq!(server.cli(&["PING"]).unwrap(), "PONG");
    }
}

mod acl {
    use super::*;

    #[test]
    fn acl_users_have_exactly_their_rules() {
        let server = RedisServer::start();
        let user = server.create_user(
            "locker",
            "p@ss:w/rd",
            &[
                "~allowed:*",
                "&allowed:*",
                "+get",
                "+set",
                "+publish",
                "+acl|whoami",
            ],
        );
        let url = server.url_as(&user);
        assert_eq!(
            url,
            format!("redis://locker:p%40ss%3Aw%2Frd@127.0.0.1:{}", server.port())
        );
        let rules = server.user_rules("locker").expect("user exists");
        assert!(
            rules.contains("~allowed:*") && rules.contains("&allowed:*"),
            "{rules}"
        );

        let mut conn = connect(&url).expect("log in as the ACL user");
        let me: String = redis::cmd("ACL").arg("WHOAMI").query(&mut conn).unwrap();
        assert_eq!(me, "locker");
        let () = redis::cmd("SET")
            .arg("allowed:x")
            .arg(1)
            .query(&mut conn)
            .unwrap();
        let noperm = |r: redis::RedisResult<redis::Value>| {
            let e = r.expect_err("refused by the ACL");
            assert_eq!(e.code(), Some("NOPERM"), "{e}");
        };
        noperm(redis::cmd("SET").arg("other:x").arg(1).query(&mut conn));
        noperm(redis::cmd("DEL").arg("allowed:x").query(&mut conn));
        noperm(
            redis::cmd("PUBLISH")
                .arg("other:ch")
                .arg("m")
                .query(&mut conn),
        );
        let n: i64 = redis::cmd("PUBLISH")
            .arg("allowed:ch")
            .arg("m")
            .query(&mut conn)
            .unwrap();
        assert_eq!(n, 0);

        let wrong = url_with_credentials(&server.url(), "locker", "nope");
        let err = connect(&wrong)
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .expect_err("a wrong password is refused");
        assert!(
            err.to_string().contains("WRONGPASS") || err.to_string().contains("uthentic"),
            "{err}"
        );

        server.delete_user("locker");
        assert_eq!(server.user_rules("locker"), None);
    }

    #[test]
    fn acl_users_on_a_tls_server() {
        let server = RedisServer::start_tls();
        let user = server.create_user("locker", "pw", &["~lock:*", "+@all"]);
        assert_eq!(
            server.url_as(&user),
            format!("rediss://locker:pw@127.0.0.1:{}", server.port())
        );
        assert!(server.user_rules("locker").unwrap().contains("~lock:*"));
    }
}

mod cluster {
    use super::*;

    #[test]
    fn cluster_forms_routes_fails_over_and_survives_a_kill() {
        let mut cluster = RedisCluster::start(3, 1);
        eprintln!("cluster 3+1 ready in {:?}", cluster.startup_time());
        assert_eq!(cluster.ports().len(), 6);
        assert_eq!(cluster.seed_urls().len(), 6);
        let masters = cluster.masters();
        assert_eq!(masters.len(), 3, "{:?}", cluster.topology());
        for &m in &masters {
            assert!(cluster.is_master(m));
            let replicas = cluster.replicas_of(m);
            assert_eq!(replicas.len(), 1);
            assert!(!cluster.is_master(replicas[0]));
        }
        let slots: u32 = cluster
            .topology()
            .iter()
            .flat_map(|n| n.slots.iter())
            .map(|&(a, b)| u32::from(b - a) + 1)
            .sum();
        assert_eq!(slots, lockattr_tests::cluster::SLOTS);

        // Routing: the owner takes the key, another master redirects.
        let key = "lock:{party:42}";
        let slot = cluster.keyslot(key);
        assert_eq!(slot, cluster.keyslot("{party:42}:fence"), "same hash tag");
        let owner = cluster.master_for_key(key);
        assert_eq!(owner, cluster.master_for_slot(slot));
        let () = redis::cmd("SET")
            .arg(key)
            .arg("v")
            .query(&mut cluster.conn(owner))
            .unwrap();
        let other = *masters.iter().find(|&&m| m != owner).unwrap();
        let moved = redis::cmd("GET")
            .arg(key)
            .query::<String>(&mut cluster.conn(other))
            .expect_err("a key of another shard");
        assert_eq!(moved.code(), Some("MOVED"), "{moved}");
        // `(address, slot)`, despite the `u16` that looks like a port.
        let owner_addr = format!("127.0.0.1:{owner}");
        assert_eq!(moved.redirect_node(), Some((owner_addr.as_str(), slot)));

        // Sharded pub/sub stays on the shard; per-node command stats show it.
        cluster.reset_stats();
        let _: i64 = redis::cmd("SPUBLISH")
            .arg(key)
            .arg("m")
            .query(&mut cluster.conn(owner))
            .unwrap();
        let stats = cluster.command_counts_by_node();
        assert_eq!(stats[&owner].get("spublish"), Some(&1), "{stats:?}");
        assert!(
            stats.values().all(|s| !s.contains_key("publish")),
            "{stats:?}"
        );

        // A coordinated failover swaps the roles and keeps the data.
        let replica = cluster.replica_for_key(key);
        let t = Instant::now();
        cluster.failover(replica);
        eprintln!("cluster failover done in {:?}", t.elapsed());
        assert_eq!(cluster.master_for_key(key), replica);
        assert!(!cluster.is_master(owner));
        assert_eq!(cluster.replicas_of(replica), vec![owner]);
        let v: String = redis::cmd("GET")
            .arg(key)
            .query(&mut cluster.conn(replica))
            .unwrap();
        assert_eq!(v, "v");

        // Killing the master promotes its replica (the old owner) again.
        let t = Instant::now();
        let promoted = cluster.kill(replica);
        eprintln!("cluster recovered from a master kill in {:?}", t.elapsed());
        assert_eq!(promoted, Some(owner));
        assert_eq!(cluster.master_for_key(key), owner);
        assert_eq!(cluster.seed_urls().len(), 5);
        let v: String = redis::cmd("GET")
            .arg(key)
            .query(&mut cluster.conn(owner))
            .unwrap();
        assert_eq!(v, "v");
    }
}

mod sentinel {
    use super::*;

    fn wait_acks(conn: &mut redis::Connection, replicas: usize, ms: u64) -> usize {
        redis::cmd("WAIT")
            .arg(replicas)
            .arg(ms)
            .query(conn)
            .expect("WAIT")
    }

    #[test]
    fn sentinel_reports_and_follows_failovers() {
        let mut s = RedisSentinel::start();
        eprintln!("sentinel 1+2+3 ready in {:?}", s.startup_time());
        assert_eq!(s.master_name(), "lockattr");
        assert_eq!(s.sentinel_urls().len(), 3);
        assert!(s.sentinel_urls()[0].starts_with("redis://127.0.0.1:"));
        let first = s.master_addr();
        assert_eq!(first, s.data_nodes()[0].addr());
        assert_eq!(s.replicas().len(), 2);

        let mut master = connect(&s.master_url()).unwrap();
        let () = redis::cmd("SET")
            .arg("k")
            .arg("1")
            .query(&mut master)
            .unwrap();
        assert_eq!(wait_acks(&mut master, 2, 2000), 2);

        // Paused replicas acknowledge nothing; resumed, they catch up.
        s.pause_replicas();
        let () = redis::cmd("SET")
            .arg("k")
            .arg("2")
            .query(&mut master)
            .unwrap();
        assert_eq!(wait_acks(&mut master, 1, 200), 0, "paused replicas acked");
        s.resume_replicas();
        s.wait_replicas_in_sync();
        for r in s.replicas() {
            let v: String = redis::cmd("GET").arg("k").query(&mut r.conn()).unwrap();
            assert_eq!(v, "2", "replica {}", r.port());
        }

        let t = Instant::now();
        let second = s.failover();
        eprintln!("sentinel failover done in {:?}", t.elapsed());
        assert_ne!(second, first);
        assert_eq!(s.master_addr(), second);
        let role: Vec<redis::Value> = redis::cmd("ROLE")
            .query(&mut connect(&s.master_url()).unwrap())
            .unwrap();
        assert!(
            matches!(&role[0], redis::Value::BulkString(b) if b == b"master"),
            "{role:?}"
        );
        assert!(
            s.replicas().iter().any(|r| r.addr() == first),
            "the old master follows"
        );
        let v: String = redis::cmd("GET")
            .arg("k")
            .query(&mut connect(&s.master_url()).unwrap())
            .unwrap();
        assert_eq!(v, "2");

        let t = Instant::now();
        let third = s.kill_master();
        eprintln!("sentinel recovered from a master kill in {:?}", t.elapsed());
        assert_ne!(third, second);
        assert_eq!(s.replicas().len(), 1);
        let v: String = redis::cmd("GET")
            .arg("k")
            .query(&mut connect(&s.master_url()).unwrap())
            .unwrap();
        assert_eq!(v, "2");
    }
}
