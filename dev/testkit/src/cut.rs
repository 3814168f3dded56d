//! A TCP proxy in front of PostgreSQL that can break connections at the worst moment: right after
//! the server received a `COMMIT` (or ran a statement that is its own transaction), before the
//! client hears whether it committed (an ambiguous commit, as a failover or a network fault leaves
//! it), or in the middle of any other query.
//!
//! The proxy reads the frontend side of the PostgreSQL wire protocol message by message (the
//! untyped startup packets first, then type byte + length + body) and copies the backend side as
//! bytes. When armed for a message, it forwards that message, waits until the server answered it,
//! swallows the answer and closes both sockets: the server did the work, the client sees its
//! connection end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The protocol version number of a StartupMessage (3.0); other untyped packets (SSLRequest,
/// GSSENCRequest, CancelRequest) carry request codes instead.
const PROTOCOL_3: u32 = 196_608;

/// How long a cut waits for the server's answer to the message it forwarded.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A proxy on `127.0.0.1` that forwards to a PostgreSQL server and cuts connections on demand.
/// Stops accepting on `Drop`; connections in flight end with it.
pub struct CutProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    /// What the next matching frontend message triggers; `None`: forward everything.
    armed: Mutex<Option<Trigger>>,
    /// How many connections were cut so far.
    cuts: AtomicUsize,
    /// Raised by [`CutProxy::cut`], seen by every connection's next message in either direction.
    cut_all: Notify,
}

/// A frontend message that, once forwarded, ends its connection.
#[derive(Debug, Clone)]
struct Trigger {
    /// Upper-case text the query (`Q` simple query, `P` Parse) must contain, or be.
    text: String,
    whole: bool,
    /// Trigger on the `Bind` that executes a matching statement (prepared by an earlier `Parse` of
    /// the connection, maybe before the trigger was armed), not on its `Parse`.
    on_execution: bool,
    /// Cut this many matching messages, then forward again.
    remaining: usize,
}

impl CutProxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the cut proxy")?;
        let addr = listener.local_addr().context("the cut proxy's address")?;
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&shared)));
        Ok(CutProxy {
            addr,
            shared,
            accept,
        })
    }

    /// Forwards to PostgreSQL on `127.0.0.1:port`.
    pub async fn to_port(port: u16) -> anyhow::Result<CutProxy> {
        CutProxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `url` (a `postgresql://…@127.0.0.1:<port>/…` URL) pointed at the proxy instead.
    ///
    /// # Panics
    /// When `url` is not such a URL (a bug in the test).
    pub fn url_for(&self, url: &str) -> String {
        let (scheme_and_auth, rest) = url
            .split_once("127.0.0.1:")
            .unwrap_or_else(|| panic!("{url} does not name 127.0.0.1"));
        let path = rest
            .find('/')
            .unwrap_or_else(|| panic!("{url} names no database"));
        format!(
            "{scheme_and_auth}127.0.0.1:{}{}",
            self.port(),
            &rest[path..]
        )
    }

    /// Cuts the connection that next sends `COMMIT` (the whole statement: not `BEGIN … READ
    /// COMMITTED`), once, after the server has committed.
    pub fn arm_commit(&self) {
        self.arm_trigger("COMMIT", true, false, 1);
    }

    /// Cuts `times` connections, each right after it sent a query containing `contains` (any
    /// case) and the server answered it.
    pub fn arm(&self, contains: &str, times: usize) {
        self.arm_trigger(contains, false, false, times);
    }

    /// Cuts the connection that next executes a prepared statement containing `contains` (any
    /// case), once, after the server answered the execution: for a statement that is its own
    /// transaction, after it committed. (A statement's `Parse`, answered before it runs, is
    /// what [`CutProxy::arm`] cuts.)
    pub fn arm_execution(&self, contains: &str) {
        self.arm_trigger(contains, false, true, 1);
    }

    fn arm_trigger(&self, text: &str, whole: bool, on_execution: bool, times: usize) {
        *lock(&self.shared.armed) = Some(Trigger {
            text: text.to_ascii_uppercase(),
            whole,
            on_execution,
            remaining: times,
        });
    }

    /// Forwards everything again.
    pub fn disarm(&self) {
        *lock(&self.shared.armed) = None;
    }

    /// Cuts every open connection at its next message, in either direction (a reset under an
    /// idle or a busy connection).
    pub fn cut(&self) {
        self.shared.cut_all.notify_waiters();
    }

    /// How many connections an armed trigger cut so far.
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.cut_all.notify_waiters();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread cannot leave the trigger half-written: it is replaced whole.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            // A refused upstream (the server is down) closes the client's connection: what a
            // client of a dead server sees.
            if let Ok(server) = TcpStream::connect(upstream).await {
                relay(client, server, shared).await;
            }
        });
    }
}

