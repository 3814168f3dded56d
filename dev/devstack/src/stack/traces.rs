//! Where the services send their spans: the caller's ZIPKIN_ENDPOINT, a Zipkin found on the port,
//! or the stack's own trace store (`devstack trace-store`).

use super::*;

impl Stack {
    pub(super) fn start_zipkin(&mut self, started: &Started) -> anyhow::Result<()> {
        if let Some(endpoint) = std::env::var_os("ZIPKIN_ENDPOINT") {
            self.settings.zipkin = Zipkin::Caller;
            let endpoint = endpoint.to_string_lossy();
            let shown = if endpoint.is_empty() {
                "empty: span export off"
            } else {
                &endpoint
            };
            println!("ZIPKIN_ENDPOINT is set ({shown}): the services export there; no tracestore");
            return Ok(());
        }
        let port = self.settings.zipkin_port;
        self.settings.zipkin = Zipkin::Ours;
        if self.live("tracestore").is_some() {
            println!("tracestore of this stack is already running on port {port}");
            return Ok(());
        }
        forget_pid(&self.layout, "tracestore");
        if port_listening(port) {
            if http_ok(port, "/health") {
                self.settings.zipkin = Zipkin::External;
                let owner = port_owner(port).unwrap_or_else(|| "another process".to_owned());
                println!(
                    "Port {port} already has a Zipkin ({owner}): the services send their spans \
                     there."
                );
                println!(
                    "    It is not stopped by 'scripts/stack stop'. For this stack's own \
                     tracestore instead: STACK_ZIPKIN_PORT=9412 scripts/stack start"
                );
                return Ok(());
            }
            return Err(port_taken(
                port,
                "tracestore (what listens there does not answer Zipkin's /health)",
                "STACK_ZIPKIN_PORT",
            ));
        }
        step(&format!(
            "starting tracestore on 127.0.0.1:{port} (Zipkin's API and a trace viewer, in memory)"
        ));
        let log = self.layout.log("tracestore");
        let exe = std::env::current_exe().context("finding this executable")?;
        let pid = started.launch("tracestore", || {
            let child = services::spawn(
                &exe,
                &["trace-store", "--port", &port.to_string()],
                &[("NO_COLOR".to_owned(), "1".to_owned())],
                &[],
                &log,
                Detach::Yes,
            )?;
            record_pid(&self.layout, "tracestore", child.id())?;
            Ok(child.id())
        })?;
        services::wait_ready(
            "tracestore",
            Ready::Http(port, "/health"),
            Duration::from_secs(20),
            &log,
            || testkit::host::process_alive(pid),
        )
    }
}
