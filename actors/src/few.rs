//! Containers sized for the usual case of a lock, which holds a few items
//! at most and none for most of its life: `OneOrMore`, a list that nearly
//! always holds one item, kept inline so that the usual case allocates
//! nothing (the callers waiting for a release's deletes, the answers one
//! event produces); `Table`, a map by id that is one word while it has
//! never been used (the callers waiting for a grant or a release); `Room`,
//! a list that is one word while it has no room (the lock core's tables);
//! `InlineBytes`, a short buffer that becomes shared bytes in one
//! allocation (a token, a key a command carries); `Recent`, the last few
//! thousand ids seen (a hand-over's message, which two connections carry).

use std::collections::{HashMap, HashSet, VecDeque};

/// The first item inline, the rest in a vector that allocates only when a
/// second item comes.
#[derive(Debug)]
pub(crate) struct OneOrMore<T> {
    first: Option<T>,
    more: Vec<T>,
}

impl<T> Default for OneOrMore<T> {
    fn default() -> Self {
        OneOrMore {
            first: None,
            more: Vec::new(),
        }
    }
}

impl<T> OneOrMore<T> {
    pub(crate) fn push(&mut self, item: T) {
        match self.first {
            None => self.first = Some(item),
            Some(_) => self.more.push(item),
        }
    }

    /// Holds nothing (what is pushed first is always inline).
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

impl<T> IntoIterator for OneOrMore<T> {
    type Item = T;
    type IntoIter = std::iter::Chain<std::option::IntoIter<T>, std::vec::IntoIter<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.more)
    }
}

/// A map by id, one pointer wide while unused: a held lock keeps one for
/// its waiting callers and one for its release acknowledgements, both
/// empty for most of its life, where two hash maps took 96 bytes of its
/// state. Its room is kept between uses (a lock taken again and again
/// does not allocate each time) until [`Table::trim`].
///
/// It holds one entry nearly always (the one caller waiting for a grant,
/// or for a release), so its entries sit in a vector searched in place,
/// which for one entry takes 40 bytes of room where a boxed hash map took
/// 132 (48 and 84), and no hashing. Past [`Table::FEW`] entries (a crowd
/// of callers of one name in this process) they move to a hash map, so
/// that a crowd costs no search of its whole length per caller served,
/// and stay there until the table is emptied and trimmed.
#[derive(Debug)]
pub(crate) struct Table<V>(Option<Box<Entries<V>>>);

#[derive(Debug)]
enum Entries<V> {
    Few(Vec<(u64, V)>),
    /// Boxed: the vector's room is what a table in use nearly always
    /// takes, and a hash map inline would double it.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<u64, V>>),
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table(None)
    }
}

impl<V> Table<V> {
    /// The most entries kept in the vector.
    const FEW: usize = 16;

