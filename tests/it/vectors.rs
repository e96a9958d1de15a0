//! The market's test vectors (`tests/vectors/market.json`, described in docs/PROTOCOL.md):
//! fixed keys, encoded payloads, envelopes and signatures that another implementation can
//! check itself against. This test decodes and verifies every one, and checks that invalid
//! ones are refused with the documented reason.
//!
//! Regenerate (only when the format changes on purpose) with
//! `ZEROSTATE_WRITE_VECTORS=1 cargo test --test it vectors`.

use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};
use zerostate::content_id::ContentId;
use zerostate::market::wire::{
    Announcement, AuctionId, AuctionType, Award, Bid, Output, Refusal, TaskResult, TaskSpec,
    WireMessage, open, sign,
};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/market.json");

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Vectors {
    domain: String,
    keys: Vec<Key>,
    messages: Vec<Vector>,
    invalid: Vec<Invalid>,
}

/// A fixed key of the vectors (also those of the channel vectors).
#[derive(Serialize, Deserialize, PartialEq, Debug)]
pub(crate) struct Key {
    pub(crate) name: String,
    /// The 32-byte Ed25519 secret key.
    pub(crate) seed_hex: String,
    pub(crate) peer_id: String,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Vector {
    name: String,
    payload_type: String,
    signer: String,
    /// The payload: the protobuf message of proto/market.proto.
    payload_hex: String,
    /// The signed envelope as sent on the wire.
    envelope_hex: String,
    /// The fields, for a reader.
    fields: serde_json::Value,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Invalid {
    name: String,
    message: String,
    envelope_hex: String,
    refusal: String,
}

/// The Ed25519 key whose secret is 32 bytes of `seed`.
pub(crate) fn key(seed: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed; 32]).unwrap()
}

