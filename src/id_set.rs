//! The exact set of ids a window holds, on the worker (first seen) and in the recorder.
//!
//! Open addressing with linear probing over a plain array of ids: a lookup reads one cache
//! line, where a `SwissTable` (std's `HashSet`) reads its control bytes and then writes the
//! bucket in another line. With millions of random ids per window nearly every insert misses
//! the cache, so lines per insert are what it costs; `prefetch` lets a caller that knows the
//! next ids start those misses early.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// The hash of an id: one multiply-xorshift round, far cheaper than `SipHash`. Unkeyed, so every
/// instance spreads ids over Redis shards alike; the sets add their own key.
pub fn hash_id(id: i64) -> u64 {
    let x = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

/// Marks a free slot; the id with this value is kept in a flag instead.
const FREE: i64 = i64::MIN;
const MIN_SLOTS: usize = 1024;

/// A set of i64 ids, written by one thread. Its slots are atomics (relaxed: plain loads and
/// stores on x86-64), so that other threads may look ids up in a [`IdSetView`] meanwhile.
pub struct IdSet {
    /// A power of two in length; at most 5/8 full, so probe runs stay short.
    slots: Arc<[AtomicI64]>,
    /// Ids in `slots`.
    stored: usize,
    holds_free_marker: bool,
    /// `holds_free_marker`, for views.
    free_marker_view: Arc<AtomicBool>,
    /// Random per set and mixed into every hash, so that clients cannot choose ids that all
    /// land in one probe run (the hash itself is public: Redis shards use it unkeyed).
    key: u64,
}

/// Another thread's read-only look at an [`IdSet`]: it sees the ids inserted until the set
/// grows (a grown set has new slots: take a new view).
#[derive(Clone)]
pub struct IdSetView {
    slots: Arc<[AtomicI64]>,
    holds_free_marker: Arc<AtomicBool>,
    key: u64,
}

impl IdSetView {
    /// Whether the set holds `id`.
    pub fn contains(&self, id: i64) -> bool {
        if id == FREE {
            return self.holds_free_marker.load(Ordering::Relaxed);
        }
        probe(&self.slots, self.key, id).is_ok()
    }
}

/// `n` free slots, filled with plain stores (the compiler vectorizes them) before anyone else
/// can see them.
fn free_slots(n: usize) -> Arc<[AtomicI64]> {
    let mut slots = Arc::<[AtomicI64]>::new_uninit_slice(n);
    for slot in Arc::get_mut(&mut slots).expect("a new Arc has one owner") {
        slot.write(AtomicI64::new(FREE));
    }
    // SAFETY: every slot was written just above.
    unsafe { slots.assume_init() }
}

impl Default for IdSet {
    fn default() -> Self {
        IdSet {
            slots: free_slots(MIN_SLOTS),
            stored: 0,
            holds_free_marker: false,
            free_marker_view: Arc::new(AtomicBool::new(false)),
            key: RandomState::new().hash_one(0u64),
        }
    }
}

impl IdSet {
    /// The number of ids.
    pub fn len(&self) -> usize {
        self.stored + usize::from(self.holds_free_marker)
    }

    /// No ids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `id`; says whether it was new.
    pub fn insert(&mut self, id: i64) -> bool {
        if id == FREE {
            self.free_marker_view.store(true, Ordering::Relaxed);
            return !std::mem::replace(&mut self.holds_free_marker, true);
        }
        let Err(free) = probe(&self.slots, self.key, id) else {
            return false;
        };
        self.slots[free].store(id, Ordering::Relaxed);
        self.stored += 1;
        if self.stored * 8 > self.slots.len() * 5 {
            self.grow();
        }
        true
    }

    /// Whether the set holds `id`.
    pub fn contains(&self, id: i64) -> bool {
        if id == FREE {
            return self.holds_free_marker;
        }
        probe(&self.slots, self.key, id).is_ok()
    }

    /// Slots: a new number means new slots, and views taken before see no more inserts.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// A view on the current slots, for lookups from other threads.
    pub fn view(&self) -> IdSetView {
        IdSetView {
            slots: Arc::clone(&self.slots),
            holds_free_marker: Arc::clone(&self.free_marker_view),
            key: self.key,
        }
    }

    /// Empties the set and keeps its memory: the next window of similar size allocates
    /// nothing. Views of it must be let go of first: they would see it half cleared.
    pub fn clear(&mut self) {
        if self.stored > 0 {
            match Arc::get_mut(&mut self.slots) {
                // No view left: plain stores, which the compiler vectorizes.
                Some(slots) => slots.iter_mut().for_each(|slot| *slot.get_mut() = FREE),
                None => self
                    .slots
                    .iter()
                    .for_each(|slot| slot.store(FREE, Ordering::Relaxed)),
            }
        }
        self.stored = 0;
        self.holds_free_marker = false;
        self.free_marker_view.store(false, Ordering::Relaxed);
    }

    /// Every id in the set, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        let marker = self.holds_free_marker.then_some(FREE);
        self.slots
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|&slot| slot != FREE)
            .chain(marker)
    }

    /// Starts loading the cache line where `id` would be, so that an insert or lookup of it a
    /// little later does not wait for memory.
    #[inline]
    pub fn prefetch(&self, id: i64) {
        let slot: *const AtomicI64 = &raw const self.slots[home(self.slots.len(), self.key, id)];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint that never faults, and the address is in `slots`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(slot.cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    fn grow(&mut self) {
        let doubled = free_slots(self.slots.len() * 2);
        for id in self
            .slots
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|&id| id != FREE)
        {
            // The ids are distinct, so each probe ends at a free slot.
            if let Err(free) = probe(&doubled, self.key, id) {
                doubled[free].store(id, Ordering::Relaxed);
            }
        }
        self.slots = doubled;
    }
}

/// Walks `id`'s probe run: `Ok` with its slot when it is there, else `Err` with the free slot
/// that ends the run, where it would go.
fn probe(slots: &[AtomicI64], key: u64, id: i64) -> Result<usize, usize> {
    let mask = slots.len() - 1;
    let mut i = home(slots.len(), key, id);
    loop {
        match slots[i].load(Ordering::Relaxed) {
            slot if slot == id => return Ok(i),
            FREE => return Err(i),
            _ => i = (i + 1) & mask,
        }
    }
}

/// The slot an id's probe starts at in `len` slots: the top bits of its keyed hash, which mix
/// all of the id.
#[inline]
fn home(len: usize, key: u64, id: i64) -> usize {
    (hash_id(id ^ key as i64) >> (64 - len.trailing_zeros())) as usize
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
