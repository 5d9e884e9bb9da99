//! `flowtap.toml`: the flags of `flowtap run`, in a file. Each key is a long flag name and the
//! file becomes command-line arguments placed before the user's own, so the file can hold
//! exactly what the flags can (new flags included, with no list to keep in step) and every
//! value goes through the flag's own parser. Flags on the command line win over the file.

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use clap::{Arg, ArgAction, Command};
use toml::de::{DeTable, DeValue};

use crate::invoker;

/// Read, when present and no `--config` is given, from the directory flowtap runs in.
const DEFAULT_FILE: &str = "flowtap.toml";
/// The key of the command to launch (what follows `--` on the command line).
const COMMAND_KEY: &str = "command";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{location}: {message}")]
    Invalid { location: String, message: String },
}

/// `argv` with the config file's settings inserted after `run`: the file given by `--config`,
/// else `./flowtap.toml` when it exists. Other subcommands are left alone. `cli` is flowtap's
/// command line, whose `run` flags are the file's keys.
pub(super) fn apply(argv: Vec<OsString>, cli: &Command) -> Result<Vec<OsString>, ConfigError> {
    if argv.get(1).map(OsString::as_os_str) != Some(OsStr::new("run")) {
        return Ok(argv);
    }
    let user = UserArgs::of(&argv[2..]);
    let (path, text) = match &user.config {
        Some(path) => (path.clone(), read_given(path)?),
        None => match read_implicit()? {
            Some(text) => (PathBuf::from(DEFAULT_FILE), text),
            None => return Ok(argv),
        },
    };
    let run = cli
        .find_subcommand("run")
        .expect("flowtap has a run subcommand");
    let (options, command) = to_args(&text, &path.display().to_string(), &user, run)?;
    let mut result = argv[..2].to_vec();
    result.extend(options);
    result.extend(argv[2..].iter().cloned());
    if let Some(command) = command {
        // The file picks what runs, perhaps as root: the user sees it before it does.
        let shown: Vec<_> = command.iter().map(|arg| arg.to_string_lossy()).collect();
        eprintln!(
            "flowtap: launching the command of {}: {}",
            path.display(),
            shown.join(" ")
        );
        result.push("--".into());
        result.extend(command);
    }
    Ok(result)
}

/// The file `--config` names. Read with flowtap's privileges only when the user could read it
/// too: a parse error would show its contents.
fn read_given(path: &Path) -> Result<String, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() && !invoker::may_read(path) {
        return Err(read_error(std::io::Error::from(
            std::io::ErrorKind::PermissionDenied,
        )));
    }
    std::fs::read_to_string(path).map_err(read_error)
}

/// `./flowtap.toml`, when it exists and is trusted: owned by the invoking user or root and
/// writable by no one else. Otherwise it is ignored with a warning saying why, since anyone
/// able to write it could choose what flowtap runs and writes.
fn read_implicit() -> Result<Option<String>, ConfigError> {
    let path = Path::new(DEFAULT_FILE);
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    // The open file's own metadata: the file checked is the file read.
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Ok(None);
    }
    if let Some(reason) = untrusted(metadata.uid(), metadata.mode()) {
        eprintln!(
            "flowtap: warning: ignoring ./{DEFAULT_FILE}: {reason}; fix its owner or mode, or pass --config ./{DEFAULT_FILE} to use it anyway"
        );
        return Ok(None);
    }
    eprintln!("flowtap: reading settings from ./{DEFAULT_FILE}");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut &file, &mut text).map_err(read_error)?;
    Ok(Some(text))
}

/// Why a file with this owner and mode may not steer flowtap, if it may not.
fn untrusted(owner: u32, mode: u32) -> Option<String> {
    if !invoker::trusted_owner(owner) {
        return Some(format!("it is owned by uid {owner}, not by you or root"));
    }
    (mode & 0o022 != 0).then(|| {
        format!(
            "it is writable by group or others (mode {:o})",
            mode & 0o777
        )
    })
}

/// The arguments a config file's `text` stands for (options, then `--` and the command), or
/// the one-line message refusing it: the reader without the file system, for the fuzzer.
pub(super) fn text_to_args(text: &str, cli: &Command) -> Result<Vec<OsString>, String> {
    let run = cli
        .find_subcommand("run")
        .expect("flowtap has a run subcommand");
    let (mut options, command) =
        to_args(text, "fuzz.toml", &UserArgs::default(), run).map_err(|error| error.to_string())?;
    if let Some(command) = command {
        options.push("--".into());
        options.extend(command);
    }
    Ok(options)
}

