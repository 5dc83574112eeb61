//! What the benchmark drivers of `scripts/bench.sh` share.

use std::path::Path;

use anyhow::Context;
use hydromesh_proto::MeterId;

/// The numeric meter id `n` (below 10^12: a driver's own ids).
pub fn meter(n: u64) -> MeterId {
    MeterId::number(n).expect("a numeric meter id")
}

/// Apparent size of a folder and everything in it, as `du -sb` counts it.
pub fn disk_usage(path: &Path) -> anyhow::Result<u64> {
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let mut total = meta.len();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            total += disk_usage(&entry?.path())?;
        }
    }
    Ok(total)
}

/// A minimal HTTP/1.1 client over keep-alive TCP connections, for load generators that must
/// cost the machine less than the node they load.
pub mod http1 {
    use std::io;
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Largest response head or body accepted.
    const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

    /// A response's status and its `Retry-After` seconds, if any.
    #[derive(Clone, Copy, Debug)]
    pub struct Answer {
        /// The status code.
        pub status: u16,
        /// Seconds of `Retry-After`.
        pub retry_after_s: Option<u64>,
        /// The server said it closes the connection after this response.
        pub closes: bool,
    }

    /// A TCP connection with Nagle off (requests are written whole).
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Sends one request (head and body, already formatted) and reads its whole response, which
    /// must have a `Content-Length`; `buf` is scratch space kept between calls.
    pub async fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> io::Result<Answer> {
        stream.write_all(request).await?;
        buf.clear();
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            read_more(stream, buf).await?;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status =
            head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| invalid("no status"))?;
        let header = |wanted: &str| {
            head.lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case(wanted))
                .map(|(_, value)| value.trim().to_owned())
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| invalid("no content-length"))?;
        while buf.len() < head_end + length {
            read_more(stream, buf).await?;
        }
        Ok(Answer {
            status,
            retry_after_s: header("retry-after").and_then(|v| v.parse().ok()),
            closes: header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")),
        })
    }

    async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(invalid("response too large"));
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn invalid(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
    }
}

/// The value of a counter line of the Prometheus text (0 when absent).
pub fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or(0)
}

/// The nearest-rank percentile of sorted values (0 when there are none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
