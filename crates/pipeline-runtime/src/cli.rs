//! A binary's configuration as its command line alone gives it, whatever the environment holds.
//!
//! Each service's defaults are written once, in its clap attributes. The constructors that tests and
//! embedders call (`Config::new`, `TelemetryConfig::default`, ...) take them from there through these
//! functions instead of repeating them, so a default changed on the command line is changed
//! everywhere. Every environment lookup is switched off, so a variable set where a test runs (a
//! `NATS_URL` in CI, say) can never leak into a configuration built in code.

use std::ffi::OsString;

use clap::{Args, CommandFactory, FromArgMatches, Parser};

/// What `T`'s command line makes of `args` (the binary's name first) with every environment lookup
/// switched off: the configuration a process would get in an empty environment.
pub fn parse_without_env<T, I, S>(args: I) -> Result<T, clap::Error>
where
    T: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = S>,
    S: Into<OsString> + Clone,
{
    let matches = without_env(T::command()).try_get_matches_from(args)?;
    T::from_arg_matches(&matches)
}

/// `T`'s defaults: its command line without arguments, as in an empty environment.
///
/// # Panics
///
/// When a default does not parse: a mistake in `T`'s attributes, not in anything a user gives,
/// which each service's test `new_is_the_command_line_with_only_the_endpoints_given` finds first.
pub fn defaults<T: CommandFactory + FromArgMatches>() -> T {
    let name = T::command().get_name().to_owned();
    match parse_without_env::<T, _, _>([name.as_str()]) {
        Ok(defaults) => defaults,
        Err(err) => panic!("the defaults of {name}'s command line do not parse: {err}"),
    }
}

/// The defaults of a group of arguments that binaries flatten into their configuration.
///
/// # Panics
///
/// When a default does not parse, as [`defaults`].
pub fn arg_defaults<A: Args>() -> A {
    defaults::<Only<A>>().args
}

/// Whether `built` (a service's `Config::new`) is `parsed` (what its command line makes of the same
/// endpoints alone): `Debug` shows every field but the secrets, so those `secrets` names are compared
/// on their own. For each service's test that its constructor keeps the command line's defaults.
#[cfg(any(test, feature = "test-util"))]
pub fn same_config<T: std::fmt::Debug>(
    built: &T,
    parsed: &T,
    secrets: impl Fn(&T) -> Vec<Option<&secrecy::SecretString>>,
) -> Result<(), String> {
    use secrecy::ExposeSecret as _;

    let (built_debug, parsed_debug) = (format!("{built:?}"), format!("{parsed:?}"));
    if built_debug != parsed_debug {
        return Err(format!("built:  {built_debug}\nparsed: {parsed_debug}"));
    }
    let exposed = |config: &T| {
        secrets(config)
            .into_iter()
            .map(|secret| secret.map(|s| s.expose_secret().to_owned()))
            .collect::<Vec<_>>()
    };
    // Which secret differs, never its value: the message may end up in a CI log.
    match exposed(built)
        .iter()
        .zip(exposed(parsed))
        .position(|(a, b)| *a != b)
    {
        Some(index) => Err(format!("secret #{index} differs")),
        None => Ok(()),
    }
}

/// A command line of nothing but `A`.
#[derive(Parser)]
#[command(name = "args")]
struct Only<A: Args> {
    #[command(flatten)]
    args: A,
}

/// `command` (and its subcommands) reading no environment variable.
fn without_env(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| arg.env(None::<&str>))
        .mut_subcommands(without_env)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `PATH`, which every process that runs these tests has set.
    #[derive(Debug, Parser)]
    #[command(name = "path")]
    struct ReadsPath {
        #[arg(long, env = "PATH", default_value = "unset")]
        path: String,
        #[command(subcommand)]
        command: Option<Sub>,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Nested {
            #[arg(long, env = "PATH", default_value = "unset")]
            nested_path: String,
        },
    }

    #[test]
    fn a_variable_set_in_the_environment_is_not_read() {
        assert!(
            std::env::var_os("PATH").is_some(),
            "the test needs PATH set"
        );
        let read = ReadsPath::try_parse_from(["path"]).expect("parses");
        assert_ne!(read.path, "unset", "clap reads PATH when asked to");
        let defaults: ReadsPath = defaults();
        assert_eq!(defaults.path, "unset");
        let nested: ReadsPath = parse_without_env(["path", "nested"]).expect("parses");
        assert!(
            matches!(nested.command, Some(Sub::Nested { ref nested_path }) if nested_path == "unset"),
            "{nested:?}"
        );
    }

    #[test]
    fn flags_given_still_count() {
        let given: ReadsPath = parse_without_env(["path", "--path=/bin"]).expect("parses");
        assert_eq!(given.path, "/bin");
        let refused = parse_without_env::<ReadsPath, _, _>(["path", "--nope"]);
        assert!(refused.is_err());
    }

    #[derive(Debug, Args)]
    struct Group {
        #[arg(long, env = "PATH", default_value_t = 7)]
        seven: u8,
    }

    #[derive(Debug)]
    struct WithSecret {
        #[expect(dead_code, reason = "read through Debug, which same_config compares")]
        shown: u8,
        hidden: secrecy::SecretString,
    }

    impl WithSecret {
        fn new(shown: u8, hidden: &str) -> Self {
            Self {
                shown,
                hidden: hidden.into(),
            }
        }
    }

    #[test]
    fn configurations_are_the_same_only_when_fields_and_secrets_agree() {
        fn secrets(c: &WithSecret) -> Vec<Option<&secrecy::SecretString>> {
            vec![Some(&c.hidden)]
        }
        let one = WithSecret::new(1, "pw");
        assert_eq!(
            same_config(&one, &WithSecret::new(1, "pw"), secrets),
            Ok(())
        );
        assert!(same_config(&one, &WithSecret::new(2, "pw"), secrets).is_err());
        let differs = same_config(&one, &WithSecret::new(1, "other"), secrets);
        assert_eq!(differs, Err("secret #0 differs".to_owned()));
    }

    #[test]
    fn a_flattened_group_gets_its_own_defaults() {
        let group: Group = arg_defaults();
        assert_eq!(group.seven, 7);
    }
}
