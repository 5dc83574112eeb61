//! Meter readings from text: a streaming parser of CSV or JSON lines (the input of
//! `hydromesh ingest`), one JSON object as a reading (a JSON line, an item of
//! `POST /api/v1/readings`), and times as RFC 3339 or Unix milliseconds.

use std::borrow::Cow;
use std::io::{self, BufRead, Read};
use std::iter::FusedIterator;
use std::path::Path;

use chrono::DateTime;
use hydromesh_proto::meter::MeterIdError;
use hydromesh_proto::{Alarms, MeterId, Reading};
use serde_json::Value;

/// Longest accepted line in bytes; a longer line is an error for that line and is skipped.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write.
#[cfg(test)]
const MAX_RFC3339_MS: u64 = 253_402_300_799_999;
const NOT_TIME: &str = "is neither RFC 3339 nor Unix milliseconds";
const BEFORE_EPOCH: &str = "is before the Unix epoch (1970-01-01T00:00:00Z)";
const NOT_LITRES: &str = "is not a whole number of litres";
const NOT_FLOW: &str = "is not a flow in whole litres per hour (0 to 4294967295)";

/// The syntax of an input file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// CSV with a header line naming the columns.
    Csv,
    /// One JSON object per line.
    JsonLines,
}

impl Format {
    /// The format a file name implies: `.jsonl`, `.ndjson`, `.json` are JSON lines, others CSV.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase) {
            Some(ext) if ["jsonl", "ndjson", "json"].contains(&ext.as_str()) => Format::JsonLines,
            _ => Format::Csv,
        }
    }
}

/// A reading and the line it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedLine {
    /// Line number as an editor shows it (the first line of the input is 1).
    pub line: usize,
    /// The reading.
    pub reading: Reading,
}

