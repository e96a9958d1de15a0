//! Requests from peers (opens, updates, closes) and dispute evidence from the disputes topic.

use super::*;

impl PaymentsActor {
    pub(super) fn on_request(&mut self, request: InboundRequest<Vec<u8>, Vec<u8>>) {
        let InboundRequest {
            peer,
            request,
            reply,
        } = request;
        if reply.is_closed() {
            // The event loop gave up on it (counted there as `no_reply`); the sender saw
            // it fail, so it changes nothing here either.
            tracing::debug!(%peer, "channel request skipped: its answer is no longer awaited");
            return;
        }
        let (label, result) = match Request::decode(&request) {
            Err(e) => ("frame", Err((e, 0))),
            Ok(r) => {
                let label = r.label();
                (label, self.handle(peer, r))
            }
        };
        let bytes = match result {
            Ok((response, highest)) => response.encode(highest),
            Err((e, highest)) => {
                self.metrics.refused(label, e.label());
                tracing::debug!(%peer, message = label, reason = e.label(), "refused channel request");
                Response::Refused(e.label().to_owned()).encode(highest)
            }
        };
        // Answered only once whatever it changed is durable.
        self.after.push(After::Respond(reply, bytes));
    }

    pub(super) fn handle(
        &mut self,
        peer: PeerId,
        request: Request,
    ) -> Result<(Response, u64), (ChannelError, u64)> {
        let now = now_ms();
        match request {
            Request::Open(p) => {
                let id = p.state.channel_id;
                if p.channel != id {
                    return Err((ChannelError::WrongChannel, 0));
                }
                if let Some(e) = self.channels.get(&id) {
                    // The opener restarted and re-sent state 0: the same answer again.
                    if e.channel.latest.bytes == p.bytes && e.channel.peer() == peer {
                        let sig = e.channel.latest.sig(e.channel.local).to_vec();
                        return Ok((Response::Countersig(sig), e.channel.highest_signed));
                    }
                    return Err((ChannelError::DuplicateChannel, 0));
                }
                if self.known.contains(&id) {
                    // Settled long ago and out of memory: an id is never opened twice.
                    return Err((ChannelError::DuplicateChannel, 0));
                }
                // Channels peers open have their own quota, apart from ours.
                let theirs: Vec<&Entry> = self
                    .unsettled()
                    .filter(|e| e.channel.local == Side::B)
                    .collect();
                if theirs.len() >= self.config.max_channels
                    || theirs.iter().filter(|e| e.channel.peer() == peer).count()
                        >= self.config.max_channels_per_peer
                {
                    return Err((ChannelError::TooManyChannels, 0));
                }
                let max_deposit = self
                    .config
                    .max_counterparty_deposit
                    .min(self.wallet.available);
                let (channel, sig) = Channel::accept_open(&self.key, peer, &p, max_deposit, now)
                    .map_err(|e| (e, 0))?;
                self.wallet.available -= channel.latest.state.deposit_b;
                self.wallet_dirty = true;
                self.known.insert(id);
                self.channels.insert(id, Entry::new(channel));
                self.metrics.channel("opened", false);
                self.touch(id);
                Ok((Response::Countersig(sig), 0))
            }
            Request::Update(p) => {
                let id = p.channel;
                let e = self
                    .channels
                    .get_mut(&id)
                    .ok_or((ChannelError::UnknownChannel, 0))?;
                let highest = e.channel.highest_signed;
                let prev = e.channel.latest.state.clone();
                match e.channel.receive(&self.key, peer, &p, now) {
                    Ok(Received::Repeat(sig)) => Ok((Response::Countersig(sig), highest)),
                    Ok(Received::New { sig, op }) => {
                        e.last_heard = Instant::now();
                        e.last_change = e.last_heard;
                        let highest = e.channel.highest_signed;
                        self.on_applied(id, &op, false, 0.0, &prev);
                        self.touch(id);
                        Ok((Response::Countersig(sig), highest))
                    }
                    Err(err) => Err((err, e.channel.highest_signed.max(highest))),
                }
            }
            Request::Close(close) => {
                let id = close.state.state.channel_id;
                let e = self
                    .channels
                    .get_mut(&id)
                    .ok_or((ChannelError::UnknownChannel, 0))?;
                let was_settled = e.channel.is_settled();
                let answer = e
                    .channel
                    .on_close(peer, &close, now)
                    .map_err(|err| (err, 0))?;
                let highest = e.channel.highest_signed;
                if !was_settled {
                    e.close_requested = Some(Instant::now());
                    self.metrics.channel("closing", false);
                }
                match answer {
                    CloseAnswer::Accepted => {
                        if !was_settled {
                            self.settle(id, false);
                        }
                        Ok((Response::CloseAccepted, highest))
                    }
                    CloseAnswer::Disputed(higher) => {
                        if !was_settled {
                            tracing::warn!(channel = %id, %peer, "stale unilateral close: disputing with our latest state");
                            self.metrics.dispute("opened");
                            self.metrics.dispute("resolved");
                            self.settle(id, false);
                            // Cheating only if our state is above all the closer admitted to
                            // have signed: a closer whose proposal we countersigned but whose
                            // answer was lost disclosed it, and is not to blame.
                            if higher.state.number > close.admitted() {
                                let evidence = Evidence {
                                    close: *close,
                                    higher: (*higher).clone(),
                                };
                                self.convicted.put((id, peer), ());
                                self.after.push(After::Publish(evidence.encode()));
                                self.after.push(After::Convict(peer));
                            }
                        }
                        Ok((Response::Dispute(higher), highest))
                    }
                }
            }
        }
    }

    pub(super) fn on_gossip(&mut self, message: GossipMessage) {
        // Evidence already judged is dropped before its signatures are checked.
        let judged = Evidence::peek(&message.data)
            .and_then(|(channel, closer)| Some((channel, PeerId::from_bytes(&closer).ok()?)))
            .is_some_and(|key| self.convicted.contains(&key));
        if judged {
            let _ = message.verdict.send(Verdict::Ignore);
            return;
        }
        let verdict = match Evidence::open(&message.data) {
            Ok((evidence, cheater)) => {
                let key = (evidence.higher.state.channel_id, cheater);
                if self.convicted.put(key, ()).is_some() {
                    Verdict::Ignore
                } else {
                    tracing::warn!(%cheater, channel = %key.0, "verified dispute evidence: the closer used a stale state");
                    self.metrics.dispute("convicted");
                    self.after.push(After::Convict(cheater));
                    Verdict::Accept
                }
            }
            Err(e) => {
                self.metrics.refused("evidence", e.label());
                if e.is_fault() {
                    Verdict::Reject
                } else {
                    Verdict::Ignore
                }
            }
        };
        let _ = message.verdict.send(verdict);
    }
}
