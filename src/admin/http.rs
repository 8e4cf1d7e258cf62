//! The admin API's HTTP/1.1 framing: read one bounded request from a
//! blocking stream, write one response. One request per connection
//! (`Connection: close`): the API is low-rate and this keeps the server a
//! few dozen lines. Routing and authorisation live in `api.rs`.

use std::io::{Read, Write};

/// Largest request head (request line and headers).
pub const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Most header lines in one request.
pub const REQUEST_HEADERS_MAX: usize = 64;
/// Largest request body (the only bodies are `{"mode":"..."}`).
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;
/// Read chunk size.
const READ_CHUNK_BYTES: usize = 4096;

const _: () = assert!(REQUEST_BODY_BYTES_MAX >= READ_CHUNK_BYTES);

/// One parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The request target without the query string, still percent-encoded.
    pub path: String,
    /// The query string (after `?`), still percent-encoded; "" when none.
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why no request could be read; each maps to one answer (or none).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed or timed out before a complete head: no answer.
    #[error("connection closed before a complete request")]
    Closed,
    #[error("request head or body too large")]
    TooLarge,
    #[error("bad request: {0}")]
    Bad(&'static str),
}

/// Reads one request; the stream's read timeout bounds the wait.
pub fn read_request(stream: &mut impl Read) -> Result<Request, ReadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS_MAX];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = req.method.unwrap_or("").to_string();
                let target = req.path.unwrap_or("");
                let path = target.split('?').next().unwrap_or("").to_string();
                let query = target.split_once('?').map_or("", |(_, q)| q).to_string();
                let headers: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).trim().to_string(),
                        )
                    })
                    .collect();
                let mut request = Request {
                    method,
                    path,
                    query,
                    headers,
                    body: Vec::new(),
                };
                if request.header("transfer-encoding").is_some() {
                    return Err(ReadError::Bad("chunked bodies are not accepted"));
                }
                let length = match request.header("content-length") {
                    None => 0,
                    Some(v) => v
                        .parse::<usize>()
                        .map_err(|_| ReadError::Bad("bad Content-Length"))?,
                };
                if length > REQUEST_BODY_BYTES_MAX {
                    return Err(ReadError::TooLarge);
                }
                let mut body = buf.get(head_len..).unwrap_or_default().to_vec();
                while body.len() < length {
                    let n = stream.read(&mut chunk).map_err(|_| ReadError::Closed)?;
                    if n == 0 {
                        return Err(ReadError::Closed);
                    }
                    body.extend_from_slice(chunk.get(..n).unwrap_or_default());
                }
                body.truncate(length);
                request.body = body;
                return Ok(request);
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(ReadError::TooLarge),
            Err(_) => return Err(ReadError::Bad("malformed request head")),
        }
        if buf.len() >= REQUEST_HEAD_BYTES_MAX {
            return Err(ReadError::TooLarge);
        }
        let n = stream.read(&mut chunk).map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// One response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A JSON answer.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Self::new(status, "application/json", body)
    }

    /// `{"error": message}` with that status.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(status, &serde_json::json!({ "error": message.into() }))
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Serialises the response (head and body) for the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    pub fn write_to(&self, stream: &mut impl Write) -> std::io::Result<()> {
        stream.write_all(&self.encode())?;
        stream.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Decodes `%XX` escapes; `None` on a bad escape or non-UTF-8 result.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_request_split_at_every_byte() {
        let raw = b"POST /api/v1/queues/a%2Fb/mode?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 18\r\n\r\n{\"mode\":\"backoff\"}";
        for split in 1..raw.len() {
            let mut r = Chunks(vec![&raw[..split], &raw[split..]]);
            let req = read_request(&mut r).unwrap();
            assert_eq!(req.method, "POST");
            assert_eq!(req.path, "/api/v1/queues/a%2Fb/mode");
            assert_eq!(req.body, b"{\"mode\":\"backoff\"}");
        }
    }

    #[test]
    fn refuses_oversize_and_malformed() {
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            REQUEST_BODY_BYTES_MAX + 1
        );
        let mut r = Chunks(vec![big.as_bytes()]);
        assert!(matches!(read_request(&mut r), Err(ReadError::TooLarge)));
        let head = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n",
            "a".repeat(REQUEST_HEAD_BYTES_MAX)
        );
        let mut r = Chunks(vec![head.as_bytes()]);
        assert!(matches!(read_request(&mut r), Err(ReadError::TooLarge)));
        let mut r = Chunks(vec![b"GET /\0 HTTP/1.1\r\n\r\n"]);
        assert!(matches!(read_request(&mut r), Err(ReadError::Bad(_))));
        let mut r = Chunks(vec![b"GET / HTTP/1.1\r\nHost"]);
        assert!(matches!(read_request(&mut r), Err(ReadError::Closed)));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("gmail.com%2Fip1").unwrap(), "gmail.com/ip1");
        assert_eq!(percent_decode("%2a%2F%2A").unwrap(), "*/*");
        assert!(percent_decode("%2").is_none());
        assert!(percent_decode("%zz").is_none());
        assert!(percent_decode("%ff").is_none());
    }

    struct Chunks<'a>(Vec<&'a [u8]>);
    impl Read for Chunks<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let first = self.0.remove(0);
            let n = first.len().min(out.len());
            out[..n].copy_from_slice(&first[..n]);
            if n < first.len() {
                self.0.insert(0, &first[n..]);
            }
            Ok(n)
        }
    }
}