/// What the user's own arguments (after `run`) set.
#[derive(Debug, Default)]
struct UserArgs {
    config: Option<PathBuf>,
    /// Long names of the flags given, and `command` when there is a `--`.
    given: Vec<String>,
}

impl UserArgs {
    fn of(args: &[OsString]) -> Self {
        let mut user = Self::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let arg = arg.to_string_lossy();
            if arg == "--" {
                user.given.push(COMMAND_KEY.to_string());
                break;
            }
            let Some(flag) = arg.strip_prefix("--") else {
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (flag, None),
            };
            if name == "config" {
                let value = inline.or_else(|| args.next().map(|v| v.to_string_lossy().into()));
                user.config = value.map(PathBuf::from);
            }
            user.given.push(name.to_string());
        }
        user
    }
}

/// The file's settings as arguments: the options, and the command to launch. A setting the
/// command line gives, or conflicts with (another target, say), is left out.
fn to_args(
    text: &str,
    file: &str,
    user: &UserArgs,
    run: &Command,
) -> Result<(Vec<OsString>, Option<Vec<OsString>>), ConfigError> {
    let at = |span: std::ops::Range<usize>| location(file, text, span.start);
    let table = DeTable::parse(text).map_err(|error| ConfigError::Invalid {
        location: at(error.span().unwrap_or(0..0)),
        message: first_line(error.message()),
    })?;
    let mut options = Vec::new();
    let mut command = None;
    let mut seen: Vec<&Arg> = Vec::new();
    // The table is sorted by key; conflicts are reported at the later line, as a reader expects.
    let mut entries: Vec<_> = table.get_ref().iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    for (key, value) in entries {
        let invalid = |span, message: String| ConfigError::Invalid {
            location: at(span),
            message,
        };
        let arg = find_arg(run, key.get_ref())
            .ok_or_else(|| invalid(key.span(), unknown_key(run, key.get_ref())))?;
        if let Some(other) = seen.iter().find(|other| conflict(run, arg, other)) {
            return Err(invalid(
                key.span(),
                format!(
                    "`{key}` cannot be used with `{}`",
                    key_of(other),
                    key = key.get_ref()
                ),
            ));
        }
        seen.push(arg);
        let values = values_of(arg, value.get_ref()).map_err(|expected| {
            invalid(
                value.span(),
                format!("`{}` expects {expected}", key.get_ref()),
            )
        })?;
        check_values(run, arg, &values).map_err(|message| invalid(value.span(), message))?;
        let overridden = user.given.iter().any(|given| {
            find_arg(run, given)
                .is_some_and(|a| a.get_id() == arg.get_id() || conflict(run, arg, a))
        });
        if overridden {
            continue;
        }
        if arg.is_last_set() {
            command = Some(values.into_iter().map(OsString::from).collect());
        } else {
            options.extend(as_flags(arg, values));
        }
    }
    Ok((options, command))
}

/// The `run` argument a key names: a long flag, or `command`. `config` itself cannot be set.
fn find_arg<'a>(run: &'a Command, key: &str) -> Option<&'a Arg> {
    run.get_arguments().find(|arg| {
        let long = arg
            .get_long()
            .is_some_and(|long| long == key && long != "config");
        long || (arg.is_last_set() && key == COMMAND_KEY)
    })
}

/// clap records a conflict on one side only (`pid` names `command`, not the reverse).
fn conflict(run: &Command, a: &Arg, b: &Arg) -> bool {
    run.get_arg_conflicts_with(a).contains(&b) || run.get_arg_conflicts_with(b).contains(&a)
}

fn key_of(arg: &Arg) -> String {
    arg.get_long()
        .map_or_else(|| COMMAND_KEY.to_string(), str::to_string)
}

fn unknown_key(run: &Command, key: &str) -> String {
    let dashed = key.replace('_', "-");
    if dashed != key && find_arg(run, &dashed).is_some() {
        return format!("unknown key `{key}`: did you mean `{dashed}`?");
    }
    format!(
        "unknown key `{key}`: keys are the long flags of `flowtap run` (see `flowtap run --help`), and `command`"
    )
}