/// Why a line (or the input) cannot be read as readings.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Reading the input failed; the stream ends with this error.
    #[error("cannot read input: {0}")]
    Io(io::Error),
    /// The line is not UTF-8 (with the 1-based byte column of the first bad byte).
    #[error("line is not valid UTF-8 (bad byte at column {0})")]
    InvalidUtf8(usize),
    /// The line is longer than [`MAX_LINE_BYTES`].
    #[error("line is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    /// CSV input without a header line.
    #[error("missing CSV header line (required columns: meter, ts, litres)")]
    MissingHeader,
    /// The CSV header names unknown columns (listed, in backquotes, comma-separated).
    #[error("unknown column(s) {0} in header (expected meter, ts, litres, flow_lph, alarms)")]
    UnknownColumns(String),
    /// The CSV header names a column twice.
    #[error("column `{0}` appears twice in header")]
    DuplicateColumn(&'static str),
    /// The CSV header lacks a required column.
    #[error("missing required column `{0}` in header")]
    MissingColumn(&'static str),
    /// A CSV row has not as many fields as the header.
    #[error("expected {expected} fields, found {found}")]
    FieldCount {
        /// Fields in the header.
        expected: usize,
        /// Fields in the row.
        found: usize,
    },
    /// A required field is absent, empty or null.
    #[error("field `{0}` is missing or empty")]
    MissingField(&'static str),
    /// The meter's id is not one.
    #[error("field `meter`: `{value}` is not a meter id ({error})")]
    Meter {
        /// The value as written (shortened when long).
        value: String,
        /// The rule it breaks.
        error: MeterIdError,
    },
    /// A value breaks its field's rule.
    #[error("field `{field}`: `{value}` {rule}")]
    Value {
        /// The field's name.
        field: &'static str,
        /// The value as written (shortened when long).
        value: String,
        /// The rule it breaks, e.g. "is not a whole number of litres".
        rule: &'static str,
    },
    /// An alarm name is not leak, burst, tamper, backflow, dry or other.
    #[error("unknown alarm `{0}` (expected leak, burst, tamper, backflow, dry, other)")]
    UnknownAlarm(String),
    /// A time given outside of a field (to [`parse_timestamp`]) is not one: text and rule.
    #[error("`{0}` {1}")]
    Timestamp(String, &'static str),
    /// A JSON line is malformed, or a JSON item is not an object.
    #[error("invalid JSON: {0}")]
    Json(String),
}

/// An [`InputError`] and the line it is about.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct LineError {
    /// Line number as an editor shows it (the CSV header is line 1).
    pub line: usize,
    /// What is wrong with it.
    pub error: InputError,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Column {
    Meter,
    Ts,
    Litres,
    Flow,
    Alarms,
}

const COLUMNS: [(Column, &str); 5] = [
    (Column::Meter, "meter"),
    (Column::Ts, "ts"),
    (Column::Litres, "litres"),
    (Column::Flow, "flow_lph"),
    (Column::Alarms, "alarms"),
];

/// Readings parsed line by line; each item is a reading or the error of one line.
///
/// A bad line does not end the stream; an I/O error does (it is the last item).
pub struct Readings<R: BufRead> {
    lines: Lines<R>,
    format: Format,
    columns: Vec<Column>,
}

impl<R: BufRead> Readings<R> {
    /// Starts parsing `reader` as `format`. For CSV it reads the header (skipping blank lines
    /// before it) and fails on a missing or bad one.
    pub fn new(reader: R, format: Format) -> Result<Self, LineError> {
        let mut lines = Lines { reader, buf: Vec::new(), line: 0, done: false };
        let mut columns = Vec::new();
        if format == Format::Csv {
            let missing = at(1, InputError::MissingHeader);
            let header = lines.next_text().unwrap_or(Err(missing))?;
            columns = parse_header(header).map_err(|error| at(lines.line, error))?;
        }
        Ok(Readings { lines, format, columns })
    }
}

impl<R: BufRead> Iterator for Readings<R> {
    type Item = Result<ParsedLine, LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let text = match self.lines.next_text()? {
            Ok(text) => text,
            Err(e) => return Some(Err(e)),
        };
        let parsed = match self.format {
            Format::Csv => parse_csv_row(&self.columns, text),
            Format::JsonLines => parse_json_line(text),
        };
        let line = self.lines.line;
        Some(parsed.map(|reading| ParsedLine { line, reading }).map_err(|e| at(line, e)))
    }
}

impl<R: BufRead> FusedIterator for Readings<R> {}

/// Lines of a reader in one reused buffer.
struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    line: usize,
    done: bool,
}

impl<R: BufRead> Lines<R> {
    /// The next non-blank line without trailing white space; `None` at the end of the input
    /// and after an I/O error.
    fn next_text(&mut self) -> Option<Result<&str, LineError>> {
        loop {
            if self.done {
                return None;
            }
            self.buf.clear();
            let mut limited = (&mut self.reader).take(MAX_LINE_BYTES as u64 + 1);
            match limited.read_until(b'\n', &mut self.buf) {
                Ok(0) => self.done = true,
                Ok(_) => self.line += 1,
                Err(e) => return Some(Err(self.fail(self.line + 1, e))),
            }
            if self.done {
                return None;
            }
            if self.buf.last() == Some(&b'\n') {
                self.buf.pop();
            } else if self.buf.len() > MAX_LINE_BYTES {
                if let Err(e) = self.reader.skip_until(b'\n') {
                    return Some(Err(self.fail(self.line, e)));
                }
                return Some(Err(at(self.line, InputError::LineTooLong)));
            }
            if self.line == 1 && self.buf.starts_with(b"\xEF\xBB\xBF") {
                self.buf.drain(..3);
            }
            if !self.buf.trim_ascii().is_empty() {
                break;
            }
        }
        let text = std::str::from_utf8(self.buf.trim_ascii_end());
        Some(text.map_err(|e| at(self.line, InputError::InvalidUtf8(e.valid_up_to() + 1))))
    }

    fn fail(&mut self, line: usize, error: io::Error) -> LineError {
        self.done = true;
        at(line, InputError::Io(error))
    }
}

fn at(line: usize, error: InputError) -> LineError {
    LineError { line, error }
}

/// Parses a time given as RFC 3339 (any offset, optional fraction) or integer Unix milliseconds
/// into UTC milliseconds since the epoch; digits below the millisecond are dropped.
pub fn parse_timestamp(text: &str) -> Result<u64, InputError> {
    let text = text.trim();
    timestamp_ms(text).map_err(|rule| InputError::Timestamp(shown(text), rule))
}

/// A bound of a query window (`from`, `to`, a period's time, `since`): a time as
/// [`parse_timestamp`] reads it, where a time before 1970 is the start of time (nothing is
/// held before it), not an error.
pub fn parse_window_time(text: &str) -> Result<u64, InputError> {
    match parse_timestamp(text) {
        Err(InputError::Timestamp(_, rule)) if rule == BEFORE_EPOCH => Ok(0),
        parsed => parsed,
    }
}

/// How long before `now_ms` a window starts, given as a duration (`1h`, `7d`) or as a time
/// (RFC 3339 or Unix ms): `top --since` on the CLI and `?since=` over HTTP. A time in the
/// future is a window that has not started: 0, which ranks nothing.
pub fn parse_since(text: &str, now_ms: u64) -> Result<u64, String> {
    if let Ok(duration) = humantime::parse_duration(text) {
        return Ok(duration.as_millis().min(u128::from(u64::MAX)) as u64);
    }
    let at = parse_window_time(text).map_err(|_| {
        format!("`{}` is neither a duration (1h, 7d) nor a time (RFC 3339 or Unix ms)", shown(text))
    })?;
    Ok(now_ms.saturating_sub(at))
}

/// Writes UTC milliseconds as RFC 3339 with `Z`, with milliseconds only when not zero; after
/// year 9999 it writes the integer milliseconds ([`parse_timestamp`] reads both back).
pub fn format_timestamp(ms: u64) -> String {
    hydromesh_proto::format_rfc3339(ms)
}

fn timestamp_ms(text: &str) -> Result<u64, &'static str> {
    if let Some(ms) = digits(text) {
        return Ok(ms);
    }
    let time = DateTime::parse_from_rfc3339(text).map_err(|_| NOT_TIME)?;
    u64::try_from(time.timestamp_millis()).map_err(|_| BEFORE_EPOCH)
}

