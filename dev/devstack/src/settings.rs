//! The stack's settings: the caller's STACK_* variables, and the record of the stack last
//! started (`$STACK_DIR/stack.env`), which status, stop and logs follow rather than the caller's
//! environment, so `STACK_NATS_PORT=4333 scripts/stack start` needs no repeat afterwards.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use testkit::host::NatsVersion;
use testkit::patroni::HaPorts;

/// Where the services send their spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zipkin {
    /// The stack's own trace store on the Zipkin port (`0` in stack.env).
    Ours,
    /// Someone else's Zipkin answered on the port; used and left running (`1`).
    External,
    /// The caller set `ZIPKIN_ENDPOINT` (empty: no export); no trace store (`none`).
    Caller,
}

impl Zipkin {
    fn recorded(self) -> &'static str {
        match self {
            Zipkin::Ours => "0",
            Zipkin::External => "1",
            Zipkin::Caller => "none",
        }
    }
}

/// Which PostgreSQL the stack runs (`STACK_DB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// One PostgreSQL in `$STACK_DIR/pg` (`single`, the default).
    Single,
    /// Three PostgreSQL nodes under Patroni with three etcd members and HAProxy on
    /// `STACK_PG_PORT`, in `$STACK_DIR/ha` (`ha`).
    Ha,
}

impl Db {
    pub fn parse(value: &str) -> anyhow::Result<Db> {
        match value {
            "" | "single" => Ok(Db::Single),
            "ha" => Ok(Db::Ha),
            other => bail!("STACK_DB={other} is neither `single` nor `ha`"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Db::Single => "single",
            Db::Ha => "ha",
        }
    }
}

/// How the stack's own nats-server syncs JetStream writes to disk (`STACK_NATS_SYNC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsSync {
    /// Every write where the server knows how (2.10 and later), else the server's timer (unset or
    /// `auto`, the default).
    Auto,
    /// Every write, or refuse to start on a server that cannot (`always`).
    Always,
    /// The server's own timer (`default`: 60 s on 2.9, two minutes on current versions), for a
    /// benchmark's A/B or a machine whose disk cannot take a sync per write.
    ServerDefault,
}

impl NatsSync {
    pub fn parse(value: &str) -> anyhow::Result<NatsSync> {
        match value {
            "" | "auto" => Ok(NatsSync::Auto),
            "always" => Ok(NatsSync::Always),
            "default" => Ok(NatsSync::ServerDefault),
            other => bail!("STACK_NATS_SYNC={other} is none of `auto`, `always` and `default`"),
        }
    }
}

/// The nats-server a stack of its own runs, and whether it syncs every write.
#[derive(Debug, Clone)]
pub struct NatsChoice {
    pub binary: PathBuf,
    /// What `binary --version` says, not what its path suggests.
    pub version: NatsVersion,
    /// `jetstream { sync_interval: always }` goes into its configuration.
    pub sync_always: bool,
}

/// The default `STACK_HA_PORT_BASE`: 26300..26311, clear of every other default port.
pub const HA_PORT_BASE: u16 = 26300;

/// Ports and what this stack found running, as stack.env records them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The cargo profile whose binaries run (recorded for scripts; devstack runs the binaries
    /// beside itself or in `STACK_BIN_DIR`).
    pub profile: String,
    pub pg_port: u16,
    pub nats_port: u16,
    pub nats_http_port: u16,
    pub eventstore_port: u16,
    pub ordersvc_port: u16,
    pub zipkin_port: u16,
    /// `STACK_DB`: one PostgreSQL or the HA cluster behind HAProxy on `pg_port`.
    pub db: Db,
    /// `STACK_HA_PORT_BASE` (26300): the HA cluster's other twelve ports, see
    /// [`Settings::ha_ports`].
    pub ha_port_base: u16,
    pub zipkin: Zipkin,
    /// A NATS with JetStream found on the port is used, not started, and left running on stop.
    pub nats_external: bool,
    /// The stack's NATS asks each service for its user and password.
    pub nats_auth: bool,
    /// `STACK_NATS_BIN`: the nats-server binary a stack of its own runs (e.g. the pinned current
    /// one, `scripts/nats-current`); unset: the test kit's search (`NATS_SERVER_BIN`, PATH,
    /// /usr/sbin). Checked by [`Settings::nats_server`] before anything starts.
    pub nats_bin: Option<PathBuf>,
    /// `STACK_NATS_SYNC`: see [`NatsSync`].
    pub nats_sync: NatsSync,
}

