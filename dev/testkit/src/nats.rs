//! A throwaway nats-server with JetStream, run as a child process.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use tempfile::TempDir;

use crate::support::{
    PORT_ATTEMPTS, START_TIMEOUT, find_binary, is_executable, pick_port, port_accepts,
    process_alive, read_lossy, tail, temp_folder, wait_until,
};

/// Where nats-server lives when PATH does not say (Debian installs it in /usr/sbin).
pub const NATS_FOLDERS: &[&str] = &["/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/bin"];

/// The variable that picks the tests' nats-server binary (a path), e.g. the pinned current one of
/// `scripts/nats-current`; unset or empty: the one of [`find_nats_server`]'s search.
pub const NATS_SERVER_BIN: &str = "NATS_SERVER_BIN";

/// The nats-server the tests run: [`NATS_SERVER_BIN`] when set (it must be an executable file: a
/// wrong path fails loudly rather than quietly testing another version), else nats-server from
/// PATH, else from where Debian and friends install it ([`NATS_FOLDERS`]).
pub fn find_nats_server() -> anyhow::Result<PathBuf> {
    pick_nats_server(std::env::var_os(NATS_SERVER_BIN))
}

/// [`find_nats_server`] with the variable's value given (`chosen`).
fn pick_nats_server(chosen: Option<std::ffi::OsString>) -> anyhow::Result<PathBuf> {
    if let Some(chosen) = chosen.filter(|value| !value.is_empty()) {
        let path = PathBuf::from(chosen);
        anyhow::ensure!(
            is_executable(&path),
            "{NATS_SERVER_BIN}={} is not an executable file",
            path.display()
        );
        return Ok(path);
    }
    let folders: Vec<PathBuf> = NATS_FOLDERS.iter().map(PathBuf::from).collect();
    find_binary("nats-server", &folders)
}

/// A nats-server's version, as `nats-server --version` reports it (`nats-server: v2.9.10`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NatsVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl NatsVersion {
    /// Runs `binary --version` and reads its answer: what the binary is, whatever its path says.
    pub fn of(binary: &Path) -> anyhow::Result<NatsVersion> {
        let output = Command::new(binary)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} --version", binary.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        NatsVersion::parse(&text).with_context(|| {
            format!(
                "{} --version answered {:?} ({})",
                binary.display(),
                text.trim(),
                output.status
            )
        })
    }

    /// `nats-server: v2.9.10` (a suffix such as `-beta.1` or `-RC.2` is left out).
    pub fn parse(text: &str) -> anyhow::Result<NatsVersion> {
        let word = text
            .split_whitespace()
            .find_map(|word| word.strip_prefix('v'))
            .context("no `v<major>.<minor>.<patch>` in the answer")?;
        let core = word.split(['-', '+']).next().unwrap_or(word);
        let mut parts = core.split('.').map(str::parse::<u32>);
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch)), None) => Ok(NatsVersion {
                major,
                minor,
                patch,
            }),
            _ => bail!("`v{word}` is not a version <major>.<minor>.<patch>"),
        }
    }

    /// Whether `jetstream { sync_interval: always }` is known (2.10 and later; 2.9 refuses to
    /// start on a field it does not know).
    pub fn has_sync_always(self) -> bool {
        (self.major, self.minor) >= (2, 10)
    }
}

impl std::fmt::Display for NatsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The binary's version for a log line: the version, or why it could not be read.
pub(crate) fn version_for_log(binary: &Path) -> String {
    match NatsVersion::of(binary) {
        Ok(version) => version.to_string(),
        Err(error) => format!("unknown ({error:#})"),
    }
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
                        binary = %server.binary.display(),
                        version = %version_for_log(&server.binary),
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

    /// The nats-server binary this server runs (see [`find_nats_server`]).
    pub fn binary(&self) -> &Path {
        &self.binary
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_what_nats_server_version_prints() {
        let debian = NatsVersion::parse("nats-server: v2.9.10\n").expect("2.9.10");
        assert_eq!((debian.major, debian.minor, debian.patch), (2, 9, 10));
        assert!(!debian.has_sync_always());
        let current = NatsVersion::parse("nats-server: v2.15.1").expect("2.15.1");
        assert!(current.has_sync_always() && current > debian);
        assert_eq!(current.to_string(), "2.15.1");
        let candidate = NatsVersion::parse("nats-server: v2.10.0-RC.3").expect("a suffix");
        assert!(candidate.has_sync_always());
        assert!(NatsVersion::parse("nats-server: version unknown").is_err());
        assert!(NatsVersion::parse("nats-server: v2.x").is_err());
    }

    #[test]
    fn a_nats_server_bin_that_is_not_an_executable_is_refused_naming_the_variable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nats-server");
        let error = pick_nats_server(Some(missing.clone().into_os_string())).expect_err("missing");
        let message = format!("{error:#}");
        assert!(
            message.contains("NATS_SERVER_BIN=") && message.contains(&*missing.to_string_lossy()),
            "{message}"
        );
        std::fs::write(&missing, "not a program").expect("writing a file");
        assert!(pick_nats_server(Some(missing.into_os_string())).is_err());
    }

    #[test]
    fn an_empty_nats_server_bin_means_the_usual_search() {
        let searched = pick_nats_server(Some(std::ffi::OsString::new()));
        let usual = pick_nats_server(None);
        assert_eq!(searched.ok(), usual.ok());
    }
}