/// A non-empty run of ASCII digits as a `u64`.
fn digits(text: &str) -> Option<u64> {
    text.bytes().all(|b| b.is_ascii_digit()).then(|| text.parse().ok()).flatten()
}

/// At most 64 characters of `text`, for error messages.
pub fn shown(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn value_error(field: &'static str, value: &str, rule: &'static str) -> InputError {
    InputError::Value { field, value: shown(value), rule }
}

fn parse_header(text: &str) -> Result<Vec<Column>, InputError> {
    let mut columns = Vec::with_capacity(COLUMNS.len());
    let mut unknown = Vec::new();
    for name in text.split(',').map(unquote) {
        match COLUMNS.iter().find(|(_, n)| n.eq_ignore_ascii_case(name)) {
            Some((column, n)) if columns.contains(column) => return Err(InputError::DuplicateColumn(n)),
            Some((column, _)) => columns.push(*column),
            None => unknown.push(format!("`{}`", shown(name))),
        }
    }
    if !unknown.is_empty() {
        return Err(InputError::UnknownColumns(unknown.join(", ")));
    }
    match COLUMNS[..3].iter().find(|(c, _)| !columns.contains(c)) {
        Some((_, name)) => Err(InputError::MissingColumn(name)),
        None => Ok(columns),
    }
}

/// A CSV field without surrounding spaces and double quotes (a quoted field cannot hold a comma).
fn unquote(field: &str) -> &str {
    let field = field.trim();
    let inner = field.strip_prefix('"').and_then(|f| f.strip_suffix('"'));
    inner.map_or(field, str::trim)
}

fn parse_csv_row(columns: &[Column], line: &str) -> Result<Reading, InputError> {
    let mut values = [""; COLUMNS.len()];
    let mut found = 0;
    for field in line.split(',') {
        if let Some(slot) = values.get_mut(found) {
            *slot = unquote(field);
        }
        found += 1;
    }
    if found != columns.len() {
        let expected = columns.len();
        return Err(InputError::FieldCount { expected, found });
    }
    reading_from(columns.iter().copied().zip(values.map(Cell::Text)))
}

/// A reading from its cells; the required ones are all there.
fn reading_from<'a>(cells: impl Iterator<Item = (Column, Cell<'a>)>) -> Result<Reading, InputError> {
    let mut reading =
        Reading { meter: MeterId::from(0), ts_ms: 0, litres: 0, flow_lph: None, alarms: Alarms::empty() };
    for (column, cell) in cells {
        match column {
            Column::Meter => reading.meter = cell_meter(&cell)?,
            Column::Ts => reading.ts_ms = cell_u64("ts", &cell, timestamp_ms)?,
            Column::Litres => reading.litres = cell_u64("litres", &cell, whole(NOT_LITRES))?,
            Column::Flow if cell.is_blank() => {}
            Column::Flow => {
                let flow = cell_u64("flow_lph", &cell, whole(NOT_FLOW))?;
                let flow =
                    u32::try_from(flow).map_err(|_| value_error("flow_lph", &flow.to_string(), NOT_FLOW))?;
                reading.flow_lph = Some(flow);
            }
            Column::Alarms => reading.alarms = cell_alarms(&cell)?,
        }
    }
    Ok(reading)
}

