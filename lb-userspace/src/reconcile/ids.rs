//! The id pools a reconciler hands out: VIP ids, ring ids and backend ids.

/// The id pools a listener update draws from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Pool {
    Vip,
    Ring,
    Backend,
}

impl Pool {
    pub(super) const fn name(self) -> &'static str {
        match self {
            Self::Vip => "VIP ids",
            Self::Ring => "rings",
            Self::Backend => "backend ids",
        }
    }
}

/// Ids `0..capacity`, handed out round-robin so that a freed id is reused as late as possible.
#[derive(Debug)]
pub(super) struct IdPool {
    used: Vec<bool>,
    cursor: usize,
}

impl IdPool {
    pub(super) fn new(capacity: u32) -> Self {
        Self {
            used: vec![false; capacity as usize],
            cursor: 0,
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.used.len()
    }

    pub(super) fn alloc(&mut self) -> Option<u32> {
        let n = self.used.len();
        let offset = (0..n).find(|i| !self.used[(self.cursor + i) % n])?;
        let id = (self.cursor + offset) % n;
        self.used[id] = true;
        self.cursor = (id + 1) % n;
        u32::try_from(id).ok()
    }

    /// Marks `id` as in use (adopting state an earlier daemon left). False if it is out of
    /// range or already in use.
    pub(super) fn mark_used(&mut self, id: u32) -> bool {
        match self.used.get_mut(id as usize) {
            Some(used) if !*used => {
                *used = true;
                true
            }
            _ => false,
        }
    }

    pub(super) fn free(&mut self, id: u32) {
        if let Some(used) = self.used.get_mut(id as usize) {
            *used = false;
        }
    }
}
