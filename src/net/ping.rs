//! Keepalive: `gossip.ping` in both directions, and an idle limit, so a
//! peer that vanished without closing (power cut, lost Wi-Fi) is noticed in
//! about a minute even when neither side has anything to send.
//!
//! `gossip.ping` is a duplex stream of bare numbers (milliseconds since the
//! epoch). JS peers run pull-ping on it: a side that receives a number it
//! was not waiting for answers at once, and initiates again on its own
//! timer. So we answer only numbers we did not ask for, and never answer an
//! answer: otherwise the two sides would volley without end.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;

use super::muxrpc::Frame;
use crate::clock::now_ms;

/// How often we ping a peer.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// A peer silent this long is gone: three pings went unanswered. A JS peer
/// drops idle connections after 600 s; ours ping well within that.
pub const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Ping streams a peer may open to us.
const MAX_SERVED: usize = 16;
/// Unanswered probes kept track of.
const MAX_PROBES: usize = 8;

/// The keepalive state of one connection.
pub struct Keepalive {
    /// Our ping stream, once open.
    ours: Option<i32>,
    /// The peer refused `gossip.ping`: probe with `whoami` instead (any
    /// answer, even an error, shows the peer is there).
    refused: bool,
    /// We sent a number and wait for its answer.
    awaiting: bool,
    last_sent: Option<Instant>,
    last_heard: Instant,
    /// Our `whoami` probes not yet answered.
    probes: HashSet<i32>,
    /// The peer's ping streams.
    served: HashSet<i32>,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive::new()
    }
}

impl Keepalive {
    /// A connection that has just been heard from.
    pub fn new() -> Keepalive {
        Keepalive {
            ours: None,
            refused: false,
            awaiting: false,
            last_sent: None,
            last_heard: Instant::now(),
            probes: HashSet::new(),
            served: HashSet::new(),
        }
    }

    /// Records that the peer sent something.
    pub fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    /// How long the peer has been silent, when that is over the limit.
    pub fn silent_for(&self) -> Option<Duration> {
        let silent = self.last_heard.elapsed();
        (silent > IDLE_LIMIT).then_some(silent)
    }

    /// What to send now, if anything: our ping stream's opening, a ping, or
    /// a probe. `next_req` hands out our request numbers.
    pub fn tick(&mut self, next_req: &mut i32) -> Vec<Frame> {
        let due = self
            .last_sent
            .is_none_or(|sent| sent.elapsed() >= PING_INTERVAL);
        if !due {
            return Vec::new();
        }
        self.last_sent = Some(Instant::now());
        let mut frames = Vec::new();
        if self.refused {
            if self.probes.len() < MAX_PROBES {
                let req = take(next_req);
                self.probes.insert(req);
                frames.push(Frame::request(req, &["whoami"], "async", json!([])));
            }
            return frames;
        }
        let req = match self.ours {
            Some(req) => req,
            None => {
                let req = take(next_req);
                self.ours = Some(req);
                let timeout = PING_INTERVAL.as_millis() as u64;
                frames.push(Frame::request(
                    req,
                    &["gossip", "ping"],
                    "duplex",
                    json!([{ "timeout": timeout }]),
                ));
                req
            }
        };
        // One ping at a time: a second one sent before the first is answered
        // would make that answer look like the peer's own ping, which we
        // would answer, and the two sides would volley without end.
        if !self.awaiting {
            self.awaiting = true;
            frames.push(stamp(req));
        }
        frames
    }

    /// Handles a frame answering one of our requests (a negative request
    /// number). Returns `None` if it is not a keepalive frame, else what to
    /// send back.
    pub fn on_reply(&mut self, frame: &Frame) -> Option<Vec<Frame>> {
        let req = -frame.req;
        if self.probes.remove(&req) {
            return Some(Vec::new());
        }
        if self.ours != Some(req) {
            return None;
        }
        if frame.end {
            // Refused (or ended): answer the end, and probe from now on.
            self.ours = None;
            self.refused = true;
            self.awaiting = false;
            return Some(vec![Frame::end(req)]);
        }
        if self.awaiting {
            self.awaiting = false;
            return Some(Vec::new());
        }
        // The peer's own ping on our stream (pull-ping takes turns).
        Some(vec![stamp(req)])
    }

