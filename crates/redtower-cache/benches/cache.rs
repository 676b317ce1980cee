//! Benchmarks of the response cache (filled in below).
#![allow(missing_docs)]

fn main() {}
