//! PostgreSQL with automatic failover: three etcd members, three PostgreSQL nodes each under its
//! own Patroni, and HAProxy whose read-write port follows the leader.
//!
//! Two halves. [`HaLayout`] renders everything from a folder and ports (etcd's command lines, each
//! node's Patroni YAML, HAProxy's configuration) and probes the running cluster (Patroni's REST
//! API, etcd's `/health`, HAProxy's stats socket); [`HaTools`] turns the layout into commands. The
//! dev stack (dev/devstack, `STACK_DB=ha`) runs its long-lived cluster with both, the tests'
//! [`PgCluster`] its throwaway one: one launcher, one rendering.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tempfile::TempDir;

use crate::postgres::{PgTools, find_tool};
use crate::support::{
    PORT_ATTEMPTS, START_TIMEOUT, User, find_binary_or, http_request, kill_group, kill_process,
    output_text, pick_port, process_alive, process_group, read_lossy, tail, temp_folder,
    wait_until,
};

/// Nodes of each kind: three etcd members keep a quorum (two) with one down, three PostgreSQL
/// nodes keep a synchronous standby with one down.
pub const NODES: usize = 3;

/// Patroni's `scope`: the cluster's name, under which its keys live in etcd (`/service/<scope>/`).
pub const SCOPE: &str = "orders-pg";

/// The superuser Patroni connects as (initdb's); clients use `root`.
pub const PATRONI_USER: &str = "patroni";

/// How long a cluster may take to elect a leader, stream to a synchronous standby and take a
/// write through HAProxy: initdb, a base backup per replica and the first loops of Patroni.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str = "install them with `apt-get install -y patroni etcd-server haproxy`";

/// Timeout of one REST call to Patroni or one `/health` of etcd.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Every port of an HA cluster, all on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaPorts {
    /// HAProxy's read-write port: the leader's PostgreSQL, whichever node that is.
    pub haproxy: u16,
    /// Each node's PostgreSQL.
    pub postgres: [u16; NODES],
    /// Each node's Patroni REST API (`/cluster`, `/primary`, `/switchover`).
    pub patroni: [u16; NODES],
    /// Each etcd member's client port (Patroni's `etcd3.hosts`).
    pub etcd_client: [u16; NODES],
    /// Each etcd member's peer port (raft between the members).
    pub etcd_peer: [u16; NODES],
}

impl HaPorts {
    /// How many ports [`HaPorts::from_base`] takes from its base.
    pub const SPAN: u16 = 4 * NODES as u16;

    /// HAProxy on `haproxy`, the others from `base` upwards: PostgreSQL `base..base+2`, Patroni
    /// `base+3..base+5`, etcd clients `base+6..base+8`, etcd peers `base+9..base+11`.
    pub fn from_base(haproxy: u16, base: u16) -> anyhow::Result<HaPorts> {
        let last = base
            .checked_add(Self::SPAN - 1)
            .filter(|_| base > 0)
            .with_context(|| {
                format!(
                    "a base port of {base} leaves no room for {} ports below 65536",
                    Self::SPAN
                )
            })?;
        if (base..=last).contains(&haproxy) {
            bail!("the HA ports {base}..{last} include HAProxy's port {haproxy}");
        }
        let block =
            |offset: u16| -> [u16; NODES] { std::array::from_fn(|i| base + offset + i as u16) };
        Ok(HaPorts {
            haproxy,
            postgres: block(0),
            patroni: block(NODES as u16),
            etcd_client: block(2 * NODES as u16),
            etcd_peer: block(3 * NODES as u16),
        })
    }

    /// Thirteen distinct ports nothing listens on now (see `pick_port`).
    pub fn free() -> anyhow::Result<HaPorts> {
        let mut taken = Vec::new();
        let mut next = || -> anyhow::Result<u16> {
            loop {
                let port = pick_port()?;
                if !taken.contains(&port) {
                    taken.push(port);
                    return Ok(port);
                }
            }
        };
        let mut block = || -> anyhow::Result<[u16; NODES]> { Ok([next()?, next()?, next()?]) };
        let postgres = block()?;
        let patroni = block()?;
        let etcd_client = block()?;
        let etcd_peer = block()?;
        Ok(HaPorts {
            haproxy: pick_distinct(&[postgres, patroni, etcd_client, etcd_peer])?,
            postgres,
            patroni,
            etcd_client,
            etcd_peer,
        })
    }

    /// Every port with what wants it ("PostgreSQL of pg2"), HAProxy's first.
    pub fn described(&self) -> Vec<(String, u16)> {
        let mut all = vec![("HAProxy (read-write)".to_owned(), self.haproxy)];
        for i in 0..NODES {
            let member = HaLayout::member_name(i);
            let etcd = HaLayout::etcd_name(i);
            all.push((format!("PostgreSQL of {member}"), self.postgres[i]));
            all.push((format!("Patroni REST API of {member}"), self.patroni[i]));
            all.push((format!("etcd client port of {etcd}"), self.etcd_client[i]));
            all.push((format!("etcd peer port of {etcd}"), self.etcd_peer[i]));
        }
        all
    }
}

