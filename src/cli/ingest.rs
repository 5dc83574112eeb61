//! `hydromesh ingest`: send readings from a CSV or JSON-lines file (or stdin) to a node, and
//! report what was accepted, de-duplicated or rejected, line by line.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

use hydromesh_proto::limits::MAX_BATCH_READINGS;

use super::{PeerArgs, EXIT_ERROR, EXIT_REFUSED};
use crate::present::input::{Format, Readings};
use crate::present::report::Report;

/// `hydromesh ingest` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    peer: PeerArgs,
    /// The file to send (`-` for stdin): CSV with the header `meter,ts,litres[,flow_lph][,alarms]`,
    /// or JSON lines.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Input format (default: from the file name: .jsonl/.ndjson is JSON lines, else CSV).
    #[arg(long, value_parser = parse_format)]
    format: Option<Format>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Readings per request.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=MAX_BATCH_READINGS as u64))]
    batch_size: u64,
    /// Requests awaiting acknowledgement at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    window: u64,
}

fn parse_format(text: &str) -> Result<Format, String> {
    match text {
        "csv" => Ok(Format::Csv),
        "jsonl" | "ndjson" => Ok(Format::JsonLines),
        other => Err(format!("unknown format `{other}` (expected csv or jsonl)")),
    }
}

/// Large files show progress on a terminal; nothing is drawn when stderr is not one.
const PROGRESS_MIN_BYTES: u64 = 4 * 1024 * 1024;

fn progress_bar(size: Option<u64>) -> ProgressBar {
    match size {
        Some(size) if size >= PROGRESS_MIN_BYTES && std::io::stderr().is_terminal() => {
            let bar = ProgressBar::new(size);
            let style =
                ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}");
            if let Ok(style) = style {
                bar.set_style(style);
            }
            bar
        }
        _ => ProgressBar::hidden(),
    }
}

/// A reader that counts the bytes read through it (for the progress bar).
struct Counted<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Runs `hydromesh ingest`.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let format = args.format.unwrap_or_else(|| Format::from_path(&args.file));
    let read = Arc::new(AtomicU64::new(0));
    let (reader, size): (Box<dyn BufRead>, Option<u64>) = if args.file.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let file = std::fs::File::open(&args.file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
        let size = file.metadata().ok().map(|m| m.len());
        let counted = Counted { inner: file, read: read.clone() };
        (Box::new(std::io::BufReader::with_capacity(1 << 20, counted)), size)
    };
    let progress = progress_bar(size);
    let readings = Readings::new(reader, format)
        .map_err(|e| anyhow::anyhow!("{}: line {}: {}", args.file.display(), e.line, e.error))?;
    let mut client = args.peer.connect().await?;
    let report = RefCell::new(Report::default());
    // Line numbers of each batch in flight, to name rejected lines when the ack comes back.
    let lines_of_batch: RefCell<HashMap<usize, Vec<usize>>> = RefCell::new(HashMap::new());
    let batches = Batches {
        readings,
        done: false,
        size: args.batch_size as usize,
        next_index: 0,
        report: &report,
        lines_of_batch: &lines_of_batch,
    };
    client
        .ingest_batches(batches, args.window as usize, |index, response| {
            let lines = lines_of_batch.borrow_mut().remove(&index).unwrap_or_default();
            report.borrow_mut().record(&lines, response);
            progress.set_position(read.load(Ordering::Relaxed));
        })
        .await?;
    progress.finish_and_clear();
    let mut report = report.into_inner();
    report.rejected.sort();
    report.not_stored.sort();
    if args.json {
        say!("{}", report.json("line"));
    } else {
        for (line, error) in report.rejected.iter().chain(&report.not_stored) {
            eprintln!("line {line}: {error}");
        }
        for command in &report.commands {
            say!("meter {}: valve {}", command.meter, command.valve.as_str());
        }
        say!(
            "accepted {}, duplicates {}, rejected {}",
            report.accepted,
            report.duplicates,
            report.rejected.len()
        );
        if !report.not_stored.is_empty() {
            eprintln!(
                "{} readings not stored: the node's storage failed (not a fault of the data; send them again later)",
                report.not_stored.len()
            );
        }
    }
    Ok(if !report.not_stored.is_empty() {
        EXIT_ERROR
    } else if !report.rejected.is_empty() {
        EXIT_REFUSED
    } else {
        0
    })
}

/// Cuts the parsed file into batches, recording parse errors as rejected lines on the way.
struct Batches<'a, R: BufRead> {
    readings: Readings<R>,
    done: bool,
    size: usize,
    next_index: usize,
    report: &'a RefCell<Report>,
    lines_of_batch: &'a RefCell<HashMap<usize, Vec<usize>>>,
}

impl<R: BufRead> Iterator for Batches<'_, R> {
    type Item = Vec<hydromesh_proto::Reading>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut batch = Vec::with_capacity(self.size);
        let mut lines = Vec::with_capacity(self.size);
        for parsed in self.readings.by_ref() {
            match parsed {
                Ok(parsed) => {
                    lines.push(parsed.line);
                    batch.push(parsed.reading);
                    if batch.len() == self.size {
                        break;
                    }
                }
                Err(error) => self.report.borrow_mut().rejected.push((error.line, error.error.to_string())),
            }
        }
        if batch.is_empty() {
            self.done = true;
            return None;
        }
        self.lines_of_batch.borrow_mut().insert(self.next_index, lines);
        self.next_index += 1;
        Some(batch)
    }
}
