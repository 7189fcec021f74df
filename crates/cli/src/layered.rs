//! Where `ignition server`'s settings come from: a flag, else `IGNITION_<FLAG>` in the
//! environment, else the `--config` file, else the default. A list from a higher source
//! replaces the lower one whole.
//!
//! The flags are the one definition: the environment variable of every server flag is derived
//! from its long name, and a file's keys are the long names with `_` for `-`, each value
//! checked by the flag's own parser. The file's settings that no flag or variable overrides
//! are then handed to clap as if given on the command line, so the typed [`ServerArgs`] is
//! built exactly once, by clap, whatever the source.
//!
//! [`ServerArgs`]: crate::cmd_server::ServerArgs

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// The environment variable of a server flag: `IGNITION_` and its long name in upper case
/// with `_` for `-`.
pub(crate) fn env_name(long: &str) -> String {
    format!("IGNITION_{}", long.replace('-', "_").to_uppercase())
}

/// `ignition server` with `IGNITION_<FLAG>` on every flag but `--config`'s own... which has it
/// too: `IGNITION_CONFIG` names the file.
pub(crate) fn with_env(server: Command) -> Command {
    server.mut_args(|a| match a.get_long().map(env_name) {
        Some(env) if !matches!(a.get_action(), ArgAction::Help | ArgAction::Version) => a.env(env),
        _ => a,
    })
}

/// A configuration file that cannot be used; its message names the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {what}")]
pub(crate) struct ConfigError {
    file: String,
    what: String,
}

/// The command-line arguments with the file's settings added where no flag or environment
/// variable gave one. `matches` are the server's, parsed from `args`.
pub(crate) fn with_file_settings(
    server: &Command,
    matches: &ArgMatches,
    file: &Path,
    mut args: Vec<OsString>,
) -> Result<Vec<OsString>, ConfigError> {
    let err = |what: String| ConfigError {
        file: file.display().to_string(),
        what,
    };
    let text = std::fs::read_to_string(file).map_err(|e| err(format!("cannot read it: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| err(format!("not valid TOML: {}", one_line(e.message()))))?;
    // The key's value is checked alone, by the flag's own parser, without the environment.
    let plain = server.clone().mut_args(|a| a.env(None));
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = server
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
        else {
            return Err(err(format!("unknown key `{key}`")));
        };
        let words = words(arg, value).map_err(|what| err(format!("key `{key}`: {what}")))?;
        check(&plain, arg, &long, &words).map_err(|what| err(format!("key `{key}`: {what}")))?;
        let overridden = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if overridden {
            continue;
        }
        let flag = format!("--{long}");
        match arg.get_action() {
            ArgAction::SetTrue => {
                if words.first().is_some_and(|w| w == "true") {
                    args.push(flag.into());
                }
            }
            _ => {
                for w in words {
                    args.push(format!("{flag}={w}").into());
                }
            }
        }
    }
    Ok(args)
}

/// Parses `--long=word` (each word) with the server's parsers, so that a bad value is reported
/// against its key; what only the whole set can tell (flags that require each other) is left
/// to the full parse.
fn check(plain: &Command, arg: &Arg, long: &str, words: &[String]) -> Result<(), String> {
    use clap::error::ErrorKind;
    let mut argv = vec![OsString::from("server")];
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        if words.first().is_some_and(|w| w == "true") {
            argv.push(format!("--{long}").into());
        }
    } else {
        argv.extend(
            words
                .iter()
                .map(|w| OsString::from(format!("--{long}={w}"))),
        );
    }
    match plain.clone().try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::MissingRequiredArgument | ErrorKind::ArgumentConflict
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(one_line(&e.render().to_string())
            .trim_start_matches("error: ")
            .to_owned()),
    }
}

/// The value as the words a command line would carry.
fn words(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    let multiple = matches!(arg.get_action(), ArgAction::Append);
    let is_flag = matches!(arg.get_action(), ArgAction::SetTrue);
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(format!(
                "expected a single value, found {}",
                other.type_str()
            )),
        }
    };
    match value {
        toml::Value::Boolean(b) if is_flag => Ok(vec![b.to_string()]),
        _ if is_flag => Err(format!(
            "expected true or false, found {}",
            value.type_str()
        )),
        toml::Value::Array(items) if multiple => items.iter().map(scalar).collect(),
        toml::Value::Array(_) => Err("expected a single value, found an array".to_owned()),
        v if multiple => Ok(vec![scalar(v)?]),
        v => Ok(vec![scalar(v)?]),
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::cmd_server::ServerArgs;

    fn server() -> Command {
        with_env(ServerArgs::augment_args(Command::new("server")))
    }

    fn parse(file_text: &str, argv: &[&str]) -> Result<ServerArgs, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, file_text).unwrap();
        let cmd = server();
        let args: Vec<OsString> = std::iter::once("server")
            .chain(argv.iter().copied())
            .map(OsString::from)
            .collect();
        let m = cmd
            .clone()
            .try_get_matches_from(&args)
            .map_err(|e| e.to_string())?;
        let args = with_file_settings(&cmd, &m, &file, args).map_err(|e| e.to_string())?;
        let m = cmd.try_get_matches_from(&args).map_err(|e| e.to_string())?;
        ServerArgs::from_arg_matches(&m).map_err(|e| e.to_string())
    }

    use clap::Args as _;

    #[test]
    fn file_settings_apply_and_flags_win() {
        let a = parse(
            "listen = \"127.0.0.1:9999\"\ndev = true\nmax_vms = 8\npeers = [\"a:1\", \"b:2\"]\n",
            &["--max-vms", "3"],
        )
        .unwrap();
        let c = a.node_config().unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert!(c.api.dev);
        assert_eq!(c.worker.max_vms, 3, "the flag wins over the file");
        assert_eq!(c.cluster.peers, ["a:1", "b:2"]);
        let a = parse("peers = [\"a:1\", \"b:2\"]\n", &["--peers", "c:3"]).unwrap();
        assert_eq!(
            a.node_config().unwrap().cluster.peers,
            ["c:3"],
            "a list from a higher source replaces the file's whole"
        );
    }

    #[test]
    fn bad_files_name_the_file_and_the_key() {
        let e = parse("max_vms = \"many\"\n", &[]).unwrap_err();
        assert!(
            e.contains("config.toml") && e.contains("key `max_vms`"),
            "{e}"
        );
        let e = parse("no_such_thing = 1\n", &[]).unwrap_err();
        assert!(e.contains("unknown key `no_such_thing`"), "{e}");
        let e = parse("dev = \"yes\"\n", &[]).unwrap_err();
        assert!(
            e.contains("key `dev`") && e.contains("true or false"),
            "{e}"
        );
        let e = parse("listen = [\"a\"]\n", &[]).unwrap_err();
        assert!(e.contains("key `listen`"), "{e}");
        let e = parse("this is not toml", &[]).unwrap_err();
        assert!(e.contains("not valid TOML") && !e.contains('\n'), "{e}");
        let e = parse("config = \"other.toml\"\n", &[]).unwrap_err();
        assert!(e.contains("unknown key `config`"), "{e}");
    }

    #[test]
    fn every_server_flag_has_its_environment_variable() {
        let cmd = server();
        for a in cmd.get_arguments() {
            if let Some(long) = a.get_long() {
                if long == "help" {
                    continue;
                }
                let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
                assert_eq!(env, Some(env_name(long)), "--{long}");
            }
        }
        let _ = crate::Cli::command();
    }
}