/// A required cell as a number: a JSON unsigned integer as it is, text through `parse`.
fn cell_u64<P>(field: &'static str, cell: &Cell<'_>, parse: P) -> Result<u64, InputError>
where
    P: Fn(&str) -> Result<u64, &'static str>,
{
    if let Some(n) = cell.json_u64() {
        return Ok(n);
    }
    let text = cell.text();
    let text = text.trim();
    if text.is_empty() {
        return Err(InputError::MissingField(field));
    }
    parse(text).map_err(|rule| value_error(field, text, rule))
}

/// A meter id as printed: text, or a JSON string; a JSON number is the numeric id, any other
/// JSON value (`true`, `-1`, `[4]`) no id.
fn cell_meter(cell: &Cell<'_>) -> Result<MeterId, InputError> {
    let text = cell.text();
    let text = text.trim();
    let parsed = match cell {
        Cell::Text(_) | Cell::Json(Value::String(_) | Value::Null) => MeterId::parse(text),
        Cell::Json(Value::Number(n)) => match n.as_u64() {
            Some(n) => MeterId::number(n).ok_or(MeterIdError::TooLong),
            None => Err(MeterIdError::Symbol),
        },
        Cell::Json(_) => Err(MeterIdError::Symbol),
    };
    parsed.map_err(|error| match error {
        MeterIdError::Empty => InputError::MissingField("meter"),
        error => InputError::Meter { value: shown(text), error },
    })
}

