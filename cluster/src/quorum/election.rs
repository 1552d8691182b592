//! The election state machine: raft's leader election and nothing else (digest §6.3, §6.4).
//!
//! [`Election`] holds no clock, socket or device. The shell ([`super::QuorumAgent`], or a
//! test) feeds it events with the time they happened — [`Election::tick`] when a receive
//! timed out, [`Election::received`] for each valid message, [`Election::server_status`]
//! with what the node's server reports — and carries out the [`Action`]s it returns, in
//! order: sending messages, persisting events in the slot's quorum block, starting and
//! stopping the server. A `Persist` must be durable before the actions after it are carried
//! out (an `ELECT` event is on disk before the server starts).
//!
//! The rules, in short:
//!
//! * Messages of an older term are ignored. A newer term makes us a follower of that term
//!   with no vote cast, and is persisted (`TERM`).
//! * A follower or candidate whose deadline passes without a heartbeat first asks the others
//!   whether they would vote for it in term + 1 (pre-vote, raft thesis 9.6); nobody changes
//!   term for that. A member grants it unless it leads or heard its leader within the
//!   shortest election timeout. With enough grants (counting its own) it becomes a
//!   candidate: term + 1, votes for itself, persists `TERM`, asks every other slot for its
//!   vote. So a member cut off from the others does not raise its term, and does not make
//!   the leader step down when it comes back. Neither is done while our own server is
//!   still stopping.
//! * A follower votes once per term, for the first candidate that asks; not at all in the
//!   term it starts in (it may have voted in that term before it restarted).
//! * A candidate with enough votes (1 with fewer than 3 slots, else a majority) leads: it
//!   sends a heartbeat at once, persists `ELECT`, and starts the server — asynchronously, and
//!   keeps sending heartbeats every `heartbeat_interval` while the server starts and fences
//!   (seed 001, 2022-03-31).
//! * Once the server of our leadership term reports up (it has fenced every previous
//!   leader), `FENCE` is persisted.
//! * A running server that does not belong to our current leadership is stopped. When a
//!   server we started is down, a leader steps down and resigns, and `STOP` is persisted
//!   with the server's term.

use std::time::{Duration, Instant};

use crate::format::quorum::QuorumEventKind;

use super::message::{MessageType, QuorumMessage};
use super::{QuorumOptions, Role, ServerStatus, SlotSet};

/// What the shell must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` to slot `to`, or to every other configured slot when `None`.
    Send {
        to: Option<usize>,
        msg: QuorumMessage,
    },
    /// Record event `kind` with `term` in our quorum block and make it durable.
    Persist { kind: QuorumEventKind, term: u64 },
    /// Start the server for leadership term `term` (returns at once).
    StartServer { term: u64 },
    /// Stop the server (returns at once; its status reports `Down` once it has stopped).
    StopServer,
}

/// What the quorum blocks said at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ElectionStart {
    /// The greatest term in any quorum block.
    pub term: u64,
    /// Some block shows an elected leader whose server has not stopped.
    pub live_leader: bool,
}

/// The server this member started, until it is seen down.
#[derive(Debug, Clone, Copy)]
struct ServerRun {
    term: u64,
    fence_persisted: bool,
    stop_requested: bool,
}

/// Votes needed to win an election among `slots` configured slots.
pub fn votes_needed(slots: usize) -> usize {
    if slots < 3 {
        1
    } else {
        slots / 2 + 1
    }
}

/// One member's view of the election.
#[derive(Debug, Clone)]
pub struct Election {
    slot: usize,
    slots: SlotSet,
    votes_needed: usize,
    opts: QuorumOptions,
    term: u64,
    role: Role,
    voted_for: Option<usize>,
    votes: SlotSet,
    /// While we ask whether others would vote for us in term + 1: who would (us included).
    pre_votes: Option<SlotSet>,
    leader: Option<usize>,
    last_heartbeat: Option<Instant>,
    /// Follower and candidate: when to start an election.
    deadline: Instant,
    /// Leader: when to send the next heartbeat.
    next_heartbeat: Instant,
    server: Option<ServerRun>,
    shutting_down: bool,
    rng: u64,
    duplicate_votes: u64,
}

impl Election {
    /// A member of `slots` in slot `slot`, starting as a follower. `seed` drives the random
    /// part of election timeouts.
    ///
    /// # Panics
    /// If `slot` is not one of `slots`.
    pub fn new(
        slot: usize,
        slots: SlotSet,
        opts: QuorumOptions,
        start: ElectionStart,
        now: Instant,
        seed: u64,
    ) -> Self {
        assert!(slots.contains(slot), "slot {slot} is not configured");
        let mut e = Self {
            slot,
            slots,
            votes_needed: votes_needed(slots.len()),
            opts,
            term: start.term,
            role: Role::Follower,
            // A member restarted within a term may have voted in it already (votes are not
            // persisted): it abstains until the next term.
            voted_for: Some(slot),
            votes: SlotSet::EMPTY,
            pre_votes: None,
            leader: None,
            last_heartbeat: None,
            deadline: now,
            next_heartbeat: now,
            server: None,
            shutting_down: false,
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            duplicate_votes: 0,
        };
        e.deadline = now
            + if start.live_leader {
                opts.heartbeat_timeout
            } else {
                e.election_timeout()
            };
        e
    }

