//! A throwaway PostgreSQL cluster, started with initdb + pg_ctl in a temporary folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;

use crate::support::{
    self, PORT_ATTEMPTS, START_TIMEOUT, User, effective_uid, find_binary, output_text, pick_port,
    port_accepts, postgres_bin_folders, read_lossy, system_user, tail, temp_folder, wait_until,
};

/// Variables that would otherwise steer the PostgreSQL tools towards some other cluster.
const PG_ENVIRONMENT: &[&str] = &[
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGSERVICE",
    "PGPASSWORD",
    "PGSSLMODE",
];

/// A throwaway PostgreSQL cluster: initdb + pg_ctl in a temporary folder, a free port on
/// 127.0.0.1, superuser `root` with trust auth, `default_transaction_isolation=serializable` (so
/// 40001 retry paths run), `fsync=off`. Stopped (`pg_ctl stop -m immediate`) and its folder removed
/// on `Drop`, also when a test panics.
///
/// When the process runs as root, initdb and pg_ctl run as the `postgres` system user, because
/// PostgreSQL refuses to run as root.
#[derive(Debug)]
pub struct Postgres {
    dir: TempDir,
    bin: PgTools,
    port: u16,
}

/// Another PostgreSQL program (`pgbench`, `psql`, …), found as [`PgTools::find`] finds initdb:
/// on PATH, then in the highest /usr/lib/postgresql/*/bin.
pub fn find_tool(name: &str) -> anyhow::Result<PathBuf> {
    find_binary(name, &postgres_bin_folders())
}

/// PostgreSQL's tools (initdb, pg_ctl, pg_isready) and the user they run as: the `postgres` system
/// user when this process is root, since PostgreSQL refuses to run as root. [`Postgres`] and the
/// dev stack (dev/devstack) run their clusters with them.
#[derive(Debug, Clone)]
pub struct PgTools {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    pg_isready: PathBuf,
    run_as: Option<User>,
}

impl PgTools {
    /// initdb from PATH or the highest /usr/lib/postgresql/*/bin; pg_ctl and pg_isready from the
    /// same folder when they are there, so all three belong to one PostgreSQL version.
    pub fn find() -> anyhow::Result<PgTools> {
        let fallbacks = postgres_bin_folders();
        let initdb = find_binary("initdb", &fallbacks)?;
        let home = std::fs::canonicalize(&initdb)
            .ok()
            .and_then(|path| path.parent().map(Path::to_path_buf));
        let sibling = |name: &str| -> anyhow::Result<PathBuf> {
            match home.as_ref().map(|dir| dir.join(name)) {
                Some(path) if support::is_executable(&path) => Ok(path),
                _ => find_binary(name, &fallbacks),
            }
        };
        let run_as = if effective_uid()? == 0 {
            Some(system_user("postgres").context("PostgreSQL refuses to run as root")?)
        } else {
            None
        };
        Ok(PgTools {
            pg_ctl: sibling("pg_ctl")?,
            pg_isready: sibling("pg_isready")?,
            initdb,
            run_as,
        })
    }

    pub fn initdb(&self) -> &Path {
        &self.initdb
    }

    pub fn pg_ctl(&self) -> &Path {
        &self.pg_ctl
    }

    pub fn pg_isready(&self) -> &Path {
        &self.pg_isready
    }

    /// `(uid, gid)` of the `postgres` user when the tools run as it (this process is root).
    pub fn run_as(&self) -> Option<(u32, u32)> {
        self.run_as.map(|user| (user.uid, user.gid))
    }

    /// `program` (one of the tools, or any command that must act as the server's user) to run
    /// in `dir`, a folder that user can enter, without the variables that steer the tools
    /// towards some other cluster.
    pub fn command(&self, program: &Path, dir: &Path) -> Command {
        let mut command = Command::new(program);
        command.current_dir(dir).stdin(Stdio::null());
        for variable in PG_ENVIRONMENT {
            command.env_remove(variable);
        }
        if let Some(user) = self.run_as {
            std::os::unix::process::CommandExt::uid(&mut command, user.uid);
            std::os::unix::process::CommandExt::gid(&mut command, user.gid);
        }
        command
    }

