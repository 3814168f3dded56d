//! A login role per bounded context, owner of its database, and nobody else let in.
//!
//! The statements are the subset PostgreSQL 15 and CockroachDB both accept: no `IF NOT EXISTS` on
//! roles (PostgreSQL lacks it), existence read from `pg_roles`, privileges from the
//! `has_*_privilege` functions, ownership changed with `ALTER … OWNER TO`.

use std::fmt;

use anyhow::Context as _;
use percent_encoding::percent_decode_str;
use pipeline_runtime::db;
use sqlx::PgConnection;

use crate::Outcome;

/// SQLSTATE `duplicate_object`: another bootstrapper created the role between our check and ours.
const DUPLICATE_OBJECT: &str = "42710";

/// A login role named by the user of a database URL, with the URL's password if it has one.
#[derive(Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    password: Option<String>,
}

// The password never reaches a log or a message.
impl fmt::Debug for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Role")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Role {
    /// The role of `url`'s user. The name must be one both engines take unquoted and unchanged.
    pub fn from_url(url: &str) -> anyhow::Result<Role> {
        let parsed = url::Url::parse(url)
            .with_context(|| format!("invalid database URL {}", db::redact(url)))?;
        let name = percent_decode_str(parsed.username())
            .decode_utf8()
            .with_context(|| format!("the user of {} is not UTF-8", db::redact(url)))?
            .into_owned();
        check_role_name(&name).with_context(|| format!("in {}", db::redact(url)))?;
        let password = match parsed.password() {
            Some(encoded) => {
                let password = percent_decode_str(encoded)
                    .decode_utf8()
                    .with_context(|| format!("the password in {} is not UTF-8", db::redact(url)))?
                    .into_owned();
                anyhow::ensure!(
                    !password.contains('\0'),
                    "the password in {} holds a NUL character",
                    db::redact(url)
                );
                Some(password)
            }
            None => None,
        };
        Ok(Role { name, password })
    }
}

/// Refuses role names that would need quoting, that CockroachDB would fold to another name, or that
/// the engines reserve.
pub fn check_role_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let well_formed = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63;
    anyhow::ensure!(
        well_formed,
        "user {name:?} cannot be a role: use lowercase ASCII letters, digits and '_' (at most 63, not starting with a digit)"
    );
    let reserved = [
        "public",
        "none",
        "current_user",
        "session_user",
        "current_role",
    ]
    .contains(&name)
        || name.starts_with("pg_")
        || name.starts_with("crdb_");
    anyhow::ensure!(!reserved, "user {name:?} is a name the database reserves");
    Ok(())
}

/// `"name"`: every name this module quotes is checked or read from the catalog, and a `"` inside
/// is doubled, so it cannot end the identifier early.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `E'text'` with `\` and `'` escaped: the same on both engines whatever
/// `standard_conforming_strings` says.
fn literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// Creates `role` (LOGIN, the URL's password if any) unless it exists; an existing role without
/// LOGIN gets it. An existing role's password is left alone: a password changed in the URL has to
/// be set with `ALTER ROLE … PASSWORD` (the bootstrapper cannot read the stored one to compare).
///
/// `conn` is the administrator's, with statement logging off: the statement holds the password.
pub async fn ensure_role(conn: &mut PgConnection, role: &Role) -> Result<Outcome, sqlx::Error> {
    let can_login: Option<bool> =
        sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
            .bind(&role.name)
            .fetch_optional(&mut *conn)
            .await?;
    match can_login {
        Some(true) => Ok(Outcome::Unchanged),
        Some(false) => {
            sqlx::raw_sql(&format!("ALTER ROLE {} LOGIN", ident(&role.name)))
                .execute(&mut *conn)
                .await?;
            Ok(Outcome::Updated)
        }
        None => {
            let mut statement = format!("CREATE ROLE {} LOGIN", ident(&role.name));
            if let Some(password) = &role.password {
                statement.push_str(" PASSWORD ");
                statement.push_str(&literal(password));
            }
            match sqlx::raw_sql(&statement).execute(&mut *conn).await {
                Ok(_) => Ok(Outcome::Created),
                Err(err) if db::sqlstate(&err).as_deref() == Some(DUPLICATE_OBJECT) => {
                    Ok(Outcome::Unchanged)
                }
                Err(err) => Err(err),
            }
        }
    }
}

/// Who may use one context's database.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub database: &'a str,
    /// The context's role, or `None` when the context connects as the administrator.
    pub owner: Option<&'a str>,
    /// Roles that may connect and read (ordersvc and deadlinewatcher on ordersdb).
    pub readers: &'a [&'a str],
}

