//! Plumbing shared by the servers: finding binaries, waiting with a deadline, temporary folders that
//! the `postgres` user can enter, and reading logs.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a server may take to accept connections before start-up gives up.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How many fresh ports a first start tries when another process grabs the port in between.
pub(crate) const PORT_ATTEMPTS: usize = 3;

const INSTALL_HINT: &str = "install them with `apt-get install -y postgresql nats-server`";

/// A port of 127.0.0.1 that nothing is bound to now, chosen at random below the kernel's ephemeral
/// range (how, and why below that range: `pick_port`, in this module).
///
/// Another process may take the port before the caller binds it; the servers retry with a new
/// port when that happens.
///
/// # Panics
/// When no port of the range is free, which no test can recover from.
pub fn free_port() -> u16 {
    match pick_port() {
        Ok(port) => port,
        Err(error) => panic!("{error:#}"),
    }
}

/// The dev stack's PostgreSQL (CockroachDB's port): never handed out, even when free.
const RESERVED: &[u16] = &[26257];

/// Picks a free port at random from 20000 up to the start of the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, 32768 by default). Outside that range on purpose: a
/// server stopped and started again on its port (a test of a restart) must find the port still
/// free, and ports the kernel gives to outgoing connections or to `bind(0)` would be taken by the
/// many connections tests open meanwhile.
pub(crate) fn pick_port() -> anyhow::Result<u16> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 20000u16;
    let high = ephemeral_start.clamp(low + 1000, 32768);
    let span = u64::from(high - low);
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0..200u64 {
        let draw = std::hash::BuildHasher::hash_one(
            &random,
            (attempt, std::process::id(), Instant::now()),
        );
        let port = low + u16::try_from(draw % span).unwrap_or(0);
        if RESERVED.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 between {low} and {high} after 200 tries")
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Polls `ready` every 50 ms until it says yes, fails, or `deadline` passes.
pub(crate) fn wait_until(
    deadline: Instant,
    what: &str,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The file's contents as text, or an empty string when it does not exist (yet).
pub fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut file) => {
            let _ = file.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(_) => String::new(),
    }
}

/// The last `lines` lines of `log`, for error messages.
pub fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    let start = all.len().saturating_sub(lines);
    let tail = all[start..].join("\n");
    if tail.is_empty() {
        "(the log is empty)".to_owned()
    } else {
        tail
    }
}

/// A command's stdout and stderr, for error messages.
pub(crate) fn output_text(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    [stdout.trim(), stderr.trim()]
        .into_iter()
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The effective user id of this process, read without `libc`: `/proc/self` belongs to it.
pub(crate) fn effective_uid() -> anyhow::Result<u32> {
    let meta =
        std::fs::metadata("/proc/self").context("reading /proc/self to learn our user id")?;
    Ok(meta.uid())
}

/// A system user the servers can run as.
#[derive(Debug, Clone, Copy)]
pub(crate) struct User {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// Looks `name` up in /etc/passwd.
pub(crate) fn system_user(name: &str) -> anyhow::Result<User> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == name {
            let uid = fields[2]
                .parse()
                .with_context(|| format!("uid of {name} in /etc/passwd"))?;
            let gid = fields[3]
                .parse()
                .with_context(|| format!("gid of {name} in /etc/passwd"))?;
            return Ok(User { uid, gid });
        }
    }
    bail!(
        "there is no `{name}` user in /etc/passwd; {INSTALL_HINT} (the postgresql package creates it)"
    )
}

/// A temporary folder named `prefix…`. When `owner` is given the folder is handed to that user, and
/// it is created under a parent every user can traverse (falling back to /tmp), so a server that
/// runs as another user can use it.
pub(crate) fn temp_folder(prefix: &str, owner: Option<User>) -> anyhow::Result<tempfile::TempDir> {
    let mut parent = std::env::temp_dir();
    if owner.is_some() && !traversable_by_all(&parent) {
        parent = PathBuf::from("/tmp");
    }
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
    if let Some(user) = owner {
        std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid))
            .with_context(|| format!("handing {} to uid {}", dir.path().display(), user.uid))?;
    }
    Ok(dir)
}

fn traversable_by_all(dir: &Path) -> bool {
    dir.ancestors()
        .all(|dir| std::fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0))
}

/// Finds `name` on PATH, then in `fallbacks`; the error says what is missing and how to install it.
pub(crate) fn find_binary(name: &str, fallbacks: &[PathBuf]) -> anyhow::Result<PathBuf> {
    find_binary_or(name, fallbacks, INSTALL_HINT)
}

/// [`find_binary`] with the error's installation hint given (`hint`).
pub(crate) fn find_binary_or(
    name: &str,
    fallbacks: &[PathBuf],
    hint: &str,
) -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(fallbacks.iter().map(|dir| dir.join(name)))
        .find(|candidate| is_executable(candidate))
        .with_context(|| format!("`{name}` is neither on PATH nor in {fallbacks:?}; {hint}"))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// `/usr/lib/postgresql/*/bin`, highest version first.
pub(crate) fn postgres_bin_folders() -> Vec<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = parse_version(&name)?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.is_dir())
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, bin)| bin).collect()
}

fn parse_version(name: &OsStr) -> Option<Vec<u32>> {
    name.to_str()?
        .split('.')
        .map(|part| part.parse().ok())
        .collect()
}

/// Whether process `pid` exists and is not a zombie waiting to be reaped.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The process group of `pid` (the third field after the command name in /proc/PID/stat).
pub(crate) fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Sends SIGKILL to every process of group `pgid` through kill(1); errors are ignored, as in
/// [`kill_process`]. Refuses group 0 and 1 and this process's own group.
pub(crate) fn kill_group(pgid: u32) {
    if pgid <= 1 || process_group(std::process::id()) == Some(pgid) {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Sends SIGKILL to `pid` through kill(1): the last resort of a `Drop`, so errors are ignored.
pub(crate) fn kill_process(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// A plain HTTP/1.0 request on 127.0.0.1:`port` (monitoring and REST endpoints need nothing more):
/// the status code and the body. `body` is sent as JSON when given.
pub(crate) fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("asking {addr}{path}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .with_context(|| format!("reading {addr}{path}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status line from {addr}{path}: {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Polls `check` every 50 ms until it gives a value, for at most `patience`; panics naming
/// `what` after that. The tests' one way to wait for a state instead of sleeping.
pub async fn eventually<T, F, Fut>(patience: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
