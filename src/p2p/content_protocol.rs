//! `/zerostate/content/2`: get content by id from a peer.
//!
//! Request: the binary CID of the wanted content (at most [`MAX_REQUEST_BYTES`]).
//! Response: one status byte, `0` not found, or `1` found followed by the length as a u64
//! big-endian and exactly that many bytes. The reader refuses a length over its maximum
//! object size before reading the data, reads into one buffer of the announced size, and
//! takes that many bytes from a budget shared by every response being received, so the
//! bytes buffered across all fetches stay bounded.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::content_id::ContentId;

/// The protocol name.
pub const CONTENT_PROTOCOL: StreamProtocol = StreamProtocol::new("/zerostate/content/2");
/// Largest request: a binary CID.
pub const MAX_REQUEST_BYTES: u64 = ContentId::MAX_BINARY_LEN as u64;

const FOUND: u8 = 1;
const NOT_FOUND: u8 = 0;
/// The buffer budget counts in units of this many bytes.
const BUDGET_UNIT: u64 = 1024;

/// Asks for the content with this id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentRequest(pub ContentId);

/// Bytes of a content response, holding their share of the receive budget until dropped.
#[derive(Debug, Clone)]
pub struct Payload {
    bytes: Bytes,
    _lease: Option<Arc<OwnedSemaphorePermit>>,
}

impl Payload {
    /// Bytes to send (no budget involved).
    pub fn new(bytes: Bytes) -> Self {
        Self {
            bytes,
            _lease: None,
        }
    }

    /// The bytes (not verified). Keep the payload alive while working on them: it holds
    /// their place in the receive budget.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Payload {}

/// The answer to a [`ContentRequest`]. Found bytes are not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentResponse {
    /// The peer sent these bytes.
    Found(Payload),
    /// The peer does not have the content.
    NotFound,
}

/// The receive budget is used up: too many bytes are being received at once.
#[derive(Debug, thiserror::Error)]
#[error("the content receive budget is used up")]
pub struct BudgetExhausted;

/// Codec with a maximum object size and a shared receive budget. Request-response reports no
/// event when reading a request fails, so the codec counts the requests it refuses itself.
#[derive(Debug, Clone)]
pub struct ContentCodec {
    max_object_bytes: u64,
    budget: Arc<Semaphore>,
    malformed_requests: Counter,
}

impl ContentCodec {
    /// A codec that refuses responses larger than `max_object_bytes`, buffers at most
    /// `max_buffered_bytes` across all responses being read (clones share the budget), and
    /// counts refused requests in `malformed_requests`.
    pub fn new(
        max_object_bytes: u64,
        max_buffered_bytes: u64,
        malformed_requests: Counter,
    ) -> Self {
        let units = max_buffered_bytes
            .max(max_object_bytes)
            .div_ceil(BUDGET_UNIT)
            .min(Semaphore::MAX_PERMITS as u64) as usize;
        Self {
            max_object_bytes,
            budget: Arc::new(Semaphore::new(units)),
            malformed_requests,
        }
    }

    /// Bytes of budget left.
    #[cfg(test)]
    fn budget_available(&self) -> u64 {
        self.budget.available_permits() as u64 * BUDGET_UNIT
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
        let mut status = [0u8; 1];
        match io.read_exact(&mut status).await {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(invalid("empty response".into()));
            }
            other => other?,
        }
        match status[0] {
            NOT_FOUND => {
                expect_end(io).await?;
                return Ok(ContentResponse::NotFound);
            }
            FOUND => {}
            other => return Err(invalid(format!("unknown status byte {other}"))),
        }
        let mut len = [0u8; 8];
        io.read_exact(&mut len)
            .await
            .map_err(|_| invalid("truncated length".into()))?;
        let len = u64::from_be_bytes(len);
        if len > self.max_object_bytes {
            return Err(invalid(format!(
                "announced {len} bytes, over the limit of {} bytes",
                self.max_object_bytes
            )));
        }
        let units = len.div_ceil(BUDGET_UNIT) as u32;
        let lease = self
            .budget
            .clone()
            .try_acquire_many_owned(units)
            .map_err(|_| io::Error::other(BudgetExhausted))?;
        let mut data = vec![0u8; len as usize];
        io.read_exact(&mut data).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid(format!("announced {len} bytes but the stream ended early"))
            } else {
                e
            }
        })?;
        expect_end(io).await?;
        Ok(ContentResponse::Found(Payload {
            bytes: Bytes::from(data),
            _lease: Some(Arc::new(lease)),
        }))
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
            ContentResponse::Found(payload) => {
                io.write_all(&[FOUND]).await?;
                io.write_all(&(payload.bytes.len() as u64).to_be_bytes())
                    .await?;
                io.write_all(&payload.bytes).await?;
            }
            ContentResponse::NotFound => io.write_all(&[NOT_FOUND]).await?,
        }
        io.close().await
    }
}

