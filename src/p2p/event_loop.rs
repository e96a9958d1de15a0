//! The one task that owns the [`Swarm`]. It moves bytes and events and does no service's
//! work: inbound requests and gossip are routed to the services' bounded inboxes
//! ([`Routes`]), their answers are sent back when they arrive, commands from
//! [`P2pHandle`]s are carried out, and the plain state machines it owns (bootstrap redial,
//! address book, remote provider records, peer monitor) are fed with swarm events.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId, TopicHash};
use libp2p::kad::store::RecordStore;
use libp2p::metrics::Recorder;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, ping};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::addrs::{AddressBook, MAX_ADDRS_PER_PEER, dialable, ip_of, metric_stack};
use super::announce;
use super::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL, TOPICS};
use super::bootstrap::Bootstrap;
use super::config::P2pConfig;
use super::content_protocol::{ContentRequest, ContentResponse};
use super::frame_protocol::FrameCodec;
use super::handle::{COMMAND_QUEUE, Command, NetStatus, P2pHandle, PublishError};
use super::monitor::PeerMonitor;
use super::providers::{Admission, ProviderLimits, RemoteProviders};
use super::rate_limit::{Admission as RateAdmission, InFlight, RateLimiter};
use super::routing::{
    FrameProtocol, GOSSIP_VERDICT_DEADLINE, GossipMessage, INBOUND_REPLY_DEADLINE, InboundRequest,
    MAX_PENDING_ANSWERS, Outbound, Reply, RequestError, Routes, Verdict,
};
use super::{P2pMetrics, without_peer_id};

/// How often bootstrap redials and peer liveness are checked.
const TICK: Duration = Duration::from_millis(250);
/// A provider search stops once it has found this many providers.
const ENOUGH_PROVIDERS: usize = 8;
/// Provider records are accepted only for keys of this length (a BLAKE3 digest).
const CONTENT_KEY_LEN: usize = crate::content_id::DIGEST_LEN;
/// Most peers being connected to through [`Command::Connect`] at once.
const MAX_PENDING_CONNECTS: usize = 256;
/// Most listen addresses of one identify message looked at.
const MAX_ANNOUNCED_ADDRS: usize = 32;

/// An answer the loop is waiting for: a service's reply to an inbound request, or its
/// verdict on a gossip message.
enum Answer {
    Content(ResponseChannel<ContentResponse>, Option<ContentResponse>),
    Frame(
        FrameProtocol,
        PeerId,
        ResponseChannel<Vec<u8>>,
        Option<Vec<u8>>,
    ),
    Verdict {
        id: MessageId,
        from: PeerId,
        topic: &'static str,
        verdict: Option<Verdict>,
    },
}

/// Owns the swarm. Create with [`EventLoop::new`], run with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    status: watch::Sender<NetStatus>,
    libp2p_metrics: libp2p::metrics::Metrics,
    metrics: P2pMetrics,
    monitor: PeerMonitor,
    routes: Routes,
    /// Our topics by hash, so labels and routes use the fixed names.
    topics: HashMap<TopicHash, &'static str>,
    answers: FuturesUnordered<BoxFuture<'static, Answer>>,
    provider_queries: HashMap<kad::QueryId, (HashSet<PeerId>, oneshot::Sender<Vec<PeerId>>)>,
    remote_providers: RemoteProviders,
    address_book: AddressBook,
    content_requests: HashMap<OutboundRequestId, Reply<ContentResponse>>,
    frame_requests: HashMap<(FrameProtocol, OutboundRequestId), Reply<Vec<u8>>>,
    /// Callers waiting for a connection to a peer, and the lookups finding its addresses.
    connects: HashMap<PeerId, Vec<oneshot::Sender<Result<(), String>>>>,
    peer_lookups: HashMap<kad::QueryId, PeerId>,
    bootstrap: Bootstrap,
    allow_private_addrs: bool,
    /// Token buckets of the market and channel protocols, per identity and per address.
    rate_limits: RateLimiter,
    /// Market and channel requests of each peer waiting on a service.
    in_flight: InFlight,
    /// The remote IP address of each open connection, for the address buckets.
    connection_ips: HashMap<ConnectionId, IpAddr>,
}

