//! The codec: signing and opening envelopes, and every message's protobuf form with the
//! field checks its decoding does.

use super::*;

/// Signs `body` with `key`. Fails only if the key cannot sign (never for ed25519).
pub fn sign<T: WireMessage>(key: &Keypair, body: T) -> Signed<T> {
    let envelope = SignedEnvelope::new(
        key,
        DOMAIN.to_owned(),
        T::PAYLOAD_TYPE.to_vec(),
        body.encode_payload(),
    )
    .expect("ed25519 keys always sign");
    Signed {
        body,
        signer: key.public().to_peer_id(),
        bytes: Bytes::from(envelope.into_protobuf_encoding()),
    }
}

/// Opens a signed message: size, envelope, payload type, signature, fields, signer.
pub fn open<T: WireMessage>(bytes: &[u8]) -> Result<Signed<T>, Refusal> {
    if bytes.len() > T::MAX_BYTES {
        return Err(Refusal::Oversized);
    }
    let envelope = SignedEnvelope::from_protobuf_encoding(bytes).map_err(|_| Refusal::Malformed)?;
    let (payload, key) = envelope
        .payload_and_signing_key(DOMAIN.to_owned(), T::PAYLOAD_TYPE)
        .map_err(|e| match e {
            libp2p::core::signed_envelope::ReadPayloadError::UnexpectedPayloadType { .. } => {
                Refusal::WrongType
            }
            _ => Refusal::BadSignature,
        })?;
    let body = T::decode_payload(payload)?;
    let signer = key.to_peer_id();
    if signer != body.claimed_signer() {
        return Err(Refusal::WrongSigner);
    }
    Ok(Signed {
        body,
        signer,
        bytes: Bytes::copy_from_slice(bytes),
    })
}

fn peer_id(bytes: &[u8]) -> Result<PeerId, Refusal> {
    if bytes.len() > 64 {
        return Err(Refusal::BadField);
    }
    PeerId::from_bytes(bytes).map_err(|_| Refusal::BadField)
}

fn content_id(bytes: &[u8]) -> Result<ContentId, Refusal> {
    let digest: [u8; DIGEST_LEN] = bytes.try_into().map_err(|_| Refusal::BadField)?;
    Ok(ContentId::from_digest(digest))
}

fn price(value: u64) -> Result<u64, Refusal> {
    if PRICE.contains(&value) {
        Ok(value)
    } else {
        Err(Refusal::BadField)
    }
}

fn decode<M: Message + Default>(payload: &[u8]) -> Result<M, Refusal> {
    M::decode(payload).map_err(|_| Refusal::Malformed)
}

impl WireMessage for Announcement {
    const PAYLOAD_TYPE: &'static [u8] = b"/zerostate/market/1/announcement";
    const MAX_BYTES: usize = MAX_MESSAGE_BYTES;

    fn decode_payload(payload: &[u8]) -> Result<Self, Refusal> {
        let m: pb::Announcement = decode(payload)?;
        let task = match m.task.and_then(|t| t.kind) {
            Some(pb::task_spec::Kind::Pow(p)) => {
                if p.input.len() > MAX_POW_INPUT || !POW_DIFFICULTY.contains(&p.difficulty) {
                    return Err(Refusal::BadField);
                }
                TaskSpec::Pow {
                    input: p.input,
                    difficulty: p.difficulty,
                }
            }
            Some(pb::task_spec::Kind::Matmul(p)) => {
                if !MATMUL_N.contains(&p.n) {
                    return Err(Refusal::BadField);
                }
                TaskSpec::Matmul {
                    n: p.n,
                    a: content_id(&p.a)?,
                    b: content_id(&p.b)?,
                }
            }
            None => return Err(Refusal::BadField),
        };
        let auction_type = match pb::AuctionType::try_from(m.auction_type) {
            Ok(pb::AuctionType::FirstPrice) => AuctionType::FirstPrice,
            Ok(pb::AuctionType::SecondPrice) => AuctionType::SecondPrice,
            _ => return Err(Refusal::BadField),
        };
        let window = m.bid_deadline_ms.checked_sub(m.created_at_ms);
        if !window.is_some_and(|w| w > 0 && w <= MAX_BID_WINDOW_MS)
            || !EXECUTION_TIMEOUT_MS.contains(&m.execution_timeout_ms)
        {
            return Err(Refusal::BadField);
        }
        Ok(Self {
            auction_id: AuctionId::from_wire(&m.auction_id)?,
            requester: peer_id(&m.requester)?,
            task,
            max_price: price(m.max_price)?,
            auction_type,
            created_at_ms: m.created_at_ms,
            bid_deadline_ms: m.bid_deadline_ms,
            reputation_weighted: m.reputation_weighted,
            execution_timeout_ms: m.execution_timeout_ms,
        })
    }

