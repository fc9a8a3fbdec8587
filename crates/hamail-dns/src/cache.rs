//! A UDP worker's cache of encoded answers, bounded by bytes. Eviction is
//! CLOCK (second chance): an answer served since the hand last passed it
//! stays, so a flood of names asked once (a random-subdomain attack under a
//! wildcard) cycles through the cache without pushing out the hot answers.
//! One per worker: no lock on the query path.

use std::collections::HashMap;

/// Bytes charged per entry beyond its key and answer: the map's entry and
/// control bytes, the slot, and two allocations' headers.
const ENTRY_OVERHEAD: usize = 96;

struct Slot {
    key: Box<[u8]>,
    answer: Box<[u8]>,
    /// Served since the hand last passed.
    referenced: bool,
}

pub(crate) struct AnswerCache {
    index: HashMap<Box<[u8]>, usize>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    hand: usize,
    bytes: usize,
    limit: usize,
}

fn weight(key: &[u8], answer: &[u8]) -> usize {
    2 * key.len() + answer.len() + ENTRY_OVERHEAD
}

impl AnswerCache {
    /// A cache holding at most `limit` bytes (keys, answers and overhead).
    pub(crate) fn new(limit: usize) -> Self {
        AnswerCache {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
            bytes: 0,
            limit,
        }
    }

    /// Bytes charged for what the cache holds now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn get(&mut self, key: &[u8]) -> Option<&[u8]> {
        let i = *self.index.get(key)?;
        let slot = self.slots.get_mut(i)?.as_mut()?;
        slot.referenced = true;
        Some(&slot.answer)
    }

    /// Drops every answer (the zones changed).
    pub(crate) fn clear(&mut self) {
        self.index = HashMap::new();
        self.slots = Vec::new();
        self.free.clear();
        self.hand = 0;
        self.bytes = 0;
    }

    pub(crate) fn insert(&mut self, key: &[u8], answer: Vec<u8>) {
        let w = weight(key, &answer);
        if w > self.limit {
            return;
        }
        if let Some(&i) = self.index.get(key) {
            self.remove(i);
        }
        // Each turn of the hand clears a mark or evicts an entry: two full
        // turns evict something, or the cache is empty.
        let mut steps = 2 * self.slots.len() + 1;
        while self.bytes + w > self.limit && steps > 0 {
            steps -= 1;
            self.step();
        }
        if self.bytes + w > self.limit {
            return;
        }
        let slot = Slot {
            key: key.into(),
            answer: answer.into_boxed_slice(),
            referenced: false,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.index.insert(key.into(), i);
        self.bytes += w;
    }

    /// Moves the hand by one slot: clears the mark of a served entry, or
    /// evicts one that was not served since the last pass.
    fn step(&mut self) {
        if self.slots.is_empty() {
            return;
        }
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
        let i = self.hand;
        self.hand += 1;
        match &mut self.slots[i] {
            Some(s) if s.referenced => s.referenced = false,
            Some(_) => self.remove(i),
            None => {}
        }
    }

    fn remove(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i).and_then(Option::take) {
            self.index.remove(&s.key);
            self.bytes -= weight(&s.key, &s.answer);
            self.free.push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_bytes_and_a_hot_answer_survives_a_flood() {
        let limit = 64 * 1024;
        let mut c = AnswerCache::new(limit);
        let hot_key = b"\x03www\x07example\x00\x00\x01\x00\x01".to_vec();
        c.insert(&hot_key, vec![7u8; 120]);
        let mut peak = 0;
        for i in 0..500_000u32 {
            // A random-name flood: each name asked once.
            let key = format!("\x08{i:08x}\x07example\x00\x00\x01\x00\x01").into_bytes();
            c.insert(&key, vec![0u8; 60 + (i % 200) as usize]);
            peak = peak.max(c.bytes());
            assert!(c.bytes() <= limit);
            if i % 50 == 0 {
                assert_eq!(c.get(&hot_key).map(<[u8]>::len), Some(120), "at {i}");
            }
        }
        assert!(peak > limit - 1024, "the cache filled: {peak}");
        assert!(c.len() < 1000 && c.slots.len() < 1000, "{}", c.len());
        // An answer asked once among the flood is gone; the hot one is not.
        assert!(
            c.get(b"\x0800000000\x07example\x00\x00\x01\x00\x01")
                .is_none()
        );
        assert!(c.get(&hot_key).is_some());
        // Too big for the cache: not kept, nothing evicted.
        let before = c.len();
        c.insert(b"big", vec![0; limit]);
        assert!(c.get(b"big").is_none() && c.len() == before);
        // Replacing an answer charges its new size only.
        c.insert(&hot_key, vec![1u8; 10]);
        assert_eq!(c.get(&hot_key), Some(&[1u8; 10][..]));
        c.clear();
        assert!(c.get(&hot_key).is_none() && c.bytes() == 0);
    }
}
