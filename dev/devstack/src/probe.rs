//! What listens on a port of this machine, and whether it answers: TCP, HTTP, NATS.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

pub use testkit::host::port_accepts;

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The status code of `GET http://127.0.0.1:{port}{path}`, or `None` when nothing answers HTTP
/// within 3 s. HTTP/1.0 over a plain socket: usable from async code and without a client.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let mut words = line.split_whitespace();
    if !words.next()?.starts_with("HTTP/") {
        return None;
    }
    words.next()?.parse().ok()
}

/// Whether `GET path` on the port answers 2xx.
pub fn http_ok(port: u16, path: &str) -> bool {
    http_status(port, path).is_some_and(|status| (200..300).contains(&status))
}

/// What a NATS server says first on connect (`INFO {...}`).
#[derive(Debug, Clone, Default)]
pub struct NatsInfo {
    pub jetstream: bool,
    pub auth_required: bool,
    pub max_payload: Option<u64>,
}

/// The INFO of the NATS server on the port, or `None` when what answers there is not NATS.
pub fn nats_info(port: u16) -> Option<NatsInfo> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let info: serde_json::Value = serde_json::from_str(line.strip_prefix("INFO ")?.trim()).ok()?;
    Some(NatsInfo {
        jetstream: info["jetstream"].as_bool().unwrap_or(false),
        auth_required: info["auth_required"].as_bool().unwrap_or(false),
        max_payload: info["max_payload"].as_u64(),
    })
}

/// The inodes of the sockets listening on `port` (any address), from /proc/net/tcp{,6}.
fn listening_inodes(port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (the tenth field); 0A is LISTEN.
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push((*inode).to_owned());
            }
        }
    }
    inodes
}

/// Whether anything listens on `port`, on any address.
pub fn port_listening(port: u16) -> bool {
    !listening_inodes(port).is_empty() || port_accepts(port)
}

/// "name (pid N)" of the process listening on `port`, when /proc tells (it may not for another
/// user's process unless we are root).
pub fn port_owner(port: u16) -> Option<String> {
    let inodes = listening_inodes(port);
    let wanted: Vec<String> = inodes
        .iter()
        .map(|inode| format!("socket:[{inode}]"))
        .collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let owns = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
        });
        if owns {
            let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some(format!("{} (pid {pid})", name.trim()));
        }
    }
    None
}