    fn encode_payload(&self) -> Vec<u8> {
        let kind = match &self.task {
            TaskSpec::Pow { input, difficulty } => pb::task_spec::Kind::Pow(pb::PowTask {
                input: input.clone(),
                difficulty: *difficulty,
            }),
            TaskSpec::Matmul { n, a, b } => pb::task_spec::Kind::Matmul(pb::MatmulTask {
                n: *n,
                a: a.digest().to_vec(),
                b: b.digest().to_vec(),
            }),
        };
        pb::Announcement {
            auction_id: self.auction_id.0.to_vec(),
            requester: self.requester.to_bytes(),
            task: Some(pb::TaskSpec { kind: Some(kind) }),
            max_price: self.max_price,
            auction_type: match self.auction_type {
                AuctionType::FirstPrice => pb::AuctionType::FirstPrice,
                AuctionType::SecondPrice => pb::AuctionType::SecondPrice,
            } as i32,
            created_at_ms: self.created_at_ms,
            bid_deadline_ms: self.bid_deadline_ms,
            reputation_weighted: self.reputation_weighted,
            execution_timeout_ms: self.execution_timeout_ms,
        }
        .encode_to_vec()
    }

    fn claimed_signer(&self) -> PeerId {
        self.requester
    }
}

impl Announcement {
    /// Timing checks for a fresh announcement at `now_ms`: not created too far in the
    /// future, and its bid deadline not passed (both with [`CLOCK_SKEW_MS`] tolerance).
    pub fn check_fresh(&self, now_ms: u64) -> Result<(), Refusal> {
        if self.created_at_ms > now_ms.saturating_add(CLOCK_SKEW_MS) {
            return Err(Refusal::TooFarFuture);
        }
        if self.bid_deadline_ms.saturating_add(CLOCK_SKEW_MS) < now_ms {
            return Err(Refusal::Expired);
        }
        Ok(())
    }
}

impl WireMessage for Bid {
    const PAYLOAD_TYPE: &'static [u8] = b"/zerostate/market/1/bid";
    const MAX_BYTES: usize = MAX_MESSAGE_BYTES;

    fn decode_payload(payload: &[u8]) -> Result<Self, Refusal> {
        let m: pb::Bid = decode(payload)?;
        Ok(Self {
            auction_id: AuctionId::from_wire(&m.auction_id)?,
            requester: peer_id(&m.requester)?,
            bidder: peer_id(&m.bidder)?,
            price: price(m.price)?,
            expires_at_ms: m.expires_at_ms,
        })
    }

    fn encode_payload(&self) -> Vec<u8> {
        pb::Bid {
            auction_id: self.auction_id.0.to_vec(),
            requester: self.requester.to_bytes(),
            bidder: self.bidder.to_bytes(),
            price: self.price,
            expires_at_ms: self.expires_at_ms,
        }
        .encode_to_vec()
    }

    fn claimed_signer(&self) -> PeerId {
        self.bidder
    }
}

impl WireMessage for Award {
    const PAYLOAD_TYPE: &'static [u8] = b"/zerostate/market/1/award";
    const MAX_BYTES: usize = MAX_AWARD_BYTES;

    fn decode_payload(payload: &[u8]) -> Result<Self, Refusal> {
        let m: pb::Award = decode(payload)?;
        // Embedded envelopes are checked like any other; a refusal inside is a bad award.
        let announcement = open::<Announcement>(&m.announcement).map_err(|_| Refusal::BadBids)?;
        let winner_bid = open::<Bid>(&m.winner_bid).map_err(|_| Refusal::BadBids)?;
        let runner_up_bid = if m.runner_up_bid.is_empty() {
            None
        } else {
            Some(open::<Bid>(&m.runner_up_bid).map_err(|_| Refusal::BadBids)?)
        };
        if !WEIGHT.contains(&m.winner_weight) || !WEIGHT.contains(&m.runner_up_weight) {
            return Err(Refusal::BadField);
        }
        Ok(Self {
            announcement,
            winner_bid,
            runner_up_bid,
            price: price(m.price)?,
            winner_weight: m.winner_weight,
            runner_up_weight: m.runner_up_weight,
        })
    }