/// What the two directions of one connection share.
#[derive(Default)]
struct Link {
    /// Set once the client sent its StartupMessage: from then on the server's bytes are typed
    /// messages (before it, an SSLRequest's answer is one untyped byte).
    started: AtomicBool,
    /// Messages sent that each get exactly one ReadyForQuery back (the StartupMessage, simple
    /// queries, Syncs).
    syncs_sent: AtomicUsize,
    /// The ReadyForQuery count that answers the triggering message; 0: no cut pending. From when
    /// it is set, nothing more reaches the client.
    cut_after_ready: AtomicUsize,
    /// Raised when the server answered the triggering message.
    answered: Notify,
}

/// One proxied connection, until either side closes or it is cut.
async fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let link = Link::default();
    // Whichever direction ends first ends the connection: dropping all four halves closes both
    // sockets.
    tokio::select! {
        () = frontend(client_read, server_write, &shared, &link) => {}
        () = backend(server_read, client_write, &link) => {}
        () = shared.cut_all.notified() => {}
    }
}

async fn frontend(
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    shared: &Shared,
    link: &Link,
) {
    let mut started = false;
    // A matching Parse runs at the next Sync: the cut waits for it.
    let mut cut_at_sync = false;
    // The text of each statement this connection prepared, by name.
    let mut statements: HashMap<Vec<u8>, String> = HashMap::new();
    loop {
        let Ok(message) = read_frontend_message(&mut client, started).await else {
            return;
        };
        if !started && message.len() >= 8 {
            let code = u32::from_be_bytes([message[4], message[5], message[6], message[7]]);
            started = code == PROTOCOL_3;
            link.started.store(started, Ordering::SeqCst);
        }
        let kind = if started { message[0] } else { 0 };
        if started && takes_trigger(shared, &message, &mut statements) {
            cut_at_sync = true;
        }
        let answered = link.answered.notified();
        // The StartupMessage is answered by the ReadyForQuery that ends the start-up.
        let startup = kind == 0 && started;
        if startup || matches!(kind, b'Q' | b'S') {
            let syncs = link.syncs_sent.fetch_add(1, Ordering::SeqCst) + 1;
            if cut_at_sync {
                link.cut_after_ready.store(syncs, Ordering::SeqCst);
            }
        }
        if server.write_all(&message).await.is_err() {
            return;
        }
        if link.cut_after_ready.load(Ordering::SeqCst) > 0 {
            // The server has the message; once it answered, the work is done on its side.
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, answered).await;
            shared.cuts.fetch_add(1, Ordering::SeqCst);
            tracing::info!(
                message = char::from(message[0]).to_string(),
                "cut proxy: connection cut after the server answered"
            );
            return;
        }
    }
}

async fn backend(mut server: OwnedReadHalf, mut client: OwnedWriteHalf, link: &Link) {
    let mut buffer = vec![0u8; 16 * 1024];
    // Typed messages not yet complete, kept to count ReadyForQuery ('Z').
    let mut pending: Vec<u8> = Vec::new();
    let mut ready_seen = 0usize;
    loop {
        let read = match server.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let chunk = &buffer[..read];
        if link.started.load(Ordering::SeqCst) {
            pending.extend_from_slice(chunk);
            ready_seen += take_ready_for_query(&mut pending);
        }
        let cut_after = link.cut_after_ready.load(Ordering::SeqCst);
        if cut_after > 0 {
            // Whatever came after the triggering message went out stays here.
            if ready_seen >= cut_after {
                link.answered.notify_one();
                std::future::pending::<()>().await;
            }
            continue;
        }
        if client.write_all(chunk).await.is_err() {
            return;
        }
    }
}

