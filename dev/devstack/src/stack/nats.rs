//! The stack's NATS: one found on the port (with JetStream, used as it is), or its own nats-server
//! with js.conf and nats-auth.conf's users, their random passwords kept mode 600.

use super::*;

/// js.conf and nats-auth.conf of the repository, as this binary was built with them.
const JS_CONF: &str = include_str!("../../../../js.conf");
const NATS_AUTH_CONF: &str = include_str!("../../../../nats-auth.conf");

/// The users of nats-auth.conf; each gets a random password (deadlinewatcher needs no subject).
pub const NATS_USERS: [&str; 7] = [
    "eventstore",
    "ordersvc",
    "paymentworker",
    "reviewworker",
    "querymodelworker",
    "bootstrapper",
    "orderctl",
];

impl Stack {
    pub(super) fn start_nats(&mut self, started: &Started) -> anyhow::Result<()> {
        let port = self.settings.nats_port;
        if live_pid(&self.layout, "nats-server").is_some() {
            println!("nats-server of this stack is already running on port {port}");
            self.settings.nats_auth = nats_info(port).is_some_and(|info| info.auth_required);
            if self.settings.nats_auth {
                self.check_nats_passwords()?;
            }
            return Ok(());
        }
        forget_pid(&self.layout, "nats-server");
        self.settings.nats_external = false;
        if port_listening(port) {
            let owner = port_owner(port).unwrap_or_else(|| "another process".to_owned());
            let pick = "Pick another port for this stack's own nats-server, e.g.: \
                        STACK_NATS_PORT=4223 scripts/stack start";
            match nats_info(port) {
                Some(info) if info.auth_required => bail!(
                    "port {port} has a NATS server that asks for a user ({owner}); this stack \
                     does not know its users.\n       {pick}"
                ),
                Some(info) if info.jetstream => {
                    self.settings.nats_external = true;
                    self.settings.nats_auth = false;
                    println!(
                        "Port {port} already has a NATS server with JetStream ({owner}): using \
                         it, not starting one."
                    );
                    println!(
                        "    The ORDERS stream and its consumers are created there; it is not \
                         stopped by 'scripts/stack stop'."
                    );
                    println!(
                        "    To run a nats-server of this stack instead: STACK_NATS_PORT=4223 \
                         scripts/stack start"
                    );
                    if let Some(max) = info.max_payload.filter(|max| *max < 2_097_152) {
                        println!(
                            "    Note: its max_payload is {max} bytes (js.conf has 2MB): events \
                             near 1 MiB will not fit."
                        );
                    }
                    return Ok(());
                }
                Some(_) => bail!(
                    "port {port} has a NATS server without JetStream ({owner}); the pipeline \
                     needs JetStream.\n       {pick}"
                ),
                None => {
                    return Err(port_taken(
                        port,
                        "nats-server (what listens there does not answer like a NATS server)",
                        "STACK_NATS_PORT",
                    ));
                }
            }
        }
        let http_port = self.settings.nats_http_port;
        if port_listening(http_port) {
            return Err(port_taken(
                http_port,
                "NATS monitoring",
                "STACK_NATS_HTTP_PORT",
            ));
        }
        let nats = self.settings.nats_server()?;
        let nats_dir = self.layout.nats_dir();
        std::fs::create_dir_all(&nats_dir)?;
        // js.conf's store is relative to where nats-server starts, and -sd cannot be combined
        // with store_dir: a copy names this stack's folder.
        let mut config = js_conf(&nats_dir, nats.sync_always);
        let mut env = Vec::new();
        let users = if self.layout.nats_auth {
            // nats-server reads one file; the passwords stay out of it, in its environment.
            self.settings.nats_auth = true;
            self.ensure_nats_passwords()?;
            config.push_str(NATS_AUTH_CONF);
            env = self.nats_passwords()?;
            format!(
                "a user per service, passwords in {}",
                self.layout.passwords_file().display()
            )
        } else {
            self.settings.nats_auth = false;
            "without users".to_owned()
        };
        let config_file = self.layout.dir.join(if self.settings.nats_auth {
            "nats.conf"
        } else {
            "js.conf"
        });
        std::fs::write(&config_file, config)
            .with_context(|| format!("writing {}", config_file.display()))?;
        let sync = if nats.sync_always {
            "syncing every write"
        } else if nats.version.has_sync_always() {
            "syncing on the server's timer (STACK_NATS_SYNC=default)"
        } else {
            "syncing on the server's timer: 2.9 cannot sync every write"
        };
        step(&format!(
            "starting nats-server {} ({}) on 127.0.0.1:{port} (monitoring {http_port}, store {}, \
             {users}, {sync})",
            nats.version,
            nats.binary.display(),
            nats_dir.display()
        ));
        let log = self.layout.log("nats-server");
        let _ = std::fs::remove_file(&log);
        let mut command = Command::new(&nats.binary);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command
            .arg("-c")
            .arg(&config_file)
            .args(["-p", &port.to_string(), "-m", &http_port.to_string()])
            .envs(env)
            .current_dir(&self.layout.dir);
        let child = started.launch("nats-server", || {
            let child = testkit::host::spawn_logged(command, &log)?;
            record_pid(&self.layout, "nats-server", child.id())?;
            Ok(child)
        })?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut child = Some(child);
        testkit::host::wait_ready(&mut child, &log, 0, port, deadline, "nats-server")
            .and_then(|()| {
                services::wait_ready(
                    "nats-server",
                    Ready::Http(http_port, "/healthz?js-enabled-only=true"),
                    deadline.saturating_duration_since(Instant::now()),
                    &log,
                    || true,
                )
            })
            .map_err(|error| {
                died(
                    "nats-server",
                    &format!("did not become healthy ({error:#})"),
                    &log,
                )
            })
    }

