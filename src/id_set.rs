//! The exact set of ids a window holds, on the worker (first seen) and in the recorder.
//!
//! Open addressing with linear probing over a plain array of ids: a lookup reads one cache
//! line, where a SwissTable (std's `HashSet`) reads its control bytes and then writes the
//! bucket in another line. With millions of random ids per window nearly every insert misses
//! the cache, so lines per insert are what it costs; `prefetch` lets a caller that knows the
//! next ids start those misses early.

use std::hash::{BuildHasher, RandomState};

/// The hash of an id: one multiply-xorshift round, far cheaper than SipHash. Unkeyed, so every
/// instance spreads ids over Redis shards alike; the sets add their own key.
pub fn hash_id(id: i64) -> u64 {
    let x = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

/// Marks a free slot; the id with this value is kept in a flag instead.
const FREE: i64 = i64::MIN;
const MIN_SLOTS: usize = 1024;

/// A set of i64 ids.
pub struct IdSet {
    /// A power of two in length; at most 5/8 full, so probe runs stay short.
    slots: Box<[i64]>,
    /// Ids in `slots`.
    stored: usize,
    holds_free_marker: bool,
    /// Random per set and mixed into every hash, so that clients cannot choose ids that all
    /// land in one probe run (the hash itself is public: Redis shards use it unkeyed).
    key: u64,
}

impl Default for IdSet {
    fn default() -> Self {
        IdSet {
            slots: vec![FREE; MIN_SLOTS].into_boxed_slice(),
            stored: 0,
            holds_free_marker: false,
            key: RandomState::new().hash_one(0u64),
        }
    }
}

impl IdSet {
    pub fn len(&self) -> usize {
        self.stored + usize::from(self.holds_free_marker)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `id`; says whether it was new.
    pub fn insert(&mut self, id: i64) -> bool {
        if id == FREE {
            return !std::mem::replace(&mut self.holds_free_marker, true);
        }
        let Err(free) = self.probe(id) else {
            return false;
        };
        self.slots[free] = id;
        self.stored += 1;
        if self.stored * 8 > self.slots.len() * 5 {
            self.grow();
        }
        true
    }

    pub fn contains(&self, id: i64) -> bool {
        if id == FREE {
            return self.holds_free_marker;
        }
        self.probe(id).is_ok()
    }

    #[cfg(test)]
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Empties the set and keeps its memory: the next window of similar size allocates
    /// nothing.
    pub fn clear(&mut self) {
        if self.stored > 0 {
            self.slots.fill(FREE);
        }
        self.stored = 0;
        self.holds_free_marker = false;
    }

    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        let marker = self.holds_free_marker.then_some(FREE);
        self.slots
            .iter()
            .copied()
            .filter(|&slot| slot != FREE)
            .chain(marker)
    }

    /// Starts loading the cache line where `id` would be, so that an insert or lookup of it a
    /// little later does not wait for memory.
    #[inline]
    pub fn prefetch(&self, id: i64) {
        let slot: *const i64 = &self.slots[self.home(id)];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint that never faults, and the address is in `slots`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(slot.cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    /// Walks `id`'s probe run: `Ok` with its slot when it is there, else `Err` with the free
    /// slot that ends the run, where it would go.
    fn probe(&self, id: i64) -> Result<usize, usize> {
        let mut i = self.home(id);
        loop {
            match self.slots[i] {
                slot if slot == id => return Ok(i),
                FREE => return Err(i),
                _ => i = self.next(i),
            }
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot an id's probe starts at: the top bits of its hash, which mix all of the id.
    #[inline]
    fn home(&self, id: i64) -> usize {
        (hash_id(id ^ self.key as i64) >> (64 - self.slots.len().trailing_zeros())) as usize
    }

    fn next(&self, i: usize) -> usize {
        (i + 1) & self.mask()
    }

    fn grow(&mut self) {
        let doubled = vec![FREE; self.slots.len() * 2].into_boxed_slice();
        let old = std::mem::replace(&mut self.slots, doubled);
        for id in old.iter().copied().filter(|&slot| slot != FREE) {
            // The ids are distinct, so each probe ends at a free slot.
            if let Err(free) = self.probe(id) {
                self.slots[free] = id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(i64),
        Clear,
    }

    /// Ids from a small range collide and share probe runs; the marker value is among them.
    fn id() -> impl Strategy<Value = i64> {
        prop_oneof![-50i64..50, Just(i64::MIN), Just(i64::MAX), any::<i64>()]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            10 => id().prop_map(Op::Insert),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_std_hash_set(ops in proptest::collection::vec(op(), 0..1500)) {
            let mut ours = IdSet::default();
            let mut model = HashSet::new();
            for op in ops {
                match op {
                    Op::Insert(id) => prop_assert_eq!(ours.insert(id), model.insert(id)),
                    Op::Clear => {
                        ours.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(ours.len(), model.len());
            }
            for id in -50..50 {
                prop_assert_eq!(ours.contains(id), model.contains(&id));
            }
            let mut listed: Vec<i64> = ours.iter().collect();
            let mut expected: Vec<i64> = model.into_iter().collect();
            listed.sort_unstable();
            expected.sort_unstable();
            prop_assert_eq!(listed, expected);
        }
    }

    #[test]
    fn grows_past_many_ids_and_finds_them_all() {
        let mut set = IdSet::default();
        let ids: Vec<i64> = (0..200_000).map(|i| i * 1_000_003 - 7).collect();
        assert!(ids.iter().all(|&id| set.insert(id)));
        assert_eq!(set.len(), ids.len());
        assert!(ids.iter().all(|&id| set.contains(id) && !set.insert(id)));
        set.prefetch(ids[0]);
        assert!(!set.contains(1));
    }
}
