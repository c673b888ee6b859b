//! The party scenario end to end: real service processes, a real database (SQLite), a real
//! `redis-server` (or a Redis Cluster of 3 masters) started by the test.
//!
//! The locked run must admit exactly the capacity. The unlocked run is printed, not asserted:
//! whether the race fires depends on scheduling (on a 2-core CI runner it usually does, but a
//! test that fails when it does not would be flaky).

use std::process::Command;
use std::time::Duration;

use lockattr_examples::party::demo::client::HttpClient;
use lockattr_examples::party::demo::processes::{ServiceArgs, ServiceCommand, ServiceProcess};
use lockattr_examples::party::demo::redis::RedisTarget;
use lockattr_examples::party::demo::{
    run_scenario, sqlite_url, unique_namespace, Scenario, ScenarioReport, TempDir,
};
use lockattr_examples::party::error::ErrorBody;
use lockattr_examples::party::http::{NewParticipant, NewParty};
use lockattr_examples::party::{Participant, Party, PartyView};
use lockattr_tests::cluster::RedisCluster;
use lockattr_tests::RedisServer;

/// The service the way the demo starts it: its own binary re-run as `party-demo serve`.
fn demo_serve() -> ServiceCommand {
    ServiceCommand::new(env!("CARGO_BIN_EXE_party-demo")).arg("serve")
}

/// The stand-alone `party-service` binary (the same code under its own name).
fn party_service() -> ServiceCommand {
    ServiceCommand::new(env!("CARGO_BIN_EXE_party-service"))
}

/// The scenario the end-to-end tests run: capacity 5, 60 joins over 2 service processes.
fn small_scenario(redis: RedisTarget, dir: &TempDir) -> Scenario {
    Scenario {
        capacity: 5,
        requests: 60,
        processes: 2,
        think: Duration::from_millis(2),
        service: demo_serve(),
        redis,
        database_url: None,
        lock_namespace: unique_namespace(),
        work_dir: dir.path().to_owned(),
    }
}

/// Runs `scenario` (at most 60 s) and prints both modes' lines.
async fn run_bounded(scenario: &Scenario) -> ScenarioReport {
    let report = tokio::time::timeout(Duration::from_secs(60), run_scenario(scenario))
        .await
        .expect("the scenario finishes within 60 s")
        .expect("the scenario runs");
    eprintln!("{}", report.unlocked.line());
    eprintln!("{}", report.locked.line());
    report
}

