//! DATA framing in both directions.
//!
//! [`DataDecoder`] (server side) removes dot-stuffing and finds the end of
//! the message, which is only ever `CRLF.CRLF` (or `.CRLF` as the very first
//! line). Bare CR or bare LF anywhere makes the message faulty
//! ([`DataFault::BareLineEnding`], answered `554 5.6.0`) while the decoder
//! keeps consuming to the real end so the session stays in sync: this is
//! what makes SMTP smuggling (`LF.LF`, `CR.CR`, `LF.CRLF` ...) impossible.
//! Chunks borrow the caller's input; nothing is copied.
//!
//! [`BodyEncoder`] (client side) turns a stored body into the wire form
//! without copying it: a sequence of [`Piece`]s that are either ranges of the
//! body or small static inserts (`.` for stuffing, CRLF for a bare line end,
//! the final `.CRLF`), ready for a vectored write.

use std::ops::Range;

use super::limits::SMTP_DATA_LINE_BYTES_MAX;

/// Why a message being received is refused. It is still consumed to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFault {
    /// A CR not followed by LF, or an LF not preceded by CR.
    BareLineEnding,
    /// A line longer than `SMTP_DATA_LINE_BYTES_MAX`.
    LineTooLong,
    /// More body bytes than the allowed maximum.
    TooBig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// After CRLF (or at the start of the data): a dot here is special.
    LineStart,
    /// Inside a line.
    Mid,
    /// After a CR that was emitted as content.
    Cr,
    /// After a line-start dot that was consumed but not emitted.
    Dot,
    /// After a line-start `.CR`, neither emitted.
    DotCr,
    /// The end marker was seen.
    Done,
}

/// One step of [`DataDecoder::decode`].
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Input bytes used by this step.
    pub consumed: usize,
    /// Unstuffed message bytes (a sub-slice of the input; may be empty).
    pub chunk: &'a [u8],
    /// True when the end-of-data marker was consumed.
    pub end: bool,
}

/// Server-side DATA decoder: dot-unstuffing, end detection, limits.
#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    line_bytes: usize,
    body_bytes: u64,
    max_body_bytes: u64,
    fault: Option<DataFault>,
    /// Take clean runs of lines in one pass ([`Self::bulk`]); off only in
    /// tests, which compare against the line-by-line path.
    bulk: bool,
    /// Input bytes (counted from the start of the current input) that the
    /// one-pass path looked at and left to the line-by-line path: it is not
    /// tried again before them, so each byte is scanned a bounded number of
    /// times however the input is made.
    bulk_skip: usize,
    /// Bytes the one-pass path scanned (tests bound it).
    #[cfg(test)]
    bulk_scanned: usize,
}

/// Below this many bytes the line-by-line path is as fast.
const BULK_MIN_BYTES: usize = 256;

/// `CRLF.`: where a line-start dot (stuffing or the end marker) can be.
static CRLF_DOT: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n."));

impl DataDecoder {
    /// A decoder for one message of at most `max_body_bytes` unstuffed bytes.
    pub fn new(max_body_bytes: u64) -> Self {
        Self {
            state: State::LineStart,
            line_bytes: 0,
            body_bytes: 0,
            max_body_bytes,
            fault: None,
            bulk: true,
            bulk_skip: 0,
            #[cfg(test)]
            bulk_scanned: 0,
        }
    }

    /// The first fault seen, if any. A faulty message must be refused; its
    /// chunks should be dropped.
    pub fn fault(&self) -> Option<DataFault> {
        self.fault
    }

