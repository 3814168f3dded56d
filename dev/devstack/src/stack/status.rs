//! status, env and logs.

use testkit::patroni::HaTools;

use super::*;

impl Stack {
    /// One line per process: name, pid, port, health, log. Whether all is up.
    pub fn status(&self) -> bool {
        let pg = PgTools::find().ok();
        let mut all_up = true;
        let mut row = |name: &str, pid: Option<u32>, port: Option<u16>, health: &str, log: &str| {
            let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
            println!(
                "{:<17} {:<8} {:<6} {:<40} {}",
                name,
                dash(pid.map(|p| p.to_string())),
                dash(port.map(|p| p.to_string())),
                health,
                log
            );
            all_up &= health.starts_with("up") || health.starts_with("not used");
        };
        println!(
            "{:<17} {:<8} {:<6} {:<40} LOG",
            "NAME", "PID", "PORT", "HEALTH"
        );
        let log = |name: &str| self.layout.log(name).display().to_string();
        let s = &self.settings;

        if s.db == Db::Ha {
            self.ha_status(&mut row);
        } else {
            let pg_up = pg
                .as_ref()
                .is_some_and(|pg| self.pg_running(pg) && self.pg_ready(pg));
            let pg_pid = std::fs::read_to_string(self.layout.pid_file("postgresql"))
                .ok()
                .and_then(|text| text.trim().parse().ok());
            let health = if pg_up {
                "up (accepts connections)"
            } else {
                "down"
            };
            row(
                "postgresql",
                pg_pid,
                Some(s.pg_port),
                health,
                &log("postgresql"),
            );
        }

        if s.nats_external {
            let health = if nats_info(s.nats_port).is_some_and(|info| info.jetstream) {
                "up (external, not ours)"
            } else {
                "down (external)"
            };
            row("nats-server", None, Some(s.nats_port), health, "-");
        } else {
            let pid = self.live("nats-server");
            let health =
                if pid.is_some() && http_ok(s.nats_http_port, "/healthz?js-enabled-only=true") {
                    "up (/healthz, JetStream)"
                } else {
                    "down"
                };
            row(
                "nats-server",
                pid,
                Some(s.nats_port),
                health,
                &log("nats-server"),
            );
        }

        match s.zipkin {
            Zipkin::Caller => row(
                "tracestore",
                None,
                None,
                "not used (ZIPKIN_ENDPOINT set)",
                "-",
            ),
            Zipkin::External => {
                let health = if http_ok(s.zipkin_port, "/health") {
                    "up (external Zipkin, not ours)"
                } else {
                    "down (external Zipkin)"
                };
                row("zipkin", None, Some(s.zipkin_port), health, "-");
            }
            Zipkin::Ours => {
                let pid = self.live("tracestore");
                let health = if pid.is_some() && http_ok(s.zipkin_port, "/health") {
                    "up (/health 200)"
                } else {
                    "down"
                };
                row(
                    "tracestore",
                    pid,
                    Some(s.zipkin_port),
                    health,
                    &log("tracestore"),
                );
            }
        }

        for name in SERVICES {
            let pid = self.live(name);
            let port = match name {
                "eventstore" => Some(s.eventstore_port),
                "ordersvc" => Some(s.ordersvc_port),
                _ => None,
            };
            let health = match (pid, name) {
                (None, _) => "down",
                (Some(_), "eventstore") if port_accepts(s.eventstore_port) => "up (TCP)",
                (Some(_), "eventstore") => "down (no TCP)",
                (Some(_), "ordersvc") if http_ok(s.ordersvc_port, "/healthz") => {
                    "up (/healthz 200)"
                }
                (Some(_), "ordersvc") => "down (/healthz)",
                (Some(_), _) => "up (running)",
            };
            row(name, pid, port, health, &log(name));
        }
        all_up
    }

    /// What `start` prints at its end: the variables a client needs.
    pub(super) fn print_env(&self) {
        let s = &self.settings;
        println!("  export NATS_URL=nats://127.0.0.1:{}", s.nats_port);
        if s.nats_auth {
            println!(
                "  export NATS_USER=orderctl NATS_PASSWORD=...   # eval \"$(scripts/stack env)\" \
                 sets both"
            );
        }
        println!(
            "  export EVENTSTORE_URL=http://127.0.0.1:{}",
            s.eventstore_port
        );
        println!("  export ORDERSVC_URL=http://127.0.0.1:{}", s.ordersvc_port);
        println!(
            "  export ORDERCTL_TOKEN=... ORDERS_TOKEN=...   # eval \"$(scripts/stack env)\" sets \
             both (operator, customer c1); scripts/stack token --customer ID for others"
        );
        if crate::certs::ServiceCerts::existing(&crate::certs::stack_dir(&self.layout)).is_some() {
            println!(
                "  # the event store takes mTLS only: eval \"$(scripts/stack env)\" sets EVENTSTORE_URL=https://... and orderctl's certificate"
            );
        }
        let psql = match s.db {
            Db::Single => "PostgreSQL",
            Db::Ha => "the HA cluster's leader, through HAProxy",
        };
        println!(
            "  export PGURL='{}'   # psql \"$PGURL\": {psql}",
            self.endpoints().role_url("root", "postgres")
        );
        if let Some(url) = self.zipkin_url() {
            println!(
                "  export ZIPKIN_URL={url}   # traces: $ZIPKIN_URL/zipkin/, orderctl trace ORDER_ID"
            );
        }
    }

