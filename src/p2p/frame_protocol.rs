//! A request-response codec for protocols whose messages are single opaque frames: the
//! request is the bytes the requester writes before closing its side of the stream, the
//! response likewise. Both are size-limited; what the bytes mean is the owning service's
//! business (the market decodes them), so the swarm stays ignorant of it.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;
use prometheus_client::metrics::counter::Counter;

/// The market's protocol: bids, awards and task results (see docs/PROTOCOL.md).
pub const MARKET_PROTOCOL: StreamProtocol = StreamProtocol::new("/zerostate/market/1");
/// Largest market request frame: one signed award (at most 16 KiB) and its framing.
pub const MAX_MARKET_REQUEST_BYTES: u64 = 16 * 1024 + 64;
/// Largest market response frame.
pub const MAX_MARKET_RESPONSE_BYTES: u64 = 256;
/// The payment channels' protocol: opens, state updates and closes (see docs/PROTOCOL.md).
pub const CHANNEL_PROTOCOL: StreamProtocol = StreamProtocol::new("/zerostate/channel/1");
/// Largest channel request or response frame: a close or a dispute, each one signed state
/// (at most 8 KiB) with its signatures and framing.
pub const MAX_CHANNEL_FRAME_BYTES: u64 = 9 * 1024;

/// The protocols whose messages are opaque, size-limited frames that their service decodes.
/// Adding one: a variant, its arm in [`FrameProtocol::spec`], a behaviour field and a marker
/// in `routing` (one line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameProtocol {
    /// `/zerostate/market/1`: bids, awards, results.
    Market,
    /// `/zerostate/channel/1`: payment channel states and closes.
    Channel,
}

/// What tells one frame protocol from another.
#[derive(Debug, Clone)]
pub struct FrameSpec {
    /// The metric label.
    pub label: &'static str,
    /// The protocol name on the wire.
    pub protocol: StreamProtocol,
    /// Largest request frame, in bytes.
    pub max_request: u64,
    /// Largest response frame, in bytes.
    pub max_response: u64,
}

impl FrameProtocol {
    /// The protocol's name, label and frame limits: the one place they are defined.
    pub const fn spec(self) -> FrameSpec {
        match self {
            Self::Market => FrameSpec {
                label: "market",
                protocol: MARKET_PROTOCOL,
                max_request: MAX_MARKET_REQUEST_BYTES,
                max_response: MAX_MARKET_RESPONSE_BYTES,
            },
            Self::Channel => FrameSpec {
                label: "channel",
                protocol: CHANNEL_PROTOCOL,
                max_request: MAX_CHANNEL_FRAME_BYTES,
                max_response: MAX_CHANNEL_FRAME_BYTES,
            },
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        self.spec().label
    }

    /// A codec with the protocol's frame limits, counting the requests it refuses into
    /// `malformed_requests`.
    pub fn codec(self, malformed_requests: Counter) -> FrameCodec {
        let spec = self.spec();
        FrameCodec::new(spec.max_request, spec.max_response, malformed_requests)
    }
}

/// Codec of size-limited opaque frames. Request-response reports no event when reading a
/// request fails, so the codec counts the requests it refuses itself.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_request: u64,
    max_response: u64,
    malformed_requests: Counter,
}

impl FrameCodec {
    /// A codec for frames of at most `max_request` / `max_response` bytes.
    pub fn new(max_request: u64, max_response: u64, malformed_requests: Counter) -> Self {
        Self {
            max_request,
            max_response,
            malformed_requests,
        }
    }
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max + 1).read_to_end(&mut buf).await?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame exceeds the limit of {max} bytes"),
        ));
    }
    if buf.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "empty frame"));
    }
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, frame: &[u8]) -> io::Result<()> {
    io.write_all(frame).await?;
    io.close().await
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let result = read_frame(io, self.max_request).await;
        if let Err(e) = &result
            && e.kind() == io::ErrorKind::InvalidData
        {
            self.malformed_requests.inc();
        }
        result
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &response).await
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    use super::*;

    #[tokio::test]
    async fn frames_over_the_limit_or_empty_are_refused_and_counted() {
        let counter = Counter::default();
        let mut codec = FrameCodec::new(8, 4, counter.clone());
        let p = MARKET_PROTOCOL;
        let ok = codec.read_request(&p, &mut Cursor::new(vec![1; 8])).await;
        assert_eq!(ok.unwrap(), vec![1; 8]);
        for bad in [vec![1; 9], vec![]] {
            let e = codec.read_request(&p, &mut Cursor::new(bad)).await;
            assert_eq!(e.unwrap_err().kind(), io::ErrorKind::InvalidData);
        }
        assert_eq!(counter.get(), 2);
        assert!(
            codec
                .read_response(&p, &mut Cursor::new(vec![1; 5]))
                .await
                .is_err()
        );
    }
}
