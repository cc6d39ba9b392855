//! `OneOrMore`: a list that nearly always holds one item, kept inline so
//! that the usual case allocates nothing (the callers waiting for a
//! release's deletes, the answers one event produces).

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
}

impl<T> IntoIterator for OneOrMore<T> {
    type Item = T;
    type IntoIter = std::iter::Chain<std::option::IntoIter<T>, std::vec::IntoIter<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.more)
    }
}

#[cfg(test)]
mod tests {
    use super::OneOrMore;

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
