//! One spare 8 KiB buffer per thread. A worker handles one request at a time, and the
//! buffers of its stages are never needed at once: the client's read buffer is given
//! back once the request is read, the upstream output buffer once the request is sent,
//! and only then does the relay buffer carry the answer. So one buffer, warm in the
//! cache, serves them all in turn, instead of three 8 KiB allocations (and zeroings)
//! per request; measured in BENCHMARKS.md.
//!
//! A buffer taken and not given back is simply freed; a thread that has a spare already
//! keeps it and the other is freed. Contents are whatever the last user left.

use std::cell::Cell;

/// The size of a spare buffer.
pub const SIZE: usize = 8 * 1024;

thread_local! {
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A buffer of [`SIZE`] bytes: the thread's spare if it has one, else a new one.
pub fn take() -> Vec<u8> {
    let mut buffer = SPARE.take();
    // A spare is `SIZE` long unless a user shortened it; resizing refills only the end.
    buffer.resize(SIZE, 0);
    buffer
}

/// Keeps `buffer` as the thread's spare, if it was made by [`take`] (its capacity is
/// `SIZE`; a buffer that grew is freed) and the thread has none.
pub fn give(buffer: Vec<u8>) {
    if buffer.capacity() != SIZE {
        return;
    }
    SPARE.with(|spare| {
        let kept = spare.take();
        spare.set(if kept.capacity() == SIZE {
            kept
        } else {
            buffer
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer from `take` with its first byte set, to tell it apart: a new buffer is
    /// zeroed, and the allocator may hand out a freed buffer's address again.
    fn marked(mark: u8) -> Vec<u8> {
        let mut buffer = take();
        buffer[0] = mark;
        buffer
    }

    #[test]
    fn a_buffer_given_back_is_the_next_one_taken() {
        give(marked(7));
        let again = take();
        assert_eq!(again[0], 7, "a new buffer instead of the spare");
        assert_eq!(again.len(), SIZE);
    }

    #[test]
    fn a_shortened_spare_comes_back_full_length() {
        let mut buffer = marked(7);
        buffer.truncate(10);
        give(buffer);
        let again = take();
        assert_eq!((again[0], again.len()), (7, SIZE));
    }

    #[test]
    fn a_grown_buffer_is_not_kept() {
        let mut grown = marked(1);
        grown.resize(SIZE * 2, 0);
        give(grown);
        assert_eq!(take()[0], 0, "the grown buffer was kept");
    }

    #[test]
    fn a_thread_keeps_one_spare() {
        let (first, second) = (marked(1), marked(2));
        give(first);
        give(second);
        assert_eq!(take()[0], 1, "the second buffer replaced the first");
        assert_eq!(take()[0], 0, "a second spare was kept");
    }
}