/// The value as the flag's argument strings; on a wrong type, what was expected.
fn values_of(arg: &Arg, value: &DeValue) -> Result<Vec<String>, &'static str> {
    let switch = matches!(arg.get_action(), ArgAction::SetTrue);
    let many = matches!(arg.get_action(), ArgAction::Append) || arg.is_last_set();
    match value {
        DeValue::Boolean(on) if switch => Ok(if *on { vec![String::new()] } else { vec![] }),
        _ if switch => Err("true or false"),
        DeValue::Array(items) if many => items
            .iter()
            .map(|item| scalar(item.get_ref()).ok_or("an array of strings or numbers"))
            .collect(),
        _ if arg.is_last_set() => {
            Err("an array of strings, e.g. [\"./app\", \"--workers\", \"4\"]")
        }
        DeValue::Array(_) => Err("a single value, not an array"),
        value => scalar(value).map(|v| vec![v]).ok_or("a string or a number"),
    }
}

fn scalar(value: &DeValue) -> Option<String> {
    match value {
        DeValue::String(text) => Some(text.to_string()),
        DeValue::Integer(integer) => i128::from_str_radix(integer.as_str(), integer.radix())
            .ok()
            .map(|n| n.to_string()),
        DeValue::Float(float) => float.as_str().parse::<f64>().ok().map(|f| f.to_string()),
        _ => None,
    }
}

/// Runs the flag's own parser on the values, so that a bad value is reported at its place in
/// the file rather than as a command-line error.
fn check_values(run: &Command, arg: &Arg, values: &[String]) -> Result<(), String> {
    if arg.is_last_set() || matches!(arg.get_action(), ArgAction::SetTrue) {
        return Ok(());
    }
    let argv = std::iter::once("run".to_string())
        .chain(as_flags(arg, values.to_vec()).map(|a| a.into_string().unwrap_or_default()));
    match run.clone().try_get_matches_from(argv) {
        // A complaint about another flag comes from its environment variable: that is for the
        // command line's own parse to report.
        Err(error) if error.to_string().contains(&format!("--{}", key_of(arg))) => {
            Err(first_line(error.to_string().trim_start_matches("error: ")))
        }
        _ => Ok(()),
    }
}

fn as_flags(arg: &Arg, values: Vec<String>) -> impl Iterator<Item = OsString> + '_ {
    let flag = format!("--{}", key_of(arg));
    let switch = matches!(arg.get_action(), ArgAction::SetTrue);
    values.into_iter().flat_map(move |value| {
        let mut pair = vec![OsString::from(&flag)];
        if !switch {
            pair.push(value.into());
        }
        pair
    })
}

/// `file:line:column` (1-based, in characters) of byte `offset` of `text`.
fn location(file: &str, text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |last| last.chars().count())
        + 1;
    format!("{file}:{line}:{column}")
}

