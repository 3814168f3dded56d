//! The tests' Zipkin: [`tracestore`], the in-memory store the dev stack runs when no Zipkin answers,
//! on a free port of its own. It runs on its own thread and runtime, so it works from synchronous
//! and asynchronous tests alike, and `stop()` makes it go away (the port refuses connections) to
//! simulate Zipkin being down.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::thread::JoinHandle;

use anyhow::Context as _;
use serde_json::Value;
use tracestore::Store;

/// Enough for any test; a test that needs eviction starts a [`tracestore`] of its own.
const MAX_SPANS: usize = 1_000_000;

/// A running store; stopped on `Drop`.
pub struct Zipkin {
    addr: SocketAddr,
    store: Store,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Zipkin {
    /// Starts a store on a free port of 127.0.0.1; it accepts connections when this returns.
    pub fn start() -> anyhow::Result<Zipkin> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
        listener
            .set_nonblocking(true)
            .context("non-blocking listener")?;
        let addr = listener.local_addr().context("local address")?;
        let store = Store::new(MAX_SPANS);
        let served = store.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a runtime for the Zipkin store")?;
        let thread = std::thread::Builder::new()
            .name(format!("zipkin-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    // Dropping the server future on stop closes the listener; dropping the runtime
                    // afterwards closes the connections still open.
                    tokio::select! {
                        _ = tracestore::serve(listener, served, std::future::pending()) => {}
                        _ = stopped => {}
                    }
                });
            })
            .context("starting the Zipkin store thread")?;
        Ok(Zipkin {
            addr,
            store,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where services send spans: `ZIPKIN_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("{}/api/v2/spans", self.base_url())
    }

    /// `http://127.0.0.1:<port>`, the root of the read API and of the pages (`/zipkin/`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, trace by trace, as Zipkin's JSON.
    pub fn spans(&self) -> Vec<Value> {
        json(self.store.all_spans())
    }

    /// The spans of one trace (none when unknown).
    pub fn trace(&self, trace_id: &str) -> Vec<Value> {
        json(self.store.trace(trace_id).unwrap_or_default())
    }

    /// Stops serving: from now on its port refuses connections. The spans stay readable.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Zipkin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn json(spans: Vec<tracestore::Span>) -> Vec<Value> {
    spans
        .into_iter()
        .filter_map(|span| serde_json::to_value(span).ok())
        .collect()
}
