//! Payment channels between real nodes: the API, a table of attacks played by a raw peer, a
//! stale unilateral close that loses its dispute and convicts the closer on a third node,
//! and a node process killed at random instants while it pays.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use libp2p::identity::Keypair;
use rand::Rng;
use serde_json::{Value, json};
use zerostate::NodeHandle;
use zerostate::client::{Change, Client};
use zerostate::market::wire::now_ms;
use zerostate::payments::channel::{Channel, Op};
use zerostate::payments::wire::{
    ChannelId, EscrowId, Lock, Proposal, Request, Response, Side, SignedClose, State,
};
use zerostate::payments::{ChannelView, WalletView};

use crate::common::*;
use crate::market::sum_where;
use crate::market_hostile::RawMarket;

async fn call(node: &NodeHandle, method: &str, path: &str, body: Value) -> (u16, Value) {
    let url = format!("http://{}{}", node.http_addr(), path);
    let http = reqwest::Client::new();
    let request = match method {
        "POST" => http.post(url).json(&body),
        _ => http.get(url),
    };
    let resp = request.bearer_auth(node.api_token()).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn wallet(node: &NodeHandle) -> WalletView {
    node.payments().wallet().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_open_pay_and_close_through_the_api() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let credit = wallet(a).await.initial_credit;

    // Changing state needs the token.
    let url = format!("http://{}/api/v1/channels", a.http_addr());
    let status = reqwest::Client::new()
        .post(&url)
        .json(&json!({"peer_id": b.peer_id().to_string(), "deposit": 1000}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);

    let (status, opened) = call(
        a,
        "POST",
        "/api/v1/channels",
        json!({"peer_id": b.peer_id().to_string(), "deposit": 1000}),
    )
    .await;
    assert_eq!(status, 201, "{opened}");
    let id = opened["id"].as_str().unwrap().to_owned();
    assert_eq!(opened["status"], "open");
    assert_eq!(wallet(a).await.available, credit - 1000);

    for amount in [10, 20, 30] {
        let (status, view) = call(
            a,
            "POST",
            &format!("/api/v1/channels/{id}/pay"),
            json!({ "amount": amount }),
        )
        .await;
        assert_eq!(status, 200, "{view}");
    }
    let (_, view) = call(a, "GET", &format!("/api/v1/channels/{id}"), json!({})).await;
    let view: ChannelView = serde_json::from_value(view).unwrap();
    assert_eq!((view.balance, view.peer_balance, view.number), (940, 60, 3));
    let theirs = b
        .payments()
        .channel(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((theirs.balance, theirs.peer_balance), (60, 940));
    assert!(!theirs.opener);

    // Bad requests say what is wrong, and change nothing.
    let (status, err) = call(
        a,
        "POST",
        &format!("/api/v1/channels/{id}/pay"),
        json!({ "amount": 5000 }),
    )
    .await;
    assert_eq!(status, 409, "{err}");
    let text = err["error"].as_str().unwrap();
    assert!(
        text.contains("insufficient_funds")
            && text.contains("5000 requested")
            && text.contains("only 940 is available in the channel"),
        "the cause and the numbers: {text}"
    );
    let (status, _) = call(
        a,
        "GET",
        &format!("/api/v1/channels/{}", "ab".repeat(32)),
        json!({}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(a, "GET", "/api/v1/channels/nothex", json!({})).await;
    assert_eq!(status, 400);
    let (status, page) = call(a, "GET", "/api/v1/channels?limit=10", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(page["total"], 1);

    // A cooperative close settles both sides at once; the money goes back to the wallets.
    let (status, closed) = call(
        a,
        "POST",
        &format!("/api/v1/channels/{id}/close"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(closed["status"], "settled");
    assert_eq!(closed["settlement"], "cooperative");
    assert_eq!(wallet(a).await.available, credit - 60);
    assert_eq!(wallet(b).await.available, credit + 60);
    let (status, err) = call(
        a,
        "POST",
        &format!("/api/v1/channels/{id}/pay"),
        json!({ "amount": 1 }),
    )
    .await;
    assert_eq!(status, 409, "{err}");
    let text = scrape(a).await;
    assert_eq!(
        sum_where(
            &text,
            "zerostate_economic_payments_total",
            &[r#"status="accepted""#]
        ),
        3.0
    );
    assert_eq!(
        sum_where(
            &text,
            "zerostate_economic_settlements_total",
            &[r#"status="cooperative""#]
        ),
        1.0
    );
    assert!(
        !text.contains("zerostate_economic_channel_balances{"),
        "a settled channel has no balance series"
    );
    for n in nodes {
        n.shutdown().await;
    }
}

/// A payment of 5 from A to B.
fn pay5(s: &mut State) {
    s.balance_a -= 5;
    s.balance_b += 5;
}

/// The next state of `channel` after its latest, changed by `f`.
fn forged(channel: &Channel, f: impl FnOnce(&mut State)) -> State {
    let mut s = channel.latest.state.clone();
    s.number = channel.highest_signed.max(s.number) + 1;
    f(&mut s);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_on_a_channel_are_refused_each_with_its_reason_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path(), vec![])).await;
    let raw = RawMarket::spawn(&[&node]).await;
    let stranger = RawMarket::spawn(&[&node]).await;
    let peer = node.peer_id();

    let mut c1 = raw.open_channel(peer, 100).await;
    let c2 = raw.open_channel(peer, 100).await;
    let state0 = c1.latest.state.clone();
    assert!(matches!(
        raw.propose(&mut c1, &Op::Pay(10)).await,
        Response::Countersig(_)
    ));
    let id = c1.id();
    let a = Side::A;

    // Each case: what it is, how the proposal is made (from the channel, the raw peer's key
    // and a stranger's), whether the stranger sends it, and the reason the node gives.
    type Case = (
        &'static str,
        Box<dyn Fn(&Channel, &Keypair, &Keypair) -> Proposal>,
        bool,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "a replayed old state",
            Box::new(move |_, k, _| Proposal::sign(k, state0.clone())),
            false,
            "stale",
        ),
        (
            "the same number with other content",
            Box::new(|c, k, _| {
                let mut s = c.latest.state.clone();
                s.balance_a -= 5;
                s.balance_b += 5;
                Proposal::sign(k, s)
            }),
            false,
            "conflicting",
        ),
        (
            "a forged signature",
            Box::new(|c, k, _| {
                let mut p = Proposal::sign(k, forged(c, pay5));
                p.sig[0] ^= 0xff;
                p
            }),
            false,
            "bad_signature",
        ),
        (
            "a state signed by someone else",
            Box::new(|c, _, other| Proposal::sign(other, forged(c, pay5))),
            false,
            "bad_signature",
        ),
        (
            "a state sent by a peer that is no party",
            Box::new(|c, _, other| Proposal::sign(other, forged(c, pay5))),
            true,
            "wrong_signer",
        ),
        (
            "a state replayed from another channel",
            Box::new({
                let c2 = c2.clone();
                move |c, k, _| {
                    let mut p = Proposal::sign(k, forged(&c2, pay5));
                    p.channel = c.id();
                    p
                }
            }),
            false,
            "wrong_channel",
        ),
        (
            "a higher number that pays the payee less",
            Box::new(|c, k, _| {
                Proposal::sign(
                    k,
                    forged(c, |s| {
                        s.balance_a += 5;
                        s.balance_b -= 5;
                    }),
                )
            }),
            false,
            "pays_payee_less",
        ),
        (
            "an overspend",
            Box::new(|c, k, _| {
                Proposal::sign(
                    k,
                    forged(c, |s| {
                        s.balance_b += 200;
                        s.balance_a = 0;
                    }),
                )
            }),
            false,
            "overspend",
        ),
        (
            "a number far beyond the last",
            Box::new(|c, k, _| {
                Proposal::sign(
                    k,
                    forged(c, |s| {
                        pay5(s);
                        s.number = u64::MAX;
                    }),
                )
            }),
            false,
            "out_of_bounds",
        ),
        (
            "a u64 overflow",
            Box::new(|c, k, _| {
                Proposal::sign(
                    k,
                    forged(c, |s| {
                        s.balance_a = u64::MAX - 5;
                        s.balance_b += 15;
                    }),
                )
            }),
            false,
            "overflow",
        ),
    ];
    let refused = |text: &str, reason: &str| {
        sum_where(
            text,
            "zerostate_payments_messages_refused_total",
            &[r#"message="update""#, &format!(r#"reason="{reason}""#)],
        )
    };
    for (what, make, from_stranger, reason) in &cases {
        let before = node.payments().channel(id).await.unwrap().unwrap();
        let wallet_before = wallet(&node).await;
        let counted_before = refused(&scrape(&node).await, reason);
        let proposal = make(&c1, &raw.key, &stranger.key);
        let sender = if *from_stranger { &stranger } else { &raw };
        let (answer, _) = sender
            .channel_request(peer, &Request::Update(proposal))
            .await
            .unwrap();
        assert_eq!(answer, Response::Refused((*reason).into()), "{what}");
        assert_eq!(
            node.payments().channel(id).await.unwrap().unwrap(),
            before,
            "{what}"
        );
        assert_eq!(wallet(&node).await, wallet_before, "{what}");
        let counted = refused(&scrape(&node).await, reason);
        assert_eq!(counted, counted_before + 1.0, "{what} is counted once");
    }

    // Two escrows on one deposit: the raw peer locks its whole balance, then locks it again.
    let l1 = EscrowId([1; 32]);
    let expires = now_ms() + 1_000;
    let lock = Op::Lock {
        escrow_id: l1,
        amount: 90,
        expires_at_ms: expires,
    };
    assert!(matches!(
        raw.propose(&mut c1, &lock).await,
        Response::Countersig(_)
    ));
    let double = forged(&c1, |s| {
        s.locks.push(Lock {
            escrow_id: EscrowId([2; 32]),
            payer: a,
            amount: 90,
            expires_at_ms: expires,
        })
    });
    let before = node.payments().channel(id).await.unwrap().unwrap();
    let (answer, _) = raw
        .channel_request(peer, &Request::Update(Proposal::sign(&raw.key, double)))
        .await
        .unwrap();
    assert_eq!(answer, Response::Refused("unbacked_escrow".into()));
    assert_eq!(node.payments().channel(id).await.unwrap().unwrap(), before);

    // A refund before the lock expires is refused; after, it goes through; a state that
    // brings the refunded escrow back (to release it again) is refused.
    let early = forged(&c1, |s| {
        s.locks.clear();
        s.balance_a += 90;
    });
    let (answer, _) = raw
        .channel_request(peer, &Request::Update(Proposal::sign(&raw.key, early)))
        .await
        .unwrap();
    assert_eq!(answer, Response::Refused("not_expired".into()));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(matches!(
        raw.propose(&mut c1, &Op::Refund(l1)).await,
        Response::Countersig(_)
    ));
    let again = forged(&c1, |s| {
        s.balance_a -= 90;
        s.locks.push(Lock {
            escrow_id: l1,
            payer: a,
            amount: 90,
            expires_at_ms: now_ms() + 60_000,
        });
    });
    let before = node.payments().channel(id).await.unwrap().unwrap();
    let (answer, _) = raw
        .channel_request(peer, &Request::Update(Proposal::sign(&raw.key, again)))
        .await
        .unwrap();
    assert_eq!(answer, Response::Refused("already_resolved".into()));
    assert_eq!(node.payments().channel(id).await.unwrap().unwrap(), before);
    assert_eq!(before.balance, 10);

    // After settlement nothing changes.
    assert!(matches!(
        raw.propose(&mut c1, &Op::Close).await,
        Response::Countersig(_)
    ));
    let settled = node.payments().channel(id).await.unwrap().unwrap();
    assert_eq!(settled.status, "settled");
    let late = forged(&c1, |s| {
        s.is_final = false;
        s.balance_a -= 5;
        s.balance_b += 5;
    });
    let (answer, _) = raw
        .channel_request(peer, &Request::Update(Proposal::sign(&raw.key, late)))
        .await
        .unwrap();
    assert_eq!(answer, Response::Refused("settled".into()));
    assert_eq!(node.payments().channel(id).await.unwrap().unwrap(), settled);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_unilateral_close_loses_its_dispute_and_convicts_the_closer_on_a_third_node() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_network(&dirs, |_| {}).await;
    let (victim, third) = (&nodes[1], &nodes[2]);
    let cheater = RawMarket::spawn(&nodes.iter().collect::<Vec<_>>()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut channel = cheater.open_channel(victim.peer_id(), 100).await;
    assert!(matches!(
        cheater.propose(&mut channel, &Op::Pay(10)).await,
        Response::Countersig(_)
    ));
    let old = channel.latest.clone();
    assert!(matches!(
        cheater.propose(&mut channel, &Op::Pay(10)).await,
        Response::Countersig(_)
    ));
    // It closes with the state before its last payment.
    let close = SignedClose::sign(&cheater.key, old, None, now_ms());
    let (answer, _) = cheater
        .channel_request(victim.peer_id(), &Request::Close(Box::new(close)))
        .await
        .unwrap();
    let Response::Dispute(higher) = answer else {
        panic!("the victim disputes: {answer:?}");
    };
    assert_eq!(higher.state.number, 2, "with its latest state");
    let view = victim
        .payments()
        .channel(channel.id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.status, "settled");
    assert_eq!(view.settlement.as_deref(), Some("disputed"));
    assert_eq!(view.balance, 20, "the victim keeps both payments");
    assert_eq!(
        wallet(victim).await.available,
        wallet(victim).await.initial_credit + 20
    );
    let text = scrape(victim).await;
    assert_eq!(
        sum_where(
            &text,
            "zerostate_economic_disputes_total",
            &[r#"status="opened""#]
        ),
        1.0
    );
    assert_eq!(
        sum_where(
            &text,
            "zerostate_economic_settlements_total",
            &[r#"status="disputed""#]
        ),
        1.0
    );

    // The evidence, gossiped, convicts the cheater on a node that had no part in it.
    let cheater_id = cheater.id.to_string();
    eventually(
        Duration::from_secs(15),
        "the third node verifies the evidence",
        || async {
            let text = scrape(third).await;
            (sum_where(
                &text,
                "zerostate_economic_disputes_total",
                &[r#"status="convicted""#],
            ) == 1.0)
                .then_some(())
        },
    )
    .await;
    let records = third.market().reputation().await.unwrap();
    let record = records
        .iter()
        .find(|r| r.peer_id == cheater_id)
        .expect("the third node has a record of the cheater");
    assert!(record.score < 0.5, "{record:?}");
    for n in nodes {
        n.shutdown().await;
    }
}

struct Process {
    child: Child,
    dir: std::path::PathBuf,
}

impl Process {
    fn start(dir: &std::path::Path, bootstrap: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_zerostate"))
            .args([
                "node",
                "--data-dir",
                dir.to_str().unwrap(),
                "--http",
                "127.0.0.1:0",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--bootstrap",
                bootstrap,
            ])
            .env("ZEROSTATE_ALLOW_PRIVATE_ADDRS", "true")
            .env("ZEROSTATE_LOG_FILTER", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child,
            dir: dir.to_owned(),
        }
    }

    /// Waits until the process wrote its node.json and is ready (connected to its
    /// bootstrap peer); returns an API client for it.
    async fn ready(&self) -> Client {
        let pid = self.child.id();
        let info = self.dir.join("node.json");
        eventually(
            Duration::from_secs(60),
            "the node process is ready",
            || async {
                let text = std::fs::read_to_string(&info).ok()?;
                let v: Value = serde_json::from_str(&text).ok()?;
                if v["pid"].as_u64()? != u64::from(pid) {
                    return None;
                }
                let url = format!("http://{}/ready", v["http"].as_str()?);
                let ok = reqwest::get(&url).await.ok()?.status().is_success();
                ok.then_some(())
            },
        )
        .await;
        Client::from_data_dir(&self.dir, None).unwrap()
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_paying_loses_no_acknowledged_payment() {
    const KILLS: usize = 50;
    let b_dir = tempfile::tempdir().unwrap();
    let b = start(test_config(b_dir.path(), vec![])).await;
    let bootstrap = p2p_addr(&b).to_string();
    let a_dir = tempfile::tempdir().unwrap();
    let a_data = a_dir.path().join("a");

    let a = Process::start(&a_data, &bootstrap);
    let client = a.ready().await;
    let Change::Done {
        channel: opened, ..
    } = client
        .open_channel(&b.peer_id().to_string(), 1_000_000, 0, None)
        .await
        .unwrap()
    else {
        panic!("B countersigns the open at once");
    };
    let id: ChannelId = opened.id.parse().unwrap();
    let mut a = Some(a);
    let mut acked_max = 0u64;
    let mut acks = 0usize;
    for round in 0..KILLS {
        let process = match a.take() {
            Some(p) => p,
            None => Process::start(&a_data, &bootstrap),
        };
        let client = process.ready().await;
        // Three clients pay 1 in a loop; each acknowledgement says how much B holds.
        let payers: Vec<_> = (0..3)
            .map(|_| {
                let client = client.clone();
                let id = id.to_string();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while let Ok(Change::Done { channel: view, .. }) =
                        client.pay(&id, 1, None).await
                    {
                        seen.push(view.peer_balance);
                    }
                    seen
                })
            })
            .collect();
        let wait = rand::thread_rng().gen_range(10..250);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        process.kill();
        for p in payers {
            let seen = p.await.unwrap();
            acks += seen.len();
            acked_max = acked_max.max(seen.into_iter().max().unwrap_or(0));
        }
        let _ = round;
    }
    assert!(
        acks > KILLS,
        "the loop made progress: {acks} acknowledged payments"
    );

    // After the last restart, whatever A had signed but not delivered is re-sent.
    let last = Process::start(&a_data, &bootstrap);
    let client = last.ready().await;
    let id_hex = id.to_string();
    let a_view = eventually(
        Duration::from_secs(30),
        "A's pending state is delivered",
        || async {
            let view = client.channel(&id_hex).await.ok()?;
            view.pending.is_none().then_some(view)
        },
    )
    .await;
    let b_view = b.payments().channel(id).await.unwrap().unwrap();
    eprintln!(
        "{KILLS} kills: {acks} payments acknowledged, the highest acknowledged balance {acked_max}, B holds {} at state {}",
        b_view.balance, b_view.number
    );
    assert!(
        b_view.balance >= acked_max,
        "every acknowledged payment reached B: it holds {} of {acked_max} acknowledged",
        b_view.balance
    );
    assert_eq!(
        (a_view.number, a_view.peer_balance),
        (b_view.number, b_view.balance)
    );
    for v in [&a_view, &b_view] {
        let locked: u64 = v.locks.iter().map(|l| l.amount).sum();
        assert_eq!(
            v.balance + v.peer_balance + locked,
            v.deposit + v.peer_deposit
        );
    }
    let text = scrape(&b).await;
    assert_eq!(
        sum_where(
            &text,
            "zerostate_payments_messages_refused_total",
            &[r#"reason="conflicting""#]
        ),
        0.0,
        "A never reused a state number with other content"
    );
    last.kill();
    b.shutdown().await;
}

/// POSTs `body` to `path` with `Idempotency-Key: key`; returns the status, whether the
/// answer says it was replayed, and the body.
async fn post_keyed(node: &NodeHandle, path: &str, key: &str, body: Value) -> (u16, bool, Value) {
    let url = format!("http://{}{}", node.http_addr(), path);
    let resp = reqwest::Client::new()
        .post(url)
        .header("Idempotency-Key", key)
        .json(&body)
        .bearer_auth(node.api_token())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(false);
    (status, replayed, resp.json().await.unwrap_or(Value::Null))
}

fn quick_acks(mut config: zerostate::Config) -> zerostate::Config {
    config.payments.ack_timeout_ms = 1_000;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_retried_while_the_payee_is_down_is_paid_exactly_once() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(quick_acks(test_config(a_dir.path(), vec![]))).await;
    let b_config = |a: &NodeHandle| quick_acks(test_config(b_dir.path(), vec![p2p_addr(a)]));
    let b = start(b_config(&a)).await;
    let b_id = b.peer_id();
    eventually(Duration::from_secs(30), "A and B connected", || async {
        (a.p2p().connected_peers().await.ok()?.contains(&b_id)).then_some(())
    })
    .await;
    let credit = wallet(&a).await.initial_credit;
    let (status, opened) = call(
        &a,
        "POST",
        "/api/v1/channels",
        json!({"peer_id": b_id.to_string(), "deposit": 1000}),
    )
    .await;
    assert_eq!(status, 201, "{opened}");
    let id = opened["id"].as_str().unwrap().to_owned();
    let pay = format!("/api/v1/channels/{id}/pay");

    // The payee goes away; the payment is signed and sent, and stays pending.
    b.shutdown().await;
    let (status, replayed, first) = post_keyed(&a, &pay, "retry-1", json!({"amount": 100})).await;
    assert_eq!(status, 202, "{first}");
    assert!(!replayed);
    assert_eq!(first["status"], "pending", "{first}");
    assert_eq!(first["kind"], "pay");
    assert_eq!(first["payment_id"], "retry-1");
    assert_eq!(first["channel_id"], id.as_str());
    assert_eq!(
        (first["amount"].as_u64(), first["number"].as_u64()),
        (Some(100), Some(1))
    );
    assert_eq!(first["replayed"], false);
    assert_eq!(first["channel"]["pending"], 1);
    let message = first["message"].as_str().unwrap();
    assert!(
        message.contains("state 1") && message.contains("same payment id"),
        "{message}"
    );

    // A retry is answered with the same pending payment, and pays nothing more.
    let (status, replayed, again) = post_keyed(&a, &pay, "retry-1", json!({"amount": 100})).await;
    assert_eq!(status, 202, "{again}");
    assert!(replayed);
    assert_eq!(
        (again["number"].as_u64(), again["replayed"].as_bool()),
        (Some(1), Some(true))
    );
    // The same id for another payment is refused.
    let (status, _, err) = post_keyed(&a, &pay, "retry-1", json!({"amount": 150})).await;
    assert_eq!(status, 422, "{err}");
    let text = err["error"].as_str().unwrap();
    assert!(
        text.contains("retry-1") && text.contains("payment of 100"),
        "{text}"
    );
    // The header and the body field must agree.
    let (status, _, err) = post_keyed(
        &a,
        &pay,
        "retry-1",
        json!({"amount": 100, "payment_id": "other"}),
    )
    .await;
    assert_eq!(status, 400, "{err}");

    // The payer restarts too: the id is durable with the signed state that carries it.
    a.shutdown().await;
    let a = start(quick_acks(test_config(a_dir.path(), vec![]))).await;
    let (status, replayed, again) = post_keyed(&a, &pay, "retry-1", json!({"amount": 100})).await;
    assert_eq!(status, 202, "{again}");
    assert!(replayed, "{again}");
    assert_eq!(again["number"].as_u64(), Some(1));

    // The payee comes back (same data dir, same identity); retries find the payment done.
    let b = start(b_config(&a)).await;
    let done = eventually(Duration::from_secs(60), "the payment completes", || async {
        let (status, replayed, view) =
            post_keyed(&a, &pay, "retry-1", json!({"amount": 100})).await;
        assert!(replayed, "every retry is a replay: {view}");
        (status == 200).then_some(view)
    })
    .await;
    assert_eq!(
        (done["balance"].as_u64(), done["peer_balance"].as_u64()),
        (Some(900), Some(100))
    );
    assert_eq!(done["number"], 1);

    // Once more after completion: the same answer, nothing moves.
    let (status, replayed, view) = post_keyed(&a, &pay, "retry-1", json!({"amount": 100})).await;
    assert_eq!(status, 200, "{view}");
    assert!(replayed);
    assert_eq!(
        (view["balance"].as_u64(), view["number"].as_u64()),
        (Some(900), Some(1))
    );
    let (status, _, err) = post_keyed(&a, &pay, "retry-1", json!({"amount": 7})).await;
    assert_eq!(status, 422, "{err}");

    // Exactly one payment, on both sides.
    let channel: ChannelId = id.parse().unwrap();
    let ours = a.payments().channel(channel).await.unwrap().unwrap();
    let theirs = b.payments().channel(channel).await.unwrap().unwrap();
    assert_eq!(
        (ours.balance, ours.peer_balance, ours.number),
        (900, 100, 1)
    );
    assert_eq!(
        (theirs.balance, theirs.peer_balance, theirs.number),
        (100, 900, 1)
    );
    assert_eq!(ours.pending, None);
    assert_eq!(wallet(&a).await.available, credit - 1000);
    let text = scrape(&a).await;
    assert_eq!(
        sum_where(
            &text,
            "zerostate_economic_payments_total",
            &[r#"status="accepted""#]
        ),
        1.0
    );

    // A new id pays again.
    let (status, replayed, view) = post_keyed(&a, &pay, "retry-2", json!({"amount": 100})).await;
    assert_eq!(status, 200, "{view}");
    assert!(!replayed);
    assert_eq!(view["peer_balance"], 200);
    for n in [a, b] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_to_a_silent_peer_is_pending_and_not_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(quick_acks(test_config(dir.path(), vec![]))).await;
    let nobody = Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    let credit = wallet(&a).await.initial_credit;
    let open = json!({"peer_id": nobody, "deposit": 500});
    let (status, replayed, first) =
        post_keyed(&a, "/api/v1/channels", "open-1", open.clone()).await;
    assert_eq!(status, 202, "{first}");
    assert!(!replayed);
    assert_eq!(first["kind"], "open");
    assert_eq!(first["status"], "pending");
    assert_eq!(
        (first["number"].as_u64(), first["amount"].as_u64()),
        (Some(0), Some(500))
    );
    assert_eq!(first["channel"]["status"], "opening");
    let channel = first["channel_id"].as_str().unwrap().to_owned();

    // The same id: the same channel, still pending.
    let (status, replayed, again) =
        post_keyed(&a, "/api/v1/channels", "open-1", open.clone()).await;
    assert_eq!(status, 202, "{again}");
    assert!(replayed);
    assert_eq!(again["channel_id"], channel.as_str());
    // Another id (or none) while that open is pending: refused, naming what exists.
    let (status, err) = call(&a, "POST", "/api/v1/channels", open.clone()).await;
    assert_eq!(status, 409, "{err}");
    let text = err["error"].as_str().unwrap();
    assert!(text.contains(&channel) && text.contains("open-1"), "{text}");
    // The id with other parameters: refused.
    let (status, _, err) = post_keyed(
        &a,
        "/api/v1/channels",
        "open-1",
        json!({"peer_id": nobody, "deposit": 501}),
    )
    .await;
    assert_eq!(status, 422, "{err}");
    let (_, page) = call(&a, "GET", "/api/v1/channels", json!({})).await;
    assert_eq!(page["total"], 1, "one channel: {page}");
    assert_eq!(wallet(&a).await.available, credit - 500);

    // Too large a deposit says how much there is.
    let (status, err) = call(
        &a,
        "POST",
        "/api/v1/channels",
        json!({"peer_id": Keypair::generate_ed25519().public().to_peer_id().to_string(), "deposit": credit}),
    )
    .await;
    assert_eq!(status, 409, "{err}");
    let text = err["error"].as_str().unwrap();
    assert!(
        text.contains("insufficient_funds")
            && text.contains(&format!("{credit} requested"))
            && text.contains(&format!("only {} is available in the wallet", credit - 500)),
        "{text}"
    );
    a.shutdown().await;
}