impl EventLoop {
    /// Wraps `swarm` and returns the loop with a handle to it. The loop feeds `monitor`.
    /// Until [`EventLoop::with_routes`] says where inbound traffic goes, requests are
    /// refused and gossip is rejected.
    pub fn new(
        mut swarm: Swarm<Behaviour>,
        config: &P2pConfig,
        libp2p_metrics: libp2p::metrics::Metrics,
        metrics: P2pMetrics,
        monitor: PeerMonitor,
    ) -> (Self, P2pHandle) {
        let local = *swarm.local_peer_id();
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (status_tx, status_rx) = watch::channel(NetStatus::default());
        let mut peers = Vec::new();
        for (id, addr) in &config.bootstrap {
            if *id == local {
                tracing::warn!(%addr, "ignoring bootstrap address that is this node itself");
                continue;
            }
            swarm
                .behaviour_mut()
                .kad
                .add_address(id, without_peer_id(addr));
            peers.push((*id, addr.clone()));
        }
        let d = &config.discovery;
        let bootstrap = Bootstrap::new(
            peers,
            Duration::from_millis(d.bootstrap_backoff_initial_ms),
            Duration::from_millis(d.bootstrap_backoff_max_ms),
            Instant::now(),
        );
        let event_loop = Self {
            swarm,
            commands: rx,
            status: status_tx,
            libp2p_metrics,
            metrics,
            monitor,
            routes: Routes::default(),
            topics: TOPICS
                .iter()
                .map(|t| (IdentTopic::new(*t).hash(), *t))
                .collect(),
            answers: FuturesUnordered::new(),
            provider_queries: HashMap::new(),
            remote_providers: RemoteProviders::new(ProviderLimits::default()),
            address_book: AddressBook::default(),
            content_requests: HashMap::new(),
            frame_requests: HashMap::new(),
            connects: HashMap::new(),
            peer_lookups: HashMap::new(),
            bootstrap,
            allow_private_addrs: config.allow_private_addrs,
            rate_limits: RateLimiter::new(config.peer_bucket(), config.address_bucket()),
            in_flight: InFlight::new(config.limits.max_inflight_requests_per_peer),
            connection_ips: HashMap::new(),
        };
        (event_loop, P2pHandle::new(local, tx, status_rx))
    }

    /// Routes inbound requests and gossip to the services' inboxes in `routes`.
    pub fn with_routes(mut self, routes: Routes) -> Self {
        self.routes = routes;
        self
    }

    /// Runs until `cancel` fires or every handle is dropped, then closes the swarm.
    pub async fn run(mut self, cancel: CancellationToken) {
        for topic in TOPICS {
            if let Err(e) = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&IdentTopic::new(*topic))
            {
                tracing::error!(topic, error = %e, "cannot subscribe");
            }
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Not biased: a steady stream of commands must not starve swarm events (or the
            // other way round). Cancellation is checked at every turn below.
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                _ = tick.tick() => {
                    self.rate_limits.prune(Instant::now());
                    self.dial_due_bootstrap_peers();
                    let dead = self.monitor.tick(Instant::now());
                    self.disconnect_dead(dead);
                }
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(answer) = self.answers.next(), if !self.answers.is_empty() => {
                    self.on_answer(answer);
                }
            }
            if cancel.is_cancelled() {
                break;
            }
        }
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in connected {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        tracing::info!("p2p event loop stopped");
    }