    /// Unstuffed body bytes so far.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// True once the end marker was consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn set_fault(&mut self, fault: DataFault) {
        self.fault.get_or_insert(fault);
    }

    /// Decodes from `input` until the end of the input, a removed dot, or
    /// the end marker. Call again with the unconsumed rest until it has all
    /// been consumed or `end` is set; never reads past the end marker.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Decoded<'a> {
        let mut i = 0;
        let mut start = 0;
        while let Some(&byte) = input.get(i) {
            match self.state {
                State::Done => break,
                State::Mid => {
                    let rest = input.get(i..).unwrap_or_default();
                    if self.bulk && rest.len() >= BULK_MIN_BYTES && i >= self.bulk_skip {
                        let n = self.bulk(input, i);
                        if n > 0 {
                            i += n;
                            continue;
                        }
                    }
                    match memchr::memchr2(b'\r', b'\n', rest) {
                        None => {
                            self.line_bytes += rest.len();
                            i = input.len();
                        }
                        Some(p) => {
                            self.line_bytes += p + 1;
                            i += p;
                            if input.get(i) == Some(&b'\r') {
                                self.state = State::Cr;
                            } else {
                                self.set_fault(DataFault::BareLineEnding);
                            }
                            i += 1;
                        }
                    }
                    if self.line_bytes > SMTP_DATA_LINE_BYTES_MAX {
                        self.set_fault(DataFault::LineTooLong);
                    }
                }
                State::LineStart => {
                    if byte == b'.' {
                        self.state = State::Dot;
                        return self.emit(input, start, i, i + 1, false);
                    }
                    self.state = State::Mid;
                }
                State::Cr => {
                    if byte == b'\n' {
                        self.state = State::LineStart;
                        self.line_bytes = 0;
                        i += 1;
                    } else {
                        self.set_fault(DataFault::BareLineEnding);
                        self.state = State::Mid;
                    }
                }
                State::Dot => match byte {
                    b'\r' => {
                        self.state = State::DotCr;
                        i += 1;
                        start = i;
                    }
                    _ => self.state = State::Mid,
                },
                State::DotCr => {
                    if byte == b'\n' {
                        self.state = State::Done;
                        return self.emit(input, start, i, i + 1, true);
                    }
                    self.set_fault(DataFault::BareLineEnding);
                    self.state = State::Mid;
                }
            }
        }
        self.emit(input, start, i, i, self.state == State::Done)
    }

    /// In `Mid` at `input[i]`, consumes the longest run of the input that
    /// holds no `CRLF.` and does not end in CR, in one pass instead of a
    /// search per line, when that run has only CRLF line ends (anything else
    /// goes to the line-by-line path, so faults are found in the same order).
    /// Sets the state and line length as the line-by-line path would; returns
    /// the bytes consumed (0: nothing taken). What it leaves is marked in
    /// `bulk_skip`, so a run with a bare line ending or an overlong line
    /// costs one extra scan, not one per line.
    fn bulk(&mut self, input: &[u8], i: usize) -> usize {
        let rest = input.get(i..).unwrap_or_default();
        let mut k = CRLF_DOT.find(rest).unwrap_or(rest.len());
        if k == rest.len() && rest.last() == Some(&b'\r') {
            k -= 1;
        }
        #[cfg(test)]
        {
            self.bulk_scanned += k;
        }
        let run = rest.get(..k).unwrap_or_default();
        // (`crlf_only` also refuses a leading LF, which in `Mid` is bare.)
        if run.is_empty() || !crlf_only(run) {
            self.bulk_skip = i + k.max(1);
            return 0;
        }
        // Line lengths as the line-by-line path counts them (bytes up to and
        // including the CR), one window of the longest allowed line at a
        // time: the last LF in the window ends every line before it, and all
        // of those fit; no LF in a full window is a line too long.
        let mut start = 0usize; // where the current line's bytes in `run` begin
        let mut carried = self.line_bytes; // its bytes before `run`
        loop {
            let room = SMTP_DATA_LINE_BYTES_MAX.saturating_sub(carried) + 1;
            let end = start.saturating_add(room).min(run.len());
            let window = run.get(start..end).unwrap_or_default();
            match memchr::memrchr(b'\n', window) {
                Some(q) => {
                    start += q + 1;
                    carried = 0;
                }
                None if end == run.len() => {
                    self.line_bytes = carried + window.len();
                    if self.line_bytes > SMTP_DATA_LINE_BYTES_MAX {
                        // Only possible when the line ended just after `run`
                        // would have fit; report as the line path does.
                        self.set_fault(DataFault::LineTooLong);
                    }
                    break;
                }
                None => {
                    // Too long: the line-by-line path takes the rest of the run.
                    self.bulk_skip = i + k;
                    if start == 0 {
                        return 0;
                    }
                    self.line_bytes = 0;
                    self.state = State::LineStart;
                    return start;
                }
            }
            if start == run.len() {
                self.line_bytes = 0;
                break;
            }
        }
        self.state = if run.ends_with(b"\n") {
            State::LineStart
        } else {
            State::Mid
        };
        k
    }

    fn emit<'a>(
        &mut self,
        input: &'a [u8],
        start: usize,
        end: usize,
        consumed: usize,
        done: bool,
    ) -> Decoded<'a> {
        let chunk = input.get(start..end).unwrap_or_default();
        self.bulk_skip = self.bulk_skip.saturating_sub(consumed);
        self.body_bytes = self.body_bytes.saturating_add(chunk.len() as u64);
        if self.body_bytes > self.max_body_bytes {
            self.set_fault(DataFault::TooBig);
        }
        Decoded {
            consumed,
            chunk,
            end: done,
        }
    }
}