fn first_line(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn cli() -> Command {
        super::super::args::Cli::command()
    }

    fn args(text: &str, user: &[&str]) -> Result<Vec<String>, String> {
        let user = UserArgs::of(&user.iter().map(OsString::from).collect::<Vec<_>>());
        let cli = cli();
        let run = cli.find_subcommand("run").unwrap();
        let (options, command) = to_args(text, "f.toml", &user, run).map_err(|e| e.to_string())?;
        let mut all: Vec<String> = options
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        if let Some(command) = command {
            all.push("--".into());
            all.extend(command.into_iter().map(|a| a.into_string().unwrap()));
        }
        Ok(all)
    }

    #[test]
    fn every_type_of_flag_becomes_arguments() {
        let text = r#"
            pid = 4242
            duration = "5m"
            sample-rate = 0.25
            report = "json"
            symbols = ["wf_*", "libc.so.6:malloc"]
            empty-programs = true
            k8s-node = "node-a"
        "#;
        let expected = [
            "--pid",
            "4242",
            "--duration",
            "5m",
            "--sample-rate",
            "0.25",
            "--report",
            "json",
            "--symbols",
            "wf_*",
            "--symbols",
            "libc.so.6:malloc",
            "--empty-programs",
            "--k8s-node",
            "node-a",
        ];
        assert_eq!(args(text, &[]).unwrap(), expected);
    }

    #[test]
    fn false_switches_and_numbers_in_any_notation() {
        assert_eq!(
            args("empty-programs = false\npid = 0x10\nduration = 1_000", &[]).unwrap(),
            ["--pid", "16", "--duration", "1000"]
        );
    }

    #[test]
    fn the_command_goes_after_a_double_dash() {
        assert_eq!(
            args(
                "command = [\"./app\", \"--workers\", 4]\nreport = \"json\"",
                &[]
            )
            .unwrap(),
            ["--report", "json", "--", "./app", "--workers", "4"]
        );
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let text = "report = \"json\"\nsymbols = [\"wf_*\"]\npid = 1";
        // The same flag, given as `--flag value` or `--flag=value`.
        assert_eq!(
            args(text, &["--report", "table", "--symbols=x*"]).unwrap(),
            ["--pid", "1"]
        );
        // Another target on the command line replaces the file's.
        let rest = ["--report", "json", "--symbols", "wf_*"];
        assert_eq!(args(text, &["--exe", "/bin/app"]).unwrap(), rest);
        assert_eq!(args(text, &["--", "./other"]).unwrap(), rest);
        let launch = "report = \"json\"\ncommand = [\"./app\"]";
        assert_eq!(
            args(launch, &["--", "./other"]).unwrap(),
            ["--report", "json"]
        );
        assert_eq!(args(launch, &["--pid", "5"]).unwrap(), ["--report", "json"]);
    }

    #[test]
    fn errors_point_at_the_line_and_column() {
        let cases = [
            (
                "report = \"json\"\nreprot = \"table\"",
                "f.toml:2:1: unknown key `reprot`: keys are the long flags",
            ),
            (
                "sample_rate = 0.5",
                "f.toml:1:1: unknown key `sample_rate`: did you mean `sample-rate`?",
            ),
            (
                "config = \"other.toml\"",
                "f.toml:1:1: unknown key `config`",
            ),
            (
                "pid = \"abc\"",
                "f.toml:1:7: invalid value 'abc' for '--pid <PID>'",
            ),
            (
                "duration = \"soon\"",
                "f.toml:1:12: invalid value 'soon' for '--duration <DURATION>'",
            ),
            (
                "report = \"xml\"",
                "f.toml:1:10: invalid value 'xml' for '--report <REPORT>'",
            ),
            (
                "\n  empty-programs = \"yes\"",
                "f.toml:2:20: `empty-programs` expects true or false",
            ),
            (
                "report = [\"json\"]",
                "f.toml:1:10: `report` expects a single value, not an array",
            ),
            (
                "symbols = [{a = 1}]",
                "f.toml:1:11: `symbols` expects an array of strings or numbers",
            ),
            (
                "command = \"./app\"",
                "f.toml:1:11: `command` expects an array of strings",
            ),
            (
                "pid = 1\nexe = \"/bin/app\"",
                "f.toml:2:1: `exe` cannot be used with `pid`",
            ),
            (
                "report = \"json\"\nreport = \"table\"",
                "f.toml:2:1: duplicate key",
            ),
            ("report = \"json", "f.toml:1:15: invalid basic string"),
            ("[run]\npid = 1", "f.toml:1:2: unknown key `run`"),
        ];
        for (text, expected) in cases {
            let error = args(text, &[]).unwrap_err();
            assert!(error.starts_with(expected), "{text:?}: {error}");
            assert!(!error.contains('\n'), "{text:?}: {error}");
        }
    }

    #[test]
    fn the_config_flag_is_found_in_either_spelling() {
        let user =
            |args: &[&str]| UserArgs::of(&args.iter().map(OsString::from).collect::<Vec<_>>());
        assert_eq!(
            user(&["--config", "a.toml"]).config,
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            user(&["--config=b.toml", "--pid", "1"]).config,
            Some(PathBuf::from("b.toml"))
        );
        assert_eq!(user(&["--", "--config", "c.toml"]).config, None);
    }

    #[test]
    fn other_subcommands_and_runs_without_a_file_are_untouched() {
        let argv: Vec<OsString> = ["flowtap", "symbols", "--pid", "1", "--config", "x"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(apply(argv.clone(), &cli()).unwrap(), argv);
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let argv: Vec<OsString> = ["flowtap", "run", "--config", "/nonexistent/flowtap.toml"]
            .iter()
            .map(OsString::from)
            .collect();
        let error = apply(argv, &cli()).unwrap_err().to_string();
        assert!(
            error
                .starts_with("cannot read the config file /nonexistent/flowtap.toml: No such file"),
            "{error}"
        );
    }
}
