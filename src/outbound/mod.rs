//! The upstream side: sending an attempt with its key, our transport under ureq, and the credit lookups.

pub mod credit;
pub mod transport;
pub mod upstream;