    fn publish_status(&self) {
        let listen_addrs: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        let connected_peers = self.monitor.connected();
        self.status.send_if_modified(|s| {
            let new = NetStatus {
                listen_addrs,
                connected_peers,
            };
            if *s == new {
                false
            } else {
                *s = new;
                true
            }
        });
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Peers(reply) => {
                let table = self.routing_table_sizes();
                let gossip = &self.swarm.behaviour().gossipsub;
                let peers = self.monitor.snapshot_with(Instant::now(), |peer| {
                    (gossip.peer_score(peer), table.get(peer).copied())
                });
                let _ = reply.send(peers);
            }
            Command::ConnectedPeers(reply) => {
                let _ = reply.send(self.monitor.connected_peers().collect());
            }
            Command::UpdateProvided {
                provide,
                withdraw,
                reply,
            } => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                for id in withdraw {
                    kad.stop_providing(&kad::RecordKey::new(id.digest()));
                }
                for id in provide {
                    if let Err(e) = kad.start_providing(kad::RecordKey::new(id.digest())) {
                        tracing::warn!(%id, error = %e, "cannot announce provider record");
                    }
                }
                let _ = reply.send(());
            }
            Command::FindProviders(id, reply) => {
                let key = kad::RecordKey::new(id.digest());
                let query = self.swarm.behaviour_mut().kad.get_providers(key);
                self.provider_queries.insert(query, (HashSet::new(), reply));
            }
            Command::Request(Outbound::Content {
                peer,
                request,
                reply,
            }) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .content
                    .send_request(&peer, request);
                self.content_requests.insert(id, reply);
            }
            Command::Request(Outbound::Frame {
                protocol,
                peer,
                request,
                reply,
            }) => {
                let id = frames(&mut self.swarm, protocol).send_request(&peer, request);
                self.frame_requests.insert((protocol, id), reply);
            }
            Command::Connect(peer, reply) => self.connect(peer, reply),
            Command::Dial(addr, reply) => {
                let result = match addr.iter().last() {
                    Some(Protocol::P2p(_)) => self.swarm.dial(addr).map_err(|e| e.to_string()),
                    _ => Err(format!("{addr} does not end in /p2p/<peer id>")),
                };
                let _ = reply.send(result);
            }
            Command::Block(peer, reply) => {
                let _ = reply.send(self.swarm.behaviour_mut().blocked.block_peer(peer));
            }
            Command::Unblock(peer, reply) => {
                let _ = reply.send(self.swarm.behaviour_mut().blocked.unblock_peer(peer));
            }
            Command::Publish { topic, data, reply } => {
                let result = if TOPICS.contains(&topic.as_str()) {
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .publish(IdentTopic::new(topic), data)
                        .map(|_| ())
                        .map_err(|e| match e {
                            gossipsub::PublishError::NoPeersSubscribedToTopic => {
                                PublishError::NoPeers
                            }
                            gossipsub::PublishError::MessageTooLarge => PublishError::TooLarge,
                            gossipsub::PublishError::Duplicate => PublishError::Duplicate,
                            other => PublishError::Other(other.to_string()),
                        })
                } else {
                    Err(PublishError::UnknownTopic(topic))
                };
                let _ = reply.send(result);
            }
        }
    }

    /// Number of addresses of each peer in Kademlia's routing table.
    fn routing_table_sizes(&mut self) -> HashMap<PeerId, usize> {
        let mut sizes = HashMap::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                sizes.insert(*entry.node.key.preimage(), entry.node.value.len());
            }
        }
        sizes
    }

    fn dial_due_bootstrap_peers(&mut self) {
        let now = Instant::now();
        for (id, addr) in self.bootstrap.due(now) {
            let opts = DialOpts::peer_id(id)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .addresses(vec![addr])
                .build();
            match self.swarm.dial(opts) {
                Ok(()) => tracing::debug!(peer = %id, "dialing bootstrap peer"),
                Err(DialError::DialPeerConditionFalse(_)) => {
                    self.bootstrap.dial_not_started(&id, now);
                }
                Err(e) => {
                    tracing::warn!(peer = %id, error = %e, "cannot dial bootstrap peer");
                    self.bootstrap_failed(id);
                }
            }
        }
    }

    fn bootstrap_failed(&mut self, peer: PeerId) {
        if let Some(retry_in) = self.bootstrap.dial_failed(&peer, Instant::now()) {
            tracing::info!(peer = %peer, ?retry_in, "bootstrap peer unreachable");
            self.metrics.bootstrap_dial("failed");
        }
    }

    /// Records a swarm event in libp2p-metrics, except address candidates whose protocol
    /// stack a remote chose and is not one we allow as a label value.
    fn record_swarm_metrics(&self, event: &SwarmEvent<BehaviourEvent>) {
        if let SwarmEvent::NewExternalAddrCandidate { address } = event
            && metric_stack(address).is_none()
        {
            return;
        }
        self.libp2p_metrics.record(event);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.record_swarm_metrics(&event);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                // Without AutoNAT nothing confirms an external address; a concrete listen
                // address we would accept from a peer is one, so provider records carry it.
                if dialable(&address, self.allow_private_addrs) {
                    self.swarm.add_external_address(address);
                }
                self.publish_status();
            }
            SwarmEvent::ExpiredListenAddr { .. } | SwarmEvent::ListenerClosed { .. } => {
                self.publish_status();
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                if let Some(ip) = ip_of(&addr) {
                    self.connection_ips.insert(connection_id, ip);
                }
                tracing::debug!(peer = %peer_id, %addr, "connection established");
                self.monitor.on_connected(peer_id, addr, Instant::now());
                self.connected(&peer_id, Ok(()));
                if self.bootstrap.connected(&peer_id, Instant::now()) {
                    self.metrics.bootstrap_dial("connected");
                    tracing::info!(peer = %peer_id, "connected to bootstrap peer");
                    // Find the rest of the network through the bootstrap peer's table.
                    if let Err(e) = self.swarm.behaviour_mut().kad.bootstrap() {
                        tracing::warn!(error = %e, "kademlia bootstrap could not start");
                    }
                }
                self.publish_status();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                endpoint,
                num_established,
                connection_id,
                ..
            } => {
                self.connection_ips.remove(&connection_id);
                self.monitor.on_disconnected(
                    peer_id,
                    endpoint.get_remote_address(),
                    num_established,
                );
                if num_established == 0
                    && let Some(retry_in) = self.bootstrap.disconnected(&peer_id, Instant::now())
                {
                    tracing::info!(peer = %peer_id, ?retry_in, "lost bootstrap peer; will redial");
                }
                self.publish_status();
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "outgoing connection failed");
                if !self.swarm.is_connected(&peer) {
                    self.connected(&peer, Err(format!("dial failed: {error}")));
                }
                if self.bootstrap.is_dialing(&peer) {
                    self.bootstrap_failed(peer);
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(event) => {
                record_identify(&self.libp2p_metrics, &event);
                if let identify::Event::Received { peer_id, info, .. } = event {
                    self.on_identified(peer_id, info);
                }
            }
            BehaviourEvent::Ping(event) => {
                self.libp2p_metrics.record(&event);
                let ping::Event { peer, result, .. } = event;
                match result {
                    Ok(rtt) => self.monitor.on_ping_ok(peer, rtt, Instant::now()),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "ping failed");
                        let dead = self.monitor.on_ping_failure(peer, Instant::now());
                        self.disconnect_dead(dead);
                    }
                }
            }
            BehaviourEvent::Kad(event) => {
                self.libp2p_metrics.record(&event);
                self.on_kad_event(event);
            }
            BehaviourEvent::Gossipsub(event) => {
                self.libp2p_metrics.record(&event);
                if let gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                } = event
                {
                    self.route_gossip(propagation_source, message_id, message);
                }
            }
            BehaviourEvent::Content(event) => self.on_content_event(event),
            BehaviourEvent::Market(event) => self.on_frame_event(FrameProtocol::Market, event),
            BehaviourEvent::Channel(event) => self.on_frame_event(FrameProtocol::Channel, event),
            BehaviourEvent::IpLimits(never)
            | BehaviourEvent::Limits(never)
            | BehaviourEvent::Blocked(never) => match never {},
        }
    }

    /// Hands a gossip message to its topic's service, or rejects it if the topic has none.
    fn route_gossip(&mut self, from: PeerId, id: MessageId, message: gossipsub::Message) {
        // The subscription filter admits only our topics, so the lookup cannot miss.
        let Some(&topic) = self.topics.get(&message.topic) else {
            self.report(&id, &from, MessageAcceptance::Reject);
            return;
        };
        let Some(route) = self.routes.gossip.get(topic) else {
            // No message format on this topic yet: nothing valid can arrive on it.
            self.metrics.gossip(topic, "rejected");
            self.report(&id, &from, MessageAcceptance::Reject);
            return;
        };
        if self.answers.len() >= MAX_PENDING_ANSWERS {
            self.metrics.gossip(topic, "ignored");
            self.report(&id, &from, MessageAcceptance::Ignore);
            return;
        }
        let (tx, rx) = oneshot::channel();
        let routed = route.try_send(GossipMessage {
            topic,
            source: message.source,
            propagation_source: from,
            data: message.data,
            verdict: tx,
        });
        if routed.is_err() {
            // The service is behind: do not wait, do not forward, do not penalise.
            self.metrics.gossip(topic, "ignored");
            self.report(&id, &from, MessageAcceptance::Ignore);
            return;
        }
        self.answers.push(
            async move {
                let verdict = tokio::time::timeout(GOSSIP_VERDICT_DEADLINE, rx)
                    .await
                    .ok()
                    .and_then(Result::ok);
                Answer::Verdict {
                    id,
                    from,
                    topic,
                    verdict,
                }
            }
            .boxed(),
        );
    }

    fn report(&mut self, id: &MessageId, from: &PeerId, acceptance: MessageAcceptance) {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, from, acceptance);
    }

    fn on_answer(&mut self, answer: Answer) {
        match answer {
            Answer::Content(channel, response) => {
                let content = &mut self.swarm.behaviour_mut().content;
                respond(content, channel, response, &self.metrics, "content");
            }
            Answer::Frame(protocol, peer, channel, response) => {
                self.in_flight.done(&peer);
                let behaviour = frames(&mut self.swarm, protocol);
                respond(
                    behaviour,
                    channel,
                    response,
                    &self.metrics,
                    protocol.label(),
                );
            }
            Answer::Verdict {
                id,
                from,
                topic,
                verdict,
            } => {
                let (acceptance, label) = match verdict {
                    Some(Verdict::Accept) => (MessageAcceptance::Accept, "accepted"),
                    Some(Verdict::Reject) => (MessageAcceptance::Reject, "rejected"),
                    Some(Verdict::Ignore) => (MessageAcceptance::Ignore, "ignored"),
                    None => (MessageAcceptance::Ignore, "timeout"),
                };
                self.metrics.gossip(topic, label);
                self.report(&id, &from, acceptance);
            }
        }
    }

    fn disconnect_dead(&mut self, dead: Vec<PeerId>) {
        for peer in dead {
            tracing::info!(%peer, "peer is dead; disconnecting");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn on_providers(&mut self, query: kad::QueryId, result: kad::GetProvidersResult, last: bool) {
        let Some((found, _)) = self.provider_queries.get_mut(&query) else {
            return;
        };
        if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
            found.extend(providers);
        }
        let enough = found.len() >= ENOUGH_PROVIDERS;
        if enough && let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&query) {
            q.finish();
        }
        if (last || enough)
            && let Some((found, reply)) = self.provider_queries.remove(&query)
        {
            let _ = reply.send(found.into_iter().collect());
        }
    }

    fn on_content_event(
        &mut self,
        event: request_response::Event<ContentRequest, ContentResponse>,
    ) {
        if let Some((peer, _, request, channel)) =
            settle_outbound(event, |id| self.content_requests.remove(&id), "content")
        {
            let inbox = self.routes.content.as_ref();
            let answer = route_request(
                inbox,
                &self.answers,
                &self.metrics,
                "content",
                peer,
                request,
            );
            self.await_answer(answer, |r| Answer::Content(channel, r));
        }
    }

    fn on_frame_event(
        &mut self,
        protocol: FrameProtocol,
        event: request_response::Event<Vec<u8>, Vec<u8>>,
    ) {
        let label = protocol.label();
        let Some((peer, connection, request, channel)) = settle_outbound(
            event,
            |id| self.frame_requests.remove(&(protocol, id)),
            label,
        ) else {
            return;
        };
        // Before anything looks at the request: the peer's and its address's buckets (every
        // request costs a token, whatever the service would answer), then its share of the
        // services' inboxes. A refused request's stream is dropped unanswered.
        let ip = self.connection_ips.get(&connection).copied();
        let admission = self.rate_limits.admit(peer, ip, Instant::now());
        if let Some(reason) = admission.refusal_label() {
            if let RateAdmission::PeerLimited { first: true }
            | RateAdmission::AddressLimited { first: true } = admission
            {
                tracing::info!(%peer, ?ip, protocol = label, reason, "peer over its request rate; refusing until its bucket refills");
            }
            self.metrics.inbound_refused(label, reason);
            return;
        }
        if !self.in_flight.start(peer) {
            self.metrics.inbound_refused(label, "peer_busy");
            return;
        }
        let inbox = self.routes.frames.get(&protocol);
        let answer = route_request(inbox, &self.answers, &self.metrics, label, peer, request);
        if answer.is_none() {
            self.in_flight.done(&peer);
        }
        self.await_answer(answer, move |r| Answer::Frame(protocol, peer, channel, r));
    }

    /// Waits for a routed request's answer (if it was routed), then hands it to `on_answer`.
    fn await_answer<Resp, F>(
        &mut self,
        answer: Option<impl std::future::Future<Output = Option<Resp>> + Send + 'static>,
        wrap: F,
    ) where
        F: FnOnce(Option<Resp>) -> Answer + Send + 'static,
    {
        if let Some(answer) = answer {
            self.answers.push(answer.map(wrap).boxed());
        }
    }

    /// Connects to `peer` (see [`Command::Connect`]).
    fn connect(&mut self, peer: PeerId, reply: oneshot::Sender<Result<(), String>>) {
        if self.swarm.is_connected(&peer) {
            let _ = reply.send(Ok(()));
            return;
        }
        if let Some(waiting) = self.connects.get_mut(&peer) {
            waiting.retain(|r| !r.is_closed());
            waiting.push(reply);
            return;
        }
        if self.connects.len() >= MAX_PENDING_CONNECTS {
            // Callers that gave up leave their entries behind: drop those first.
            self.connects.retain(|_, waiting| {
                waiting.retain(|r| !r.is_closed());
                !waiting.is_empty()
            });
        }
        if self.connects.len() >= MAX_PENDING_CONNECTS {
            let _ = reply.send(Err("too many connections being set up".into()));
            return;
        }
        self.connects.insert(peer, vec![reply]);
        let query = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
        self.peer_lookups.insert(query, peer);
    }

    /// Answers everyone waiting for a connection to `peer`.
    fn connected(&mut self, peer: &PeerId, result: Result<(), String>) {
        for reply in self.connects.remove(peer).unwrap_or_default() {
            let _ = reply.send(result.clone());
        }
    }

    /// A lookup for a peer's addresses progressed: dial what it found (filtered like every
    /// announced address, at most [`MAX_ADDRS_PER_PEER`]), or give up.
    fn on_peer_lookup(
        &mut self,
        query: kad::QueryId,
        result: kad::GetClosestPeersResult,
        last: bool,
    ) {
        let Some(&peer) = self.peer_lookups.get(&query) else {
            return;
        };
        let found = match result {
            Ok(kad::GetClosestPeersOk { peers, .. })
            | Err(kad::GetClosestPeersError::Timeout { peers, .. }) => {
                peers.into_iter().find(|p| p.peer_id == peer)
            }
        };
        let allow_private = self.allow_private_addrs;
        let addrs: Vec<Multiaddr> = found
            .map(|p| p.addrs)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| dialable(a, allow_private))
            .map(|a| without_peer_id(&a))
            .take(MAX_ADDRS_PER_PEER)
            .collect();
        if addrs.is_empty() && !last {
            return;
        }
        self.peer_lookups.remove(&query);
        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&query) {
            q.finish();
        }
        if self.swarm.is_connected(&peer) {
            self.connected(&peer, Ok(()));
            return;
        }
        if addrs.is_empty() {
            self.connected(&peer, Err("no address found for the peer".into()));
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts)
            && !matches!(e, DialError::DialPeerConditionFalse(_))
        {
            self.connected(&peer, Err(format!("cannot dial: {e}")));
        }
    }

    fn on_identified(&mut self, peer: PeerId, info: identify::Info) {
        let speaks_kad = info.protocols.contains(&KAD_PROTOCOL);
        let protocols = info.protocols.iter().map(ToString::to_string).collect();
        let allow_private = self.allow_private_addrs;
        let connected_from = |ip| self.monitor.connected_from(&peer, ip);
        let metrics_url = match announce::from_agent(
            &info.agent_version,
            allow_private,
            connected_from,
        ) {
            None => None,
            Some(Ok(url)) => {
                self.metrics.metrics_announcement("accepted");
                Some(url)
            }
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "refused the metrics endpoint a peer announced");
                self.metrics.metrics_announcement(e.label());
                None
            }
        };
        self.monitor.on_identified(
            peer,
            protocols,
            info.agent_version,
            metrics_url,
            Instant::now(),
        );
        if !speaks_kad {
            return;
        }
        // Only peers that confirmed our DHT protocol enter the routing table, with plausible
        // addresses, at most MAX_ADDRS_PER_PEER per peer over all identify messages.
        for addr in info.listen_addrs.into_iter().take(MAX_ANNOUNCED_ADDRS) {
            if !dialable(&addr, allow_private) {
                self.metrics.address_dropped("filtered");
                continue;
            }
            let addr = without_peer_id(&addr);
            let outcome = self.address_book.add(peer, addr.clone());
            let kad = &mut self.swarm.behaviour_mut().kad;
            if outcome.added {
                kad.add_address(&peer, addr);
            }
            for (old_peer, old_addr) in outcome.evicted {
                kad.remove_address(&old_peer, &old_addr);
                self.metrics.address_dropped("evicted");
            }
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { source, .. },
            } => {
                // No record type is defined yet, so nothing is stored.
                tracing::debug!(%source, "dropping kademlia record: no record types are accepted");
            }
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => self.on_provider_record(record),
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            } => self.on_providers(id, result, step.last),
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetClosestPeers(result),
                step,
                ..
            } => self.on_peer_lookup(id, result, step.last),
            kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::Bootstrap(Err(e)),
                ..
            } => tracing::debug!(error = ?e, "kademlia bootstrap step failed"),
            kad::Event::RoutingUpdated { peer, old_peer, .. } => {
                tracing::debug!(%peer, "kademlia routing table updated");
                if let Some(old) = old_peer {
                    self.address_book.forget(&old);
                }
            }
            _ => {}
        }
    }

    /// Stores a provider record another peer announced, within [`ProviderLimits`].
    fn on_provider_record(&mut self, mut record: kad::ProviderRecord) {
        // kad already checked that the record names the peer that sent it.
        if record.key.as_ref().len() != CONTENT_KEY_LEN {
            self.metrics.provider_record_refused("bad_key");
            return;
        }
        let allow_private = self.allow_private_addrs;
        record.addresses.retain(|a| dialable(a, allow_private));
        record.addresses.truncate(MAX_ADDRS_PER_PEER);
        let (key, provider) = (record.key.clone(), record.provider);
        let store = self.swarm.behaviour_mut().kad.store_mut();
        match self.remote_providers.admit(key.clone(), provider) {
            Admission::Refuse(reason) => {
                self.metrics.provider_record_refused(reason.label());
            }
            Admission::Store { evict, over_quota } => {
                for (k, p) in &evict {
                    store.remove_provider(k, p);
                }
                if over_quota {
                    self.metrics.provider_record_refused("peer_quota");
                }
                if let Err(e) = store.add_provider(record) {
                    tracing::debug!(error = %e, "provider record not stored");
                    self.remote_providers.remove(&key, &provider);
                }
            }
        }
        self.metrics
            .remote_provider_records
            .set(self.remote_providers.len() as i64);
    }
}

