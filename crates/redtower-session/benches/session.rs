//! Session benchmarks (see BENCHMARKS.md).

fn main() {}