/// Fails if the stream has more bytes.
async fn expect_end<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<()> {
    let mut extra = [0u8; 1];
    match io.read(&mut extra).await? {
        0 => Ok(()),
        _ => Err(invalid("trailing bytes after the response".into())),
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

    fn found(data: &'static [u8]) -> ContentResponse {
        ContentResponse::Found(Payload::new(Bytes::from_static(data)))
    }

    fn wire(codec: &mut ContentCodec, response: ContentResponse) -> Vec<u8> {
        let mut wire = Cursor::new(Vec::new());
        run(codec.write_response(&CONTENT_PROTOCOL, &mut wire, response)).unwrap();
        wire.into_inner()
    }

    fn read(codec: &mut ContentCodec, bytes: Vec<u8>) -> io::Result<ContentResponse> {
        run(codec.read_response(&CONTENT_PROTOCOL, &mut Cursor::new(bytes)))
    }

    #[test]
    fn request_and_response_round_trip() {
        let mut codec = ContentCodec::new(16, 1 << 20, Counter::default());
        let id = ContentId::of(b"hello");
        let mut wire_req = Cursor::new(Vec::new());
        run(codec.write_request(&CONTENT_PROTOCOL, &mut wire_req, ContentRequest(id))).unwrap();
        let mut r = Cursor::new(wire_req.into_inner());
        let got = run(codec.read_request(&CONTENT_PROTOCOL, &mut r)).unwrap();
        assert_eq!(got, ContentRequest(id));

        for response in [found(b"hello"), found(b""), ContentResponse::NotFound] {
            let bytes = wire(&mut codec, response.clone());
            assert_eq!(read(&mut codec, bytes).unwrap(), response);
        }
    }

    #[test]
    fn oversized_and_malformed_messages_are_rejected() {
        let refused = Counter::default();
        let mut codec = ContentCodec::new(4, 1 << 20, refused.clone());
        // An announced length over the limit is refused before any data is read.
        let mut big = vec![FOUND];
        big.extend_from_slice(&u64::MAX.to_be_bytes());
        let err = read(&mut codec, big).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
        let mut short = vec![FOUND];
        short.extend_from_slice(&4u64.to_be_bytes());
        short.extend_from_slice(b"abc");
        let err = read(&mut codec, short).unwrap_err();
        assert!(err.to_string().contains("ended early"), "{err}");
        let mut long = vec![FOUND];
        long.extend_from_slice(&2u64.to_be_bytes());
        long.extend_from_slice(b"abc");
        let err = read(&mut codec, long).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
        let err = read(&mut codec, vec![7u8]).unwrap_err();
        assert!(err.to_string().contains("status"), "{err}");
        let err = read(&mut codec, vec![]).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = read(&mut codec, vec![NOT_FOUND, 1]).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
        let err = run(codec.read_request(&CONTENT_PROTOCOL, &mut Cursor::new(vec![1u8; 100])))
            .unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        let err = run(codec.read_request(&CONTENT_PROTOCOL, &mut Cursor::new(vec![1u8, 2, 3])))
            .unwrap_err();
        assert!(err.to_string().contains("bad content id"), "{err}");
        assert_eq!(refused.get(), 2, "both refused requests are counted");
    }

    #[test]
    fn received_bytes_hold_the_shared_budget_until_dropped() {
        let mut codec = ContentCodec::new(4096, 8192, Counter::default());
        let mut other = codec.clone();
        let bytes = wire(&mut codec, found(&[5u8; 4096]));
        let first = read(&mut codec, bytes.clone()).unwrap();
        assert_eq!(codec.budget_available(), 4096);
        let second = read(&mut other, bytes.clone()).unwrap();
        assert_eq!(codec.budget_available(), 0, "clones share one budget");
        let err = read(&mut codec, bytes.clone()).unwrap_err();
        assert!(
            err.get_ref().is_some_and(|e| e.is::<BudgetExhausted>()),
            "{err}"
        );
        drop(first);
        assert_eq!(codec.budget_available(), 4096);
        assert!(read(&mut codec, bytes).is_ok());
        drop(second);
    }
}