/// A parser of whole numbers that names `rule` when the text is not one.
fn whole(rule: &'static str) -> impl Fn(&str) -> Result<u64, &'static str> {
    move |text| digits(text).ok_or(rule)
}

/// The alarms of a cell: a JSON array's items each, any other cell through [`parse_alarms`].
fn cell_alarms(cell: &Cell<'_>) -> Result<Alarms, InputError> {
    match cell {
        Cell::Json(Value::Array(items)) => {
            items.iter().try_fold(Alarms::empty(), |set, item| Ok(set.union(cell_alarms(&Cell::Json(item))?)))
        }
        cell => parse_alarms(&cell.text()),
    }
}

/// Alarm names separated by `|`, `;` or white space, any case; empty is no alarm.
fn parse_alarms(text: &str) -> Result<Alarms, InputError> {
    let names = text.split(|c: char| c == '|' || c == ';' || c.is_whitespace());
    names.filter(|name| !name.is_empty()).try_fold(Alarms::empty(), |set, name| {
        let flag = Alarms::from_name(name).ok_or_else(|| InputError::UnknownAlarm(shown(name)));
        Ok(set.union(flag?))
    })
}

/// The value of a field: a CSV cell, or a JSON value (`null` when the key is absent).
enum Cell<'a> {
    Text(&'a str),
    Json(&'a Value),
}

impl<'a> Cell<'a> {
    fn is_blank(&self) -> bool {
        self.text().trim().is_empty()
    }

    /// A JSON unsigned integer.
    fn json_u64(&self) -> Option<u64> {
        match self {
            Cell::Json(Value::Number(n)) => n.as_u64(),
            _ => None,
        }
    }

    /// The cell as text: a JSON string as it is, `null` as nothing, other JSON values written out.
    fn text(&self) -> Cow<'a, str> {
        match *self {
            Cell::Text(text) => Cow::Borrowed(text),
            Cell::Json(Value::String(text)) => Cow::Borrowed(text),
            Cell::Json(Value::Null) => Cow::Borrowed(""),
            Cell::Json(value) => Cow::Owned(value.to_string()),
        }
    }
}

/// One JSON object as a reading, checked like a line of `hydromesh ingest`: `meter`, `ts` and
/// `litres` are required, `flow_lph` and `alarms` optional, other keys ignored. A number may be
/// a JSON number or a string; `alarms` an array of names or one string of them.
pub fn reading_from_json(item: &Value) -> Result<Reading, InputError> {
    let Value::Object(fields) = item else {
        return Err(InputError::Json("expected an object".to_owned()));
    };
    let cell = |name| Cell::Json(fields.get(name).unwrap_or(&Value::Null));
    reading_from(COLUMNS.iter().map(|&(column, name)| (column, cell(name))))
}

fn parse_json_line(line: &str) -> Result<Reading, InputError> {
    let item: Value = serde_json::from_str(line)
        .map_err(|e| InputError::Json(e.to_string().replace(" at line 1 column ", " at column ")))?;
    reading_from_json(&item)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-23T10:00:00Z.
    const T0: u64 = 1_795_428_000_000;

    type Item = Result<(usize, Reading), String>;
    type Row = (u64, u64, u64, Option<u32>, &'static str);

    fn parse(format: Format, input: impl BufRead) -> Vec<Item> {
        match Readings::new(input, format) {
            Ok(readings) => {
                readings.map(|r| r.map(|p| (p.line, p.reading)).map_err(|e| e.to_string())).collect()
            }
            Err(e) => vec![Err(e.to_string())],
        }
    }

    fn csv(input: &str) -> Vec<Item> {
        parse(Format::Csv, input.as_bytes())
    }

    fn ok(line: usize, (meter, ts_ms, litres, flow_lph, alarms): Row) -> Item {
        let alarms = parse_alarms(alarms).map_err(|e| e.to_string())?;
        let reading = Reading { meter: MeterId::number(meter).expect("id"), ts_ms, litres, flow_lph, alarms };
        Ok((line, reading))
    }

    fn error(line: usize, message: &str) -> Item {
        Err(format!("line {line}: {message}"))
    }

    #[test]
    fn header_variants() {
        let reordered = csv(" TS ,Litres,  meter\n2026-11-23T10:00:00Z,5,1\n");
        assert_eq!(reordered, [ok(2, (1, T0, 5, None, ""))]);
        let full = csv("alarms,flow_lph,meter,ts,litres\n,,1,0,5\nleak|BURST,120,2,1000,6\n");
        let second = ok(3, (2, 1000, 6, Some(120), "leak burst"));
        assert_eq!(full, [ok(2, (1, 0, 5, None, "")), second]);
        let known = "(expected meter, ts, litres, flow_lph, alarms)";
        let unknown = format!("unknown column(s) `temp`, `Foo` in header {known}");
        assert_eq!(csv("meter,temp,ts,litres,Foo\n1,2,3,4,5"), [error(1, &unknown)]);
        let missing = "missing required column `litres` in header";
        assert_eq!(csv("meter,ts\n1,0\n"), [error(1, missing)]);
        let twice = "column `ts` appears twice in header";
        assert_eq!(csv("meter,ts,litres,TS\n"), [error(1, twice)]);
        let no_header = "missing CSV header line (required columns: meter, ts, litres)";
        assert_eq!(csv(""), [error(1, no_header)]);
        assert_eq!(csv("\n \n"), [error(1, no_header)]);
    }

    #[test]
    fn meter_ids_are_read_as_printed() {
        let got = csv("meter,ts,litres\n0014A807,0,5\n04913581,0,6\n1234567890123,0,7\n");
        let ids: Vec<String> = got.iter().flatten().map(|(_, r)| r.meter.to_string()).collect();
        assert_eq!(ids, ["0014a807", "04913581"], "hex in either case, leading zeros kept");
        let long = "field `meter`: `1234567890123` is not a meter id (more than 12 characters)";
        assert_eq!(got[2], error(4, long));
        let json = parse(
            Format::JsonLines,
            br#"{"meter":"2124589c","ts":0,"litres":1}
{"meter":42,"ts":0,"litres":1}
{"meter":1000000000000,"ts":0,"litres":1}"#
                .as_slice(),
        );
        let ids: Vec<String> = json.iter().flatten().map(|(_, r)| r.meter.to_string()).collect();
        assert_eq!(ids, ["2124589c", "42"]);
        assert_eq!(
            json[2],
            error(3, "field `meter`: `1000000000000` is not a meter id (more than 12 characters)")
        );
    }

    #[test]
    fn field_errors() {
        let rows = [
            "1,yesterday,5,, => field `ts`: `yesterday` is neither RFC 3339 nor Unix milliseconds",
            "1,1969-12-31T23:59:59Z,5,, => is before the Unix epoch (1970-01-01T00:00:00Z)",
            "1,0,12.5,, => field `litres`: `12.5` is not a whole number of litres",
            "1,0,-3,, => field `litres`: `-3` is not a whole number of litres",
            "1,0,,, => field `litres` is missing or empty",
            "m.1,0,5,, => field `meter`: `m.1` is not a meter id (letters, digits, `-` and `_` only)",
            "1,0,5,4294967296, => is not a flow in whole litres per hour (0 to 4294967295)",
            "1,0,5,,fire => unknown alarm `fire` (expected leak, burst, tamper, backflow, dry, other)",
            "1,0,5,,, => expected 5 fields, found 6",
            "1,0 => expected 5 fields, found 2",
        ];
        for (row, message) in rows.iter().filter_map(|r| r.split_once(" => ")) {
            let got = csv(&format!("meter,ts,litres,flow_lph,alarms\n{row}\n"));
            let [Err(e)] = &got[..] else { panic!("{got:?}") };
            assert!(e.starts_with("line 2: ") && e.ends_with(message), "{e}");
        }
        let found = csv("meter,ts,litres\n1,0,5,6\n");
        assert_eq!(found, [error(2, "expected 3 fields, found 4")]);
    }

    #[test]
    fn quoted_fields_blank_lines_and_line_numbers() {
        let input = "\u{feff}\"meter\", \"ts\",litres,\"alarms\"\r\n\r\n  \r\n\
                     \"1\" , \" 2026-11-23T10:00:00Z\",\"5\",\"leak dry\"\r\n\n\
                     2,0,6, \"\"\n\"3,0,7,\n";
        let quoted = "field `meter`: `\"3` is not a meter id (letters, digits, `-` and `_` only)";
        let expected = [ok(4, (1, T0, 5, None, "leak|dry")), ok(6, (2, 0, 6, None, "")), error(7, quoted)];
        assert_eq!(csv(input), expected);
    }

    #[test]
    fn timestamps() {
        let parsed = ["2026-11-23T12:00:00.250+02:00", "2026-11-23T09:00:00.250999-01:00"];
        for text in parsed {
            assert_eq!(parse_timestamp(text).ok(), Some(T0 + 250));
        }
        assert_eq!(parse_timestamp(" 1795428000000 ").ok(), Some(T0));
        let bad = parse_timestamp("yesterday").map_err(|e| e.to_string());
        assert_eq!(bad, Err("`yesterday` is neither RFC 3339 nor Unix milliseconds".into()));
        assert_eq!(format_timestamp(T0), "2026-11-23T10:00:00Z");
        assert_eq!(format_timestamp(T0 + 250), "2026-11-23T10:00:00.250Z");
        assert_eq!(format_timestamp(u64::MAX), u64::MAX.to_string());
        for ms in [0, 1, T0, MAX_RFC3339_MS, MAX_RFC3339_MS + 1, u64::MAX] {
            assert_eq!(parse_timestamp(&format_timestamp(ms)).ok(), Some(ms));
        }
    }

    #[test]
    fn json_lines() {
        let input = r#"{"meter":1,"ts":"2026-11-23T10:00:00Z","litres":5}

            {"meter":2,"ts":1795428000000,"litres":6,"flow_lph":null,"alarms":["leak","Dry"]}
            {"ts":0,"litres":7,"flow_lph":120,"alarms":"tamper|backflow","meter":3,"x":{}}
            {"meter":4,"ts":0,"litres":5.0}
            {"meter":[4],"ts":0,"litres":1}
            {"meter":4,"litres":1}
            {"meter":4,"ts":0,"litres":1,"alarms":["leak",5]}
            [1,0,5]
            {"meter":4,"ts":0"#;
        let expected = [
            ok(1, (1, T0, 5, None, "")),
            ok(3, (2, T0, 6, None, "leak|dry")),
            ok(4, (3, 0, 7, Some(120), "tamper|backflow")),
            error(5, "field `litres`: `5.0` is not a whole number of litres"),
            error(6, "field `meter`: `[4]` is not a meter id (letters, digits, `-` and `_` only)"),
            error(7, "field `ts` is missing or empty"),
            error(8, "unknown alarm `5` (expected leak, burst, tamper, backflow, dry, other)"),
            error(9, "invalid JSON: expected an object"),
            error(10, "invalid JSON: EOF while parsing an object at column 29"),
        ];
        assert_eq!(parse(Format::JsonLines, input.as_bytes()), expected);
    }

    #[test]
    fn invalid_utf8_line_does_not_stop_the_stream() {
        let input = b"meter,ts,litres\n1,0,5\n  1,0,\xff\xfe\n2,0,6\n";
        let bad = "line is not valid UTF-8 (bad byte at column 7)";
        let expected = [ok(2, (1, 0, 5, None, "")), error(3, bad), ok(4, (2, 0, 6, None, ""))];
        assert_eq!(parse(Format::Csv, &input[..]), expected);
        let json = b"{\"meter\":\xc3}\n{\"meter\":1,\"ts\":0,\"litres\":2}";
        let bad = "line is not valid UTF-8 (bad byte at column 10)";
        assert_eq!(parse(Format::JsonLines, &json[..]), [error(1, bad), ok(2, (1, 0, 2, None, ""))]);
    }

    #[test]
    fn long_line_is_skipped_and_io_error_ends_the_stream() {
        let input = format!("meter,ts,litres\n1,0,{}\n2,0,6\n", "9".repeat(MAX_LINE_BYTES));
        let long = format!("line is longer than {MAX_LINE_BYTES} bytes");
        assert_eq!(csv(&input), [error(2, &long), ok(3, (2, 0, 6, None, ""))]);

        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let broken = parse(Format::JsonLines, io::BufReader::new(Broken));
        assert_eq!(broken, [error(1, "cannot read input: disk on fire")]);
    }

    #[test]
    fn json_object_to_reading() {
        let good = serde_json::json!({
            "meter": 7, "ts": "2026-11-23T10:00:00Z", "litres": 5, "flow_lph": 120,
            "alarms": ["leak", "Dry"], "note": "ignored",
        });
        let alarms = Alarms::LEAK.union(Alarms::DRY);
        let reading = Reading { meter: 7.into(), ts_ms: T0, litres: 5, flow_lph: Some(120), alarms };
        assert_eq!(reading_from_json(&good).ok(), Some(reading));
        let as_text = serde_json::json!({
            "meter": "7", "ts": "1795428000000", "litres": " 5 ", "flow_lph": null, "alarms": "leak|dry",
        });
        let reading = Reading { flow_lph: None, ..reading };
        assert_eq!(reading_from_json(&as_text).ok(), Some(reading));
    }

    #[test]
    fn json_object_errors_name_the_field_and_the_rule() {
        let cases = [
            (
                r#"{"meter":"sev en","ts":0,"litres":1}"#,
                "field `meter`: `sev en` is not a meter id (letters, digits, `-` and `_` only)",
            ),
            (
                r#"{"meter":-1,"ts":0,"litres":1}"#,
                "field `meter`: `-1` is not a meter id (letters, digits, `-` and `_` only)",
            ),
            (
                r#"{"meter":true,"ts":0,"litres":1}"#,
                "field `meter`: `true` is not a meter id (letters, digits, `-` and `_` only)",
            ),
            (r#"{"ts":0,"litres":1}"#, "field `meter` is missing or empty"),
            (
                r#"{"meter":1,"ts":"yesterday","litres":1}"#,
                "field `ts`: `yesterday` is neither RFC 3339 nor Unix milliseconds",
            ),
            (
                r#"{"meter":1,"ts":"1969-12-31T23:59:59Z","litres":1}"#,
                "field `ts`: `1969-12-31T23:59:59Z` is before the Unix epoch (1970-01-01T00:00:00Z)",
            ),
            (r#"{"meter":1,"ts":null,"litres":1}"#, "field `ts` is missing or empty"),
            (r#"{"meter":1,"ts":0,"litres":12.5}"#, "field `litres`: `12.5` is not a whole number of litres"),
            (
                r#"{"meter":1,"ts":0,"litres":{"l":1}}"#,
                "field `litres`: `{\"l\":1}` is not a whole number of litres",
            ),
            (r#"{"meter":1,"ts":0,"litres":""}"#, "field `litres` is missing or empty"),
            (
                r#"{"meter":1,"ts":0,"litres":1,"flow_lph":4294967296}"#,
                "field `flow_lph`: `4294967296` is not a flow in whole litres per hour (0 to 4294967295)",
            ),
            (
                r#"{"meter":1,"ts":0,"litres":1,"flow_lph":[1]}"#,
                "field `flow_lph`: `[1]` is not a flow in whole litres per hour (0 to 4294967295)",
            ),
            (
                r#"{"meter":1,"ts":0,"litres":1,"alarms":["leak",5]}"#,
                "unknown alarm `5` (expected leak, burst, tamper, backflow, dry, other)",
            ),
            ("null", "invalid JSON: expected an object"),
            ("[1,0,5]", "invalid JSON: expected an object"),
            (r#""meter""#, "invalid JSON: expected an object"),
        ];
        for (item, message) in cases {
            let value: Value = serde_json::from_str(item).expect("test JSON");
            let got = reading_from_json(&value).map_err(|e| e.to_string());
            assert_eq!(got, Err(message.to_owned()), "{item}");
        }
    }

    #[test]
    fn format_from_path() {
        for path in ["a/b.JSONL", "b.ndjson", "b.json"] {
            assert_eq!(Format::from_path(Path::new(path)), Format::JsonLines);
        }
        for path in ["b.csv", "b", "-"] {
            assert_eq!(Format::from_path(Path::new(path)), Format::Csv);
        }
    }
}