    /// initdb's arguments but the data folder: superuser `root`, trust auth, UTF8, locale C.
    pub const INITDB_ARGS: [&str; 6] = ["-U", "root", "--auth=trust", "-E", "UTF8", "--locale=C"];

    /// The server options (pg_ctl's `-o`) every cluster of this project has: 127.0.0.1 only,
    /// `port`, its Unix socket in `socket_dir`, SERIALIZABLE by default like CockroachDB (so the
    /// services' 40001 retries are real); `extra` is appended.
    pub fn server_options(port: u16, socket_dir: &Path, extra: &str) -> String {
        // pg_ctl hands these to the postmaster through /bin/sh, hence the quoting.
        format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} \
             -c default_transaction_isolation=serializable {extra}",
            shell_quote(&socket_dir.to_string_lossy()),
        )
    }

    /// Whether the server on 127.0.0.1:`port` accepts connections as `root` (pg_isready, run
    /// in `dir`).
    pub fn is_ready(&self, port: u16, dir: &Path) -> anyhow::Result<bool> {
        let status = self
            .command(&self.pg_isready, dir)
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "root",
                "-d",
                "postgres",
                "-t",
                "2",
                "-p",
            ])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("running {}", self.pg_isready.display()))?;
        Ok(status.success())
    }
}

impl Postgres {
    /// Creates and starts a cluster. Blocks until it accepts connections (at most 30 s); the error
    /// carries the tail of the server log.
    pub fn start() -> anyhow::Result<Postgres> {
        let began = Instant::now();
        let bin = PgTools::find()?;
        let dir = temp_folder("testkit-pg-", bin.run_as)?;
        let mut postgres = Postgres { dir, bin, port: 0 };
        postgres.initdb()?;

        // Another process can take the port between free_port() and the server's bind.
        for attempt in 1..=PORT_ATTEMPTS {
            postgres.port = pick_port()?;
            let log_offset = postgres.log_len();
            match postgres.launch() {
                Ok(()) => {
                    tracing::info!(
                        port = postgres.port,
                        dir = %postgres.dir.path().display(),
                        elapsed_ms = began.elapsed().as_millis() as u64,
                        "PostgreSQL started"
                    );
                    return Ok(postgres);
                }
                Err(error) if attempt < PORT_ATTEMPTS && postgres.port_was_taken(log_offset) => {
                    tracing::warn!(port = postgres.port, %error, "port taken, trying another");
                    // A half-started server must not linger on the next attempt's data folder.
                    let _ = postgres.pg_ctl_stop("immediate");
                }
                Err(error) => return Err(error),
            }
        }
        bail!("PostgreSQL found no free port in {PORT_ATTEMPTS} attempts")
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgresql://root@127.0.0.1:{port}/{database}?sslmode=disable`
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://root@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// The temporary folder holding the data folder, the log and the Unix socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast -w`): the database is down. Does nothing when
    /// it is not running.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        self.pg_ctl_stop("fast")
    }

