//! SQS standard-queue semantics: at-least-once delivery, visibility timeouts, DelaySeconds,
//! receive counts and redrive to a dead-letter queue.

use std::collections::BTreeMap;

use super::rng::Rng;

/// Milliseconds of virtual time.
pub type Ms = i64;

#[derive(Clone, Debug)]
pub struct SqsMessage {
    pub id: u64,
    pub body: String,
    pub visible_at: Ms,
    pub receive_count: u32,
    /// The receipt of the latest receive; an older receipt no longer deletes the message.
    pub receipt: Option<String>,
}

#[derive(Clone, Debug)]
pub struct SqsQueue {
    /// By message id: ids grow with sends, so iteration order is deterministic.
    pub messages: BTreeMap<u64, SqsMessage>,
    pub dlq: Vec<SqsMessage>,
    next_id: u64,
    pub visibility_timeout_ms: Ms,
    /// After this many receives a message moves to the DLQ instead of being delivered again.
    pub max_receive_count: u32,
}

impl SqsQueue {
    pub fn new(visibility_timeout_ms: Ms, max_receive_count: u32) -> Self {
        SqsQueue {
            messages: BTreeMap::new(),
            dlq: Vec::new(),
            next_id: 1,
            visibility_timeout_ms,
            max_receive_count,
        }
    }

    pub fn send(&mut self, body: &str, now: Ms, delay_ms: Ms) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.messages.insert(
            id,
            SqsMessage {
                id,
                body: body.to_string(),
                visible_at: now + delay_ms.max(0),
                receive_count: 0,
                receipt: None,
            },
        );
        id
    }

    /// Up to `max` visible messages, in an order the seed picks (a standard queue is not FIFO).
    pub fn receive(&mut self, now: Ms, max: usize, rng: &mut Rng) -> Vec<SqsMessage> {
        let mut visible: Vec<u64> = self
            .messages
            .values()
            .filter(|m| m.visible_at <= now)
            .map(|m| m.id)
            .collect();
        // Partial Fisher–Yates: a seeded sample of the visible messages.
        let mut out = Vec::new();
        let take = max.min(visible.len());
        for i in 0..take {
            let j = rng.range(i as i64, visible.len() as i64 - 1) as usize;
            visible.swap(i, j);
            let id = visible[i];
            let m = self.messages.get_mut(&id).expect("listed above");
            if m.receive_count >= self.max_receive_count {
                let dead = self.messages.remove(&id).expect("listed above");
                self.dlq.push(dead);
                continue;
            }
            m.receive_count += 1;
            m.visible_at = now + self.visibility_timeout_ms;
            let receipt = format!("{}-{}", m.id, m.receive_count);
            m.receipt = Some(receipt);
            out.push(m.clone());
        }
        out
    }

    /// Deletes by receipt; a stale receipt (the message was received again since) is ignored,
    /// as SQS does.
    pub fn delete(&mut self, receipt: &str) -> bool {
        let id = receipt
            .split('-')
            .next()
            .and_then(|s| s.parse::<u64>().ok());
        match id.and_then(|id| self.messages.get(&id).map(|m| (id, m))) {
            Some((id, m)) if m.receipt.as_deref() == Some(receipt) => {
                self.messages.remove(&id);
                true
            }
            _ => false,
        }
    }

    pub fn extend(&mut self, receipt: &str, now: Ms, seconds: u32) {
        if let Some(m) = self
            .messages
            .values_mut()
            .find(|m| m.receipt.as_deref() == Some(receipt))
        {
            m.visible_at = now + i64::from(seconds) * 1000;
        }
    }

    /// When the next message becomes visible, if any.
    pub fn next_visible(&self) -> Option<Ms> {
        self.messages.values().map(|m| m.visible_at).min()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}
