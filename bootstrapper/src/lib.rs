#![doc = include_str!("../README.md")]

use std::fmt;

use anyhow::Context as _;
use pipeline_runtime::{db, nats};

pub mod config;
pub mod jetstream;
pub mod plan;
pub mod roles;
pub mod sql;

pub use config::Config;
pub use jetstream::{ensure_consumers, ensure_stream, ensure_stream_config, ensure_streams};
pub use pipeline_runtime::stream::{dead_letter_stream_config, orders_stream_config};
pub use plan::{Context, Reader, Target};
pub use roles::Role;
pub use sql::{ensure_database, migrate};

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The thing did not exist and was created.
    Created,
    /// The thing existed with another configuration and was brought in line.
    Updated,
    /// This many migrations were applied (at least one).
    Migrated(usize),
    /// Nothing to do.
    Unchanged,
}

impl Outcome {
    /// The more significant of two outcomes, for a step made of several: any creation, else any
    /// migration or update, else unchanged.
    pub fn max(self, other: Outcome) -> Outcome {
        fn rank(outcome: Outcome) -> u8 {
            match outcome {
                Outcome::Unchanged => 0,
                Outcome::Updated | Outcome::Migrated(_) => 1,
                Outcome::Created => 2,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Created => f.write_str("created"),
            Outcome::Updated => f.write_str("updated"),
            Outcome::Migrated(1) => f.write_str("1 migration applied"),
            Outcome::Migrated(n) => write!(f, "{n} migrations applied"),
            Outcome::Unchanged => f.write_str("unchanged"),
        }
    }
}

/// One thing the bootstrapper looked after, e.g. `database eventstoredb` or `stream ORDERS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub outcome: Outcome,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.outcome)
    }
}

/// Every step of a run, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub steps: Vec<Step>,
}

impl Report {
    /// The outcome of the step called `name`, if it ran.
    pub fn outcome(&self, name: &str) -> Option<Outcome> {
        self.steps
            .iter()
            .find(|step| step.name == name)
            .map(|step| step.outcome)
    }

    /// True if the run changed nothing: what a second run must report.
    pub fn all_unchanged(&self) -> bool {
        self.steps
            .iter()
            .all(|step| step.outcome == Outcome::Unchanged)
    }
}

/// Does everything: databases, roles, access, migrations, read grants, streams and consumers.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    run_with(config, |_| {}).await
}

/// [`run`], calling `on_step` as each step completes (the binary prints them as they happen).
pub async fn run_with(config: &Config, mut on_step: impl FnMut(&Step)) -> anyhow::Result<Report> {
    config.validate()?;
    let mut report = Report::default();
    let mut record = |name: String, outcome: Outcome| {
        let step = Step { name, outcome };
        on_step(&step);
        report.steps.push(step);
    };
    let timeout = config.connect_timeout();

    if !config.skip_sql {
        let targets = plan::targets(config)?;
        let readers = plan::orders_readers(config, &targets)?;
        for target in &targets {
            let outcome = sql::ensure_target_database(target, timeout).await?;
            record(format!("database {}", target.database), outcome);
        }
        // Roles belong to the whole server: each once, created by the first context that names it.
        let mut roles: Vec<(&plan::Target, &Role)> = Vec::new();
        for target in &targets {
            if let Some(role) = &target.role
                && !roles.iter().any(|(_, seen)| seen.name == role.name)
            {
                roles.push((target, role));
            }
        }
        let orders = targets
            .iter()
            .find(|target| target.context == Context::Orders)
            .context("no orders database")?;
        for reader in &readers {
            roles.push((orders, &reader.role));
        }
        for (target, role) in roles {
            let outcome = sql::ensure_role(target, role, timeout).await?;
            record(format!("role {}", role.name), outcome);
        }
        // Before the migrations, so that they run as the role on tables it owns.
        for target in &targets {
            let names: Vec<&str> = readers
                .iter()
                .filter(|_| target.context == Context::Orders)
                .map(|reader| reader.role.name.as_str())
                .collect();
            let outcome = sql::ensure_access(target, &names, timeout).await?;
            record(format!("access {}", target.database), outcome);
        }
        for target in &targets {
            let pool = db::lazy_pool(target.url(), 1, timeout)?;
            let outcome = migrate(target.context, &pool)
                .await
                .with_context(|| format!("at {}", db::redact(target.url())));
            pool.close().await;
            record(format!("migrations {}", target.context), outcome?);
        }
        // After the migrations, so that tables they added are readable too.
        for reader in &readers {
            let outcome = sql::ensure_reads(orders, reader, timeout).await?;
            record(format!("grants {}", reader.role.name), outcome);
        }
    }

    if !config.skip_nats {
        let js = connect_jetstream(&config.nats, timeout).await?;
        for (name, outcome) in ensure_streams(&js, usize::from(config.replicas)).await? {
            record(format!("stream {name}"), outcome);
        }
        for (name, outcome) in ensure_consumers(&js).await? {
            record(format!("consumer {name}"), outcome);
        }
    }
    Ok(report)
}

/// Connects to NATS and opens its JetStream API; the error names the servers and the user, without
/// passwords.
pub async fn connect_jetstream(
    args: &nats::NatsArgs,
    timeout: std::time::Duration,
) -> anyhow::Result<async_nats::jetstream::Context> {
    let client = nats::connect(args, "bootstrapper", timeout).await?;
    Ok(async_nats::jetstream::new(client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_creation_outweighs_an_update() {
        assert_eq!(Outcome::Updated.max(Outcome::Created), Outcome::Created);
        assert_eq!(Outcome::Created.max(Outcome::Unchanged), Outcome::Created);
        assert_eq!(Outcome::Unchanged.max(Outcome::Updated), Outcome::Updated);
        assert_eq!(
            Outcome::Unchanged.max(Outcome::Unchanged),
            Outcome::Unchanged
        );
    }

    #[test]
    fn steps_read_as_one_line() {
        let step = Step {
            name: "stream ORDERS".into(),
            outcome: Outcome::Unchanged,
        };
        assert_eq!(step.to_string(), "stream ORDERS: unchanged");
        assert_eq!(Outcome::Migrated(2).to_string(), "2 migrations applied");
    }
}