/// The messages of the vectors, built from fixed keys and values.
struct Fixture {
    keys: Vec<(&'static str, Keypair)>,
    announcement: Announcement,
    matmul: Announcement,
    bid_winner: Bid,
    bid_runner_up: Bid,
    result: TaskResult,
}

fn fixture() -> Fixture {
    let (r, p1, p2) = (key(1), key(2), key(3));
    let requester = r.public().to_peer_id();
    let announcement = Announcement {
        auction_id: AuctionId([0x11; 16]),
        requester,
        task: TaskSpec::Pow {
            input: b"zerostate".to_vec(),
            difficulty: 12,
        },
        max_price: 1000,
        auction_type: AuctionType::SecondPrice,
        created_at_ms: 1_800_000_000_000,
        bid_deadline_ms: 1_800_000_001_000,
        reputation_weighted: true,
        execution_timeout_ms: 30_000,
    };
    let matmul = Announcement {
        auction_id: AuctionId([0x22; 16]),
        task: TaskSpec::Matmul {
            n: 64,
            a: ContentId::of(b"matrix a"),
            b: ContentId::of(b"matrix b"),
        },
        auction_type: AuctionType::FirstPrice,
        reputation_weighted: false,
        ..announcement.clone()
    };
    let bid = |k: &Keypair, price| Bid {
        auction_id: announcement.auction_id,
        requester,
        bidder: k.public().to_peer_id(),
        price,
        expires_at_ms: 1_800_000_006_000,
    };
    Fixture {
        bid_winner: bid(&p1, 40),
        bid_runner_up: bid(&p2, 30),
        result: TaskResult {
            auction_id: announcement.auction_id,
            provider: p1.public().to_peer_id(),
            output: Output::PowNonce(1234),
            execution_ms: 12,
        },
        announcement,
        matmul,
        keys: vec![("requester", r), ("provider_1", p1), ("provider_2", p2)],
    }
}

fn vector<T: WireMessage>(
    name: &str,
    signer: (&str, &Keypair),
    body: T,
    fields: serde_json::Value,
) -> Vector {
    let payload = body.encode_payload();
    let signed = sign(signer.1, body);
    Vector {
        name: name.into(),
        payload_type: String::from_utf8(T::PAYLOAD_TYPE.to_vec()).unwrap(),
        signer: signer.0.into(),
        payload_hex: hex::encode(payload),
        envelope_hex: hex::encode(&signed.bytes),
        fields,
    }
}

fn build() -> Vectors {
    let f = fixture();
    let k = |name: &str| {
        let (n, key) = f.keys.iter().find(|(n, _)| *n == name).unwrap();
        (*n, key)
    };
    let a = sign(k("requester").1, f.announcement.clone());
    let w = sign(k("provider_1").1, f.bid_winner.clone());
    let r = sign(k("provider_2").1, f.bid_runner_up.clone());
    // Weighted: 40 × 600 = 24000 beats 30 × 1000; critical price ⌊30 × 1000 / 600⌋ = 50.
    let award = Award {
        announcement: a.clone(),
        winner_bid: w.clone(),
        runner_up_bid: Some(r.clone()),
        price: 50,
        winner_weight: 600,
        runner_up_weight: 1000,
    };
    let messages = vec![
        vector(
            "announcement_pow",
            k("requester"),
            f.announcement.clone(),
            serde_json::json!({"auction_id": "11".repeat(16), "task": {"pow": {"input": "zerostate", "difficulty": 12}}, "max_price": 1000, "auction_type": "SECOND_PRICE", "created_at_ms": 1_800_000_000_000u64, "bid_deadline_ms": 1_800_000_001_000u64, "reputation_weighted": true, "execution_timeout_ms": 30000}),
        ),
        vector(
            "announcement_matmul",
            k("requester"),
            f.matmul.clone(),
            serde_json::json!({"auction_id": "22".repeat(16), "task": {"matmul": {"n": 64, "a": hex::encode(ContentId::of(b"matrix a").digest()), "b": hex::encode(ContentId::of(b"matrix b").digest())}}, "auction_type": "FIRST_PRICE", "reputation_weighted": false}),
        ),
        vector(
            "bid_winner",
            k("provider_1"),
            f.bid_winner.clone(),
            serde_json::json!({"price": 40, "expires_at_ms": 1_800_000_006_000u64}),
        ),
        vector(
            "bid_runner_up",
            k("provider_2"),
            f.bid_runner_up.clone(),
            serde_json::json!({"price": 30, "expires_at_ms": 1_800_000_006_000u64}),
        ),
        vector(
            "award_second_price_weighted",
            k("requester"),
            award,
            serde_json::json!({"announcement": "the envelope of announcement_pow", "winner_bid": "the envelope of bid_winner", "runner_up_bid": "the envelope of bid_runner_up", "price": 50, "winner_weight": 600, "runner_up_weight": 1000}),
        ),
        vector(
            "result_pow",
            k("provider_1"),
            f.result.clone(),
            serde_json::json!({"pow_nonce": 1234, "execution_ms": 12}),
        ),
    ];
    let mut tampered = w.bytes.to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let understated = Award {
        announcement: a.clone(),
        winner_bid: w.clone(),
        runner_up_bid: Some(r.clone()),
        price: 45,
        winner_weight: 600,
        runner_up_weight: 1000,
    };
    let invalid = vec![
        Invalid {
            name: "bid_signature_flipped".into(),
            message: "bid".into(),
            envelope_hex: hex::encode(tampered),
            refusal: Refusal::BadSignature.label().into(),
        },
        Invalid {
            name: "bid_signed_by_the_requester".into(),
            message: "bid".into(),
            envelope_hex: hex::encode(sign(k("requester").1, f.bid_winner.clone()).bytes),
            refusal: Refusal::WrongSigner.label().into(),
        },
        Invalid {
            name: "announcement_given_as_bid".into(),
            message: "bid".into(),
            envelope_hex: hex::encode(&a.bytes),
            refusal: Refusal::WrongType.label().into(),
        },
        Invalid {
            name: "award_understated_price".into(),
            message: "award".into(),
            envelope_hex: hex::encode(sign(k("requester").1, understated).bytes),
            refusal: Refusal::BadPrice.label().into(),
        },
    ];
    Vectors {
        domain: zerostate::market::wire::DOMAIN.into(),
        keys: f
            .keys
            .iter()
            .map(|(name, key)| Key {
                name: (*name).into(),
                seed_hex: hex::encode(key.clone().try_into_ed25519().unwrap().secret().as_ref()),
                peer_id: key.public().to_peer_id().to_string(),
            })
            .collect(),
        messages,
        invalid,
    }
}

fn refusal_of(message: &str, bytes: &[u8]) -> Option<Refusal> {
    match message {
        "bid" => open::<Bid>(bytes).err(),
        "award" => open::<Award>(bytes)
            .and_then(|a| zerostate::market::auction::verify_award(&a.body))
            .err(),
        other => panic!("unknown message kind {other}"),
    }
}

#[test]
fn checked_in_vectors_decode_verify_and_match_the_fixture() {
    if std::env::var_os("ZEROSTATE_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&build()).unwrap() + "\n";
        std::fs::write(PATH, text).unwrap();
    }
    let text = std::fs::read_to_string(PATH).expect("tests/vectors/market.json is checked in");
    let vectors: Vectors = serde_json::from_str(&text).unwrap();
    let f = fixture();
    assert_eq!(vectors.domain, "zerostate-market");
    // The keys derive the peer ids given.
    for k in &vectors.keys {
        let mut seed = hex::decode(&k.seed_hex).unwrap();
        let key = Keypair::ed25519_from_bytes(&mut seed).unwrap();
        assert_eq!(key.public().to_peer_id().to_string(), k.peer_id);
    }
    let peer = |name: &str| {
        vectors
            .keys
            .iter()
            .find(|k| k.name == name)
            .unwrap()
            .peer_id
            .clone()
    };
    for v in &vectors.messages {
        let bytes = hex::decode(&v.envelope_hex).unwrap();
        let payload = hex::decode(&v.payload_hex).unwrap();
        let signer = match v.payload_type.as_str() {
            "/zerostate/market/1/announcement" => {
                let m = open::<Announcement>(&bytes).unwrap();
                assert_eq!(m.body.encode_payload(), payload, "{}", v.name);
                let want = if v.name.contains("matmul") {
                    &f.matmul
                } else {
                    &f.announcement
                };
                assert_eq!(&m.body, want, "{}", v.name);
                m.signer
            }
            "/zerostate/market/1/bid" => {
                let m = open::<Bid>(&bytes).unwrap();
                let want = if v.name.contains("winner") {
                    &f.bid_winner
                } else {
                    &f.bid_runner_up
                };
                assert_eq!(&m.body, want, "{}", v.name);
                assert_eq!(m.body.encode_payload(), payload);
                m.signer
            }
            "/zerostate/market/1/award" => {
                let m = open::<Award>(&bytes).unwrap();
                zerostate::market::auction::verify_award(&m.body).unwrap();
                assert_eq!(m.body.price, 50);
                assert_eq!(m.body.announcement.body, f.announcement);
                assert_eq!(m.body.encode_payload(), payload);
                m.signer
            }
            "/zerostate/market/1/result" => {
                let m = open::<TaskResult>(&bytes).unwrap();
                assert_eq!(m.body, f.result);
                assert_eq!(m.body.encode_payload(), payload);
                m.signer
            }
            other => panic!("unknown payload type {other}"),
        };
        assert_eq!(signer.to_string(), peer(&v.signer), "{}", v.name);
    }
    for v in &vectors.invalid {
        let bytes = hex::decode(&v.envelope_hex).unwrap();
        assert_eq!(
            refusal_of(&v.message, &bytes).map(Refusal::label),
            Some(v.refusal.as_str()),
            "{}",
            v.name
        );
    }
    // The file is what the fixture produces (Ed25519 signatures are deterministic).
    assert_eq!(
        vectors,
        build(),
        "regenerate with ZEROSTATE_WRITE_VECTORS=1"
    );
}
