//! `FreeQueue`: the free blocks of a pool, in eviction order (least recently freed first).
//!
//! Owns: an intrusive doubly linked list over block indices `0..num_total` with O(1)
//! `push_back`, `pop_front` and `remove` (from anywhere). `remove` is what a prefix cache
//! needs: a freed block that still holds a cached prefix stays in the queue (evictable, in LRU
//! order) until a cache hit revives it, which takes it out of the middle of the queue.
//! Does not own: reference counts or any notion of "cached" (that is `BlockPool`'s).
//!
//! Invariants (checked by `check`): following `next` from `head` visits exactly `len` distinct
//! indices, ends at `tail`, `prev` mirrors `next`, and `in_queue[idx]` is true exactly for the
//! visited indices.

/// "No neighbor" marker in `prev`/`next`.
const NONE: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub(crate) struct FreeQueue {
    prev: Vec<u32>,
    next: Vec<u32>,
    in_queue: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl FreeQueue {
    /// A queue holding `0..num_total` in ascending order. `num_total` must be `< u32::MAX`
    /// (the pool checks this before calling).
    pub(crate) fn new_full(num_total: u32) -> Self {
        let n = num_total as usize;
        let mut queue = Self {
            prev: vec![NONE; n],
            next: vec![NONE; n],
            in_queue: vec![false; n],
            head: NONE,
            tail: NONE,
            len: 0,
        };
        for block_idx in 0..num_total {
            queue.push_back(block_idx);
        }
        queue
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, block_idx: u32) -> bool {
        self.in_queue
            .get(block_idx as usize)
            .copied()
            .unwrap_or(false)
    }

    /// Appends `block_idx` (most recently freed). No-op returning false if it is already queued
    /// or out of range.
    pub(crate) fn push_back(&mut self, block_idx: u32) -> bool {
        let i = block_idx as usize;
        if i >= self.in_queue.len() || self.in_queue[i] {
            return false;
        }
        self.prev[i] = self.tail;
        self.next[i] = NONE;
        if self.tail == NONE {
            self.head = block_idx;
        } else {
            self.next[self.tail as usize] = block_idx;
        }
        self.tail = block_idx;
        self.in_queue[i] = true;
        self.len += 1;
        true
    }

    /// Takes the least recently freed block.
    pub(crate) fn pop_front(&mut self) -> Option<u32> {
        let block_idx = self.head;
        if block_idx == NONE {
            return None;
        }
        self.remove(block_idx);
        Some(block_idx)
    }

    /// Unlinks `block_idx` from wherever it is. Returns false if it was not queued.
    pub(crate) fn remove(&mut self, block_idx: u32) -> bool {
        if !self.contains(block_idx) {
            return false;
        }
        let i = block_idx as usize;
        let (prev, next) = (self.prev[i], self.next[i]);
        if prev == NONE {
            self.head = next;
        } else {
            self.next[prev as usize] = next;
        }
        if next == NONE {
            self.tail = prev;
        } else {
            self.prev[next as usize] = prev;
        }
        self.prev[i] = NONE;
        self.next[i] = NONE;
        self.in_queue[i] = false;
        self.len -= 1;
        true
    }

    /// Queued indices, front (next to be allocated) to back.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let mut cursor = self.head;
        std::iter::from_fn(move || {
            if cursor == NONE {
                return None;
            }
            let current = cursor;
            cursor = self.next.get(current as usize).copied().unwrap_or(NONE);
            Some(current)
        })
    }

    /// Verifies the linked structure; bounded by `num_total` steps even if corrupted.
    pub(crate) fn check(&self) -> Result<(), String> {
        let num_total = self.in_queue.len();
        let mut seen = vec![false; num_total];
        let mut num_visited = 0usize;
        let mut prev = NONE;
        let mut cursor = self.head;
        while cursor != NONE {
            let i = cursor as usize;
            if i >= num_total {
                return Err(format!("free queue links to out-of-range block {cursor}"));
            }
            if seen[i] {
                return Err(format!("free queue visits block {cursor} twice (cycle)"));
            }
            seen[i] = true;
            if !self.in_queue[i] {
                return Err(format!("block {cursor} is linked but not marked queued"));
            }
            if self.prev[i] != prev {
                return Err(format!(
                    "block {cursor}: prev is {} but the list reaches it from {prev}",
                    self.prev[i]
                ));
            }
            num_visited += 1;
            prev = cursor;
            cursor = self.next[i];
        }
        if prev != self.tail {
            return Err(format!(
                "free queue ends at {prev} but tail is {}",
                self.tail
            ));
        }
        if num_visited != self.len {
            return Err(format!(
                "free queue links {num_visited} blocks but len is {}",
                self.len
            ));
        }
        let num_marked = self.in_queue.iter().filter(|&&queued| queued).count();
        if num_marked != self.len {
            return Err(format!(
                "{num_marked} blocks marked queued but len is {}",
                self.len
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_full_queue_yields_blocks_in_ascending_order() {
        let queue = FreeQueue::new_full(4);
        assert_eq!(queue.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(queue.check(), Ok(()));
    }

    #[test]
    fn remove_from_middle_keeps_order_of_the_rest() {
        let mut queue = FreeQueue::new_full(5);
        assert!(queue.remove(2));
        assert!(!queue.remove(2));
        assert_eq!(queue.iter().collect::<Vec<_>>(), vec![0, 1, 3, 4]);
        assert!(queue.remove(0));
        assert!(queue.remove(4));
        assert_eq!(queue.iter().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(queue.check(), Ok(()));
    }

    #[test]
    fn freed_blocks_go_to_the_back() {
        let mut queue = FreeQueue::new_full(3);
        assert_eq!(queue.pop_front(), Some(0));
        assert_eq!(queue.pop_front(), Some(1));
        assert!(queue.push_back(0));
        assert!(!queue.push_back(0));
        assert_eq!(queue.iter().collect::<Vec<_>>(), vec![2, 0]);
        assert_eq!(queue.check(), Ok(()));
    }

    #[test]
    fn popping_everything_leaves_an_empty_consistent_queue() {
        let mut queue = FreeQueue::new_full(3);
        while queue.pop_front().is_some() {}
        assert_eq!(queue.len(), 0);
        assert_eq!(queue.check(), Ok(()));
        assert!(!queue.push_back(7));
    }
}
