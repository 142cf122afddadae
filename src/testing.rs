//! Test helpers: a small seeded random generator for property tests that run a bounded
//! number of cases, the same ones on every run.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// xorshift64*: plenty for picking test inputs.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A string of `up_to` pieces drawn from `pieces`.
    pub fn text(&mut self, pieces: &[&str], up_to: usize) -> String {
        let n = self.below(up_to + 1);
        (0..n).map(|_| *self.pick(pieces)).collect()
    }
}