/// The locked run of [`small_scenario`] admitted exactly the capacity and answered every
/// request; the unlocked run is not asserted on its count (see the module docs), only that
/// the service answered every request and every 201 is a row. `on` names the deployment in
/// the messages.
fn assert_both_runs(report: &ScenarioReport, on: &str) {
    let locked = &report.locked;
    assert_eq!(
        locked.members, 5,
        "the locked run{on} admits exactly the capacity"
    );
    assert_eq!(locked.accepted, 5, "every admitted join was answered 201");
    assert_eq!(locked.full, 55, "every other join was answered 409");
    assert_eq!(
        locked.accepted + locked.rejected(),
        60,
        "every request got an answer"
    );
    assert_eq!(locked.no_answer, 0, "{:?}", locked.first_problem);
    let unlocked = &report.unlocked;
    assert_eq!(
        unlocked.no_answer + unlocked.other_status,
        0,
        "{:?}",
        unlocked.first_problem
    );
    assert_eq!(unlocked.accepted as i64, unlocked.members);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_joins_admit_exactly_the_capacity() {
    let redis = RedisServer::start();
    let dir = TempDir::new("party-test").expect("temp dir");
    let scenario = small_scenario(RedisTarget::Server(redis.url()), &dir);
    let report = run_bounded(&scenario).await;
    assert_both_runs(&report, "");
    eprintln!(
        "unlocked run {} the party",
        if report.unlocked.overbooked() {
            "overbooked"
        } else {
            "did not overbook"
        }
    );

    // Every lock was released, and the lock leaves nothing else in Redis.
    let left: Vec<String> = redis
        .keys()
        .into_iter()
        .filter(|k| k.starts_with(&scenario.lock_namespace))
        .collect();
    assert!(left.is_empty(), "lock keys left after the run: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_answers_with_the_documented_statuses() {
    let mut redis = RedisServer::start();
    let dir = TempDir::new("party-test").expect("temp dir");
    let args = ServiceArgs {
        database_url: sqlite_url(&dir.path().join("party.db")),
        redis: RedisTarget::Server(redis.url()),
        lock_namespace: unique_namespace(),
        think: Duration::ZERO,
    };
    let log = dir.path().join("service.log");
    let service = ServiceProcess::start(
        &party_service().env("RUST_LOG", "info"),
        0,
        &args,
        log.clone(),
    )
    .await
    .expect("the service starts");
    let base = service.base_url();
    let client = HttpClient::new();
    let join = |party: i64, name: &str, lock: bool| {
        let client = client.clone();
        let url = format!(
            "{base}/parties/{party}/participants{}",
            if lock { "" } else { "?lock=false" }
        );
        let body = NewParticipant {
            name: name.to_owned(),
        };
        async move { client.post_json(&url, &body).await.expect("an answer") }
    };

    let created = client
        .post_json(
            &format!("{base}/parties"),
            &NewParty {
                name: "tea".to_owned(),
                capacity: 1,
            },
        )
        .await
        .expect("an answer");
    assert_eq!(created.status, 201, "{}", created.text());
    let party: Party = created.json().expect("a party");
    assert_eq!((party.name.as_str(), party.capacity), ("tea", 1));

    let first = join(party.id, "ann", true).await;
    assert_eq!(first.status, 201, "{}", first.text());
    let ann: Participant = first.json().expect("a participant");
    assert_eq!((ann.party_id, ann.name.as_str()), (party.id, "ann"));
    assert!(
        ann.fencing_token.is_some(),
        "a locked join runs with a fencing token"
    );
    // The log shows the join's time waiting for the lock and holding it, as spans inside the
    // request's `join` span.
    let logged = std::fs::read_to_string(&log).expect("the service log");
    let token = format!("fencing_token={}", ann.fencing_token.unwrap());
    let span_line = |name: &str| {
        logged
            .lines()
            .find(|l| {
                l.contains(&format!("join{{party_id={}", party.id))
                    && l.contains(name)
                    && l.contains("close")
            })
            .unwrap_or_else(|| panic!("a closed `{name}` span in the join's: {logged}"))
            .to_owned()
    };
    let acquired = span_line("lock.acquire{");
    // An uncontended join takes the lock by the fast path, whose token is issued when the join
    // asks for it, inside the critical section: the `lock.held` span carries it then.
    assert!(
        acquired.contains("outcome=\"acquired\"")
            && (!acquired.contains("fencing_token=") || acquired.contains(&token)),
        "{acquired}"
    );
    assert!(
        acquired.contains(&format!("key=\"party:{}\"", party.id)),
        "{acquired}"
    );
    let held = span_line("lock.held{");
    assert!(
        held.contains(&token) && held.contains("outcome=\"released\""),
        "{held}"
    );

    let full = join(party.id, "bob", true).await;
    assert_eq!(full.status, 409, "{}", full.text());
    assert_eq!(
        full.json::<ErrorBody>().expect("an error body").error,
        "party_full"
    );
    let full = join(party.id, "bob", false).await;
    assert_eq!(
        full.status, 409,
        "the unlocked path checks the capacity too"
    );

    let missing = join(party.id + 1000, "cy", true).await;
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert_eq!(
        missing.json::<ErrorBody>().expect("an error body").error,
        "party_not_found"
    );
    let empty = join(party.id, " ", true).await;
    assert_eq!(empty.status, 400, "{}", empty.text());
    let negative = client
        .post_json(
            &format!("{base}/parties"),
            &NewParty {
                name: "x".to_owned(),
                capacity: -1,
            },
        )
        .await
        .expect("an answer");
    assert_eq!(negative.status, 400, "{}", negative.text());

    let shown = client
        .get(&format!("{base}/parties/{}", party.id))
        .await
        .expect("an answer");
    assert_eq!(shown.status, 200, "{}", shown.text());
    let view: PartyView = shown.json().expect("a party view");
    assert_eq!((view.capacity, view.members), (1, 1));
    assert_eq!(view.participants, vec!["ann".to_owned()]);
    let unknown = client
        .get(&format!("{base}/parties/{}", party.id + 1000))
        .await
        .expect("an answer");
    assert_eq!(unknown.status, 404);

    // An unlocked join of a party with room has no fencing token.
    let created = client
        .post_json(
            &format!("{base}/parties"),
            &NewParty {
                name: "open".to_owned(),
                capacity: 3,
            },
        )
        .await
        .expect("an answer");
    let open: Party = created.json().expect("a party");
    let dan: Participant = join(open.id, "dan", false)
        .await
        .json()
        .expect("a participant");
    assert_eq!(dan.fencing_token, None);

    // Without Redis there is no lock, so no locked join: a clear 503, and nothing inserted.
    redis.kill();
    let refused = tokio::time::timeout(Duration::from_secs(20), join(open.id, "eve", true))
        .await
        .expect("a join without Redis is answered promptly");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(
        refused.json::<ErrorBody>().expect("an error body").error,
        "lock_unavailable"
    );
    let view: PartyView = client
        .get(&format!("{base}/parties/{}", open.id))
        .await
        .expect("an answer")
        .json()
        .expect("a party view");
    assert_eq!(view.participants, vec!["dan".to_owned()]);
}

/// The one-command demo itself: its report lines, and exit status 0 when the locked run stays
/// within capacity. Points it at the test's Redis (small numbers keep it quick).
#[test]
fn the_demo_binary_reports_both_modes() {
    let redis = RedisServer::start();
    let output = Command::new(env!("CARGO_BIN_EXE_party-demo"))
        .args(["--capacity", "3", "--requests", "30", "--processes", "2"])
        .env("REDIS_URL", redis.url())
        .env_remove("DATABASE_URL")
        .output()
        .expect("run party-demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("--- stdout ---\n{stdout}--- stderr ---\n{stderr}");
    assert!(
        output.status.success(),
        "party-demo failed: {}",
        output.status
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("without lock: ") && l.contains("/3 joined")),
        "no `without lock` line"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("with lock: 3/3 joined")),
        "no `with lock: 3/3 joined` line"
    );
    assert!(
        stderr.contains(&format!("looking for Redis at {}", redis.url())),
        "the demo used the given Redis"
    );
    // The demo deleted its lock keys from the (shared) Redis.
    assert!(
        redis.keys().is_empty(),
        "keys left behind: {:?}",
        redis.keys()
    );
}

/// A Redis Cluster of 3 masters (no replicas: nothing here fails over), started off the async
/// runtime.
async fn start_cluster() -> RedisCluster {
    tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
        .await
        .expect("start a Redis Cluster")
}

/// Lock commands a node ran: commands other than the harness's and the clients' own
/// (connection set-up, topology, script loading, `INFO`).
fn lock_commands(cluster: &RedisCluster, port: u16) -> Vec<(String, u64)> {
    cluster
        .command_counts(port)
        .into_iter()
        .filter(|(name, calls)| {
            *calls > 0
                && !(name == "info"
                    || name == "hello"
                    || name == "ping"
                    || name.starts_with("client|")
                    || name.starts_with("cluster|")
                    || name.starts_with("config|")
                    || name.starts_with("script|")
                    || name == "readonly")
        })
        .collect()
}

/// The scenario with the lock on a Redis Cluster: the services build `Locker::cluster`, the
/// party's lock lives on the master of its slot (and nowhere else), and the locked run admits
/// exactly the capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_joins_on_a_cluster_admit_exactly_the_capacity() {
    let cluster = start_cluster().await;
    let dir = TempDir::new("party-test").expect("temp dir");
    let scenario = small_scenario(RedisTarget::Cluster(cluster.seed_urls()), &dir);
    tokio::task::block_in_place(|| cluster.reset_stats());
    let report = run_bounded(&scenario).await;
    assert_both_runs(&report, " on a cluster");
    let locked = &report.locked;

    // The lock was taken on the cluster, on the master of its slot only.
    let lock_key = format!("{}:{{party:{}}}", scenario.lock_namespace, locked.party_id);
    tokio::task::block_in_place(|| {
        let master = cluster.master_for_key(&lock_key);
        let on_master = lock_commands(&cluster, master);
        eprintln!("lock commands on {master}, the master of {lock_key}: {on_master:?}");
        assert!(
            on_master.iter().any(|(name, _)| name == "set"),
            "the lock was taken on {master}: {on_master:?}"
        );
        for port in cluster.masters().into_iter().filter(|&p| p != master) {
            let other = lock_commands(&cluster, port);
            assert!(
                other.is_empty(),
                "master {port} does not serve {lock_key} but ran {other:?}"
            );
        }
        for port in cluster.ports() {
            let broadcast = cluster.command_counts(port).get("publish").copied();
            assert_eq!(broadcast.unwrap_or(0), 0, "no broadcast PUBLISH on {port}");
            let left = lockattr_tests::cluster::info_field(
                &redis::cmd("INFO")
                    .arg("keyspace")
                    .query::<String>(&mut cluster.conn(port))
                    .expect("INFO keyspace"),
                "db0",
            )
            .map(str::to_owned);
            assert_eq!(left, None, "keys left on {port} after the run");
        }
    });
}

/// `party-demo --redis-cluster URL,URL`: the one-command demo on a cluster, through the flag.
#[test]
fn the_demo_binary_runs_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let output = Command::new(env!("CARGO_BIN_EXE_party-demo"))
        .args(["--capacity", "3", "--requests", "30", "--processes", "2"])
        .arg("--redis-cluster")
        .arg(cluster.seed_urls()[..2].join(","))
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run party-demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("--- stdout ---\n{stdout}--- stderr ---\n{stderr}");
    assert!(
        output.status.success(),
        "party-demo failed: {}",
        output.status
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("with lock: 3/3 joined")),
        "no `with lock: 3/3 joined` line"
    );
    assert!(
        stdout.contains("locks on a Redis Cluster"),
        "the report names the cluster"
    );
    assert!(
        stderr.contains("using the Redis Cluster at"),
        "the demo used the given cluster"
    );
    let sets: u64 = cluster
        .command_counts_by_node()
        .values()
        .filter_map(|c| c.get("set"))
        .sum();
    assert!(
        sets >= 3,
        "the locks were taken on the cluster ({sets} SETs)"
    );
}
