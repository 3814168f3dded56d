use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection, Row};
use testkit::PgCluster;
use testkit::patroni::{HaLayout, HaPorts, Member, NODES, Role, parse_members};

fn layout() -> HaLayout {
    let ports = HaPorts::from_base(26257, 27000).expect("ports");
    HaLayout::new("/srv/ha", ports, "/usr/lib/postgresql/15/bin")
}

#[test]
fn ports_from_a_base_are_twelve_in_a_row_by_kind() {
    let ports = HaPorts::from_base(26257, 27000).expect("ports");
    assert_eq!(ports.haproxy, 26257);
    assert_eq!(ports.postgres, [27000, 27001, 27002]);
    assert_eq!(ports.patroni, [27003, 27004, 27005]);
    assert_eq!(ports.etcd_client, [27006, 27007, 27008]);
    assert_eq!(ports.etcd_peer, [27009, 27010, 27011]);
    let described = ports.described();
    assert_eq!(described.len(), 1 + 4 * NODES);
    assert!(described.contains(&("Patroni REST API of pg2".to_owned(), 27004)));
}

#[test]
fn a_base_that_overlaps_haproxy_or_overflows_is_refused() {
    assert!(HaPorts::from_base(27005, 27000).is_err());
    assert!(HaPorts::from_base(26257, 65530).is_err());
    assert!(HaPorts::from_base(26257, 0).is_err());
}

#[test]
fn free_ports_are_thirteen_distinct_ones() {
    let ports = HaPorts::free().expect("free ports");
    let mut all: Vec<u16> = ports.described().into_iter().map(|(_, p)| p).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 1 + 4 * NODES);
}

#[test]
fn etcd_members_name_each_other_as_one_cluster() {
    let args = layout().etcd_args(1);
    let value = |flag: &str| {
        let at = args.iter().position(|a| a == flag).expect(flag);
        args[at + 1].clone()
    };
    assert_eq!(value("--name"), "etcd2");
    assert_eq!(value("--data-dir"), "/srv/ha/etcd2");
    assert_eq!(value("--listen-client-urls"), "http://127.0.0.1:27007");
    assert_eq!(value("--listen-peer-urls"), "http://127.0.0.1:27010");
    assert_eq!(
        value("--initial-cluster"),
        "etcd1=http://127.0.0.1:27009,etcd2=http://127.0.0.1:27010,etcd3=http://127.0.0.1:27011"
    );
}

#[test]
fn patroni_yaml_holds_the_chosen_settings() {
    let yaml = layout().patroni_yaml(2);
    for line in [
        "scope: orders-pg",
        "name: pg3",
        "  listen: 127.0.0.1:27005",
        "  hosts: 127.0.0.1:27006,127.0.0.1:27007,127.0.0.1:27008",
        "    ttl: 20",
        "    loop_wait: 2",
        "    retry_timeout: 9",
        "    synchronous_mode: true",
        "    synchronous_node_count: 1",
        "      use_pg_rewind: true",
        "      use_slots: true",
        "        wal_log_hints: 'on'",
        "        max_connections: 200",
        "        default_transaction_isolation: serializable",
        "  listen: 127.0.0.1:27002",
        "  data_dir: '/srv/ha/pg3/data'",
        "  bin_dir: '/usr/lib/postgresql/15/bin'",
        "    unix_socket_directories: '/srv/ha/pg3'",
        "    - host replication all 127.0.0.1/32 trust",
        "    - locale: C",
    ] {
        assert!(
            yaml.lines().any(|l| l == line),
            "no line {line:?} in\n{yaml}"
        );
    }
    let settings: Vec<&str> = yaml
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(!settings.iter().any(|l| l.contains("/var/run/postgresql")));
    // Patroni's own superuser at READ COMMITTED; clients get `root`.
    assert!(settings.contains(&"      username: patroni"));
    assert!(settings.iter().any(|l| l.starts_with("  post_bootstrap: '")
        && l.contains("CREATE ROLE root WITH LOGIN SUPERUSER")
        && l.contains(
            "ALTER ROLE patroni SET default_transaction_isolation TO ''read committed''"
        )));
    assert!(!yaml.contains("synchronous_mode_strict"));
}

#[test]
fn yaml_quotes_paths_with_quotes() {
    let layout = HaLayout::new(
        "/srv/it's",
        HaPorts::from_base(26257, 27000).expect("ports"),
        "/bin",
    );
    assert!(
        layout
            .patroni_yaml(0)
            .contains("data_dir: '/srv/it''s/pg1/data'")
    );
}

#[test]
fn haproxy_sends_clients_to_whichever_node_says_it_is_primary() {
    let cfg = layout().haproxy_cfg();
    for line in [
        "    mode tcp",
        "    bind 127.0.0.1:26257",
        "    option httpchk GET /primary",
        "    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions",
        "    server pg1 127.0.0.1:27000 check port 27003",
        "    server pg3 127.0.0.1:27002 check port 27005",
    ] {
        assert!(cfg.lines().any(|l| l == line), "no line {line:?} in\n{cfg}");
    }
}