    /// Adds `value` under `id`, replacing what was there.
    pub(crate) fn insert(&mut self, id: u64, value: V) {
        let entries = self
            .0
            .get_or_insert_with(|| Box::new(Entries::Few(Vec::with_capacity(1))));
        match &mut **entries {
            Entries::Few(few) => {
                if let Some(slot) = few.iter_mut().find(|(k, _)| *k == id) {
                    slot.1 = value;
                } else if few.len() < Self::FEW {
                    few.push((id, value));
                } else {
                    let mut many: HashMap<u64, V> = std::mem::take(few).into_iter().collect();
                    many.insert(id, value);
                    **entries = Entries::Many(Box::new(many));
                }
            }
            Entries::Many(many) => {
                many.insert(id, value);
            }
        }
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<V> {
        match &mut **self.0.as_mut()? {
            Entries::Few(few) => {
                let at = few.iter().position(|(k, _)| *k == id)?;
                Some(few.swap_remove(at).1)
            }
            Entries::Many(many) => many.remove(&id),
        }
    }

    /// Gives back the room of an empty table.
    pub(crate) fn trim(&mut self) {
        let empty = match self.0.as_deref() {
            Some(Entries::Few(few)) => few.is_empty(),
            Some(Entries::Many(many)) => many.is_empty(),
            None => false,
        };
        if empty {
            self.0 = None;
        }
    }
}

/// A list one pointer wide while it has no room: what a lock core keeps
/// for its waiters, its commands out, its release groups, its past tokens
/// and its effects, all empty for most of a long hold. Inline, a vector
/// took 24 bytes of every held lock's state and a deque 32; behind a box
/// they take 8 until used. The room is kept between uses (a lock taken
/// again and again allocates nothing more) until [`Room::trim`], which a
/// lock settled into a long hold calls (`LockCore::trim`). A list in use
/// takes one allocation more than inline (the box), made once.
#[derive(Debug)]
pub(crate) struct Room<C>(Option<Box<C>>);

impl<C> Default for Room<C> {
    fn default() -> Self {
        Room(None)
    }
}

impl<C: Default> Room<C> {
    /// The list, made on first use. `room`: what to reserve then (most
    /// lists of a lock hold one item at a time).
    fn make(&mut self, room: impl FnOnce() -> C) -> &mut C {
        self.0.get_or_insert_with(|| Box::new(room()))
    }

    /// The list, if it has room.
    pub(crate) fn get(&self) -> Option<&C> {
        self.0.as_deref()
    }

    /// The list, if it has room.
    pub(crate) fn get_mut(&mut self) -> Option<&mut C> {
        self.0.as_deref_mut()
    }

    /// Takes the list out, leaving no room.
    pub(crate) fn take(&mut self) -> C {
        self.0.take().map(|b| *b).unwrap_or_default()
    }

    /// Whether the list has room (for the tests of what gives it back).
    #[cfg(test)]
    pub(crate) fn has_room(&self) -> bool {
        self.0.is_some()
    }

    /// Gives back the room if `empty` says the list holds nothing.
    fn trim_if(&mut self, empty: impl FnOnce(&C) -> bool) {
        if self.get().is_some_and(empty) {
            self.0 = None;
        }
    }
}

impl<T> From<Vec<T>> for Room<Vec<T>> {
    /// No room for an empty vector.
    fn from(items: Vec<T>) -> Self {
        Room((!items.is_empty()).then(|| Box::new(items)))
    }
}

impl<T> Room<Vec<T>> {
    /// Appends `item`, making room for one if there was none.
    pub(crate) fn push(&mut self, item: T) {
        self.make(|| Vec::with_capacity(1)).push(item);
    }

    pub(crate) fn iter(&self) -> std::slice::Iter<'_, T> {
        self.get().map_or(&[][..], Vec::as_slice).iter()
    }

    pub(crate) fn iter_mut(&mut self) -> std::slice::IterMut<'_, T> {
        self.get_mut()
            .map_or(&mut [][..], Vec::as_mut_slice)
            .iter_mut()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.get().map_or(0, Vec::len)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.get().is_none_or(Vec::is_empty)
    }

    /// Gives back the room of an empty list.
    pub(crate) fn trim(&mut self) {
        self.trim_if(Vec::is_empty);
    }
}

impl<T> Room<VecDeque<T>> {
    /// The list, with room for one if it had none.
    pub(crate) fn make_one(&mut self) -> &mut VecDeque<T> {
        self.make(|| VecDeque::with_capacity(1))
    }

    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.get().into_iter().flatten()
    }

    pub(crate) fn iter_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut T> {
        self.get_mut().into_iter().flatten()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.get().is_none_or(VecDeque::is_empty)
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        self.get_mut()?.pop_front()
    }

    /// Gives back the room of an empty list.
    pub(crate) fn trim(&mut self) {
        self.trim_if(VecDeque::is_empty);
    }
}

/// Up to `N` bytes (and at most 255) kept inline, to become shared bytes
/// that own them (`Bytes::from_owner`): the bytes and their shared count
/// in one allocation, where bytes made from a vector take a second one
/// when first cloned.
pub(crate) struct InlineBytes<const N: usize> {
    buf: [u8; N],
    len: u8,
}

