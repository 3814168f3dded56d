//! The stack's HA PostgreSQL (`STACK_DB=ha`): three etcd members, three PostgreSQL nodes under
//! Patroni and HAProxy on `STACK_PG_PORT`, in `$STACK_DIR/ha`. The configurations and commands
//! are the test kit's (`testkit::patroni`), so the tests' clusters and this one are the same.

use testkit::patroni::{HaLayout, HaTools, Member, NODES, Role};

use super::*;

/// The pid-file and log names of the etcd members, Patroni nodes and HAProxy.
pub(crate) const ETCD: [&str; NODES] = ["etcd-1", "etcd-2", "etcd-3"];
pub(crate) const PATRONI: [&str; NODES] = ["patroni-1", "patroni-2", "patroni-3"];
pub(crate) const HAPROXY: &str = "haproxy";

/// One line of `status`: name, pid, port, health, log.
pub(super) type StatusRow<'a> = dyn FnMut(&str, Option<u32>, Option<u16>, &str, &str) + 'a;

/// How long a cluster may take to elect a leader and bring every node back.
const HA_FORM_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a PostgreSQL folder of the other profile under STACK_DIR is refused, or `None`.
pub(super) fn other_profile(layout: &Layout, db: Db) -> Option<String> {
    match db {
        Db::Ha => layout.pg_dir().join("PG_VERSION").is_file().then(|| {
            format!(
                "{} holds the single-node PostgreSQL of this stack (STACK_DB=single); an HA \
                 cluster does not reuse or overwrite it.\n       Start it with STACK_DB=single, \
                 or use another STACK_DIR for STACK_DB=ha (or remove that folder to lose its \
                 data).",
                layout.pg_dir().display()
            )
        }),
        Db::Single => (0..NODES)
            .any(|i| {
                layout
                    .ha_dir()
                    .join(HaLayout::member_name(i))
                    .join("data")
                    .join("PG_VERSION")
                    .is_file()
            })
            .then(|| {
                format!(
                    "{} holds the HA PostgreSQL cluster of this stack (STACK_DB=ha); a single \
                     PostgreSQL does not reuse or overwrite it.\n       Start it with \
                     STACK_DB=ha, or use another STACK_DIR for STACK_DB=single (or remove that \
                     folder to lose its data).",
                    layout.ha_dir().display()
                )
            }),
    }
}

/// `etcd-2` is member 1, `patroni-3` node 2.
fn index_of(name: &str, prefix: &str) -> Option<usize> {
    let n: usize = name.strip_prefix(prefix)?.parse().ok()?;
    (1..=NODES).contains(&n).then(|| n - 1)
}

/// `show stat`'s status of `member` in HAProxy's read-write listener.
fn haproxy_status<'a>(servers: &'a [(String, String)], member: &str) -> Option<&'a str> {
    servers
        .iter()
        .find(|(name, _)| name == member)
        .map(|(_, status)| status.as_str())
}

/// "leader, timeline 2" / "sync standby, timeline 2, lag 0 B" / "replica, starting".
fn describe(member: &Member) -> String {
    let mut text = member.role.to_string();
    if member.state != "running" {
        text.push_str(&format!(", {}", member.state));
    }
    if let Some(timeline) = member.timeline {
        text.push_str(&format!(", timeline {timeline}"));
    }
    if member.role != Role::Leader {
        match member.lag {
            Some(lag) => text.push_str(&format!(", lag {lag} B")),
            None => text.push_str(", lag unknown"),
        }
    }
    text
}

impl Stack {
    pub(super) fn ha_layout(&self, tools: &HaTools) -> anyhow::Result<HaLayout> {
        Ok(tools.layout(self.layout.ha_dir(), self.settings.ha_ports()?))
    }

    /// Whether every process of the HA cluster runs and every node's PostgreSQL with it.
    pub(super) fn ha_running(&self) -> bool {
        let all_live = ETCD
            .iter()
            .chain(&PATRONI)
            .chain(&[HAPROXY])
            .all(|name| self.live(name).is_some());
        all_live
            && HaTools::find()
                .and_then(|tools| self.ha_layout(&tools))
                .and_then(|layout| layout.members())
                .is_ok_and(|members| {
                    members.len() == NODES && members.iter().all(Member::is_running)
                })
    }