fn pick_distinct(blocks: &[[u16; NODES]]) -> anyhow::Result<u16> {
    loop {
        let port = pick_port()?;
        if !blocks.iter().flatten().any(|&taken| taken == port) {
            return Ok(port);
        }
    }
}

/// A node's role as Patroni's `/cluster` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Holds the leader key: the primary, the one HAProxy sends clients to.
    Leader,
    /// The replica whose acknowledgement a commit waits for (`synchronous_standby_names`).
    SyncStandby,
    /// Any other replica.
    Replica,
}

impl Role {
    fn parse(role: &str) -> Role {
        match role {
            "leader" | "master" | "primary" | "standby_leader" => Role::Leader,
            "sync_standby" => Role::SyncStandby,
            _ => Role::Replica,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::SyncStandby => "sync standby",
            Role::Replica => "replica",
        })
    }
}

/// One member of the cluster as Patroni's `GET /cluster` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node's index, 0..3 (member `pg1` is 0).
    pub index: usize,
    /// Patroni's member name, `pg1`..`pg3`.
    pub name: String,
    pub role: Role,
    /// PostgreSQL's state as Patroni sees it: `running`, `starting`, `stopped`, `crashed`, …
    pub state: String,
    /// The timeline PostgreSQL is on, when it runs.
    pub timeline: Option<u64>,
    /// Bytes of WAL a replica is behind the leader; `None` for the leader and while unknown.
    pub lag: Option<u64>,
}

impl Member {
    /// Whether the member's PostgreSQL runs (a replica's: and it reports how far behind it is).
    pub fn is_running(&self) -> bool {
        self.state == "running" && (self.role == Role::Leader || self.lag.is_some())
    }
}

/// Parses Patroni's `GET /cluster` answer; members whose names are not `pg1`..`pg3` are an error.
pub fn parse_members(json: &str) -> anyhow::Result<Vec<Member>> {
    let cluster: serde_json::Value =
        serde_json::from_str(json).context("Patroni's /cluster is not JSON")?;
    let members = cluster["members"]
        .as_array()
        .context("Patroni's /cluster has no members list")?;
    members
        .iter()
        .map(|member| {
            let name = member["name"]
                .as_str()
                .context("a member without a name")?
                .to_owned();
            let index = HaLayout::member_index(&name)
                .with_context(|| format!("member {name} is not one of pg1..pg{NODES}"))?;
            Ok(Member {
                index,
                role: Role::parse(member["role"].as_str().unwrap_or_default()),
                state: member["state"].as_str().unwrap_or_default().to_owned(),
                timeline: member["timeline"].as_u64(),
                // "unknown" (a string) while Patroni has not seen the replica's position.
                lag: member["lag"].as_u64(),
                name,
            })
        })
        .collect()
}

/// Where an HA cluster lives and on which ports: renders every configuration and probes the
/// running cluster. Pure apart from [`HaLayout::write_configs`] and the probes.
///
/// Folders under `dir`: `pg1/`..`pg3/` (each node's `patroni.yml`, `data/`, its Unix socket;
/// owned by the `postgres` user when we are root), `etcd1/`..`etcd3/` (etcd's data) and
/// `haproxy.cfg` with HAProxy's stats socket `haproxy.sock`.
#[derive(Debug, Clone)]
pub struct HaLayout {
    dir: PathBuf,
    ports: HaPorts,
    pg_bin: PathBuf,
}

impl HaLayout {
    /// `pg_bin` is the folder of PostgreSQL's programs (Patroni's `bin_dir`).
    pub fn new(dir: impl Into<PathBuf>, ports: HaPorts, pg_bin: impl Into<PathBuf>) -> HaLayout {
        HaLayout {
            dir: dir.into(),
            ports,
            pg_bin: pg_bin.into(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ports(&self) -> &HaPorts {
        &self.ports
    }

    /// Patroni's name of node `i`: `pg1`..`pg3`.
    pub fn member_name(i: usize) -> String {
        format!("pg{}", i + 1)
    }

    /// The node index of member `name` (`pg2` is 1).
    pub fn member_index(name: &str) -> Option<usize> {
        let n: usize = name.strip_prefix("pg")?.parse().ok()?;
        (1..=NODES).contains(&n).then(|| n - 1)
    }

    /// etcd's name of member `i`: `etcd1`..`etcd3`.
    pub fn etcd_name(i: usize) -> String {
        format!("etcd{}", i + 1)
    }

    /// Node `i`'s folder: its Patroni configuration, data folder and Unix socket.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(Self::member_name(i))
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("data")
    }

    pub fn patroni_config(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("patroni.yml")
    }

    /// etcd member `i`'s data folder.
    pub fn etcd_dir(&self, i: usize) -> PathBuf {
        self.dir.join(Self::etcd_name(i))
    }

    pub fn haproxy_config(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }

    /// HAProxy's stats socket (`show stat`), for [`HaLayout::haproxy_servers`].
    pub fn haproxy_socket(&self) -> PathBuf {
        self.dir.join("haproxy.sock")
    }

    /// `postgresql://root@127.0.0.1:{haproxy}/{database}?sslmode=disable`: the leader, as the
    /// superuser.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://root@127.0.0.1:{}/{database}?sslmode=disable",
            self.ports.haproxy
        )
    }

