//! `converge logs ID [-f] [--container NAME] [--tail N]`: a sandbox's container logs (and
//! converge's lifecycle events) read from this node's log directory.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::SecondsFormat;
use converge_reconcilers::logs::{
    EVENTS_FILE, LifecycleEvent, LogError, LogReader, Record, Stream,
};
use converge_watch::entity::is_valid_name;
use converge_watch::{EntityId, Kind};
use futures::StreamExt;

/// How often `-f` looks for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Arguments of `converge logs`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// The sandbox, such as `sandbox/web` or `web`.
    pub id: String,
    /// Keep printing new records until Ctrl-C.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only this container (and the sandbox's events about it).
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,
    /// Only the last N records.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// converge's data directory on this node (logs live in `<data-dir>/logs/<sandbox>`).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/converge")]
    pub data_dir: PathBuf,
    /// Prefix each line with its RFC 3339 time.
    #[arg(long)]
    pub timestamps: bool,
}

/// Why `converge logs` failed.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// The ID is not a sandbox.
    #[error("{0}")]
    BadTarget(String),
    /// Nothing logged for this sandbox on this node.
    #[error("no logs for sandbox/{name} on this node (looked in {})", dir.display())]
    NoLogs {
        /// The sandbox name.
        name: String,
        /// Where we looked.
        dir: PathBuf,
    },
    /// `--container` names no container with logs.
    #[error("sandbox/{sandbox} has no logs for container {container:?} (has: {known})")]
    NoContainer {
        /// The sandbox name.
        sandbox: String,
        /// The container asked for.
        container: String,
        /// The containers that do have logs.
        known: String,
    },
    /// A log file could not be read.
    #[error(transparent)]
    Read(#[from] LogError),
    /// The log directory could not be listed.
    #[error("cannot list {}", dir.display())]
    List {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Standard output failed (other than a closed pipe, which ends quietly).
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}

/// One log to print: a container's, or the events file (label `None`).
struct Source {
    container: Option<String>,
    reader: LogReader,
}

/// Runs `logs`: prints the last `--tail` records of the sandbox's containers merged by
/// time (each line prefixed `[container]` unless `--container` is given), then with `-f`
/// follows until Ctrl-C. Fails with a clear error and prints nothing when the sandbox has
/// no logs here or `--container` has none.
pub async fn run(args: &LogsArgs) -> Result<(), LogsError> {
    let name = sandbox_name(&args.id)?;
    let dir = args.data_dir.join("logs").join(&name);
    let containers = containers_with_logs(&dir, &name)?;
    if let Some(c) = &args.container
        && !containers.contains(c)
    {
        return Err(LogsError::NoContainer {
            sandbox: name,
            container: c.clone(),
            known: containers.into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    let mut sources: Vec<Source> = containers
        .iter()
        .filter(|c| args.container.as_ref().is_none_or(|want| want == *c))
        .map(|c| Source {
            container: Some(c.clone()),
            reader: LogReader::new(dir.join(format!("{c}.log"))),
        })
        .collect();
    sources.push(Source {
        container: None,
        reader: LogReader::new(dir.join(EVENTS_FILE)),
    });
    let show = |record: &Record, source: &Source| -> Option<String> {
        line(record, source.container.as_deref(), args, &name)
    };

    let mut merged = Vec::new();
    let mut cursors = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        let tail = source.reader.tail(args.tail)?;
        merged.extend(tail.records.into_iter().map(|r| (i, r)));
        cursors.push(tail.cursor);
    }
    merged.sort_by_key(|(_, r)| r.time);
    let mut lines: Vec<String> = merged
        .iter()
        .filter_map(|(i, r)| show(r, &sources[*i]))
        .collect();
    if let Some(n) = args.tail {
        lines.drain(..lines.len().saturating_sub(n));
    }
    let mut out = std::io::stdout().lock();
    if !write_lines(&mut out, &lines)? || !args.follow {
        return Ok(());
    }
    drop(out);

    let streams = sources.iter().enumerate().map(|(i, s)| {
        s.reader
            .follow(cursors[i], FOLLOW_POLL)
            .map(move |r| (i, r))
            .boxed()
    });
    let mut all = futures::stream::select_all(streams);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            next = all.next() => {
                let Some((i, record)) = next else { return Ok(()) };
                let record = record?;
                if let Some(text) = show(&record, &sources[i]) {
                    let mut out = std::io::stdout().lock();
                    if !write_lines(&mut out, &[text])? {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Writes and flushes `lines`; false when stdout was closed (`| head`).
fn write_lines(out: &mut impl Write, lines: &[String]) -> Result<bool, LogsError> {
    let result = lines
        .iter()
        .try_for_each(|l| writeln!(out, "{l}"))
        .and_then(|()| out.flush());
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(LogsError::Output(e)),
    }
}

/// The printed form of `record` from `container` (`None` = the events file), or `None`
/// when `--container` filters it out.
fn line(
    record: &Record,
    container: Option<&str>,
    args: &LogsArgs,
    sandbox: &str,
) -> Option<String> {
    let (label, text) = match container {
        Some(c) => (
            c.to_string(),
            match record.stream {
                Stream::Converge => format!("converge: {}", record.text),
                _ => record.text.clone(),
            },
        ),
        None => {
            let event = LifecycleEvent::from_record(record)?;
            if let Some(want) = &args.container
                && event.subject != *want
                && event.subject != sandbox
            {
                return None;
            }
            (event.subject, format!("converge: {}", event.message))
        }
    };
    let mut out = String::new();
    if args.timestamps {
        out.push_str(&record.time.to_rfc3339_opts(SecondsFormat::Nanos, true));
        out.push(' ');
    }
    if args.container.is_none() {
        out.push_str(&format!("[{label}] "));
    }
    out.push_str(&text);
    Some(out)
}

/// The sandbox name in `sandbox/NAME` or `NAME`; anything else is refused.
fn sandbox_name(id: &str) -> Result<String, LogsError> {
    if id.contains('/') {
        let id: EntityId = id
            .parse()
            .map_err(|e: converge_watch::IdError| LogsError::BadTarget(e.to_string()))?;
        if id.kind() != Kind::Sandbox {
            return Err(LogsError::BadTarget(format!(
                "{id} is not a sandbox: only sandboxes have logs"
            )));
        }
        return Ok(id.name().to_string());
    }
    if !is_valid_name(id) {
        return Err(LogsError::BadTarget(format!(
            "{id:?} is not a sandbox name"
        )));
    }
    Ok(id.to_string())
}

/// The containers of `dir` with a log (current or rotated). Fails with `NoLogs` when the
/// directory does not exist or holds neither logs nor events.
fn containers_with_logs(dir: &Path, name: &str) -> Result<BTreeSet<String>, LogsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LogsError::NoLogs {
                name: name.to_string(),
                dir: dir.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(LogsError::List {
                dir: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut containers = BTreeSet::new();
    let mut events = false;
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if file == EVENTS_FILE || file.starts_with(&format!("{EVENTS_FILE}.")) {
            events = true;
            continue;
        }
        // `<container>.log` or a rotated `<container>.log.<n>`.
        if let Some((stem, rest)) = file.rsplit_once(".log")
            && (rest.is_empty()
                || rest
                    .strip_prefix('.')
                    .is_some_and(|n| n.parse::<u32>().is_ok()))
            && is_valid_name(stem)
        {
            containers.insert(stem.to_string());
        }
    }
    if containers.is_empty() && !events {
        return Err(LogsError::NoLogs {
            name: name.to_string(),
            dir: dir.to_path_buf(),
        });
    }
    Ok(containers)
}
