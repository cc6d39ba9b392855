//! Containers sized for the usual case of a lock, which holds a few items
//! at most and none for most of its life: `OneOrMore`, a list that nearly
//! always holds one item, kept inline so that the usual case allocates
//! nothing (the callers waiting for a release's deletes, the answers one
//! event produces); `Table`, a map by id that is one word while it has
//! never been used (the callers waiting for a grant or a release).

use std::collections::HashMap;

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

#[cfg(test)]
mod tests {
    use super::{Entries, OneOrMore, Table};

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