impl<const N: usize> InlineBytes<N> {
    /// `bytes` inline; `None` if they do not fit.
    pub(crate) fn new(bytes: &[u8]) -> Option<Self> {
        let mut inline = InlineBytes {
            buf: [0; N],
            len: u8::try_from(bytes.len()).ok()?,
        };
        inline.buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(inline)
    }

    /// `text` written out inline; `None` if it does not fit.
    pub(crate) fn write(text: std::fmt::Arguments<'_>) -> Option<Self> {
        use std::io::Write;
        let mut buf = [0; N];
        let mut rest = &mut buf[..];
        rest.write_fmt(text).ok()?;
        let len = u8::try_from(N - rest.len()).ok()?;
        Some(InlineBytes { buf, len })
    }

    /// Shared bytes that own these, in one allocation.
    pub(crate) fn into_bytes(self) -> fred::bytes::Bytes {
        fred::bytes::Bytes::from_owner(self)
    }
}

impl<const N: usize> AsRef<[u8]> for InlineBytes<N> {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// The last `cap` ids inserted, to tell a first sighting from a repeat. An
/// id older than those is forgotten, and counts as new again.
#[derive(Debug)]
pub(crate) struct Recent {
    cap: usize,
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl Recent {
    pub(crate) fn new(cap: usize) -> Recent {
        Recent {
            cap: cap.max(1),
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    /// Inserts `id`: true if it is not among the last `cap` inserted.
    pub(crate) fn first(&mut self, id: u64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        if self.order.len() == self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(id);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::{Entries, InlineBytes, OneOrMore, Recent, Room, Table};

    /// A repeat within the last `cap` is told; an older one is forgotten.
    #[test]
    fn recent_tells_repeats_within_its_window() {
        let mut r = Recent::new(3);
        assert!(r.first(1));
        assert!(!r.first(1));
        assert!(r.first(2));
        assert!(r.first(3));
        assert!(!r.first(1));
        // 4 pushes 1 out: 1 is new again, and pushes 2 out.
        assert!(r.first(4));
        assert!(r.first(1));
        assert!(r.first(2));
        assert!(!r.first(4));
        assert_eq!(r.order.len(), 3);
        assert_eq!(r.set.len(), 3);
    }

    /// What fits is kept whole, written or copied; what does not is
    /// refused, not cut.
    #[test]
    fn inline_bytes_keep_what_fits_and_refuse_the_rest() {
        let copied = InlineBytes::<4>::new(b"abcd").map(InlineBytes::into_bytes);
        assert_eq!(copied.as_deref(), Some(&b"abcd"[..]));
        assert!(InlineBytes::<4>::new(b"abcde").is_none());
        assert!(InlineBytes::<300>::new(&[b'x'; 256]).is_none());
        let written = InlineBytes::<8>::write(format_args!("{}:{}", "ab", 12));
        assert_eq!(
            written.map(InlineBytes::into_bytes).as_deref(),
            Some(&b"ab:12"[..])
        );
        assert!(InlineBytes::<4>::write(format_args!("{}", "abcde")).is_none());
        assert!(InlineBytes::<300>::write(format_args!("{}", "x".repeat(256))).is_none());
        let empty = InlineBytes::<0>::new(b"").map(InlineBytes::into_bytes);
        assert_eq!(empty.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn a_table_is_one_word_and_allocates_only_once_used() {
        assert_eq!(std::mem::size_of::<Table<u64>>(), 8);
        let mut t = Table::default();
        assert!(t.0.is_none());
        assert_eq!(t.remove(1), None, "an unused table has nothing");
        t.insert(1, "a");
        t.insert(2, "b");
        t.trim();
        assert!(t.0.is_some(), "a table in use keeps its room");
        assert_eq!(t.remove(1), Some("a"));
        assert_eq!(t.remove(1), None);
        assert_eq!(t.remove(2), Some("b"));
        assert!(
            t.0.is_some(),
            "an emptied table keeps its room until trimmed"
        );
        t.trim();
        assert!(t.0.is_none());
    }

    #[test]
    fn one_entry_takes_room_for_one() {
        assert_eq!(std::mem::size_of::<Entries<u64>>(), 24);
        let mut t = Table::default();
        t.insert(7, 70u64);
        match t.0.as_deref() {
            Some(Entries::Few(few)) => assert_eq!(few.capacity(), 1),
            other => panic!("one entry in {other:?}"),
        }
    }

    #[test]
    fn a_crowd_moves_to_a_hash_map_and_loses_nothing() {
        // Inserted and removed in mixed orders, across the move, with an
        // id inserted twice: the table answers as a map would.
        let mut t = Table::default();
        let mut model = std::collections::HashMap::new();
        let n = 3 * Table::<u64>::FEW as u64;
        for id in (0..n).rev() {
            t.insert(id, id * 10);
            model.insert(id, id * 10);
        }
        t.insert(5, 555);
        model.insert(5, 555);
        assert!(matches!(t.0.as_deref(), Some(Entries::Many(_))));
        for id in (0..n + 2).step_by(3).chain((0..n + 2).rev()) {
            assert_eq!(t.remove(id), model.remove(&id), "id {id}");
        }
        t.trim();
        assert!(t.0.is_none(), "an emptied crowd's room is given back");
        for id in 0..4 {
            t.insert(id, id);
            t.insert(id, id + 100);
        }
        assert_eq!(t.remove(2), Some(102), "a second insert replaces");
        assert_eq!(t.remove(2), None);
    }

    #[test]
    fn a_room_is_one_word_and_gives_its_room_back_only_when_trimmed_empty() {
        assert_eq!(std::mem::size_of::<Room<Vec<u64>>>(), 8);
        assert_eq!(std::mem::size_of::<Room<VecDeque<u64>>>(), 8);
        let mut v: Room<Vec<u64>> = Room::default();
        assert!(v.is_empty() && v.iter().next().is_none() && v.get().is_none());
        v.trim();
        v.push(1);
        v.push(2);
        assert_eq!(v.iter().copied().collect::<Vec<_>>(), [1, 2]);
        v.iter_mut().for_each(|x| *x *= 10);
        v.trim();
        assert_eq!(v.len(), 2, "a list with items keeps them when trimmed");
        v.get_mut().unwrap().clear();
        assert!(
            v.get().is_some(),
            "an emptied list keeps its room until trimmed"
        );
        v.trim();
        assert!(v.get().is_none());
        assert!(Room::from(Vec::<u64>::new()).get().is_none());
        assert_eq!(Room::from(vec![3u64]).take(), [3]);

        let mut q: Room<VecDeque<u64>> = Room::default();
        assert_eq!(q.pop_front(), None);
        q.make_one().push_back(1);
        assert_eq!(
            q.get().map(VecDeque::capacity),
            Some(1),
            "room for one to start with"
        );
        q.make_one().push_back(2);
        assert_eq!(q.iter().rev().copied().collect::<Vec<_>>(), [2, 1]);
        assert_eq!(q.pop_front(), Some(1));
        q.trim();
        assert!(!q.is_empty());
        assert_eq!(q.take().into_iter().collect::<Vec<_>>(), [2]);
        assert!(q.get().is_none() && q.is_empty(), "taken: no room left");
    }

    #[test]
    fn keeps_the_order_and_allocates_only_for_a_second_item() {
        let mut few = OneOrMore::default();
        assert_eq!(few.more.capacity(), 0);
        few.push(1);
        assert_eq!(few.more.capacity(), 0, "one item stays inline");
        few.push(2);
        few.push(3);
        assert_eq!(few.into_iter().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(OneOrMore::<u8>::default().into_iter().count(), 0);
    }
}
