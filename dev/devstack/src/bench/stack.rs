//! The bench's own dev stack: a folder and ports of its own, started and stopped by this same
//! launcher (its `start`, `stop` and `env`, run as child processes with the bench's variables),
//! stopped at the end whatever happens.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use testkit::patroni::{HaLayout, HaPorts, HaTools};

/// Where the services send their spans.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tracing {
    /// No export (`ZIPKIN_ENDPOINT` empty).
    Off,
    /// To the trace store the stack starts on a free port.
    StackStore,
}

/// Which PostgreSQL the bench stack runs (`STACK_DB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Profile {
    Single,
    /// Three nodes under Patroni (one synchronous standby), etcd ×3, HAProxy on the PostgreSQL
    /// port.
    Ha,
}

impl Profile {
    /// Its `STACK_DB`.
    fn db(self) -> &'static str {
        match self {
            Profile::Single => "single",
            Profile::Ha => "ha",
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Profile::Single => "single",
            Profile::Ha => "HA",
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    postgres: u16,
    nats: u16,
    nats_http: u16,
    eventstore: u16,
    ordersvc: u16,
    zipkin: u16,
    /// `STACK_HA_PORT_BASE`: the first of [`HaPorts::SPAN`] free ports in a row (HA only).
    ha_base: Option<u16>,
}

pub struct Stack {
    launcher: PathBuf,
    dir: PathBuf,
    profile: Profile,
    ports: Ports,
    running: bool,
}

/// A file that marks a folder as the bench's, so a later run may remove it.
const MARK: &str = ".bench";

fn free_port(from: u16, taken: &mut Vec<u16>) -> anyhow::Result<u16> {
    let port = (from..=u16::MAX)
        .find(|port| !taken.contains(port) && TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .with_context(|| format!("no free port from {from} up"))?;
    taken.push(port);
    Ok(port)
}

/// The first of `len` consecutive ports from `from` up that are neither `taken` nor bound now
/// (the launcher gives the HA cluster one such block).
fn free_block(from: u16, len: u16, taken: &mut Vec<u16>) -> anyhow::Result<u16> {
    let free = |port: u16| !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok();
    let mut base = from;
    while let Some(last) = base.checked_add(len - 1) {
        // Past a port in use, the next block can only start after it.
        match (base..=last).find(|&port| !free(port)) {
            None => {
                taken.extend(base..=last);
                return Ok(base);
            }
            Some(used) => match used.checked_add(1) {
                Some(next) => base = next,
                None => break,
            },
        }
    }
    bail!("no {len} free ports in a row from {from} up")
}

impl Stack {
    /// Makes the bench's folder (a leftover of an earlier bench is stopped and removed; any other
    /// folder is refused) and picks free ports near the stack's defaults.
    pub fn new(dir: &Path, profile: Profile) -> anyhow::Result<Stack> {
        let launcher = std::env::current_exe().context("finding this executable")?;
        let mut taken = Vec::new();
        let ports = Ports {
            postgres: free_port(26357, &mut taken)?,
            nats: free_port(4223, &mut taken)?,
            nats_http: free_port(8223, &mut taken)?,
            eventstore: free_port(50151, &mut taken)?,
            ordersvc: free_port(3100, &mut taken)?,
            zipkin: free_port(9511, &mut taken)?,
            ha_base: match profile {
                Profile::Single => None,
                Profile::Ha => Some(free_block(26400, HaPorts::SPAN, &mut taken)?),
            },
        };
        let stack = Stack {
            launcher,
            dir: dir.to_owned(),
            profile,
            ports,
            running: false,
        };
        if dir.join(MARK).is_file() {
            stack.launch("stop", Tracing::Off, None).ok();
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("removing the last bench's {}", dir.display()))?;
        } else if dir
            .read_dir()
            .is_ok_and(|mut entries| entries.next().is_some())
        {
            bail!(
                "{} exists and was not made by the bench; choose another STACK_DIR",
                dir.display()
            );
        }
        std::fs::create_dir_all(stack.work_dir())?;
        std::fs::write(dir.join(MARK), "")?;
        Ok(stack)
    }

    fn launch(
        &self,
        command: &str,
        tracing: Tracing,
        bin_dir: Option<&Path>,
    ) -> anyhow::Result<std::process::Output> {
        let mut launcher = Command::new(&self.launcher);
        launcher
            .arg(command)
            .env("STACK_DIR", &self.dir)
            .env("STACK_PG_PORT", self.ports.postgres.to_string())
            .env("STACK_NATS_PORT", self.ports.nats.to_string())
            .env("STACK_NATS_HTTP_PORT", self.ports.nats_http.to_string())
            .env("STACK_EVENTSTORE_PORT", self.ports.eventstore.to_string())
            .env("STACK_ORDERSVC_PORT", self.ports.ordersvc.to_string())
            .env("STACK_ZIPKIN_PORT", self.ports.zipkin.to_string())
            .env("STACK_DB", self.profile.db());
        if let Some(base) = self.ports.ha_base {
            launcher.env("STACK_HA_PORT_BASE", base.to_string());
        }
        match tracing {
            Tracing::Off => launcher.env("ZIPKIN_ENDPOINT", ""),
            Tracing::StackStore => launcher.env_remove("ZIPKIN_ENDPOINT"),
        };
        if let Some(dir) = bin_dir {
            launcher.env("STACK_BIN_DIR", dir);
        }
        launcher
            .output()
            .with_context(|| format!("running {} {command}", self.launcher.display()))
    }

    /// Stops what runs, then starts every process with the binaries of `bin_dir`.
    pub fn restart(&mut self, bin_dir: &Path, tracing: Tracing) -> anyhow::Result<()> {
        self.stop();
        self.running = true;
        let output = self.launch("start", tracing, Some(bin_dir))?;
        let log = self.work_dir().join("stack.log");
        std::fs::write(
            &log,
            [output.stdout.as_slice(), output.stderr.as_slice()].concat(),
        )?;
        if !output.status.success() {
            let text = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the stack did not start ({}):\n{}",
                log.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if self.running {
            if let Err(error) = self.launch("stop", Tracing::Off, None) {
                eprintln!("bench: stopping the stack: {error:#}");
            }
            self.running = false;
        }
    }

    /// The variables a client (orderctl) needs, from the launcher's `env`.
    pub fn client_env(&self) -> anyhow::Result<Vec<(String, String)>> {
        let output = self.launch("env", Tracing::Off, None)?;
        if !output.status.success() {
            bail!("stack env: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(parse_exports(&String::from_utf8_lossy(&output.stdout)))
    }

    pub fn database_url(&self, database: &str) -> String {
        format!(
            "postgresql://root@127.0.0.1:{}/{database}?sslmode=disable",
            self.ports.postgres
        )
    }

    pub fn pg_port(&self) -> u16 {
        self.ports.postgres
    }

    pub fn nats_http_port(&self) -> u16 {
        self.ports.nats_http
    }

    pub fn eventstore_port(&self) -> u16 {
        self.ports.eventstore
    }

    /// The stack's certificates when it runs mTLS (the launcher's `certs::stack_dir`).
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// The HA cluster's layout (its nodes' data folders, hence their postmasters), or `None` for
    /// a single PostgreSQL.
    pub fn ha_layout(&self) -> anyhow::Result<Option<HaLayout>> {
        let Some(base) = self.ports.ha_base else {
            return Ok(None);
        };
        let ports = HaPorts::from_base(self.ports.postgres, base)?;
        // The launcher's `$STACK_DIR/ha` (settings::Layout::ha_dir).
        Ok(Some(HaTools::find()?.layout(self.dir.join("ha"), ports)))
    }

    pub fn pid_dir(&self) -> PathBuf {
        self.dir.join("pids")
    }

    pub fn work_dir(&self) -> PathBuf {
        self.dir.join("bench")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `export NAME=value` / `export NAME='value'` lines, as the launcher's `env` prints them.
fn parse_exports(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(name, value)| {
            let value = value
                .strip_prefix('\'')
                .and_then(|value| value.strip_suffix('\''))
                .unwrap_or(value);
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_read_with_or_without_quotes() {
        let text =
            "export NATS_URL=nats://127.0.0.1:4223\n# a comment\nexport NATS_PASSWORD='a=b c'\n";
        assert_eq!(
            parse_exports(text),
            vec![
                ("NATS_URL".to_owned(), "nats://127.0.0.1:4223".to_owned()),
                ("NATS_PASSWORD".to_owned(), "a=b c".to_owned()),
            ]
        );
    }

    #[test]
    fn a_port_block_is_consecutive_and_skips_taken_and_bound_ports() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        let bound = listener.local_addr().expect("its address").port();
        let from = bound.saturating_sub(3);
        let mut taken = vec![from];
        let base = free_block(from, 12, &mut taken).expect("a block");
        assert!(base > bound, "{base} starts after the bound port {bound}");
        assert_eq!(&taken[1..], (base..base + 12).collect::<Vec<_>>());
        let next = free_block(from, 12, &mut taken).expect("another block");
        assert!(
            next >= base + 12,
            "{next} does not overlap {base}..{}",
            base + 11
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let mut taken = Vec::new();
        let first = free_port(40100, &mut taken).expect("a free port");
        let second = free_port(first, &mut taken).expect("another");
        assert_ne!(first, second);
    }
}