    fn encode_payload(&self) -> Vec<u8> {
        pb::Award {
            announcement: self.announcement.bytes.to_vec(),
            winner_bid: self.winner_bid.bytes.to_vec(),
            runner_up_bid: self
                .runner_up_bid
                .as_ref()
                .map(|b| b.bytes.to_vec())
                .unwrap_or_default(),
            price: self.price,
            winner_weight: self.winner_weight,
            runner_up_weight: self.runner_up_weight,
        }
        .encode_to_vec()
    }

    fn claimed_signer(&self) -> PeerId {
        self.announcement.body.requester
    }
}

/// How long after its bid deadline an auction's result is still accepted from gossip.
pub const MAX_RESULT_AGE_MS: u64 = 10 * 60 * 1000;

impl Award {
    /// Timing check for an award arriving at `now_ms`: its auction's bid deadline passed
    /// (with [`CLOCK_SKEW_MS`] tolerance) and not more than [`MAX_RESULT_AGE_MS`] ago.
    pub fn check_fresh(&self, now_ms: u64) -> Result<(), Refusal> {
        let deadline = self.announcement.body.bid_deadline_ms;
        if deadline > now_ms.saturating_add(CLOCK_SKEW_MS) {
            return Err(Refusal::TooFarFuture);
        }
        if deadline.saturating_add(MAX_RESULT_AGE_MS) < now_ms {
            return Err(Refusal::Expired);
        }
        Ok(())
    }
}

impl WireMessage for TaskResult {
    const PAYLOAD_TYPE: &'static [u8] = b"/zerostate/market/1/result";
    const MAX_BYTES: usize = MAX_MESSAGE_BYTES;

    fn decode_payload(payload: &[u8]) -> Result<Self, Refusal> {
        let m: pb::TaskResult = decode(payload)?;
        let output = match m.output {
            Some(pb::task_result::Output::PowNonce(n)) => Output::PowNonce(n),
            Some(pb::task_result::Output::MatmulProduct(c)) => {
                Output::MatmulProduct(content_id(&c)?)
            }
            None => return Err(Refusal::BadField),
        };
        Ok(Self {
            auction_id: AuctionId::from_wire(&m.auction_id)?,
            provider: peer_id(&m.provider)?,
            output,
            execution_ms: m.execution_ms,
        })
    }

    fn encode_payload(&self) -> Vec<u8> {
        pb::TaskResult {
            auction_id: self.auction_id.0.to_vec(),
            provider: self.provider.to_bytes(),
            output: Some(match self.output {
                Output::PowNonce(n) => pb::task_result::Output::PowNonce(n),
                Output::MatmulProduct(c) => {
                    pb::task_result::Output::MatmulProduct(c.digest().to_vec())
                }
            }),
            execution_ms: self.execution_ms,
        }
        .encode_to_vec()
    }

    fn claimed_signer(&self) -> PeerId {
        self.provider
    }
}

/// A decoded market request: which message it carries, still to be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A signed [`Bid`].
    Bid(Bytes),
    /// A signed [`Award`].
    Award(Bytes),
    /// A signed [`TaskResult`].
    Result(Bytes),
}

impl Request {
    /// Decodes a request frame (the size was bounded by the codec).
    pub fn decode(bytes: &[u8]) -> Result<Self, Refusal> {
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(Refusal::Oversized);
        }
        let m: pb::MarketRequest = decode(bytes)?;
        match m.body {
            Some(pb::market_request::Body::Bid(b)) => Ok(Self::Bid(b.into())),
            Some(pb::market_request::Body::Award(b)) => Ok(Self::Award(b.into())),
            Some(pb::market_request::Body::Result(b)) => Ok(Self::Result(b.into())),
            None => Err(Refusal::Malformed),
        }
    }

    /// Encodes a request frame.
    pub fn encode(&self) -> Vec<u8> {
        let body = match self {
            Self::Bid(b) => pb::market_request::Body::Bid(b.to_vec()),
            Self::Award(b) => pb::market_request::Body::Award(b.to_vec()),
            Self::Result(b) => pb::market_request::Body::Result(b.to_vec()),
        };
        pb::MarketRequest { body: Some(body) }.encode_to_vec()
    }

    /// The message's name as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Bid(_) => "bid",
            Self::Award(_) => "award",
            Self::Result(_) => "result",
        }
    }
}