/// Records an identify event in libp2p-metrics with the addresses reduced to what may become
/// a label value: listen addresses of an allowed protocol stack only, and an observed address
/// of another stack replaced by an empty one. A peer cannot add series by announcing new
/// address shapes.
fn record_identify(metrics: &libp2p::metrics::Metrics, event: &identify::Event) {
    match event {
        identify::Event::Received {
            connection_id,
            peer_id,
            info,
        } => {
            let mut info = info.clone();
            info.listen_addrs.retain(|a| metric_stack(a).is_some());
            info.listen_addrs.truncate(MAX_ADDRS_PER_PEER);
            if metric_stack(&info.observed_addr).is_none() {
                info.observed_addr = Multiaddr::empty();
            }
            metrics.record(&identify::Event::Received {
                connection_id: *connection_id,
                peer_id: *peer_id,
                info,
            });
        }
        other => metrics.record(other),
    }
}

/// Sends a service's answer, or, without one (the service did not answer in time), drops the
/// channel, which closes the stream unanswered.
/// The behaviour of a frame protocol.
fn frames(
    swarm: &mut Swarm<Behaviour>,
    protocol: FrameProtocol,
) -> &mut request_response::Behaviour<FrameCodec> {
    let behaviour = swarm.behaviour_mut();
    match protocol {
        FrameProtocol::Market => &mut behaviour.market,
        FrameProtocol::Channel => &mut behaviour.channel,
    }
}