    /// Each node's Patroni REST API, `http://127.0.0.1:{port}`.
    pub fn patroni_urls(&self) -> Vec<String> {
        self.ports
            .patroni
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect()
    }

    /// etcd's client endpoints as Patroni's `etcd3.hosts` lists them.
    pub fn etcd_hosts(&self) -> String {
        self.ports
            .etcd_client
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// etcd member `i`'s arguments. `--initial-cluster-state new` counts only on the first start:
    /// a member with data rejoins from what its data folder says.
    pub fn etcd_args(&self, i: usize) -> Vec<String> {
        let peer = |i: usize| format!("http://127.0.0.1:{}", self.ports.etcd_peer[i]);
        let client = format!("http://127.0.0.1:{}", self.ports.etcd_client[i]);
        let initial_cluster = (0..NODES)
            .map(|j| format!("{}={}", Self::etcd_name(j), peer(j)))
            .collect::<Vec<_>>()
            .join(",");
        [
            "--name",
            &Self::etcd_name(i),
            "--data-dir",
            &self.etcd_dir(i).to_string_lossy(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer(i),
            "--initial-advertise-peer-urls",
            &peer(i),
            "--initial-cluster",
            &initial_cluster,
            // Members of another cluster on these ports (a stale test's) are refused.
            "--initial-cluster-token",
            &format!("{SCOPE}-{}", self.ports.etcd_peer[0]),
            "--initial-cluster-state",
            "new",
            // Raft timing for a machine whose cores are also busy with PostgreSQL and the
            // services: etcd's defaults (100 ms heartbeat, 1 s election) made it re-elect under a
            // saturated benchmark, and a Patroni that cannot reach etcd for its retry_timeout
            // demotes a healthy leader. Still far below Patroni's ttl of 20 s.
            "--heartbeat-interval",
            "250",
            "--election-timeout",
            "2500",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    }

    /// Node `i`'s Patroni configuration (YAML, written by hand: every value is ours).
    pub fn patroni_yaml(&self, i: usize) -> String {
        let name = Self::member_name(i);
        let rest = self.ports.patroni[i];
        let pg = self.ports.postgres[i];
        let node_dir = yaml_quote(&self.node_dir(i).to_string_lossy());
        let data_dir = yaml_quote(&self.data_dir(i).to_string_lossy());
        let pgpass = yaml_quote(&self.node_dir(i).join("pgpass").to_string_lossy());
        let bin_dir = yaml_quote(&self.pg_bin.to_string_lossy());
        let hosts = self.etcd_hosts();
        // Patroni appends the connection string; psql runs every -c in its own transaction.
        let post_bootstrap = yaml_quote(&format!(
            "{} -X -q -v ON_ERROR_STOP=1 -c \"CREATE ROLE root WITH LOGIN SUPERUSER\" \
             -c \"ALTER ROLE {PATRONI_USER} SET default_transaction_isolation TO 'read committed'\"",
            self.pg_bin.join("psql").display()
        ));
        format!(
            "\
# Node {name} of the HA cluster {SCOPE}, rendered by testkit::patroni (HaLayout::patroni_yaml).
scope: {SCOPE}
name: {name}
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd3:
  hosts: {hosts}
bootstrap:
  # Written to etcd by the node that bootstraps the cluster; the same on every node.
  dcs:
    # A leader that cannot renew its key within ttl seconds loses it; Patroni wants
    # loop_wait + 2 * retry_timeout <= ttl (2 + 18 <= 20), so one slow etcd call does not cost
    # the leadership, and a dead leader is replaced within about 20 s.
    ttl: 20
    loop_wait: 2
    retry_timeout: 9
    # A replica more than 1 MiB behind does not take over: it would lose acknowledged commits.
    maximum_lag_on_failover: 1048576
    # A commit waits for one synchronous standby, so a failover loses nothing acknowledged. Not
    # strict: with the synchronous standby gone, Patroni names the other replica, and with no
    # replica left the leader keeps accepting writes rather than stopping the pipeline.
    synchronous_mode: true
    synchronous_node_count: 1
    postgresql:
      # A deposed leader rejoins as a replica by rewinding its diverged WAL, not by a new copy.
      use_pg_rewind: true
      # The leader keeps the WAL each replica still needs, even while that replica is down.
      use_slots: true
      parameters:
        # pg_rewind needs hint bits in the WAL (or data checksums).
        wal_log_hints: 'on'
        max_connections: 200
        # As the single-node profile: SERIALIZABLE like CockroachDB, so 40001 retries are real.
        default_transaction_isolation: serializable
  # initdb as PgTools::INITDB_ARGS (the superuser comes from authentication below).
  initdb:
    - encoding: UTF8
    - locale: C
    - auth: trust
  # Clients get `root`, as from the single-node profile. Patroni has a superuser of its own that
  # runs at READ COMMITTED: on a replica every SERIALIZABLE transaction fails (cannot use
  # serializable mode in a hot standby), Patroni's queries there included, and Patroni sets
  # the connection options itself, so PGOPTIONS cannot change them.
  post_bootstrap: {post_bootstrap}
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {data_dir}
  bin_dir: {bin_dir}
  # Patroni writes the replication password file here, not in the postgres user's home.
  pgpass: {pgpass}
  # Trust on 127.0.0.1 as the single-node profile: roles are kept apart by grants.
  authentication:
    superuser:
      username: {PATRONI_USER}
    replication:
      username: {PATRONI_USER}
    rewind:
      username: {PATRONI_USER}
  parameters:
    # The node's own folder, never /var/run/postgresql (a system PostgreSQL's).
    unix_socket_directories: {node_dir}
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
watchdog:
  mode: 'off'
"
        )
    }

    /// HAProxy's configuration: one read-write port that forwards to whichever node answers 200
    /// on Patroni's `/primary` (only the leader does).
    pub fn haproxy_cfg(&self) -> String {
        let port = self.ports.haproxy;
        let socket = self.haproxy_socket().display().to_string();
        let servers: String = (0..NODES)
            .map(|i| {
                format!(
                    "    server {} 127.0.0.1:{} check port {}\n",
                    Self::member_name(i),
                    self.ports.postgres[i],
                    self.ports.patroni[i]
                )
            })
            .collect();
        format!(
            "\
# HAProxy of the HA cluster {SCOPE}, rendered by testkit::patroni (HaLayout::haproxy_cfg).
global
    maxconn 1000
    stats socket {socket} mode 600 level user

defaults
    mode tcp
    # A node that does not accept within a few seconds is down; the next try goes elsewhere.
    timeout connect 4s
    # Pooled connections sit idle for long; PostgreSQL's own timeouts govern, not HAProxy's.
    timeout client 30m
    timeout server 30m
    timeout check 2s

listen postgres-rw
    bind 127.0.0.1:{port}
    option httpchk GET /primary
    http-check expect status 200
    # Checked every second; two failures mark a node down, one success up again. Sessions to a
    # node marked down are cut, so no client keeps writing to a deposed leader.
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
{servers}"
        )
    }

    /// Creates the folders and writes every configuration. The node folders (mode 700) go to
    /// `owner`, the user Patroni and PostgreSQL run as, when given.
    pub fn write_configs(&self, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        for i in 0..NODES {
            let node_dir = self.node_dir(i);
            std::fs::create_dir_all(&node_dir)
                .with_context(|| format!("creating {}", node_dir.display()))?;
            std::fs::set_permissions(&node_dir, std::fs::Permissions::from_mode(0o700))?;
            let config = self.patroni_config(i);
            std::fs::write(&config, self.patroni_yaml(i))
                .with_context(|| format!("writing {}", config.display()))?;
            if let Some((uid, gid)) = owner {
                for path in [&node_dir, &config] {
                    std::os::unix::fs::chown(path, Some(uid), Some(gid))
                        .with_context(|| format!("handing {} to uid {uid}", path.display()))?;
                }
            }
        }
        let config = self.haproxy_config();
        std::fs::write(&config, self.haproxy_cfg())
            .with_context(|| format!("writing {}", config.display()))
    }

    /// Node `i`'s postmaster, from the first line of its postmaster.pid, when it is alive.
    pub fn postmaster_pid(&self, i: usize) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir(i).join("postmaster.pid")).ok()?;
        let pid = text.lines().next()?.trim().parse().ok()?;
        process_alive(pid).then_some(pid)
    }

    /// Whether node `i` has a data folder (it was bootstrapped or copied once).
    pub fn has_data(&self, i: usize) -> bool {
        self.data_dir(i).join("PG_VERSION").is_file()
    }

    /// The members as the first Patroni that answers reports them (`GET /cluster`).
    pub fn members(&self) -> anyhow::Result<Vec<Member>> {
        let mut errors = Vec::new();
        for (i, port) in self.ports.patroni.iter().enumerate() {
            match http_request(*port, "GET", "/cluster", None, PROBE_TIMEOUT) {
                Ok((200, body)) => return parse_members(&body),
                Ok((status, body)) => errors.push(format!(
                    "{}: {status} {}",
                    Self::member_name(i),
                    body.trim()
                )),
                Err(error) => errors.push(format!("{}: {error:#}", Self::member_name(i))),
            }
        }
        bail!("no Patroni answers GET /cluster ({})", errors.join("; "))
    }

    /// Whether etcd member `i` answers `/health` with `"health":"true"`.
    pub fn etcd_healthy(&self, i: usize) -> bool {
        http_request(
            self.ports.etcd_client[i],
            "GET",
            "/health",
            None,
            PROBE_TIMEOUT,
        )
        .is_ok_and(|(status, body)| status == 200 && body.contains("\"true\""))
    }

    /// HAProxy's view of each node behind the read-write port: (member name, `UP`/`DOWN`/…), from
    /// `show stat` on its stats socket.
    pub fn haproxy_servers(&self) -> anyhow::Result<Vec<(String, String)>> {
        let socket = self.haproxy_socket();
        let mut stream = UnixStream::connect(&socket)
            .with_context(|| format!("connecting to HAProxy's {}", socket.display()))?;
        stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
        stream.write_all(b"show stat\n")?;
        let mut csv = String::new();
        stream.read_to_string(&mut csv)?;
        // "# pxname,svname,qcur,…,status,…": the status column is found by its header.
        let header = csv
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# "))
            .context("HAProxy's show stat has no header")?;
        let status_at = header
            .split(',')
            .position(|column| column == "status")
            .context("HAProxy's show stat has no status column")?;
        Ok(csv
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(',').collect();
                let server = *fields.get(1)?;
                HaLayout::member_index(server)?;
                Some((server.to_owned(), (*fields.get(status_at)?).to_owned()))
            })
            .collect())
    }

    /// Asks the leader's Patroni to hand over to `candidate` (any healthy replica when `None`):
    /// `POST /switchover`. Returns once Patroni says the switchover happened.
    pub fn switchover(&self, candidate: Option<usize>) -> anyhow::Result<()> {
        let members = self.members()?;
        let leader = members
            .iter()
            .find(|member| member.role == Role::Leader)
            .context("there is no leader to switch over from")?;
        let mut body = serde_json::json!({ "leader": leader.name });
        if let Some(candidate) = candidate {
            body["candidate"] = Self::member_name(candidate).into();
        }
        let (status, answer) = http_request(
            self.ports.patroni[leader.index],
            "POST",
            "/switchover",
            Some(&body.to_string()),
            // Patroni answers once the new leader runs, which takes a few loops.
            Duration::from_secs(60),
        )?;
        if status != 200 {
            bail!(
                "switchover from {}: {status} {}",
                leader.name,
                answer.trim()
            );
        }
        Ok(())
    }
}