/// Encodes the answer to a request: accepted, or refused with a reason.
pub fn encode_response(result: Result<(), Refusal>) -> Vec<u8> {
    pb::MarketResponse {
        accepted: result.is_ok(),
        reason: result
            .err()
            .map(|r| r.label().to_owned())
            .unwrap_or_default(),
    }
    .encode_to_vec()
}

/// Decodes the answer to a request: `Ok` if accepted, else the peer's reason (bounded).
pub fn decode_response(bytes: &[u8]) -> Result<Result<(), String>, Refusal> {
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(Refusal::Oversized);
    }
    let m: pb::MarketResponse = decode(bytes)?;
    if m.accepted {
        Ok(Ok(()))
    } else {
        Ok(Err(m.reason.chars().take(MAX_REASON_LEN).collect()))
    }
}

/// The libp2p signed envelope's payload type and payload, read without its key or
/// signature (protobuf skips the fields not named here).
#[derive(Clone, PartialEq, Message)]
struct EnvelopeFields {
    #[prost(bytes = "vec", tag = "2")]
    payload_type: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    payload: Vec<u8>,
}

/// What a signed message claims about itself, read by [`peek_bid`] and [`peek_result`]
/// WITHOUT checking its signature. Good only for refusing cheaply: a message is trusted
/// only once [`open`] verified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The auction it names.
    pub auction_id: AuctionId,
    /// The peer it claims to be signed by (a bid's bidder, a result's provider).
    pub signer: PeerId,
}

/// What a signed award claims, read by [`peek_award`] WITHOUT checking any signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwardClaim {
    /// Its announcement's auction id.
    pub auction_id: AuctionId,
    /// Its announcement's requester: who claims to have signed the award.
    pub requester: PeerId,
    /// The embedded announcement, byte for byte.
    pub announcement: Vec<u8>,
    /// The embedded winning bid, byte for byte.
    pub winner_bid: Vec<u8>,
}

/// The payload of an envelope of type `T`, unverified; `None` if larger than `T`'s limit,
/// not an envelope or of another type.
fn peek_payload<T: WireMessage>(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() > T::MAX_BYTES {
        return None;
    }
    let envelope = EnvelopeFields::decode(bytes).ok()?;
    (envelope.payload_type == T::PAYLOAD_TYPE).then_some(envelope.payload)
}

/// The auction and the bidder a signed bid names, without checking its signature or
/// its other fields; `None` whenever [`open`] would refuse it for its form (then let
/// [`open`] say why).
pub fn peek_bid(bytes: &[u8]) -> Option<Claim> {
    let m: pb::Bid = decode(&peek_payload::<Bid>(bytes)?).ok()?;
    Some(Claim {
        auction_id: AuctionId::from_wire(&m.auction_id).ok()?,
        signer: peer_id(&m.bidder).ok()?,
    })
}

/// The auction and the provider a signed task result names, unverified (see [`peek_bid`]).
pub fn peek_result(bytes: &[u8]) -> Option<Claim> {
    let m: pb::TaskResult = decode(&peek_payload::<TaskResult>(bytes)?).ok()?;
    Some(Claim {
        auction_id: AuctionId::from_wire(&m.auction_id).ok()?,
        signer: peer_id(&m.provider).ok()?,
    })
}

/// The auction, the requester and the embedded announcement and winning bid of a signed
/// award, none of their signatures checked (see [`peek_bid`]).
pub fn peek_award(bytes: &[u8]) -> Option<AwardClaim> {
    let m: pb::Award = decode(&peek_payload::<Award>(bytes)?).ok()?;
    let a: pb::Announcement = decode(&peek_payload::<Announcement>(&m.announcement)?).ok()?;
    Some(AwardClaim {
        auction_id: AuctionId::from_wire(&a.auction_id).ok()?,
        requester: peer_id(&a.requester).ok()?,
        announcement: m.announcement,
        winner_bid: m.winner_bid,
    })
}