fn respond<C: request_response::Codec + Send + Clone + 'static>(
    behaviour: &mut request_response::Behaviour<C>,
    channel: ResponseChannel<C::Response>,
    response: Option<C::Response>,
    metrics: &P2pMetrics,
    protocol: &'static str,
) {
    match response {
        Some(response) => {
            if behaviour.send_response(channel, response).is_err() {
                tracing::debug!(protocol, "peer went away before the response");
            }
        }
        None => metrics.inbound_refused(protocol, "no_reply"),
    }
}

/// Settles outbound requests (responses and failures go to their waiting reply) and returns
/// an inbound request for routing, with the connection it came on.
fn settle_outbound<Req, Resp>(
    event: request_response::Event<Req, Resp>,
    mut pending: impl FnMut(OutboundRequestId) -> Option<Reply<Resp>>,
    protocol: &'static str,
) -> Option<(PeerId, ConnectionId, Req, ResponseChannel<Resp>)> {
    match event {
        request_response::Event::Message {
            peer,
            connection_id,
            message:
                request_response::Message::Request {
                    request, channel, ..
                },
        } => return Some((peer, connection_id, request, channel)),
        request_response::Event::Message {
            message:
                request_response::Message::Response {
                    request_id,
                    response,
                },
            ..
        } => {
            if let Some(reply) = pending(request_id) {
                let _ = reply.send(Ok(response));
            }
        }
        request_response::Event::OutboundFailure {
            request_id, error, ..
        } => {
            if let Some(reply) = pending(request_id) {
                let _ = reply.send(Err(RequestError::from_outbound(&error)));
            }
        }
        // Malformed requests never get here: the codecs count them.
        request_response::Event::InboundFailure { peer, error, .. } => {
            tracing::debug!(%peer, %error, protocol, "inbound request failed");
        }
        request_response::Event::ResponseSent { .. } => {}
    }
    None
}