/// A port from `variable`, `default` when unset or empty.
fn port(variable: &str, default: u16) -> anyhow::Result<u16> {
    match std::env::var(variable) {
        Ok(value) if !value.is_empty() => value
            .parse()
            .with_context(|| format!("{variable}={value} is not a port (1-65535)")),
        _ => Ok(default),
    }
}

impl Settings {
    /// From the caller's STACK_* variables (defaults: the README's ports).
    pub fn from_env() -> anyhow::Result<Settings> {
        Ok(Settings {
            profile: std::env::var("STACK_PROFILE")
                .ok()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "release".to_owned()),
            pg_port: port("STACK_PG_PORT", 26257)?,
            nats_port: port("STACK_NATS_PORT", 4222)?,
            nats_http_port: port("STACK_NATS_HTTP_PORT", 8222)?,
            eventstore_port: port("STACK_EVENTSTORE_PORT", 50051)?,
            ordersvc_port: port("STACK_ORDERSVC_PORT", 3000)?,
            zipkin_port: port("STACK_ZIPKIN_PORT", 9411)?,
            db: Db::parse(&std::env::var("STACK_DB").unwrap_or_default())?,
            ha_port_base: port("STACK_HA_PORT_BASE", HA_PORT_BASE)?,
            zipkin: Zipkin::Ours,
            nats_external: false,
            nats_auth: false,
            nats_bin: std::env::var_os("STACK_NATS_BIN")
                .filter(|path| !path.is_empty())
                .map(PathBuf::from),
            nats_sync: NatsSync::parse(&std::env::var("STACK_NATS_SYNC").unwrap_or_default())?,
        })
    }

    /// The nats-server to run and how it syncs: `STACK_NATS_BIN` must be an executable whose
    /// `--version` answers, and `STACK_NATS_SYNC=always` needs 2.10 or later; each refusal names
    /// its variable.
    pub fn nats_server(&self) -> anyhow::Result<NatsChoice> {
        let binary = match &self.nats_bin {
            Some(path) => {
                let usable = std::fs::metadata(path).is_ok_and(|meta| {
                    std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0
                        && meta.is_file()
                });
                anyhow::ensure!(
                    usable,
                    "STACK_NATS_BIN={} is not an executable file",
                    path.display()
                );
                path.clone()
            }
            None => testkit::host::find_nats_server()
                .context("the stack needs nats-server (or STACK_NATS_BIN=<path of one>)")?,
        };
        let version = NatsVersion::of(&binary).with_context(|| {
            if self.nats_bin.is_some() {
                format!("STACK_NATS_BIN={} is not a nats-server", binary.display())
            } else {
                format!("{} is not a nats-server", binary.display())
            }
        })?;
        let sync_always = match self.nats_sync {
            NatsSync::Auto => version.has_sync_always(),
            NatsSync::Always => {
                anyhow::ensure!(
                    version.has_sync_always(),
                    "STACK_NATS_SYNC=always needs nats-server 2.10 or later; {} is {version} \
                     (pick another with STACK_NATS_BIN, e.g. \"$(scripts/nats-current)\")",
                    binary.display()
                );
                true
            }
            NatsSync::ServerDefault => false,
        };
        Ok(NatsChoice {
            binary,
            version,
            sync_always,
        })
    }

    /// The caller's settings with the recorded ones of `file` on top (when it exists).
    pub fn recorded(file: &Path) -> anyhow::Result<Settings> {
        let mut settings = Settings::from_env()?;
        let Ok(text) = std::fs::read_to_string(file) else {
            return Ok(settings);
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let number = || -> anyhow::Result<u16> {
                value
                    .parse()
                    .with_context(|| format!("{}: {key}={value} is not a port", file.display()))
            };
            match key {
                "PROFILE" => settings.profile = value.to_owned(),
                "PG_PORT" => settings.pg_port = number()?,
                "NATS_PORT" => settings.nats_port = number()?,
                "NATS_HTTP_PORT" => settings.nats_http_port = number()?,
                "EVENTSTORE_PORT" => settings.eventstore_port = number()?,
                "ORDERSVC_PORT" => settings.ordersvc_port = number()?,
                "ZIPKIN_PORT" => settings.zipkin_port = number()?,
                "DB" => settings.db = Db::parse(value)?,
                "HA_PORT_BASE" => settings.ha_port_base = number()?,
                "ZIPKIN_EXTERNAL" => {
                    settings.zipkin = match value {
                        "1" => Zipkin::External,
                        "none" => Zipkin::Caller,
                        _ => Zipkin::Ours,
                    }
                }
                "NATS_EXTERNAL" => settings.nats_external = value == "1",
                "NATS_AUTH" => settings.nats_auth = value == "1",
                _ => {}
            }
        }
        Ok(settings)
    }

    /// Writes `file` as shell assignments (scripts/bench sources it).
    pub fn save(&self, file: &Path) -> anyhow::Result<()> {
        let flag = |on: bool| if on { "1" } else { "0" };
        let text = format!(
            "PROFILE={}\nPG_PORT={}\nNATS_PORT={}\nNATS_HTTP_PORT={}\nEVENTSTORE_PORT={}\n\
             ORDERSVC_PORT={}\nZIPKIN_PORT={}\nZIPKIN_EXTERNAL={}\nNATS_EXTERNAL={}\nNATS_AUTH={}\n\
             DB={}\nHA_PORT_BASE={}\n",
            self.profile,
            self.pg_port,
            self.nats_port,
            self.nats_http_port,
            self.eventstore_port,
            self.ordersvc_port,
            self.zipkin_port,
            self.zipkin.recorded(),
            flag(self.nats_external),
            flag(self.nats_auth),
            self.db.name(),
            self.ha_port_base,
        );
        std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))
    }

    /// The HA cluster's ports: HAProxy on `STACK_PG_PORT` (where the services connect either
    /// way), and from `STACK_HA_PORT_BASE` up: PostgreSQL of pg1..pg3 at base+0..2, their
    /// Patroni REST APIs at base+3..5, etcd's client ports at base+6..8, its peer ports at
    /// base+9..11.
    pub fn ha_ports(&self) -> anyhow::Result<HaPorts> {
        HaPorts::from_base(self.pg_port, self.ha_port_base)
            .context("STACK_HA_PORT_BASE and STACK_PG_PORT")
    }
}

