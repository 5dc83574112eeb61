//! The request-response codec of hydromesh: one versioned bincode envelope per stream, read
//! with a byte limit so an oversized or endless message is refused before it is decoded.

use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{de::DeserializeOwned, Serialize};

/// Bytes of inbound requests a node reads at once, over every stream of every protocol: a peer
/// that opens many streams and stalls each just under its size limit cannot grow the node's
/// memory past this (a request that would is refused, and its stream closed).
pub const MAX_INBOUND_BUFFERED: usize = 64 << 20;
/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The bytes of inbound requests being read, shared by every protocol of one swarm.
#[derive(Clone, Debug)]
pub struct Budget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Budget { used: Arc::default(), limit }
    }
}

/// Bytes taken from a [`Budget`], given back when dropped.
struct Held<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Held<'_> {
    fn take(&mut self, bytes: usize) -> io::Result<()> {
        let before = self.budget.used.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.budget.limit {
            self.budget.used.fetch_sub(bytes, Ordering::Relaxed);
            return Err(io::Error::other(format!(
                "busy: inbound requests being read already take {before} bytes of {}",
                self.budget.limit
            )));
        }
        self.bytes += bytes;
        Ok(())
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A codec for requests `Req` and responses `Resp` with their size limits; inbound requests
/// are read within a [`Budget`].
pub struct Codec<Req, Resp> {
    request_limit: usize,
    response_limit: usize,
    budget: Budget,
    types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Codec<Req, Resp> {
    /// A codec refusing requests over `request_limit` and responses over `response_limit` bytes,
    /// and inbound requests past `budget`.
    pub fn new(request_limit: usize, response_limit: usize, budget: Budget) -> Self {
        Codec { request_limit, response_limit, budget, types: PhantomData }
    }
}

impl<Req, Resp> Clone for Codec<Req, Resp> {
    fn clone(&self) -> Self {
        Codec::new(self.request_limit, self.response_limit, self.budget.clone())
    }
}

/// A message of at most `limit` bytes, read to the end of the stream (with `budget`, each byte
/// held is taken from it until the message is decoded).
async fn read_message<T, Io>(io: &mut Io, limit: usize, budget: Option<&Budget>) -> io::Result<T>
where
    T: DeserializeOwned,
    Io: AsyncRead + Unpin + Send,
{
    let mut bytes = Vec::new();
    let mut held = budget.map(|budget| Held { budget, bytes: 0 });
    // One byte more than the limit tells an oversized message from one exactly at the limit.
    let mut io = io.take(limit as u64 + 1);
    loop {
        let before = bytes.len();
        (&mut io).take(READ_CHUNK as u64).read_to_end(&mut bytes).await?;
        let read = bytes.len() - before;
        if read == 0 {
            break;
        }
        if let Some(held) = &mut held {
            held.take(read)?;
        }
    }
    hydromesh_proto::decode(&bytes, limit).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_message<T, Io>(io: &mut Io, message: &T, limit: usize) -> io::Result<()>
where
    T: Serialize,
    Io: AsyncWrite + Unpin + Send,
{
    let bytes =
        hydromesh_proto::encode(message).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if bytes.len() > limit {
        let error = hydromesh_proto::WireError::TooLarge { size: bytes.len(), limit };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, error));
    }
    io.write_all(&bytes).await?;
    io.close().await
}

impl<Req, Resp> libp2p::request_response::Codec for Codec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + Sync,
    Resp: Serialize + DeserializeOwned + Send + Sync,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io, self.request_limit, Some(&self.budget)).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io, self.response_limit, None).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, request: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &request, self.request_limit).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, response: Resp) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, &response, self.response_limit).await
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;
    use libp2p::request_response::Codec as _;

    use super::*;
    use hydromesh_proto::query;

    #[tokio::test]
    async fn messages_round_trip_and_oversized_ones_are_refused() {
        let mut codec: Codec<query::Request, query::Response> = Codec::new(64, 64, Budget::new(1 << 20));
        let protocol = StreamProtocol::new("/test/1");
        let mut buffer = Cursor::new(Vec::new());
        codec.write_request(&protocol, &mut buffer, query::Request::Stats).await.expect("write");
        let mut reader = Cursor::new(buffer.into_inner());
        assert_eq!(codec.read_request(&protocol, &mut reader).await.expect("read"), query::Request::Stats);

        let mut huge = Cursor::new(vec![1u8; 1000]);
        let error = codec.read_request(&protocol, &mut huge).await.expect_err("too large");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("exceeds the limit of 64 bytes"), "{error}");

        let big = query::Response::Error("x".repeat(100));
        let error =
            codec.write_response(&protocol, &mut Cursor::new(Vec::new()), big).await.expect_err("too large");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn requests_being_read_share_one_budget() {
        let budget = Budget::new(100);
        let mut codec: Codec<query::Request, query::Response> = Codec::new(1000, 1000, budget.clone());
        let protocol = StreamProtocol::new("/test/1");
        // Another stream holds 90 bytes of the budget: a request of more than 10 is refused.
        let mut other = Held { budget: &budget, bytes: 0 };
        other.take(90).expect("within the budget");
        let mut request = Cursor::new(Vec::new());
        let padded =
            query::Request::Meter { meter: 1.into(), from_ms: Some(u64::MAX), to_ms: Some(u64::MAX - 1) };
        codec.write_request(&protocol, &mut request, padded.clone()).await.expect("write");
        let bytes = request.into_inner();
        assert!(bytes.len() > 10, "{} bytes", bytes.len());
        let error = codec.read_request(&protocol, &mut Cursor::new(bytes.clone())).await.expect_err("over");
        assert!(error.to_string().contains("busy"), "{error}");
        // Given back: read whole, and the budget is whole again after.
        drop(other);
        assert_eq!(codec.read_request(&protocol, &mut Cursor::new(bytes)).await.expect("read"), padded);
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }
}