    pub fn slot(&self) -> usize {
        self.slot
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader of the current term, as far as we know (ourselves when leading).
    pub fn leader(&self) -> Option<usize> {
        self.leader
    }

    /// When the last heartbeat of the current term's leader arrived.
    pub fn last_heartbeat(&self) -> Option<Instant> {
        self.last_heartbeat
    }

    pub fn votes_needed(&self) -> usize {
        self.votes_needed
    }

    /// Votes that arrived twice from one slot: two members may be using that slot.
    pub fn duplicate_votes(&self) -> u64 {
        self.duplicate_votes
    }

    /// The term of the server we started and have not yet seen down.
    pub fn server_term(&self) -> Option<u64> {
        self.server.map(|s| s.term)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// When [`Election::tick`] next has something to do: the next heartbeat for a leader,
    /// the election deadline otherwise.
    pub fn next_wakeup(&self) -> Instant {
        match self.role {
            Role::Leader => self.next_heartbeat,
            _ => self.deadline,
        }
    }

    /// 250 ms + [0, 100) ms with the default options.
    fn election_timeout(&mut self) -> Duration {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let var = self.opts.election_var.as_nanos() as u64;
        let extra = if var == 0 { 0 } else { z % var };
        self.opts.election_min + Duration::from_nanos(extra)
    }

    /// Time has passed to `now` and no message arrived since the last call: send the
    /// leader's heartbeat, or start an election when the deadline has passed. The shell
    /// calls this only after a receive timed out (a backlog of received heartbeats is
    /// processed first, so a slow loop does not start an election by itself) — and, for a
    /// leader, also whenever a heartbeat is due.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut acts = Vec::new();
        if self.shutting_down {
            return acts;
        }
        match self.role {
            Role::Leader => {
                if now >= self.next_heartbeat {
                    acts.push(self.broadcast(MessageType::Heartbeat));
                    self.next_heartbeat = now + self.opts.heartbeat_interval;
                }
            }
            Role::Follower | Role::Candidate => {
                if now >= self.deadline {
                    if self.server.is_some() {
                        // Our previous server is still stopping: no election until it is
                        // down, or a new server of ours could run beside the old one.
                        self.deadline = now + self.election_timeout();
                    } else {
                        self.start_pre_vote(now, &mut acts);
                    }
                }
            }
        }
        self.reconcile_server(&mut acts);
        acts
    }

    /// A valid message arrived at `now`.
    pub fn received(&mut self, msg: QuorumMessage, now: Instant) -> Vec<Action> {
        let mut acts = Vec::new();
        if self.shutting_down || msg.from == self.slot || !self.slots.contains(msg.from) {
            return acts;
        }
        // Pre-vote messages name a term nobody is in yet: they change no term.
        match msg.ty {
            MessageType::PreVote => {
                if msg.term > self.term && self.would_vote(now) {
                    acts.push(Action::Send {
                        to: Some(msg.from),
                        msg: QuorumMessage::new(MessageType::PreVoteGranted, msg.term, self.slot),
                    });
                }
                return acts;
            }
            MessageType::PreVoteGranted => {
                if msg.term == self.term + 1 {
                    if let Some(pre) = self.pre_votes.as_mut() {
                        pre.insert(msg.from);
                        if pre.len() >= self.votes_needed {
                            self.become_candidate(now, &mut acts);
                        }
                    }
                }
                self.reconcile_server(&mut acts);
                return acts;
            }
            _ => {}
        }
        if msg.term < self.term {
            return acts;
        }
        if msg.term > self.term {
            self.adopt_term(msg.term, &mut acts);
            self.deadline = now
                + if msg.ty == MessageType::Heartbeat {
                    self.opts.heartbeat_timeout
                } else {
                    self.election_timeout()
                };
        }
        match msg.ty {
            MessageType::Heartbeat => {
                // Two leaders in one term happen only with fewer than 3 slots (each can
                // elect itself) or two members in one slot: the higher slot yields.
                if self.role != Role::Leader || msg.from < self.slot {
                    self.role = Role::Follower;
                    self.pre_votes = None;
                    self.leader = Some(msg.from);
                    self.last_heartbeat = Some(now);
                    self.deadline = now + self.opts.heartbeat_timeout;
                }
            }
            MessageType::Resignation => {
                if self.role == Role::Follower
                    && (self.leader.is_none() || self.leader == Some(msg.from))
                {
                    self.leader = None;
                    let soon = now + self.election_timeout();
                    self.deadline = self.deadline.min(soon);
                }
            }
            MessageType::RequestVote => {
                if self.role == Role::Follower && self.voted_for.is_none() {
                    self.voted_for = Some(msg.from);
                    acts.push(Action::Send {
                        to: Some(msg.from),
                        msg: QuorumMessage::new(MessageType::Vote, self.term, self.slot),
                    });
                    self.deadline = now + self.election_timeout();
                }
            }
            // Answered above, before the term rules.
            MessageType::PreVote | MessageType::PreVoteGranted => {}
            MessageType::Vote => {
                if self.role == Role::Candidate {
                    if self.votes.contains(msg.from) {
                        self.duplicate_votes += 1;
                    } else {
                        self.votes.insert(msg.from);
                        if self.votes.len() >= self.votes_needed {
                            self.become_leader(now, &mut acts);
                        }
                    }
                }
            }
        }
        self.reconcile_server(&mut acts);
        acts
    }

    /// The node's server reports `status` at `now`. Called every loop iteration; repeated
    /// reports of the same status change nothing.
    pub fn server_status(&mut self, status: ServerStatus, now: Instant) -> Vec<Action> {
        let mut acts = Vec::new();
        let Some(run) = self.server.as_mut() else {
            return acts;
        };
        let down = match status {
            ServerStatus::Down => true,
            ServerStatus::Failed { term } => term == run.term,
            ServerStatus::Starting { .. } => false,
            ServerStatus::Up { term } => {
                if term == run.term
                    && self.role == Role::Leader
                    && self.term == term
                    && !run.fence_persisted
                {
                    run.fence_persisted = true;
                    acts.push(Action::Persist {
                        kind: QuorumEventKind::Fence,
                        term,
                    });
                }
                false
            }
        };
        if down {
            let run = self.server.take().expect("checked above");
            if self.role == Role::Leader && self.term == run.term {
                // Our server died under us: let another member lead, and give it the first
                // chance (a follower gets the election timeout, we wait a heartbeat timeout).
                self.role = Role::Follower;
                self.leader = None;
                acts.push(self.broadcast(MessageType::Resignation));
                self.deadline = now + self.opts.heartbeat_timeout;
            }
            acts.push(Action::Persist {
                kind: QuorumEventKind::Stop,
                term: run.term,
            });
        }
        self.reconcile_server(&mut acts);
        acts
    }

    /// The agent is shutting down: stop the server, resign if leading, and take part in no
    /// more elections. Keep reporting the server's status until it is down (which persists
    /// `STOP`), then carry out [`Election::end`].
    pub fn shutdown(&mut self, _now: Instant) -> Vec<Action> {
        let mut acts = Vec::new();
        self.shutting_down = true;
        if let Some(run) = self.server.as_mut() {
            if !run.stop_requested {
                run.stop_requested = true;
                acts.push(Action::StopServer);
            }
        }
        if self.role == Role::Leader {
            acts.push(self.broadcast(MessageType::Resignation));
        }
        self.role = Role::Follower;
        self.leader = None;
        acts
    }

    /// The last action of a shut down agent: persist `END`.
    pub fn end(&self) -> Action {
        Action::Persist {
            kind: QuorumEventKind::End,
            term: self.term,
        }
    }

    fn broadcast(&self, ty: MessageType) -> Action {
        Action::Send {
            to: None,
            msg: QuorumMessage::new(ty, self.term, self.slot),
        }
    }

    /// Whether we would vote for a candidate now: not while we lead or hear our leader
    /// (within the shortest election timeout: heartbeats come more often than that).
    fn would_vote(&self, now: Instant) -> bool {
        let hears_leader = self.leader.is_some()
            && self
                .last_heartbeat
                .is_some_and(|t| now.saturating_duration_since(t) < self.opts.election_min);
        self.role != Role::Leader && !hears_leader
    }

    /// Our deadline passed: ask the others whether they would vote for us in term + 1
    /// (again, if an earlier round got too few answers).
    fn start_pre_vote(&mut self, now: Instant, acts: &mut Vec<Action>) {
        let mut pre = SlotSet::EMPTY;
        pre.insert(self.slot);
        self.deadline = now + self.election_timeout();
        if pre.len() >= self.votes_needed {
            self.become_candidate(now, acts);
            return;
        }
        self.pre_votes = Some(pre);
        acts.push(Action::Send {
            to: None,
            msg: QuorumMessage::new(MessageType::PreVote, self.term + 1, self.slot),
        });
    }

    fn adopt_term(&mut self, term: u64, acts: &mut Vec<Action>) {
        self.term = term;
        self.role = Role::Follower;
        self.voted_for = None;
        self.votes = SlotSet::EMPTY;
        self.pre_votes = None;
        self.leader = None;
        self.last_heartbeat = None;
        acts.push(Action::Persist {
            kind: QuorumEventKind::Term,
            term,
        });
    }

    fn become_candidate(&mut self, now: Instant, acts: &mut Vec<Action>) {
        let term = self.term + 1;
        self.adopt_term(term, acts);
        self.role = Role::Candidate;
        self.voted_for = Some(self.slot);
        self.votes.insert(self.slot);
        self.deadline = now + self.election_timeout();
        if self.votes.len() >= self.votes_needed {
            self.become_leader(now, acts);
        } else {
            acts.push(self.broadcast(MessageType::RequestVote));
        }
    }

    fn become_leader(&mut self, now: Instant, acts: &mut Vec<Action>) {
        debug_assert!(self.server.is_none(), "candidates have no server running");
        self.role = Role::Leader;
        self.leader = Some(self.slot);
        self.last_heartbeat = None;
        acts.push(self.broadcast(MessageType::Heartbeat));
        self.next_heartbeat = now + self.opts.heartbeat_interval;
        acts.push(Action::Persist {
            kind: QuorumEventKind::Elect,
            term: self.term,
        });
        acts.push(Action::StartServer { term: self.term });
        self.server = Some(ServerRun {
            term: self.term,
            fence_persisted: false,
            stop_requested: false,
        });
    }

    /// Stop a running server that is not ours to run any more (we lost the leadership of
    /// its term).
    fn reconcile_server(&mut self, acts: &mut Vec<Action>) {
        if let Some(run) = self.server.as_mut() {
            let ours = self.role == Role::Leader && self.term == run.term;
            if !ours && !run.stop_requested {
                run.stop_requested = true;
                acts.push(Action::StopServer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn opts() -> QuorumOptions {
        QuorumOptions {
            heartbeat_timeout: Duration::from_secs(3),
            ..QuorumOptions::default()
        }
    }

    fn slots(n: usize) -> SlotSet {
        SlotSet::from_slots(0..n)
    }

    fn member(slot: usize, n: usize, now: Instant) -> Election {
        Election::new(
            slot,
            slots(n),
            opts(),
            ElectionStart::default(),
            now,
            slot as u64,
        )
    }

    fn msg(ty: MessageType, term: u64, from: usize) -> QuorumMessage {
        QuorumMessage::new(ty, term, from)
    }

    fn sends(acts: &[Action]) -> Vec<(Option<usize>, MessageType, u64)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Send { to, msg } => Some((*to, msg.ty, msg.term)),
                _ => None,
            })
            .collect()
    }

    fn persists(acts: &[Action]) -> Vec<(QuorumEventKind, u64)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Persist { kind, term } => Some((*kind, *term)),
                _ => None,
            })
            .collect()
    }

    /// Let `e`'s deadline pass at `t` and grant its pre-vote from the other slots until it
    /// stands for election (a candidate of its term + 1).
    fn stand(e: &mut Election, t: Instant) -> Vec<Action> {
        let mut acts = e.tick(t);
        let term = e.term() + 1;
        let mut from = 0;
        while e.role() == Role::Follower {
            if from != e.slot() {
                acts.extend(e.received(msg(MessageType::PreVoteGranted, term, from), t));
            }
            from += 1;
        }
        acts
    }

    /// Make `e` (of `n` slots) leader of term `e.term() + 1` at `now` by granting votes.
    fn elect(e: &mut Election, now: Instant) -> Vec<Action> {
        let t = now + Duration::from_secs(1);
        let mut acts = stand(e, t);
        let term = e.term();
        let mut from = 0;
        while e.role() != Role::Leader {
            if from != e.slot() {
                acts.extend(e.received(msg(MessageType::Vote, term, from), t));
            }
            from += 1;
        }
        acts
    }

    #[test]
    fn votes_needed_is_one_below_three_slots_else_a_majority() {
        let got: Vec<usize> = (1..=15).map(votes_needed).collect();
        assert_eq!(got, vec![1, 1, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8]);
    }

    #[test]
    fn single_slot_elects_itself() {
        let t0 = Instant::now();
        let mut e = member(0, 1, t0);
        assert!(
            e.tick(t0 + 200 * MS).is_empty(),
            "before the election timeout"
        );
        let acts = e.tick(t0 + 400 * MS);
        assert_eq!(e.role(), Role::Leader);
        assert_eq!(e.term(), 1);
        assert_eq!(
            acts,
            vec![
                Action::Persist {
                    kind: QuorumEventKind::Term,
                    term: 1
                },
                Action::Send {
                    to: None,
                    msg: msg(MessageType::Heartbeat, 1, 0)
                },
                Action::Persist {
                    kind: QuorumEventKind::Elect,
                    term: 1
                },
                Action::StartServer { term: 1 },
            ]
        );
    }

    #[test]
    fn two_slots_each_elect_themselves_and_the_higher_slot_yields_in_a_shared_term() {
        let t0 = Instant::now();
        let mut a = member(0, 2, t0);
        let mut b = member(1, 2, t0);
        a.tick(t0 + 400 * MS);
        b.tick(t0 + 400 * MS);
        assert_eq!((a.role(), b.role()), (Role::Leader, Role::Leader));
        let t = t0 + 450 * MS;
        assert!(a.received(msg(MessageType::Heartbeat, 1, 1), t).is_empty());
        let acts = b.received(msg(MessageType::Heartbeat, 1, 0), t);
        assert_eq!(acts, vec![Action::StopServer]);
        assert_eq!((a.role(), b.role()), (Role::Leader, Role::Follower));
        assert_eq!(b.leader(), Some(0));
    }

    #[test]
    fn election_timeouts_are_random_in_range_and_deterministic_per_seed() {
        let t0 = Instant::now();
        let mut seen = BTreeSet::new();
        for seed in 0..50 {
            let e = Election::new(0, slots(3), opts(), ElectionStart::default(), t0, seed);
            let d = e.next_wakeup() - t0;
            assert!(d >= 250 * MS && d < 350 * MS, "{d:?}");
            let again = Election::new(0, slots(3), opts(), ElectionStart::default(), t0, seed);
            assert_eq!(again.next_wakeup(), e.next_wakeup());
            seen.insert(d);
        }
        assert!(seen.len() > 10);
    }

    #[test]
    fn startup_with_a_live_leader_in_the_blocks_waits_the_heartbeat_timeout() {
        let t0 = Instant::now();
        let start = ElectionStart {
            term: 7,
            live_leader: true,
        };
        let mut e = Election::new(1, slots(3), opts(), start, t0, 1);
        assert_eq!(e.term(), 7);
        assert!(e.tick(t0 + Duration::from_millis(2900)).is_empty());
        let t = t0 + Duration::from_millis(3000);
        let acts = e.tick(t);
        assert_eq!(sends(&acts), vec![(None, MessageType::PreVote, 8)]);
        assert!(persists(&acts).is_empty(), "no term changes for a pre-vote");
        let acts = e.received(msg(MessageType::PreVoteGranted, 8, 0), t);
        assert_eq!(e.role(), Role::Candidate);
        assert_eq!(
            persists(&acts),
            vec![(QuorumEventKind::Term, 8)],
            "the term continues from the greatest term in the blocks"
        );
        assert_eq!(sends(&acts), vec![(None, MessageType::RequestVote, 8)]);
    }

    #[test]
    fn heartbeats_keep_followers_from_starting_elections() {
        let t0 = Instant::now();
        let mut f = member(1, 3, t0);
        f.received(msg(MessageType::Heartbeat, 4, 0), t0);
        assert_eq!(f.leader(), Some(0));
        // 10 s of heartbeats every 100 ms, ticks every 10 ms in between.
        for i in 1..=1000u32 {
            let now = t0 + i * 10 * MS;
            if i % 10 == 0 {
                assert!(f
                    .received(msg(MessageType::Heartbeat, 4, 0), now)
                    .is_empty());
            }
            assert!(f.tick(now).is_empty(), "no election at {i}");
        }
        assert_eq!((f.role(), f.term()), (Role::Follower, 4));
        // Heartbeats stop: the follower waits the heartbeat timeout, then stands.
        let last = t0 + 10_000 * MS;
        assert!(f.tick(last + 2_900 * MS).is_empty());
        let acts = f.tick(last + 3_000 * MS);
        assert_eq!(sends(&acts), vec![(None, MessageType::PreVote, 5)]);
        assert_eq!(f.term(), 4);
        let acts = f.received(msg(MessageType::PreVoteGranted, 5, 2), last + 3_000 * MS);
        assert_eq!(sends(&acts), vec![(None, MessageType::RequestVote, 5)]);
    }

    #[test]
    fn a_slow_loop_that_received_a_heartbeat_does_not_start_an_election() {
        // The shell processes received messages before it ticks: a heartbeat that waited in
        // the socket while the loop was stalled past the deadline still counts.
        let t0 = Instant::now();
        let mut f = member(2, 3, t0);
        f.received(msg(MessageType::Heartbeat, 1, 0), t0);
        let late = t0 + 5 * opts().heartbeat_timeout;
        f.received(msg(MessageType::Heartbeat, 1, 0), late);
        assert!(f.tick(late).is_empty());
        assert_eq!(f.role(), Role::Follower);
    }

    #[test]
    fn a_follower_votes_once_per_term() {
        let t0 = Instant::now();
        let mut f = member(2, 3, t0);
        let acts = f.received(msg(MessageType::RequestVote, 1, 0), t0);
        assert_eq!(persists(&acts), vec![(QuorumEventKind::Term, 1)]);
        assert_eq!(sends(&acts), vec![(Some(0), MessageType::Vote, 1)]);
        assert!(f
            .received(msg(MessageType::RequestVote, 1, 1), t0)
            .is_empty());
        assert!(f
            .received(msg(MessageType::RequestVote, 1, 0), t0)
            .is_empty());
        let acts = f.received(msg(MessageType::RequestVote, 2, 1), t0);
        assert_eq!(sends(&acts), vec![(Some(1), MessageType::Vote, 2)]);
    }

    #[test]
    fn a_restarted_member_does_not_vote_in_the_term_it_starts_in() {
        let t0 = Instant::now();
        let start = ElectionStart {
            term: 4,
            live_leader: false,
        };
        let mut f = Election::new(2, slots(3), opts(), start, t0, 2);
        assert!(f
            .received(msg(MessageType::RequestVote, 4, 0), t0)
            .is_empty());
        let acts = f.received(msg(MessageType::RequestVote, 5, 0), t0);
        assert_eq!(sends(&acts), vec![(Some(0), MessageType::Vote, 5)]);
    }

    #[test]
    fn messages_of_older_terms_and_from_ourselves_are_ignored() {
        let t0 = Instant::now();
        let mut f = member(1, 3, t0);
        f.received(msg(MessageType::Heartbeat, 5, 0), t0);
        for ty in [
            MessageType::Heartbeat,
            MessageType::RequestVote,
            MessageType::Resignation,
            MessageType::Vote,
        ] {
            assert!(f.received(msg(ty, 4, 2), t0).is_empty());
            assert!(f.received(msg(ty, 9, 1), t0).is_empty());
        }
        assert_eq!((f.term(), f.leader()), (5, Some(0)));
    }

    #[test]
    fn duplicated_votes_count_once() {
        let t0 = Instant::now();
        let mut c = member(0, 5, t0);
        let t = t0 + 400 * MS;
        stand(&mut c, t);
        assert_eq!(c.role(), Role::Candidate);
        c.received(msg(MessageType::Vote, 1, 3), t);
        c.received(msg(MessageType::Vote, 1, 3), t);
        assert_eq!(c.role(), Role::Candidate, "3 votes needed, 2 distinct");
        assert_eq!(c.duplicate_votes(), 1);
        let acts = c.received(msg(MessageType::Vote, 1, 4), t);
        assert_eq!(c.role(), Role::Leader);
        assert_eq!(
            persists(&acts),
            vec![(QuorumEventKind::Elect, 1)],
            "elected once"
        );
        assert!(c.received(msg(MessageType::Vote, 1, 2), t).is_empty());
    }

    #[test]
    fn three_slots_scripted_split_vote_then_one_leader() {
        let t0 = Instant::now();
        let mut n: Vec<Election> = (0..3).map(|s| member(s, 3, t0)).collect();
        let t = t0 + 400 * MS;
        // Slots 0 and 1 time out together: slot 2 hears no leader and grants both pre-votes,
        // so both stand in term 1.
        for c in 0..2 {
            let ask = n[c].tick(t);
            assert_eq!(sends(&ask), vec![(None, MessageType::PreVote, 1)]);
            let grant = n[2].received(msg(MessageType::PreVote, 1, c), t);
            assert_eq!(
                sends(&grant),
                vec![(Some(c), MessageType::PreVoteGranted, 1)]
            );
            n[c].received(msg(MessageType::PreVoteGranted, 1, 2), t);
            assert_eq!(n[c].role(), Role::Candidate);
        }
        // Slot 2 hears 1 first; 0's request arrives twice and late; 1's vote request to 0
        // is lost.
        let v = n[2].received(msg(MessageType::RequestVote, 1, 1), t);
        assert_eq!(sends(&v), vec![(Some(1), MessageType::Vote, 1)]);
        assert!(n[2]
            .received(msg(MessageType::RequestVote, 1, 0), t)
            .is_empty());
        assert!(n[2]
            .received(msg(MessageType::RequestVote, 1, 0), t)
            .is_empty());
        // 0 and 1 refuse each other (both voted for themselves).
        assert!(n[1]
            .received(msg(MessageType::RequestVote, 1, 0), t)
            .is_empty());
        let acts = n[1].received(msg(MessageType::Vote, 1, 2), t);
        assert_eq!(n[1].role(), Role::Leader);
        assert_eq!(persists(&acts), vec![(QuorumEventKind::Elect, 1)]);
        // The duplicated vote arrives again: nothing more.
        assert!(n[1].received(msg(MessageType::Vote, 1, 2), t).is_empty());
        // 1's heartbeat makes candidate 0 a follower of the same term.
        assert!(n[0]
            .received(msg(MessageType::Heartbeat, 1, 1), t)
            .is_empty());
        assert_eq!(
            (n[0].role(), n[0].leader(), n[0].term()),
            (Role::Follower, Some(1), 1)
        );
        assert_eq!(n[2].leader(), None, "no heartbeat yet");
        n[2].received(msg(MessageType::Heartbeat, 1, 1), t);
        assert_eq!(n[2].leader(), Some(1));
    }

    #[test]
    fn seed001_20220331_leader_keeps_heartbeating_while_its_server_starts() {
        // Server start (fencing, possibly long) is asynchronous: while it reports Starting
        // the leader sends a heartbeat every interval, so followers never time out.
        let t0 = Instant::now();
        let mut l = member(0, 3, t0);
        let mut f = member(1, 3, t0);
        let acts = elect(&mut l, t0);
        assert!(acts.contains(&Action::StartServer { term: 1 }));
        let elected = t0 + Duration::from_secs(1);
        f.received(msg(MessageType::Heartbeat, 1, 0), elected);
        let mut heartbeats = 0;
        // The server takes 20 s (far over the 3 s heartbeat timeout) to fence and start.
        for i in 1..=2000u32 {
            let now = elected + i * 10 * MS;
            assert!(l
                .server_status(ServerStatus::Starting { term: 1 }, now)
                .is_empty());
            for a in l.tick(now) {
                if let Action::Send { to: None, msg } = a {
                    assert_eq!((msg.ty, msg.term), (MessageType::Heartbeat, 1));
                    heartbeats += 1;
                    assert!(f.received(msg, now).is_empty());
                } else {
                    panic!("unexpected {a:?}");
                }
            }
            assert!(f.tick(now).is_empty(), "follower stood at {i}");
        }
        assert_eq!(heartbeats, 200);
        assert_eq!(
            (l.role(), f.role(), f.term()),
            (Role::Leader, Role::Follower, 1)
        );
    }

    #[test]
    fn fence_is_persisted_only_once_the_server_reports_up() {
        let t0 = Instant::now();
        let mut l = member(0, 3, t0);
        let acts = elect(&mut l, t0);
        assert_eq!(
            persists(&acts),
            vec![(QuorumEventKind::Term, 1), (QuorumEventKind::Elect, 1)]
        );
        let t = t0 + Duration::from_secs(2);
        assert!(l
            .server_status(ServerStatus::Starting { term: 1 }, t)
            .is_empty());
        assert!(l.server_status(ServerStatus::Up { term: 0 }, t).is_empty());
        let acts = l.server_status(ServerStatus::Up { term: 1 }, t);
        assert_eq!(
            acts,
            vec![Action::Persist {
                kind: QuorumEventKind::Fence,
                term: 1
            }]
        );
        assert!(
            l.server_status(ServerStatus::Up { term: 1 }, t).is_empty(),
            "once"
        );
    }

    #[test]
    fn higher_term_makes_the_leader_step_down_and_stop_its_server() {
        let t0 = Instant::now();
        let mut l = member(0, 3, t0);
        elect(&mut l, t0);
        let t = t0 + Duration::from_secs(2);
        l.server_status(ServerStatus::Up { term: 1 }, t);
        let acts = l.received(msg(MessageType::RequestVote, 3, 2), t);
        assert_eq!(
            acts,
            vec![
                Action::Persist {
                    kind: QuorumEventKind::Term,
                    term: 3
                },
                Action::Send {
                    to: Some(2),
                    msg: msg(MessageType::Vote, 3, 0)
                },
                Action::StopServer,
            ]
        );
        assert_eq!((l.role(), l.term()), (Role::Follower, 3));
        // Still stopping: no STOP yet, and no election of our own meanwhile.
        assert!(l.server_status(ServerStatus::Up { term: 1 }, t).is_empty());
        let later = t + Duration::from_secs(10);
        assert!(l.tick(later).is_empty());
        assert_eq!(l.role(), Role::Follower);
        // Down: STOP with the server's term (not the current one); no resignation (we no
        // longer lead).
        let acts = l.server_status(ServerStatus::Down, later);
        assert_eq!(
            acts,
            vec![Action::Persist {
                kind: QuorumEventKind::Stop,
                term: 1
            }]
        );
        assert_eq!(l.server_term(), None);
    }

    #[test]
    fn server_going_down_makes_the_leader_resign_and_persist_stop() {
        let t0 = Instant::now();
        let mut l = member(1, 3, t0);
        elect(&mut l, t0);
        let t = t0 + Duration::from_secs(2);
        let acts = l.server_status(ServerStatus::Failed { term: 1 }, t);
        assert_eq!(
            acts,
            vec![
                Action::Send {
                    to: None,
                    msg: msg(MessageType::Resignation, 1, 1)
                },
                Action::Persist {
                    kind: QuorumEventKind::Stop,
                    term: 1
                },
            ]
        );
        assert_eq!(l.role(), Role::Follower);
        // A follower hearing the resignation stands soon, well before the heartbeat
        // timeout.
        let mut f = member(0, 3, t0);
        f.received(msg(MessageType::Heartbeat, 1, 1), t);
        f.received(msg(MessageType::Resignation, 1, 1), t);
        assert_eq!(f.leader(), None);
        assert!(f.next_wakeup() < t + 350 * MS);
        let acts = f.tick(t + 350 * MS);
        assert_eq!(sends(&acts), vec![(None, MessageType::PreVote, 2)]);
        // The resigned leader hears no leader either: it would vote.
        let acts = l.received(msg(MessageType::PreVote, 2, 0), t + 350 * MS);
        assert_eq!(
            sends(&acts),
            vec![(Some(0), MessageType::PreVoteGranted, 2)]
        );
    }

    #[test]
    fn shutdown_stops_the_server_resigns_then_persists_stop_and_end() {
        let t0 = Instant::now();
        let mut l = member(0, 3, t0);
        elect(&mut l, t0);
        let t = t0 + Duration::from_secs(2);
        l.server_status(ServerStatus::Up { term: 1 }, t);
        let acts = l.shutdown(t);
        assert_eq!(
            acts,
            vec![
                Action::StopServer,
                Action::Send {
                    to: None,
                    msg: msg(MessageType::Resignation, 1, 0)
                },
            ]
        );
        assert!(l.tick(t + Duration::from_secs(60)).is_empty());
        assert!(l
            .received(msg(MessageType::RequestVote, 9, 1), t)
            .is_empty());
        let acts = l.server_status(ServerStatus::Down, t);
        assert_eq!(
            acts,
            vec![Action::Persist {
                kind: QuorumEventKind::Stop,
                term: 1
            }]
        );
        assert_eq!(
            l.end(),
            Action::Persist {
                kind: QuorumEventKind::End,
                term: 1
            }
        );
    }

    // ---- a simulated network of members ----

    struct SimNode {
        el: Election,
        server: ServerStatus,
        up_at: Option<Instant>,
        cut: bool,
    }

    struct Sim {
        nodes: Vec<SimNode>,
        now: Instant,
        net: Vec<(Instant, usize, QuorumMessage)>,
        rng: u64,
        drop_per_mille: u64,
        dup_per_mille: u64,
        max_delay_ms: u64,
        server_delay: Duration,
        leaders: BTreeMap<u64, BTreeSet<usize>>,
        fences: BTreeMap<u64, BTreeSet<usize>>,
    }

    impl Sim {
        fn new(n: usize, seed: u64) -> Self {
            let now = Instant::now();
            let sim_opts = QuorumOptions {
                heartbeat_timeout: Duration::from_millis(1000),
                ..QuorumOptions::default()
            };
            Self {
                nodes: (0..n)
                    .map(|s| SimNode {
                        el: Election::new(
                            s,
                            slots(n),
                            sim_opts,
                            ElectionStart::default(),
                            now,
                            seed * 31 + s as u64,
                        ),
                        server: ServerStatus::Down,
                        up_at: None,
                        cut: false,
                    })
                    .collect(),
                now,
                net: Vec::new(),
                rng: seed,
                drop_per_mille: 0,
                dup_per_mille: 0,
                max_delay_ms: 5,
                server_delay: Duration::from_millis(500),
                leaders: BTreeMap::new(),
                fences: BTreeMap::new(),
            }
        }

        fn rand(&mut self, n: u64) -> u64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng % n.max(1)
        }

        fn apply(&mut self, i: usize, acts: Vec<Action>) {
            for a in acts {
                match a {
                    Action::Send { to, msg } => {
                        let targets: Vec<usize> = match to {
                            Some(t) => vec![t],
                            None => (0..self.nodes.len()).filter(|&t| t != i).collect(),
                        };
                        for t in targets {
                            if self.nodes[i].cut || self.nodes[t].cut {
                                continue;
                            }
                            if self.rand(1000) < self.drop_per_mille {
                                continue;
                            }
                            let copies = if self.rand(1000) < self.dup_per_mille {
                                2
                            } else {
                                1
                            };
                            for _ in 0..copies {
                                let at = self.now
                                    + Duration::from_millis(self.rand(self.max_delay_ms + 1));
                                self.net.push((at, t, msg));
                            }
                        }
                    }
                    Action::Persist { kind, term } => match kind {
                        QuorumEventKind::Elect => {
                            self.leaders.entry(term).or_default().insert(i);
                        }
                        QuorumEventKind::Fence => {
                            self.fences.entry(term).or_default().insert(i);
                        }
                        _ => {}
                    },
                    Action::StartServer { term } => {
                        self.nodes[i].server = ServerStatus::Starting { term };
                        self.nodes[i].up_at = Some(self.now + self.server_delay);
                    }
                    Action::StopServer => {
                        self.nodes[i].server = ServerStatus::Down;
                        self.nodes[i].up_at = None;
                    }
                }
            }
        }

        fn step(&mut self, dt: Duration) {
            self.now += dt;
            let now = self.now;
            let mut due: Vec<_> = Vec::new();
            self.net.retain(|m| {
                if m.0 <= now {
                    due.push(*m);
                    false
                } else {
                    true
                }
            });
            // Deliver in a random order (reordering beyond the random delays).
            while !due.is_empty() {
                let k = self.rand(due.len() as u64) as usize;
                let (_, to, m) = due.swap_remove(k);
                let acts = self.nodes[to].el.received(m, now);
                self.apply(to, acts);
            }
            for i in 0..self.nodes.len() {
                if let (Some(at), ServerStatus::Starting { term }) =
                    (self.nodes[i].up_at, self.nodes[i].server)
                {
                    if at <= now {
                        self.nodes[i].server = ServerStatus::Up { term };
                    }
                }
                let st = self.nodes[i].server;
                let acts = self.nodes[i].el.server_status(st, now);
                self.apply(i, acts);
                let acts = self.nodes[i].el.tick(now);
                self.apply(i, acts);
            }
        }

        fn run(&mut self, d: Duration) {
            let end = self.now + d;
            while self.now < end {
                self.step(10 * MS);
                self.check();
            }
        }

        /// At most one leader elected per term, and at most one server up at a time among
        /// members that think they lead.
        fn check(&self) {
            for (term, who) in &self.leaders {
                assert!(who.len() <= 1, "term {term} elected {who:?}");
            }
        }

        fn sole_leader(&self) -> Option<(usize, u64)> {
            let leaders: Vec<_> = self
                .nodes
                .iter()
                .filter(|n| n.el.role() == Role::Leader)
                .map(|n| (n.el.slot(), n.el.term()))
                .collect();
            (leaders.len() == 1).then(|| leaders[0])
        }
    }

    #[test]
    fn three_slots_elect_exactly_one_leader_per_term_despite_lost_duplicated_and_reordered_messages(
    ) {
        for seed in 1..=150u64 {
            let mut sim = Sim::new(3, seed);
            sim.drop_per_mille = 300;
            sim.dup_per_mille = 300;
            sim.max_delay_ms = 150;
            sim.run(Duration::from_secs(8));
            // Then a healthy network: one leader emerges, everyone follows it, its server
            // comes up and FENCE is persisted in its term.
            sim.drop_per_mille = 0;
            sim.dup_per_mille = 0;
            sim.max_delay_ms = 5;
            sim.run(Duration::from_secs(5));
            let (leader, term) = sim
                .sole_leader()
                .unwrap_or_else(|| panic!("seed {seed}: no sole leader"));
            for n in &sim.nodes {
                assert_eq!(n.el.term(), term, "seed {seed}");
                if n.el.slot() != leader {
                    assert_eq!(n.el.leader(), Some(leader), "seed {seed}");
                    assert_eq!(
                        n.server,
                        ServerStatus::Down,
                        "seed {seed}: follower's server runs"
                    );
                }
            }
            assert_eq!(
                sim.fences.get(&term),
                Some(&BTreeSet::from([leader])),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn five_slots_elect_one_leader_per_term_with_heavy_loss() {
        for seed in 1..=40u64 {
            let mut sim = Sim::new(5, seed);
            sim.drop_per_mille = 500;
            sim.dup_per_mille = 200;
            sim.max_delay_ms = 300;
            sim.run(Duration::from_secs(10));
            sim.drop_per_mille = 0;
            sim.dup_per_mille = 0;
            sim.max_delay_ms = 5;
            sim.run(Duration::from_secs(5));
            assert!(sim.sole_leader().is_some(), "seed {seed}");
        }
    }

    /// Pre-vote (raft thesis 9.6): a member cut off from the others does not raise its term
    /// while it cannot win (the others still hear their leader and refuse it), so when it
    /// comes back it follows the leader, which keeps its term and its server.
    #[test]
    fn a_follower_cut_off_for_many_election_timeouts_rejoins_without_disturbing_the_leader() {
        for seed in 1..=20u64 {
            let mut sim = Sim::new(3, seed);
            sim.run(Duration::from_secs(3));
            let (leader, term) = sim.sole_leader().expect("leader");
            let cut = (leader + 1) % 3;
            sim.nodes[cut].cut = true;
            sim.run(Duration::from_secs(5));
            assert_eq!(sim.nodes[cut].el.term(), term, "seed {seed}: term raised");
            sim.nodes[cut].cut = false;
            sim.run(Duration::from_secs(2));
            assert_eq!(sim.sole_leader(), Some((leader, term)), "seed {seed}");
            assert_eq!(sim.nodes[cut].el.leader(), Some(leader), "seed {seed}");
            assert!(
                matches!(sim.nodes[leader].server, ServerStatus::Up { term: t } if t == term),
                "seed {seed}: the leader's server was stopped"
            );
        }
    }

    #[test]
    fn an_isolated_leader_is_replaced_with_a_higher_term_and_steps_down_on_return() {
        let mut sim = Sim::new(3, 7);
        sim.run(Duration::from_secs(3));
        let (old, term) = sim.sole_leader().expect("leader");
        sim.nodes[old].cut = true;
        sim.run(Duration::from_secs(3));
        let others: Vec<_> = sim
            .nodes
            .iter()
            .filter(|n| n.el.slot() != old && n.el.role() == Role::Leader)
            .map(|n| (n.el.slot(), n.el.term()))
            .collect();
        assert_eq!(others.len(), 1);
        assert!(others[0].1 > term);
        // The isolated one still believes it leads; reconnected, it hears the higher term,
        // steps down and stops its server.
        assert_eq!(sim.nodes[old].el.role(), Role::Leader);
        sim.nodes[old].cut = false;
        sim.run(Duration::from_secs(1));
        assert_eq!(sim.nodes[old].el.role(), Role::Follower);
        assert_eq!(sim.nodes[old].server, ServerStatus::Down);
        assert_eq!(sim.sole_leader(), Some(others[0]));
    }
}