/// The folders of a stack and what does not change between its commands.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `STACK_DIR` (default `<repository>/.stack`).
    pub dir: PathBuf,
    /// Where the pipeline's binaries are: `STACK_BIN_DIR`, default the folder of this executable
    /// (`target/<profile>/`, where cargo puts them all).
    pub bin_dir: PathBuf,
    /// `STACK_STOP_TIMEOUT` seconds (20): SIGTERM, then SIGKILL.
    pub stop_timeout: Duration,
    /// `STACK_NATS_AUTH` unless `0`: this stack's nats-server runs with nats-auth.conf's users.
    pub nats_auth: bool,
}

impl Layout {
    pub fn from_env() -> anyhow::Result<Layout> {
        let cwd = std::env::current_dir().context("reading the current folder")?;
        let dir = match std::env::var_os("STACK_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => cwd.join(dir),
            None => repository_root().join(".stack"),
        };
        let bin_dir = match std::env::var_os("STACK_BIN_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => cwd.join(dir),
            None => std::env::current_exe()
                .context("finding this executable")?
                .parent()
                .map(Path::to_path_buf)
                .context("the folder of this executable")?,
        };
        let stop_timeout = match std::env::var("STACK_STOP_TIMEOUT") {
            Ok(value) if !value.is_empty() => match value.parse::<u64>() {
                Ok(seconds) => Duration::from_secs(seconds),
                Err(_) => bail!("STACK_STOP_TIMEOUT={value} is not a number of seconds"),
            },
            _ => Duration::from_secs(20),
        };
        Ok(Layout {
            dir: normalize(&dir),
            bin_dir,
            stop_timeout,
            nats_auth: std::env::var("STACK_NATS_AUTH").map_or(true, |v| v != "0"),
        })
    }