/// Removes the complete typed messages at the front of `pending`; returns how many of them were
/// ReadyForQuery.
fn take_ready_for_query(pending: &mut Vec<u8>) -> usize {
    let mut ready = 0;
    let mut at = 0;
    while let Some(header) = pending.get(at..at + 5) {
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let Some(end) = usize::try_from(length)
            .ok()
            .and_then(|n| (at + 1).checked_add(n))
        else {
            break;
        };
        if end > pending.len() {
            break;
        }
        if header[0] == b'Z' {
            ready += 1;
        }
        at = end;
    }
    pending.drain(..at);
    ready
}

/// One whole frontend message: before start-up an untyped packet (length, then body), after it a
/// typed one (type byte, length, body).
async fn read_frontend_message(
    client: &mut OwnedReadHalf,
    started: bool,
) -> std::io::Result<Vec<u8>> {
    let mut message = Vec::new();
    if started {
        let mut kind = [0u8; 1];
        client.read_exact(&mut kind).await?;
        message.push(kind[0]);
    }
    let mut length = [0u8; 4];
    client.read_exact(&mut length).await?;
    message.extend_from_slice(&length);
    // The length counts itself; nothing real comes near the cap, a garbled stream ends the relay.
    let body = usize::try_from(u32::from_be_bytes(length))
        .ok()
        .and_then(|n| n.checked_sub(4))
        .filter(|n| *n <= 64 << 20)
        .ok_or_else(|| std::io::Error::other("bad frontend message length"))?;
    let start = message.len();
    message.resize(start + body, 0);
    client.read_exact(&mut message[start..]).await?;
    Ok(message)
}

/// Whether `message` (a typed frontend message) matches the armed trigger; counts it down if so.
/// Notes the text of each statement the connection prepares in `statements`.
fn takes_trigger(
    shared: &Shared,
    message: &[u8],
    statements: &mut HashMap<Vec<u8>, String>,
) -> bool {
    let Some((&kind, body)) = message.split_first() else {
        return false;
    };
    // A NUL-terminated string at the start of `bytes`, and what follows its NUL.
    let string = |bytes: &[u8]| -> Option<(Vec<u8>, usize)> {
        let end = bytes.iter().position(|&b| b == 0)?;
        Some((bytes[..end].to_vec(), end + 1))
    };
    let upper = |text: &[u8]| String::from_utf8_lossy(text).to_ascii_uppercase();
    // Simple query: the text follows the length. Parse: statement name, then the text. Bind:
    // portal name, then the name of the statement it executes.
    let (text, execution) = match kind {
        b'Q' => (
            body.get(4..).and_then(string).map(|(text, _)| upper(&text)),
            false,
        ),
        b'P' => {
            let parsed = body.get(4..).and_then(|rest| {
                let (name, at) = string(rest)?;
                let (text, _) = string(rest.get(at..)?)?;
                Some((name, upper(&text)))
            });
            let Some((name, text)) = parsed else {
                return false;
            };
            statements.insert(name, text.clone());
            (Some(text), false)
        }
        b'B' => {
            let statement = body.get(4..).and_then(|rest| {
                let (_, at) = string(rest)?;
                let (statement, _) = string(rest.get(at..)?)?;
                Some(statement)
            });
            let text = statement.and_then(|statement| statements.get(&statement).cloned());
            (text, true)
        }
        _ => (None, false),
    };
    let Some(text) = text else {
        return false;
    };
    let mut armed = lock(&shared.armed);
    let Some(trigger) = armed.as_mut() else {
        return false;
    };
    if trigger.on_execution != execution {
        return false;
    }
    let matches = if trigger.whole {
        text.trim().trim_end_matches(';').trim_end() == trigger.text
    } else {
        text.contains(&trigger.text)
    };
    if !matches {
        return false;
    }
    trigger.remaining -= 1;
    if trigger.remaining == 0 {
        *armed = None;
    }
    true
}