    /// Starts what of the HA cluster does not run (all of it, or a node or member that died),
    /// then waits until it has a leader, takes a write through HAProxy and every node runs.
    pub(super) fn start_ha(&mut self, started: &Started) -> anyhow::Result<()> {
        if let Some(refusal) = other_profile(&self.layout, Db::Ha) {
            bail!("{refusal}");
        }
        let tools = HaTools::find().context("STACK_DB=ha needs Patroni, etcd and HAProxy")?;
        let ha = self.ha_layout(&tools)?;
        self.check_postgres_enters(tools.pg())?;

        // Every port of what is not running, before anything starts: (process, port, what it is
        // for, the variable that moves it).
        let ports = ha.ports();
        let base = "STACK_HA_PORT_BASE";
        let mut wanted = vec![(
            HAPROXY,
            ports.haproxy,
            "HAProxy (read-write)".to_owned(),
            "STACK_PG_PORT",
        )];
        for i in 0..NODES {
            let member = HaLayout::member_name(i);
            let etcd = HaLayout::etcd_name(i);
            // A node's PostgreSQL may outlive its Patroni (killed alone): Patroni takes it over.
            if ha.postmaster_pid(i).is_none() {
                wanted.push((
                    PATRONI[i],
                    ports.postgres[i],
                    format!("PostgreSQL of {member}"),
                    base,
                ));
            }
            wanted.push((
                PATRONI[i],
                ports.patroni[i],
                format!("Patroni REST API of {member}"),
                base,
            ));
            wanted.push((
                ETCD[i],
                ports.etcd_client[i],
                format!("{etcd} (client)"),
                base,
            ));
            wanted.push((ETCD[i], ports.etcd_peer[i], format!("{etcd} (peer)"), base));
        }
        for (name, port, what, variable) in &wanted {
            if self.live(name).is_none() && port_listening(*port) {
                return Err(port_taken(*port, what, variable));
            }
        }

        ha.write_configs(tools.pg().run_as())?;
        let mut fresh = Vec::new();
        for (i, name) in ETCD.iter().enumerate() {
            if self.live(name).is_none() {
                fresh.push(*name);
                self.spawn_ha(name, started, tools.etcd(&ha, i))?;
            }
        }
        if !fresh.is_empty() {
            step(&format!("etcd: {}", fresh.join(" ")));
        }
        // A quorum is enough for Patroni; every member we started must come up, though.
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, name) in ETCD.iter().enumerate() {
            while !ha.etcd_healthy(i) {
                let log = self.layout.log(name);
                if self.live(name).is_none() {
                    return Err(died(name, "exited during start-up", &log));
                }
                if Instant::now() >= deadline {
                    return Err(died(
                        name,
                        "is not healthy after 30 s (no quorum? see the other members' logs)",
                        &log,
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }

        let mut fresh = Vec::new();
        for (i, name) in PATRONI.iter().enumerate() {
            if self.live(name).is_none() {
                fresh.push(*name);
                self.spawn_ha(name, started, tools.patroni(&ha, i))?;
            }
        }
        if self.live(HAPROXY).is_none() {
            fresh.push(HAPROXY);
            self.spawn_ha(HAPROXY, started, tools.haproxy(&ha))?;
        }
        if !fresh.is_empty() {
            step(&format!(
                "PostgreSQL under Patroni, HAProxy on 127.0.0.1:{}: {}",
                ports.haproxy,
                fresh.join(" ")
            ));
        }
        self.wait_ha_formed(&tools, &ha)
    }

    /// A leader, a write through HAProxy, every node running on the leader's timeline (a
    /// restarted one rejoined) and a synchronous standby named.
    fn wait_ha_formed(&self, tools: &HaTools, ha: &HaLayout) -> anyhow::Result<()> {
        let deadline = Instant::now() + HA_FORM_TIMEOUT;
        loop {
            for name in ETCD.iter().chain(&PATRONI).chain(&[HAPROXY]) {
                if self.live(name).is_none() {
                    return Err(died(name, "exited during start-up", &self.layout.log(name)));
                }
            }
            let formed = ha.members().and_then(|members| {
                let Some(leader) = members
                    .iter()
                    .find(|m| m.role == Role::Leader && m.is_running())
                else {
                    bail!("no running leader yet: {members:?}");
                };
                tools.write_through_haproxy(ha)?;
                if let Some(behind) = members.iter().find(|m| !m.is_running()) {
                    bail!("{} is not running yet ({})", behind.name, describe(behind));
                }
                if members.len() < NODES {
                    bail!("only {} of {NODES} members have joined", members.len());
                }
                // Right after a promotion the members report their timelines one by one.
                if let Some(other) = members.iter().find(|m| m.timeline != leader.timeline) {
                    bail!(
                        "{} is on timeline {:?}, the leader on {:?}",
                        other.name,
                        other.timeline,
                        leader.timeline
                    );
                }
                if !members.iter().any(|m| m.role == Role::SyncStandby) {
                    bail!("no synchronous standby yet");
                }
                Ok(())
            });
            let last = match formed {
                Ok(()) => return Ok(()),
                Err(error) => format!("{error:#}"),
            };
            if Instant::now() >= deadline {
                let leader = ha
                    .members()
                    .ok()
                    .and_then(|m| m.into_iter().find(|m| m.role == Role::Leader));
                let log = match leader {
                    Some(leader) => self.layout.log(PATRONI[leader.index]),
                    None => self.layout.log(PATRONI[0]),
                };
                return Err(died(
                    "the HA cluster",
                    &format!(
                        "did not form within {} s ({last})",
                        HA_FORM_TIMEOUT.as_secs()
                    ),
                    &log,
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs `command` detached with its output in `name`'s log, and records its pid.
    fn spawn_ha(
        &self,
        name: &'static str,
        started: &Started,
        mut command: Command,
    ) -> anyhow::Result<()> {
        forget_pid(&self.layout, name);
        let log = self.layout.log(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        command
            .stdout(file.try_clone().context("sharing a log file")?)
            .stderr(file);
        // Its own process group: a Ctrl-C in the caller's terminal does not reach it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        started.launch(name, || {
            let child = command
                .spawn()
                .with_context(|| format!("cannot start {name}"))?;
            record_pid(&self.layout, name, child.id())
        })
    }

    /// Stops Patroni `name` (SIGTERM: it stops its PostgreSQL first), then makes sure that
    /// node's postmaster is gone too.
    pub(super) fn stop_patroni(&self, name: &str) {
        let Some(i) = index_of(name, "patroni-") else {
            return;
        };
        self.stop_process(name, true);
        let Ok(tools) = HaTools::find() else {
            return;
        };
        let Ok(ha) = self.ha_layout(&tools) else {
            return;
        };
        if let Some(pid) = ha.postmaster_pid(i) {
            println!(
                "stopping PostgreSQL of {} (pid {pid})",
                HaLayout::member_name(i)
            );
            // SIGINT: PostgreSQL's fast shutdown.
            signal(pid, "INT");
            if !wait_gone(pid, self.layout.stop_timeout) {
                signal(pid, "KILL");
                wait_gone(pid, Duration::from_secs(10));
            }
        }
    }

    /// HAProxy, the Patroni nodes (replicas first, so none takes over from a leader that is
    /// stopping), then etcd.
    pub(super) fn stop_ha(&self) {
        self.stop_process(HAPROXY, true);
        let leader = HaTools::find()
            .and_then(|tools| self.ha_layout(&tools))
            .and_then(|ha| ha.members())
            .ok()
            .and_then(|members| members.into_iter().find(|m| m.role == Role::Leader))
            .map(|leader| leader.index);
        let mut order: Vec<usize> = (0..NODES).filter(|&i| Some(i) != leader).collect();
        order.extend(leader);
        for i in order {
            self.stop_patroni(PATRONI[i]);
        }
        for name in ETCD {
            self.stop_process(name, true);
        }
    }

    /// The HA cluster's rows of `status`: etcd members, nodes with role, timeline and lag,
    /// HAProxy with the node it sends clients to.
    pub(super) fn ha_status(&self, row: &mut StatusRow<'_>) {
        let log = |name: &str| self.layout.log(name).display().to_string();
        let ha = HaTools::find().and_then(|tools| self.ha_layout(&tools));
        let ha = match ha {
            Ok(ha) => ha,
            Err(error) => {
                row(
                    "postgresql-ha",
                    None,
                    Some(self.settings.pg_port),
                    &format!("down ({error:#})"),
                    "-",
                );
                return;
            }
        };
        let ports = *ha.ports();
        for (i, name) in ETCD.iter().enumerate() {
            let pid = self.live(name);
            let health = if pid.is_some() && ha.etcd_healthy(i) {
                "up (/health)"
            } else {
                "down"
            };
            row(name, pid, Some(ports.etcd_client[i]), health, &log(name));
        }
        let members = ha.members().unwrap_or_default();
        for (i, name) in PATRONI.iter().enumerate() {
            let pid = self.live(name);
            let member = members.iter().find(|m| m.index == i);
            let health = match (pid, member) {
                (None, _) => "down".to_owned(),
                (Some(_), Some(member)) if member.is_running() => {
                    format!("up ({})", describe(member))
                }
                (Some(_), Some(member)) => format!("down ({})", describe(member)),
                (Some(_), None) => "down (not a member)".to_owned(),
            };
            row(name, pid, Some(ports.postgres[i]), &health, &log(name));
        }
        let pid = self.live(HAPROXY);
        let servers = ha.haproxy_servers().unwrap_or_default();
        let up: Vec<String> = (0..NODES)
            .map(HaLayout::member_name)
            .filter(|member| haproxy_status(&servers, member) == Some("UP"))
            .collect();
        let health = match (pid, up.as_slice()) {
            (None, _) => "down".to_owned(),
            (Some(_), [one]) if port_accepts(ports.haproxy) => format!("up (read-write → {one})"),
            (Some(_), []) => "down (no node is primary)".to_owned(),
            (Some(_), many) => format!("down (several primaries: {})", many.join(" ")),
        };
        row(HAPROXY, pid, Some(ports.haproxy), &health, &log(HAPROXY));
    }
}