/// Brings `access.database` in line: the context's role owns the database and every table of its
/// `public` schema (tables made before the role existed, by an administrator, change hands), PUBLIC
/// may not connect (so one context's role is refused on another's database), and the readers may.
///
/// `conn` is the administrator's, connected to `access.database`.
pub async fn ensure_access(
    conn: &mut PgConnection,
    access: Access<'_>,
) -> Result<Outcome, sqlx::Error> {
    let mut outcome = Outcome::Unchanged;
    let database = ident(access.database);
    if let Some(owner) = access.owner {
        let current: Option<String> = sqlx::query_scalar(
            "SELECT r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba \
             WHERE d.datname = $1",
        )
        .bind(access.database)
        .fetch_optional(&mut *conn)
        .await?;
        if current.as_deref() != Some(owner) {
            let statement = format!("ALTER DATABASE {database} OWNER TO {}", ident(owner));
            sqlx::raw_sql(&statement).execute(&mut *conn).await?;
            outcome = Outcome::Updated;
        }
        let foreign: Vec<String> = sqlx::query_scalar(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner <> $1 \
             ORDER BY tablename",
        )
        .bind(owner)
        .fetch_all(&mut *conn)
        .await?;
        for table in foreign {
            let statement = format!(
                "ALTER TABLE public.{} OWNER TO {}",
                ident(&table),
                ident(owner)
            );
            sqlx::raw_sql(&statement).execute(&mut *conn).await?;
            outcome = Outcome::Updated;
        }
    }
    let public_connects: bool =
        sqlx::query_scalar("SELECT has_database_privilege('public', $1, 'CONNECT')")
            .bind(access.database)
            .fetch_one(&mut *conn)
            .await?;
    if public_connects {
        let statement = format!("REVOKE CONNECT ON DATABASE {database} FROM PUBLIC");
        sqlx::raw_sql(&statement).execute(&mut *conn).await?;
        outcome = Outcome::Updated;
    }
    for &reader in access.readers {
        let reader_connects: bool =
            sqlx::query_scalar("SELECT has_database_privilege($1, $2, 'CONNECT')")
                .bind(reader)
                .bind(access.database)
                .fetch_one(&mut *conn)
                .await?;
        if !reader_connects {
            let statement = format!("GRANT CONNECT ON DATABASE {database} TO {}", ident(reader));
            sqlx::raw_sql(&statement).execute(&mut *conn).await?;
            outcome = Outcome::Updated;
        }
    }
    Ok(outcome)
}

/// Lets `reader` read every table of the `public` schema (but `_sqlx_migrations`), or only those of
/// `only`, and nothing more. Run after the migrations, so tables a new migration adds are granted
/// on the next run.
///
/// `conn` is the administrator's (or the owner's), connected to the reader's database.
pub async fn ensure_reads(
    conn: &mut PgConnection,
    reader: &str,
    only: Option<&[&str]>,
) -> Result<Outcome, sqlx::Error> {
    let mut outcome = Outcome::Unchanged;
    let uses_schema: bool =
        sqlx::query_scalar("SELECT has_schema_privilege($1, 'public', 'USAGE')")
            .bind(reader)
            .fetch_one(&mut *conn)
            .await?;
    if !uses_schema {
        let statement = format!("GRANT USAGE ON SCHEMA public TO {}", ident(reader));
        sqlx::raw_sql(&statement).execute(&mut *conn).await?;
        outcome = Outcome::Updated;
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' \
         AND tablename <> '_sqlx_migrations' ORDER BY tablename",
    )
    .fetch_all(&mut *conn)
    .await?;
    let tables = tables
        .into_iter()
        .filter(|table| only.is_none_or(|only| only.contains(&table.as_str())));
    for table in tables {
        // One query per table: in a filter, the planner may call the function on other schemas' rows.
        let readable: bool = sqlx::query_scalar("SELECT has_table_privilege($1, $2, 'SELECT')")
            .bind(reader)
            .bind(format!("public.{}", ident(&table)))
            .fetch_one(&mut *conn)
            .await?;
        if readable {
            continue;
        }
        let statement = format!(
            "GRANT SELECT ON TABLE public.{} TO {}",
            ident(&table),
            ident(reader)
        );
        sqlx::raw_sql(&statement).execute(&mut *conn).await?;
        outcome = Outcome::Updated;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_and_password_come_from_the_url() {
        let role =
            Role::from_url("postgresql://orders:p%40ss%27w@h:26257/ordersdb").expect("valid");
        assert_eq!(role.name, "orders");
        assert_eq!(role.password.as_deref(), Some("p@ss'w"));
        assert!(!format!("{role:?}").contains("p@ss"), "{role:?}");
    }

    #[test]
    fn names_that_need_quoting_or_are_reserved_are_refused() {
        for name in [
            "Orders",
            "1orders",
            "or-ders",
            "public",
            "pg_orders",
            "crdb_x",
            "",
        ] {
            assert!(check_role_name(name).is_err(), "{name:?}");
        }
        for name in ["orders", "_x", "payments_2"] {
            check_role_name(name).unwrap_or_else(|err| panic!("{name}: {err}"));
        }
    }

    #[test]
    fn passwords_are_quoted_as_one_literal() {
        assert_eq!(literal(r"a'b\c"), r"E'a''b\\c'");
        assert_eq!(ident(r#"a"b"#), r#""a""b""#);
    }
}
