//! The request-response codec of hydromesh: one versioned bincode envelope per stream, read
//! with a byte limit so an oversized or endless message is refused before it is decoded.

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{de::DeserializeOwned, Serialize};

/// A codec for requests `Req` and responses `Resp` with their size limits.
pub struct Codec<Req, Resp> {
    request_limit: usize,
    response_limit: usize,
    types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Codec<Req, Resp> {
    /// A codec refusing requests over `request_limit` and responses over `response_limit` bytes.
    pub fn new(request_limit: usize, response_limit: usize) -> Self {
        Codec { request_limit, response_limit, types: PhantomData }
    }
}

impl<Req, Resp> Clone for Codec<Req, Resp> {
    fn clone(&self) -> Self {
        Codec::new(self.request_limit, self.response_limit)
    }
}

async fn read_message<T, Io>(io: &mut Io, limit: usize) -> io::Result<T>
where
    T: DeserializeOwned,
    Io: AsyncRead + Unpin + Send,
{
    let mut bytes = Vec::new();
    // One byte more than the limit tells an oversized message from one exactly at the limit.
    io.take(limit as u64 + 1).read_to_end(&mut bytes).await?;
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
        read_message(io, self.request_limit).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io, self.response_limit).await
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
        let mut codec: Codec<query::Request, query::Response> = Codec::new(64, 64);
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
}