#[test]
fn patroni_cluster_json_becomes_members() {
    let json = r#"{"members": [
        {"name": "pg1", "role": "leader", "state": "running", "timeline": 2},
        {"name": "pg2", "role": "sync_standby", "state": "running", "timeline": 2, "lag": 0},
        {"name": "pg3", "role": "replica", "state": "starting", "lag": "unknown"}
    ], "scope": "orders-pg"}"#;
    let members = parse_members(json).expect("members");
    assert_eq!(
        members,
        vec![
            Member {
                index: 0,
                name: "pg1".into(),
                role: Role::Leader,
                state: "running".into(),
                timeline: Some(2),
                lag: None
            },
            Member {
                index: 1,
                name: "pg2".into(),
                role: Role::SyncStandby,
                state: "running".into(),
                timeline: Some(2),
                lag: Some(0)
            },
            Member {
                index: 2,
                name: "pg3".into(),
                role: Role::Replica,
                state: "starting".into(),
                timeline: None,
                lag: None
            },
        ]
    );
    assert!(members[0].is_running() && members[1].is_running() && !members[2].is_running());
    assert!(parse_members(r#"{"members": [{"name": "other"}]}"#).is_err());
}

/// Processes whose command line mentions `dir`: the cluster's, if any survived.
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline
                .contains(&needle)
                .then(|| format!("{}: {cmdline}", entry.file_name().to_string_lossy()))
        })
        .collect()
}

/// Inserts row `id` through HAProxy on a fresh connection, each try bounded by 3 s.
async fn insert(url: &str, id: i64) -> anyhow::Result<()> {
    let attempt = async {
        let mut conn = PgConnection::connect(url).await?;
        sqlx::query("INSERT INTO ha_probe (id) VALUES ($1)")
            .bind(id)
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(3), attempt).await?
}

#[tokio::test]
async fn a_killed_leader_is_replaced_behind_the_same_port_and_rejoins_as_a_replica() {
    testkit::init_tracing();
    let began = Instant::now();
    let mut cluster = PgCluster::start().expect("the cluster forms");
    eprintln!("cluster formed in {:?}", began.elapsed());
    let url = cluster.url("postgres");
    let mut conn = PgConnection::connect(&url)
        .await
        .expect("connect via HAProxy");
    conn.execute("CREATE TABLE ha_probe (id INT8 PRIMARY KEY)")
        .await
        .expect("create table");
    conn.execute("INSERT INTO ha_probe (id) VALUES (1)")
        .await
        .expect("the first row");
    let _ = conn.close().await;

    let old = cluster.leader().expect("a leader");
    let killed = Instant::now();
    cluster.kill_node(old).expect("kill the leader");

    // Writes through the same port until one commits: the outage a client sees.
    let mut id = 2;
    let deadline = killed + Duration::from_secs(30);
    let mut last_error = String::new();
    let outage = loop {
        match insert(&url, id).await {
            Ok(()) => break killed.elapsed(),
            Err(error) if error.to_string() != last_error => {
                last_error = error.to_string();
                tracing::info!(%error, "no write yet");
            }
            Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "no write through HAProxy within 30 s of killing {old}\n{}",
            cluster.logs()
        );
        id += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let new = cluster
        .wait_leader(Duration::from_secs(5))
        .expect("a new leader");
    assert_ne!(new, old, "the killed node is not the leader");
    eprintln!(
        "leader pg{} killed; writes through HAProxy again after {outage:?}",
        old + 1
    );

    let mut conn = PgConnection::connect(&url).await.expect("connect again");
    let rows = sqlx::query("SELECT id FROM ha_probe ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .expect("read the rows");
    let ids: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(ids.first(), Some(&1), "the row written before the kill");
    assert_eq!(ids.last(), Some(&id), "the row written after it");
    let _ = conn.close().await;

    let rejoin = Instant::now();
    cluster.start_node(old).expect("start the old leader again");
    let deadline = rejoin + Duration::from_secs(60);
    loop {
        let members = cluster.members().unwrap_or_default();
        let leader = members.iter().find(|m| m.role == Role::Leader);
        let back = members.iter().find(|m| m.index == old);
        if let (Some(leader), Some(back)) = (leader, back)
            && back.role != Role::Leader
            && back.is_running()
            && back.timeline.is_some()
            && back.timeline == leader.timeline
        {
            eprintln!(
                "pg{} rejoined as {} on timeline {:?} after {:?}",
                old + 1,
                back.role,
                back.timeline,
                rejoin.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pg{} did not rejoin within 60 s: {members:?}\n{}",
            old + 1,
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    assert_eq!(processes_under(&dir), Vec::<String>::new(), "left running");
    assert!(!dir.exists(), "{} is removed", dir.display());
}
