//! `/zerostate/content/1`: get content by id from a peer.
//!
//! Request: the binary CID of the wanted content (at most [`MAX_REQUEST_BYTES`]).
//! Response: one status byte (`1` found, `0` not found), then, if found, the content up to the
//! end of the stream. Both sides enforce their size limits while reading, so a peer cannot
//! make us buffer more than the configured maximum object size.

use std::io;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;
use prometheus_client::metrics::counter::Counter;

use crate::content_id::ContentId;

/// The protocol name.
pub const CONTENT_PROTOCOL: StreamProtocol = StreamProtocol::new("/zerostate/content/1");
/// Largest request: a binary CID.
pub const MAX_REQUEST_BYTES: u64 = ContentId::MAX_BINARY_LEN as u64;

const FOUND: u8 = 1;
const NOT_FOUND: u8 = 0;

/// Asks for the content with this id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentRequest(pub ContentId);

/// The answer to a [`ContentRequest`]. Found bytes are not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentResponse {
    /// The peer sent these bytes.
    Found(Bytes),
    /// The peer does not have the content.
    NotFound,
}

/// Why a content request to a peer produced no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestFailure {
    /// The peer's response broke the protocol or exceeded our size limit.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// Dial failure, timeout, closed connection, unsupported protocol.
    #[error("{0}")]
    Failed(String),
}

impl RequestFailure {
    /// Classifies a request-response outbound failure.
    pub fn from_outbound(error: &libp2p::request_response::OutboundFailure) -> Self {
        match error {
            libp2p::request_response::OutboundFailure::Io(e)
                if e.kind() == io::ErrorKind::InvalidData =>
            {
                Self::Malformed(e.to_string())
            }
            other => Self::Failed(other.to_string()),
        }
    }
}

/// Codec with a maximum object size. Request-response reports no event when reading a
/// request fails, so the codec counts the requests it refuses itself.
#[derive(Debug, Clone)]
pub struct ContentCodec {
    max_object_bytes: u64,
    malformed_requests: Counter,
}

impl ContentCodec {
    /// A codec that refuses responses larger than `max_object_bytes` and counts refused
    /// requests in `malformed_requests`.
    pub fn new(max_object_bytes: u64, malformed_requests: Counter) -> Self {
        Self {
            max_object_bytes,
            malformed_requests,
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads at most `max` bytes, failing if the stream has more.
async fn read_limited<T: AsyncRead + Unpin + Send>(io: &mut T, max: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max + 1).read_to_end(&mut buf).await?;
    if buf.len() as u64 > max {
        return Err(invalid(format!("message exceeds the limit of {max} bytes")));
    }
    Ok(buf)
}

impl request_response::Codec for ContentCodec {
    type Protocol = StreamProtocol;
    type Request = ContentRequest;
    type Response = ContentResponse;

    async fn read_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ContentRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let result = match read_limited(io, MAX_REQUEST_BYTES).await {
            Ok(buf) => ContentId::from_bytes(&buf)
                .map(ContentRequest)
                .map_err(|e| invalid(format!("bad content id: {e}"))),
            Err(e) => Err(e),
        };
        if let Err(e) = &result
            && e.kind() == io::ErrorKind::InvalidData
        {
            self.malformed_requests.inc();
        }
        result
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ContentResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_limited(io, self.max_object_bytes + 1).await?;
        match buf.split_first() {
            Some((&FOUND, data)) => Ok(ContentResponse::Found(Bytes::copy_from_slice(data))),
            Some((&NOT_FOUND, [])) => Ok(ContentResponse::NotFound),
            Some((status, _)) => Err(invalid(format!("unknown status byte {status}"))),
            None => Err(invalid("empty response".into())),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        ContentRequest(id): ContentRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&id.to_bytes()).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: ContentResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match response {
            ContentResponse::Found(data) => {
                io.write_all(&[FOUND]).await?;
                io.write_all(&data).await?;
            }
            ContentResponse::NotFound => io.write_all(&[NOT_FOUND]).await?,
        }
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn request_and_response_round_trip() {
        let mut codec = ContentCodec::new(16, Counter::default());
        let id = ContentId::of(b"hello");
        let mut wire = Cursor::new(Vec::new());
        run(codec.write_request(&CONTENT_PROTOCOL, &mut wire, ContentRequest(id))).unwrap();
        let mut read = Cursor::new(wire.into_inner());
        let got = run(codec.read_request(&CONTENT_PROTOCOL, &mut read)).unwrap();
        assert_eq!(got, ContentRequest(id));

        for response in [
            ContentResponse::Found(Bytes::from_static(b"hello")),
            ContentResponse::Found(Bytes::new()),
            ContentResponse::NotFound,
        ] {
            let mut wire = Cursor::new(Vec::new());
            run(codec.write_response(&CONTENT_PROTOCOL, &mut wire, response.clone())).unwrap();
            let mut read = Cursor::new(wire.into_inner());
            let got = run(codec.read_response(&CONTENT_PROTOCOL, &mut read)).unwrap();
            assert_eq!(got, response);
        }
    }

    #[test]
    fn oversized_and_malformed_messages_are_rejected() {
        let refused = Counter::default();
        let mut codec = ContentCodec::new(4, refused.clone());
        let mut big = vec![FOUND];
        big.extend_from_slice(b"12345");
        let err = run(codec.read_response(&CONTENT_PROTOCOL, &mut Cursor::new(big))).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        let err =
            run(codec.read_response(&CONTENT_PROTOCOL, &mut Cursor::new(vec![7u8]))).unwrap_err();
        assert!(err.to_string().contains("status"), "{err}");
        let err = run(codec.read_request(&CONTENT_PROTOCOL, &mut Cursor::new(vec![1u8; 100])))
            .unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        let err = run(codec.read_request(&CONTENT_PROTOCOL, &mut Cursor::new(vec![1u8, 2, 3])))
            .unwrap_err();
        assert!(err.to_string().contains("bad content id"), "{err}");
        assert_eq!(refused.get(), 2, "both refused requests are counted");
    }
}