/// How a body goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyMode {
    /// After DATA: dot-stuffed, line ends normalised, `.CRLF` appended.
    Data,
    /// After BDAT: line ends normalised, nothing stuffed or appended except
    /// a final CRLF when the body lacks one.
    Bdat,
}

/// A piece of an encoded body: a range of the caller's body or a static
/// insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// These bytes of the body, unchanged.
    Body(Range<usize>),
    /// An insert: `.`, `\r\n` or `\r\n.\r\n` / `.\r\n`.
    Static(&'static [u8]),
}

impl Piece {
    /// The bytes of this piece, borrowed from `body` or static.
    pub fn bytes<'a>(&self, body: &'a [u8]) -> &'a [u8] {
        match self {
            Self::Body(range) => body.get(range.clone()).unwrap_or_default(),
            Self::Static(bytes) => bytes,
        }
    }
}

/// What one pass over a stored body finds: whether its line ends are all
/// CRLF already, and whether it needs 8BITMIME. A client scans a body once
/// per transaction and gives the result to [`BodyEncoder::scanned`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyScan {
    /// Every CR is followed by LF and every LF preceded by CR.
    pub crlf_only: bool,
    /// Bytes above 127.
    pub eight_bit: bool,
}

impl BodyScan {
    /// Both facts in one pass over `body`, without early exit, so the
    /// compiler vectorises it.
    pub fn of(body: &[u8]) -> BodyScan {
        let (Some(&first), Some(&last)) = (body.first(), body.last()) else {
            return BodyScan {
                crlf_only: true,
                eight_bit: false,
            };
        };
        let next = body.get(1..).unwrap_or_default();
        let (bad, high) = body
            .iter()
            .zip(next)
            .fold((0u8, 0u8), |(bad, high), (&a, &b)| {
                (bad | u8::from((a == b'\r') != (b == b'\n')), high | a)
            });
        BodyScan {
            crlf_only: bad == 0 && first != b'\n' && last != b'\r',
            eight_bit: (high | last) >= 0x80,
        }
    }
}

/// Client-side body encoder: an iterator of [`Piece`]s. Bare CR and bare LF
/// in the stored body become CRLF; a line-start dot gets another dot (DATA).
#[derive(Debug, Clone)]
pub struct BodyEncoder<'a> {
    body: &'a [u8],
    pos: usize,
    mode: BodyMode,
    line_start: bool,
    finished: bool,
    /// [`BodyScan::crlf_only`] when the caller scanned already.
    crlf_only: Option<bool>,
}

impl<'a> BodyEncoder<'a> {
    /// Encodes `body` for `mode`.
    pub fn new(body: &'a [u8], mode: BodyMode) -> Self {
        Self {
            body,
            pos: 0,
            mode,
            line_start: true,
            finished: false,
            crlf_only: None,
        }
    }

    /// Encodes `body` for `mode`, trusting `scan` (of this body) instead
    /// of scanning it again. A scan of another body would frame BDAT
    /// wrongly: debug builds check it.
    pub fn scanned(body: &'a [u8], mode: BodyMode, scan: BodyScan) -> Self {
        debug_assert_eq!(scan, BodyScan::of(body), "a scan of another body");
        Self {
            crlf_only: Some(scan.crlf_only),
            ..Self::new(body, mode)
        }
    }