    /// Crashes the server (`pg_ctl stop -m immediate`): no checkpoint, start_again runs recovery.
    /// Does nothing when it is not running.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        self.pg_ctl_stop("immediate")
    }

    /// Starts the stopped server again on the same port with the same data; returns when it
    /// accepts connections. Does nothing when it is running.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let began = Instant::now();
        self.launch()?;
        tracing::info!(
            port = self.port,
            elapsed_ms = began.elapsed().as_millis() as u64,
            "PostgreSQL started again"
        );
        Ok(())
    }

    /// Whether the postmaster is alive.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some_and(support::process_alive)
    }

    /// The server log so far, for failure messages.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// Creates database `name` and returns its URL.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let mut conn = PgConnection::connect(&self.url("postgres"))
            .await
            .with_context(|| format!("connecting to PostgreSQL on port {}", self.port))?;
        let statement = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        conn.execute(statement.as_str())
            .await
            .with_context(|| format!("creating database {name}"))?;
        let _ = conn.close().await;
        Ok(self.url(name))
    }

    /// Creates a database with a name no other call on this process has used and returns its URL,
    /// so tests sharing a cluster do not share state.
    pub async fn fresh_database(&self) -> anyhow::Result<String> {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!("test_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.create_database(&name).await
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn log_len(&self) -> usize {
        self.log().len()
    }

    /// A PostgreSQL tool, run as the `postgres` user when we are root, from a folder that user can
    /// enter.
    fn command(&self, program: &Path) -> Command {
        self.bin.command(program, self.dir.path())
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let output = self
            .command(&self.bin.initdb)
            .arg("-D")
            .arg(self.data_dir())
            .args(PgTools::INITDB_ARGS)
            .arg("--no-sync")
            .output()
            .with_context(|| format!("running {}", self.bin.initdb.display()))?;
        if !output.status.success() {
            bail!(
                "{} failed ({}):\n{}",
                self.bin.initdb.display(),
                output.status,
                output_text(&output)
            );
        }
        Ok(())
    }

    /// Starts the server on `self.port` and waits until it accepts connections.
    fn launch(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let log_offset = self.log_len();
        let options = PgTools::server_options(
            self.port,
            self.dir.path(),
            "-c fsync=off -c max_connections=300",
        );
        let output = self
            .command(&self.bin.pg_ctl)
            .args(["start", "-w", "-t"])
            .arg(START_TIMEOUT.as_secs().to_string())
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .arg("-o")
            .arg(options)
            .output()
            .with_context(|| format!("running {}", self.bin.pg_ctl.display()))?;
        if !output.status.success() {
            return Err(self.with_log(
                anyhow!(
                    "pg_ctl start failed ({}): {}",
                    output.status,
                    output_text(&output)
                ),
                log_offset,
            ));
        }
        // pg_ctl -w trusts postmaster.pid; a real client connection is the proof.
        let port = self.port;
        wait_until(deadline, "PostgreSQL to accept TCP connections", || {
            Ok(port_accepts(port))
        })
        .and_then(|()| wait_until(deadline, "pg_isready", || self.pg_isready()))
        .map_err(|error| self.with_log(error, log_offset))
    }

    fn pg_isready(&self) -> anyhow::Result<bool> {
        self.bin.is_ready(self.port, self.dir.path())
    }

    fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        let log_offset = self.log_len();
        let output = self
            .command(&self.bin.pg_ctl)
            .args(["stop", "-w", "-m", mode, "-t"])
            .arg(START_TIMEOUT.as_secs().to_string())
            .arg("-D")
            .arg(self.data_dir())
            .output()
            .with_context(|| format!("running {}", self.bin.pg_ctl.display()))?;
        if !output.status.success() {
            return Err(self.with_log(
                anyhow!(
                    "pg_ctl stop -m {mode} failed ({}): {}",
                    output.status,
                    output_text(&output)
                ),
                log_offset,
            ));
        }
        Ok(())
    }

    /// The postmaster's pid from the first line of postmaster.pid.
    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    fn port_was_taken(&self, log_offset: usize) -> bool {
        self.log()
            .get(log_offset..)
            .is_some_and(|log| log.contains("Address already in use"))
    }

    fn with_log(&self, error: anyhow::Error, log_offset: usize) -> anyhow::Error {
        let log = self.log();
        let recent = log.get(log_offset..).unwrap_or(&log);
        anyhow!(
            "{error:#}\n--- tail of {} ---\n{}",
            self.log_path().display(),
            tail(recent, 30)
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !self.is_running() {
            return;
        }
        if let Err(error) = self.pg_ctl_stop("immediate") {
            tracing::warn!(%error, "pg_ctl stop failed, killing the postmaster");
            if let Some(pid) = self.postmaster_pid() {
                support::kill_process(pid);
            }
        }
        // The TempDir field removes the folder after this.
    }
}

/// Quotes `value` for /bin/sh.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}