/// A YAML single-quoted scalar.
fn yaml_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// etcd, Patroni, HAProxy, psql and PostgreSQL's tools, found once; each command they make runs a
/// process of an [`HaLayout`]. The caller adds stdout, stderr and detaching.
#[derive(Debug, Clone)]
pub struct HaTools {
    pg: PgTools,
    patroni: PathBuf,
    etcd: PathBuf,
    haproxy: PathBuf,
    psql: PathBuf,
}

impl HaTools {
    /// Finds every program on PATH, then in /usr/bin, /usr/sbin (and PostgreSQL's bin folder for
    /// psql); the error names the missing one and the Debian packages to install.
    pub fn find() -> anyhow::Result<HaTools> {
        let system = [PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")];
        Ok(HaTools {
            pg: PgTools::find()?,
            patroni: find_binary_or("patroni", &system, INSTALL_HINT)?,
            etcd: find_binary_or("etcd", &system, INSTALL_HINT)?,
            haproxy: find_binary_or("haproxy", &system, INSTALL_HINT)?,
            psql: find_tool("psql")?,
        })
    }

    pub fn pg(&self) -> &PgTools {
        &self.pg
    }

    /// The layout of a cluster in `dir` on `ports`, with this PostgreSQL's programs.
    pub fn layout(&self, dir: impl Into<PathBuf>, ports: HaPorts) -> HaLayout {
        let bin = std::fs::canonicalize(self.pg.initdb())
            .ok()
            .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
        HaLayout::new(dir, ports, bin)
    }

    /// etcd member `i`.
    pub fn etcd(&self, layout: &HaLayout, i: usize) -> Command {
        let mut command = Command::new(&self.etcd);
        command
            .args(layout.etcd_args(i))
            .current_dir(layout.dir())
            .stdin(Stdio::null());
        // ETCD_* variables would override the command line.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(name);
            }
        }
        command
    }

    /// Patroni of node `i`, as the `postgres` user when we are root (it runs PostgreSQL).
    pub fn patroni(&self, layout: &HaLayout, i: usize) -> Command {
        let node_dir = layout.node_dir(i);
        let mut command = self.pg.command(&self.patroni, &node_dir);
        command.arg(layout.patroni_config(i)).env("HOME", &node_dir);
        // PATRONI_* variables would override the configuration file.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PATRONI_") {
                command.env_remove(name);
            }
        }
        command
    }

    /// HAProxy in the foreground (`-db`), so it is the process the caller started and stops.
    pub fn haproxy(&self, layout: &HaLayout) -> Command {
        let mut command = Command::new(&self.haproxy);
        command
            .arg("-db")
            .arg("-f")
            .arg(layout.haproxy_config())
            .current_dir(layout.dir())
            .stdin(Stdio::null());
        command
    }

    /// Runs `SELECT txid_current()` through HAProxy: a transaction that takes a transaction id
    /// commits only on a primary, and with a synchronous standby named only once that standby
    /// confirmed it.
    pub fn write_through_haproxy(&self, layout: &HaLayout) -> anyhow::Result<()> {
        let url = format!("{}&connect_timeout=3", layout.url("postgres"));
        let output = self
            .pg
            .command(&self.psql, layout.dir())
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg("SELECT txid_current()")
            .arg(url)
            // A commit that waits for a standby that is gone must not hang start-up.
            .env("PGOPTIONS", "-c statement_timeout=5000")
            .output()
            .with_context(|| format!("running {}", self.psql.display()))?;
        if !output.status.success() {
            bail!(
                "a write through HAProxy (port {}) failed: {}",
                layout.ports().haproxy,
                output_text(&output)
            );
        }
        Ok(())
    }
}

