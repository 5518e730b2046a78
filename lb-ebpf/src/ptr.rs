//! Bounds-checked access to packet memory: the only module that does pointer arithmetic.
//!
//! A [`Frame`] is a snapshot of the packet's `[data, data_end)` range. Every header is reached
//! through [`Frame::get`] or [`Frame::get_mut`], which check that the whole header lies inside
//! the range in the form the verifier can follow. A frame must be taken anew after anything that
//! moves the packet (`bpf_xdp_adjust_head`).

use aya_ebpf::programs::XdpContext;

/// The packet's linear data, as of when the frame was taken.
#[derive(Clone, Copy)]
pub struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// Length of the linear data (the whole frame unless the frame has fragments).
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the linear data is empty.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// A pointer to a `T` at `offset`, if all of it is inside the frame.
    #[inline(always)]
    pub fn get<T>(&self, offset: usize) -> Option<*const T> {
        self.get_mut(offset).map(<*mut T>::cast_const)
    }

    /// A mutable pointer to a `T` at `offset`, if all of it is inside the frame.
    #[inline(always)]
    pub fn get_mut<T>(&self, offset: usize) -> Option<*mut T> {
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return None;
        }
        Some(at as *mut T)
    }

    /// Like [`Frame::get`], but also requires the `T` to end at or before `limit` (an offset:
    /// the end of the enclosing IP packet, which may be shorter than the frame).
    #[inline(always)]
    pub fn get_within<T>(&self, offset: usize, limit: usize) -> Option<*const T> {
        if offset + size_of::<T>() > limit {
            return None;
        }
        self.get(offset)
    }
}
