//! The container's CRI log file: the record format, line splitting and reopening.
//!
//! Owns the log file descriptor and one pending-line buffer per stream. Each record is
//! `<RFC3339Nano UTC> <stdout|stderr> <P|F> <content>\n`, written with a single `write(2)`
//! on an `O_APPEND` descriptor, so a reopen (which only happens between two records, the
//! monitor being single-threaded) never splits or repeats a line.
//!
//! Splitting follows containerd's CRI logger: a line is buffered until its newline; while it is
//! longer than `max_line` bytes, `max_line`-byte `P` (partial) records are cut off; the rest is
//! the `F` (full) record. A line of exactly `max_line` bytes is one `F` record. Data still
//! without a newline when the stream ends is written as a `P` record, as containerd and CRI-O
//! do (the line was never completed; kubelet shows it all the same). Content that has not seen
//! its newline yet stays buffered (at most `max_line` bytes per stream), never written early, so
//! a reopen cannot separate the halves of a short line.
//!
//! Must not block on anything but the log file, and never fails the monitor: a record that
//! cannot be written is dropped.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// The container's output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// `P` or `F`: whether a record ends its line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    Partial,
    Full,
}

impl Tag {
    fn byte(self) -> u8 {
        match self {
            Tag::Partial => b'P',
            Tag::Full => b'F',
        }
    }
}

/// An RFC 3339 UTC timestamp with nanoseconds, `2026-11-28T13:45:00.123456789Z`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Timestamp([u8; 30]);

impl Timestamp {
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self::from_unix(d.as_secs() as i64, d.subsec_nanos())
    }

    pub fn from_unix(secs: i64, nanos: u32) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let mut out = *b"0000-00-00T00:00:00.000000000Z";
        put_digits(&mut out[0..4], y.clamp(0, 9999) as u64);
        put_digits(&mut out[5..7], m as u64);
        put_digits(&mut out[8..10], d as u64);
        put_digits(&mut out[11..13], (rem / 3600) as u64);
        put_digits(&mut out[14..16], (rem / 60 % 60) as u64);
        put_digits(&mut out[17..19], (rem % 60) as u64);
        put_digits(&mut out[20..29], nanos.min(999_999_999) as u64);
        Timestamp(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn put_digits(out: &mut [u8], mut v: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Cuts `data` into records, continuing the line held in `pending`; calls `emit` once per
/// record with its tag and content (without the newline).
pub fn split_lines(
    pending: &mut Vec<u8>,
    mut data: &[u8],
    max_line: usize,
    strip_cr: bool,
    emit: &mut dyn FnMut(Tag, &[u8]),
) {
    let strip = |line: &[u8]| -> usize {
        if strip_cr && line.last() == Some(&b'\r') {
            line.len() - 1
        } else {
            line.len()
        }
    };
    while !data.is_empty() {
        let (mut line, complete) = match data.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line = &data[..i];
                data = &data[i + 1..];
                (line, true)
            }
            None => (std::mem::take(&mut data), false),
        };
        while pending.len() + line.len() > max_line {
            let take = max_line - pending.len();
            if pending.is_empty() {
                emit(Tag::Partial, &line[..take]);
            } else {
                pending.extend_from_slice(&line[..take]);
                emit(Tag::Partial, pending);
                pending.clear();
            }
            line = &line[take..];
        }
        if !complete {
            pending.extend_from_slice(line);
        } else if pending.is_empty() {
            emit(Tag::Full, &line[..strip(line)]);
        } else {
            pending.extend_from_slice(line);
            emit(Tag::Full, &pending[..strip(pending)]);
            pending.clear();
        }
    }
}

/// The open CRI log.
pub struct ContainerLog {
    path: PathBuf,
    file: File,
    max_line: usize,
    strip_cr: bool,
    pending: [Vec<u8>; 2],
    record: Vec<u8>,
}

/// Opens (creating) the log for appending, never through a symlink at its final component
/// (`O_NOFOLLOW`: a link planted there fails with ELOOP instead of redirecting root's writes),
/// and only a regular file (not a fifo or device someone put there).
fn open_log(path: &PathBuf) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

impl ContainerLog {
    pub fn open(path: PathBuf, max_line: usize, strip_cr: bool) -> io::Result<Self> {
        let file = open_log(&path)?;
        Ok(Self {
            path,
            file,
            max_line,
            strip_cr,
            pending: [Vec::new(), Vec::new()],
            record: Vec::new(),
        })
    }

    /// Closes the log and opens its path again (after log rotation renamed it). If the new
    /// open fails, the old file stays in use and the error is returned.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = open_log(&self.path)?;
        Ok(())
    }

    /// Logs a chunk read from `stream` at time `ts`.
    pub fn write(&mut self, stream: Stream, data: &[u8], ts: Timestamp) {
        let Self {
            file,
            max_line,
            strip_cr,
            pending,
            record,
            ..
        } = self;
        let mut emit =
            |tag: Tag, content: &[u8]| write_record(file, record, ts, stream, tag, content);
        split_lines(
            &mut pending[stream.index()],
            data,
            *max_line,
            *strip_cr,
            &mut emit,
        );
    }

    /// The stream ended: writes its unfinished line, if any, as a `P` record.
    pub fn finish(&mut self, stream: Stream, ts: Timestamp) {
        let pending = std::mem::take(&mut self.pending[stream.index()]);
        if !pending.is_empty() {
            write_record(
                &mut self.file,
                &mut self.record,
                ts,
                stream,
                Tag::Partial,
                &pending,
            );
        }
    }
}

