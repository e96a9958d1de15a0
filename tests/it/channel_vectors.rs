//! The payment channels' test vectors (`tests/vectors/channel.json`, described in
//! docs/PROTOCOL.md): fixed keys, encoded states with both signatures, a stale unilateral
//! close, the dispute evidence against it, request frames, and invalid cases with the
//! reason each must be refused with. This test decodes and verifies every one, replays the
//! states through the channel state machine, and checks the file is what the fixture
//! produces (Ed25519 signatures are deterministic).
//!
//! Regenerate (only when the format changes on purpose) with
//! `ZEROSTATE_WRITE_VECTORS=1 cargo test --test it vectors`.

use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};
use zerostate::payments::channel::{Channel, Op, Received};
use zerostate::payments::wire::{
    ChannelError, ChannelId, EscrowId, Evidence, Lock, Proposal, Request, Response, Side,
    SignedClose, SignedState, State, sign_state, verify_state,
};

use crate::vectors::{Key, key};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/channel.json");
/// The time the fixture is evaluated at (Unix ms).
const NOW_MS: u64 = 1_700_000_000_000;

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Vectors {
    state_domain: String,
    close_domain: String,
    keys: Vec<Key>,
    states: Vec<StateVector>,
    close_hex: String,
    close_sig_hex: String,
    evidence_hex: String,
    cheater: String,
    open_request_hex: String,
    countersig_response_hex: String,
    invalid: Vec<Invalid>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct StateVector {
    name: String,
    /// What this state does to the one before, as its proposer's operation.
    op: String,
    /// The `ChannelState` protobuf, exactly as signed.
    state_hex: String,
    sig_a_hex: String,
    sig_b_hex: String,
    /// The fields, for a reader.
    fields: serde_json::Value,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Invalid {
    name: String,
    /// A proposal from A for the state after `after`.
    after: String,
    state_hex: String,
    sig_hex: String,
    refusal: String,
}

struct Fixture {
    a: Keypair,
    b: Keypair,
    c: Keypair,
    /// (name, op, state)
    states: Vec<(&'static str, &'static str, State)>,
}

fn fixture() -> Fixture {
    let (a, b, c) = (key(1), key(2), key(3));
    let escrow = EscrowId([0xee; 32]);
    let s0 = State {
        channel_id: ChannelId([0x0c; 32]),
        number: 0,
        party_a: a.public().to_peer_id(),
        party_b: b.public().to_peer_id(),
        deposit_a: 1_000,
        deposit_b: 0,
        balance_a: 1_000,
        balance_b: 0,
        locks: vec![],
        is_final: false,
    };
    let s1 = State {
        number: 1,
        balance_a: 970,
        balance_b: 30,
        ..s0.clone()
    };
    let s2 = State {
        number: 2,
        balance_a: 950,
        locks: vec![Lock {
            escrow_id: escrow,
            payer: Side::A,
            amount: 20,
            expires_at_ms: NOW_MS + 60_000,
        }],
        ..s1.clone()
    };
    let s3 = State {
        number: 3,
        balance_b: 50,
        locks: vec![],
        ..s2.clone()
    };
    let s4 = State {
        number: 4,
        is_final: true,
        ..s3.clone()
    };
    Fixture {
        a,
        b,
        c,
        states: vec![
            ("open", "open: A deposits 1000", s0),
            ("pay", "A pays 30", s1),
            ("lock", "A locks 20 for escrow ee..ee", s2),
            ("release", "A releases escrow ee..ee to B", s3),
            ("final", "cooperative close", s4),
        ],
    }
}

fn signed(f: &Fixture, s: &State) -> SignedState {
    let bytes = s.encode();
    SignedState {
        state: s.clone(),
        sig_a: sign_state(&f.a, &bytes),
        sig_b: sign_state(&f.b, &bytes),
        bytes,
    }
}

fn build() -> Vectors {
    let f = fixture();
    let keys = [("A", &f.a, 1u8), ("B", &f.b, 2), ("C", &f.c, 3)]
        .into_iter()
        .map(|(name, k, seed)| Key {
            name: name.into(),
            seed_hex: hex::encode([seed; 32]),
            peer_id: k.public().to_peer_id().to_string(),
        })
        .collect();
    let states = f
        .states
        .iter()
        .map(|(name, op, s)| {
            let st = signed(&f, s);
            StateVector {
                name: (*name).into(),
                op: (*op).into(),
                state_hex: hex::encode(&st.bytes),
                sig_a_hex: hex::encode(&st.sig_a),
                sig_b_hex: hex::encode(&st.sig_b),
                fields: serde_json::json!({
                    "channel_id": s.channel_id.to_string(),
                    "number": s.number,
                    "party_a": s.party_a.to_string(),
                    "party_b": s.party_b.to_string(),
                    "deposit_a": s.deposit_a,
                    "deposit_b": s.deposit_b,
                    "balance_a": s.balance_a,
                    "balance_b": s.balance_b,
                    "locks": s.locks.iter().map(|l| serde_json::json!({
                        "escrow_id": l.escrow_id.to_string(),
                        "payer": format!("{:?}", l.payer),
                        "amount": l.amount,
                        "expires_at_ms": l.expires_at_ms,
                    })).collect::<Vec<_>>(),
                    "final": s.is_final,
                }),
            }
        })
        .collect();
    // A closes unilaterally with "pay" although "release" is binding: B's evidence.
    let close = SignedClose::sign(&f.a, signed(&f, &f.states[1].2), None, NOW_MS);
    let evidence = Evidence {
        close: close.clone(),
        higher: signed(&f, &f.states[3].2),
    };
    let open = Proposal::sign(&f.a, f.states[0].2.clone());
    let countersig = Response::Countersig(sign_state(&f.b, &open.bytes)).encode(0);
    let invalid = invalid_cases(&f)
        .into_iter()
        .map(|(name, after, p, refusal)| Invalid {
            name: name.into(),
            after: after.into(),
            state_hex: hex::encode(&p.bytes),
            sig_hex: hex::encode(&p.sig),
            refusal: refusal.label().into(),
        })
        .collect();
    Vectors {
        state_domain: "zerostate-channel-state\\0".into(),
        close_domain: "zerostate-channel-close\\0".into(),
        keys,
        states,
        close_hex: hex::encode(&close.bytes),
        close_sig_hex: hex::encode(&close.sig),
        evidence_hex: hex::encode(evidence.encode()),
        cheater: f.a.public().to_peer_id().to_string(),
        open_request_hex: hex::encode(Request::Open(open).encode()),
        countersig_response_hex: hex::encode(countersig),
        invalid,
    }
}

/// Proposals from A, each after state "pay", and the reason B refuses them with.
fn invalid_cases(f: &Fixture) -> Vec<(&'static str, &'static str, Proposal, ChannelError)> {
    let pay = &f.states[1].2;
    let next = |change: &dyn Fn(&mut State)| {
        let mut s = pay.clone();
        s.number = 2;
        change(&mut s);
        s
    };
    let mut forged = Proposal::sign(
        &f.a,
        next(&|s| {
            s.balance_a -= 10;
            s.balance_b += 10;
        }),
    );
    forged.sig[5] ^= 1;
    vec![
        (
            "signature does not verify",
            "pay",
            forged,
            ChannelError::BadSignature,
        ),
        (
            "pays the payee less",
            "pay",
            Proposal::sign(
                &f.a,
                next(&|s| {
                    s.balance_a += 10;
                    s.balance_b -= 10;
                }),
            ),
            ChannelError::PaysLess,
        ),
        (
            "overspend",
            "pay",
            Proposal::sign(
                &f.a,
                next(&|s| {
                    s.balance_a = 0;
                    s.balance_b = 2_000;
                }),
            ),
            ChannelError::Overspend,
        ),
        (
            "amount overflow",
            "pay",
            Proposal::sign(
                &f.a,
                next(&|s| {
                    s.balance_a = u64::MAX;
                }),
            ),
            ChannelError::Overflow,
        ),
        (
            "the same number with other content",
            "pay",
            Proposal::sign(
                &f.a,
                next(&|s| {
                    s.number = 1;
                    s.balance_a = 960;
                    s.balance_b = 40;
                }),
            ),
            ChannelError::Conflicting,
        ),
        (
            "a replayed old state",
            "pay",
            Proposal::sign(&f.a, f.states[0].2.clone()),
            ChannelError::Stale,
        ),
    ]
}

/// B's view of the channel after the states up to and including `name`.
fn b_after(f: &Fixture, name: &str) -> Channel {
    let open = Proposal::sign(&f.a, f.states[0].2.clone());
    let (mut channel, _) =
        Channel::accept_open(&f.b, f.a.public().to_peer_id(), &open, 0, NOW_MS).unwrap();
    let last = f.states.iter().position(|(n, _, _)| *n == name).unwrap();
    for (n, _, s) in &f.states[1..=last] {
        let p = Proposal::sign(&f.a, s.clone());
        channel
            .receive(&f.b, f.a.public().to_peer_id(), &p, NOW_MS)
            .unwrap_or_else(|e| panic!("{n}: {e}"));
    }
    channel
}

#[test]
fn checked_in_channel_vectors_verify_and_replay_through_the_state_machine() {
    if std::env::var_os("ZEROSTATE_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&build()).unwrap() + "\n";
        std::fs::write(PATH, text).unwrap();
    }
    let text = std::fs::read_to_string(PATH).expect("tests/vectors/channel.json is checked in");
    let vectors: Vectors = serde_json::from_str(&text).unwrap();
    let f = fixture();
    let (a, b) = (f.a.public().to_peer_id(), f.b.public().to_peer_id());

    // Every state decodes to the fixture, carries both signatures, and conserves.
    for (v, (name, _, s)) in vectors.states.iter().zip(&f.states) {
        let bytes = hex::decode(&v.state_hex).unwrap();
        assert_eq!(&State::decode(&bytes).unwrap(), s, "{name}");
        assert!(verify_state(
            &a,
            &bytes,
            &hex::decode(&v.sig_a_hex).unwrap()
        ));
        assert!(verify_state(
            &b,
            &bytes,
            &hex::decode(&v.sig_b_hex).unwrap()
        ));
        s.check_conserved().unwrap();
    }
    // The states follow one another by the rules: B accepts each from A as one operation.
    let open = Proposal::sign(&f.a, f.states[0].2.clone());
    let (mut channel, _) = Channel::accept_open(&f.b, a, &open, 0, NOW_MS).unwrap();
    let ops = [
        Op::Pay(30),
        Op::Lock {
            escrow_id: EscrowId([0xee; 32]),
            amount: 20,
            expires_at_ms: NOW_MS + 60_000,
        },
        Op::Release(EscrowId([0xee; 32])),
        Op::Close,
    ];
    // Replayed from the file's own bytes and signatures: B's countersignature is the one
    // checked in.
    for (v, want) in vectors.states[1..].iter().zip(ops) {
        let bytes = hex::decode(&v.state_hex).unwrap();
        let proposal = Proposal {
            channel: ChannelId([0x0c; 32]),
            state: State::decode(&bytes).unwrap(),
            bytes,
            sig: hex::decode(&v.sig_a_hex).unwrap(),
        };
        let got = channel.receive(&f.b, a, &proposal, NOW_MS).unwrap();
        let Received::New { sig, op } = got else {
            panic!("{}: not a new state", v.name);
        };
        assert_eq!(op, want, "{}", v.name);
        assert_eq!(hex::encode(sig), v.sig_b_hex, "{}", v.name);
    }
    assert!(channel.is_settled());

    // The stale close and its evidence: any node can check that A cheated.
    let evidence = hex::decode(&vectors.evidence_hex).unwrap();
    let (ev, cheater) = Evidence::open(&evidence).unwrap();
    assert_eq!(cheater.to_string(), vectors.cheater);
    assert_eq!(hex::encode(&ev.close.bytes), vectors.close_hex);
    assert_eq!(hex::encode(&ev.close.sig), vectors.close_sig_hex);

    // The request and response frames.
    let request = Request::decode(&hex::decode(&vectors.open_request_hex).unwrap()).unwrap();
    assert_eq!(request, Request::Open(open.clone()));
    let (response, _) =
        Response::decode(&hex::decode(&vectors.countersig_response_hex).unwrap()).unwrap();
    assert_eq!(
        response,
        Response::Countersig(sign_state(&f.b, &open.bytes))
    );

    // Every invalid proposal is refused with its reason, and changes nothing.
    for v in &vectors.invalid {
        let mut channel = b_after(&f, &v.after);
        let before = channel.clone();
        let bytes = hex::decode(&v.state_hex).unwrap();
        let proposal = Proposal {
            channel: ChannelId([0x0c; 32]),
            state: State::decode(&bytes).unwrap(),
            bytes,
            sig: hex::decode(&v.sig_hex).unwrap(),
        };
        let refused = channel.receive(&f.b, a, &proposal, NOW_MS).unwrap_err();
        assert_eq!(refused.label(), v.refusal, "{}", v.name);
        assert_eq!(channel, before, "{}", v.name);
    }
    assert_eq!(
        vectors,
        build(),
        "regenerate with ZEROSTATE_WRITE_VECTORS=1"
    );
}