/// A throwaway HA PostgreSQL cluster for tests: three etcd members, three PostgreSQL 15 nodes
/// under Patroni and HAProxy, all children of this process on free ports of 127.0.0.1 in one
/// temporary folder (logs in `<tmp>/logs/`: `etcd1.log`.., `pg1.log`.. (Patroni's and its
/// PostgreSQL's output) and `haproxy.log`). Everything is killed and removed on `Drop`, also when
/// the test panics.
#[derive(Debug)]
pub struct PgCluster {
    tools: HaTools,
    layout: HaLayout,
    etcd: [Option<Child>; NODES],
    patroni: [Option<Child>; NODES],
    haproxy: Option<Child>,
    /// Last: removed after `Drop` has killed everything.
    dir: TempDir,
}

impl PgCluster {
    /// Starts the cluster. Blocks until a leader runs, a synchronous standby streams from it and
    /// a write through HAProxy commits (at most [`FORM_TIMEOUT`]); the error carries the tails of
    /// the logs. Retries on fresh ports when another process took one meanwhile.
    pub fn start() -> anyhow::Result<PgCluster> {
        let began = Instant::now();
        let tools = HaTools::find()?;
        for attempt in 1..=PORT_ATTEMPTS {
            let owner = tools.pg.run_as().map(|(uid, gid)| User { uid, gid });
            let dir = temp_folder("testkit-ha-", owner)?;
            let layout = tools.layout(dir.path(), HaPorts::free()?);
            layout.write_configs(tools.pg.run_as())?;
            std::fs::create_dir_all(dir.path().join("logs"))?;
            let mut cluster = PgCluster {
                tools: tools.clone(),
                layout,
                etcd: Default::default(),
                patroni: Default::default(),
                haproxy: None,
                dir,
            };
            match cluster.launch() {
                Ok(()) => {
                    tracing::info!(
                        port = cluster.port(),
                        dir = %cluster.dir().display(),
                        elapsed_ms = began.elapsed().as_millis() as u64,
                        "HA PostgreSQL cluster formed"
                    );
                    return Ok(cluster);
                }
                Err(error) if attempt < PORT_ATTEMPTS && cluster.a_port_was_taken() => {
                    tracing::warn!(%error, "a port was taken, trying other ports");
                }
                Err(error) => return Err(error),
            }
        }
        bail!("the HA cluster found no free ports in {PORT_ATTEMPTS} attempts")
    }