    /// The peer opens a ping stream, request `req`. Nothing is sent on it
    /// until the peer sends a number.
    pub fn open_served(&mut self, req: i32) -> bool {
        if self.served.len() >= MAX_SERVED {
            return false;
        }
        self.served.insert(req);
        true
    }

    /// Handles a frame of a peer-opened stream. Returns `None` if it is not
    /// one of the peer's ping streams, else what to send back.
    pub fn on_served(&mut self, frame: &Frame) -> Option<Frame> {
        if !self.served.contains(&frame.req) {
            return None;
        }
        if frame.end {
            self.served.remove(&frame.req);
            return Some(Frame::end(-frame.req));
        }
        Some(stamp(-frame.req))
    }

    /// Whether `req` is one of the peer's ping streams.
    pub fn serves(&self, req: i32) -> bool {
        self.served.contains(&req)
    }
}

fn take(next_req: &mut i32) -> i32 {
    let req = *next_req;
    *next_req += 1;
    req
}

/// Our clock, on stream `req`.
fn stamp(req: i32) -> Frame {
    Frame::json(req, true, false, &json!(now_ms()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(req: i32) -> Frame {
        Frame::json(req, true, false, &json!(1_700_000_000_000u64))
    }

    #[test]
    fn we_ping_and_never_answer_an_answer() {
        let mut k = Keepalive::new();
        let mut next = 1;
        let opening = k.tick(&mut next);
        assert_eq!(opening.len(), 2, "open the stream and ping at once");
        assert_eq!(
            opening[0].body_json().expect("json")["name"],
            json!(["gossip", "ping"])
        );
        assert!(k.tick(&mut next).is_empty(), "not due yet");
        // Due again, but the first ping is unanswered: no second one.
        k.last_sent = None;
        assert!(k.tick(&mut next).is_empty(), "one ping at a time");
        // The answer to our ping: nothing back.
        assert_eq!(k.on_reply(&number(-1)), Some(Vec::new()));
        k.last_sent = None;
        assert_eq!(k.tick(&mut next).len(), 1, "the next ping, once answered");
        assert_eq!(k.on_reply(&number(-1)), Some(Vec::new()));
        // The peer's own ping on our stream: answered once.
        assert_eq!(k.on_reply(&number(-1)).map(|f| f.len()), Some(1));
        // Not ours.
        assert_eq!(k.on_reply(&number(-7)), None);
    }

    #[test]
    fn a_refused_ping_turns_into_probes() {
        let mut k = Keepalive::new();
        let mut next = 1;
        k.tick(&mut next);
        let refusal = Frame::error(
            -1,
            true,
            "method:gossip,ping is not in list of allowed methods",
        );
        assert_eq!(k.on_reply(&refusal).map(|f| f.len()), Some(1));
        k.last_sent = None;
        let probe = k.tick(&mut next);
        assert_eq!(probe.len(), 1);
        assert_eq!(
            probe[0].body_json().expect("json")["name"],
            json!(["whoami"])
        );
        assert_eq!(
            k.on_reply(&Frame::json(-probe[0].req, false, false, &json!({}))),
            Some(Vec::new())
        );
    }

    #[test]
    fn each_number_on_a_served_stream_is_answered_once() {
        let mut k = Keepalive::new();
        assert!(k.open_served(3));
        assert!(k.serves(3));
        let answer = k.on_served(&number(3)).expect("ours");
        assert_eq!(answer.req, -3);
        assert!(!answer.end);
        assert!(k.on_served(&number(4)).is_none());
        assert!(k.on_served(&Frame::end(3)).expect("end").end);
        assert!(!k.serves(3));
    }
}