    pub fn pg_dir(&self) -> PathBuf {
        self.dir.join("pg")
    }

    /// The HA cluster's folder (`STACK_DB=ha`): etcd's, Patroni's and PostgreSQL's data.
    pub fn ha_dir(&self) -> PathBuf {
        self.dir.join("ha")
    }

    pub fn nats_dir(&self) -> PathBuf {
        self.dir.join("nats")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    pub fn pid_dir(&self) -> PathBuf {
        self.dir.join("pids")
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.log_dir().join(format!("{name}.log"))
    }

    pub fn pid_file(&self, name: &str) -> PathBuf {
        self.pid_dir().join(format!("{name}.pid"))
    }

    pub fn settings_file(&self) -> PathBuf {
        self.dir.join("stack.env")
    }

    /// `NATS_<USER>_PASSWORD=...` for each user of nats-auth.conf, mode 600.
    pub fn passwords_file(&self) -> PathBuf {
        self.dir.join("nats-passwords.env")
    }
}

/// The workspace this binary was built from (its default STACK_DIR is `.stack` there).
pub fn repository_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// `a/./b/../c` as `a/c`, without touching the file system (like `realpath -m`).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pg_port: u16, ha_port_base: u16) -> Settings {
        Settings {
            profile: "dev".to_owned(),
            pg_port,
            nats_port: 4222,
            nats_http_port: 8222,
            eventstore_port: 50051,
            ordersvc_port: 3000,
            zipkin_port: 9411,
            db: Db::Ha,
            ha_port_base,
            zipkin: Zipkin::Ours,
            nats_external: false,
            nats_auth: true,
            nats_bin: None,
            nats_sync: NatsSync::Auto,
        }
    }

    /// A stand-in nats-server: a script answering `--version` as `version` would.
    fn fake_nats_server(dir: &Path, version: &str) -> PathBuf {
        let path = dir.join("nats-server");
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho 'nats-server: v{version}'\n"),
        )
        .expect("writing the script");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("making it executable");
        path
    }

    #[test]
    fn stack_nats_bin_must_be_an_executable_and_is_named_when_it_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut stack = settings(26257, HA_PORT_BASE);
        stack.nats_bin = Some(dir.path().join("missing"));
        let error = stack.nats_server().expect_err("missing");
        assert!(
            format!("{error:#}").contains("STACK_NATS_BIN="),
            "{error:#}"
        );

        let not_nats = dir.path().join("true");
        std::fs::write(&not_nats, "#!/bin/sh\necho hello\n").expect("writing");
        std::fs::set_permissions(
            &not_nats,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        stack.nats_bin = Some(not_nats);
        let error = stack.nats_server().expect_err("not a nats-server");
        assert!(
            format!("{error:#}").contains("STACK_NATS_BIN="),
            "{error:#}"
        );
    }

    #[test]
    fn every_write_is_synced_where_the_version_knows_how_and_not_on_2_9() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut stack = settings(26257, HA_PORT_BASE);

        stack.nats_bin = Some(fake_nats_server(dir.path(), "2.15.1"));
        let current = stack.nats_server().expect("2.15.1");
        assert!(current.sync_always);
        assert_eq!(current.version.to_string(), "2.15.1");
        stack.nats_sync = NatsSync::ServerDefault;
        assert!(!stack.nats_server().expect("2.15.1").sync_always);

        let old = tempfile::tempdir().expect("tempdir");
        stack.nats_bin = Some(fake_nats_server(old.path(), "2.9.10"));
        stack.nats_sync = NatsSync::Auto;
        assert!(!stack.nats_server().expect("2.9.10").sync_always);
        stack.nats_sync = NatsSync::Always;
        let error = stack.nats_server().expect_err("2.9 cannot");
        assert!(
            format!("{error:#}").contains("STACK_NATS_SYNC=always"),
            "{error:#}"
        );
    }

    #[test]
    fn stack_nats_sync_takes_auto_always_or_default_only() {
        assert_eq!(NatsSync::parse("").expect("unset"), NatsSync::Auto);
        assert_eq!(NatsSync::parse("always").expect("always"), NatsSync::Always);
        assert_eq!(
            NatsSync::parse("default").expect("default"),
            NatsSync::ServerDefault
        );
        assert!(
            format!("{:#}", NatsSync::parse("never").expect_err("never"))
                .contains("STACK_NATS_SYNC=never")
        );
    }

    #[test]
    fn ha_ports_put_haproxy_on_the_pg_port_and_the_rest_above_the_base() {
        let ports = settings(26257, HA_PORT_BASE).ha_ports().expect("ports");
        assert_eq!(ports.haproxy, 26257);
        assert_eq!(ports.postgres, [26300, 26301, 26302]);
        assert_eq!(ports.patroni, [26303, 26304, 26305]);
        assert_eq!(ports.etcd_client, [26306, 26307, 26308]);
        assert_eq!(ports.etcd_peer, [26309, 26310, 26311]);
    }

    #[test]
    fn the_default_ha_block_misses_every_other_default_port() {
        let defaults = settings(26257, HA_PORT_BASE);
        let ha = defaults.ha_ports().expect("ports");
        for other in [
            defaults.nats_port,
            defaults.nats_http_port,
            defaults.eventstore_port,
            defaults.ordersvc_port,
            defaults.zipkin_port,
        ] {
            assert!(
                !ha.described().iter().any(|(_, port)| *port == other),
                "{other} is in the HA block"
            );
        }
    }

    #[test]
    fn a_base_whose_block_holds_the_pg_port_is_refused_naming_the_variables() {
        let error = settings(26305, HA_PORT_BASE)
            .ha_ports()
            .expect_err("overlap");
        assert!(
            format!("{error:#}").contains("STACK_HA_PORT_BASE"),
            "{error:#}"
        );
    }

    #[test]
    fn stack_env_records_the_profile_and_the_base() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("stack.env");
        settings(27000, 27100).save(&file).expect("save");
        let text = std::fs::read_to_string(&file).expect("read");
        assert!(
            text.contains("DB=ha\n") && text.contains("HA_PORT_BASE=27100\n"),
            "{text}"
        );
        let recorded = Settings::recorded(&file).expect("recorded");
        assert_eq!(recorded.db, Db::Ha);
        assert_eq!(recorded.ha_port_base, 27100);
        assert_eq!(recorded.pg_port, 27000);
    }

    #[test]
    fn stack_db_takes_single_or_ha_only() {
        assert_eq!(Db::parse("").expect("default"), Db::Single);
        assert_eq!(Db::parse("ha").expect("ha"), Db::Ha);
        assert!(format!("{:#}", Db::parse("HA").expect_err("case")).contains("STACK_DB=HA"));
    }
}