#[cfg(test)]
mod peek_tests {
    use proptest::prelude::*;

    use super::*;

    fn announcement(key: &Keypair) -> Signed<Announcement> {
        sign(
            key,
            Announcement {
                auction_id: AuctionId([7; AUCTION_ID_LEN]),
                requester: key.public().to_peer_id(),
                task: TaskSpec::Pow {
                    input: b"x".to_vec(),
                    difficulty: 4,
                },
                max_price: 100,
                auction_type: AuctionType::FirstPrice,
                created_at_ms: 1_000,
                bid_deadline_ms: 2_000,
                reputation_weighted: false,
                execution_timeout_ms: 1_000,
            },
        )
    }

    fn bid(key: &Keypair, requester: PeerId) -> Signed<Bid> {
        sign(
            key,
            Bid {
                auction_id: AuctionId([7; AUCTION_ID_LEN]),
                requester,
                bidder: key.public().to_peer_id(),
                price: 10,
                expires_at_ms: 3_000,
            },
        )
    }

    fn award(requester: &Keypair, bidder: &Keypair) -> Signed<Award> {
        let a = announcement(requester);
        let b = bid(bidder, a.signer);
        sign(
            requester,
            Award {
                announcement: a,
                winner_bid: b,
                runner_up_bid: None,
                price: 10,
                winner_weight: 1000,
                runner_up_weight: 1000,
            },
        )
    }

    #[test]
    fn peeks_read_what_open_reads() {
        let (r, p) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let b = bid(&p, r.public().to_peer_id());
        let claim = peek_bid(&b.bytes).unwrap();
        assert_eq!(claim.auction_id, b.body.auction_id);
        assert_eq!(claim.signer, b.signer);
        let result = sign(
            &p,
            TaskResult {
                auction_id: AuctionId([9; AUCTION_ID_LEN]),
                provider: p.public().to_peer_id(),
                output: Output::PowNonce(3),
                execution_ms: 5,
            },
        );
        assert_eq!(
            peek_result(&result.bytes),
            Some(Claim {
                auction_id: AuctionId([9; AUCTION_ID_LEN]),
                signer: p.public().to_peer_id(),
            })
        );
        let w = award(&r, &p);
        let claim = peek_award(&w.bytes).unwrap();
        assert_eq!(claim.auction_id, w.body.auction_id());
        assert_eq!(claim.requester, w.signer);
        assert_eq!(claim.announcement, w.body.announcement.bytes.to_vec());
        assert_eq!(claim.winner_bid, w.body.winner_bid.bytes.to_vec());
    }

    #[test]
    fn a_peek_does_not_check_signatures_but_refuses_the_wrong_type_and_size() {
        let (r, p) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut b = bid(&p, r.public().to_peer_id()).bytes.to_vec();
        let last = b.len() - 1;
        b[last] ^= 1;
        // open refuses the flipped signature; the peek still reads the claim.
        assert_eq!(open::<Bid>(&b).err(), Some(Refusal::BadSignature));
        assert!(peek_bid(&b).is_some());
        // Another message type, or too large, is not peeked.
        let w = award(&r, &p);
        assert!(peek_bid(&w.bytes).is_none());
        assert!(peek_award(&bid(&p, r.public().to_peer_id()).bytes).is_none());
        let mut huge = w.bytes.to_vec();
        huge.resize(MAX_AWARD_BYTES + 1, 0);
        assert!(peek_award(&huge).is_none());
        assert!(peek_bid(&[]).is_none());
    }

    proptest! {
        /// No input makes a peek panic: random bytes, and valid messages cut or with a
        /// byte changed.
        #[test]
        fn malformed_input_never_panics(
            noise in proptest::collection::vec(any::<u8>(), 0..2048),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let _ = (peek_bid(&noise), peek_result(&noise), peek_award(&noise));
            let (r, p) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
            for valid in [award(&r, &p).bytes.to_vec(), bid(&p, r.public().to_peer_id()).bytes.to_vec()] {
                let short = &valid[..cut.index(valid.len())];
                let _ = (peek_bid(short), peek_result(short), peek_award(short));
                let mut changed = valid.clone();
                let i = flip.index(changed.len());
                changed[i] = byte;
                let _ = (peek_bid(&changed), peek_result(&changed), peek_award(&changed));
            }
        }
    }
}