    /// HAProxy's read-write port: the leader's PostgreSQL.
    pub fn port(&self) -> u16 {
        self.layout.ports().haproxy
    }

    /// `postgresql://root@127.0.0.1:{port}/{database}?sslmode=disable`, through HAProxy.
    pub fn url(&self, database: &str) -> String {
        self.layout.url(database)
    }

    /// The temporary folder of everything.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn layout(&self) -> &HaLayout {
        &self.layout
    }

    /// Each node's Patroni REST API.
    pub fn patroni_urls(&self) -> Vec<String> {
        self.layout.patroni_urls()
    }

    /// The members as a live Patroni reports them.
    pub fn members(&self) -> anyhow::Result<Vec<Member>> {
        self.layout.members()
    }

    /// The leader's node index.
    pub fn leader(&self) -> anyhow::Result<usize> {
        self.member_with(Role::Leader)
    }

    /// The synchronous standby's node index.
    pub fn sync_standby(&self) -> anyhow::Result<usize> {
        self.member_with(Role::SyncStandby)
    }

    /// Waits until a running leader is known, at most `timeout`; its node index.
    pub fn wait_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let mut leader = None;
        self.wait(timeout, "a running leader", || {
            leader = self
                .members()?
                .into_iter()
                .find(|member| member.role == Role::Leader && member.is_running())
                .map(|member| member.index);
            Ok(leader.is_some())
        })?;
        leader.context("a leader was seen")
    }

    /// Waits until node `i` runs in `role`, at most `timeout`.
    pub fn wait_role(&self, i: usize, role: Role, timeout: Duration) -> anyhow::Result<Member> {
        let mut seen = None;
        let name = HaLayout::member_name(i);
        self.wait(timeout, &format!("{name} to run as {role}"), || {
            seen = self
                .members()?
                .into_iter()
                .find(|member| member.index == i && member.role == role && member.is_running());
            Ok(seen.is_some())
        })?;
        seen.context("the member was seen")
    }

    /// Crashes node `i` as a machine failure would: SIGKILL to its Patroni and to its PostgreSQL
    /// (the postmaster's whole process group) at once. Both are gone when this returns.
    pub fn kill_node(&mut self, i: usize) -> anyhow::Result<()> {
        let postmaster = self.layout.postmaster_pid(i);
        let group = postmaster.and_then(process_group);
        if let Some(child) = self.patroni[i].as_mut() {
            let _ = child.kill();
        }
        // Patroni starts the postmaster in a session of its own (setsid), whose group holds the
        // postmaster and its backends, and never this process.
        match (postmaster, group) {
            (Some(_), Some(group)) => kill_group(group),
            (Some(pid), None) => kill_process(pid),
            _ => {}
        }
        if let Some(mut child) = self.patroni[i].take() {
            child
                .wait()
                .with_context(|| format!("waiting for Patroni of node {i} to exit"))?;
        }
        if let Some(pid) = postmaster {
            self.wait(Duration::from_secs(10), "the postmaster to exit", || {
                Ok(!process_alive(pid))
            })?;
        }
        Ok(())
    }

    /// Crashes node `i`'s PostgreSQL alone (SIGKILL to the postmaster); Patroni lives on and
    /// starts it again.
    pub fn kill_postgres(&mut self, i: usize) -> anyhow::Result<()> {
        let pid = self
            .layout
            .postmaster_pid(i)
            .with_context(|| format!("node {i} has no running postmaster"))?;
        kill_process(pid);
        self.wait(Duration::from_secs(10), "the postmaster to exit", || {
            Ok(!process_alive(pid))
        })
    }

    /// Starts Patroni of node `i` again (after [`PgCluster::kill_node`]); it rejoins as a
    /// replica, rewinding its data when it was the leader. Returns at once: wait with
    /// [`PgCluster::wait_role`]. Does nothing when it runs.
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        if self.patroni[i].as_mut().is_some_and(still_running) {
            return Ok(());
        }
        self.spawn_patroni(i)
    }

    /// Kills etcd member `i` (SIGKILL) and reaps it.
    pub fn kill_etcd(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.etcd[i].take() {
            let _ = child.kill();
            child
                .wait()
                .with_context(|| format!("waiting for etcd member {i} to exit"))?;
        }
        Ok(())
    }

    /// Starts etcd member `i` again with its data; returns once it is healthy (at most 30 s).
    pub fn start_etcd(&mut self, i: usize) -> anyhow::Result<()> {
        if self.etcd[i].as_mut().is_some_and(still_running) {
            return Ok(());
        }
        self.spawn_etcd(i)?;
        let layout = self.layout.clone();
        self.wait(
            START_TIMEOUT,
            &format!("etcd member {i} to be healthy"),
            || Ok(layout.etcd_healthy(i)),
        )
    }

    /// A planned hand-over to `candidate` (or any healthy replica): Patroni's `POST /switchover`.
    pub fn switchover(&self, candidate: Option<usize>) -> anyhow::Result<()> {
        self.layout
            .switchover(candidate)
            .map_err(|error| self.with_logs(error))
    }

    /// The last lines of every log, for failure messages.
    pub fn logs(&self) -> String {
        let mut names: Vec<String> = (0..NODES).map(HaLayout::etcd_name).collect();
        names.extend((0..NODES).map(HaLayout::member_name));
        names.push("haproxy".to_owned());
        names
            .iter()
            .map(|name| {
                let path = self.log_path(name);
                format!(
                    "--- tail of {} ---\n{}",
                    path.display(),
                    tail(&read_lossy(&path), 30)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{name}.log"))
    }

    fn member_with(&self, role: Role) -> anyhow::Result<usize> {
        self.members()?
            .into_iter()
            .find(|member| member.role == role)
            .map(|member| member.index)
            .with_context(|| format!("the cluster has no {role} now"))
    }

    /// [`wait_until`] with `timeout`, the error carrying the logs.
    fn wait(
        &self,
        timeout: Duration,
        what: &str,
        mut ready: impl FnMut() -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let mut last = String::new();
        wait_until(Instant::now() + timeout, what, || match ready() {
            Ok(done) => Ok(done),
            // Members do not answer while they restart: keep waiting, remember why.
            Err(error) => {
                last = format!("{error:#}");
                Ok(false)
            }
        })
        .map_err(|error| {
            let error = if last.is_empty() {
                error
            } else {
                error.context(format!("last error: {last}"))
            };
            self.with_logs(error)
        })
    }

    fn with_logs(&self, error: anyhow::Error) -> anyhow::Error {
        anyhow!("{error:#}\n{}", self.logs())
    }

    fn spawn_logged(&self, mut command: Command, name: &str) -> anyhow::Result<Child> {
        let path = self.log_path(name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        command
            .stdout(log.try_clone().context("sharing a log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("running {}", command.get_program().to_string_lossy()))
    }

    fn spawn_etcd(&mut self, i: usize) -> anyhow::Result<()> {
        let child = self.spawn_logged(self.tools.etcd(&self.layout, i), &HaLayout::etcd_name(i))?;
        self.etcd[i] = Some(child);
        Ok(())
    }

    fn spawn_patroni(&mut self, i: usize) -> anyhow::Result<()> {
        let command = self.tools.patroni(&self.layout, i);
        let child = self.spawn_logged(command, &HaLayout::member_name(i))?;
        self.patroni[i] = Some(child);
        Ok(())
    }

    /// etcd first (Patroni needs it to elect anyone), then every Patroni and HAProxy, then waits
    /// until the cluster takes writes through HAProxy.
    fn launch(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + FORM_TIMEOUT;
        for i in 0..NODES {
            self.spawn_etcd(i)?;
        }
        for i in 0..NODES {
            self.wait_alive_until(deadline, &format!("etcd member {i} to be healthy"), |c| {
                Ok(c.layout.etcd_healthy(i))
            })?;
        }
        for i in 0..NODES {
            self.spawn_patroni(i)?;
        }
        self.haproxy = Some(self.spawn_logged(self.tools.haproxy(&self.layout), "haproxy")?);
        self.wait_alive_until(deadline, "a leader and a streaming sync standby", |c| {
            let members = c.members()?;
            let has = |role| {
                members
                    .iter()
                    .any(|member| member.role == role && member.is_running())
            };
            Ok(has(Role::Leader) && has(Role::SyncStandby))
        })?;
        self.wait_alive_until(deadline, "a write through HAProxy", |c| {
            c.tools.write_through_haproxy(&c.layout)?;
            Ok(true)
        })
    }

    /// Polls `ready` until `deadline`, failing at once when a process exited; errors of `ready`
    /// count as "not yet". The error carries the logs.
    fn wait_alive_until(
        &mut self,
        deadline: Instant,
        what: &str,
        mut ready: impl FnMut(&PgCluster) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let mut last = String::new();
        let result = wait_until(deadline, what, || {
            if let Some(gone) = self.exited()? {
                bail!("{gone} exited during start-up");
            }
            match ready(self) {
                Ok(done) => Ok(done),
                Err(error) => {
                    last = format!("{error:#}");
                    Ok(false)
                }
            }
        });
        result.map_err(|error| {
            let error = if last.is_empty() {
                error
            } else {
                error.context(format!("last error: {last}"))
            };
            self.with_logs(error)
        })
    }

    /// The first started process that is no longer running, with its exit status.
    fn exited(&mut self) -> anyhow::Result<Option<String>> {
        let named =
            self.etcd
                .iter_mut()
                .enumerate()
                .map(|(i, child)| (HaLayout::etcd_name(i), child))
                .chain(
                    self.patroni.iter_mut().enumerate().map(|(i, child)| {
                        (format!("Patroni of {}", HaLayout::member_name(i)), child)
                    }),
                )
                .chain(std::iter::once(("haproxy".to_owned(), &mut self.haproxy)));
        for (name, child) in named {
            if let Some(child) = child.as_mut()
                && let Some(status) = child.try_wait().context("checking on a child")?
            {
                return Ok(Some(format!("{name} ({status})")));
            }
        }
        Ok(None)
    }

    fn a_port_was_taken(&self) -> bool {
        let logs = self.logs();
        logs.contains("address already in use")
            || logs.contains("Address already in use")
            || logs.contains("cannot bind socket")
    }
}

fn still_running(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(mut haproxy) = self.haproxy.take() {
            let _ = haproxy.kill();
            let _ = haproxy.wait();
        }
        for i in 0..NODES {
            if let Err(error) = self.kill_node(i) {
                tracing::warn!(node = i, %error, "stopping an HA node failed");
            }
        }
        for i in 0..NODES {
            if let Err(error) = self.kill_etcd(i) {
                tracing::warn!(member = i, %error, "stopping an etcd member failed");
            }
        }
        // A Patroni killed while it was starting PostgreSQL may have left a postmaster behind.
        for i in 0..NODES {
            if let Some(pid) = self.layout.postmaster_pid(i) {
                process_group(pid).map_or_else(|| kill_process(pid), kill_group);
            }
        }
        // The TempDir field removes the folder after this.
    }
}
