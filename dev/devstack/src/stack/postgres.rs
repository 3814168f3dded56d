//! The stack's PostgreSQL: initdb and pg_ctl in $STACK_DIR/pg, run as the postgres user when we
//! are root (testkit's PgTools).

use super::*;

impl Stack {
    pub(super) fn pg_running(&self, pg: &PgTools) -> bool {
        let dir = self.layout.pg_dir();
        dir.join("PG_VERSION").is_file()
            && pg
                .command(pg.pg_ctl(), &dir)
                .arg("status")
                .arg("-D")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
    }

    pub(super) fn pg_ready(&self, pg: &PgTools) -> bool {
        pg.is_ready(self.settings.pg_port, &self.layout.pg_dir())
            .unwrap_or(false)
    }

    /// The postmaster's pid and port, from postmaster.pid (lines 1 and 4).
    pub(super) fn postmaster(&self) -> (Option<u32>, Option<u16>) {
        let text = std::fs::read_to_string(self.layout.pg_dir().join("postmaster.pid"))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        (
            lines.first().and_then(|l| l.trim().parse().ok()),
            lines.get(3).and_then(|l| l.trim().parse().ok()),
        )
    }

    pub(super) fn record_pg_pid(&self) -> anyhow::Result<()> {
        if let (Some(pid), _) = self.postmaster() {
            record_pid(&self.layout, "postgresql", pid)?;
        }
        Ok(())
    }

    /// PostgreSQL runs as the postgres user when we are root: it must reach its folder.
    pub(super) fn check_postgres_enters(&self, pg: &PgTools) -> anyhow::Result<()> {
        if pg.run_as().is_none() {
            return Ok(());
        }
        let enters = pg
            .command(Path::new("test"), Path::new("/"))
            .arg("-x")
            .arg(&self.layout.dir)
            .status()
            .is_ok_and(|status| status.success());
        if !enters {
            bail!(
                "the postgres user cannot enter {}; make it and its parents traversable \
                 (chmod o+x) or choose another STACK_DIR",
                self.layout.dir.display()
            );
        }
        Ok(())
    }

    pub(super) fn start_pg(&mut self, pg: &PgTools, started: &Started) -> anyhow::Result<()> {
        if let Some(refusal) = ha::other_profile(&self.layout, Db::Single) {
            bail!("{refusal}");
        }
        let dir = self.layout.pg_dir();
        if self.pg_running(pg) {
            self.record_pg_pid()?;
            // The port it really listens on, whatever was asked for now.
            if let (_, Some(port)) = self.postmaster() {
                self.settings.pg_port = port;
            }
            println!(
                "PostgreSQL of this stack is already running on port {}: using it",
                self.settings.pg_port
            );
            return Ok(());
        }
        let port = self.settings.pg_port;
        if port_listening(port) {
            return Err(port_taken(port, "PostgreSQL", "STACK_PG_PORT"));
        }
        let owner = pg.run_as();
        self.check_postgres_enters(pg)?;
        if !dir.join("PG_VERSION").is_file() {
            let not_empty = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
            if not_empty {
                bail!(
                    "{} is not empty but holds no PostgreSQL cluster; remove it and start again",
                    dir.display()
                );
            }
            step(&format!(
                "creating a PostgreSQL cluster in {}",
                dir.display()
            ));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
            }
            let log = self.layout.log("initdb");
            let file = std::fs::File::create(&log)?;
            let status = pg
                .command(pg.initdb(), &dir)
                .arg("-D")
                .arg(&dir)
                .args(PgTools::INITDB_ARGS)
                .stdout(file.try_clone()?)
                .stderr(file)
                .status()
                .with_context(|| format!("running {}", pg.initdb().display()))?;
            if !status.success() {
                return Err(died("initdb", "failed", &log));
            }
        }
        let log = self.layout.log("postgresql");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&log, Some(uid), Some(gid))?;
        }
        step(&format!("starting PostgreSQL on 127.0.0.1:{port}"));
        let options = PgTools::server_options(port, &dir, "-c max_connections=200");
        let status = started.launch("postgresql", || {
            pg.command(pg.pg_ctl(), &dir)
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(&dir)
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(options)
                .stdout(Stdio::null())
                .status()
                .with_context(|| format!("running {}", pg.pg_ctl().display()))
        })?;
        if !status.success() {
            return Err(died("postgresql", "did not start", &log));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.pg_ready(pg) {
            if Instant::now() >= deadline {
                return Err(died("postgresql", "does not accept connections", &log));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.record_pg_pid()
    }
}