/// Hands an inbound request to its service's inbox and returns the future of its answer
/// (bounded by [`INBOUND_REPLY_DEADLINE`]); refuses it at once (`None`) when there is no
/// service or it is busy. Dropping the response channel refuses the request.
fn route_request<Req, Resp: Send + 'static>(
    inbox: Option<&mpsc::Sender<InboundRequest<Req, Resp>>>,
    answers: &FuturesUnordered<BoxFuture<'static, Answer>>,
    metrics: &P2pMetrics,
    protocol: &'static str,
    peer: PeerId,
    request: Req,
) -> Option<impl std::future::Future<Output = Option<Resp>> + Send + 'static> {
    let Some(inbox) = inbox else {
        metrics.inbound_refused(protocol, "busy");
        return None;
    };
    if answers.len() >= MAX_PENDING_ANSWERS {
        metrics.inbound_refused(protocol, "busy");
        return None;
    }
    let (tx, rx) = oneshot::channel();
    let routed = inbox.try_send(InboundRequest {
        peer,
        request,
        reply: tx,
    });
    if routed.is_err() {
        metrics.inbound_refused(protocol, "busy");
        return None;
    }
    Some(async move {
        tokio::time::timeout(INBOUND_REPLY_DEADLINE, rx)
            .await
            .ok()
            .and_then(Result::ok)
    })
}