fn write_record(
    file: &mut File,
    record: &mut Vec<u8>,
    ts: Timestamp,
    stream: Stream,
    tag: Tag,
    content: &[u8],
) {
    record.clear();
    record.extend_from_slice(ts.as_bytes());
    record.push(b' ');
    record.extend_from_slice(stream.name().as_bytes());
    record.push(b' ');
    record.push(tag.byte());
    record.push(b' ');
    record.extend_from_slice(content);
    record.push(b'\n');
    // One write(2) per record on an O_APPEND file; a failed record is dropped, never retried
    // in pieces (that could interleave with a later reopen).
    let _ = file.write_all(record);
    // Do not keep a 16 KiB record buffer around after a long line.
    if record.capacity() > 4096 {
        *record = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]], max: usize, strip_cr: bool) -> (Vec<(Tag, String)>, Vec<u8>) {
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for chunk in chunks {
            split_lines(&mut pending, chunk, max, strip_cr, &mut |tag, c| {
                out.push((tag, String::from_utf8_lossy(c).into_owned()))
            });
        }
        (out, pending)
    }

    use Tag::{Full as F, Partial as P};

    #[test]
    fn timestamps_are_rfc3339_nano_utc() {
        let ts = |s, n| String::from_utf8(Timestamp::from_unix(s, n).as_bytes().to_vec()).unwrap();
        assert_eq!(ts(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(ts(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(
            ts(1_795_873_500, 123_456_789),
            "2026-11-28T13:45:00.123456789Z"
        );
        assert_eq!(
            ts(4_107_542_399, 999_999_999),
            "2100-02-28T23:59:59.999999999Z"
        );
        assert_eq!(ts(-1, 0), "1969-12-31T23:59:59.000000000Z");
    }

    #[test]
    fn complete_lines_are_full_records() {
        let (out, pending) = split_all(&[b"a\nbb\n", b"c", b"c\n"], 10, false);
        assert_eq!(
            out,
            vec![(F, "a".into()), (F, "bb".into()), (F, "cc".into())]
        );
        assert!(pending.is_empty());
        let (out, _) = split_all(&[b"\n\n"], 10, false);
        assert_eq!(out, vec![(F, "".into()), (F, "".into())]);
    }

    #[test]
    fn long_lines_split_into_partials_then_full() {
        let (out, _) = split_all(&[b"0123456789abcdefghij12345\n"], 10, false);
        assert_eq!(
            out,
            vec![
                (P, "0123456789".into()),
                (P, "abcdefghij".into()),
                (F, "12345".into())
            ]
        );
        // Same across chunk boundaries.
        let (out, _) = split_all(&[b"0123", b"456789abc", b"defghij12345\n"], 10, false);
        assert_eq!(
            out,
            vec![
                (P, "0123456789".into()),
                (P, "abcdefghij".into()),
                (F, "12345".into())
            ]
        );
    }

    #[test]
    fn line_of_exactly_max_is_one_full_record() {
        let (out, _) = split_all(&[b"0123456789", b"\n"], 10, false);
        assert_eq!(out, vec![(F, "0123456789".into())]);
        let (out, pending) = split_all(&[b"0123456789", b"x"], 10, false);
        assert_eq!(out, vec![(P, "0123456789".into())]);
        assert_eq!(pending, b"x");
    }

    #[test]
    fn terminal_crlf_is_a_line_end() {
        let (out, _) = split_all(&[b"hi\r\nthere\r", b"\n"], 10, true);
        assert_eq!(out, vec![(F, "hi".into()), (F, "there".into())]);
        let (out, _) = split_all(&[b"hi\r\n"], 10, false);
        assert_eq!(out, vec![(F, "hi\r".into())]);
    }

    #[test]
    fn log_is_never_opened_through_a_symlink_or_onto_a_non_file() {
        let dir =
            std::env::temp_dir().join(format!("crius-conmon-nofollow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let link = dir.join("c.log");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = ContainerLog::open(link.clone(), 16, false)
            .err()
            .expect("refused");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        // A dangling link is not followed to create its target either.
        let dangling = dir.join("d.log");
        std::os::unix::fs::symlink(dir.join("created"), &dangling).unwrap();
        assert!(ContainerLog::open(dangling, 16, false).is_err());
        assert!(!dir.join("created").exists());
        // Nor a fifo (it would block the monitor or feed somebody else).
        let fifo = dir.join("f.log");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0);
        assert!(ContainerLog::open(fifo, 16, false).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_reopen_keeps_the_old_file() {
        let dir = std::env::temp_dir().join(format!("crius-conmon-reopen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.log");
        let mut log = ContainerLog::open(path.clone(), 16, false).unwrap();
        let kept = dir.join("kept.log");
        std::fs::rename(&path, &kept).unwrap();
        // The log's directory is replaced by a file: reopening cannot work.
        let sub = dir.join("sub");
        std::fs::write(&sub, "").unwrap();
        log.path = sub.join("c.log");
        assert!(log.reopen().is_err());
        log.write(Stream::Stdout, b"still here\n", Timestamp::from_unix(0, 0));
        let text = std::fs::read_to_string(&kept).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(text.ends_with("stdout F still here\n"), "{text}");
    }

    #[test]
    fn unfinished_line_at_eof_is_written_as_partial() {
        let dir = std::env::temp_dir().join(format!("crius-conmon-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.log");
        let _ = std::fs::remove_file(&path);
        let mut log = ContainerLog::open(path.clone(), 16, false).unwrap();
        let ts = Timestamp::from_unix(0, 0);
        log.write(Stream::Stdout, b"one\ntw", ts);
        log.write(Stream::Stderr, b"err\n", ts);
        log.finish(Stream::Stdout, ts);
        log.finish(Stream::Stderr, ts);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let t = "1970-01-01T00:00:00.000000000Z";
        assert_eq!(
            text,
            format!("{t} stdout F one\n{t} stderr F err\n{t} stdout P tw\n")
        );
    }
}
