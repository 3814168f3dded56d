//! A throwaway nats-server with JetStream, run as a child process.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use tempfile::TempDir;

use crate::support::{
    PORT_ATTEMPTS, START_TIMEOUT, find_binary, pick_port, port_accepts, process_alive, read_lossy,
    tail, temp_folder, wait_until,
};

/// Where nats-server lives when PATH does not say (Debian installs it in /usr/sbin).
pub const NATS_FOLDERS: &[&str] = &["/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/bin"];

/// nats-server from PATH, else from where Debian and friends install it ([`NATS_FOLDERS`]).
pub fn find_nats_server() -> anyhow::Result<PathBuf> {
    let folders: Vec<PathBuf> = NATS_FOLDERS.iter().map(PathBuf::from).collect();
    find_binary("nats-server", &folders)
}

/// A throwaway nats-server with JetStream: `nats-server -js -a 127.0.0.1 -p <free> -sd <tmp>/store`
/// as a child process, logging to `<tmp>/nats.log`. Killed and its folder removed on `Drop`.
pub struct NatsServer {
    dir: TempDir,
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
    /// `-c <tmp>/nats.conf`, when started with a configuration of the caller's.
    config: Option<PathBuf>,
    /// Variables the server process gets (a configuration's `$NAME` references read them).
    env: Vec<(String, String)>,
}

// By hand: the environment may hold passwords; only the variables' names are shown.
impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .field("running", &self.child.is_some())
            .field("config", &self.config)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

impl NatsServer {
    /// Starts a server. Blocks until the log says "Server is ready" and the port accepts TCP (at
    /// most 30 s); the error carries the tail of the server log.
    pub fn start() -> anyhow::Result<NatsServer> {
        Self::start_new(None, &[])
    }

    /// Starts a server with the configuration `config` (e.g. an `authorization {}` or `tls {}`
    /// block) written to `<tmp>/nats.conf`. The command line still sets JetStream, the address, the
    /// port and the store, so `config` must not have a `jetstream { store_dir }` of its own.
    pub fn start_with_config(config: &str) -> anyhow::Result<NatsServer> {
        Self::start_new(Some(config), &[])
    }

    /// [`NatsServer::start_with_config`] with variables in the server's environment, for a
    /// configuration that reads secrets as `$NAME` (as `nats-auth.conf` does).
    pub fn start_with_config_and_env(
        config: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<NatsServer> {
        Self::start_new(Some(config), env)
    }

    fn start_new(config: Option<&str>, env: &[(&str, &str)]) -> anyhow::Result<NatsServer> {
        let began = Instant::now();
        let binary = find_nats_server()?;
        let dir = temp_folder("testkit-nats-", None)?;
        let mut server = NatsServer {
            dir,
            binary,
            port: 0,
            child: None,
            config: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        std::fs::create_dir(server.store_dir())
            .with_context(|| format!("creating {}", server.store_dir().display()))?;
        if let Some(config) = config {
            let path = server.dir.path().join("nats.conf");
            std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
            server.config = Some(path);
        }

        // Another process can take the port between free_port() and the server's bind.
        for attempt in 1..=PORT_ATTEMPTS {
            server.port = pick_port()?;
            let log_offset = server.log().len();
            match server.launch() {
                Ok(()) => {
                    tracing::info!(
                        port = server.port,
                        dir = %server.dir.path().display(),
                        elapsed_ms = began.elapsed().as_millis() as u64,
                        "nats-server started"
                    );
                    return Ok(server);
                }
                Err(error) if attempt < PORT_ATTEMPTS && server.port_was_taken(log_offset) => {
                    tracing::warn!(port = server.port, %error, "port taken, trying another");
                }
                Err(error) => return Err(error),
            }
        }
        bail!("nats-server found no free port in {PORT_ATTEMPTS} attempts")
    }

    /// The client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:{port}`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The temporary folder holding the store and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The JetStream store folder, which survives `stop` + `start_again`.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Kills the server (SIGKILL, no goodbye to clients) and reaps it: NATS is down. Does nothing
    /// when it is not running.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // kill fails only when the child already exited; wait reaps it either way.
            let _ = child.kill();
            child.wait().context("waiting for nats-server to exit")?;
        }
        Ok(())
    }

    /// Starts the server again on the same port with the same store, so JetStream streams and
    /// their messages are back. Does nothing when it is running.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let began = Instant::now();
        self.launch()?;
        tracing::info!(
            port = self.port,
            elapsed_ms = began.elapsed().as_millis() as u64,
            "nats-server started again"
        );
        Ok(())
    }

    /// Whether the server process is alive.
    pub fn is_running(&self) -> bool {
        self.child
            .as_ref()
            .is_some_and(|child| process_alive(child.id()))
    }

    /// The server log so far, for failure messages.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// Spawns the server on `self.port` and waits until it is ready; on failure the child is gone.
    fn launch(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let log_path = self.log_path();
        let log_offset = self.log().len();
        let mut command = Command::new(&self.binary);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.store_dir())
            .current_dir(self.dir.path());
        self.child = Some(spawn_logged(command, &log_path)?);

        let ready = wait_ready(
            &mut self.child,
            &log_path,
            log_offset,
            self.port,
            deadline,
            "nats-server",
        );
        if let Err(error) = ready {
            let _ = self.stop();
            let log = self.log();
            let recent = log.get(log_offset..).unwrap_or(&log);
            return Err(anyhow!(
                "{error:#}\n--- tail of {} ---\n{}",
                log_path.display(),
                tail(recent, 30)
            ));
        }
        Ok(())
    }

    fn port_was_taken(&self, log_offset: usize) -> bool {
        self.log()
            .get(log_offset..)
            .is_some_and(|log| log.contains("address already in use"))
    }
}

/// Spawns nats-server from `command` (its arguments but the log), logging to `log_path` with `-l`;
/// stdout and stderr go to the same file, for what the server prints before it opens its log.
pub fn spawn_logged(mut command: Command, log_path: &Path) -> anyhow::Result<Child> {
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    command
        .arg("-l")
        .arg(log_path)
        .stdin(Stdio::null())
        .stdout(
            log_file
                .try_clone()
                .context("sharing the nats-server log")?,
        )
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("running {}", command.get_program().to_string_lossy()))
}

/// Waits until the log after `log_offset` says "Server is ready" and `port` accepts TCP; fails at
/// once when the server (`child`) exited, or at `deadline`. `what` names the server in errors.
pub fn wait_ready(
    child: &mut Option<Child>,
    log_path: &Path,
    log_offset: usize,
    port: u16,
    deadline: Instant,
    what: &str,
) -> anyhow::Result<()> {
    wait_until(deadline, &format!("{what} to be ready"), || {
        if let Some(child) = child.as_mut()
            && let Some(status) = child.try_wait().context("checking on nats-server")?
        {
            bail!("{what} exited early ({status})");
        }
        let log = read_lossy(log_path);
        let recent = log.get(log_offset..).unwrap_or_default();
        Ok(recent.contains("Server is ready") && port_accepts(port))
    })
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::warn!(%error, "stopping nats-server failed");
        }
        // The TempDir field removes the folder after this.
    }
}