    /// The variables a client needs, as `export` lines (eval-able).
    pub fn env_lines(&self) -> Vec<String> {
        let s = &self.settings;
        let e = self.endpoints();
        let mut lines = vec![
            format!("export NATS_URL={}", e.nats_url),
            format!(
                "export EVENTSTORE_URL=http://127.0.0.1:{}",
                s.eventstore_port
            ),
            format!("export ORDERSVC_URL={}", e.api_url()),
        ];
        if let Some(url) = self.zipkin_url() {
            lines.push(format!("export ZIPKIN_URL={url}"));
        }
        // The event store over mTLS: orderctl's certificate (these exports come later and win).
        if let Some(certs) =
            crate::certs::ServiceCerts::existing(&crate::certs::stack_dir(&self.layout))
        {
            for (name, value) in certs.env(None, s.eventstore_port) {
                lines.push(format!("export {name}='{value}'"));
            }
        }
        // The superuser, through HAProxy in the HA profile: psql "$PGURL".
        lines.push(format!("export PGURL='{}'", e.role_url("root", "postgres")));
        if s.db == Db::Ha {
            let urls = HaTools::find()
                .and_then(|tools| self.ha_layout(&tools))
                .map(|ha| ha.patroni_urls().join(","));
            match urls {
                Ok(urls) => lines.push(format!("export PATRONI_URLS={urls}")),
                Err(error) => eprintln!("stack: no PATRONI_URLS: {error:#}"),
            }
        }
        if s.nats_auth && self.layout.passwords_file().is_file() {
            // The operator's user (orderctl dead-letters); the services' passwords stay in the file.
            if let Ok(password) = self.nats_password("orderctl") {
                lines.push("export NATS_USER=orderctl".to_owned());
                lines.push(format!("export NATS_PASSWORD='{password}'"));
            }
        }
        // Bearer tokens of the stack's key: an operator's (orderctl) and customer c1's (curl).
        lines.extend(crate::tokens::env_lines(&self.layout.dir));
        for (variable, user, database) in [
            ("BOOTSTRAP_DATABASE_URL", "root", "postgres"),
            ("EVENTSTORE_DATABASE_URL", "eventstore", "eventstoredb"),
            ("ORDERS_DATABASE_URL", "orders", "ordersdb"),
            ("PAYMENTS_DATABASE_URL", "payments", "paymentsdb"),
        ] {
            lines.push(format!(
                "export {variable}='{}'",
                e.role_url(user, database)
            ));
        }
        lines
    }

    /// `tail` of one log (50 lines) or of every log (20 lines each), following with `follow`;
    /// replaces this process.
    pub fn logs(&self, follow: bool, name: Option<&str>) -> anyhow::Error {
        let mut command = Command::new("tail");
        let files: Vec<PathBuf> = match name {
            Some(name) => {
                let log = self.layout.log(name);
                if !log.is_file() {
                    return anyhow::anyhow!(
                        "no log {} (names: postgresql nats-server tracestore bootstrapper {}; \
                         STACK_DB=ha: {} {} {})",
                        log.display(),
                        SERVICES.join(" "),
                        ha::ETCD.join(" "),
                        ha::PATRONI.join(" "),
                        ha::HAPROXY
                    );
                }
                command.args(["-n", "50"]);
                vec![log]
            }
            None => {
                let mut logs: Vec<PathBuf> = std::fs::read_dir(self.layout.log_dir())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
                    .collect();
                if logs.is_empty() {
                    return anyhow::anyhow!(
                        "no logs in {} (has the stack been started?)",
                        self.layout.log_dir().display()
                    );
                }
                logs.sort();
                command.args(["-n", "20"]);
                logs
            }
        };
        if follow {
            command.arg("-f");
        }
        let error = std::os::unix::process::CommandExt::exec(command.args(files));
        anyhow::anyhow!("running tail: {error}")
    }
}