    /// The same sequence as byte slices (for `write_vectored`).
    pub fn slices(self) -> impl Iterator<Item = &'a [u8]> {
        let body = self.body;
        self.map(move |piece| piece.bytes(body))
    }

    /// Total encoded length (what BDAT must announce). Scans, never copies.
    pub fn encoded_len(body: &[u8], mode: BodyMode) -> u64 {
        BodyEncoder::new(body, mode).total()
    }

    /// [`Self::encoded_len`] with the body's [`BodyScan`] known.
    pub fn encoded_len_scanned(body: &[u8], mode: BodyMode, scan: BodyScan) -> u64 {
        BodyEncoder::scanned(body, mode, scan).total()
    }

    /// The length of what is left to encode (consumes the encoder).
    fn total(self) -> u64 {
        self.map(|piece| match piece {
            Piece::Body(range) => range.len() as u64,
            Piece::Static(bytes) => bytes.len() as u64,
        })
        .sum()
    }

    /// Copies the encoding into one buffer (tests and small messages).
    pub fn to_vec(body: &[u8], mode: BodyMode) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 8);
        for slice in BodyEncoder::new(body, mode).slices() {
            out.extend_from_slice(slice);
        }
        out
    }
}

/// True when every CR in `body` is followed by LF and every LF preceded by
/// CR.
fn crlf_only(body: &[u8]) -> bool {
    BodyScan::of(body).crlf_only
}

/// True when the body has bytes above 127 (needs BODY=8BITMIME); what
/// [`BodyScan::eight_bit`] is checked against.
#[cfg(test)]
fn is_8bit(body: &[u8]) -> bool {
    !body.is_ascii()
}

impl Iterator for BodyEncoder<'_> {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        let body = self.body;
        let Some(&first) = body.get(self.pos) else {
            if self.finished {
                return None;
            }
            self.finished = true;
            return match (self.mode, self.line_start) {
                (BodyMode::Data, true) => Some(Piece::Static(b".\r\n")),
                (BodyMode::Data, false) => Some(Piece::Static(b"\r\n.\r\n")),
                (BodyMode::Bdat, true) => None,
                (BodyMode::Bdat, false) => Some(Piece::Static(b"\r\n")),
            };
        };
        if self.pos == 0
            && self.mode == BodyMode::Bdat
            && self.crlf_only.unwrap_or_else(|| crlf_only(body))
        {
            // The usual case (the inbound side stores CRLF lines): the whole
            // body in one piece, without a search per line.
            self.pos = body.len();
            self.line_start = body.ends_with(b"\r\n");
            return Some(Piece::Body(0..body.len()));
        }
        if self.line_start && first == b'.' && self.mode == BodyMode::Data {
            self.line_start = false;
            return Some(Piece::Static(b"."));
        }
        if first == b'\r' && body.get(self.pos + 1) != Some(&b'\n') || first == b'\n' {
            // a bare line ending becomes CRLF
            self.pos += 1;
            self.line_start = true;
            return Some(Piece::Static(b"\r\n"));
        }
        // A run of unchanged bytes: up to a bare line ending, a line-start
        // dot (DATA), or the end.
        let start = self.pos;
        let mut k = start;
        loop {
            let rest = body.get(k..).unwrap_or_default();
            let Some(p) = memchr::memchr2(b'\r', b'\n', rest) else {
                if !rest.is_empty() {
                    self.line_start = false;
                }
                k = body.len();
                break;
            };
            let at = k + p;
            let proper = body.get(at) == Some(&b'\r') && body.get(at + 1) == Some(&b'\n');
            if !proper {
                k = at;
                self.line_start = false;
                break;
            }
            k = at + 2;
            self.line_start = true;
            if self.mode == BodyMode::Data && body.get(k) == Some(&b'.') {
                break;
            }
        }
        // `k > start` always: `first` is neither a bare line ending nor a
        // line-start dot, so the run holds at least one byte.
        self.pos = k;
        Some(Piece::Body(start..k))
    }
}

#[cfg(test)]
mod tests;