    pub(super) fn password_variable(user: &str) -> String {
        format!("NATS_{}_PASSWORD", user.to_uppercase())
    }

    /// A random password per user of nats-auth.conf, made once and kept (mode 600).
    pub(super) fn ensure_nats_passwords(&self) -> anyhow::Result<()> {
        let file = self.layout.passwords_file();
        if !file.exists() {
            let mut text = String::new();
            let mut random = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
            for user in NATS_USERS {
                let mut bytes = [0u8; 24];
                random.read_exact(&mut bytes)?;
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                // Starting with a letter: nats-server reads the value as configuration, and would
                // take one starting with a digit for a number.
                text.push_str(&format!("{}=p{hex}\n", Self::password_variable(user)));
            }
            let new = file.with_extension("env.new");
            let _ = std::fs::remove_file(&new);
            let mut out = std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&new)
                .with_context(|| format!("creating {}", new.display()))?;
            std::io::Write::write_all(&mut out, text.as_bytes())?;
            std::fs::rename(&new, &file)?;
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        self.check_nats_passwords()
    }

    pub(super) fn nats_passwords(&self) -> anyhow::Result<Vec<(String, String)>> {
        let file = self.layout.passwords_file();
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        Ok(text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    pub(super) fn check_nats_passwords(&self) -> anyhow::Result<()> {
        for user in NATS_USERS {
            self.nats_password(user)?;
        }
        Ok(())
    }

    pub(super) fn nats_password(&self, user: &str) -> anyhow::Result<String> {
        let variable = Self::password_variable(user);
        let file = self.layout.passwords_file();
        self.nats_passwords()
            .ok()
            .and_then(|all| {
                all.into_iter()
                    .find(|(k, v)| *k == variable && !v.is_empty())
            })
            .map(|(_, v)| v)
            .with_context(|| {
                format!(
                    "{} has no password for the NATS user {user}; stop the stack (scripts/stack \
                     stop), remove the file and start again",
                    file.display()
                )
            })
    }
}

/// js.conf with its `store_dir` set to `store`, and with `sync_interval: always` beside it when
/// `sync_always` (only for 2.10 and later: 2.9 refuses to start on a field it does not know, which
/// is why js.conf itself cannot carry it).
fn js_conf(store: &Path, sync_always: bool) -> String {
    let mut out = String::new();
    for line in JS_CONF.lines() {
        if line.trim_start().starts_with("store_dir:") {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&format!("{indent}store_dir: \"{}\"\n", store.display()));
            if sync_always {
                // An acknowledged publish is on disk: a power cut loses nothing the relay was
                // told is stored (RELIABILITY.md, "The broker's disk").
                out.push_str(&format!("{indent}sync_interval: always\n"));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_config_syncs_every_write_only_when_asked_inside_the_jetstream_block() {
        let store = Path::new("/tmp/some stack/nats");
        let synced = js_conf(store, true);
        let block = synced
            .split("jetstream {")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .expect("js.conf has a jetstream block");
        assert!(block.contains("sync_interval: always"), "{block}");
        assert!(
            block.contains("store_dir: \"/tmp/some stack/nats\""),
            "{block}"
        );
        // js.conf's comments mention the field; only one line may set it.
        let setting = |config: &str| {
            config
                .lines()
                .filter(|line| line.trim_start().starts_with("sync_interval"))
                .count()
        };
        assert_eq!(setting(&synced), 1, "{synced}");

        let timer = js_conf(store, false);
        assert_eq!(setting(&timer), 0, "{timer}");
    }
}
